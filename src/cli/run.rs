//! `fleming run`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use fleming_runtime::CancelToken;
use fleming_runtime::cluster::Cluster;
use fleming_runtime::executor::{Executor, Outcome, RunOptions, RunReport, Selection};
use fleming_runtime::live::LiveSink;
use fleming_runtime::op::Registry;
use fleming_runtime::progress::{auto_sink, log_line};

use super::{Cli, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, load_pipeline, open_store};

/// Arguments of `fleming run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Stages to run at once (default: the number of cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Data-parallel workers per stage, for operators that use them.
    #[arg(short, long, value_name = "N", default_value_t = 1)]
    pub workers: usize,
    /// Run only this stage (repeatable); its inputs must already be cached.
    #[arg(long = "stage", value_name = "STAGE", conflicts_with = "until")]
    pub stages: Vec<String>,
    /// Run this stage and everything upstream of it (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub until: Vec<String>,
    /// Rerun the selected stages even if they are cached.
    #[arg(long)]
    pub force: bool,
    /// After a failure, go on with the stages that do not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Show what would run, and why, without running anything.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Do not evaluate data checks (emergencies only: downstream stages run on unchecked data).
    #[arg(long)]
    pub skip_checks: bool,
    /// Run as one process of a cluster: the hosts file lists every process's `host:port`,
    /// one per line, process 0 first (timely's format). Every process runs the same
    /// pipeline on the same store; dataflow stages (extract) span them all.
    #[arg(long, value_name = "FILE", requires = "process", help_heading = "Cluster")]
    pub hosts: Option<PathBuf>,
    /// This process's index in the hosts file (0 commits the dataflow stages' outputs).
    #[arg(long, short = 'p', value_name = "I", requires = "hosts", help_heading = "Cluster")]
    pub process: Option<usize>,
    /// Number of processes, checked against the hosts file.
    #[arg(long, value_name = "N", requires = "hosts", help_heading = "Cluster")]
    pub processes: Option<usize>,
    /// Seconds a dataflow stage waits for every process to join it.
    #[arg(long, value_name = "SECS", default_value_t = 600, help_heading = "Cluster")]
    pub connect_timeout: u64,
}

