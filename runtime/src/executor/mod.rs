//! The executor: runs the stale stages of a pipeline in dependency order, independent ones
//! in parallel, reusing cached outputs by stage key.
//!
//! For each stage, once its inputs are known: compute the key (see [`crate::keys`]); if a
//! cache entry exists and its objects are present, the stage is cached; otherwise it runs
//! under an exclusive file lock on its key (a concurrent `fleming run` computing the same
//! key waits, then reuses the result). Outputs are written to the store atomically, then
//! the cache entry, the manifest and the ref. A failure, Ctrl-C or `kill -9` before that
//! point leaves nothing referenced; memo entries already committed are kept.
//!
//! A run is planned first ([`plan`]: keys, cache probes, why each stage runs), then the
//! scheduler ([`schedule`]) runs the plan's stages. Operators run in this process
//! ([`Executor::run_in_process`]) or in a worker process ([`in_worker`]).

mod in_worker;
mod plan;
mod schedule;
mod stage;

pub use in_worker::continuation_checkpoint;
pub use plan::{Plan, why_changed};

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use chrono::Utc;
use fleming_artifacts::manifest::FileRecord;
use fleming_artifacts::statcache::StatCache;
use fleming_artifacts::{ArtifactKind, ArtifactRef, Digest, MemoLog, Store};
use serde_json::{Map, Value};

use crate::cancel::CancelToken;
use crate::checks::CheckResult;
use crate::cluster::Cluster;
use crate::context::{Input, InputValue, OpContext, PreviousRun, RecordMemo, StoredTable};
use crate::diagnostic::panic_message;
use crate::dispatch::launcher::GpuPool;
use crate::keys::KeyParts;
use crate::op::{Execution, OpSpec, OutputValue, PortKind, check_outputs, schema_problems};
use crate::progress::{Progress, ProgressSink};
use crate::spec::{Pipeline, Stage};
use crate::state::StageRef;

/// Which stages a run may execute.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// Every stage.
    #[default]
    All,
    /// Only these stages (their inputs must already be cached).
    Only(Vec<String>),
    /// These stages and everything upstream of them.
    Until(Vec<String>),
}

/// Options of `fleming run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stages run at once on the CPU. Stages that hold GPUs (`resources: { gpu: N }` on a
    /// machine with GPUs) are not counted: they start whenever their devices are free.
    pub jobs: usize,
    /// Default threads / data-parallel workers per stage.
    pub workers: usize,
    /// Which stages may run.
    pub selection: Selection,
    /// Rerun selected stages even if cached.
    pub force: bool,
    /// After a failure, go on with stages that do not depend on it.
    pub keep_going: bool,
    /// Only say what would run, and why.
    pub dry_run: bool,
    /// Do not evaluate data checks (emergencies only).
    pub skip_checks: bool,
    /// With `dry_run`: write nothing to the store, not even the stat cache of input files
    /// (for viewers such as `fleming ui`, which must never change the store).
    pub read_only: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 1,
            workers: 1,
            selection: Selection::All,
            force: false,
            keep_going: false,
            dry_run: false,
            skip_checks: false,
            read_only: false,
        }
    }
}

/// How a stage ended up in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its outputs were reused.
    Cached,
    /// It ran and its outputs were committed.
    Ran,
    /// It ran and failed (nothing committed).
    Failed,
    /// It was interrupted (nothing committed).
    Cancelled,
    /// It did not run (an upstream stage failed or did not run, or the run stopped).
    Skipped,
    /// It needs to run but was not selected.
    Stale,
    /// Dry run: it would run.
    WouldRun,
    /// Not part of the selection.
    NotSelected,
}

impl Outcome {
    /// Short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Cached => "cached",
            Outcome::Ran => "ran",
            Outcome::Failed => "FAILED",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped => "skipped",
            Outcome::Stale => "stale",
            Outcome::WouldRun => "would run",
            Outcome::NotSelected => "not selected",
        }
    }
}

