//! `fleming query`: SQL over every stage's current outputs, the run manifests and the
//! check results.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::SchemaRef;
use clap::{Args, ValueEnum};
use fleming_artifacts::sql::{block_on, register, session};
use fleming_artifacts::table::table_from_columns;
use fleming_artifacts::{ArtifactKind, RunManifest, Store, Table};
use fleming_runtime::checks::CheckResult;
use fleming_runtime::op::Registry;
use fleming_runtime::spec::Pipeline;
use fleming_runtime::state::StageRef;

use super::{Cli, EXIT_FAILED, EXIT_INVALID, load_pipeline, open_store};

/// Output format of `fleming query`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueryFormat {
    /// An aligned table.
    Table,
    /// CSV with a header.
    Csv,
    /// One JSON object per line.
    Json,
    /// Parquet (needs --output).
    Parquet,
}

/// Arguments of `fleming query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// The query. Tables: each stage's default output as `stage`, every output as
    /// `stage_port`, `runs` (all manifests) and `checks` (all check results).
    pub sql: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
    pub format: QueryFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Renders batches as an aligned table.
pub fn render_table(schema: &SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<String> {
    if batches.is_empty() {
        let empty = RecordBatch::new_empty(schema.clone());
        return Ok(arrow::util::pretty::pretty_format_batches(&[empty])?.to_string());
    }
    Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The `runs` table: one row per manifest.
pub fn runs_table(store: &Store) -> anyhow::Result<Table> {
    let (ms, _) = RunManifest::load_all(store)?;
    let s = |f: &dyn Fn(&RunManifest) -> String| -> ArrayRef {
        Arc::new(StringArray::from(ms.iter().map(f).collect::<Vec<_>>()))
    };
    let rows: ArrayRef = Arc::new(Int64Array::from(
        ms.iter().map(|m| m.outputs.values().filter_map(|o| o.rows).sum::<u64>() as i64).collect::<Vec<_>>(),
    ));
    Ok(table_from_columns(vec![
        ("id", s(&|m| m.run_id.clone())),
        ("pipeline", s(&|m| m.pipeline.clone())),
        ("stage", s(&|m| m.stage.clone())),
        ("op", s(&|m| m.op.clone())),
        ("op_version", Arc::new(UInt32Array::from(ms.iter().map(|m| m.op_version).collect::<Vec<_>>())) as ArrayRef),
        ("key", s(&|m| m.key.hex())),
        ("status", s(&|m| json_text(&m.status).trim_matches('"').to_string())),
        ("reason", s(&|m| m.reason.clone())),
        ("started_at", s(&|m| m.started_at.to_rfc3339())),
        ("finished_at", s(&|m| m.finished_at.to_rfc3339())),
        (
            "duration_ms",
            Arc::new(Int64Array::from(ms.iter().map(|m| m.duration_ms as i64).collect::<Vec<_>>())) as ArrayRef,
        ),
        ("rows_out", rows),
        ("host", s(&|m| m.host.clone())),
        ("tool_version", s(&|m| m.tool_version.clone())),
        ("error", s(&|m| m.error.clone().unwrap_or_default())),
        ("params", s(&|m| json_text(&m.params))),
        ("metrics", s(&|m| json_text(&m.metrics))),
        (
            "outputs",
            s(&|m| {
                json_text(
                    &m.outputs
                        .iter()
                        .map(|(k, o)| (k.clone(), o.digest.hex()))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                )
            }),
        ),
    ])?)
}

/// The `checks` table: one row per stored check result.
pub fn checks_table(store: &Store) -> anyhow::Result<Table> {
    let cs = CheckResult::load_all(store);
    let s = |f: &dyn Fn(&CheckResult) -> String| -> ArrayRef {
        Arc::new(StringArray::from(cs.iter().map(f).collect::<Vec<_>>()))
    };
    Ok(table_from_columns(vec![
        ("id", s(&|c| format!("{}-{}", c.stage_key.short(12), c.check_digest.short(12)))),
        ("stage", s(&|c| c.stage.clone())),
        ("check", s(&|c| c.name.clone())),
        ("severity", s(&|c| json_text(&c.severity).trim_matches('"').to_string())),
        ("status", s(&|c| json_text(&c.status).trim_matches('"').to_string())),
        (
            "failing_rows",
            Arc::new(Int64Array::from(cs.iter().map(|c| c.failing_rows as i64).collect::<Vec<_>>())) as ArrayRef,
        ),
        ("stage_key", s(&|c| c.stage_key.hex())),
        ("evaluated_at", s(&|c| c.evaluated_at.to_rfc3339())),
        ("query", s(&|c| c.query.clone())),
        ("message", s(&|c| c.message.clone().unwrap_or_default())),
        ("sample", s(&|c| json_text(&c.sample))),
    ])?)
}

/// Runs a query over a pipeline's store.
pub fn run_query(p: &Pipeline, store: &Store, sql: &str) -> anyhow::Result<Table> {
    let runs = runs_table(store)?;
    let checks = checks_table(store)?;
    let mut parquet: Vec<(String, PathBuf)> = Vec::new();
    for s in &p.stages {
        let Some(r) = StageRef::load(store, &p.name, &s.name)? else { continue };
        let default = s.op.spec().default_output().map(|o| o.name);
        for (port, a) in &r.outputs {
            if a.kind != ArtifactKind::Table {
                continue;
            }
            let path = store.fetch(a.kind, &a.digest)?;
            if Some(port.as_str()) == default {
                parquet.push((s.name.clone(), path.clone()));
            }
            parquet.push((format!("{}_{port}", s.name), path));
        }
    }
    block_on(async move {
        let ctx = session();
        register(&ctx, "runs", &runs)?;
        register(&ctx, "checks", &checks)?;
        for (name, path) in &parquet {
            let path = path.to_string_lossy().to_string();
            ctx.register_parquet(name.as_str(), &path, Default::default()).await?;
        }
        let df = ctx.sql(sql).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok::<_, anyhow::Error>(Table::new(schema, batches))
    })?
}

/// `fleming query`.
pub fn query(cli: &Cli, args: &QueryArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let p = match load_pipeline(&args.pipeline, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if args.format == QueryFormat::Parquet && args.output.is_none() {
        eprintln!("error: --format parquet needs --output FILE");
        return Ok(EXIT_INVALID);
    }
    let store = open_store(cli, &p)?;
    let table = match run_query(&p, &store, &args.sql) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(EXIT_FAILED);
        }
    };
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    match args.format {
        QueryFormat::Table => writeln!(out, "{}", render_table(&table.schema, &table.batches)?)?,
        QueryFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            if table.batches.is_empty() {
                w.write(&RecordBatch::new_empty(table.schema.clone()))?;
            }
            for b in &table.batches {
                w.write(b)?;
            }
        }
        QueryFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in &table.batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        QueryFormat::Parquet => {
            let mut buf = Vec::new();
            table.write_parquet(&mut buf)?;
            out.write_all(&buf)?;
        }
    }
    out.flush()?;
    Ok(0)
}
