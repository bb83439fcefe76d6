//! End to end through `fleming` itself: a pipeline whose `sft` stage the runtime
//! dispatches to this worker, and `fleming serve` on the trained model. Needs the
//! `fleming` binary built into the same target directory (`make build`; `make test`
//! builds it before these tests).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub(crate) fn fleming() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_fleming-worker"));
    let p = worker.with_file_name("fleming");
    assert!(
        p.is_file(),
        "this test drives the `fleming` binary, expected at {} beside the worker: build it first (`make build`)",
        p.display()
    );
    p
}

#[test]
fn fleming_runs_an_sft_stage_in_the_worker_and_serves_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::new();
    for i in 0..40 {
        let a = i % 4;
        rows.push_str(&format!(
            "{{\"id\": \"e{i}\", \"prompt\": \"Which letter is number {a}? \", \"completion\": \"<answer>{}</answer>\"}}\n",
            ["A", "B", "C", "D"][a]
        ));
    }
    std::fs::write(dir.path().join("examples.jsonl"), rows).unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "name: tiny\nstages:\n  examples: { op: load, params: { path: examples.jsonl } }\n  model:\n    op: sft\n    inputs: { examples: examples }\n    resources: { gpu: 1 }\n    params: { steps: 12, batch_size: 8, warmup_steps: 2, checkpoint_every: 5, vocab_size: 300, hidden_size: 32 }\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(fleming())
            .current_dir(dir.path())
            .args(args)
            .env("FLEMING_WORKER", env!("CARGO_BIN_EXE_fleming-worker"))
            .env("FLEMING_GPUS", "none")
            .output()
            .unwrap()
    };
    let out = run(&["run", "p.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("model     [sft]   ran"), "{stdout}");
    // The model is a tree object in the store, loadable as a Hugging Face directory.
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".fleming/refs/tiny/model.json")).unwrap()).unwrap();
    assert_eq!(r["outputs"]["model"]["kind"], "tree");
    let d = r["outputs"]["model"]["digest"].as_str().unwrap();
    let model_dir = dir.path().join(".fleming/objects").join(&d[..2]).join(format!("{}.tree", &d[2..]));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(model_dir.join(f).is_file(), "{f} missing from {}", model_dir.display());
    }
    // Training curves are kept beside the manifest.
    let run_id = r["run_id"].as_str().unwrap();
    let curve =
        std::fs::read_to_string(dir.path().join(".fleming/runs").join(format!("{run_id}.metrics.jsonl"))).unwrap();
    assert_eq!(curve.lines().count(), 12, "{curve}");
    assert!(curve.lines().all(|l| l.contains("\"loss\"")), "{curve}");
    // A rerun is cached.
    let out = run(&["run", "p.yaml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 ran, 2 cached"));

    // `fleming serve` starts the worker on the trained model.
    let mut child = Command::new(fleming())
        .args(["serve", "--model", model_dir.to_str().unwrap(), "--port", "0", "--name", "tiny", "--device", "cpu"])
        .env("FLEMING_WORKER", env!("CARGO_BIN_EXE_fleming-worker"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap_or_default().to_string();
    let addr = url.trim_start_matches("http://").trim_end_matches("/v1").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"id\":\"tiny\""), "{resp}");
}
