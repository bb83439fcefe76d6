//! `distill` end to end through the `fleming` binary: an LLM teacher on a test server on
//! 127.0.0.1, killed with SIGKILL mid-way; the rerun makes only the calls that were not
//! committed, and a forced rerun makes none.

use std::time::Duration;

use fleming_testkit::{Request, Response, TestServer};
use serde_json::{Value, json};

use crate::support::Project;

/// An OpenAI-compatible teacher writing a passing chain for the gold answer B, after `delay`.
fn slow_teacher(delay: Duration) -> impl Fn(&Request) -> Response + Send + Sync + 'static {
    move |req: &Request| {
        std::thread::sleep(delay);
        let body = req.json().unwrap_or(Value::Null);
        let text = "<think>\nThe pancreas makes this hormone in its islet cells; the liver, kidney and thyroid do not.\n</think>\n<answer>B</answer>";
        Response::json(
            200,
            &json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "model": body["model"]}),
        )
    }
}

fn distill_pipeline(p: &Project, server: &TestServer, n: usize) {
    let mut lines = String::new();
    for i in 0..n {
        lines.push_str(&json!({"question": format!("Question {i}: which organ makes hormone {}?", i * 7919 % 10007), "options": {"A": "Liver", "B": "Pancreas", "C": "Kidney", "D": "Thyroid"}, "answer_idx": "B", "answer": "Pancreas"}).to_string());
        lines.push('\n');
    }
    p.write("items.jsonl", &lines);
    p.pipeline(&format!(
        r#"
name: distill
stages:
  items: {{ op: curated, params: {{ format: medqa, path: items.jsonl }} }}
  chains:
    op: distill
    inputs: {{ questions: items }}
    params: {{ teacher: llm, llm: v, k: 2 }}
llm:
  v: {{ endpoint: "{}", model: teacher, max_concurrency: 2, timeout_secs: 10, max_retries: 2 }}
"#,
        server.url("/v1")
    ));
}

#[test]
fn distill_survives_kill_9_during_teacher_calls_without_repeating_them() {
    let server = TestServer::start(slow_teacher(Duration::from_millis(100))).unwrap();
    let p = Project::new();
    distill_pipeline(&p, &server, 30);
    let made = p.run_killed_after_calls(&server, 20);
    assert!(made < 60, "the run was killed before it finished ({made} calls)");
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("chains"), "ran");
    let second = server.request_count() - made;
    // Calls committed before the kill are not made again: all but those of the last
    // group-commit second (~20 at 20 calls/s) and the 2 in flight were committed.
    assert!(made + second >= 60, "second run made {second} calls after {made}: some were never made");
    assert!(second <= 60 - made + 26, "second run made {second} calls after {made}: committed calls were made again");
    let m = p.manifests_of("chains").last().map(|m| m["metrics"].clone()).unwrap_or(Value::Null);
    assert_eq!(m["selected"], json!(30), "{m}");
    // A forced rerun answers every call from the memo.
    let before = server.request_count();
    p.run_ok(&["--force", "--stage", "chains"]);
    assert_eq!(server.request_count(), before, "a forced rerun made calls");
}
