//! Command-line interface.

mod run;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use fleming_artifacts::Store;
use fleming_runtime::op::Registry;
use fleming_runtime::spec::Pipeline;

/// Exit status: a stage failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: the pipeline file or the command line is invalid.
pub const EXIT_INVALID: i32 = 2;
/// Exit status: interrupted.
pub const EXIT_INTERRUPTED: i32 = 130;

/// fleming: content-addressed, incremental pipelines for training medical reasoning models.
#[derive(Parser, Debug)]
#[command(name = "fleming", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Store directory (default: `.fleming` beside the pipeline file).
    #[arg(long, global = true, env = "FLEMING_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// No progress output.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the stale stages of a pipeline (cached stages are reused).
    Run(run::RunArgs),
    /// Check a pipeline file without running anything.
    Validate {
        /// The pipeline file.
        pipeline: PathBuf,
    },
}

/// Entry point; returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    init_tracing(cli.quiet);
    let registry = fleming_operators::registry();
    let result = match &cli.command {
        Command::Run(args) => run::run(&cli, args, &registry),
        Command::Validate { pipeline } => validate(pipeline, &registry),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

fn init_tracing(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEMING_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().try_init();
}

/// Loads and validates a pipeline, printing positioned errors; `Err(exit code)` on failure.
pub fn load_pipeline(path: &Path, registry: &dyn Registry) -> Result<Pipeline, i32> {
    match fleming_runtime::spec::load(path, registry) {
        Ok(p) => {
            let missing = fleming_runtime::spec::check_input_files(&p);
            if missing.diagnostics.is_empty() {
                Ok(p)
            } else {
                eprintln!("{missing}");
                Err(EXIT_INVALID)
            }
        }
        Err(e) => {
            eprintln!("{e}");
            Err(EXIT_INVALID)
        }
    }
}

/// Opens the store for a pipeline: `--store`, `$FLEMING_STORE`, or `.fleming` beside it.
pub fn open_store(cli: &Cli, pipeline: &Pipeline) -> anyhow::Result<Store> {
    let root = match &cli.store {
        Some(s) => s.clone(),
        None => pipeline.base_dir.join(".fleming"),
    };
    Ok(Store::open(&root)?)
}

fn validate(path: &Path, registry: &dyn Registry) -> anyhow::Result<i32> {
    match load_pipeline(path, registry) {
        Ok(p) => {
            println!("{}: ok ({} stages)", path.display(), p.stages.len());
            Ok(0)
        }
        Err(code) => Ok(code),
    }
}
