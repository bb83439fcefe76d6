//! The LLM client of the question-data operators against `fleming serve` (the model
//! issue's server): a `difficulty-label` stage whose reference model is the served
//! model, run by `fleming`, with every call memoised.

use std::process::Command;

use crate::pipeline::fleming;
use crate::{start_server, tiny_model_dir};

#[test]
fn difficulty_label_uses_a_served_model_as_its_reference_and_memoises_the_calls() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    tiny_model_dir(&model);
    let (_server, url) = start_server(&model);
    let mut rows = String::new();
    for (i, (q, a)) in
        [("Which gland secretes cortisol?", "A"), ("Which nerve innervates the diaphragm?", "B")].iter().enumerate()
    {
        rows.push_str(&format!(
            "{{\"id\": \"q{i}\", \"question\": \"{q}\", \"options\": [{{\"label\": \"A\", \"text\": \"Adrenal cortex\"}}, {{\"label\": \"B\", \"text\": \"Phrenic\"}}], \"answer\": \"{a}\"}}\n"
        ));
    }
    std::fs::write(dir.path().join("q.jsonl"), rows).unwrap();
    let pipeline = |easy: f64| {
        format!(
            "name: served\nllm:\n  tiny:\n    endpoint: {url}\n    model: tiny\n    max_concurrency: 2\n    params: {{ max_tokens: 16 }}\nstages:\n  q: {{ op: load, params: {{ path: q.jsonl }} }}\n  tiers:\n    op: difficulty-label\n    inputs: {{ questions: q }}\n    params: {{ method: pass_rate, llm: tiny, samples: 3, temperature: 1.0, easy_above: {easy} }}\n"
        )
    };
    let run = || {
        let o = Command::new(fleming()).current_dir(dir.path()).args(["run", "p.yaml"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        stdout
    };
    let metrics = || {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(".fleming/refs/served/tiers.json")).unwrap())
                .unwrap();
        let id = r["run_id"].as_str().unwrap().to_string();
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!(".fleming/runs/{id}.json"))).unwrap())
                .unwrap();
        m["metrics"].clone()
    };
    std::fs::write(dir.path().join("p.yaml"), pipeline(0.8)).unwrap();
    run();
    let first = metrics();
    assert_eq!(first["memo_misses"], 6, "2 items x 3 samples, each one call: {first}");
    // A threshold is not part of any call: the rerun labels again from memoised answers.
    std::fs::write(dir.path().join("p.yaml"), pipeline(0.9)).unwrap();
    let out = run();
    assert!(out.contains("tiers") && out.contains("1 ran"), "{out}");
    let second = metrics();
    assert_eq!(second["memo_misses"], 0, "{second}");
    assert_eq!(second["memo_hits"], 6, "{second}");
}
