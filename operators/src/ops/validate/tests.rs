use super::*;
use crate::ops::sample::{Sample, fixture};
use crate::questions::{Choice, from_table, to_table};
use arrow::array::Array;
use fleming_runtime::Harness;
use fleming_runtime::harness::HarnessOutput;

fn item(id: &str, stem: &str, opts: &[&str], answer: &str) -> Question {
    Question {
        id: id.into(),
        source: "curated".into(),
        language: "en".into(),
        question: stem.into(),
        options: opts.iter().enumerate().map(|(i, t)| Choice::new(crate::questions::label(i), *t)).collect(),
        answer: answer.into(),
        ..Default::default()
    }
}

fn col(t: &Table, name: &str) -> Vec<String> {
    let b = t.concat().unwrap();
    let c = arrow::compute::cast(b.column_by_name(name).unwrap(), &DataType::Utf8).unwrap();
    let c = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
    (0..c.len()).map(|i| c.value(i).to_string()).collect()
}

fn accounted(out: &HarnessOutput, input: usize) {
    let m = &out.metrics;
    let sum = out.table("questions").unwrap().num_rows() as u64
        + out.table("rejected").unwrap().num_rows() as u64
        + out.table("flagged").unwrap().num_rows() as u64
        + m["left_out_by_mixing"].as_u64().unwrap();
    assert_eq!(sum, input as u64, "input rows = kept + rejected + flagged + left out");
    assert_eq!(m["input_rows"].as_u64().unwrap(), input as u64);
}

#[test]
fn format_dedup_and_anonymisation_with_reasons() {
    let a = vec![
        item(
            "a1",
            "A 45-year-old man has crushing chest pain radiating to the left arm. What is the diagnosis?",
            &["Myocardial infarction", "Pericarditis", "Aortic dissection", "Pneumothorax"],
            "A",
        ),
        item(
            "a2",
            "Which option is duplicated here in this list?",
            &["Aspirin", "aspirin", "Heparin", "Warfarin"],
            "A",
        ),
        item(
            "a3",
            "Which drug is first-line for status epilepticus?",
            &["Lorazepam", "Phenytoin", "Valproate", "Propofol"],
            "E",
        ),
        item(
            "a4",
            "Mr. John Smith (MRN 88812345) was seen on 03/14/2021; call (555) 123-4567. Which test is next?",
            &["ECG", "CT", "MRI", "EEG"],
            "B",
        ),
        item("a5", "Which vitamin deficiency causes scurvy in sailors?", &["Vitamin C", "Vitamin D", "Vitamin A"], "A"),
    ];
    let b = vec![
        // Exact duplicate of a1 across inputs, options reordered and punctuation changed.
        item(
            "b1",
            "A 45-year-old man has crushing chest pain radiating to the left arm: what is the diagnosis?",
            &["Pericarditis", "Myocardial infarction", "Aortic dissection", "Pneumothorax"],
            "B",
        ),
        // Near duplicate of a1.
        item(
            "b2",
            "A 47-year-old man has crushing chest pain radiating to the left arm. What is the diagnosis?",
            &["Myocardial infarction", "Pericarditis", "Aortic dissection", "Pneumothorax"],
            "A",
        ),
        item(
            "b3",
            "Which vitamin deficiency causes scurvy in sailors?&nbsp;",
            &["Vitamin C", "Vitamin D", "Vitamin E"],
            "A",
        ),
    ];
    let out = Harness::new(Arc::new(Validate))
        .input("questions", to_table(&a).unwrap())
        .input("questions", to_table(&b).unwrap())
        .params(json!({"min_options": 3, "near_threshold": 0.6}))
        .run()
        .unwrap_or_else(|e| panic!("{e:#}"));
    accounted(&out, 8);
    let kept = from_table(out.table("questions").unwrap(), "?").unwrap();
    assert_eq!(kept.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(), vec!["a1", "a4", "a5"]);
    assert_eq!(kept[1].question, "[NAME] ([RECORD]) was seen on [DATE]; call [PHONE]. Which test is next?");
    let r = out.table("rejected").unwrap();
    let reasons: Vec<String> =
        col(r, "id").into_iter().zip(col(r, "reason")).map(|(i, r)| format!("{i}: {r}")).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert_eq!(reasons[0], "a2: duplicate options A and B");
    assert_eq!(reasons[1], "a3: answer `E` is not among the options (A, B, C, D)");
    assert_eq!(reasons[2], "b1: duplicate of a1 (same normalised text)");
    assert_eq!(reasons[4], "b3: leftover HTML entity in question");
    assert!(reasons[3].starts_with("b2: near-duplicate of a1 (estimated Jaccard"), "{reasons:?}");
    assert_eq!(col(r, "step"), vec!["format", "format", "duplicate", "near-duplicate", "format"]);
    assert_eq!(
        out.metrics["anonymised"],
        json!({"emails": 0, "records": 1, "phones": 1, "dates": 1, "addresses": 0, "names": 1})
    );
}

