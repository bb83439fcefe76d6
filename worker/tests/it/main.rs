//! Integration tests for fleming-worker (one binary): the OpenAI-compatible
//! server driven by the official Python `openai` client, and `run JOB.json`.

mod browser;
mod grpo;
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

/// POSTs a chat request and returns the answer's JSON body.
fn chat(addr: &str, body: &serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    let text = body.to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

#[test]
fn concurrent_requests_are_batched_and_answer_as_alone() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model_dir(dir.path());
    let (_server, url) = start_server(dir.path());
    let addr = url.trim_start_matches("http://").trim_end_matches("/v1").to_string();
    let request = |i: usize| {
        serde_json::json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": format!("Which drug treats case {i}? {}", "x ".repeat(i * 3))}],
            "max_tokens": 12 + i,
            "temperature": 0,
        })
    };
    let alone: Vec<serde_json::Value> = (0..6).map(|i| chat(&addr, &request(i))).collect();
    let together: Vec<serde_json::Value> = std::thread::scope(|s| {
        let (addr, request) = (&addr, &request);
        let handles: Vec<_> = (0..6).map(|i| s.spawn(move || chat(addr, &request(i)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a["choices"][0]["message"]["content"], t["choices"][0]["message"]["content"], "request {i}");
        assert_eq!(a["usage"]["completion_tokens"], t["usage"]["completion_tokens"], "request {i}");
    }
    // A request with n choices and a bad one at the same time: the bad one is refused, the
    // others are answered.
    let (good, bad) = std::thread::scope(|s| {
        let g = s.spawn(|| {
            chat(&addr, &serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 3, "max_tokens": 5, "temperature": 0.8, "seed": 1}))
        });
        let b = s.spawn(|| {
            chat(
                &addr,
                &serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}),
            )
        });
        (g.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(good["choices"].as_array().map(Vec::len), Some(3), "{good}");
    assert!(bad["error"]["message"].as_str().unwrap_or("").contains("top_p"), "{bad}");
}

#[test]
fn a_completion_stops_at_the_end_of_the_context_and_a_prompt_beyond_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model_dir(dir.path()); // context: 512 tokens
    let (_server, url) = start_server(dir.path());
    let addr = url.trim_start_matches("http://").trim_end_matches("/v1").to_string();
    let ask = |words: usize, max_tokens: usize| {
        chat(
            &addr,
            &serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "case ".repeat(words)}], "max_tokens": max_tokens, "temperature": 0}),
        )
    };
    let near_the_end = ask(80, 10_000);
    let usage = &near_the_end["usage"];
    let tokens = |k: &str| usage[k].as_u64().unwrap_or_else(|| panic!("{near_the_end}"));
    let (prompt, completion) = (tokens("prompt_tokens"), tokens("completion_tokens"));
    assert!(prompt < 512 && prompt + completion <= 512, "{near_the_end}");
    let finish = near_the_end["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || (finish == "length" && prompt + completion == 512), "{near_the_end}");
    let beyond = ask(2_000, 10);
    assert!(beyond["error"]["message"].as_str().unwrap_or("").contains("context is 512"), "{beyond}");
}
