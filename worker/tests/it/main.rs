//! Integration tests for fleming-worker (one binary): the OpenAI-compatible
//! server driven by the official Python `openai` client, and `run JOB.json`.

mod pipeline;
mod quickstart;
mod run;
mod serve_as_endpoint;

use fleming_model::toy::ToyTask;
use fleming_model::{Placement, Qwen2, Qwen2Config, TextTokenizer};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn python() -> PathBuf {
    let p = std::env::var_os("FLEMING_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/fleming/py/bin/python")
    });
    assert!(p.exists(), "the Python test client is not installed at {}: run scripts/ensure-torch first", p.display());
    p
}

/// A tiny random model with a trained tokenizer, in HF layout.
fn tiny_model_dir(dir: &Path) {
    let task = ToyTask::new(8, 4, 1);
    let corpus: Vec<String> = task.questions(64, 4, 2).iter().map(|q| q.prompt() + &q.completion()).collect();
    let tk = TextTokenizer::train_bpe(corpus.iter(), 300).unwrap();
    tk.save(dir).unwrap();
    let mut cfg = Qwen2Config::small(tk.vocab_size(), 32, 2, 4, 2);
    cfg.max_position_embeddings = Some(512);
    let placement = Placement { device: Some(tch::Device::Cpu), kind: Some(tch::Kind::Float) };
    Qwen2::new_random(cfg, placement, 1).unwrap().save(dir, None).unwrap();
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(model: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleming-worker"))
        .args(["serve", "--model", model.to_str().unwrap(), "--port", "0", "--name", "tiny", "--device", "cpu"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap_or_default().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "unexpected first line {line:?}");
    (Server(child), url)
}

#[test]
fn openai_client_works_against_serve() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model_dir(dir.path());
    let (_server, url) = start_server(dir.path());
    let script =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("tests/py/openai_client.py");
    let out = Command::new(python()).arg(script).args([&url, "tiny"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "openai client checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_fails_clearly_on_a_missing_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleming-worker"))
        .args(["serve", "--model", "/nonexistent/model", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
}
