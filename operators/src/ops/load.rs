//! `load`: read a JSONL, JSON, CSV or Parquet file (optionally gzipped) into a table.
//!
//! Every row gets a string `id`: from a column the pipeline names, from an `id` column if
//! there is one, or derived from the row's content. Rows that cannot be read (malformed
//! JSON, wrong field count, missing or duplicate id) go to the `rejects` output with the
//! line and the reason; nothing is dropped silently.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use anyhow::{Context, anyhow, bail};
use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use fleming_artifacts::Table;
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamSpec, ParamType, PortSpec,
};
use serde_json::{Map, Value, json};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "load",
    version: 1,
    summary: "Read a JSONL, JSON, CSV or Parquet file into a table",
    doc: "The file's content digest (not its path) is part of the stage key, so editing the file \
          reruns the stage and moving it does not. JSON may be an array of objects or an object of \
          objects keyed by id. Files ending in `.gz` are decompressed.",
    params: vec![
        ParamSpec::required("path", ParamType::InputPath, "File to read, relative to the pipeline file"),
        ParamSpec::with_default(
            "format",
            ParamType::Enum(vec!["auto", "jsonl", "json", "csv", "tsv", "parquet"]),
            json!("auto"),
            "File format; `auto` picks it from the extension",
        ),
        ParamSpec::with_default(
            "id",
            ParamType::Str,
            json!("auto"),
            "Column holding each row's id (cast to string); `auto`: the `id` column if any, else an id derived from the row's content",
        ),
        ParamSpec::with_default(
            "header",
            ParamType::Bool,
            json!(true),
            "CSV/TSV: the first line names the columns (else c0, c1, ...)",
        ),
    ],
    inputs: InputPorts::Fixed(vec![]),
    outputs: vec![
        PortSpec::table("table", "the rows read, `id` first"),
        PortSpec::table_with("rejects", rejects_columns(), "rows that could not be read, with the reason"),
    ],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::load.to_string(),
});

fn rejects_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("line", DataType::Int64, false),
        ColumnSpec::new("reason", DataType::Utf8, false),
        ColumnSpec::new("raw", DataType::Utf8, false),
    ]
}

/// Longest raw text kept for a rejected row.
const MAX_RAW: usize = 4096;

/// The `load` operator.
#[derive(Default)]
pub struct Load;

impl Load {
    /// The operator.
    pub fn new() -> Self {
        Load
    }
}

/// A row that could not be read.
struct Reject {
    line: i64,
    reason: String,
    raw: String,
}

/// `s` cut to at most `max` bytes, on a character boundary, marked with `…` when cut
/// (raw records in rejects rows, quotes in messages).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Format from the `format` param or the file name.
fn detect_format(param: &str, path: &Path) -> anyhow::Result<String> {
    if param != "auto" {
        return Ok(param.to_string());
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let ext = name.rsplit('.').next().unwrap_or("");
    Ok(match ext {
        "jsonl" | "ndjson" => "jsonl",
        "json" => "json",
        "csv" => "csv",
        "tsv" | "tab" => "tsv",
        "parquet" | "pq" => "parquet",
        _ => bail!("cannot tell the format of {} from its extension; set `format:`", path.display()),
    }
    .to_string())
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(file)
            .read_to_end(&mut bytes)
            .with_context(|| format!("decompressing {}", path.display()))?;
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes)?;
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow!("{} is not UTF-8 text (bad byte at offset {})", path.display(), e.utf8_error().valid_up_to())
    })
}