/// What happened to one stage.
#[derive(Clone, Debug)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// Operator.
    pub op: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Why it ran / was cached / was skipped.
    pub reason: String,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Its key, when known.
    pub key: Option<Digest>,
    /// Its outputs (cached or produced).
    pub outputs: BTreeMap<String, ArtifactRef>,
    /// Wall time (for stages that ran).
    pub duration: Duration,
    /// Manifest id (for stages that ran).
    pub run_id: Option<String>,
    /// Warnings (e.g. source changed without a version bump).
    pub warnings: Vec<String>,
    /// Results of the stage's data checks.
    pub checks: Vec<CheckResult>,
}

impl StageReport {
    fn new(stage: &Stage, outcome: Outcome, reason: impl Into<String>) -> Self {
        StageReport {
            stage: stage.name.clone(),
            op: stage.op.spec().name.to_string(),
            outcome,
            reason: reason.into(),
            error: None,
            key: None,
            outputs: BTreeMap::new(),
            duration: Duration::ZERO,
            run_id: None,
            warnings: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Whether downstream stages can use its outputs.
    pub fn usable(&self) -> bool {
        matches!(self.outcome, Outcome::Cached | Outcome::Ran)
    }

    /// The first failing `error` check, which blocks downstream stages.
    pub fn blocking_check(&self) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.blocks())
    }
}

/// The result of a run.
#[derive(Debug, Default)]
pub struct RunReport {
    /// One report per stage, in pipeline order.
    pub stages: Vec<StageReport>,
    /// Whether the run was interrupted.
    pub cancelled: bool,
}

impl RunReport {
    /// No stage failed or was cancelled, and nothing was skipped because of a failure.
    pub fn ok(&self) -> bool {
        !self.cancelled
            && self.stages.iter().all(|s| {
                !matches!(s.outcome, Outcome::Failed | Outcome::Cancelled | Outcome::Skipped)
                    && s.blocking_check().is_none()
            })
    }

    /// Stages with a given outcome.
    pub fn with(&self, outcome: Outcome) -> Vec<&StageReport> {
        self.stages.iter().filter(|s| s.outcome == outcome).collect()
    }
}

/// A decided stage that has to run.
#[derive(Clone)]
struct Pending {
    /// Run even if a valid cache entry appears (--force).
    forced: bool,
    parts: KeyParts,
    key: Digest,
    files: BTreeMap<String, FileRecord>,
    reason: String,
    warnings: Vec<String>,
    /// The previous run's final checkpoint, when this run continues it (see
    /// [`crate::op::ParamSpec::continues`]).
    resume_from: Option<std::path::PathBuf>,
}

enum Decision {
    Cached(StageReport),
    Run(Pending),
}

/// What the scheduler gives a stage it starts.
struct Launch {
    /// The reports of the stages upstream of it.
    upstream: Vec<Option<StageReport>>,
    /// Threads / data-parallel workers.
    threads: usize,
    /// The GPUs it holds (none: the CPU).
    gpus: Vec<u32>,
}

/// What running one stage needs, on whichever side it runs (this process or the worker).
pub(super) struct StageRun<'r> {
    stage: &'r Stage,
    /// Its key, the key's parts and why it runs.
    pending: &'r Pending,
    /// Its inputs by port: (the reference as written, the artifact).
    loaded: &'r BTreeMap<String, Vec<(String, ArtifactRef)>>,
    threads: usize,
    /// The GPUs the scheduler gave it (none: the CPU).
    gpus: &'r [u32],
    progress: &'r Progress,
    run_id: &'r str,
    /// Scratch space of this run of the stage.
    work_dir: &'r Path,
}

/// Runs pipelines against a store.
pub struct Executor<'a> {
    pipeline: &'a Pipeline,
    store: &'a Store,
    progress: Arc<dyn ProgressSink>,
    cancel: CancelToken,
    /// Detected when a worker stage first needs it: `nvidia-smi` can take a second on a
    /// GPU machine, which a run of CPU stages should not pay.
    gpus: std::sync::OnceLock<GpuPool>,
    memos: Mutex<BTreeMap<String, MemoLog>>,
    stat: StatCache,
    /// Keys stages of this run took up, with the first stage that did: a second stage with
    /// the same key (the same operator, params and inputs) waits for it and reuses its
    /// result, and says whose it is.
    claimed: Mutex<BTreeMap<Digest, String>>,
    /// The processes of a cluster run, which its dataflow stages span.
    cluster: Option<Cluster>,
}

