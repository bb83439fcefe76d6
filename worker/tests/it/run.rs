//! `fleming-worker run JOB.json`: the `sft` smoke operator through the dispatch protocol.

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::Table;
use fleming_dispatch::{Device, Event, Job, JobInput, PROTOCOL_VERSION};
use fleming_model::toy::ToyTask;
use fleming_model::{Placement, Qwen2, TextTokenizer};
use serde_json::{Map, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn write_examples(path: &Path) {
    let qs = ToyTask::new(8, 4, 1).questions(64, 4, 2);
    let prompts = StringArray::from(qs.iter().map(|q| q.prompt()).collect::<Vec<_>>());
    let completions = StringArray::from(qs.iter().map(|q| q.completion()).collect::<Vec<_>>());
    let schema =
        Schema::new(vec![Field::new("prompt", DataType::Utf8, false), Field::new("completion", DataType::Utf8, false)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(prompts), Arc::new(completions)]).unwrap();
    let f = std::fs::File::create(path).unwrap();
    Table::from_batch(batch).write_parquet(f).unwrap();
}

fn job(root: &Path, steps: u64) -> std::path::PathBuf {
    let table = root.join("examples.parquet");
    write_examples(&table);
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Resolved parameters, as the runtime hands them over: every declared name.
    let params: Map<String, serde_json::Value> = json!({
        "steps": steps, "batch_size": 8, "grad_accum": 1, "checkpoint_every": 10, "vocab_size": 300,
        "hidden_size": 32, "layers": 2, "heads": 4, "kv_heads": 2, "lr": 3e-3, "warmup_steps": 5,
        "weight_decay": 0.01, "max_grad_norm": 1.0, "max_len": 512, "seed": 0
    })
    .as_object()
    .cloned()
    .unwrap();
    let job = Job {
        protocol: PROTOCOL_VERSION,
        pipeline: "test".into(),
        stage: "sft".into(),
        op: "sft".into(),
        op_version: 1,
        key: "0".repeat(64),
        params,
        base_dir: root.to_path_buf(),
        inputs: [(
            "examples".to_string(),
            vec![JobInput { kind: "table".into(), path: table, digest: "x".into(), from: "data.table".into() }],
        )]
        .into(),
        output_dir: out,
        checkpoint_dir: root.join("ck"),
        device: Device { kind: "cpu".into(), gpus: vec![] },
        threads: 1,
        llm: Map::new(),
        resume_from: None,
    };
    let path = root.join("job.json");
    std::fs::write(&path, serde_json::to_vec(&job).unwrap()).unwrap();
    path
}

fn events(stdout: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

#[test]
fn sft_job_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 20);
    let out = Command::new(env!("CARGO_BIN_EXE_fleming-worker")).args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "worker failed: {}", String::from_utf8_lossy(&out.stderr));
    let ev = events(&out.stdout);
    assert!(matches!(ev.first(), Some(Event::Hello { .. })), "{ev:?}");
    let Some(Event::Done { metrics }) = ev.last() else { panic!("no done event: {ev:?}") };
    assert_eq!(metrics.get("steps"), Some(&json!(20)));
    let rows: Vec<_> = ev.iter().filter(|e| matches!(e, Event::Metrics { .. })).collect();
    assert_eq!(rows.len(), 20);
    let model_dir = dir.path().join("out/model");
    let placement = Placement { device: Some(tch::Device::Cpu), kind: Some(tch::Kind::Float) };
    Qwen2::load(&model_dir, placement).unwrap();
    TextTokenizer::from_dir(&model_dir).unwrap();
}

