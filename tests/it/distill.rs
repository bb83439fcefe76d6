//! `distill` end to end through the `fleming` binary: an LLM teacher on a test server on
//! 127.0.0.1, killed with SIGKILL mid-way; the rerun makes only the calls that were not
//! committed, and a forced rerun makes none.

use std::time::Duration;

use fleming_testkit::TestServer;
use serde_json::{Value, json};

use crate::support::{Project, slow_chat, write_medqa_items};

/// A teacher's passing chain for the gold answer B.
const CHAIN: &str = "<think>\nThe pancreas makes this hormone in its islet cells; the liver, kidney and thyroid do not.\n</think>\n<answer>B</answer>";

fn distill_pipeline(p: &Project, server: &TestServer, n: usize) {
    write_medqa_items(p, n);
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
    let server = TestServer::start(slow_chat(Duration::from_millis(100), CHAIN)).unwrap();
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