impl<'a> Executor<'a> {
    /// An executor for one pipeline and store.
    pub fn new(pipeline: &'a Pipeline, store: &'a Store, progress: Arc<dyn ProgressSink>, cancel: CancelToken) -> Self {
        Executor {
            pipeline,
            store,
            progress,
            cancel,
            gpus: std::sync::OnceLock::new(),
            memos: Mutex::new(BTreeMap::new()),
            stat: StatCache::open(store),
            claimed: Mutex::new(BTreeMap::new()),
            cluster: None,
        }
    }

    /// Makes this run one process of a cluster run ([`crate::cluster`]).
    pub fn with_cluster(self, cluster: Cluster) -> Self {
        Executor { cluster: Some(cluster), ..self }
    }

    /// The cluster a stage's computation spans: dataflow stages of a cluster run.
    fn cluster_of(&self, stage: &Stage) -> Option<&Cluster> {
        self.cluster.as_ref().filter(|_| stage.op.spec().execution == Execution::Dataflow)
    }

    /// Uses a given GPU pool (tests).
    pub fn with_gpus(self, gpus: GpuPool) -> Self {
        Executor { gpus: std::sync::OnceLock::from(gpus), ..self }
    }

    fn gpus(&self) -> &GpuPool {
        self.gpus.get_or_init(GpuPool::detect)
    }

    fn log(&self, line: &str) {
        self.progress.println(line);
    }

    fn set_ref(
        &self,
        stage: &Stage,
        parts: &KeyParts,
        key: Digest,
        outputs: &BTreeMap<String, ArtifactRef>,
        run_id: &str,
    ) -> anyhow::Result<()> {
        StageRef {
            pipeline: self.pipeline.name.clone(),
            stage: stage.name.clone(),
            key,
            parts: parts.clone(),
            outputs: outputs.clone(),
            run_id: run_id.to_string(),
            updated_at: Utc::now(),
        }
        .save(self.store)?;
        Ok(())
    }

    fn memo_for(&self, spec: &OpSpec) -> anyhow::Result<RecordMemo> {
        let mut memos = self.memos.lock().map_err(|_| anyhow!("memo table poisoned"))?;
        let log = match memos.get(spec.name) {
            Some(l) => l.clone(),
            None => {
                // The records other machines memoised, on a remote store.
                self.store
                    .pull_dir(&format!("memo/{}", spec.name))
                    .with_context(|| format!("downloading the memo of `{}`", spec.name))?;
                let l = MemoLog::open(&self.store.dir("memo").join(spec.name))
                    .with_context(|| format!("opening the memo of `{}`", spec.name))?;
                memos.insert(spec.name.to_string(), l.clone());
                l
            }
        };
        Ok(RecordMemo::on_disk(log, spec.name, spec.version))
    }

    fn close_memos(&self) {
        if let Ok(mut memos) = self.memos.lock() {
            for (op, m) in std::mem::take(&mut *memos) {
                if let Err(e) = m.close() {
                    self.log(&format!("warning: closing the memo of `{op}`: {e}"));
                }
                if let Err(e) = self.store.push_dir(&format!("memo/{op}")) {
                    self.log(&format!("warning: uploading the memo of `{op}`: {e}"));
                }
            }
        }
    }