/// JSON records -> table, rejecting records that do not fit the inferred schema.
fn json_rows_to_table(
    rows: Vec<(i64, Map<String, Value>)>,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<(Table, Vec<i64>)> {
    if rows.is_empty() {
        return Ok((Table::empty(Arc::new(Schema::empty())), Vec::new()));
    }
    let mut rows = rows;
    harmonize(&mut rows);
    let values: Vec<Value> = rows.iter().map(|(_, m)| Value::Object(m.clone())).collect();
    let schema = arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
        .map_err(|e| anyhow!("cannot infer a schema for the records: {e}"))?;
    let schema = Arc::new(schema);
    let decode = |vals: &[Value]| -> anyhow::Result<RecordBatch> {
        let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
            .with_coerce_primitive(true)
            .with_batch_size(vals.len().max(1))
            .build_decoder()?;
        decoder.serialize(vals)?;
        decoder.flush()?.ok_or_else(|| anyhow!("no rows decoded"))
    };
    let mut lines: Vec<i64> = rows.iter().map(|(l, _)| *l).collect();
    let mut batches = Vec::new();
    for (chunk_i, chunk) in values.chunks(8192).enumerate() {
        match decode(chunk) {
            Ok(b) => batches.push(b),
            Err(_) => {
                // Find the records that do not fit, one by one.
                let mut good = Vec::new();
                for (j, v) in chunk.iter().enumerate() {
                    let idx = chunk_i * 8192 + j;
                    match decode(std::slice::from_ref(v)) {
                        Ok(_) => good.push(v.clone()),
                        Err(e) => {
                            rejects.push(Reject {
                                line: rows[idx].0,
                                reason: format!("does not fit the column types: {e}"),
                                raw: truncate(&v.to_string(), MAX_RAW),
                            });
                            lines[idx] = -1;
                        }
                    }
                }
                if !good.is_empty() {
                    batches.push(decode(&good)?);
                }
            }
        }
    }
    lines.retain(|l| *l >= 0);
    Ok((Table::new(schema, batches), lines))
}

/// Where a field holds objects in some records and scalars or lists in others, no Arrow
/// type fits all; such fields are kept as JSON text rather than failing the load.
fn harmonize(rows: &mut [(i64, Map<String, Value>)]) {
    let shape = |v: &Value| match v {
        Value::Null => 0u8,
        Value::Object(_) => 1,
        Value::Array(_) => 2,
        _ => 4,
    };
    let mut shapes: HashMap<String, u8> = HashMap::new();
    for (_, m) in rows.iter() {
        for (k, v) in m {
            *shapes.entry(k.clone()).or_insert(0) |= shape(v);
        }
    }
    let mixed: Vec<&String> = shapes.iter().filter(|(_, s)| s.count_ones() > 1).map(|(k, _)| k).collect();
    if mixed.is_empty() {
        return;
    }
    for (_, m) in rows.iter_mut() {
        for k in &mixed {
            if let Some(v) = m.get_mut(k.as_str())
                && !v.is_null()
            {
                let text = match &*v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                *v = Value::String(text);
            }
        }
    }
}

fn read_jsonl(text: &str, rejects: &mut Vec<Reject>) -> anyhow::Result<(Table, Vec<i64>)> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as i64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => rows.push((n, m)),
            Ok(other) => rejects.push(Reject {
                line: n,
                reason: format!("not a JSON object (found {})", kind(&other)),
                raw: truncate(line, MAX_RAW),
            }),
            Err(e) => {
                rejects.push(Reject { line: n, reason: format!("malformed JSON: {e}"), raw: truncate(line, MAX_RAW) })
            }
        }
    }
    json_rows_to_table(rows, rejects)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_json(text: &str, rejects: &mut Vec<Reject>) -> anyhow::Result<(Table, Vec<i64>)> {
    let doc: Value = serde_json::from_str(text).map_err(|e| anyhow!("malformed JSON: {e}"))?;
    let mut rows = Vec::new();
    match doc {
        Value::Array(items) => {
            for (i, it) in items.into_iter().enumerate() {
                match it {
                    Value::Object(m) => rows.push((i as i64 + 1, m)),
                    other => rejects.push(Reject {
                        line: i as i64 + 1,
                        reason: format!("record is not an object (found {})", kind(&other)),
                        raw: truncate(&other.to_string(), MAX_RAW),
                    }),
                }
            }
        }
        Value::Object(m) if m.values().all(|v| v.is_object()) && !m.is_empty() => {
            // An object of records keyed by id (e.g. PubMedQA's PMIDs).
            for (i, (k, v)) in m.into_iter().enumerate() {
                if let Value::Object(mut rec) = v {
                    rec.entry("id").or_insert(Value::String(k));
                    rows.push((i as i64 + 1, rec));
                }
            }
        }
        Value::Object(m) => rows.push((1, m)),
        other => bail!("a JSON file must hold an array of objects or an object; found {}", kind(&other)),
    }
    json_rows_to_table(rows, rejects)
}

/// Column type inferred from CSV text.
#[derive(Clone, Copy, PartialEq)]
enum CsvType {
    Int,
    Float,
    Bool,
    Str,
}

