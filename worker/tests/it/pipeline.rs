//! End to end through `fleming` itself: a pipeline whose `sft` stage the runtime
//! dispatches to this worker, and `fleming serve` on the trained model. Needs the
//! `fleming` binary built into the same target directory (`make build`; `make test`
//! builds it before these tests).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
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

/// `fleming` in `dir`, with this worker and no GPUs.
fn fleming_in(dir: &Path) -> Command {
    let mut cmd = Command::new(fleming());
    cmd.current_dir(dir).env("FLEMING_WORKER", env!("CARGO_BIN_EXE_fleming-worker")).env("FLEMING_GPUS", "none");
    cmd
}

/// `p.yaml` in `dir`: a model stage `m` on `model_path` and an evaluate stage `eval` on the
/// three MedQA items of the operator-test fixtures.
fn write_eval_pipeline(dir: &Path, model_path: &str, eval_params: &str) {
    let items = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/ops/fixtures/medqa-items.jsonl");
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "name: mine\nstages:\n  m: {{ op: model, params: {{ path: \"{model_path}\" }} }}\n  items: {{ op: load, params: {{ path: {} }} }}\n  eval: {{ op: evaluate, inputs: {{ models: [m], benchmarks: [items] }}, params: {{ {eval_params} }} }}\n",
            items.display()
        ),
    )
    .unwrap();
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
    let run = |args: &[&str]| fleming_in(dir.path()).args(args).output().unwrap();
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
    // The curve is also the stage's `metrics` table.
    let out = run(&["show", "p.yaml", "model.metrics"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("12 rows"), "{}", String::from_utf8_lossy(&out.stdout));

    // More steps, nothing else changed: the stage continues from its final checkpoint.
    let yaml = std::fs::read_to_string(dir.path().join("p.yaml")).unwrap();
    std::fs::write(dir.path().join("p.yaml"), yaml.replace("steps: 12", "steps: 20")).unwrap();
    let out = run(&["run", "p.yaml", "-n"]);
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(plan.contains("continues from step 12 of the previous run"), "{plan}");
    let out = run(&["status", "p.yaml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("continues from step 12"));
    let out = run(&["run", "p.yaml"]);
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("continuing the previous run at step 12 of 20"), "{log}");
    let out =
        run(&["query", "p.yaml", "select count(*) as n, min(step) as first, max(step) as last from model_metrics"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.contains("20") && table.contains(" 1 "), "{table}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".fleming/refs/tiny/model.json")).unwrap()).unwrap();
    let d = r["outputs"]["model"]["digest"].as_str().unwrap();
    let model_dir = dir.path().join(".fleming/objects").join(&d[..2]).join(format!("{}.tree", &d[2..]));
    // Less than before is not a continuation: it trains from the start.
    std::fs::write(dir.path().join("p.yaml"), yaml.replace("steps: 12", "steps: 6")).unwrap();
    let out = run(&["run", "p.yaml", "-n"]);
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!plan.contains("continues") && plan.contains("steps: 20 -> 6"), "{plan}");

    // `fleming serve` starts the worker on the trained model, under the stage's name.
    let mut child = Command::new(fleming())
        .args(["serve", "--model", model_dir.to_str().unwrap(), "--port", "0", "--device", "cpu"])
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
    assert!(resp.contains("\"id\":\"model\""), "{resp}");
}

#[test]
fn ctrl_c_during_training_keeps_a_checkpoint_at_the_last_step_and_the_curve() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::new();
    for i in 0..40 {
        rows.push_str(&format!(
            "{{\"id\": \"e{i}\", \"prompt\": \"Letter {}? \", \"completion\": \"<answer>A</answer>\"}}\n",
            i % 4
        ));
    }
    std::fs::write(dir.path().join("examples.jsonl"), rows).unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "name: long\nstages:\n  examples: { op: load, params: { path: examples.jsonl } }\n  model:\n    op: sft\n    inputs: { examples: examples }\n    params: { steps: 3000, batch_size: 8, warmup_steps: 2, checkpoint_every: 1000, vocab_size: 300, hidden_size: 32 }\n",
    )
    .unwrap();
    let child =
        fleming_in(dir.path()).args(["run", "p.yaml"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until the worker has a few steps on its durable curve, then Ctrl-C fleming.
    let work = dir.path().join(".fleming/work");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let steps_on_disk = || -> usize {
        std::fs::read_dir(&work)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("checkpoint/metrics.jsonl")).ok())
            .map(|t| t.lines().count())
            .max()
            .unwrap_or(0)
    };
    while steps_on_disk() < 5 {
        assert!(std::time::Instant::now() < deadline, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(130), "{log}");
    assert!(log.contains("stopped by a signal"), "{log}");
    let saved = steps_on_disk();
    assert!(saved >= 5, "{log}");
    // The cancelled run's curve is kept beside its manifest.
    let kept: Vec<_> = std::fs::read_dir(dir.path().join(".fleming/runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".metrics.jsonl"))
        .collect();
    assert_eq!(kept.len(), 1, "{log}");
    // The checkpoint the next run resumes from is at the last step of that curve.
    let checkpoint = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .find_map(|e| std::fs::read_to_string(e.path().join("checkpoint/checkpoints/latest")).ok())
        .expect("a checkpoint in the stage's work directory");
    let at: usize = checkpoint.trim().trim_start_matches("step-").parse().unwrap();
    assert_eq!(at, saved, "the checkpoint is at the last step the curve has");
}

#[test]
fn a_model_directory_of_ones_own_is_evaluated_and_its_key_ignores_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("my-model");
    crate::tiny_model_dir(&model);
    std::fs::write(model.join("README.md"), "# my model\n").unwrap();
    write_eval_pipeline(dir.path(), "${MY_MODEL}", "max_new_tokens: 16");
    let run = |args: &[&str]| fleming_in(dir.path()).args(args).env("MY_MODEL", &model).output().unwrap();
    let out = run(&["run", "p.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("eval   [evaluate]  ran"), "{stdout}");
    // The model in the store holds the model's files, not the README.
    let show = String::from_utf8_lossy(&run(&["show", "p.yaml", "m"]).stdout).to_string();
    assert!(
        show.contains("model.safetensors") && show.contains("tokenizer.json") && !show.contains("README"),
        "{show}"
    );
    let report = String::from_utf8_lossy(&run(&["show", "p.yaml", "eval.report"]).stdout).to_string();
    assert!(report.contains("| m | "), "{report}");
    // Editing the README changes nothing; editing the weights reruns both stages.
    std::fs::write(model.join("README.md"), "# my model, v2\n").unwrap();
    let out = run(&["run", "p.yaml"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 ran, 3 cached"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut w = std::fs::read(model.join("model.safetensors")).unwrap();
    let last = w.len() - 1;
    w[last] ^= 1;
    std::fs::write(model.join("model.safetensors"), w).unwrap();
    let out = run(&["run", "p.yaml", "-n"]);
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(plan.lines().any(|l| l.starts_with("m ") && l.contains("file of `path` changed")), "{plan}");
    // A directory the worker cannot run is refused before anything runs, at its line.
    std::fs::write(model.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let out = run(&["run", "p.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("p.yaml:3:") && err.contains("\"llama\"") && err.contains("supported: qwen2"), "{err}");
}

#[test]
fn a_model_the_server_cannot_load_fails_the_evaluation_with_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken");
    crate::tiny_model_dir(&model);
    // Weights cut short: the directory looks right, the server cannot load it.
    let w = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(model.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    write_eval_pipeline(dir.path(), "broken", "");
    let out = fleming_in(dir.path()).args(["run", "p.yaml"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("evaluating `m`") && err.contains("model server"), "{err}");
    assert!(err.contains("model.safetensors"), "the server's own reason is shown: {err}");
}

/// The metrics of the last run of `stage` in the store under `dir`.
pub(crate) fn stage_metrics(dir: &Path, pipeline: &str, stage: &str) -> serde_json::Value {
    let read = |p: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let r = read(dir.join(format!(".fleming/refs/{pipeline}/{stage}.json")));
    let run_id = r["run_id"].as_str().unwrap().to_string();
    read(dir.join(format!(".fleming/runs/{run_id}.json")))["metrics"].clone()
}

#[test]
fn distill_asks_a_model_artifact_as_its_teacher_and_counts_what_fails() {
    let dir = tempfile::tempdir().unwrap();
    crate::tiny_model_dir(&dir.path().join("teacher"));
    let items = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/ops/fixtures/medqa-items.jsonl");
    let pipeline = |max_words: u32| {
        format!(
            "name: selfdistill\nstages:\n  t: {{ op: model, params: {{ path: teacher }} }}\n  items: {{ op: load, params: {{ path: {} }} }}\n  chains:\n    op: distill\n    inputs: {{ questions: items, teacher: t }}\n    params: {{ teacher: model, k: 2, refine_rounds: 1, max_new_tokens: 24, max_words: {max_words} }}\n",
            items.display()
        )
    };
    std::fs::write(dir.path().join("p.yaml"), pipeline(200)).unwrap();
    let run = || {
        let out = fleming_in(dir.path()).args(["run", "p.yaml"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    run();
    let first = stage_metrics(dir.path(), "selfdistill", "chains");
    // A random model writes no chain that passes: every item is tried in both rounds
    // (k = 2 candidates each), every candidate is a rejected trace, nothing is selected.
    assert_eq!(first["items"], 3, "{first}");
    assert_eq!(first["selected"], 0, "{first}");
    assert_eq!(first["unresolved"], 3, "{first}");
    assert_eq!(first["candidates"], 12, "{first}");
    assert_eq!(first["memo_misses"], 12, "one call per candidate: {first}");
    assert_eq!(first["calls_failed"], 0, "the served model answered every call: {first}");
    assert!(first["rejected.answer"].as_u64().unwrap_or(0) + first["rejected.format"].as_u64().unwrap_or(0) >= 12);
    let traces = fleming_in(dir.path())
        .args([
            "query",
            "p.yaml",
            "select count(*) n, sum(case when passed then 1 else 0 end) p, sum(length(reply)) chars from chains_traces",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let row: serde_json::Value = serde_json::from_slice(&traces.stdout).unwrap();
    assert_eq!(row["n"], 12, "{row}");
    assert_eq!(row["p"], 0, "{row}");
    assert!(row["chars"].as_i64().unwrap_or(0) > 0, "the model's replies are kept: {row}");
    // A verifier's bound is not part of any call: the rerun asks the model nothing.
    std::fs::write(dir.path().join("p.yaml"), pipeline(150)).unwrap();
    let out = run();
    assert!(out.contains("chains") && out.contains("1 ran"), "{out}");
    let second = stage_metrics(dir.path(), "selfdistill", "chains");
    assert_eq!(second["memo_misses"], 0, "{second}");
    assert_eq!(second["memo_hits"], 12, "{second}");
}
