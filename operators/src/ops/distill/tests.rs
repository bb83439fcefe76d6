use std::collections::HashSet;
use std::sync::Arc;

use fleming_runtime::Harness;
use fleming_testkit::{Fault, FaultPlan, Request, TestServer, When};
use serde_json::{Value, json};

use super::*;
use crate::llm::tests::openai;
use crate::ops::sample::{Sample, fixture};
use crate::questions::{Choice, from_table, to_table};
use arrow::array::Array;

fn synthetic(n: usize) -> (Table, Table, Vec<Question>) {
    let (ents, rels) = fixture::graph(3000, 8).unwrap();
    let syn = Harness::new(Arc::new(Sample))
        .input("entities", ents.clone())
        .input("relations", rels.clone())
        .params(json!({"questions": n, "hops": [1, 3], "seed": 5}))
        .run()
        .unwrap();
    let items = from_table(syn.table("questions").unwrap(), "?").unwrap();
    (ents, rels, items)
}

fn curated(n: usize) -> Vec<Question> {
    (0..n)
        .map(|i| Question {
            id: format!("cur{i}"),
            question: format!("Which organ makes hormone {i}?"),
            options: vec![Choice::new("A", "Liver"), Choice::new("B", "Pancreas"), Choice::new("C", "Kidney")],
            answer: "B".into(),
            ..Default::default()
        })
        .collect()
}

fn column(t: &Table, name: &str) -> Vec<Option<String>> {
    let b = t.concat().unwrap();
    let c = b.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
    (0..c.len()).map(|i| (!c.is_null(i)).then(|| c.value(i).to_string())).collect()
}

