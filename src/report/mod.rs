//! `fleming report`: the pipeline as one self-contained HTML file, for sharing — the DAG
//! coloured by status, a table of the stages (why each is stale, its outputs and checks),
//! the training curves of every `metrics` table, and each evaluation's report (Table 1 and
//! Table 2 layouts). Everything is inline (no script, no fetch), so the file opens offline.
//!
//! Read-only, like `fleming status`: the stages' states come from a dry run of the
//! executor, their outputs from the store's refs.

pub mod curves;
pub mod dag;
pub mod html;
pub mod page;

pub use page::render;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, Float64Array};
use arrow::datatypes::DataType;
use fleming_artifacts::manifest::{RunStatus, file_may_be_of};
use fleming_artifacts::{ArtifactKind, Digest, RunManifest, Store, Table};
use fleming_runtime::CancelToken;
use fleming_runtime::checks::CheckResult;
use fleming_runtime::executor::{Executor, Outcome, RunOptions};
use fleming_runtime::live::{LiveRun, LiveStage};
use fleming_runtime::op::PortKind;
use fleming_runtime::progress::SilentSink;
use fleming_runtime::spec::Pipeline;
use fleming_runtime::state::StageRef;

use curves::Series;

/// A stage's state, as the report colours it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Its outputs are current.
    Cached,
    /// It would run: something it depends on changed since its outputs were computed.
    Stale,
    /// It never ran.
    NeverRan,
    /// An `error` check upstream failed, so it would not run.
    Blocked,
    /// Its outputs are current but one of its `error` checks fails.
    CheckFailed,
    /// Its last run failed.
    Failed,
    /// A `fleming run` is running it now.
    Running,
}

impl Status {
    /// The word used in the page (and in `data-status`).
    pub fn label(self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Stale => "stale",
            Status::NeverRan => "never-ran",
            Status::Blocked => "blocked",
            Status::CheckFailed => "check-failed",
            Status::Failed => "failed",
            Status::Running => "running",
        }
    }

    /// Every status, in the legend's order.
    pub const ALL: [Status; 7] = [
        Status::Cached,
        Status::Running,
        Status::Stale,
        Status::NeverRan,
        Status::Blocked,
        Status::CheckFailed,
        Status::Failed,
    ];
}

/// One output of a stage, as last stored.
#[derive(Clone, Debug)]
pub struct OutputView {
    /// Port name.
    pub port: String,
    /// `table`, `model` or `directory`.
    pub kind: &'static str,
    /// Rows, for tables.
    pub rows: Option<u64>,
    /// Size in bytes.
    pub bytes: u64,
    /// Content digest.
    pub digest: String,
}

/// One stage of the report.
#[derive(Clone, Debug)]
pub struct StageView {
    /// Stage name.
    pub name: String,
    /// Operator name.
    pub op: String,
    /// Its state.
    pub status: Status,
    /// Why it is stale or blocked (empty when cached).
    pub reason: String,
    /// Its key, when computed.
    pub key: Option<String>,
    /// Indices of its upstream stages in the report's stage list.
    pub upstream: Vec<usize>,
    /// Its outputs as last stored (none when it never ran).
    pub outputs: Vec<OutputView>,
    /// Its data checks, with a sample of failing rows.
    pub checks: Vec<CheckResult>,
    /// Warnings of the plan (an operator changed without a version bump, say).
    pub warnings: Vec<String>,
    /// Progress of a run going on now (`12/40 steps`), when running.
    pub progress: Option<String>,
}

/// The training curves of one stage.
#[derive(Clone, Debug)]
pub struct StageCurves {
    /// Stage name.
    pub stage: String,
    /// One series per charted metric.
    pub series: Vec<Series>,
}

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct PipelineView {
    /// Pipeline name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Stages, in the file's order.
    pub stages: Vec<StageView>,
    /// Curves of the stages with a stored `metrics` table.
    pub curves: Vec<StageCurves>,
    /// The evaluation stages' results.
    pub evaluations: Vec<Evaluation>,
}

/// What an `evaluate` stage measured.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Stage name.
    pub stage: String,
    /// Its own HTML report — the ablation as bars with 95% intervals, Table 1 and Table 2
    /// layouts, paired tests — when readable.
    pub report: Option<String>,
}

