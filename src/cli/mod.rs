//! Command-line interface.

mod checks;
pub mod fixtures;
mod inspect;
mod lineage;
mod query;
mod report;
mod run;
mod serve;
mod store;
mod test;
mod ui;

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
    /// Store: a directory (default: `.fleming` beside the pipeline file), or
    /// `s3://bucket/prefix` on any S3-compatible service (credentials and endpoint from
    /// `AWS_*`), cached in `.fleming` beside the pipeline file.
    #[arg(long, global = true, env = "FLEMING_STORE", value_name = "DIR|URL")]
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
    /// Each stage cached or stale, and why.
    Status(inspect::StatusArgs),
    /// The pipeline's graph (text, Graphviz dot, or Mermaid).
    Dag(inspect::DagArgs),
    /// Where a stage's outputs, or one record, came from (or went, with --down).
    Lineage(lineage::LineageArgs),
    /// Print a stage's output: rows or schema.
    Show(inspect::ShowArgs),
    /// SQL over every stage's outputs, the run manifests (`runs`) and check results (`checks`).
    Query(query::QueryArgs),
    /// The operator catalogue: parameters, types, defaults, ports.
    Ops(inspect::OpsArgs),
    /// Remove what no current stage needs (objects, old runs, unused memo entries).
    Gc(store::StoreArgs),
    /// Rehash every object and memo segment; quarantine corrupt ones (exit 1 if any).
    Verify(store::StoreArgs),
    /// Show the latest result of every data check (exit 1 if an `error` check fails).
    Checks(checks::ChecksArgs),
    /// The pipeline as one self-contained HTML file: DAG, stages, training curves, evaluations.
    Report(report::ReportArgs),
    /// The pipeline in a browser: live DAG, stage pages, lineage, curves, evaluations.
    Ui(ui::UiArgs),
    /// Run operator test cases from YAML files (default: tests/ops).
    Test(test::TestArgs),
    /// Serve a model over an OpenAI-compatible API (runs the torch worker).
    Serve(serve::ServeArgs),
    /// Developer tools: generate test and benchmark fixtures (`fixtures wiki`).
    Fixtures(fixtures::FixturesArgs),
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
    if matches!(
        cli.command,
        Command::Validate { .. }
            | Command::Status(_)
            | Command::Dag(_)
            | Command::Lineage(_)
            | Command::Show(_)
            | Command::Query(_)
            | Command::Ops(_)
            | Command::Checks(_)
            | Command::Gc(_)
            | Command::Verify(_)
            | Command::Fixtures(_)
    ) {
        end_quietly_when_the_reader_leaves();
    }
    let registry = std::sync::Arc::new(fleming_operators::registry());
    let result = match &cli.command {
        Command::Run(args) => run::run(&cli, args, registry.as_ref()),
        Command::Validate { pipeline } => validate(pipeline, registry.as_ref()),
        Command::Checks(args) => checks::run(&cli, args, registry.as_ref()),
        Command::Report(args) => report::report(&cli, args, registry.as_ref()),
        Command::Ui(args) => ui::ui(&cli, args, registry.clone()),
        Command::Status(args) => inspect::status(&cli, args, registry.as_ref()),
        Command::Dag(args) => inspect::dag(args, registry.as_ref()),
        Command::Lineage(args) => lineage::lineage(&cli, args, registry.as_ref()),
        Command::Show(args) => inspect::show(&cli, args, registry.as_ref()),
        Command::Query(args) => query::query(&cli, args, registry.as_ref()),
        Command::Ops(args) => inspect::ops(args, registry.as_ref()),
        Command::Gc(args) => store::run_gc(&cli, args, registry.as_ref()),
        Command::Verify(args) => store::run_verify(&cli, args, registry.as_ref()),
        Command::Test(args) => test::run(args, registry),
        Command::Serve(args) => serve::serve(args),
        Command::Fixtures(args) => fixtures::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            fleming_runtime::progress::log_line(format_args!("error: {e:#}"));
            EXIT_FAILED
        }
    }
}

/// Lets a command that only prints end as Unix tools do when its reader goes away
/// (`fleming query … | head`): killed by SIGPIPE, quietly. Rust ignores SIGPIPE, so the
/// next print would panic instead. `gc`, `verify` and `fixtures` print only once their
/// work is done, so the signal cannot cut it short. Not for `run` or `serve`, nor for
/// `test` until its cases are over: they talk to child processes through pipes, and a
/// worker that dies must be an error they report, not the end of the orchestrator.
pub(crate) fn end_quietly_when_the_reader_leaves() {
    // SAFETY: `signal` only sets the disposition of SIGPIPE back to its default; no
    // handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
                fleming_runtime::progress::log_line(format_args!("{missing}"));
                Err(EXIT_INVALID)
            }
        }
        Err(e) => {
            fleming_runtime::progress::log_line(format_args!("{e}"));
            Err(EXIT_INVALID)
        }
    }
}

/// Opens the store for a pipeline: `--store`, `$FLEMING_STORE`, or `.fleming` beside it.
pub fn open_store(cli: &Cli, pipeline: &Pipeline) -> anyhow::Result<Store> {
    store_at(cli.store.as_deref(), &pipeline.base_dir.join(".fleming"))
}

/// The store `--store` names (a directory, or a URL cached in `local`), else `local`.
pub fn store_at(given: Option<&Path>, local: &Path) -> anyhow::Result<Store> {
    match given {
        Some(s) => match s.to_str().filter(|s| s.contains("://")) {
            Some(url) => Ok(Store::open_remote(local, url)?),
            None => Ok(Store::open(s)?),
        },
        None => Ok(Store::open(local)?),
    }
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
