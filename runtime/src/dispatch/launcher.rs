//! The `fleming` side of the protocol: find the worker, assign devices, run a job, stream
//! its events, and tell success from failure.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value};

use super::{Event, Job, PROTOCOL_VERSION, WORKER_ENV};
use crate::cancel::CancelToken;
use crate::progress::Progress;

/// Name of the torch worker binary, looked up beside `fleming`.
pub const DEFAULT_WORKER: &str = "fleming-worker";

/// Finds the worker executable: `$FLEMING_WORKER`, else `fleming-worker` beside the
/// running executable, else on `PATH`.
pub fn find_worker() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(WORKER_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{WORKER_ENV}={} does not name a file", p.display());
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join(DEFAULT_WORKER);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(DEFAULT_WORKER);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "this stage runs in the torch worker (`{DEFAULT_WORKER}`), which is not installed next to fleming nor on PATH; \
         build it with `make worker` (see README), or point {WORKER_ENV} at it"
    )
}

/// GPUs of this machine and which are in use. The executor's scheduler takes a stage's
/// GPUs before starting it and gives them back when it ends.
pub struct GpuPool {
    free: Mutex<Vec<u32>>,
    total: usize,
}

impl GpuPool {
    /// Detects GPUs: `$FLEMING_GPUS` (`0,1` or `none`), else `$CUDA_VISIBLE_DEVICES`, else
    /// `nvidia-smi`, else none.
    pub fn detect() -> GpuPool {
        let parse = |s: &str| -> Vec<u32> { s.split(',').filter_map(|x| x.trim().parse().ok()).collect() };
        let gpus = if let Ok(s) = std::env::var("FLEMING_GPUS") {
            if s.trim() == "none" { Vec::new() } else { parse(&s) }
        } else if let Ok(s) = std::env::var("CUDA_VISIBLE_DEVICES") {
            parse(&s)
        } else {
            Command::new("nvidia-smi")
                .args(["--query-gpu=index", "--format=csv,noheader"])
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| parse(&String::from_utf8_lossy(&o.stdout).replace('\n', ",")))
                .unwrap_or_default()
        };
        GpuPool::with(gpus)
    }

    /// A pool of the given GPU indices.
    pub fn with(gpus: Vec<u32>) -> GpuPool {
        GpuPool { total: gpus.len(), free: Mutex::new(gpus) }
    }

    /// Number of GPUs.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes `n` GPUs if that many are free now (the lowest indices), `None` if not; none
    /// at all when `n` is 0 or the machine has no GPU (the stage runs on the CPU). An
    /// error if `n` exceeds the machine's GPUs.
    pub fn try_acquire(&self, n: usize) -> anyhow::Result<Option<Vec<u32>>> {
        if n == 0 || self.total == 0 {
            return Ok(Some(Vec::new()));
        }
        if n > self.total {
            bail!("the stage asks for {n} GPUs; this machine has {}", self.total);
        }
        let mut free = self.free.lock().map_err(|_| anyhow!("gpu pool poisoned"))?;
        if free.len() < n {
            return Ok(None);
        }
        free.sort();
        Ok(Some(free.drain(..n).collect()))
    }

    /// Gives GPUs back.
    pub fn release(&self, gpus: Vec<u32>) {
        if gpus.is_empty() {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            free.extend(gpus);
        }
    }
}