    /// Loads inputs, runs the operator (here or in a worker), and stores its outputs.
    #[allow(clippy::too_many_arguments)]
    fn compute(
        &self,
        stage: &Stage,
        p: &Pending,
        launch: &Launch,
        progress: &Progress,
        metrics: &mut Map<String, Value>,
        worker_info: &mut Option<Value>,
        run_id: &str,
    ) -> anyhow::Result<BTreeMap<String, ArtifactRef>> {
        let spec = stage.op.spec();
        let work_dir = self.store.work_dir(&p.key)?;
        let mut loaded: BTreeMap<String, Vec<(String, ArtifactRef)>> = BTreeMap::new();
        for (port, refs) in &stage.inputs {
            for r in refs {
                let up = launch
                    .upstream
                    .iter()
                    .flatten()
                    .find(|u| u.stage == r.stage)
                    .ok_or_else(|| anyhow!("upstream `{}` missing", r.stage))?;
                let a = up.outputs.get(&r.port).ok_or_else(|| anyhow!("upstream `{}` has no `{}`", r.stage, r.port))?;
                loaded.entry(port.clone()).or_default().push((r.to_string(), a.clone()));
            }
        }
        // Data-dependent schemas are checked now that they exist.
        for (port, items) in &loaded {
            if let Some(crate::op::PortSpec { kind: PortKind::Table(Some(need)), .. }) = spec.input(port) {
                for (from, a) in items {
                    let schema = fleming_artifacts::Table::read_parquet_schema(&self.store.fetch(a.kind, &a.digest)?)?;
                    let problems = schema_problems(need, &schema);
                    if !problems.is_empty() {
                        let pos = self.pipeline.positions.value(&crate::spec::positions::path(&[
                            "stages",
                            &stage.name,
                            "inputs",
                            port,
                        ]));
                        let at = pos
                            .map(|p| format!("{}:{}:{}: ", self.pipeline.file.display(), p.line, p.col))
                            .unwrap_or_default();
                        bail!("{at}input `{port}` cannot read `{from}`: {}", problems.join("; "));
                    }
                }
            }
        }
        let run = StageRun {
            stage,
            pending: p,
            loaded: &loaded,
            threads: launch.threads,
            gpus: &launch.gpus,
            progress,
            run_id,
            work_dir: &work_dir,
        };
        match spec.execution {
            Execution::Cpu | Execution::CpuWithWorkers | Execution::Dataflow => self.run_in_process(&run, metrics),
            Execution::Worker => self.run_in_worker(&run, metrics, worker_info),
        }
    }

    /// Runs an operator in this process on its inputs, and stores its outputs.
    fn run_in_process(
        &self,
        run: &StageRun<'_>,
        metrics: &mut Map<String, Value>,
    ) -> anyhow::Result<BTreeMap<String, ArtifactRef>> {
        let StageRun { stage, pending: p, loaded, threads, gpus, progress, run_id: _, work_dir } = *run;
        let spec = stage.op.spec();
        let used_memo: Option<(&str, Vec<Digest>)>;
        let outputs = {
            let mut inputs = BTreeMap::new();
            for (port, items) in loaded {
                let mut v = Vec::new();
                for (from, a) in items {
                    let value = match a.kind {
                        // Read when the operator asks, and only what it asks for.
                        ArtifactKind::Table => {
                            InputValue::Stored(StoredTable::new(self.store.fetch(a.kind, &a.digest)?))
                        }
                        ArtifactKind::Tree => InputValue::Model(self.store.fetch(a.kind, &a.digest)?),
                    };
                    v.push(Input { from: from.clone(), digest: a.digest, value });
                }
                inputs.insert(port.clone(), v);
            }
            let previous = self.previous_run(stage, &p.key)?;
            let memo = self.memo_for(spec)?;
            let llm = llm_json(self.pipeline);
            let mut ctx = OpContext::new(
                stage.name.clone(),
                stage.params.clone(),
                inputs,
                progress.clone(),
                memo.clone(),
                previous,
                work_dir.to_path_buf(),
                self.cancel.clone(),
                threads,
                llm,
            );
            // An in-process operator may start worker processes on the stage's GPUs
            // (evaluate serving a model artifact).
            ctx.gpus = gpus.to_vec();
            ctx.cluster = self.cluster_of(stage).map(|c| c.for_session(&p.key.hex()));
            if let Some(c) = &ctx.cluster {
                metrics.insert("processes".into(), c.processes().into());
            }
            let op = stage.op.clone();
            let result = catch_unwind(AssertUnwindSafe(|| op.run(&mut ctx)));
            // Keep finished records whatever happened (on a remote store, there too).
            let flushed = memo.flush();
            if let Err(e) = self.store.push_dir(&format!("memo/{}", spec.name)) {
                self.log(&format!("warning: uploading the memo of `{}`: {e}", spec.name));
            }
            let stats = memo.stats();
            used_memo = Some((spec.name, memo.used_keys()));
            metrics.extend(ctx.take_metrics());
            metrics.insert("memo_hits".into(), stats.hits.into());
            metrics.insert("memo_misses".into(), stats.misses.into());
            let outputs = match result {
                Ok(r) => r?,
                Err(panic) => bail!("operator `{}` panicked: {}", spec.name, panic_message(panic.as_ref())),
            };
            flushed?;
            self.cancel.check()?;
            if ctx.cluster.as_ref().is_some_and(|c| !c.is_leader()) {
                // Process 0 commits; this one's share is in its outputs.
                return Ok(BTreeMap::new());
            }
            check_outputs(spec, &outputs)?;
            outputs
        };
        let t_write = Instant::now();
        let committed = self.commit_outputs(outputs)?;
        metrics.insert("write_s".into(), t_write.elapsed().as_secs_f64().into());
        if let Some((op, keys)) = used_memo
            && !keys.is_empty()
        {
            crate::maintenance::record_used_memo(self.store, op, &p.key, &keys)?;
        }
        let _ = std::fs::remove_dir_all(work_dir);
        Ok(committed)
    }