#[test]
fn exact_only_keeps_near_duplicates_and_none_keeps_all() {
    let a = item(
        "a1",
        "A 45-year-old man has crushing chest pain radiating to the left arm. What is the diagnosis?",
        &["MI", "Pericarditis"],
        "A",
    );
    let b = item(
        "b2",
        "A 47-year-old man has crushing chest pain radiating to the left arm. What is the diagnosis?",
        &["MI", "Pericarditis"],
        "A",
    );
    let c = Question { id: "c".into(), ..a.clone() };
    let t = to_table(&[a, b, c]).unwrap();
    let run = |dedup: &str| {
        Harness::new(Arc::new(Validate)).input("questions", t.clone()).param("dedup", dedup).run().unwrap()
    };
    assert_eq!(run("exact").table("questions").unwrap().num_rows(), 2);
    assert_eq!(run("none").table("questions").unwrap().num_rows(), 3);
    assert_eq!(run("near").table("questions").unwrap().num_rows(), 1);
}

fn kg_setup() -> (Table, Table, Table) {
    let (ents, rels) = fixture::graph(1500, 3).unwrap();
    let out = Harness::new(Arc::new(Sample))
        .input("entities", ents.clone())
        .input("relations", rels.clone())
        .params(json!({"questions": 120, "seed": 2}))
        .run()
        .unwrap();
    (ents, rels, out.table("questions").unwrap().clone())
}

#[test]
fn kg_validator_flags_mislabelled_items_and_review_lets_them_back() {
    let (ents, rels, syn) = kg_setup();
    let mut items = from_table(&syn, "?").unwrap();
    // Corrupt three labels.
    for q in items.iter_mut().take(3) {
        q.answer = if q.answer == "A" { "B".into() } else { "A".into() };
    }
    let curated = vec![item(
        "cur-1",
        "Which vitamin deficiency causes scurvy in sailors?",
        &["Vitamin C", "Vitamin D", "Vitamin A"],
        "A",
    )];
    let run = |decisions: Option<Table>| {
        let mut h = Harness::new(Arc::new(Validate))
            .input("questions", to_table(&items).unwrap())
            .input("questions", to_table(&curated).unwrap())
            .input("entities", ents.clone())
            .input("relations", rels.clone())
            .params(json!({"verify": {"kg": true, "trials": 5}}));
        if let Some(d) = decisions {
            h = h.input("decisions", d);
        }
        h.run().unwrap_or_else(|e| panic!("{e:#}"))
    };
    let out = run(None);
    accounted(&out, 121);
    let flagged = out.table("flagged").unwrap();
    let ids = col(flagged, "id");
    assert_eq!(ids, items.iter().take(3).map(|q| q.id.clone()).collect::<Vec<_>>());
    assert_eq!(col(flagged, "correct"), vec!["0", "0", "0"]);
    assert_eq!(out.metrics["unverified"], json!(1), "the curated item passes unverified");
    // A reviewer accepts one and rejects another.
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("decision", DataType::Utf8, false),
    ]));
    let d = RecordBatch::try_new(
        schema.clone(),
        vec![strs(vec![ids[0].clone(), ids[1].clone()]), strs(vec!["accept".into(), "reject".into()])],
    )
    .unwrap();
    let out = run(Some(Table::new(schema, vec![d])));
    accounted(&out, 121);
    assert_eq!(col(out.table("flagged").unwrap(), "id"), vec![ids[2].clone()]);
    assert!(col(out.table("questions").unwrap(), "id").contains(&ids[0]));
    assert_eq!(col(out.table("rejected").unwrap(), "reason"), vec!["rejected by review (decisions input)"]);
}

#[test]
fn mixing_proportions_and_counts() {
    let (ents, rels, syn) = kg_setup();
    let curated: Vec<Question> = (0..30)
        .map(|i| {
            item(
                &format!("c{i}"),
                &format!("Curated question number {i} about a distinct topic {}?", i * 7919),
                &["yes", "no", "maybe"],
                "A",
            )
        })
        .collect();
    let run = |mix: Value| {
        Harness::new(Arc::new(Validate))
            .input("questions", syn.clone())
            .input("questions", to_table(&curated).unwrap())
            .input("entities", ents.clone())
            .input("relations", rels.clone())
            .params(json!({"mix": mix}))
            .run()
            .unwrap()
    };
    let out = run(json!({"synthetic": 0.5}));
    accounted(&out, 150);
    let kept = from_table(out.table("questions").unwrap(), "?").unwrap();
    let s = kept.iter().filter(|q| q.source == "synthetic").count();
    assert_eq!((s, kept.len() - s), (30, 30));
    assert_eq!(out.metrics["left_out_by_mixing"], json!(90));
    let out = run(json!({"synthetic": 0.25, "total": 40, "seed": 1}));
    accounted(&out, 150);
    let kept = from_table(out.table("questions").unwrap(), "?").unwrap();
    assert_eq!(kept.iter().filter(|q| q.source == "synthetic").count(), 10);
    assert_eq!(kept.len(), 40);
}

