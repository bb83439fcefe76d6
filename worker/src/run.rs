//! `fleming-worker run JOB.json`: executes one stage dispatched by the runtime (protocol in
//! `fleming_dispatch`). Events go to stdout, logs to stderr.

use std::path::Path;

use fleming_dispatch::WorkerSession;

use crate::ops;

/// Runs the job and returns the process exit code (0 after `done`).
pub fn run(job_path: &Path) -> i32 {
    let session = match WorkerSession::start(job_path, "fleming-worker", env!("CARGO_PKG_VERSION")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleming-worker: {e:#}");
            return 2;
        }
    };
    fleming_model::set_threads(session.job.threads);
    let result = match ops::find(&session.job.op) {
        Some(op) => op.run(&session),
        None => Err(anyhow::anyhow!(
            "fleming-worker does not run the operator `{}` (it runs: {})",
            session.job.op,
            ops::ALL.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
        )),
    };
    match result {
        Ok(metrics) => {
            session.done(metrics);
            0
        }
        Err(e) => {
            eprintln!("fleming-worker: {e:#}");
            session.fail(&format!("{e:#}"));
            1
        }
    }
}