fn read_csv(text: &str, delimiter: u8, header: bool, rejects: &mut Vec<Reject>) -> anyhow::Result<(Table, Vec<i64>)> {
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter).has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut records = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = match &rec {
            Ok(r) => r.position().map(|p| p.line() as i64).unwrap_or(i as i64 + 1),
            Err(e) => e.position().map(|p| p.line() as i64).unwrap_or(i as i64 + 1),
        };
        match rec {
            Ok(r) if i == 0 && header => {
                names = r.iter().map(|s| s.trim().to_string()).collect();
            }
            Ok(r) => {
                if names.is_empty() {
                    names = (0..r.len()).map(|j| format!("c{j}")).collect();
                }
                if r.len() != names.len() {
                    let raw = r.iter().collect::<Vec<_>>().join(&(delimiter as char).to_string());
                    rejects.push(Reject {
                        line,
                        reason: format!("expected {} fields, found {}", names.len(), r.len()),
                        raw: truncate(&raw, MAX_RAW),
                    });
                    continue;
                }
                records.push((line, r.iter().map(str::to_string).collect::<Vec<String>>()));
            }
            Err(e) => rejects.push(Reject { line, reason: format!("malformed CSV: {e}"), raw: String::new() }),
        }
    }
    // Unique, non-empty column names.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (j, n) in names.iter_mut().enumerate() {
        if n.is_empty() {
            *n = format!("c{j}");
        }
        let count = seen.entry(n.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            *n = format!("{n}_{count}");
        }
    }
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut fields = Vec::new();
    for (j, name) in names.iter().enumerate() {
        let cells: Vec<&str> = records.iter().map(|(_, r)| r[j].as_str()).collect();
        let non_empty = || cells.iter().filter(|c| !c.is_empty());
        let ty = if non_empty().count() == 0 {
            CsvType::Str
        } else if non_empty().all(|c| c.parse::<i64>().is_ok()) {
            CsvType::Int
        } else if non_empty().all(|c| c.parse::<f64>().is_ok()) {
            CsvType::Float
        } else if non_empty().all(|c| c.eq_ignore_ascii_case("true") || c.eq_ignore_ascii_case("false")) {
            CsvType::Bool
        } else {
            CsvType::Str
        };
        let (dt, arr): (DataType, ArrayRef) = match ty {
            CsvType::Int => {
                let mut b = Int64Builder::with_capacity(cells.len());
                cells.iter().for_each(|c| b.append_option(c.parse().ok()));
                (DataType::Int64, Arc::new(b.finish()))
            }
            CsvType::Float => {
                let mut b = Float64Builder::with_capacity(cells.len());
                cells.iter().for_each(|c| b.append_option(c.parse().ok()));
                (DataType::Float64, Arc::new(b.finish()))
            }
            CsvType::Bool => {
                let mut b = BooleanBuilder::with_capacity(cells.len());
                cells.iter().for_each(|c| {
                    b.append_option(if c.is_empty() { None } else { Some(c.eq_ignore_ascii_case("true")) })
                });
                (DataType::Boolean, Arc::new(b.finish()))
            }
            CsvType::Str => {
                let mut b = StringBuilder::new();
                cells.iter().for_each(|c| b.append_value(c));
                (DataType::Utf8, Arc::new(b.finish()))
            }
        };
        fields.push(Field::new(name, dt, true));
        columns.push(arr);
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let lines = records.iter().map(|(l, _)| *l).collect();
    if columns.is_empty() {
        return Ok((Table::empty(schema), lines));
    }
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((Table::new(schema, vec![batch]), lines))
}

