//! fleming-worker: the one process that links libtorch. It runs the GPU
//! operators the runtime dispatches to it and serves models over an
//! OpenAI-compatible HTTP API. libtorch is found through an rpath embedded at
//! build time (see model/README.md), so nothing needs exporting to run it.

mod ops;
mod run;
mod serve;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "fleming-worker", version, about = "fleming's torch worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model directory over an OpenAI-compatible API.
    Serve {
        /// A HF-format model directory (config.json, safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Port to listen on (0 picks a free one; the address is printed).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Address to bind; loopback unless you mean to expose it.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Name reported by /v1/models and expected in requests (default: the directory name).
        #[arg(long)]
        name: Option<String>,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// libtorch intra-op threads (0: libtorch's default).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Sequences generated together at most: concurrent requests (and the `n` choices
        /// of each) join one running batch up to this many.
        #[arg(long, default_value_t = 16)]
        max_batch: usize,
    },
    /// Run one stage dispatched by the fleming runtime (JOB.json per its dispatch protocol).
    Run {
        /// The job file.
        job: PathBuf,
    },
    /// Print the device and libtorch facts, then exit (a quick health check).
    Info,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { model, port, host, name, device, threads, max_batch } => {
            fleming_model::set_threads(threads);
            let device = fleming_model::Placement::parse_device(&device)?;
            let opts = serve::ServeOptions { model_dir: model, host, port, name, device, max_batch };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(serve::serve(opts))
        }
        Command::Run { job } => std::process::exit(run::run(&job)),
        Command::Info => {
            println!("cuda available: {}", tch::Cuda::is_available());
            println!("cuda devices: {}", tch::Cuda::device_count());
            println!("threads: {}", tch::get_num_threads());
            Ok(())
        }
    }
}
