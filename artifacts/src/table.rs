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
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, compute_leaves};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Type as PhysicalType, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::SchemaDescriptor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};

/// Rows per batch handed to the Parquet writer; fixed so that bytes do not depend on how
/// the producer batched its rows.
pub const CANONICAL_BATCH_ROWS: usize = 8192;
/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// In-memory bytes of the row groups encoded at once: enough for every row group of a
/// typical table, bounded for a huge one.
const WRITE_WINDOW_BYTES: usize = 512 << 20;

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
        read_selected(path, columns, None)
    }

    /// Reads only the given rows (row numbers in the file, ascending, each once) of a
    /// Parquet file, and only the named columns if given. Pages holding none of the rows
    /// are skipped (the file's page index says where they are).
    pub fn read_parquet_rows(path: &Path, columns: Option<&[&str]>, rows: &[usize]) -> Result<Table, TableError> {
        read_selected(path, columns, Some(rows))
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

    /// Only the given rows (ascending, each once), in one batch: the in-memory counterpart
    /// of [`Table::read_parquet_rows`].
    pub fn take_rows(&self, rows: &[usize]) -> Result<Table, TableError> {
        check_rows(rows, self.num_rows())?;
        let indices = arrow::array::UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
        let batch = arrow::compute::take_record_batch(&self.concat()?, &indices)?;
        Ok(Table::new(self.schema.clone(), vec![batch]))
    }

    /// Reads only the schema of a Parquet file.
    pub fn read_parquet_schema(path: &Path) -> Result<SchemaRef, TableError> {
        let file = File::open(path)?;
        Ok(ParquetRecordBatchReaderBuilder::try_new(file)?.schema().clone())
    }

    /// Writes the canonical Parquet encoding to `w`; returns the writer, the digest of the
    /// bytes and their count. The column chunks are encoded in parallel (on the rayon
    /// pool); the bytes are those `ArrowWriter` writes serially (tested).
    pub fn write_parquet<W: Write + Send>(&self, w: W) -> Result<(W, Digest, u64), TableError> {
        self.write_parquet_windowed(w, WRITE_WINDOW_BYTES)
    }

    /// [`Table::write_parquet`], encoding the row groups that fit in `window` bytes of
    /// rows at once.
    fn write_parquet_windowed<W: Write + Send>(&self, w: W, window: usize) -> Result<(W, Digest, u64), TableError> {
        let parquet_schema = parquet::arrow::ArrowSchemaConverter::new().convert(&self.schema)?;
        let props = writer_properties(&parquet_schema)?;
        let writer = ArrowWriter::try_new(HashingWriter::new(w), self.schema.clone(), Some(props))?;
        // The Arrow writer adds the schema (and its metadata) to the footer; its lower-level
        // parts then encode each column chunk on its own. Every chunk of several row groups
        // is a task (no barrier after each row group, so that one slow column does not
        // idle the other threads). A task joins its column's parts of each canonical batch
        // itself: the copy is made in parallel, and only one batch of one column is alive
        // at a time, instead of a copy of the whole table.
        let (mut file, columns) = writer.into_serialized_writer()?;
        // Leaf columns (and so column writers) per field: a nested field has several.
        let mut leaves_per_field = vec![0; self.schema.fields().len()];
        for leaf in 0..parquet_schema.num_columns() {
            leaves_per_field[parquet_schema.get_column_root_idx(leaf)] += 1;
        }
        let batches: Vec<Vec<RecordBatch>> = Rechunk::new(self, CANONICAL_BATCH_ROWS).collect();
        let groups: Vec<&[Vec<RecordBatch>]> = batches.chunks(ROW_GROUP_ROWS / CANONICAL_BATCH_ROWS).collect();
        let mut next_group = 0;
        while next_group < groups.len() {
            let mut tasks: Vec<ChunkTask<'_>> = Vec::new();
            let mut window_bytes = 0;
            while next_group < groups.len() && window_bytes < window {
                let group = groups[next_group];
                window_bytes += group.iter().flatten().map(slice_bytes).sum::<usize>();
                let mut writers = columns.create_column_writers(next_group)?.into_iter();
                for (field, &n) in leaves_per_field.iter().enumerate() {
                    tasks.push(ChunkTask {
                        at: (next_group, field),
                        writers: writers.by_ref().take(n).collect(),
                        group,
                    });
                }
                next_group += 1;
            }
            // Collected in the tasks' order: the row groups, and in each its fields.
            let chunks: Vec<((usize, usize), Vec<ArrowColumnChunk>)> = tasks
                .into_par_iter()
                .map(|ChunkTask { at, mut writers, group }| {
                    let field = self.schema.field(at.1);
                    for parts in group {
                        let column = match parts.as_slice() {
                            [one] => one.column(at.1).clone(),
                            _ => arrow::compute::concat(
                                &parts.iter().map(|p| p.column(at.1).as_ref()).collect::<Vec<_>>(),
                            )?,
                        };
                        for (writer, leaf) in writers.iter_mut().zip(compute_leaves(field, &column)?) {
                            writer.write(&leaf)?;
                        }
                    }
                    let chunks = writers.into_iter().map(|w| w.close()).collect::<Result<_, _>>()?;
                    Ok::<_, TableError>((at, chunks))
                })
                .collect::<Result<_, _>>()?;
            let mut chunks = chunks.into_iter().peekable();
            while let Some(&((group, _), _)) = chunks.peek() {
                let mut group_writer = file.next_row_group()?;
                while let Some((_, field_chunks)) = chunks.next_if(|c| c.0.0 == group) {
                    for chunk in field_chunks {
                        chunk.append_to_row_group(&mut group_writer)?;
                    }
                }
                group_writer.close()?;
            }
        }
        let hashing = file.into_inner()?;
        Ok(hashing.finish())
    }

    /// Digest of the canonical encoding, without keeping the bytes.
    pub fn digest(&self) -> Result<Digest, TableError> {
        let (_, d, _) = self.write_parquet(std::io::sink())?;
        Ok(d)
    }
}

