//! evaluate against real OpenAI-compatible servers on 127.0.0.1 that answer with canned
//! completions, through the harness (parameters and outputs checked as in a pipeline).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleming_runtime::Harness;
use fleming_testkit::{Request, Response, TestServer};
use serde_json::{Value, json};

use super::*;
use crate::questions::{Choice, to_table};

fn item(id: &str, stem: &str, answer: &str, difficulty: Option<&str>) -> Question {
    Question {
        id: id.into(),
        source: "t".into(),
        language: "en".into(),
        question: stem.into(),
        options: ["Aspirin", "Heparin", "Warfarin", "Insulin"]
            .iter()
            .enumerate()
            .map(|(i, t)| Choice::new(crate::questions::label(i), *t))
            .collect(),
        answer: answer.into(),
        difficulty: difficulty.map(str::to_string),
        ..Default::default()
    }
}

/// What the canned model answers to a stem: (content, finish_reason).
fn canned(stem: &str) -> (String, &'static str) {
    let t = |a: &str| format!("<think>\nreasons\n</think>\n<answer>{a}</answer>");
    if stem.contains("right") {
        (t("B"), "stop")
    } else if stem.contains("wrong") {
        (t("C"), "stop")
    } else if stem.contains("untagged") {
        ("<think>reasons</think> The answer is B.".into(), "stop")
    } else if stem.contains("long") {
        ("<think>reasons that go on and on".into(), "length")
    } else if stem.contains("twice") {
        (format!("{}{}", t("A"), "<answer>B</answer>"), "stop")
    } else if stem.contains("nonsense") {
        (t("Z"), "stop")
    } else {
        ("".into(), "stop")
    }
}

/// A server answering every chat request from the stem in its user message; counts requests.
fn server(model_tag: &'static str) -> (TestServer, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let s = TestServer::start(move |req: &Request| {
        c2.fetch_add(1, Ordering::SeqCst);
        let Ok(body) = req.json() else { return Response::json(400, &json!({"error": {"message": "not JSON"}})) };
        let user = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        let (mut content, finish) = canned(&user);
        // The second model answers one `wrong` item right: it is better on one item.
        if model_tag == "better" && user.contains("wrong-1") {
            content = "<think>x</think><answer>B</answer>".into();
        }
        Response::json(
            200,
            &json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                    "usage": {"completion_tokens": 7}}),
        )
    })
    .unwrap();
    (s, calls)
}

fn llm(servers: &[(&str, &TestServer)]) -> Value {
    let mut m = serde_json::Map::new();
    for (name, s) in servers {
        m.insert(
            name.to_string(),
            json!({"endpoint": s.url("/v1"), "model": format!("model-{name}"), "max_concurrency": 4, "timeout_secs": 5, "max_retries": 1}),
        );
    }
    Value::Object(m)
}

fn bench() -> Table {
    to_table(&[
        item("r1", "right-1", "B", Some("easy")),
        item("r2", "right-2", "B", Some("easy")),
        item("w1", "wrong-1", "B", Some("difficult")),
        item("u1", "untagged-1", "B", Some("moderate")),
        item("l1", "long-1", "B", Some("moderate")),
        item("t1", "twice-1", "B", Some("difficult")),
        item("n1", "nonsense-1", "B", Some("difficult")),
        item("e1", "empty-1", "B", Some("easy")),
    ])
    .unwrap()
}

fn rows(t: &Table) -> Vec<Value> {
    fleming_artifacts::table::to_json_rows(t, 10_000).unwrap()
}

fn average(out: &fleming_runtime::harness::HarnessOutput, model: &str) -> Value {
    rows(out.table("scores").unwrap()).into_iter().find(|r| r["model"] == model && r["benchmark"] == AVERAGE).unwrap()
}