#[test]
fn parameter_checks() {
    let t = to_table(&[item("a", "Which one is right here?", &["x", "y"], "A")]).unwrap();
    let err = Harness::new(Arc::new(Validate))
        .input("questions", t.clone())
        .params(json!({"verify": {"kg": true}}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs the `entities` and `relations`"), "{err}");
    let err = Harness::new(Arc::new(Validate))
        .input("questions", t.clone())
        .params(json!({"verify": {"trials": 3}}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("exactly one validator"), "{err}");
    let err = Harness::new(Arc::new(Validate))
        .input("questions", t)
        .params(json!({"verify": {"llm": "nope"}}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn anonymisation_recall_and_precision_on_a_planted_set() {
    let set = anonymise::planted(4000, 11);
    let report = anonymise::score(&set);
    assert!(report.recall >= 0.98, "{report:?}");
    assert!(report.precision >= 0.95, "{report:?}");
}

// ---- LLM validator against a server on 127.0.0.1: memoised per call. ----

use crate::llm::tests::{openai, section};
use fleming_testkit::TestServer;

fn numbered(n: usize) -> Vec<Question> {
    (0..n)
        .map(|i| {
            item(
                &format!("q{i}"),
                &format!("Question number {i}: which organ produces the hormone coded {}?", i * 7919 % 10007),
                &["Liver", "Pancreas", "Kidney", "Thyroid"],
                if i % 10 == 0 { "C" } else { "B" },
            )
        })
        .collect()
}

#[test]
fn llm_verification_is_memoised_per_call() {
    // The "model" always answers B: items labelled C are never answered correctly.
    let server = TestServer::start(openai(|_| "Reasoning. <answer>B</answer>".into())).unwrap();
    let llm = Value::Object(section(&server, json!({})));
    let op: Arc<dyn fleming_runtime::Operator> = Arc::new(Validate);
    let memo = Harness::new_memo(op.as_ref());
    let run = |items: &[Question], mix: Value| {
        let mut p = json!({"verify": {"llm": "v", "trials": 5}});
        if !mix.is_null() {
            p["mix"] = mix;
        }
        Harness::new(op.clone())
            .input("questions", to_table(items).unwrap())
            .params(p)
            .llm(llm.clone())
            .memo(memo.clone())
            .run()
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let items = numbered(100);
    let out = run(&items, Value::Null);
    accounted(&out, 100);
    assert_eq!(server.request_count(), 500);
    assert_eq!(out.table("flagged").unwrap().num_rows(), 10);
    assert_eq!(col(out.table("flagged").unwrap(), "answers")[0], r#"["B","B","B","B","B"]"#);
    // Rerun: zero calls.
    let again = run(&items, Value::Null);
    assert_eq!(server.request_count(), 500);
    assert_eq!(again.digest("questions").unwrap(), out.digest("questions").unwrap());
    // Input grown by 1%: calls for the new item only.
    let grown = numbered(101);
    run(&grown, Value::Null);
    assert_eq!(server.request_count(), 505);
    // A mixing ratio does not determine any answer: no call.
    let mixed = run(&grown, json!({"synthetic": 0.0}));
    assert_eq!(server.request_count(), 505);
    accounted(&mixed, 101);
}

#[test]
fn failed_calls_fail_the_stage_with_a_report_and_keep_the_rest() {
    use fleming_testkit::{Fault, FaultPlan, When};
    let server = TestServer::builder()
        .plan(FaultPlan::new().add(When::predicate(|r| r.body_text().contains("number 3:")), Fault::Status(400)))
        .start(openai(|_| "<answer>B</answer>".into()))
        .unwrap();
    let llm = Value::Object(section(&server, json!({})));
    let op: Arc<dyn fleming_runtime::Operator> = Arc::new(Validate);
    let memo = Harness::new_memo(op.as_ref());
    let items = numbered(5);
    let run = || {
        Harness::new(op.clone())
            .input("questions", to_table(&items).unwrap())
            .params(json!({"verify": {"llm": "v", "trials": 2}}))
            .llm(llm.clone())
            .memo(memo.clone())
            .run()
    };
    let err = format!("{:#}", run().unwrap_err());
    assert!(err.contains("2 of 10 calls to llm endpoint `v`") && err.contains("HTTP 400"), "{err}");
    server.set_plan(FaultPlan::new());
    let before = server.request_count();
    run().unwrap();
    assert_eq!(server.request_count() - before, 2, "only the failed calls are made again");
}
