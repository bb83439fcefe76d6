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
    let mut failed = 0;
    for r in &results {
        let label = format!("{} [{}] {}", r.case.file.display(), r.case.op, r.case.name);
        match &r.failure {
            None => println!("ok    {label} ({} ms)", r.duration.as_millis()),
            Some(why) => {
                failed += 1;
                println!("FAIL  {label}");
                for l in why.lines() {
                    println!("      {l}");
                }
            }
        }
    }
    println!("{} passed, {failed} failed in {:.2}s", results.len() - failed, start.elapsed().as_secs_f64());
    Ok(if failed > 0 { EXIT_FAILED } else { 0 })
}