/// Reads the pipeline's state and outputs from the store (writing nothing to it).
pub fn collect(pipeline: &Pipeline, store: &Store) -> anyhow::Result<PipelineView> {
    let executor = Executor::new(pipeline, store, Arc::new(SilentSink), CancelToken::new());
    let plan = executor.run(&RunOptions { dry_run: true, read_only: true, ..RunOptions::default() })?;
    let mut stages = Vec::new();
    let mut curves = Vec::new();
    let mut evaluations = Vec::new();
    let run_files = run_files(store);
    for stage in &pipeline.stages {
        // A dry run of the whole pipeline plans every stage; the indices of `upstream`
        // rely on one view per stage, in the file's order.
        let r = plan
            .stages
            .iter()
            .find(|s| s.stage == stage.name)
            .with_context(|| format!("stage `{}` missing from the plan", stage.name))?;
        let stored = StageRef::load(store, &pipeline.name, &stage.name)?;
        let blocking: Vec<&str> = r.checks.iter().filter(|c| c.blocks()).map(|c| c.name.as_str()).collect();
        let failed_run = match (&r.outcome, &r.key) {
            (Outcome::Stale | Outcome::WouldRun, Some(key)) => last_failure(store, &run_files, &stage.name, key),
            _ => None,
        };
        let status = match r.outcome {
            Outcome::Cached if !blocking.is_empty() => Status::CheckFailed,
            Outcome::Cached => Status::Cached,
            Outcome::Skipped => Status::Blocked,
            Outcome::Failed => Status::Failed,
            _ if failed_run.is_some() => Status::Failed,
            _ if stored.is_none() => Status::NeverRan,
            _ => Status::Stale,
        };
        let outputs = r.outputs.clone();
        let outputs = if outputs.is_empty() { stored.map(|s| s.outputs).unwrap_or_default() } else { outputs };
        let spec = stage.op.spec();
        let mut views = Vec::new();
        for (port, a) in &outputs {
            let kind = match spec.output(port).map(|o| &o.kind) {
                _ if a.kind == ArtifactKind::Table => "table",
                Some(PortKind::Dir) => "directory",
                _ => "model",
            };
            views.push(OutputView {
                port: port.clone(),
                kind,
                rows: a.rows,
                bytes: a.bytes,
                digest: a.digest.to_string(),
            });
            let path = local_object(store, a.kind, &a.digest);
            if port == "metrics" && a.kind == ArtifactKind::Table {
                // One unreadable table (a quarantined object, say) costs its charts, not the page.
                match metrics_series(&path) {
                    Ok(series) if !series.is_empty() => curves.push(StageCurves { stage: stage.name.clone(), series }),
                    Ok(_) => {}
                    Err(e) => {
                        fleming_runtime::progress::log_line(format_args!(
                            "warning: {}.metrics left out of the report: {e:#}",
                            stage.name
                        ));
                    }
                }
            }
        }
        if spec.name == "evaluate"
            && let Some(a) = outputs.get("report")
        {
            let report = std::fs::read_to_string(local_object(store, a.kind, &a.digest).join("report.html")).ok();
            evaluations.push(Evaluation { stage: stage.name.clone(), report });
        }
        stages.push(StageView {
            name: stage.name.clone(),
            op: spec.name.to_string(),
            status,
            reason: match status {
                Status::Cached => String::new(),
                Status::CheckFailed => format!("check {} failed: downstream is blocked", blocking.join(", ")),
                Status::Failed if failed_run.is_some() => failed_run.clone().unwrap_or_default(),
                _ => r.reason.clone(),
            },
            key: r.key.as_ref().map(|k| k.to_string()),
            upstream: stage.upstream.clone(),
            outputs: views,
            checks: r.checks.clone(),
            warnings: r.warnings.clone(),
            progress: None,
        });
    }
    Ok(PipelineView {
        name: pipeline.name.clone(),
        description: pipeline.description.clone().unwrap_or_default(),
        stages,
        curves,
        evaluations,
    })
}

/// The names of the run manifests, sorted (oldest first: they start with the time).
fn run_files(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.dir("runs"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// When the latest run of `stage` with this very key failed: what it said. (A stage that
/// failed is stale to the executor; the page tells it apart by its manifest.)
fn last_failure(store: &Store, run_files: &[String], stage: &str, key: &Digest) -> Option<String> {
    let name = run_files.iter().rev().find(|n| file_may_be_of(n, stage, Some(key)))?;
    let m: RunManifest = serde_json::from_slice(&std::fs::read(store.dir("runs").join(name)).ok()?).ok()?;
    (m.stage == stage && m.key == *key && m.status == RunStatus::Failed).then(|| {
        let first = m.error.as_deref().and_then(|e| e.lines().next()).unwrap_or("").to_string();
        format!("its last run failed: {first}")
    })
}

/// Marks the stages a `fleming run` is running now, with their progress.
pub fn apply_live(view: &mut PipelineView, runs: &[LiveRun]) {
    for run in runs {
        for (name, live) in &run.stages {
            if let Some(st) = view.stages.iter_mut().find(|s| &s.name == name) {
                st.status = Status::Running;
                st.progress = Some(progress_text(live));
            }
        }
    }
}

/// `12/40 steps · message`.
pub fn progress_text(live: &LiveStage) -> String {
    let count = match live.total {
        Some(t) => format!("{}/{t} {}", live.position, live.unit),
        None => format!("{} {}", live.position, live.unit),
    };
    if live.message.is_empty() { count } else { format!("{count} · {}", live.message) }
}

/// The charted metrics of a metrics table: x is its `step` column.
pub fn metrics_series(path: &Path) -> anyhow::Result<Vec<Series>> {
    let table = Table::read_parquet(path)?;
    if table.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let batch = table.concat()?;
    let Some(step) = numeric(&batch, "step")? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for metric in curves::METRICS {
        let Some(values) = numeric(&batch, metric)? else { continue };
        let points: Vec<(f64, f64)> = (0..batch.num_rows())
            .filter(|&k| step.is_valid(k) && values.is_valid(k))
            .map(|k| (step.value(k), values.value(k)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if !points.is_empty() {
            out.push(Series { metric: metric.to_string(), points });
        }
    }
    Ok(out)
}

/// A numeric column as f64, or `None` when absent or not numeric.
fn numeric(batch: &arrow::array::RecordBatch, name: &str) -> anyhow::Result<Option<Float64Array>> {
    let Some(col) = batch.column_by_name(name) else { return Ok(None) };
    if !col.data_type().is_numeric() {
        return Ok(None);
    }
    let cast = arrow::compute::cast(col, &DataType::Float64)?;
    Ok(cast.as_any().downcast_ref::<Float64Array>().cloned())
}

/// The local path of an object, downloaded from a remote store if need be; where it would
/// be when it cannot be had (the page then says it cannot read it).
pub fn local_object(store: &Store, kind: ArtifactKind, digest: &fleming_artifacts::Digest) -> std::path::PathBuf {
    store.fetch(kind, digest).unwrap_or_else(|_| store.object_path(kind, digest))
}
