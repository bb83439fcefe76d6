//! `fleming serve`: an OpenAI-compatible server for a model directory, run by the torch
//! worker (fleming itself never loads libtorch).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::Args;
use fleming_runtime::dispatch::launcher::find_worker;

use super::EXIT_FAILED;

/// Arguments of `fleming serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model directory (Hugging Face layout: config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Port (0: any free port; the address is printed on the first line).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Model name announced by /v1/models and expected in requests (default: the stage that
    /// produced the directory, when it is a model in a fleming store; else the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Device: auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sequences generated together at most: concurrent requests join one running batch.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
}

/// The stage that produced `dir`, when `dir` is a model object of a fleming store
/// (`…/objects/ab/<hex>.tree`): a name users recognise, where the directory's own name is
/// a digest.
fn stage_name_of(dir: &std::path::Path) -> Option<String> {
    let abs = dir.canonicalize().ok()?;
    let stem = abs.file_name()?.to_str()?.strip_suffix(".tree")?.to_string();
    let prefix_dir = abs.parent()?;
    let prefix = prefix_dir.file_name()?.to_str()?;
    let objects = prefix_dir.parent()?;
    if objects.file_name()? != "objects" {
        return None;
    }
    let digest = format!("{prefix}{stem}");
    let refs = objects.parent()?.join("refs");
    let mut found = Vec::new();
    for pipeline in std::fs::read_dir(refs).ok()?.flatten() {
        for stage in std::fs::read_dir(pipeline.path()).ok()?.flatten() {
            let Ok(text) = std::fs::read(stage.path()) else { continue };
            let Ok(r) = serde_json::from_slice::<serde_json::Value>(&text) else { continue };
            let produced = r["outputs"].as_object().is_some_and(|o| o.values().any(|a| a["digest"] == digest.as_str()));
            if produced && let Some(name) = r["stage"].as_str() {
                found.push(name.to_string());
            }
        }
    }
    found.sort();
    found.dedup();
    found.into_iter().next()
}

/// Replaces this process with `fleming-worker serve …`.
pub fn serve(args: &ServeArgs) -> anyhow::Result<i32> {
    let worker = match find_worker() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(EXIT_FAILED);
        }
    };
    if !args.model.is_dir() {
        eprintln!("error: --model {} is not a directory", args.model.display());
        return Ok(super::EXIT_INVALID);
    }
    let mut cmd = std::process::Command::new(&worker);
    cmd.arg("serve").arg("--model").arg(&args.model).arg("--port").arg(args.port.to_string());
    cmd.arg("--host").arg(&args.host).arg("--device").arg(&args.device);
    if let Some(n) = args.name.clone().or_else(|| stage_name_of(&args.model)) {
        cmd.arg("--name").arg(n);
    }
    cmd.arg("--max-batch").arg(args.max_batch.to_string());
    if let Some(t) = args.threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    let err = cmd.exec();
    eprintln!("error: starting {}: {err}", worker.display());
    Ok(EXIT_FAILED)
}