#[test]
fn kg_teacher_writes_varied_grounded_chains_that_pass() {
    let (ents, rels, mut items) = synthetic(120);
    items.extend(curated(1));
    let out = Harness::new(Arc::new(Distill))
        .input("questions", to_table(&items).unwrap())
        .input("entities", ents.clone())
        .input("relations", rels.clone())
        .params(json!({"teacher": "kg", "k": 4}))
        .run()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let selected = from_table(out.table("selected").unwrap(), "?").unwrap();
    assert_eq!(out.metrics["input"], json!(121));
    assert_eq!(
        out.metrics["selected"].as_u64().unwrap() + out.metrics["unresolved"].as_u64().unwrap(),
        121,
        "input = selected + unresolved"
    );
    assert!(
        selected.len() >= 115,
        "{} of 120 synthetic items resolved: {}",
        selected.len(),
        serde_json::to_string(&out.metrics).unwrap()
    );
    // The curated item has no graph path: unresolved, with the reason.
    let unresolved = out.table("unresolved").unwrap();
    let ids = column(unresolved, "id");
    assert!(ids.contains(&Some("cur0".into())), "{ids:?}");
    let reasons = column(unresolved, "reason");
    assert!(reasons.iter().flatten().any(|r| r.contains("only for synthetic items")), "{reasons:?}");
    let g = Graph::build(&ents, &rels, 0.0).unwrap().0;
    let t = KgTeacher::new(&g);
    let mut openings = HashSet::new();
    for q in &selected {
        let chain = q.explanation.as_deref().unwrap();
        let lower = chain.to_lowercase();
        for name in t.path_names(q).unwrap() {
            assert!(lower.contains(&name.to_lowercase()), "{chain} does not name {name}");
        }
        // Every distractor is addressed by its label.
        for o in q.options.iter().filter(|o| o.label != q.answer) {
            assert!(chain.contains(&format!("({})", o.label)), "{chain} skips option {}", o.label);
        }
        openings.insert(chain.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        let parents = &q.parents;
        assert!(parents.len() == 1 && parents[0].starts_with(&q.id), "{parents:?}");
    }
    assert!(openings.len() >= 20, "chains open in only {} ways: {openings:?}", openings.len());
    // Candidates of one item differ.
    let traces = out.table("traces").unwrap();
    let (items_col, chains) = (column(traces, "item"), column(traces, "chain"));
    let mut per_item: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for (i, c) in items_col.iter().zip(&chains) {
        per_item.entry(i.clone().unwrap()).or_default().insert(c.clone().unwrap());
    }
    let distinct: f64 = per_item.values().map(|s| s.len() as f64).sum::<f64>() / per_item.len() as f64;
    assert!(distinct >= 3.0, "only {distinct:.2} distinct chains of 4 per item");
    // Deterministic: the same params write the same chains.
    let again = Harness::new(Arc::new(Distill))
        .input("questions", to_table(&items).unwrap())
        .input("entities", ents)
        .input("relations", rels)
        .params(json!({"teacher": "kg", "k": 4}))
        .run()
        .unwrap();
    assert_eq!(again.digest("selected").unwrap(), out.digest("selected").unwrap());
}

#[test]
fn a_hidden_bridge_is_reached_by_checking_every_option() {
    // "Which drug treats the likely cause of symptom S?": the disease is never named, so
    // the chain must not assert one; it checks each option through the diseases it treats.
    let (ents, rels) = fixture::graph(3000, 8).unwrap();
    let syn = Harness::new(Arc::new(Sample))
        .input("entities", ents.clone())
        .input("relations", rels.clone())
        .params(json!({"questions": 40, "seed": 3, "patterns": [{"name": "treatment",
            "path": ["symptom", "disease", "drug"], "predicates": ["<presents_symptom", "<treats"],
            "mask": 2, "hidden": [1]}]}))
        .run()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let items = from_table(syn.table("questions").unwrap(), "?").unwrap();
    assert!(items.len() >= 30, "{}", items.len());
    let g = Graph::build(&ents, &rels, 0.0).unwrap().0;
    let t = KgTeacher::new(&g);
    for q in &items {
        let chain = t.reasoning(q, 0, 0, 0, None, false).unwrap();
        let names = t.path_names(q).unwrap();
        let (symptom, disease, drug) = (&names[0], &names[1], &names[2]);
        // Every option in label order, each brought back to the symptom.
        let mut at = 0;
        for o in &q.options {
            let tag = format!("{} ({})", o.text, o.label);
            let pos = chain[at..].find(&tag).unwrap_or_else(|| panic!("{chain}: option {tag} not checked in order"));
            at += pos + tag.len();
        }
        assert!(chain.matches(symptom.as_str()).count() >= q.options.len(), "{chain}");
        // The answer reaches the symptom through the path's disease.
        assert!(chain.contains(&format!("{drug} ({}) treats {disease}", q.answer)), "{chain}");
        // A distractor never does: it is linked to no disease that presents with S.
        for o in q.options.iter().filter(|o| o.label != q.answer) {
            let tag = format!("{} ({})", o.text, o.label);
            let sentence = chain.split(". ").find(|s| s.contains(&tag)).unwrap();
            assert!(
                sentence.contains("not linked")
                    || sentence.contains("nothing says")
                    || sentence.contains("Nothing says"),
                "{sentence}"
            );
        }
    }
}

#[test]
fn length_failures_are_refined_into_concise_chains() {
    let (ents, rels, items) = synthetic(30);
    let out = Harness::new(Arc::new(Distill))
        .input("questions", to_table(&items).unwrap())
        .input("entities", ents)
        .input("relations", rels)
        .params(json!({"teacher": "kg", "k": 2, "max_words": 40, "min_words": 3, "refine_rounds": 2,
            "strategies": ["self_correct"]}))
        .run()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let rounds = out.table("rounds").unwrap().concat().unwrap();
    let rejected = rounds.column_by_name("rejected_length").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    let resolved = rounds.column_by_name("resolved").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    assert!(rejected.value(0) > 0, "round 0 had no chain above 40 words; the test needs some");
    assert!(rounds.num_rows() >= 2 && resolved.value(1) > 0, "refinement resolved nothing");
    for q in from_table(out.table("selected").unwrap(), "?").unwrap() {
        assert!(verify::words(q.explanation.as_deref().unwrap()) <= 40);
    }
}

/// A teacher that announces the given answer unless asked to backtrack.
fn leaky_teacher(user: &str) -> String {
    if user.contains("Backtrack") {
        "<think>\nThe pancreas makes this hormone in its islets; the liver and the kidney do not.\n</think>\n<answer>B</answer>".into()
    } else {
        "<think>\nThe given answer is B, the pancreas.\n</think>\n<answer>B</answer>".into()
    }
}

fn llm_section(server: &TestServer, retries: u32) -> Value {
    json!({"v": {"endpoint": server.url("/v1"), "model": "teacher", "max_concurrency": 4, "timeout_secs": 2,
        "max_retries": retries}})
}

#[test]
fn llm_teacher_refines_rejected_chains_and_memoises_every_call() {
    let prompts = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = prompts.clone();
    let server = TestServer::start(openai(move |u: &str| {
        seen.lock().unwrap().push(u.to_string());
        leaky_teacher(u)
    }))
    .unwrap();
    let items = curated(3);
    let memo = Harness::new_memo(&Distill);
    let run = || {
        Harness::new(Arc::new(Distill))
            .input("questions", to_table(&items).unwrap())
            .params(json!({"teacher": "llm", "llm": "v", "k": 2, "refine_rounds": 2}))
            .llm(llm_section(&server, 0))
            .memo(memo.clone())
            .run()
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let out = run();
    // Round 0: 6 leaky chains; round 1 (backtrack): 6 good ones.
    assert_eq!(server.request_count(), 12);
    let rounds = out.table("rounds").unwrap().concat().unwrap();
    let ints = |n: &str| {
        let c = rounds.column_by_name(n).unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        (0..c.len()).map(|i| c.value(i)).collect::<Vec<_>>()
    };
    assert_eq!(ints("rejected_no_leak"), [6, 0]);
    assert_eq!(ints("resolved"), [0, 3]);
    assert_eq!(column(out.table("rounds").unwrap(), "strategy"), [None, Some("backtrack".into())]);
    // The refinement prompt carries the failed chain and the verifier's reason.
    let prompts = prompts.lock().unwrap().clone();
    assert!(prompts.iter().any(|p| p.contains("The given answer is B") && p.contains("no_leak")), "{prompts:?}");
    let selected = from_table(out.table("selected").unwrap(), "?").unwrap();
    assert_eq!(selected.len(), 3);
    assert!(selected[0].explanation.as_deref().unwrap().starts_with("The pancreas makes"));
    assert_eq!(out.metrics["pass_at_k"], json!(0.0));
    assert_eq!(out.metrics["acceptance_after_round_1"], json!(1.0));
    // A rerun makes no call.
    let again = run();
    assert_eq!(server.request_count(), 12, "a rerun asked the teacher again");
    assert_eq!(again.digest("traces").unwrap(), out.digest("traces").unwrap());
}

#[test]
fn teacher_faults_are_retried_then_counted_as_failed_candidates() {
    // 429s and broken JSON are retried; a request that keeps failing is a failed candidate.
    let server = TestServer::builder()
        .plan(
            FaultPlan::new()
                .add_times(When::Always, Fault::TooManyRequests { retry_after: Some("0".into()) }, 2)
                .add_times(When::Always, Fault::BrokenJson, 2)
                .add(
                    When::predicate(|r: &Request| String::from_utf8_lossy(&r.body).contains("hormone 1?")),
                    Fault::Status(503),
                ),
        )
        .start(openai(leaky_teacher))
        .unwrap();
    let out = Harness::new(Arc::new(Distill))
        .input("questions", to_table(&curated(3)).unwrap())
        .params(json!({"teacher": "llm", "llm": "v", "k": 1, "refine_rounds": 1, "max_failed_calls": 0.5}))
        // Calls run concurrently, so which request meets the four global faults is a race: five
        // attempts per call are more than any one request can lose to them.
        .llm(llm_section(&server, 4))
        .run()
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Item 1 failed every attempt in both rounds; the others were resolved by round 1.
    assert_eq!(out.metrics["selected"], json!(2));
    assert_eq!(out.metrics["calls_failed"], json!(2));
    let reasons = column(out.table("unresolved").unwrap(), "reason");
    assert!(reasons[0].as_deref().unwrap_or("").contains("call failed: HTTP 503"), "{reasons:?}");

    // Above max_failed_calls the stage fails, with the report.
    let down = TestServer::builder()
        .plan(FaultPlan::new().add(When::Always, Fault::Status(503)))
        .start(openai(leaky_teacher))
        .unwrap();
    let err = Harness::new(Arc::new(Distill))
        .input("questions", to_table(&curated(2)).unwrap())
        .params(json!({"teacher": "llm", "llm": "v", "k": 1}))
        .llm(llm_section(&down, 0))
        .run()
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("max_failed_calls") && text.contains("2 of 2 calls"), "{text}");
}

#[test]
fn garbage_replies_are_candidates_that_fail_never_a_panic() {
    let server = TestServer::start(openai(|u: &str| {
        if u.contains("hormone 0") { "İ</think><answer><answer>ẞ".into() } else { String::new() }
    }))
    .unwrap();
    let out = Harness::new(Arc::new(Distill))
        .input("questions", to_table(&curated(2)).unwrap())
        .params(json!({"teacher": "llm", "llm": "v", "k": 2, "refine_rounds": 1}))
        .llm(llm_section(&server, 0))
        .run()
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(out.metrics["selected"], json!(0));
    assert_eq!(out.metrics["unresolved"], json!(2));
}

#[test]
fn parameters_are_checked() {
    let t = to_table(&curated(1)).unwrap();
    let err = Harness::new(Arc::new(Distill)).input("questions", t.clone()).run().unwrap_err().to_string();
    assert!(err.contains("needs the `entities` and `relations`"), "{err}");
    let err = Harness::new(Arc::new(Distill))
        .input("questions", t.clone())
        .params(json!({"teacher": "llm", "llm": "v", "verifiers": ["answer", "brevity"]}))
        .llm(json!({"v": {"endpoint": "http://127.0.0.1:9/v1", "model": "m"}}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown verifier `brevity`"), "{err}");
    let err = Harness::new(Arc::new(Distill))
        .input("questions", t)
        .params(json!({"teacher": "llm", "llm": "v", "strategies": ["guess"]}))
        .llm(json!({"v": {"endpoint": "http://127.0.0.1:9/v1", "model": "m"}}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown strategy `guess`"), "{err}");
}
