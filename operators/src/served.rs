//! A model artifact as an OpenAI-compatible endpoint: `fleming-worker serve` on a free
//! loopback port, for as long as an operator needs it.
//!
//! Operators that ask a model questions (evaluate, and mining and distillation to come) talk
//! to every model the same way — through [`crate::llm::LlmClient`], with its retries,
//! concurrency and per-record memo — whether it is a hosted endpoint or a model directory
//! in the store. For a directory, this module starts the torch worker's server (which
//! batches concurrent requests into one generation), and stops it when dropped. The
//! server dies with fleming (parent-death signal), and only runs on the GPUs the stage
//! was given.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use fleming_runtime::CancelToken;
use fleming_runtime::dispatch::launcher::{find_worker, worker_command};
use serde_json::Map;

use crate::llm::Endpoint;

/// How long a server may take to load its model and announce itself.
const START_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A running `fleming-worker serve` for one model directory.
pub struct ServedModel {
    child: Child,
    /// Base URL (`http://127.0.0.1:PORT/v1`).
    pub url: String,
    /// The name it serves the model under (requests must name it).
    pub name: String,
    log: PathBuf,
}

/// How to start a server.
pub struct ServeOptions<'a> {
    /// The model directory (Hugging Face layout).
    pub dir: &'a Path,
    /// The name to serve it under (a stage name: what users recognise in logs).
    pub name: &'a str,
    /// CPU threads of libtorch.
    pub threads: usize,
    /// GPUs to run on (none: CPU).
    pub gpus: &'a [u32],
    /// Sequences generated together at most.
    pub max_batch: usize,
    /// Where the server's stderr goes.
    pub log: PathBuf,
}

impl ServedModel {
    /// Starts the server and waits until it listens (or fails, or `cancel` fires).
    pub fn start(opts: &ServeOptions<'_>, cancel: &CancelToken) -> anyhow::Result<ServedModel> {
        let worker = find_worker().map_err(|e| fleming_runtime::harness::WorkerNotBuilt {
            what: "the model server".into(),
            why: format!("{e:#}"),
        })?;
        let log_file = std::fs::File::create(&opts.log).with_context(|| format!("creating {}", opts.log.display()))?;
        let mut cmd = worker_command(&worker, opts.gpus);
        cmd.arg("serve")
            .arg("--model")
            .arg(opts.dir)
            .args(["--port", "0", "--host", "127.0.0.1", "--name", opts.name])
            .args(["--device", if opts.gpus.is_empty() { "cpu" } else { "cuda" }])
            .args(["--threads", &opts.threads.max(1).to_string()])
            .args(["--max-batch", &opts.max_batch.max(1).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().with_context(|| format!("starting {} serve", worker.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("the server's stdout is missing"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let started = Instant::now();
        let mut server = ServedModel { child, url: String::new(), name: opts.name.to_string(), log: opts.log.clone() };
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(line)) => {
                    // `fleming-worker: serving NAME on http://ADDR/v1`
                    match line.trim().rsplit(' ').next().filter(|u| u.starts_with("http://")) {
                        Some(url) => {
                            server.url = url.to_string();
                            return Ok(server);
                        }
                        None => bail!("the model server did not start: {}", server.failure(&line).trim()),
                    }
                }
                Ok(Err(e)) => bail!("reading the model server's address: {e}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the model server stopped before listening: {}", server.failure(""))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    cancel.check()?;
                    if let Ok(Some(status)) = server.child.try_wait() {
                        bail!("the model server exited ({status}): {}", server.failure(""));
                    }
                    if started.elapsed() > START_TIMEOUT {
                        bail!("the model server did not listen within {START_TIMEOUT:?}: {}", server.failure(""));
                    }
                }
            }
        }
    }

    /// What went wrong: the server's first line and the end of its log.
    fn failure(&mut self, first_line: &str) -> String {
        let tail = self.log_tail(12);
        format!("{}{}", first_line.trim(), if tail.is_empty() { String::new() } else { format!("\n{tail}") })
    }

    /// The last `n` lines of the server's log, after stopping it (so the log is complete):
    /// its own account of a failure (a model it cannot load, out of memory, a crash).
    pub fn log_tail(&mut self, n: usize) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut log);
        }
        // An error's backtrace (RUST_BACKTRACE set) would push the reason out of the tail.
        let log = log.split("\nStack backtrace:").next().unwrap_or_default();
        let mut tail: Vec<&str> = log.lines().rev().take(n).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// The endpoint a served model will have, for memo lookups before (or without)
    /// starting it: memo keys depend on `identity`, never on the address.
    pub fn offline_endpoint(name: &str, identity: &str) -> Endpoint {
        Endpoint {
            name: name.to_string(),
            url: "http://127.0.0.1:9/v1".into(),
            model: name.to_string(),
            api_key_env: None,
            max_concurrency: 1,
            timeout: Duration::from_secs(1),
            max_retries: 0,
            params: Map::new(),
            memo_model: Some(identity.to_string()),
        }
    }

    /// An endpoint for the served model: requests name it by its served name, memo keys
    /// by `identity` (the artifact's digest).
    pub fn endpoint(&self, identity: &str, max_concurrency: usize) -> Endpoint {
        Endpoint {
            name: self.name.clone(),
            url: self.url.clone(),
            model: self.name.clone(),
            api_key_env: None,
            max_concurrency: max_concurrency.max(1),
            // Generation on a CPU can be slow; a request is never retried for being slow.
            timeout: Duration::from_secs(6 * 3600),
            max_retries: 2,
            params: Map::new(),
            memo_model: Some(identity.to_string()),
        }
    }
}

