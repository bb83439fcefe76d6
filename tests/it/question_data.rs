//! Question data end to end (issue 7): curated loaders on the shared benchmark files,
//! KG-guided `sample`, `validate` (kg and LLM validators, mixing) and `difficulty-label`,
//! through the real `fleming` binary; LLM calls go to a test server on 127.0.0.1.

use std::path::PathBuf;
use std::time::Duration;

use fleming_testkit::{Fault, FaultPlan, Request, Response, TestServer, When};
use serde_json::{Value, json};

use crate::support::{Project, jsonl_rows, repo, slow_chat, write_medqa_items};

fn shared_benchmarks() -> PathBuf {
    let dir = match std::env::var_os("FLEMING_SHARED_DATA") {
        Some(d) => PathBuf::from(d),
        None => repo().join("../shared/data"),
    };
    let b = dir.join("benchmarks");
    assert!(
        b.is_dir(),
        "the shared data is missing: {} (set FLEMING_SHARED_DATA to the directory holding benchmarks/)",
        b.display()
    );
    b
}

fn metrics(p: &Project, stage: &str) -> Value {
    p.manifests_of(stage).last().map(|m| m["metrics"].clone()).unwrap_or(Value::Null)
}

#[test]
fn curated_sample_validate_label_pipeline() {
    let p = Project::new();
    let kg = repo().join("pipelines/data/quickstart/kg");
    let medqa = shared_benchmarks().join("medqa-us/phrases_no_exclude_test.jsonl");
    let yaml = format!(
        r#"
name: qd
stages:
  entities: {{ op: load, params: {{ path: "{kg}/entities.jsonl" }} }}
  relations: {{ op: load, params: {{ path: "{kg}/relations.jsonl" }} }}
  medqa: {{ op: curated, params: {{ format: medqa, path: "{medqa}" }} }}
  synthetic:
    op: sample
    inputs: {{ entities: entities, relations: relations }}
    params: {{ questions: 60, hops: [1, 2], options: 4, seed: 7 }}
  clean:
    op: validate
    inputs: {{ questions: [medqa, synthetic], entities: entities, relations: relations }}
    params: {{ verify: {{ kg: true, trials: 5 }}, mix: {{ synthetic: 0.25, seed: 1 }} }}
  tiers:
    op: difficulty-label
    inputs: {{ questions: clean, entities: entities, relations: relations }}
    params: {{ method: pass_rate, kg: true, samples: 8 }}
  out: {{ op: export, inputs: {{ table: tiers }}, params: {{ path: out/tiers.jsonl }} }}
"#,
        kg = kg.display(),
        medqa = medqa.display()
    );
    p.pipeline(&yaml);
    let first = p.run_ok(&[]);
    assert!(first.stdout.contains("7 ran"), "{}", first.stdout);
    let m = metrics(&p, "medqa");
    assert_eq!(m["rows"], json!(1273));
    let v = metrics(&p, "clean");
    let accounted =
        ["kept", "rejected", "flagged", "left_out_by_mixing"].iter().map(|k| v[k].as_u64().unwrap_or(0)).sum::<u64>();
    assert_eq!(accounted, 1273 + 60, "{v}");
    assert_eq!(v["flagged"], json!(0), "the graph confirms every synthetic label: {v}");
    let rows = jsonl_rows(&p.path().join("out/tiers.jsonl"));
    let syn = rows.iter().filter(|r| r["source"] == "synthetic").count();
    assert!(syn > 0 && (syn as f64 / rows.len() as f64 - 0.25).abs() < 0.02, "{syn} of {}", rows.len());
    assert!(rows.iter().all(|r| ["easy", "moderate", "difficult"].contains(&r["difficulty"].as_str().unwrap_or(""))));
    assert!(
        rows.iter()
            .filter(|r| r["source"] == "synthetic")
            .all(|r| r["kg_path"].as_array().is_some_and(|a| !a.is_empty()))
    );
    // Rerun: all cached. A new mixing ratio reruns validate and what follows, nothing else.
    let second = p.run_ok(&[]);
    assert!(second.stdout.contains("0 ran, 7 cached"), "{}", second.stdout);
    p.pipeline(&yaml.replace("synthetic: 0.25", "synthetic: 0.3"));
    let third = p.run_ok(&[]);
    for s in ["entities", "relations", "medqa", "synthetic"] {
        assert_eq!(third.outcome(s), "cached", "{}", third.stdout);
    }
    assert_eq!(third.outcome("clean"), "ran", "{}", third.stdout);
}

/// An OpenAI-compatible handler answering B after `delay`.
fn slow_model(delay: Duration) -> impl Fn(&Request) -> Response + Send + Sync + 'static {
    slow_chat(delay, "<answer>B</answer>")
}

fn llm_pipeline(p: &Project, server: &TestServer, n: usize) {
    write_medqa_items(p, n);
    p.pipeline(&format!(
        r#"
name: llm
stages:
  items: {{ op: curated, params: {{ format: medqa, path: items.jsonl }} }}
  clean:
    op: validate
    inputs: {{ questions: items }}
    params: {{ verify: {{ llm: v, trials: 2 }} }}
llm:
  v: {{ endpoint: "{}", model: test-model, max_concurrency: 2, timeout_secs: 10, max_retries: 2 }}
"#,
        server.url("/v1")
    ));
}

#[test]
fn llm_validation_survives_kill_9_and_reruns_make_no_calls() {
    let server = TestServer::start(slow_model(Duration::from_millis(100))).unwrap();
    let p = Project::new();
    llm_pipeline(&p, &server, 30);
    // Start a run and kill it after ~1.5 s (about 30 of its 60 calls).
    let made = p.run_killed_after_calls(&server, 20);
    assert!(made < 60, "the run was killed before it finished ({made} calls)");
    let r = p.run_ok(&[]);
    let total = server.request_count();
    // Calls committed before the kill were not made again: at 20 calls/s, all but those of
    // the last group-commit second (~20) and those in flight (2) were committed.
    let second = total - made;
    assert!(60 - second.min(60) + 26 >= made, "second run made {second} calls after {made}: committed calls were lost");
    assert!(second < 60, "committed calls were reused ({second} calls on the second run)");
    assert_eq!(r.outcome("clean"), "ran");
    // Rerun with --force: every answer comes from the memo.
    let before = server.request_count();
    p.run_ok(&["--force", "--stage", "clean"]);
    assert_eq!(server.request_count(), before, "a forced rerun makes zero calls");
}

#[test]
fn llm_failures_are_reported_and_the_stage_fails() {
    let server = TestServer::builder()
        .plan(FaultPlan::new().add(When::Always, Fault::Status(503)))
        .start(slow_model(Duration::ZERO))
        .unwrap();
    let p = Project::new();
    llm_pipeline(&p, &server, 3);
    let r = p.fleming(&["run", "pipeline.yaml"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("6 of 6 calls to llm endpoint `v`") && all.contains("HTTP 503"), "{all}");
}
