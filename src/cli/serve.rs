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
    /// Model name announced by /v1/models (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Device: auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<usize>,
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
    if let Some(n) = &args.name {
        cmd.arg("--name").arg(n);
    }
    if let Some(t) = args.threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    let err = cmd.exec();
    eprintln!("error: starting {}: {err}", worker.display());
    Ok(EXIT_FAILED)
}