/// The writer properties of the canonical encoding, fixed up to the schema. Chosen for a
/// fast write, which is most of a short rerun: zstd level 1 (on extract's outputs level 3
/// took a quarter longer for files 3% smaller), and statistics only for fixed-width
/// columns. Min/max of strings compares every value (a seventh of the encoding time), and
/// string columns here are mostly ids and text, whose min/max ranges prune nothing.
fn writer_properties(parquet_schema: &SchemaDescriptor) -> Result<WriterProperties, TableError> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::None);
    for column in parquet_schema.columns() {
        if !matches!(column.physical_type(), PhysicalType::BYTE_ARRAY | PhysicalType::FIXED_LEN_BYTE_ARRAY) {
            props = props.set_column_statistics_enabled(column.path().clone(), EnabledStatistics::Chunk);
        }
    }
    Ok(props.build())
}

/// Reads some columns (all if `None`) and some rows (all if `None`) of a Parquet file,
/// each column on its own on the rayon pool: the batches of every column have the same
/// row boundaries (same batch size, same selection), so they are zipped back together.
fn read_selected(path: &Path, columns: Option<&[&str]>, rows: Option<&[usize]>) -> Result<Table, TableError> {
    let options = ArrowReaderOptions::new()
        .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::from(rows.is_some()));
    let meta = ArrowReaderMetadata::load(&File::open(path)?, options)?;
    // The metadata's schema keeps the schema metadata (operators record state there); the
    // reader's batches do not, so they get it back.
    let full = meta.schema().clone();
    let roots: Vec<usize> = (0..full.fields().len())
        .filter(|&i| columns.is_none_or(|c| c.contains(&full.field(i).name().as_str())))
        .collect();
    let schema = Arc::new(full.project(&roots)?);
    let total = meta.metadata().file_metadata().num_rows() as usize;
    let selection = match rows {
        Some(rows) => {
            check_rows(rows, total)?;
            Some(row_ranges(rows))
        }
        None => None,
    };
    let read = |roots: &[usize]| -> Result<Vec<RecordBatch>, TableError> {
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(File::open(path)?, meta.clone())
            .with_batch_size(CANONICAL_BATCH_ROWS)
            .with_projection(ProjectionMask::roots(meta.parquet_schema(), roots.iter().copied()));
        if let Some(ranges) = &selection {
            builder = builder.with_row_selection(RowSelection::from_consecutive_ranges(ranges.iter().cloned(), total));
        }
        Ok(builder.build()?.collect::<Result<Vec<_>, _>>()?)
    };
    if roots.len() < 2 {
        let batches = read(&roots)?.into_iter().map(|b| b.with_schema(schema.clone())).collect::<Result<_, _>>()?;
        return Ok(Table { schema, batches });
    }
    // Each column from its own file handle: clones of one handle would share its offset.
    let per_column: Vec<Vec<RecordBatch>> = roots.par_iter().map(|&i| read(&[i])).collect::<Result<_, TableError>>()?;
    let n = per_column[0].len();
    if per_column.iter().any(|c| c.len() != n) {
        // `try_new` below checks the lengths within a batch; this, the number of batches.
        return Err(
            arrow::error::ArrowError::ComputeError("columns read with different batch boundaries".into()).into()
        );
    }
    let batches = (0..n)
        .map(|j| RecordBatch::try_new(schema.clone(), per_column.iter().map(|c| c[j].column(0).clone()).collect()))
        .collect::<Result<_, _>>()?;
    Ok(Table { schema, batches })
}