    /// Moves the outputs into the store, all at once (on the rayon pool): encoding and
    /// hashing a large table is most of a short rerun's time.
    fn commit_outputs(&self, outputs: crate::op::Outputs) -> anyhow::Result<BTreeMap<String, ArtifactRef>> {
        use rayon::prelude::*;
        let commit = |(port, value): (String, OutputValue)| -> anyhow::Result<(String, ArtifactRef)> {
            let r = match value {
                OutputValue::Table(t) => self.store.put_table(&t)?,
                OutputValue::Model(dir) => {
                    // Move into the store's tmp first if it lives elsewhere (same filesystem
                    // is needed for the final rename).
                    let dir = if dir.starts_with(self.store.root()) {
                        dir
                    } else {
                        let dest = self.store.new_tmp_dir("model")?;
                        std::fs::remove_dir(&dest)?;
                        copy_dir(&dir, &dest)?;
                        dest
                    };
                    self.store.put_tree(&dir)?
                }
            };
            Ok((port, r))
        };
        outputs.0.into_iter().collect::<Vec<_>>().into_par_iter().map(commit).collect()
    }

    fn previous_run(&self, stage: &Stage, key: &Digest) -> anyhow::Result<Option<PreviousRun>> {
        let Some(r) = StageRef::load(self.store, &self.pipeline.name, &stage.name)? else { return Ok(None) };
        if r.key == *key {
            return Ok(None);
        }
        let store = self.store.clone();
        Ok(Some(PreviousRun {
            key: r.key,
            params: r.parts.params.clone(),
            input_digests: r.parts.inputs.clone(),
            outputs: r.outputs.clone(),
            reader: Arc::new(move |d: &Digest, columns: Option<&[&str]>| {
                let aref = ArtifactRef { kind: ArtifactKind::Table, digest: *d, rows: None, bytes: 0, schema: None };
                if store.has(&aref) { Ok(Some(store.read_table_columns(&aref, columns)?)) } else { Ok(None) }
            }),
        }))
    }
}

fn upstream_rows(upstream: &[Option<StageReport>], _stage: &Stage, r: &crate::spec::OutputRef) -> Option<u64> {
    upstream.iter().flatten().find(|u| u.stage == r.stage).and_then(|u| u.outputs.get(&r.port)).and_then(|a| a.rows)
}

fn llm_json(p: &Pipeline) -> Map<String, Value> {
    p.llm
        .iter()
        .map(|(k, e)| {
            (
                k.clone(),
                serde_json::json!({
                    "endpoint": e.endpoint,
                    "model": e.model,
                    "api_key_env": e.api_key_env,
                    "max_concurrency": e.max_concurrency,
                    "timeout_secs": e.timeout_secs,
                    "max_retries": e.max_retries,
                    "params": e.params,
                }),
            )
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}
