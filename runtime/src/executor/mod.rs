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
//! Operators run in this process ([`Executor::run_in_process`]) or in a worker process
//! ([`in_worker`]).

mod in_worker;
mod plan;

pub use in_worker::continuation_checkpoint;
pub use plan::why_changed;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use chrono::Utc;
use fleming_artifacts::manifest::{DeviceMap, FileRecord, InputRecord, RunStatus, new_run_id};
use fleming_artifacts::statcache::StatCache;
use fleming_artifacts::{ArtifactKind, ArtifactRef, Digest, MemoLog, RunManifest, Store};
use serde_json::{Map, Value};

use crate::cancel::{CancelToken, Cancelled};
use crate::checks::{CheckResult, evaluate};
use crate::cluster::Cluster;
use crate::context::{Input, InputValue, OpContext, PreviousRun, RecordMemo, StoredTable};
use crate::dispatch::launcher::GpuPool;
use crate::keys::KeyParts;
use crate::op::{Execution, OpSpec, OutputValue, PortKind, check_outputs, schema_problems};
use crate::progress::{Progress, ProgressSink};
use crate::spec::{Pipeline, Stage};
use crate::state::{CacheEntry, StageRef};

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

/// Runs pipelines against a store.
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

    fn resolve_selection(&self, sel: &Selection) -> anyhow::Result<(Vec<bool>, Vec<bool>)> {
        let n = self.pipeline.stages.len();
        let index = |name: &str| {
            self.pipeline.stage_index(name).ok_or_else(|| {
                anyhow!(
                    "no stage `{name}` in {} ({})",
                    self.pipeline.file.display(),
                    crate::diagnostic::suggestion(name, self.pipeline.stages.iter().map(|s| s.name.as_str()))
                )
            })
        };
        Ok(match sel {
            Selection::All => (vec![true; n], vec![true; n]),
            Selection::Only(names) => {
                let mut selected = vec![false; n];
                let mut relevant = vec![false; n];
                for name in names {
                    let i = index(name)?;
                    selected[i] = true;
                    relevant[i] = true;
                    for a in self.pipeline.ancestors(i) {
                        relevant[a] = true;
                    }
                }
                (selected, relevant)
            }
            Selection::Until(names) => {
                let mut selected = vec![false; n];
                for name in names {
                    let i = index(name)?;
                    selected[i] = true;
                    for a in self.pipeline.ancestors(i) {
                        selected[a] = true;
                    }
                }
                (selected.clone(), selected)
            }
        })
    }

    /// Runs (or, with `dry_run`, plans) the pipeline.
    pub fn run(&self, opts: &RunOptions) -> anyhow::Result<RunReport> {
        let _store_lock = self.store.lock_store(false)?;
        let stages = &self.pipeline.stages;
        let n = stages.len();
        let (selected, relevant) = self.resolve_selection(&opts.selection)?;
        let order = self.pipeline.topo_order();
        let mut reports: Vec<Option<StageReport>> = vec![None; n];
        let mut pending: Vec<Option<Pending>> = vec![None; n];
        let mut started = vec![false; n];
        let mut running = 0usize;
        let mut cpu_running = 0usize;
        let mut on_cpu = vec![false; n];
        let mut stopped: Option<String> = None;
        let jobs = opts.jobs.max(1);
        let (tx, rx) = mpsc::channel::<(usize, StageReport)>();
        let total_relevant = relevant.iter().filter(|r| **r).count();

        std::thread::scope(|scope| -> anyhow::Result<()> {
            loop {
                if self.cancel.is_cancelled() && stopped.is_none() {
                    stopped = Some("cancelled".into());
                }
                let mut progressed = true;
                while progressed {
                    progressed = false;
                    for &i in &order {
                        if reports[i].is_some() || started[i] {
                            continue;
                        }
                        let stage = &stages[i];
                        if !relevant[i] {
                            reports[i] = Some(StageReport::new(stage, Outcome::NotSelected, "not selected"));
                            progressed = true;
                            continue;
                        }
                        if stage.upstream.iter().any(|&u| reports[u].is_none()) {
                            continue;
                        }
                        if let Some(r) = self.blocked_by_upstream(i, &reports, &selected, opts.dry_run) {
                            reports[i] = Some(r);
                            progressed = true;
                            continue;
                        }
                        if pending[i].is_none() {
                            match self.decide(i, &reports, opts.force && selected[i], opts.dry_run) {
                                Ok(Decision::Cached(mut r)) => {
                                    if !opts.skip_checks {
                                        r.checks = self.run_checks(stage, &r, false, !opts.dry_run);
                                    }
                                    reports[i] = Some(r);
                                    progressed = true;
                                    continue;
                                }
                                Ok(Decision::Run(p)) => pending[i] = Some(p),
                                Err(e) => {
                                    let mut r = StageReport::new(stage, Outcome::Failed, "could not compute its key");
                                    r.error = Some(format!("{e:#}"));
                                    reports[i] = Some(r);
                                    if !opts.keep_going && stopped.is_none() {
                                        stopped = Some(format!("stage `{}` failed", stage.name));
                                    }
                                    progressed = true;
                                    continue;
                                }
                            }
                        }
                        let Some(p) = pending[i].clone() else { continue };
                        let outcome = if !selected[i] {
                            Some((Outcome::Stale, p.reason.clone()))
                        } else if opts.dry_run {
                            Some((Outcome::WouldRun, p.reason.clone()))
                        } else {
                            stopped.as_ref().map(|why| (Outcome::Skipped, format!("not started: {why}")))
                        };
                        if let Some((outcome, reason)) = outcome {
                            let mut r = StageReport::new(stage, outcome, reason);
                            r.key = Some(p.key);
                            r.warnings = p.warnings.clone();
                            reports[i] = Some(r);
                            progressed = true;
                            continue;
                        }
                        // Every process of a cluster run takes up its dataflow stages one at
                        // a time, in the same order, so that they meet in each.
                        if self.cluster_of(stage).is_some()
                            && order
                                .iter()
                                .take_while(|&&j| j != i)
                                .any(|&j| relevant[j] && reports[j].is_none() && self.cluster_of(&stages[j]).is_some())
                        {
                            continue;
                        }
                        // A stage holding GPUs waits for its devices, not for a CPU slot.
                        let on_gpus = stage.resources.gpu > 0 && self.gpus().total() > 0;
                        if on_gpus || cpu_running < jobs {
                            let gpus = match self.gpus().try_acquire(stage.resources.gpu as usize) {
                                Ok(Some(gpus)) => gpus,
                                Ok(None) => continue,
                                Err(e) => {
                                    let mut r = StageReport::new(stage, Outcome::Failed, "cannot be scheduled");
                                    r.key = Some(p.key);
                                    r.error = Some(format!("{e:#}"));
                                    reports[i] = Some(r);
                                    if !opts.keep_going && stopped.is_none() {
                                        stopped = Some(format!("stage `{}` failed", stage.name));
                                    }
                                    progressed = true;
                                    continue;
                                }
                            };
                            started[i] = true;
                            running += 1;
                            on_cpu[i] = !on_gpus;
                            cpu_running += usize::from(!on_gpus);
                            let tx = tx.clone();
                            let worker_threads =
                                stage.resources.threads.map(|t| t as usize).unwrap_or(opts.workers).max(1);
                            let upstream: Vec<Option<StageReport>> =
                                stage.upstream.iter().map(|&u| reports[u].clone()).collect();
                            let this = &*self;
                            let skip_checks = opts.skip_checks;
                            scope.spawn(move || {
                                // The operator's own panics are caught where it runs; this
                                // catches the rest (a bug in the runtime), which would
                                // otherwise leave the loop below waiting for the report.
                                let run = || this.execute(i, p, &upstream, worker_threads, &gpus, skip_checks);
                                let report = catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
                                    let mut r = StageReport::new(&stages[i], Outcome::Failed, "internal error");
                                    r.error =
                                        Some(format!("fleming panicked running the stage: {}", panic_message(&panic)));
                                    r
                                });
                                this.gpus().release(gpus);
                                let _ = tx.send((i, report));
                            });
                        }
                    }
                }
                let done = reports.iter().zip(&relevant).filter(|(r, rel)| **rel && r.is_some()).count();
                self.progress.overall(done, total_relevant);
                if running == 0 {
                    break;
                }
                let (i, report) = rx.recv().map_err(|_| anyhow!("a stage thread vanished"))?;
                running -= 1;
                cpu_running -= usize::from(on_cpu[i]);
                if matches!(report.outcome, Outcome::Failed | Outcome::Cancelled)
                    && !opts.keep_going
                    && stopped.is_none()
                {
                    stopped = Some(if report.outcome == Outcome::Cancelled {
                        "cancelled".into()
                    } else {
                        format!("stage `{}` failed (use --keep-going to run independent stages)", report.stage)
                    });
                }
                reports[i] = Some(report);
            }
            Ok(())
        })?;
        self.close_memos();
        if opts.read_only && opts.dry_run {
            // Nothing to save.
        } else if let Err(e) = self.stat.save() {
            self.log(&format!("warning: cannot save the stat cache: {e}"));
        }
        self.progress.finish();
        let stages = reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| StageReport::new(&stages[i], Outcome::Skipped, "not started")))
            .collect();
        Ok(RunReport { stages, cancelled: self.cancel.is_cancelled() })
    }

    /// A report for a stage that cannot be evaluated because of its upstream, or `None`.
    fn blocked_by_upstream(
        &self,
        i: usize,
        reports: &[Option<StageReport>],
        selected: &[bool],
        dry_run: bool,
    ) -> Option<StageReport> {
        let stage = &self.pipeline.stages[i];
        for &u in &stage.upstream {
            let up = reports[u].as_ref()?;
            let name = &up.stage;
            if let Some(c) = up.blocking_check() {
                return Some(StageReport::new(
                    stage,
                    Outcome::Skipped,
                    format!(
                        "blocked: check `{}` of `{name}` {}",
                        c.name,
                        if c.status == crate::checks::CheckStatus::Error { "could not run" } else { "failed" }
                    ),
                ));
            }
            let (outcome, reason) = match up.outcome {
                Outcome::Cached | Outcome::Ran => continue,
                Outcome::Failed => (Outcome::Skipped, format!("upstream `{name}` failed")),
                Outcome::Cancelled => (Outcome::Skipped, format!("upstream `{name}` was cancelled")),
                Outcome::Skipped | Outcome::NotSelected => (Outcome::Skipped, format!("upstream `{name}` did not run")),
                Outcome::WouldRun => (
                    Outcome::WouldRun,
                    format!(
                        "upstream `{name}` will run (this stage may still be cached if its output does not change)"
                    ),
                ),
                Outcome::Stale if selected[i] && !dry_run => (
                    Outcome::Skipped,
                    format!("upstream `{name}` is stale and not selected (use --until {} to run it too)", stage.name),
                ),
                Outcome::Stale if selected[i] => (Outcome::WouldRun, format!("upstream `{name}` is stale")),
                Outcome::Stale => (Outcome::Stale, format!("upstream `{name}` is stale")),
            };
            return Some(StageReport::new(stage, outcome, reason));
        }
        None
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

    /// Runs one stage under its key lock and commits its outputs.
    fn execute(
        &self,
        i: usize,
        p: Pending,
        upstream: &[Option<StageReport>],
        threads: usize,
        gpus: &[u32],
        skip_checks: bool,
    ) -> StageReport {
        let stage = &self.pipeline.stages[i];
        let spec = stage.op.spec();
        let started = Instant::now();
        let started_at = Utc::now();
        let run_id = new_run_id(&stage.name, &p.key, started_at);
        let mut report = StageReport::new(stage, Outcome::Ran, p.reason.clone());
        report.key = Some(p.key);
        report.warnings = p.warnings.clone();

        if let Some(cluster) = self.cluster_of(stage)
            && !cluster.is_leader()
        {
            return self.take_part(stage, &p, upstream, threads, gpus, report);
        }
        // The key lock: one process computes a key; others wait and reuse.
        let _lock = match self.lock_key(stage, &p.key) {
            Ok(Some(l)) => l,
            Ok(None) => {
                report.outcome = Outcome::Cancelled;
                report.reason = "cancelled while waiting for another run".into();
                return report;
            }
            Err(e) => {
                report.outcome = Outcome::Failed;
                report.error = Some(format!("{e:#}"));
                return report;
            }
        };
        if !p.forced
            && let Ok(Some(entry)) = CacheEntry::load(self.store, &p.key)
            && matches!(self.unusable(stage, &entry), Ok(None))
        {
            let _ = self.set_ref(stage, &p.parts, p.key, &entry.outputs, &entry.run_id);
            report.outcome = Outcome::Cached;
            report.reason = match self.twin(stage, &p.key) {
                Some(twin) => format!(
                    "cached: stage `{twin}` has the same key (the same operator, params and inputs) and computed it in this run"
                ),
                None => "cached (computed by a concurrent run)".into(),
            };
            report.outputs = entry.outputs;
            report.run_id = Some(entry.run_id);
            return report;
        }

        self.log(&format!("▶ {} [{}]: {}", stage.name, spec.name, p.reason));
        let progress = self.progress.stage(&stage.name, spec.name);
        let mut metrics = Map::new();
        let mut worker_info = None;
        let result =
            self.compute(stage, &p, upstream, threads, gpus, &progress, &mut metrics, &mut worker_info, &run_id);
        let finished_at = Utc::now();
        let (status, error) = match &result {
            Ok(outputs) => {
                report.outputs = outputs.clone();
                (RunStatus::Succeeded, None)
            }
            Err(e) if e.downcast_ref::<Cancelled>().is_some() || self.cancel.is_cancelled() => {
                report.outcome = Outcome::Cancelled;
                (RunStatus::Cancelled, Some(format!("{e:#}")))
            }
            Err(e) => {
                report.outcome = Outcome::Failed;
                (RunStatus::Failed, Some(format!("{e:#}")))
            }
        };
        report.error = error.clone();
        report.duration = started.elapsed();
        report.run_id = Some(run_id.clone());
        if status == RunStatus::Succeeded && !skip_checks {
            report.checks = self.run_checks(stage, &report, true, true);
        }
        let manifest = RunManifest {
            run_id: run_id.clone(),
            pipeline: self.pipeline.name.clone(),
            pipeline_file: self.pipeline.file.display().to_string(),
            stage: stage.name.clone(),
            key: p.key,
            op: spec.name.to_string(),
            op_version: spec.version,
            op_fingerprint: spec.fingerprint.clone(),
            params: stage.params.to_json(),
            inputs: stage
                .inputs
                .iter()
                .map(|(port, refs)| {
                    let recs = refs
                        .iter()
                        .zip(p.parts.inputs.get(port).into_iter().flatten())
                        .map(|(r, d)| InputRecord {
                            from: r.to_string(),
                            digest: *d,
                            rows: upstream_rows(upstream, stage, r),
                        })
                        .collect();
                    (port.clone(), recs)
                })
                .collect(),
            files: p.files.clone(),
            outputs: report.outputs.clone(),
            started_at,
            finished_at,
            duration_ms: report.duration.as_millis() as u64,
            metrics,
            host: hostname(),
            tool_version: crate::TOOL_VERSION.to_string(),
            reason: p.reason.clone(),
            status,
            error,
            worker: worker_info,
            devices: (stage.resources.gpu > 0).then(|| DeviceMap::of(gpus)),
            checks: report.checks.iter().filter_map(|c| serde_json::to_value(c).ok()).collect(),
        };
        let commit = (|| -> anyhow::Result<()> {
            manifest.save(self.store)?;
            if status == RunStatus::Succeeded {
                CacheEntry {
                    key: p.key,
                    op: spec.name.to_string(),
                    op_version: spec.version,
                    op_fingerprint: spec.fingerprint.clone(),
                    outputs: report.outputs.clone(),
                    run_id: run_id.clone(),
                    created_at: finished_at,
                }
                .save(self.store)?;
                self.set_ref(stage, &p.parts, p.key, &report.outputs, &run_id)?;
            }
            Ok(())
        })();
        if let Err(e) = commit {
            report.outcome = Outcome::Failed;
            report.error = Some(format!("committing the outputs: {e:#}"));
        }
        let summary = match report.outcome {
            Outcome::Ran => {
                let rows: u64 = report.outputs.values().filter_map(|o| o.rows).sum();
                format!("✓ {} [{}]: {} rows in {:.1?}", stage.name, spec.name, rows, report.duration)
            }
            Outcome::Cancelled => format!("■ {} [{}]: cancelled; nothing committed", stage.name, spec.name),
            _ => format!("✗ {} [{}]: failed after {:.1?}", stage.name, spec.name, report.duration),
        };
        progress.finish(&summary);
        self.log(&summary);
        report
    }

    /// Takes part in a dataflow stage of a cluster run as a process other than 0: runs its
    /// share, then waits for process 0 (which holds the key lock until it has committed)
    /// and reports what it committed. Writes no manifest: process 0's is the stage's.
    fn take_part(
        &self,
        stage: &Stage,
        p: &Pending,
        upstream: &[Option<StageReport>],
        threads: usize,
        gpus: &[u32],
        mut report: StageReport,
    ) -> StageReport {
        let spec = stage.op.spec();
        let (process, processes) = self.cluster.as_ref().map(|c| (c.process, c.processes())).unwrap_or((0, 1));
        let started = Instant::now();
        self.log(&format!("▶ {} [{}]: {} (process {process} of {processes})", stage.name, spec.name, p.reason));
        let progress = self.progress.stage(&stage.name, spec.name);
        let mut metrics = Map::new();
        let run_id = new_run_id(&stage.name, &p.key, Utc::now());
        let computed = self.compute(stage, p, upstream, threads, gpus, &progress, &mut metrics, &mut None, &run_id);
        let committed = computed.and_then(|_| {
            let _lock = self.lock_key(stage, &p.key)?.ok_or(Cancelled)?;
            CacheEntry::load(self.store, &p.key)?
                .ok_or_else(|| anyhow!("process 0 did not commit the outputs (it failed or was stopped: see its log)"))
        });
        report.duration = started.elapsed();
        match committed {
            Ok(entry) => {
                report.reason = format!("{} (process {process} of {processes}; process 0 committed)", p.reason);
                report.outputs = entry.outputs;
                report.run_id = Some(entry.run_id);
            }
            Err(e) => {
                report.outcome = if e.downcast_ref::<Cancelled>().is_some() || self.cancel.is_cancelled() {
                    Outcome::Cancelled
                } else {
                    Outcome::Failed
                };
                report.error = Some(format!("{e:#}"));
            }
        }
        let summary = match report.outcome {
            Outcome::Ran => format!("✓ {} [{}]: took part in {:.1?}", stage.name, spec.name, report.duration),
            Outcome::Cancelled => format!("■ {} [{}]: cancelled", stage.name, spec.name),
            _ => format!("✗ {} [{}]: failed after {:.1?}", stage.name, spec.name, report.duration),
        };
        progress.finish(&summary);
        self.log(&summary);
        report
    }

    /// Evaluates the stage's checks on its outputs, reusing stored results for the same
    /// stage key and check definition unless `fresh` (the stage just ran). Without
    /// `compute` (dry runs, status), only stored results are returned.
    fn run_checks(&self, stage: &Stage, report: &StageReport, fresh: bool, compute: bool) -> Vec<CheckResult> {
        let Some(key) = report.key else { return Vec::new() };
        let default_port = stage.op.spec().default_output().map(|o| o.name).unwrap_or("table");
        let mut tables: Option<BTreeMap<String, fleming_artifacts::Table>> = None;
        let mut out = Vec::new();
        for check in &stage.checks {
            if !fresh && let Ok(Some(r)) = CheckResult::load(self.store, &key, check) {
                out.push(r);
                continue;
            }
            if !compute {
                continue;
            }
            if tables.is_none() {
                let mut t = BTreeMap::new();
                for (port, a) in &report.outputs {
                    if a.kind == ArtifactKind::Table {
                        match self.store.read_table(a) {
                            Ok(table) => {
                                t.insert(port.clone(), table);
                            }
                            Err(e) => self
                                .log(&format!("warning: {}: cannot read output `{port}` for checks: {e}", stage.name)),
                        }
                    }
                }
                tables = Some(t);
            }
            let r = evaluate(&stage.name, key, check, tables.as_ref().unwrap_or(&BTreeMap::new()), default_port);
            if let Err(e) = r.save(self.store) {
                self.log(&format!("warning: {}: cannot store the result of check `{}`: {e}", stage.name, check.name));
            }
            out.push(r);
        }
        out
    }

    /// The stage of this run that took up `key` before `stage` did, if another did.
    fn twin(&self, stage: &Stage, key: &Digest) -> Option<String> {
        self.claimed.lock().ok()?.get(key).filter(|first| **first != stage.name).cloned()
    }

    /// Records that `stage` holds the lock of `key` — the first of this run to hold it
    /// is the one that computes it, whichever asked first.
    fn claim(&self, stage: &Stage, key: &Digest) {
        if let Ok(mut claimed) = self.claimed.lock() {
            claimed.entry(*key).or_insert_with(|| stage.name.clone());
        }
    }

    fn lock_key(&self, stage: &Stage, key: &Digest) -> anyhow::Result<Option<fleming_artifacts::KeyLock>> {
        if let Some(l) = self.store.try_lock_key(key)? {
            self.claim(stage, key);
            return Ok(Some(l));
        }
        match self.twin(stage, key) {
            Some(twin) => self.log(&format!(
                "… {}: stage `{twin}` has the same key (the same operator, params and inputs) and is computing it; waiting for it",
                stage.name
            )),
            None => self.log(&format!(
                "… {}: another fleming run is computing the same stage; waiting for it",
                stage.name
            )),
        }
        loop {
            if self.cancel.is_cancelled() {
                return Ok(None);
            }
            if let Some(l) = self.store.try_lock_key(key)? {
                self.claim(stage, key);
                return Ok(Some(l));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Loads inputs, runs the operator (here or in a worker), and stores its outputs.
    #[allow(clippy::too_many_arguments)]
    fn compute(
        &self,
        stage: &Stage,
        p: &Pending,
        upstream: &[Option<StageReport>],
        threads: usize,
        gpus: &[u32],
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
                let up = upstream
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
        let run = StageRun { stage, pending: p, loaded: &loaded, threads, gpus, progress, run_id, work_dir: &work_dir };
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
                Err(panic) => bail!("operator `{}` panicked: {}", spec.name, panic_message(&panic)),
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

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
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
