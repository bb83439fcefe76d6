//! The README's main job runs, and reruns as a no-op. Its `sft` stages need the torch
//! worker, which this suite does not build: here the worker is missing on purpose, so
//! those stages fail with their clear message, `eval` (which asks their models) is
//! skipped, and every other stage runs (`--keep-going`). `worker/tests/it/quickstart.rs`
//! runs the whole job with the worker.

use crate::support::{Project, jsonl_rows, repo};

#[test]
fn quickstart_runs_and_reruns_cached() {
    let scratch = Project::new();
    let pipeline = repo().join("pipelines/quickstart.yaml");
    let pipeline = pipeline.to_str().expect("utf-8 path");
    let store = scratch.path().join("store");
    let out = scratch.path().join("out");
    let no_worker = scratch.path().join("no-such-worker");
    let run = || {
        let o = scratch
            .command(&["run", pipeline, "--store", store.to_str().expect("path"), "--keep-going"])
            .env("QUICKSTART_OUT", &out)
            .env("FLEMING_WORKER", &no_worker)
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(stderr.contains("FLEMING_WORKER=") && stderr.contains("does not name a file"), "{stderr}");
        stdout
    };
    let first = run();
    // Every CPU stage runs (the count grows as operators join the quickstart).
    assert!(first.contains("18 ran, 0 cached, 2 failed, 4 skipped"), "{first}");
    assert!(first.lines().any(|l| l.starts_with("base ") && l.contains("FAILED")), "{first}");
    assert!(first.lines().any(|l| l.starts_with("eval ") && l.contains("upstream `base` failed")), "{first}");
    let hard = jsonl_rows(&out.join("hard-questions.jsonl"));
    assert_eq!(hard.len(), 13);
    assert!(hard.iter().all(|r| r["difficulty"] != "easy"));
    let summary = std::fs::read_to_string(out.join("by-subject.csv")).expect("csv");
    assert_eq!(summary.lines().next(), Some("id,area,exam_weight,questions,difficult"));
    assert!(summary.contains("cardiology,internal medicine,0.14,5,0"), "{summary}");
    let second = run();
    assert!(second.contains("0 ran, 18 cached, 2 failed, 4 skipped"), "{second}");
    // Question data: synthetic and curated items, validated, mixed and tiered.
    let tiered = jsonl_rows(&out.join("questions-tiered.jsonl"));
    assert!(tiered.iter().any(|r| r["source"] == "synthetic") && tiered.iter().any(|r| r["source"] == "medqa"));
    assert!(tiered.iter().all(|r| ["easy", "moderate", "difficult"].contains(&r["difficulty"].as_str().unwrap_or(""))));
    // The synthetic items stand on the graph extracted from the shipped export: their
    // parents are its relation and entity rows.
    let graph: std::collections::HashSet<String> = ["kg-entities.jsonl", "kg-relations.jsonl"]
        .iter()
        .flat_map(|f| jsonl_rows(&out.join(f)))
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    for r in tiered.iter().filter(|r| r["source"] == "synthetic") {
        let parents = r["parents"].as_array().expect("parents");
        assert!(!parents.is_empty() && parents.iter().all(|p| graph.contains(p.as_str().unwrap_or(""))), "{r}");
    }
}
