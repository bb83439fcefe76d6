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

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, Float64Array};
use arrow::datatypes::DataType;
use fleming_artifacts::{ArtifactKind, Store, Table};
use fleming_runtime::CancelToken;
use fleming_runtime::checks::CheckStatus;
use fleming_runtime::executor::{Executor, Outcome, RunOptions};
use fleming_runtime::op::PortKind;
use fleming_runtime::progress::SilentSink;
use fleming_runtime::spec::Pipeline;
use fleming_runtime::state::StageRef;

use curves::Series;
use html::escape;

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
        }
    }
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
    /// Its data checks: name, status, failing rows.
    pub checks: Vec<(String, CheckStatus, u64)>,
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
    /// Each evaluation stage's own HTML report: stage name and the document.
    pub evaluations: Vec<(String, String)>,
}

/// Reads the pipeline's state and outputs from the store.
pub fn collect(pipeline: &Pipeline, store: &Store) -> anyhow::Result<PipelineView> {
    let executor = Executor::new(pipeline, store, Arc::new(SilentSink), CancelToken::new());
    let plan = executor.run(&RunOptions { dry_run: true, ..RunOptions::default() })?;
    let mut stages = Vec::new();
    let mut curves = Vec::new();
    let mut evaluations = Vec::new();
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
        let status = match r.outcome {
            Outcome::Cached if !blocking.is_empty() => Status::CheckFailed,
            Outcome::Cached => Status::Cached,
            Outcome::Skipped => Status::Blocked,
            Outcome::Failed => Status::Failed,
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
            views.push(OutputView { port: port.clone(), kind, rows: a.rows, bytes: a.bytes });
            let path = store.object_path(a.kind, &a.digest);
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
            if port == "report"
                && spec.name == "evaluate"
                && let Ok(doc) = std::fs::read_to_string(path.join("report.html"))
            {
                evaluations.push((stage.name.clone(), doc));
            }
        }
        stages.push(StageView {
            name: stage.name.clone(),
            op: spec.name.to_string(),
            status,
            reason: match status {
                Status::Cached => String::new(),
                Status::CheckFailed => format!("check {} failed: downstream is blocked", blocking.join(", ")),
                _ => r.reason.clone(),
            },
            key: r.key.as_ref().map(|k| k.to_string()),
            upstream: stage.upstream.clone(),
            outputs: views,
            checks: r.checks.iter().map(|c| (c.name.clone(), c.status, c.failing_rows)).collect(),
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

/// The charted metrics of a metrics table: x is its `step` column.
fn metrics_series(path: &Path) -> anyhow::Result<Vec<Series>> {
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

/// The whole page.
pub fn render(view: &PipelineView) -> String {
    let mut s = String::new();
    let title = format!("Pipeline {}", view.name);
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        html::STYLE,
        escape(&title)
    );
    if !view.description.is_empty() {
        let _ = writeln!(s, "<p>{}</p>", escape(&view.description));
    }
    let count = |st: Status| view.stages.iter().filter(|s| s.status == st).count();
    let _ = writeln!(
        s,
        "<p>{} stages: {} cached, {} stale, {} never ran, {} blocked, {} with a failing check.</p>",
        view.stages.len(),
        count(Status::Cached),
        count(Status::Stale),
        count(Status::NeverRan),
        count(Status::Blocked),
        count(Status::CheckFailed)
    );
    s.push_str("<h2>Graph</h2>\n<p class=\"legend\">");
    for st in [Status::Cached, Status::Stale, Status::NeverRan, Status::Blocked, Status::CheckFailed, Status::Failed] {
        let _ = write!(s, "<span style=\"background:{}\">{}</span>", dag::colour(st), st.label());
    }
    s.push_str("</p>\n<div class=\"dagbox\">");
    s.push_str(&dag::svg(&view.stages));
    s.push_str("</div>\n");
    stage_table(&mut s, view);
    if !view.curves.is_empty() {
        s.push_str("<h2>Training curves</h2>\n");
        for c in &view.curves {
            let _ = write!(s, "<h3 id=\"curves-{0}\"><code>{0}</code></h3>\n<div class=\"curves\">", escape(&c.stage));
            for series in &c.series {
                s.push_str(&curves::svg(series));
            }
            s.push_str("</div>\n");
        }
    }
    if !view.evaluations.is_empty() {
        s.push_str("<h2>Evaluation</h2>\n");
        for (stage, doc) in &view.evaluations {
            let _ = writeln!(
                s,
                "<h3 id=\"eval-{0}\"><code>{0}</code></h3>\n<iframe title=\"evaluation {0}\" srcdoc=\"{1}\"></iframe>",
                escape(stage),
                escape(doc)
            );
        }
    }
    s.push_str("</body></html>\n");
    s
}

fn stage_table(s: &mut String, view: &PipelineView) {
    s.push_str("<h2>Stages</h2>\n<table class=\"stages\"><tr><th>stage</th><th>op</th><th>status</th><th>why</th><th>outputs</th><th>checks</th><th>key</th></tr>\n");
    for st in &view.stages {
        let outputs: Vec<String> = st
            .outputs
            .iter()
            .map(|o| match o.rows {
                Some(r) => format!("{}: {} rows", escape(&o.port), r),
                None => format!("{}: {} ({} bytes)", escape(&o.port), o.kind, o.bytes),
            })
            .collect();
        let checks: Vec<String> = st
            .checks
            .iter()
            .map(|(n, status, failing)| match status {
                CheckStatus::Passed => format!("{} ✓", escape(n)),
                CheckStatus::Failed => format!("{}: failed, {failing} failing row(s)", escape(n)),
                CheckStatus::Error => format!("{}: error (the check could not run)", escape(n)),
            })
            .collect();
        let key = st.key.as_deref().map(|k| k.chars().take(12).collect::<String>()).unwrap_or_default();
        let _ = writeln!(
            s,
            "<tr id=\"stage-{name}\" data-status=\"{status}\"><td><code>{name}</code></td><td>{op}</td><td style=\"background:{fill}\">{status}</td><td>{why}</td><td>{outputs}</td><td>{checks}</td><td><code>{key}</code></td></tr>",
            name = escape(&st.name),
            op = escape(&st.op),
            status = st.status.label(),
            fill = dag::colour(st.status),
            why = escape(&st.reason),
            outputs = outputs.join("<br>"),
            checks = checks.join("<br>"),
        );
    }
    s.push_str("</table>\n");
}