#[test]
fn sft_job_resumes_after_kill_9_and_unknown_ops_fail() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 400);
    let (mut child, reader) = start_job(&job);
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in reader.lines() {
        let line = line.unwrap();
        if dir.path().join("ck/checkpoints/latest").exists() && line.contains("\"step\":12") {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint within the deadline");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Rerun: it must resume from the last checkpoint, not restart.
    let state = std::fs::read_to_string(dir.path().join("ck/checkpoints/latest")).unwrap();
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("ck/checkpoints").join(state.trim()).join("trainer_state.json"))
            .unwrap(),
    )
    .unwrap();
    let at = state["step"].as_u64().unwrap();
    assert!((10..400).contains(&at), "checkpoint at step {at}");
    let mut j: Job = serde_json::from_slice(&std::fs::read(&job).unwrap()).unwrap();
    j.params.insert("steps".into(), json!(at + 10));
    std::fs::write(&job, serde_json::to_vec(&j).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleming-worker")).args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ev = events(&out.stdout);
    let resumed = format!("resuming at step {at}");
    assert!(ev.iter().any(|e| matches!(e, Event::Log { message, .. } if message.contains(&resumed))), "{ev:?}");
    let steps: Vec<u64> =
        ev.iter().filter_map(|e| if let Event::Metrics { step, .. } = e { *step } else { None }).collect();
    assert_eq!(steps, (at + 1..=at + 10).collect::<Vec<_>>());

    j.op = "no-such-op".into();
    std::fs::write(&job, serde_json::to_vec(&j).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleming-worker")).args(["run", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(matches!(events(&out.stdout).last(), Some(Event::Error { .. })));
}

/// `fleming-worker run JOB` in the background, with its event stream.
fn start_job(job: &Path) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleming-worker"))
        .args(["run", job.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, BufReader::new(stdout))
}

fn metric_steps(dir: &Path) -> Vec<u64> {
    fleming_dispatch::MetricsLog::read(&dir.join("ck").join(fleming_dispatch::METRICS_FILE))
        .unwrap()
        .iter()
        .filter_map(|r| r["step"].as_u64())
        .collect()
}

#[test]
fn sigterm_saves_a_checkpoint_and_the_rerun_continues_the_curve_once() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 400);
    let (mut child, mut reader) = start_job(&job);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut line = String::new();
    // Between checkpoints (every 10 steps): the signal's checkpoint is the only one there.
    while !line.contains("\"step\":13") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the worker ended early");
        assert!(Instant::now() < deadline, "no step 13 within the deadline");
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    let Some(Event::Error { message }) = events(rest.as_bytes()).pop() else { panic!("no error event: {rest}") };
    assert!(message.contains("stopped by a signal") && message.contains("is saved"), "{message}");
    let latest = std::fs::read_to_string(dir.path().join("ck/checkpoints/latest")).unwrap();
    let at: u64 = latest.trim().trim_start_matches("step-").parse().unwrap();
    assert!(at >= 13 && !at.is_multiple_of(10), "the signal's own checkpoint, at step {at}");
    assert_eq!(metric_steps(dir.path()), (1..=at).collect::<Vec<_>>(), "the curve up to the checkpoint is on disk");
    // The rerun resumes there; the durable curve holds every step once.
    let mut j: Job = serde_json::from_slice(&std::fs::read(&job).unwrap()).unwrap();
    j.params.insert("steps".into(), json!(at + 5));
    std::fs::write(&job, serde_json::to_vec(&j).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleming-worker")).args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(metric_steps(dir.path()), (1..=at + 5).collect::<Vec<_>>());
    let metrics = Table::read_parquet(&dir.path().join("out/metrics.parquet")).unwrap();
    assert_eq!(metrics.num_rows() as u64, at + 5);
}

#[test]
fn parameters_the_declaration_lacks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 2);
    let mut j: Job = serde_json::from_slice(&std::fs::read(&job).unwrap()).unwrap();
    j.params.insert("learning_rte".into(), json!(0.1));
    std::fs::write(&job, serde_json::to_vec(&j).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleming-worker")).args(["run", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let Some(Event::Error { message }) = events(&out.stdout).pop() else { panic!("no error") };
    assert!(message.contains("learning_rte") && message.contains("parameters of `sft`"), "{message}");
}
