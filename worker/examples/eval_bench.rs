//! Benchmarks of evaluation and serving, each side by side with its alternative in the
//! same run.
//!
//! ```text
//! eval "$(scripts/ensure-torch --env)"
//! export CARGO_TARGET_DIR=~/.cache/fleming/target-release
//! cargo build --release --workspace --bins --examples
//! $CARGO_TARGET_DIR/release/examples/eval_bench                 # both parts
//! $CARGO_TARGET_DIR/release/examples/eval_bench --part eval     # or serve
//! ```
//!
//! - `eval`: the `evaluate` operator (a `fleming run` stage: the model artifact served by
//!   the torch worker, batched, greedy) on the first `--items` MedQA test items, against
//!   transformers' `generate` on the same weights and the same prompt token ids (batched,
//!   greedy, KV cache, left padding), for the quickstart-sized model and the 22M model of
//!   the model bench. Both on 2 threads, f32. Tokens/s counts generated tokens up to and
//!   including the end of the turn.
//! - `serve`: `fleming-worker serve` on the 22M model; 16 concurrent clients (the `openai`
//!   Python client, 128 new tokens each) against the same 16 requests one at a time.
//!
//! Needs the shared data (`../shared/data` or `FLEMING_SHARED_DATA`) and the release
//! `fleming` and `fleming-worker` beside this example's target directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use fleming_model::chat::question_prompt;
use fleming_model::{Placement, Qwen2, Qwen2Config, TextTokenizer};
use serde_json::{Value, json};

const THREADS: usize = 2;

fn cpu() -> Placement {
    Placement { device: Some(tch::Device::Cpu), kind: Some(tch::Kind::Float) }
}

fn python() -> PathBuf {
    std::env::var_os("FLEMING_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/fleming/py/bin/python")
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shared_data() -> anyhow::Result<PathBuf> {
    let d = std::env::var_os("FLEMING_SHARED_DATA").map(PathBuf::from).unwrap_or_else(|| repo().join("../shared/data"));
    if !d.join("benchmarks/medqa-us/phrases_no_exclude_test.jsonl").is_file() {
        bail!("the shared MedQA test set is missing under {} (set FLEMING_SHARED_DATA)", d.display());
    }
    Ok(d)
}

/// The release binaries beside this example (`…/release/examples/eval_bench` → `…/release/`).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("no target directory")?;
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: `cargo build --release --bins && cargo build --release -p fleming-worker` first",
            p.display()
        );
    }
    Ok(p)
}

fn run_py(script: &str, args: &[&str]) -> anyhow::Result<Value> {
    let path = repo().join("worker/examples/py").join(script);
    let out = Command::new(python()).arg(&path).args(args).output().context("starting python")?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(text.lines().last().unwrap_or("{}"))?)
}

fn fleming(args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(binary("fleming")?)
        .current_dir(dir)
        .args(args)
        .env("FLEMING_WORKER", binary("fleming-worker")?)
        .env("FLEMING_GPUS", "none")
        .output()?;
    if !out.status.success() {
        bail!(
            "fleming {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn query(dir: &Path, sql: &str) -> anyhow::Result<Vec<Value>> {
    let text = fleming(&["query", "p.yaml", sql, "--format", "json"], dir)?;
    Ok(serde_json::from_str(&text).or_else(|_| {
        text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<Vec<Value>, _>>()
    })?)
}

/// The 22M model of the model bench, with a BPE tokenizer of its vocabulary trained on
/// the MedQA questions.
fn model_22m(dir: &Path, medqa: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(medqa)?;
    let corpus: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| format!("{} {}", v["question"].as_str().unwrap_or(""), v["options"]))
        .collect();
    let tk = TextTokenizer::train_bpe(corpus.iter(), 16384)?;
    tk.save(dir)?;
    let mut cfg = Qwen2Config::small(tk.vocab_size(), 384, 6, 6, 2);
    cfg.intermediate_size = 1024;
    cfg.tie_word_embeddings = false;
    cfg.max_position_embeddings = Some(4096);
    cfg.eos_token_id = tk.token_id("<|im_end|>").map(Value::from);
    Qwen2::new_random(cfg, cpu(), 0)?.save(dir, None)?;
    Ok(())
}

/// Evaluate (a `fleming run` stage) against transformers' generate on one model.
fn eval_one(label: &str, model: &Path, work: &Path, items: usize, max_new: usize) -> anyhow::Result<()> {
    let medqa = shared_data()?.join("benchmarks/medqa-us/phrases_no_exclude_test.jsonl");
    let dir = work.join(label);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "name: bench\nstages:\n  m: {{ op: model, params: {{ path: {} }} }}\n  items: {{ op: curated, params: {{ format: medqa, path: {} }} }}\n  first: {{ op: sql, inputs: {{ q: items }}, params: {{ query: \"select * from q order by id limit {items}\" }} }}\n  eval: {{ op: evaluate, inputs: {{ models: [m], benchmarks: [first] }}, params: {{ max_new_tokens: {max_new}, batch_size: 16 }} }}\n",
            model.display(),
            medqa.display()
        ),
    )?;
    fleming(&["run", "p.yaml", "--until", "first", "-q"], &dir)?;
    fleming(&["run", "p.yaml", "-w", &THREADS.to_string(), "-q"], &dir)?;
    let runs = query(&dir, "select duration_ms from runs where stage = 'eval' and status = 'succeeded'")?;
    let ms = runs.first().and_then(|r| r["duration_ms"].as_f64()).context("no eval run")?;
    let tok = query(&dir, "select sum(completion_tokens) as t, count(*) as n from eval_results")?;
    let tokens = tok.first().and_then(|r| r["t"].as_f64()).context("no results")?;
    let rust = tokens / (ms / 1000.0);
    // The same prompts, as token ids, for transformers.
    let rows = query(&dir, "select * from first order by id")?;
    let tk = TextTokenizer::from_dir(model)?;
    let mut prompts = Vec::new();
    for r in &rows {
        let q = fleming_questions::Question {
            question: r["question"].as_str().unwrap_or("").to_string(),
            context: r["context"].as_str().map(str::to_string),
            options: r["options"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| {
                    fleming_questions::Choice::new(o["label"].as_str().unwrap_or(""), o["text"].as_str().unwrap_or(""))
                })
                .collect(),
            ..Default::default()
        };
        prompts.push(tk.encode(&question_prompt(&q))?);
    }
    let spec = json!({"prompts": prompts, "eos": tk.stop_ids(), "pad": tk.pad_id()});
    let spec_path = dir.join("prompts.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let py = run_py(
        "hf_generate.py",
        &[
            model.to_str().unwrap_or(""),
            spec_path.to_str().unwrap_or(""),
            &THREADS.to_string(),
            "16",
            &max_new.to_string(),
        ],
    )?;
    let hf = py["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    println!(
        "eval {label}: {items} items, ≤{max_new} new tokens, batch 16, {THREADS} threads: evaluate stage {tokens:.0} tokens in {:.2} s = {rust:.1} tokens/s; transformers generate {} tokens in {:.2} s = {hf:.1} tokens/s; ratio {:.2}x",
        ms / 1000.0,
        py["tokens"],
        py["seconds"].as_f64().unwrap_or(f64::NAN),
        rust / hf
    );
    Ok(())
}