/// Runs `fleming run`; returns the exit status.
pub fn run(cli: &Cli, args: &RunArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let started = Instant::now();
    let pipeline = match load_pipeline(&args.pipeline, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store = open_store(cli, &pipeline)?;
    let cancel = CancelToken::new();
    if let Err(e) = cancel.install_signal_handler() {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let selection = if !args.stages.is_empty() {
        Selection::Only(args.stages.clone())
    } else if !args.until.is_empty() {
        Selection::Until(args.until.clone())
    } else {
        Selection::All
    };
    for name in args.stages.iter().chain(&args.until) {
        if pipeline.stage_index(name).is_none() {
            log_line(format_args!(
                "error: no stage `{name}` in {} ({})",
                args.pipeline.display(),
                fleming_runtime::diagnostic::suggestion(name, pipeline.stages.iter().map(|s| s.name.as_str()))
            ));
            return Ok(EXIT_INVALID);
        }
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let opts = RunOptions {
        jobs,
        workers: args.workers.max(1),
        selection,
        force: args.force,
        keep_going: args.keep_going,
        dry_run: args.dry_run,
        skip_checks: args.skip_checks,
        read_only: false,
    };
    if args.skip_checks {
        log_line(format_args!(
            "WARNING: --skip-checks: data checks are NOT evaluated in this run; stages downstream of a failing check will run anyway."
        ));
    }
    let mut progress = auto_sink(cli.quiet || args.dry_run);
    if !args.dry_run {
        // What `fleming ui` shows of a run going on in another process.
        progress = Arc::new(LiveSink::new(progress, &store, &pipeline.name));
    }
    let mut executor = Executor::new(&pipeline, &store, progress, cancel.clone());
    if let (Some(hosts), Some(process)) = (&args.hosts, args.process) {
        let mut cluster = match Cluster::from_hosts_file(hosts, process) {
            Ok(c) => c,
            Err(e) => {
                log_line(format_args!("error: {e:#}"));
                return Ok(EXIT_INVALID);
            }
        };
        if let Some(n) = args.processes
            && n != cluster.processes()
        {
            log_line(format_args!(
                "error: --processes {n}, but {} lists {} processes",
                hosts.display(),
                cluster.processes()
            ));
            return Ok(EXIT_INVALID);
        }
        cluster.connect_timeout = std::time::Duration::from_secs(args.connect_timeout);
        executor = executor.with_cluster(cluster);
    }
    let report = executor.run(&opts)?;
    print_report(&report, args.dry_run, started.elapsed().as_secs_f64(), cli.quiet);
    if args.skip_checks {
        log_line(format_args!("WARNING: checks were skipped (--skip-checks)."));
    }
    Ok(if report.cancelled {
        EXIT_INTERRUPTED
    } else if args.dry_run || report.ok() {
        0
    } else {
        EXIT_FAILED
    })
}

/// Prints the run's table and summary. A reader that went away (`fleming run … | head`)
/// is not an error: the run is done, and its exit status still says how it went.
fn print_report(report: &RunReport, dry_run: bool, secs: f64, quiet: bool) {
    let mut out = std::io::stdout().lock();
    for s in &report.stages {
        for w in &s.warnings {
            log_line(format_args!("warning: {w}"));
        }
    }
    let shown: Vec<_> = report.stages.iter().filter(|s| s.outcome != Outcome::NotSelected).collect();
    if !quiet || dry_run {
        let w_stage = shown.iter().map(|s| s.stage.len()).max().unwrap_or(5).max(5);
        let w_op = shown.iter().map(|s| s.op.len() + 2).max().unwrap_or(4).max(4);
        for s in &shown {
            let time = if s.outcome == Outcome::Ran || s.outcome == Outcome::Failed {
                format!("{:>7.2}s", s.duration.as_secs_f64())
            } else {
                format!("{:>8}", "")
            };
            let _ = writeln!(
                out,
                "{:<w_stage$}  {:<w_op$}  {:<9} {time}  {}",
                s.stage,
                format!("[{}]", s.op),
                s.outcome.label(),
                s.reason
            );
            for c in &s.checks {
                let _ = writeln!(out, "{:<w_stage$}    {}", "", super::checks::check_line(c));
            }
        }
    }
    for s in &shown {
        if let Some(e) = &s.error {
            log_line(format_args!("\nstage `{}` failed:\n{e}", s.stage));
        }
    }
    let count = |o: Outcome| report.stages.iter().filter(|s| s.outcome == o).count();
    let failing_checks: Vec<String> = report
        .stages
        .iter()
        .flat_map(|s| s.checks.iter().filter(|c| c.status != fleming_runtime::checks::CheckStatus::Passed))
        .map(|c| format!("{}.{}", c.stage, c.name))
        .collect();
    if dry_run {
        let _ = writeln!(out, "{} would run, {} cached", count(Outcome::WouldRun), count(Outcome::Cached));
    } else if !quiet || !report.ok() {
        let mut parts = vec![format!("{} ran", count(Outcome::Ran)), format!("{} cached", count(Outcome::Cached))];
        for (o, name) in [
            (Outcome::Failed, "failed"),
            (Outcome::Skipped, "skipped"),
            (Outcome::Stale, "stale"),
            (Outcome::Cancelled, "cancelled"),
        ] {
            let n = count(o);
            if n > 0 {
                parts.push(format!("{n} {name}"));
            }
        }
        if !failing_checks.is_empty() {
            parts.push(format!("{} check(s) not passing: {}", failing_checks.len(), failing_checks.join(", ")));
        }
        let _ = writeln!(out, "{} in {secs:.2}s", parts.join(", "));
    }
}