#[test]
fn scores_canned_completions_strictly_and_counts_every_status() {
    let (s, _) = server("plain");
    let out = Harness::new(Arc::new(Evaluate))
        .llm(llm(&[("m", &s)]))
        .param("endpoints", json!(["m"]))
        .input("benchmarks", bench())
        .run()
        .unwrap();
    let results = rows(out.table("results").unwrap());
    assert_eq!(results.len(), 8);
    let status: Vec<(&str, &str, bool)> = results
        .iter()
        .map(|r| (r["item"].as_str().unwrap(), r["status"].as_str().unwrap(), r["correct"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        status,
        vec![
            ("r1", "ok", true),
            ("r2", "ok", true),
            ("w1", "ok", false),
            ("u1", "no_answer", false),
            ("l1", "truncated", false),
            ("t1", "several", false),
            ("n1", "invalid", false),
            ("e1", "no_answer", false),
        ]
    );
    assert_eq!(results[0]["parents"], json!(["r1"]));
    assert_eq!(results[0]["completion_tokens"], json!(7));
    assert_eq!(results[2]["answer"], json!("C"));
    assert_eq!(results[3]["answer"], Value::Null);
    assert_eq!(results[4]["finish_reason"], json!("length"));
    let all = rows(out.table("scores").unwrap());
    let total = all.iter().find(|r| r["benchmark"] == "harness" && r["tier"].is_null()).unwrap();
    // Nothing is dropped from n: every status is counted, and only `ok` can be right.
    assert_eq!(total["n"], json!(8));
    assert_eq!(total["correct"], json!(2));
    let counted: i64 = Status::ALL.iter().map(|s| total[s.as_str()].as_i64().unwrap()).sum();
    assert_eq!(counted, 8);
    assert_eq!((total["ok"].clone(), total["no_answer"].clone()), (json!(3), json!(2)));
    assert!((total["accuracy"].as_f64().unwrap() - 0.25).abs() < 1e-12);
    assert!((total["accuracy_parsed"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert!(total["stderr"].as_f64().unwrap() > 0.0);
    assert!(total["pass_at_k"].is_null());
    // Tier rows, and the macro average over the one benchmark.
    let easy = all.iter().find(|r| r["tier"] == "easy").unwrap();
    assert_eq!((easy["items"].clone(), easy["correct"].clone()), (json!(3), json!(2)));
    assert_eq!(average(&out, "m")["accuracy"], total["accuracy"]);
    // The report says what it counted.
    let md = std::fs::read_to_string(report_dir(&out).join("report.md")).unwrap();
    assert!(md.contains("## Table 1") && md.contains("| m | 25.0 ± 15.3 | 25.0 ± 15.3 |"), "{md}");
    assert!(!md.contains("Table 2"), "one model has no ablation table");
    let html = std::fs::read_to_string(report_dir(&out).join("report.html")).unwrap();
    assert!(html.contains("<svg") && !html.contains("http://") && !html.contains("https://"));
}

fn report_dir(out: &fleming_runtime::harness::HarnessOutput) -> std::path::PathBuf {
    match out.outputs.get("report") {
        Some(fleming_runtime::op::OutputValue::Model(p)) => p.clone(),
        other => panic!("no report directory: {other:?}"),
    }
}

#[test]
fn answers_are_memoised_and_a_new_benchmark_asks_only_its_items() {
    let (s, calls) = server("plain");
    let memo = Harness::new_memo(&Evaluate);
    let run = |benches: Vec<(&str, Table)>| {
        let mut h =
            Harness::new(Arc::new(Evaluate)).llm(llm(&[("m", &s)])).param("endpoints", json!(["m"])).memo(memo.clone());
        for (name, b) in benches {
            h = h.input_from("benchmarks", name, b);
        }
        h.run().unwrap()
    };
    let first = run(vec![("heldout.table", bench())]);
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    let again = run(vec![("heldout.table", bench())]);
    assert_eq!(calls.load(Ordering::SeqCst), 8, "a rerun asks nothing");
    assert_eq!(again.digest("scores").unwrap(), first.digest("scores").unwrap());
    let extra = to_table(&[item("x1", "right-9", "B", None), item("x2", "wrong-9", "B", None)]).unwrap();
    let grown = run(vec![("heldout.table", bench()), ("extra.table", extra)]);
    assert_eq!(calls.load(Ordering::SeqCst), 10, "only the two new items are asked");
    let results = rows(grown.table("results").unwrap());
    assert_eq!(results.len(), 10);
    assert_eq!((results[0]["benchmark"].clone(), results[9]["benchmark"].clone()), (json!("heldout"), json!("extra")));
    let avg = average(&grown, "m");
    assert_eq!(avg["n"], json!(10));
    // Changing decoding asks again.
    let _ = Harness::new(Arc::new(Evaluate))
        .llm(llm(&[("m", &s)]))
        .param("endpoints", json!(["m"]))
        .param("max_new_tokens", 64)
        .memo(memo.clone())
        .input("benchmarks", bench())
        .run()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 18);
}

#[test]
fn several_models_get_the_ablation_table_and_paired_tests() {
    let (a, _) = server("plain");
    let (b, _) = server("better");
    let out = Harness::new(Arc::new(Evaluate))
        .llm(llm(&[("base", &a), ("tuned", &b)]))
        .param("endpoints", json!(["base", "tuned"]))
        .input("benchmarks", bench())
        .run()
        .unwrap();
    let cmp = rows(out.table("comparisons").unwrap());
    let step = cmp.iter().find(|r| r["benchmark"] == "harness").unwrap();
    assert_eq!((step["model"].clone(), step["baseline"].clone()), (json!("tuned"), json!("base")));
    assert_eq!(
        (step["wins"].clone(), step["losses"].clone(), step["test"].clone()),
        (json!(1), json!(0), json!("mcnemar"))
    );
    assert!((step["delta"].as_f64().unwrap() - 1.0 / 8.0).abs() < 1e-12);
    assert!((step["p_value"].as_f64().unwrap() - 1.0).abs() < 1e-12, "one discordant item: p = 1");
    let md = std::fs::read_to_string(report_dir(&out).join("report.md")).unwrap();
    assert!(md.contains("## Table 2: ablation") && md.contains("| tuned | 37.5 | +12.5 |"), "{md}");
    assert!(md.contains("mcnemar p = 1.0000"), "{md}");
}

#[test]
fn samples_give_pass_at_k_and_majority_vote() {
    let (s, calls) = server("plain");
    let out = Harness::new(Arc::new(Evaluate))
        .llm(llm(&[("m", &s)]))
        .param("endpoints", json!(["m"]))
        .param("samples", 3)
        .param("temperature", 0.7)
        .input("benchmarks", bench())
        .run()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 24);
    let results = rows(out.table("results").unwrap());
    assert_eq!(results.iter().map(|r| r["sample"].as_i64().unwrap()).collect::<Vec<_>>()[..3], [0, 1, 2]);
    let ids: HashSet<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 24, "result ids are unique");
    let total = rows(out.table("scores").unwrap()).into_iter().find(|r| r["tier"].is_null()).unwrap();
    assert_eq!((total["n"].clone(), total["items"].clone(), total["samples"].clone()), (json!(24), json!(8), json!(3)));
    assert!((total["pass_at_k"].as_f64().unwrap() - 0.25).abs() < 1e-12);
    assert!((total["majority"].as_f64().unwrap() - 0.25).abs() < 1e-12);
}

/// The error of evaluating [`bench`] on the endpoint `m` of `section`, with `memo`.
fn failure_on(section: Value, memo: &fleming_runtime::context::RecordMemo) -> String {
    let h = Harness::new(Arc::new(Evaluate))
        .llm(section)
        .param("endpoints", json!(["m"]))
        .memo(memo.clone())
        .input("benchmarks", bench());
    format!("{:#}", h.run().expect_err("should fail"))
}

#[test]
fn bad_benchmarks_and_endpoints_fail_clearly() {
    let (s, _) = server("plain");
    let h = || Harness::new(Arc::new(Evaluate)).llm(llm(&[("m", &s)])).param("endpoints", json!(["m"]));
    let err = |h: Harness| format!("{:#}", h.run().expect_err("should fail"));
    let e = err(h().input("benchmarks", to_table(&[]).unwrap()));
    assert!(e.contains("is empty"), "{e}");
    let e =
        err(h().input("benchmarks", to_table(&[item("a", "right", "", None), item("b", "right", "E", None)]).unwrap()));
    assert!(e.contains("2 of 2 items have no gold answer") && e.contains("`a`"), "{e}");
    let e = err(
        h().input("benchmarks", to_table(&[item("a", "right", "B", None), item("a", "wrong", "B", None)]).unwrap())
    );
    assert!(e.contains("the id `a` twice"), "{e}");
    let e = err(Harness::new(Arc::new(Evaluate)).input("benchmarks", bench()));
    assert!(e.contains("nothing to evaluate"), "{e}");
    // An endpoint that is down: a clear error naming it; nothing is memoised.
    let down = json!({"m": {"endpoint": "http://127.0.0.1:9/v1", "model": "x", "max_retries": 0, "timeout_secs": 1}});
    let memo = Harness::new_memo(&Evaluate);
    let e = failure_on(down, &memo);
    assert!(e.contains("8 of 8 calls to llm endpoint `m`") && e.contains("evaluating `m`"), "{e}");
    assert_eq!(memo.stats().puts, 0);
}

#[test]
fn an_endpoint_returning_garbage_fails_clearly_and_keeps_the_good_answers() {
    // Every other request gets a body that is not a chat completion.
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let s = TestServer::start(move |req: &Request| {
        if n2.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            return Response::text(200, "<html>proxy error</html>");
        }
        let user = req.json().ok().and_then(|v| {
            v["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).map(str::to_string)
        });
        let (content, finish) = canned(&user.unwrap_or_default());
        Response::json(200, &json!({"choices": [{"message": {"content": content}, "finish_reason": finish}]}))
    })
    .unwrap();
    let memo = Harness::new_memo(&Evaluate);
    let section = json!({"m": {"endpoint": s.url("/v1"), "model": "x", "max_retries": 0, "max_concurrency": 1, "timeout_secs": 5}});
    let e = failure_on(section, &memo);
    assert!(e.contains("unreadable answer") && e.contains("are memoised"), "{e}");
    assert_eq!(memo.stats().puts, 4, "the four good answers are kept");
}