/// Adds (or normalises) the `id` column, first; rejects rows without an id or with a
/// duplicate one.
fn with_ids(table: Table, lines: &[i64], id_param: &str, rejects: &mut Vec<Reject>) -> anyhow::Result<Table> {
    let batch = table.concat()?;
    let schema = batch.schema();
    let n = batch.num_rows();
    let source_col = match id_param {
        "auto" => schema.index_of("id").ok(),
        name => Some(schema.index_of(name).map_err(|_| {
            anyhow!("`id: {name}`: there is no column `{name}` (columns: {})", table.column_names().join(", "))
        })?),
    };
    if let (Some(i), true) = (source_col, id_param != "auto" && id_param != "id")
        && schema.index_of("id").is_ok()
    {
        let _ = i;
        bail!(
            "`id: {id_param}`: the table already has an `id` column; use `id: id`, or rename one of them with a `sql` stage"
        );
    }
    let ids: Vec<Option<String>> = match source_col {
        Some(i) => {
            let col = cast(batch.column(i), &DataType::Utf8)?;
            let col = col.as_any().downcast_ref::<StringArray>().ok_or_else(|| anyhow!("id column cast"))?;
            (0..n).map(|r| col.is_valid(r).then(|| col.value(r).to_string())).collect()
        }
        None => {
            if n == 0 || batch.num_columns() == 0 {
                vec![None; n]
            } else {
                let fields: Vec<SortField> =
                    schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
                let conv = RowConverter::new(fields).context("deriving ids from row content")?;
                let rows = conv.convert_columns(batch.columns()).context("deriving ids from row content")?;
                (0..n).map(|r| Some(blake3::hash(rows.row(r).as_ref()).to_hex()[..16].to_string())).collect()
            }
        }
    };
    let mut keep = Vec::with_capacity(n);
    let mut first_line: HashMap<&str, i64> = HashMap::new();
    for (r, id) in ids.iter().enumerate() {
        let line = lines.get(r).copied().unwrap_or(r as i64 + 1);
        match id {
            None if n > 0 && batch.num_columns() == 0 => keep.push(false),
            None => {
                rejects.push(Reject { line, reason: "missing id".into(), raw: String::new() });
                keep.push(false);
            }
            Some(id) => match first_line.get(id.as_str()) {
                Some(first) => {
                    let why = if source_col.is_some() {
                        format!("duplicate id `{id}` (first at line {first})")
                    } else {
                        format!("duplicate of line {first} (identical content)")
                    };
                    rejects.push(Reject { line, reason: why, raw: String::new() });
                    keep.push(false);
                }
                None => {
                    first_line.insert(id, line);
                    keep.push(true);
                }
            },
        }
    }
    let id_array: ArrayRef = Arc::new(StringArray::from(ids.iter().map(|s| s.as_deref()).collect::<Vec<_>>()));
    let mut fields = vec![Field::new("id", DataType::Utf8, false)];
    let mut columns = vec![id_array];
    for (i, f) in schema.fields().iter().enumerate() {
        if f.name() == "id" {
            continue;
        }
        fields.push(f.as_ref().clone());
        columns.push(batch.column(i).clone());
    }
    let out_schema = Arc::new(Schema::new(fields));
    let full = RecordBatch::try_new(out_schema.clone(), columns)?;
    let mask = arrow::array::BooleanArray::from(keep);
    let kept = filter_record_batch(&full, &mask)?;
    Ok(Table::new(out_schema, vec![kept]))
}

fn rejects_table(rejects: Vec<Reject>) -> anyhow::Result<Table> {
    let ids: Vec<String> = rejects.iter().map(|r| format!("line-{}", r.line)).collect();
    let schema = Arc::new(Schema::new(
        rejects_columns().into_iter().map(|c| Field::new(c.name, c.data_type, c.nullable)).collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Int64Array::from(rejects.iter().map(|r| r.line).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.raw.as_str()).collect::<Vec<_>>())),
        ],
    )?;
    Ok(Table::new(schema, vec![batch]))
}

impl Operator for Load {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let path = ctx.params.path("path")?;
        let format = detect_format(ctx.params.str("format")?, &path)?;
        let header = ctx.params.bool("header")?;
        ctx.progress.set_message(&format!("reading {}", path.display()));
        let mut rejects = Vec::new();
        let (table, lines) = match format.as_str() {
            "jsonl" => read_jsonl(&read_text(&path)?, &mut rejects)?,
            "json" => read_json(&read_text(&path)?, &mut rejects)?,
            "csv" => read_csv(&read_text(&path)?, b',', header, &mut rejects)?,
            "tsv" => read_csv(&read_text(&path)?, b'\t', header, &mut rejects)?,
            "parquet" => {
                let t = Table::read_parquet(&path).with_context(|| format!("reading {}", path.display()))?;
                let n = t.num_rows() as i64;
                (t, (1..=n).collect())
            }
            other => bail!("unknown format `{other}`"),
        };
        ctx.cancel.check()?;
        let table = with_ids(table, &lines, ctx.params.str("id")?, &mut rejects)?;
        rejects.sort_by_key(|r| r.line);
        ctx.metric("rows", table.num_rows() as u64);
        ctx.metric("rejected", rejects.len() as u64);
        ctx.progress.set_position(table.num_rows() as u64);
        Ok(Outputs::new().table("table", table).table("rejects", rejects_table(rejects)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleming_runtime::Harness;

    fn run(name: &str, content: &str, params: Value) -> anyhow::Result<fleming_runtime::harness::HarnessOutput> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(name), content)?;
        Harness::new(Arc::new(Load)).base_dir(dir.path()).param("path", name).params(params).run()
    }

