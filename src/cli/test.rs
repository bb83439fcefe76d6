//! `fleming test`: operator test cases from YAML files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use fleming_runtime::op::Registry;
use fleming_runtime::optest::{load_cases, run_cases};

use super::{EXIT_FAILED, EXIT_INVALID};

/// Arguments of `fleming test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// Test files or directories (default: `tests/ops`).
    pub paths: Vec<PathBuf>,
    /// Only the cases of this operator.
    #[arg(long)]
    pub op: Option<String>,
    /// Cases run at once (default: the number of cores).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Cases of worker operators that cannot run (no torch worker built) fail instead of
    /// being reported as not run (CI uses it).
    #[arg(long)]
    pub require_worker: bool,
}

/// Runs `fleming test`; exit 1 if a case fails.
pub fn run(args: &TestArgs, registry: Arc<dyn Registry>) -> anyhow::Result<i32> {
    let start = Instant::now();
    let paths = if args.paths.is_empty() { vec![PathBuf::from("tests/ops")] } else { args.paths.clone() };
    let mut cases = match load_cases(&paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(EXIT_INVALID);
        }
    };
    if let Some(op) = &args.op {
        cases.retain(|c| &c.op == op);
        if cases.is_empty() {
            eprintln!(
                "error: no cases for operator `{op}` in {}",
                paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
            return Ok(EXIT_INVALID);
        }
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let results = run_cases(cases, registry, jobs);
    // Every case is over (its servers and workers gone): only printing is left.
    super::end_quietly_when_the_reader_leaves();
    let (mut failed, mut not_run) = (0, 0);
    let mut why_not_run = None;
    for r in &results {
        let label = format!("{} [{}] {}", r.case.file.display(), r.case.op, r.case.name);
        match (&r.failure, &r.not_run) {
            (None, None) => println!("ok    {label} ({} ms)", r.duration.as_millis()),
            (None, Some(why)) if !args.require_worker => {
                not_run += 1;
                println!("SKIP  {label}: not run");
                why_not_run.get_or_insert_with(|| why.clone());
            }
            (Some(why), _) | (None, Some(why)) => {
                failed += 1;
                println!("FAIL  {label}");
                for l in why.lines() {
                    println!("      {l}");
                }
            }
        }
    }
    let passed = results.len() - failed - not_run;
    let skipped = if not_run > 0 { format!(", {not_run} not run") } else { String::new() };
    println!("{passed} passed, {failed} failed{skipped} in {:.2}s", start.elapsed().as_secs_f64());
    if let Some(why) = why_not_run {
        println!("not run: {why}");
    }
    Ok(if failed > 0 { EXIT_FAILED } else { 0 })
}
