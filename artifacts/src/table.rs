//! In-memory tables (Arrow) and their canonical Parquet encoding.
//!
//! A table's digest is the BLAKE3 of its Parquet bytes as written here. The bytes are made
//! deterministic by re-chunking the rows into fixed-size batches before they reach the
//! Parquet writer, with fixed writer properties: the same logical rows (same schema, same
//! values, same order) give the same bytes however the producer happened to batch them.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};

/// Rows per batch handed to the Parquet writer; fixed so that bytes do not depend on how
/// the producer batched its rows.
pub const CANONICAL_BATCH_ROWS: usize = 8192;
/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Errors reading or writing tables.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// An Arrow error (schema mismatch between batches, bad cast, ...).
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// A Parquet encoding or decoding error.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A table: a schema and the batches holding its rows, in order.
#[derive(Clone, Debug)]
pub struct Table {
    /// The schema every batch has.
    pub schema: SchemaRef,
    /// The rows, in order.
    pub batches: Vec<RecordBatch>,
}

impl Table {
    /// A table from batches that share `schema`.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        Table { schema, batches }
    }

    /// A table holding one batch.
    pub fn from_batch(batch: RecordBatch) -> Self {
        Table { schema: batch.schema(), batches: vec![batch] }
    }

    /// An empty table with this schema.
    pub fn empty(schema: SchemaRef) -> Self {
        Table { schema, batches: Vec::new() }
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// All rows in one batch.
    pub fn concat(&self) -> Result<RecordBatch, TableError> {
        Ok(concat_batches(&self.schema, &self.batches)?)
    }

    /// Column names in order.
    pub fn column_names(&self) -> Vec<String> {
        self.schema.fields().iter().map(|f| f.name().clone()).collect()
    }

    /// A short description of the schema, for manifests and messages.
    pub fn schema_summary(&self) -> SchemaSummary {
        SchemaSummary::of(&self.schema)
    }

    /// Reads a Parquet file.
    pub fn read_parquet(path: &Path) -> Result<Table, TableError> {
        Self::read_parquet_columns(path, None)
    }

    /// Reads a Parquet file, only the named columns (those it has, in its order) if given:
    /// the others are not even decompressed.
    pub fn read_parquet_columns(path: &Path, columns: Option<&[&str]>) -> Result<Table, TableError> {
        let file = File::open(path)?;
        let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(CANONICAL_BATCH_ROWS);
        // The builder's schema keeps the schema metadata (operators record state there);
        // the reader's batches do not, so they get it back.
        let mut schema = builder.schema().clone();
        if let Some(columns) = columns {
            // Arrow's top-level fields are the Parquet schema's roots, in order.
            let roots: Vec<usize> =
                (0..schema.fields().len()).filter(|&i| columns.contains(&schema.field(i).name().as_str())).collect();
            let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
            builder = builder.with_projection(mask);
            schema = Arc::new(schema.project(&roots)?);
        }
        let batches =
            builder.build()?.map(|b| b.and_then(|b| b.with_schema(schema.clone()))).collect::<Result<Vec<_>, _>>()?;
        Ok(Table { schema, batches })
    }

    /// The table with only the named columns (those it has, in its order); no data is
    /// copied.
    pub fn project(&self, columns: &[&str]) -> Result<Table, TableError> {
        let keep: Vec<usize> = (0..self.schema.fields().len())
            .filter(|&i| columns.contains(&self.schema.field(i).name().as_str()))
            .collect();
        let batches = self.batches.iter().map(|b| b.project(&keep)).collect::<Result<Vec<_>, _>>()?;
        Ok(Table { schema: Arc::new(self.schema.project(&keep)?), batches })
    }

    /// Reads only the schema of a Parquet file.
    pub fn read_parquet_schema(path: &Path) -> Result<SchemaRef, TableError> {
        let file = File::open(path)?;
        Ok(ParquetRecordBatchReaderBuilder::try_new(file)?.schema().clone())
    }

    /// Writes the canonical Parquet encoding to `w`; returns the writer, the digest of the
    /// bytes and their count.
    pub fn write_parquet<W: Write + Send>(&self, w: W) -> Result<(W, Digest, u64), TableError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let mut writer = ArrowWriter::try_new(HashingWriter::new(w), self.schema.clone(), Some(props))?;
        for batch in Rechunk::new(self, CANONICAL_BATCH_ROWS) {
            writer.write(&batch?)?;
        }
        let hashing = writer.into_inner()?;
        Ok(hashing.finish())
    }

    /// Digest of the canonical encoding, without keeping the bytes.
    pub fn digest(&self) -> Result<Digest, TableError> {
        let (_, d, _) = self.write_parquet(std::io::sink())?;
        Ok(d)
    }
}

/// Re-slices a table's batches into batches of exactly `rows` rows (the last one shorter).
struct Rechunk<'a> {
    table: &'a Table,
    rows: usize,
    batch: usize,
    offset: usize,
}

