//! fleming-dispatch: running stages in a worker process — the protocol between `fleming`
//! and a worker, and the worker's side of it ([`session`]). It needs no SQL and no torch,
//! so the torch worker builds on it without compiling the runtime's query engine; the
//! runtime's side (finding the worker, devices, streaming events) is
//! `fleming_runtime::dispatch::launcher`.
//!
//! GPU operators (and anything that links libtorch) run in a separate process so that a
//! crash or out-of-memory fails that stage alone and `fleming` itself never loads
//! libtorch. The protocol, version [`PROTOCOL_VERSION`]:
//!
//! 1. `fleming` writes a [`Job`] as JSON to `<work dir>/job.json`: operator, resolved
//!    params, input artifacts as paths in the store (tables are Parquet files, models are
//!    directories), an empty output directory, a durable checkpoint directory keyed by the
//!    stage key (it survives failures, so a rerun can resume), the device, threads, and
//!    — when the stage continues a previous run (a larger `steps`) — that run's final
//!    checkpoint directory.
//! 2. It starts `WORKER run <job.json>` with `CUDA_VISIBLE_DEVICES` set to the GPUs it
//!    assigned (empty: CPU). The worker dies with `fleming` (parent-death signal).
//! 3. The worker writes one JSON [`Event`] per line on stdout: `hello` first, then any of
//!    `progress`, `metrics`, `log`, and finally `done` (or `error`). Its stderr goes to
//!    `<work dir>/worker.log`. Metrics rows are also appended to
//!    `<checkpoint dir>/metrics.jsonl` as they happen ([`session::MetricsLog`]), so a run
//!    that is killed keeps its curve and a resumed run continues it without duplicate steps.
//! 4. The worker writes each table output as `<output dir>/<port>.parquet` and each model
//!    output as the directory `<output dir>/<port>/`.
//! 5. On exit status 0 after `done`, `fleming` moves the outputs into the store and commits
//!    the stage. Anything else (non-zero exit, a signal, no `done`) fails the stage and
//!    commits nothing. On Ctrl-C `fleming` sends SIGTERM, then SIGKILL after a grace period
//!    ([`GRACE_PERIOD`]); a training worker writes a checkpoint within it
//!    ([`session::stop_requested`]).

pub mod session;

pub use session::{MetricsLog, WorkerSession, stop_requested};

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of the protocol; the worker refuses jobs of another version.
/// 2: `resume_from`, durable metrics in the checkpoint directory.
pub const PROTOCOL_VERSION: u32 = 2;

/// How long a worker has between SIGTERM and SIGKILL to save its work.
pub const GRACE_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// File of the durable metrics rows, in the job's checkpoint directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Environment variable naming the worker executable.
pub const WORKER_ENV: &str = "FLEMING_WORKER";

/// One input artifact handed to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInput {
    /// `table` or `model`.
    pub kind: String,
    /// Parquet file (tables) or directory (models), in the store: read-only.
    pub path: PathBuf,
    /// Content digest.
    pub digest: String,
    /// `stage.port` it came from.
    pub from: String,
}

/// The device a worker should use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// `cuda` or `cpu`.
    pub kind: String,
    /// Physical GPU indices assigned (also in `CUDA_VISIBLE_DEVICES`, so the worker sees
    /// them as `cuda:0..n`).
    pub gpus: Vec<u32>,
}

impl Device {
    /// The device of a stage given these GPUs: `cuda` on them, or `cpu` when none.
    pub fn for_gpus(gpus: &[u32]) -> Device {
        let kind = if gpus.is_empty() { "cpu" } else { "cuda" };
        Device { kind: kind.into(), gpus: gpus.to_vec() }
    }
}

/// What a worker is asked to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Protocol version.
    pub protocol: u32,
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
    /// Operator name.
    pub op: String,
    /// Operator version.
    pub op_version: u32,
    /// Stage key (hex).
    pub key: String,
    /// Resolved parameters.
    pub params: Map<String, Value>,
    /// Directory relative paths in params resolve against.
    pub base_dir: PathBuf,
    /// Inputs by port.
    pub inputs: BTreeMap<String, Vec<JobInput>>,
    /// Where to write outputs (empty at start).
    pub output_dir: PathBuf,
    /// Durable directory for checkpoints (kept across failed attempts).
    pub checkpoint_dir: PathBuf,
    /// Device.
    pub device: Device,
    /// CPU threads to use.
    pub threads: usize,
    /// The pipeline's `llm:` section.
    #[serde(default)]
    pub llm: Map<String, Value>,
    /// The final checkpoint directory of the previous run of this stage, when this run
    /// continues it (only `steps` grew); the worker starts from it when its own
    /// checkpoint directory is empty.
    #[serde(default)]
    pub resume_from: Option<PathBuf>,
}

/// A message from the worker, one JSON object per stdout line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// First line: who is running the job.
    Hello {
        /// Worker name.
        worker: String,
        /// Worker version.
        version: String,
        /// Protocol version it speaks.
        protocol: u32,
    },
    /// Progress of the stage.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all, if known.
        #[serde(default)]
        total: Option<u64>,
        /// Unit name (steps, rows, samples).
        #[serde(default)]
        unit: Option<String>,
        /// Short message.
        #[serde(default)]
        message: Option<String>,
    },
    /// A row of metrics (e.g. per training step).
    Metrics {
        /// Step, if any.
        #[serde(default)]
        step: Option<u64>,
        /// Values.
        values: Map<String, Value>,
    },
    /// A log line.
    Log {
        /// `info`, `warn`, `error`.
        level: String,
        /// Text.
        message: String,
    },
    /// Success; outputs are written. Final metrics go to the run manifest.
    Done {
        /// Summary metrics.
        #[serde(default)]
        metrics: Map<String, Value>,
    },
    /// Failure, with a message for the user.
    Error {
        /// What went wrong.
        message: String,
    },
}