fn serve(model: &Path) -> anyhow::Result<()> {
    let mut child = Command::new(binary("fleming-worker")?)
        .args(["serve", "--model", model.to_str().unwrap_or(""), "--port", "0", "--name", "bench", "--device", "cpu"])
        .args(["--threads", &THREADS.to_string(), "--max-batch", "16"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let url = line.trim().rsplit(' ').next().unwrap_or_default().to_string();
    let r = run_py("serve_clients.py", &[&url, "bench", "16", "128"]);
    let _ = child.kill();
    let _ = child.wait();
    let r = r?;
    let (s, c) = (&r["sequential"], &r["concurrent"]);
    let (st, ct) = (s["tokens_per_s"].as_f64().unwrap_or(f64::NAN), c["tokens_per_s"].as_f64().unwrap_or(f64::NAN));
    println!(
        "serve 22M: 16 requests of 128 new tokens, {THREADS} threads: one at a time {} tokens in {:.2} s = {st:.1} tokens/s; 16 concurrent clients {} tokens in {:.2} s = {ct:.1} tokens/s; ratio {:.2}x",
        s["tokens"],
        s["seconds"].as_f64().unwrap_or(f64::NAN),
        c["tokens"],
        c["seconds"].as_f64().unwrap_or(f64::NAN),
        ct / st
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let part = arg("--part").unwrap_or_else(|| "all".into());
    let items: usize = arg("--items").and_then(|s| s.parse().ok()).unwrap_or(64);
    let max_new: usize = arg("--max-new").and_then(|s| s.parse().ok()).unwrap_or(128);
    fleming_model::set_threads(THREADS);
    let tmp = tempfile::tempdir()?;
    let work = tmp.path();
    let medqa = shared_data()?.join("benchmarks/medqa-us/phrases_no_exclude_test.jsonl");
    let big = work.join("model-22m");
    model_22m(&big, &medqa)?;
    if part == "all" || part == "eval" {
        // The quickstart's model: the `tutor` stage, trained as `make quickstart` does.
        let store = work.join("quickstart-store");
        let q = repo().join("pipelines/quickstart.yaml");
        fleming(
            &["run", q.to_str().unwrap_or(""), "--until", "tutor", "--store", store.to_str().unwrap_or(""), "-q"],
            work,
        )?;
        let r: Value = serde_json::from_slice(&std::fs::read(store.join("refs/quickstart/tutor.json"))?)?;
        let d = r["outputs"]["model"]["digest"].as_str().context("no tutor model")?;
        let small = store.join("objects").join(&d[..2]).join(format!("{}.tree", &d[2..]));
        eval_one("quickstart", &small, work, items, max_new)?;
        eval_one("22M", &big, work, items, max_new)?;
    }
    if part == "all" || part == "serve" {
        serve(&big)?;
    }
    Ok(())
}
