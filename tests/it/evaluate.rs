//! `evaluate` in a pipeline, against OpenAI-compatible test servers on 127.0.0.1 that
//! answer with canned completions: scores, the report through `fleming show`, the memo
//! across runs, and keys that follow the endpoints' models.

use serde_json::{Value, json};

use crate::support::Project;
use fleming_testkit::{Request, Response, TestServer};

/// A model that answers right when the stem's number is below `skill`, wrong otherwise,
/// and without an answer tag when it is a multiple of 7.
fn model(skill: u64) -> impl Fn(&Request) -> Response + Send + Sync + 'static {
    move |req: &Request| {
        let body = req.json().unwrap_or(Value::Null);
        let user = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("");
        let n: u64 =
            user.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).and_then(|s| s.parse().ok()).unwrap_or(0);
        let content = if n.is_multiple_of(7) {
            "<think>not sure</think> maybe B".to_string()
        } else if n < skill {
            "<think>the pancreas makes insulin</think><answer>B</answer>".to_string()
        } else {
            "<think>guessing</think><answer>C</answer>".to_string()
        };
        Response::json(
            200,
            &json!({"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}], "usage": {"completion_tokens": 9}}),
        )
    }
}

fn items(p: &Project, file: &str, range: std::ops::Range<u64>) {
    let mut lines = String::new();
    for i in range {
        lines.push_str(&json!({"question": format!("Question {i}: which organ makes insulin?"), "options": {"A": "Liver", "B": "Pancreas", "C": "Kidney", "D": "Thyroid"}, "answer_idx": "B", "answer": "Pancreas"}).to_string());
        lines.push('\n');
    }
    p.write(file, &lines);
}

fn pipeline(p: &Project, base: &TestServer, tuned: &TestServer, tuned_model: &str, benchmarks: &str) {
    p.pipeline(&format!(
        r#"
name: ev
stages:
  medqa: {{ op: curated, params: {{ format: medqa, path: medqa.jsonl }} }}
  extra: {{ op: curated, params: {{ format: medqa, path: extra.jsonl }} }}
  eval:
    op: evaluate
    inputs: {{ benchmarks: [{benchmarks}] }}
    params: {{ endpoints: [base, tuned], max_new_tokens: 64 }}
llm:
  base: {{ endpoint: "{}", model: base-model, max_retries: 0 }}
  tuned: {{ endpoint: "{}", model: {tuned_model}, max_retries: 0 }}
"#,
        base.url("/v1"),
        tuned.url("/v1")
    ));
}

#[test]
fn evaluate_scores_endpoints_reports_and_reuses_its_answers() {
    let base = TestServer::start(model(21)).unwrap();
    let tuned = TestServer::start(model(61)).unwrap();
    let p = Project::new();
    items(&p, "medqa.jsonl", 1..81);
    items(&p, "extra.jsonl", 100..110);
    pipeline(&p, &base, &tuned, "tuned-model", "medqa");
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("eval"), "ran");
    assert_eq!((base.request_count(), tuned.request_count()), (80, 80));

    // Scores: base right on 1..=20 but 7 and 14 (18 items), tuned on 1..=60 but the 8
    // multiples of 7 (52); the 11 multiples of 7 up to 80 have no answer tag.
    let q = p.fleming(&[
        "query",
        "pipeline.yaml",
        "select model, benchmark, n, correct, ok, no_answer from eval_scores where tier is null order by model, benchmark",
        "--format",
        "csv",
    ]);
    assert_eq!(q.code, 0, "{}", q.stderr);
    assert_eq!(
        q.stdout.trim(),
        "model,benchmark,n,correct,ok,no_answer\nbase,average,80,18,69,11\nbase,medqa,80,18,69,11\ntuned,average,80,52,69,11\ntuned,medqa,80,52,69,11"
    );
    // The ablation step is tested on the shared items.
    let q = p.fleming(&[
        "query",
        "pipeline.yaml",
        "select wins, losses, test, p_value from eval_comparisons where benchmark = 'medqa'",
        "--format",
        "csv",
    ]);
    assert!(q.stdout.contains("34,0,mcnemar,"), "{}", q.stdout);
    // The report, as `fleming show` prints it.
    let show = p.fleming(&["show", "pipeline.yaml", "eval.report"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(show.stdout.contains("eval.report: directory"), "{}", show.stdout);
    assert!(
        show.stdout.contains("report.html") && show.stdout.contains("## Table 1: accuracy per benchmark"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("| base | 22.5 ± 4.7 | 22.5 ± 4.7 |"), "{}", show.stdout);
    assert!(show.stdout.contains("| tuned | 65.0 | +42.5 | +42.5 ± 5.6 | mcnemar p = "), "{}", show.stdout);
    // Record lineage: a result row leads back to its item.
    let id = p.fleming(&["query", "pipeline.yaml", "select id from eval_results limit 1", "--format", "csv"]);
    let id = id.stdout.lines().nth(1).unwrap_or_default().to_string();
    let lineage = p.fleming(&["lineage", "pipeline.yaml", "eval", "--record", &id]);
    assert!(lineage.code == 0 && lineage.stdout.contains("medqa.questions"), "{}\n{}", lineage.stdout, lineage.stderr);

    // A rerun is cached and asks nothing.
    assert_eq!(p.run_ok(&[]).outcome("eval"), "cached");
    // Another benchmark: only its items are asked.
    pipeline(&p, &base, &tuned, "tuned-model", "medqa, extra");
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("eval"), "ran");
    assert_eq!((base.request_count(), tuned.request_count()), (90, 90));
    // Another model behind an endpoint: the stage reruns, and asks that endpoint only.
    pipeline(&p, &base, &tuned, "tuned-model-v2", "medqa, extra");
    let plan = p.fleming(&["run", "pipeline.yaml", "-n"]);
    assert!(plan.line("eval").contains("tuned-model-v2"), "{}", plan.stdout);
    p.run_ok(&[]);
    assert_eq!((base.request_count(), tuned.request_count()), (90, 180));
}