    fn strings(t: &Table, col: &str) -> Vec<String> {
        let b = t.concat().unwrap();
        let c = cast(b.column_by_name(col).unwrap(), &DataType::Utf8).unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        (0..c.len()).map(|i| c.value(i).to_string()).collect()
    }

    #[test]
    fn jsonl_with_bad_lines_goes_to_rejects() {
        let out = run(
            "a.jsonl",
            "{\"id\": 1, \"q\": \"x\"}\n\n{bad\n[1]\n{\"id\": 2, \"q\": \"y\"}\n{\"id\": 1, \"q\": \"z\"}\n",
            json!({}),
        )
        .unwrap();
        let t = out.table("table").unwrap();
        assert_eq!(strings(t, "id"), vec!["1", "2"]);
        let r = out.table("rejects").unwrap();
        assert_eq!(strings(r, "line"), vec!["3", "4", "6"]);
        let reasons = strings(r, "reason");
        assert!(reasons[0].starts_with("malformed JSON"), "{reasons:?}");
        assert!(reasons[1].contains("not a JSON object"));
        assert_eq!(reasons[2], "duplicate id `1` (first at line 1)");
        assert_eq!(t.schema.field(0).name(), "id");
    }

    #[test]
    fn csv_types_ids_and_field_counts() {
        let out = run("a.csv", "name,age,score\nann,31,1.5\nbob,x\n\"c, d\",40,2\n", json!({})).unwrap();
        let t = out.table("table").unwrap();
        assert_eq!(t.num_rows(), 2);
        assert_eq!(t.schema.field_with_name("age").unwrap().data_type(), &DataType::Int64);
        assert_eq!(t.schema.field_with_name("score").unwrap().data_type(), &DataType::Float64);
        assert_eq!(strings(t, "name"), vec!["ann", "c, d"]);
        // Derived ids are stable and content-based.
        let again = run("b.csv", "name,age,score\n\"c, d\",40,2\nann,31,1.5\n", json!({})).unwrap();
        let mut a = strings(t, "id");
        let mut b = strings(again.table("table").unwrap(), "id");
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert_eq!(strings(out.table("rejects").unwrap(), "reason"), vec!["expected 3 fields, found 2"]);
    }

    #[test]
    fn json_object_of_records_and_named_id() {
        let out = run("p.json", r#"{"123": {"QUESTION": "q1"}, "456": {"QUESTION": "q2"}}"#, json!({})).unwrap();
        assert_eq!(strings(out.table("table").unwrap(), "id"), vec!["123", "456"]);
        let out = run("q.jsonl", "{\"qid\": 7, \"t\": 1}\n", json!({"id": "qid"})).unwrap();
        assert_eq!(strings(out.table("table").unwrap(), "id"), vec!["7"]);
        let err = run("q.jsonl", "{\"qid\": 7}\n", json!({"id": "nope"})).unwrap_err();
        assert!(err.to_string().contains("no column `nope`"), "{err}");
    }

    #[test]
    fn mixed_shapes_become_json_text() {
        let out = run("c.jsonl", "{\"id\": \"a\", \"n\": {\"x\": 1}}\n{\"id\": \"b\", \"n\": 5}\n", json!({})).unwrap();
        let t = out.table("table").unwrap();
        assert_eq!(t.schema.field_with_name("n").unwrap().data_type(), &DataType::Utf8);
        assert_eq!(strings(t, "n"), vec!["{\"x\":1}", "5"]);
        assert_eq!(out.table("rejects").unwrap().num_rows(), 0);
    }
}