impl<'a> Rechunk<'a> {
    fn new(table: &'a Table, rows: usize) -> Self {
        Rechunk { table, rows, batch: 0, offset: 0 }
    }
}

impl Iterator for Rechunk<'_> {
    type Item = Result<RecordBatch, TableError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut parts = Vec::new();
        let mut need = self.rows;
        while need > 0 && self.batch < self.table.batches.len() {
            let b = &self.table.batches[self.batch];
            let available = b.num_rows() - self.offset;
            let take = available.min(need);
            if take > 0 {
                parts.push(b.slice(self.offset, take));
            }
            need -= take;
            self.offset += take;
            if self.offset == b.num_rows() {
                self.batch += 1;
                self.offset = 0;
            }
        }
        match parts.len() {
            0 => None,
            1 => parts.pop().map(Ok),
            _ => Some(concat_batches(&self.table.schema, &parts).map_err(TableError::from)),
        }
    }
}

/// One column of a [`SchemaSummary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSummary {
    /// Column name.
    pub name: String,
    /// Arrow data type, as Arrow displays it.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether nulls are allowed.
    pub nullable: bool,
}

/// A schema as text, for manifests and messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SchemaSummary(pub Vec<ColumnSummary>);

impl SchemaSummary {
    /// Summary of an Arrow schema.
    pub fn of(schema: &Schema) -> Self {
        SchemaSummary(
            schema
                .fields()
                .iter()
                .map(|f| ColumnSummary {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                })
                .collect(),
        )
    }
}

/// Convenience: a table from a single batch built from named columns.
pub fn table_from_columns(columns: Vec<(&str, arrow::array::ArrayRef)>) -> Result<Table, TableError> {
    let batch = RecordBatch::try_from_iter(columns.into_iter().map(|(n, a)| (n.to_string(), a)))?;
    Ok(Table::from_batch(batch))
}

/// The first `limit` rows of a table as JSON objects (for messages, samples and diffs).
pub fn to_json_rows(table: &Table, limit: usize) -> Result<Vec<serde_json::Value>, TableError> {
    let mut out = Vec::new();
    for batch in &table.batches {
        if out.len() >= limit {
            break;
        }
        let take = (limit - out.len()).min(batch.num_rows());
        let mut buf = Vec::new();
        {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
            w.write(&batch.slice(0, take))?;
            w.finish()?;
        }
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))?);
        }
    }
    Ok(out)
}

/// A table from JSON objects, with column types inferred (for inline test data).
pub fn from_json_rows(rows: &[serde_json::Value]) -> Result<Table, TableError> {
    if rows.is_empty() {
        return Ok(Table::empty(empty_schema()));
    }
    let schema = Arc::new(arrow::json::reader::infer_json_schema_from_iterator(rows.iter().map(Ok))?);
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .with_batch_size(rows.len())
        .build_decoder()?;
    decoder.serialize(rows)?;
    let batches = decoder.flush()?.into_iter().collect();
    Ok(Table::new(schema, batches))
}

/// An empty schema (no columns).
pub fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};

    fn sample(n: i64) -> Table {
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("r{i}"))));
        let vals: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n));
        table_from_columns(vec![("id", ids), ("v", vals)]).unwrap()
    }

    #[test]
    fn digest_ignores_batching() {
        let t = sample(20_000);
        let whole = t.concat().unwrap();
        let split =
            Table::new(t.schema.clone(), vec![whole.slice(0, 7), whole.slice(7, 10_000), whole.slice(10_007, 9_993)]);
        assert_eq!(t.digest().unwrap(), split.digest().unwrap());
        assert_ne!(t.digest().unwrap(), sample(19_999).digest().unwrap());
    }

    #[test]
    fn parquet_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let t = sample(100);
        // Schema metadata survives the round trip (operators keep their state there).
        let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
        let schema = Arc::new(t.schema.as_ref().clone().with_metadata(meta.clone()));
        let t = Table::new(
            schema.clone(),
            t.batches.iter().map(|b| b.clone().with_schema(schema.clone()).unwrap()).collect(),
        );
        let (f, d, _) = t.write_parquet(File::create(&path).unwrap()).unwrap();
        drop(f);
        assert_eq!(crate::digest::digest_file(&path).unwrap(), d);
        let back = Table::read_parquet(&path).unwrap();
        assert_eq!(back.num_rows(), 100);
        assert_eq!(back.schema.metadata(), &meta);
        assert_eq!(back.batches[0].schema().metadata(), &meta);
        assert_eq!(back.digest().unwrap(), d);
        // Only some columns (names it lacks are ignored); the same as projecting in memory.
        let v = Table::read_parquet_columns(&path, Some(&["v", "nope"])).unwrap();
        assert_eq!(v.column_names(), vec!["v"]);
        assert_eq!(v.schema.metadata(), &meta);
        assert_eq!(v.digest().unwrap(), back.project(&["v"]).unwrap().digest().unwrap());
        assert_ne!(v.digest().unwrap(), back.project(&["id"]).unwrap().digest().unwrap());
    }
}
