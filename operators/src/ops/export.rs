//! `export`: write a table to a path outside the store (Parquet, JSONL or CSV).
//!
//! The file is written next to its destination and renamed into place, so a reader never
//! sees half a file. The stage records a receipt (path, rows, digest); when the file is
//! later deleted or edited, the stage is no longer cached and writes it again.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use anyhow::{Context, anyhow, bail};
use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::{Table, digest_file, fsutil};
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    ColumnSpec, EffectsCtx, Execution, InputPorts, OpSpec, Operator, Outputs, ParamSpec, ParamType, PortSpec,
};
use serde_json::json;

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "export",
    version: 1,
    summary: "Write a table to a file outside the store (Parquet, JSONL or CSV)",
    doc: "The write is atomic (temporary file, fsync, rename). If the exported file is deleted or \
          changed, the next run writes it again.",
    params: vec![
        ParamSpec::required("path", ParamType::OutputPath, "Destination file, relative to the pipeline file"),
        ParamSpec::with_default(
            "format",
            ParamType::Enum(vec!["auto", "parquet", "jsonl", "csv"]),
            json!("auto"),
            "File format; `auto` picks it from the extension",
        ),
    ],
    inputs: InputPorts::Fixed(vec![PortSpec::table("table", "the table to write")]),
    outputs: vec![PortSpec::table_with("receipt", receipt_columns(), "what was written: path, format, rows, digest")],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::export.to_string(),
});

fn receipt_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("path", DataType::Utf8, false),
        ColumnSpec::new("format", DataType::Utf8, false),
        ColumnSpec::new("rows", DataType::Int64, false),
        ColumnSpec::new("digest", DataType::Utf8, false),
    ]
}

/// The `export` operator.
#[derive(Default)]
pub struct Export;

impl Export {
    /// The operator.
    pub fn new() -> Self {
        Export
    }
}

fn format_of(param: &str, path: &Path) -> anyhow::Result<&'static str> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    Ok(match (param, ext.as_str()) {
        ("parquet", _) | ("auto", "parquet" | "pq") => "parquet",
        ("jsonl", _) | ("auto", "jsonl" | "ndjson") => "jsonl",
        ("csv", _) | ("auto", "csv") => "csv",
        _ => bail!("cannot tell the format of {} from its extension; set `format:`", path.display()),
    })
}

fn write_table(table: &Table, format: &str, file: std::fs::File) -> anyhow::Result<std::fs::File> {
    let mut w = std::io::BufWriter::new(file);
    match format {
        "parquet" => {
            let (inner, _, _) = table.write_parquet(w)?;
            w = inner;
        }
        "jsonl" => {
            let mut jw = arrow::json::LineDelimitedWriter::new(&mut w);
            for b in &table.batches {
                jw.write(b)?;
            }
            jw.finish()?;
        }
        "csv" => {
            let mut cw = arrow::csv::WriterBuilder::new().with_header(true).build(&mut w);
            for b in &table.batches {
                cw.write(b)?;
            }
            if table.batches.is_empty() {
                let header = table.column_names().join(",");
                writeln!(cw.into_inner(), "{header}")?;
            }
        }
        other => bail!("unknown format `{other}`"),
    }
    w.flush()?;
    w.into_inner().map_err(|e| anyhow!("flushing: {}", e.error()))
}

impl Operator for Export {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let rel = ctx.params.str("path")?.to_string();
        let dest = ctx.params.path("path")?;
        let format = format_of(ctx.params.str("format")?, &dest)?;
        let table = ctx.input_table("table")?.clone();
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = fsutil::sibling_tmp(&dest);
        let result = (|| -> anyhow::Result<()> {
            let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let f = write_table(&table, format, f)?;
            f.sync_all()?;
            drop(f);
            fsutil::rename_durable(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let digest = digest_file(&dest)?;
        ctx.metric("rows", table.num_rows() as u64);
        let schema = Arc::new(Schema::new(
            receipt_columns().into_iter().map(|c| Field::new(c.name, c.data_type, c.nullable)).collect::<Vec<_>>(),
        ));
        let receipt = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![rel.clone()])),
                Arc::new(StringArray::from(vec![rel])),
                Arc::new(StringArray::from(vec![format])),
                Arc::new(Int64Array::from(vec![table.num_rows() as i64])),
                Arc::new(StringArray::from(vec![digest.hex()])),
            ],
        )?;
        Ok(Outputs::new().table("receipt", Table::from_batch(receipt)))
    }

    fn effects_hold(&self, ctx: &EffectsCtx<'_>) -> anyhow::Result<bool> {
        let Some(receipt) = (ctx.read_output)("receipt")? else { return Ok(false) };
        let batch = receipt.concat()?;
        let Some(digests) = batch.column_by_name("digest").and_then(|c| c.as_any().downcast_ref::<StringArray>())
        else {
            return Ok(false);
        };
        if digests.is_empty() {
            return Ok(false);
        }
        let dest = ctx.params.path("path")?;
        match (ctx.digest)(&dest) {
            Ok(d) => Ok(d.hex() == digests.value(0)),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::ArrayRef;
    use fleming_artifacts::table::table_from_columns;
    use fleming_runtime::Harness;

    #[test]
    fn writes_each_format_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let id: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let t = table_from_columns(vec![("id", id)]).unwrap();
        for (name, expect) in
            [("o.parquet", None), ("o.jsonl", Some("{\"id\":\"a\"}\n{\"id\":\"b\"}\n")), ("o.csv", Some("id\na\nb\n"))]
        {
            let out = Harness::new(Arc::new(Export))
                .base_dir(dir.path())
                .param("path", name)
                .input("table", t.clone())
                .run()
                .unwrap();
            assert_eq!(out.table("receipt").unwrap().num_rows(), 1);
            let written = std::fs::read(dir.path().join(name)).unwrap();
            if let Some(e) = expect {
                assert_eq!(String::from_utf8(written).unwrap(), e);
            } else {
                assert_eq!(Table::read_parquet(&dir.path().join(name)).unwrap().num_rows(), 2);
            }
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }
}