/// A command starting the worker executable on `gpus` (`CUDA_VISIBLE_DEVICES`; none: the
/// CPU), with no stdin, that dies with fleming (parent-death signal, so a `kill -9` of
/// fleming takes its workers along). The caller adds the subcommand and the pipes.
pub fn worker_command(worker: &Path, gpus: &[u32]) -> Command {
    let visible = gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new(worker);
    cmd.env("CUDA_VISIBLE_DEVICES", visible).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// What a finished worker reported.
#[derive(Debug, Default)]
pub struct WorkerReport {
    /// Final metrics (from `done`).
    pub metrics: Map<String, Value>,
    /// Every metrics row, in order.
    pub metric_rows: Vec<(Option<u64>, Map<String, Value>)>,
    /// `hello` details.
    pub hello: Option<Value>,
}

/// Runs a job in the worker and waits for it. `Ok` only if the worker exited 0 after `done`.
pub fn run_job(
    worker: &Path,
    job: &Job,
    work_dir: &Path,
    progress: &Progress,
    cancel: &CancelToken,
    log: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<WorkerReport> {
    let job_path = work_dir.join("job.json");
    std::fs::write(&job_path, serde_json::to_vec_pretty(job)?)
        .with_context(|| format!("writing {}", job_path.display()))?;
    let log_path = work_dir.join("worker.log");
    let log_file = OpenOptions::new().create(true).append(true).open(&log_path)?;
    let log_start = log_file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = worker_command(worker, &job.device.gpus);
    cmd.arg("run").arg(&job_path).stdout(Stdio::piped()).stderr(Stdio::from(log_file));
    let mut child = cmd.spawn().with_context(|| format!("starting the worker {}", worker.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("worker stdout missing"))?;
    let pid = child.id();

    let report = std::thread::scope(|scope| -> anyhow::Result<(WorkerReport, bool, Option<String>)> {
        let reader = scope.spawn(move || {
            let mut report = WorkerReport::default();
            let mut done = false;
            let mut error = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    continue;
                }
                match serde_json::from_str::<Event>(trimmed) {
                    Ok(Event::Hello { worker, version, protocol }) => {
                        report.hello =
                            Some(serde_json::json!({"worker": worker, "version": version, "protocol": protocol}));
                        if protocol != PROTOCOL_VERSION {
                            error = Some(format!("worker speaks protocol {protocol}, fleming {PROTOCOL_VERSION}"));
                        }
                    }
                    Ok(Event::Progress { done: d, total, unit, message }) => {
                        if let Some(u) = unit {
                            progress.set_unit(&u);
                        }
                        match total {
                            Some(t) => progress.set_total(t),
                            None => progress.set_total_unknown(),
                        }
                        progress.set_position(d);
                        if let Some(m) = message {
                            progress.set_message(&m);
                        }
                    }
                    Ok(Event::Metrics { step, values }) => report.metric_rows.push((step, values)),
                    Ok(Event::Log { level, message }) => log(&format!("[worker {level}] {message}")),
                    Ok(Event::Done { metrics }) => {
                        report.metrics = metrics;
                        done = true;
                    }
                    Ok(Event::Error { message }) => error = Some(message),
                    Err(_) => log(&format!("[worker] {trimmed}")),
                }
            }
            (report, done, error)
        });
        // Wait for exit, forwarding cancellation as SIGTERM then SIGKILL.
        let mut term_sent: Option<Instant> = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if cancel.is_cancelled() {
                match term_sent {
                    None => {
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                        term_sent = Some(Instant::now());
                    }
                    Some(t) if t.elapsed() > super::GRACE_PERIOD => {
                        let _ = child.kill();
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (report, done, error) = reader.join().map_err(|_| anyhow!("worker reader thread panicked"))?;
        if status.success() && done && error.is_none() {
            return Ok((report, true, None));
        }
        let how = match (status.code(), status.signal()) {
            (Some(0), _) if !done => "exited without reporting `done`".to_string(),
            (Some(0), _) => "reported an error".to_string(),
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(s)) => format!("was killed by signal {s}{}", signal_name(s)),
            _ => "ended abnormally".to_string(),
        };
        let mut msg = format!("worker {how}");
        if let Some(e) = error {
            msg.push_str(&format!(": {e}"));
        }
        if cancel.is_cancelled() {
            msg = format!("cancelled ({msg})");
        }
        let tail = tail_of(&log_path, log_start, 20);
        if !tail.is_empty() {
            msg.push_str(&format!("\n--- last lines of {} ---\n{tail}", log_path.display()));
        }
        Ok((report, false, Some(msg)))
    })?;
    match report {
        (r, true, _) => Ok(r),
        (_, false, Some(msg)) => Err(anyhow!(msg)),
        (_, false, None) => Err(anyhow!("worker failed")),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGKILL => " (SIGKILL: out of memory, or killed)",
        libc::SIGSEGV => " (SIGSEGV: crashed)",
        libc::SIGABRT => " (SIGABRT: aborted)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

/// The last `n` lines written to a log file after `from`.
fn tail_of(path: &Path, from: u64, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(64 * 1024));
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let mut lines: VecDeque<&str> = VecDeque::new();
    for l in s.lines() {
        lines.push_back(l);
        if lines.len() > n {
            lines.pop_front();
        }
    }
    lines.into_iter().collect::<Vec<_>>().join("\n")
}