impl Drop for ServedModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a model that operators ask questions lives.
pub enum ModelSource {
    /// A model directory in the store, and its digest (what memo keys name).
    Artifact {
        /// The directory.
        dir: PathBuf,
        /// Its content digest.
        digest: String,
    },
    /// An endpoint of the pipeline's `llm:` section.
    Endpoint(String),
}

/// Every call's answer (or failure) from one model, in order, and the failures' report.
pub struct Answers {
    /// One result per call.
    pub results: Vec<Result<crate::llm::Completion, crate::llm::CallFailure>>,
    /// When some calls failed: which, how many and why (with a served model's log tail).
    pub failures: Option<anyhow::Error>,
}

/// Asks `calls` of the model `label` at `source`: memoised answers from the memo, the rest
/// generated (a model artifact's server is started only when something is missing, with
/// `batch` sequences generated together, and stopped before this returns).
pub fn ask(
    ctx: &fleming_runtime::context::OpContext,
    label: &str,
    source: &ModelSource,
    calls: &[crate::llm::Call],
    batch: usize,
) -> anyhow::Result<Answers> {
    use crate::llm::{LlmClient, failure_report};
    // The server of a model artifact, stopped when this returns.
    let mut running: Option<ServedModel> = None;
    let client = match source {
        ModelSource::Endpoint(name) => LlmClient::from_section(&ctx.llm, name)?,
        ModelSource::Artifact { dir, digest } => {
            let identity = format!("artifact:{digest}");
            let probe = LlmClient::new(ServedModel::offline_endpoint(label, &identity))?;
            let missing = calls.iter().filter(|c| !ctx.memo.contains(&probe.memo_key(&ctx.memo, c))).count();
            if missing == 0 {
                probe
            } else {
                ctx.progress
                    .set_message(&format!("starting a model server for `{label}` ({missing} answers to generate)"));
                let server = ServedModel::start(
                    &ServeOptions {
                        dir,
                        name: label,
                        threads: ctx.threads,
                        gpus: &ctx.gpus,
                        max_batch: batch,
                        log: ctx.work_dir.join(format!("serve-{label}.log")),
                    },
                    &ctx.cancel,
                )?;
                // A few requests beyond the batch keep the server's queue from running dry.
                let client = LlmClient::new(server.endpoint(&identity, batch + batch / 2 + 1))?;
                running = Some(server);
                client
            }
        }
    };
    ctx.progress.set_message(&format!("asking `{label}`"));
    let results = client.run(calls, &ctx.memo, &ctx.progress, &ctx.cancel);
    ctx.memo.flush()?;
    ctx.cancel.check()?;
    let failures = failure_report(client.endpoint(), &results).map(|e| {
        // A served model's own account of why (out of memory, a crash) is in its log.
        let log = running.as_mut().map(|server| server.log_tail(20)).unwrap_or_default();
        if log.trim().is_empty() { e } else { anyhow!("{e:#}\nthe model server's log ends with:\n{log}") }
    });
    Ok(Answers { results, failures })
}