/// Row numbers to read must be ascending, distinct and below the row count.
fn check_rows(rows: &[usize], total: usize) -> Result<(), TableError> {
    if !rows.windows(2).all(|w| w[0] < w[1]) || rows.last().is_some_and(|&r| r >= total) {
        return Err(arrow::error::ArrowError::InvalidArgumentError(format!(
            "rows to read must be ascending, distinct and below {total}"
        ))
        .into());
    }
    Ok(())
}

/// Ascending distinct row numbers as ranges of consecutive rows.
fn row_ranges(rows: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for &r in rows {
        match ranges.last_mut() {
            Some(last) if last.end == r => last.end += 1,
            _ => ranges.push(r..r + 1),
        }
    }
    ranges
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
    /// The slices (no copy) of the table's batches that make the next batch.
    type Item = Vec<RecordBatch>;

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
        (!parts.is_empty()).then_some(parts)
    }
}

/// One field's column chunk of one row group, to encode.
struct ChunkTask<'a> {
    /// (row group, field).
    at: (usize, usize),
    /// The field's column writers (one per leaf column).
    writers: Vec<ArrowColumnWriter>,
    /// The row group's canonical batches, each as parts of the table's batches.
    group: &'a [Vec<RecordBatch>],
}

/// Bytes of the rows of a batch (of a slice: only its part of the buffers).
fn slice_bytes(batch: &RecordBatch) -> usize {
    // Types whose slice size Arrow cannot tell count their whole buffers.
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum()
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
        // No column: only the schema's metadata (operators check their state so).
        let none = Table::read_parquet_columns(&path, Some(&[])).unwrap();
        assert!(none.schema.fields().is_empty());
        assert_eq!(none.schema.metadata(), &meta);
    }

    /// A table of several row groups with a nested (list) column and nulls.
    fn nested(n: usize) -> Table {
        use arrow::array::{ListBuilder, StringBuilder};
        let mut lists = ListBuilder::new(StringBuilder::new());
        for i in 0..n {
            if i % 7 == 0 {
                lists.append_null();
                continue;
            }
            for j in 0..i % 4 {
                lists.values().append_value(format!("v{}", i * j));
            }
            lists.append(true);
        }
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("r{i}"))));
        let vals: ArrayRef = Arc::new(Int64Array::from_iter((0..n as i64).map(|i| (i % 5 != 0).then_some(i))));
        // A struct: one field, two leaf columns.
        let pair: ArrayRef = Arc::new(arrow::array::StructArray::from(vec![
            (
                Arc::new(arrow::datatypes::Field::new("a", arrow::datatypes::DataType::Utf8, false)),
                Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("a{}", i % 13)))) as ArrayRef,
            ),
            (
                Arc::new(arrow::datatypes::Field::new("b", arrow::datatypes::DataType::Int64, false)),
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 3))) as ArrayRef,
            ),
        ]));
        table_from_columns(vec![("id", ids), ("v", vals), ("list", Arc::new(lists.finish())), ("pair", pair)]).unwrap()
    }

    #[test]
    fn parallel_encoding_writes_the_serial_writers_bytes() {
        for n in [0, 1, 9_000, ROW_GROUP_ROWS + 5_000] {
            let t = nested(n);
            let props = writer_properties(&parquet::arrow::ArrowSchemaConverter::new().convert(&t.schema).unwrap());
            let mut serial = ArrowWriter::try_new(Vec::new(), t.schema.clone(), Some(props.unwrap())).unwrap();
            for parts in Rechunk::new(&t, CANONICAL_BATCH_ROWS) {
                serial.write(&concat_batches(&t.schema, &parts).unwrap()).unwrap();
            }
            let serial = serial.into_inner().unwrap();
            // The same rows in uneven batches: canonical batches join parts of several.
            let whole = t.concat().unwrap();
            let uneven = Table::new(
                t.schema.clone(),
                (0..n).step_by(3_000).map(|at| whole.slice(at, 3_000.min(n - at))).collect(),
            );
            // All row groups at once, and one at a time.
            for (t, window) in [(&t, WRITE_WINDOW_BYTES), (&t, 1), (&uneven, WRITE_WINDOW_BYTES), (&uneven, 1)] {
                let (parallel, digest, bytes) = t.write_parquet_windowed(Vec::new(), window).unwrap();
                assert_eq!(parallel, serial, "{n} rows in {} batches, window {window}", t.batches.len());
                assert_eq!(bytes as usize, serial.len());
                assert_eq!(digest, Digest::of(&serial));
            }
        }
    }

    #[test]
    fn canonical_encoding_has_numeric_statistics_and_the_offset_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let (f, _, _) = nested(20_000).write_parquet(File::create(&path).unwrap()).unwrap();
        drop(f);
        let options =
            ArrowReaderOptions::new().with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
        let meta = ArrowReaderMetadata::load(&File::open(&path).unwrap(), options).unwrap();
        let group = meta.metadata().row_group(0);
        let stats = |name: &str| {
            let c = group.columns().iter().find(|c| c.column_path().string() == name).unwrap();
            c.statistics().cloned()
        };
        // Fixed-width columns keep row-group min/max (for pruning); strings do not.
        assert!(matches!(stats("v"), Some(parquet::file::statistics::Statistics::Int64(s)) if s.min_opt() == Some(&1)));
        assert!(stats("id").is_none_or(|s| s.min_bytes_opt().is_none()));
        // Row selections skip pages through the offset index.
        let offsets = meta.metadata().offset_index().expect("an offset index");
        assert!(offsets[0].iter().all(|c| !c.page_locations().is_empty()));
    }

    #[test]
    fn reads_some_rows_and_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let t = nested(ROW_GROUP_ROWS + 20_000);
        let (f, _, _) = t.write_parquet(File::create(&path).unwrap()).unwrap();
        drop(f);
        let whole = t.concat().unwrap();
        // Rows in both row groups, runs and single rows, the first and the last.
        let rows: Vec<usize> =
            [0, 1, 2, 500, 8_191, 8_192, 70_000, ROW_GROUP_ROWS - 1, ROW_GROUP_ROWS, ROW_GROUP_ROWS + 19_999].to_vec();
        let indices = arrow::array::UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
        let want = arrow::compute::take_record_batch(&whole, &indices).unwrap();
        let got = Table::read_parquet_rows(&path, None, &rows).unwrap().concat().unwrap();
        assert_eq!(got, want);
        assert_eq!(t.take_rows(&rows).unwrap().concat().unwrap(), want);
        assert!(t.take_rows(&[5, 3]).is_err());
        let got = Table::read_parquet_rows(&path, Some(&["list", "id"]), &rows).unwrap().concat().unwrap();
        assert_eq!(got, want.project(&[0, 2]).unwrap());
        assert_eq!(Table::read_parquet_rows(&path, None, &[]).unwrap().num_rows(), 0);
        // Rows out of order or out of range are an error, not a wrong answer.
        assert!(Table::read_parquet_rows(&path, None, &[5, 3]).is_err());
        assert!(Table::read_parquet_rows(&path, None, &[t.num_rows()]).is_err());
        // All columns, read in parallel, give the same table.
        assert_eq!(Table::read_parquet(&path).unwrap().concat().unwrap(), whole);
    }
}
