//! What an operator implementation is given: inputs, parameters, progress, the record
//! memo, the previous run of the same stage, a durable work directory, cancellation.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context as _, anyhow, bail};
use fleming_artifacts::{ArtifactRef, Digest, MemoLog, MemoStats, Table};
use serde_json::{Map, Value};

use crate::cancel::CancelToken;
use crate::keys::canonical_json;
use crate::params::Params;
use crate::progress::Progress;

/// One connected input.
#[derive(Clone, Debug)]
pub enum InputValue {
    /// A table in memory.
    Table(Table),
    /// A table in the store, read when first asked for: whole ([`Input::table`]) or only
    /// some of its columns or rows ([`Input::columns`], [`Input::rows`]), so that an
    /// incremental operator need not read a large input it only diffs.
    Stored(StoredTable),
    /// A model directory (read-only).
    Model(PathBuf),
}

/// A Parquet table in the store, read once, when first needed whole.
#[derive(Clone, Debug)]
pub struct StoredTable {
    path: PathBuf,
    whole: Arc<OnceLock<Table>>,
}

impl StoredTable {
    /// The table in this Parquet file (not read yet).
    pub fn new(path: PathBuf) -> Self {
        StoredTable { path, whole: Arc::default() }
    }

    fn whole(&self) -> anyhow::Result<&Table> {
        if let Some(t) = self.whole.get() {
            return Ok(t);
        }
        let t = Table::read_parquet(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        Ok(self.whole.get_or_init(|| t))
    }
}

/// An input with where it came from.
#[derive(Clone, Debug)]
pub struct Input {
    /// `stage.port` it came from (or a label in the harness).
    pub from: String,
    /// Content digest.
    pub digest: Digest,
    /// The data.
    pub value: InputValue,
}

impl Input {
    /// The table, or an error naming the port.
    pub fn table(&self) -> anyhow::Result<&Table> {
        match &self.value {
            InputValue::Table(t) => Ok(t),
            InputValue::Stored(s) => s.whole(),
            InputValue::Model(_) => bail!("input from {} is a model, not a table", self.from),
        }
    }

    /// Only the named columns of the table (those it has, in its order); a stored table not
    /// read yet is read only for them.
    pub fn columns(&self, columns: &[&str]) -> anyhow::Result<Table> {
        match &self.value {
            InputValue::Stored(s) if s.whole.get().is_none() => Table::read_parquet_columns(&s.path, Some(columns))
                .with_context(|| format!("reading {}", s.path.display())),
            _ => Ok(self.table()?.project(columns)?),
        }
    }

    /// Only the given rows (positions, ascending, each once) of the table, and only the
    /// named columns if given; a stored table not read yet is read only for them.
    pub fn rows(&self, columns: Option<&[&str]>, rows: &[usize]) -> anyhow::Result<Table> {
        if let InputValue::Stored(s) = &self.value
            && s.whole.get().is_none()
        {
            return Table::read_parquet_rows(&s.path, columns, rows)
                .with_context(|| format!("reading {}", s.path.display()));
        }
        let t = self.table()?;
        Ok(match columns {
            Some(c) => t.project(c)?.take_rows(rows)?,
            None => t.take_rows(rows)?,
        })
    }
}

#[derive(Clone)]
enum MemoBackend {
    Disk(MemoLog),
    Memory(Arc<Mutex<HashMap<Digest, Vec<u8>>>>),
}

/// The record memo as an operator sees it: keys are scoped to the operator and version;
/// the operator chooses which parameters affect a record's result. Clones share entries.
#[derive(Clone)]
pub struct RecordMemo {
    backend: MemoBackend,
    scope: Digest,
    stats: Arc<Mutex<MemoStats>>,
    /// Keys this stage read or wrote: what `fleming gc` keeps.
    used: Arc<Mutex<std::collections::HashSet<Digest>>>,
}

impl RecordMemo {
    /// A memo on disk, scoped to `op` at `version`.
    pub fn on_disk(log: MemoLog, op: &str, version: u32) -> Self {
        RecordMemo {
            backend: MemoBackend::Disk(log),
            scope: Self::scope_of(op, version),
            stats: Arc::default(),
            used: Arc::default(),
        }
    }

    /// A memo in memory (the harness).
    pub fn in_memory(op: &str, version: u32) -> Self {
        RecordMemo {
            backend: MemoBackend::Memory(Arc::default()),
            scope: Self::scope_of(op, version),
            stats: Arc::default(),
            used: Arc::default(),
        }
    }

    fn scope_of(op: &str, version: u32) -> Digest {
        Digest::of_parts("fleming-memo-scope-v1", [op.as_bytes(), &version.to_le_bytes()])
    }

    /// The key of one record's result: operator and version, the parameters that matter
    /// (canonical JSON), and the record's bytes (typically its canonical form).
    pub fn key(&self, params: &Value, record: &[u8]) -> Digest {
        let p = canonical_json(params);
        Digest::of_parts("fleming-memo-key-v1", [self.scope.0.as_slice(), p.as_bytes(), record])
    }

    /// Looks a result up.
    pub fn get(&self, key: &Digest) -> Option<Vec<u8>> {
        let v = match &self.backend {
            MemoBackend::Disk(log) => log.get(key),
            MemoBackend::Memory(map) => map.lock().ok().and_then(|m| m.get(key).cloned()),
        };
        if let Ok(mut s) = self.stats.lock() {
            if v.is_some() { s.hits += 1 } else { s.misses += 1 }
        }
        if v.is_some()
            && let Ok(mut u) = self.used.lock()
        {
            u.insert(*key);
        }
        v
    }

    /// Whether a result is recorded for `key`, without counting a hit or a miss (for
    /// planning which calls a run has to make; the run's own lookups are what count).
    pub fn contains(&self, key: &Digest) -> bool {
        match &self.backend {
            MemoBackend::Disk(log) => log.contains(key),
            MemoBackend::Memory(map) => map.lock().is_ok_and(|m| m.contains_key(key)),
        }
    }

    /// Records a result (durable within a second, or at [`RecordMemo::flush`]).
    pub fn put(&self, key: Digest, value: &[u8]) -> anyhow::Result<()> {
        match &self.backend {
            MemoBackend::Disk(log) => log.put(key, value).context("writing the record memo")?,
            MemoBackend::Memory(map) => {
                map.lock().map_err(|_| anyhow!("memo poisoned"))?.insert(key, value.to_vec());
            }
        }
        if let Ok(mut s) = self.stats.lock() {
            s.puts += 1;
        }
        if let Ok(mut u) = self.used.lock() {
            u.insert(key);
        }
        Ok(())
    }

    /// Looks up a JSON result.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &Digest) -> Option<T> {
        self.get(key).and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Records a JSON result.
    pub fn put_json<T: serde::Serialize>(&self, key: Digest, value: &T) -> anyhow::Result<()> {
        self.put(key, &serde_json::to_vec(value)?)
    }

    /// Makes every result recorded so far durable.
    pub fn flush(&self) -> anyhow::Result<()> {
        match &self.backend {
            MemoBackend::Disk(log) => log.flush().context("flushing the record memo"),
            MemoBackend::Memory(_) => Ok(()),
        }
    }

    /// The keys read or written through this handle (and its clones), sorted.
    pub fn used_keys(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.used.lock().map(|u| u.iter().copied().collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// Hits, misses and puts through this memo handle (and its clones).
    pub fn stats(&self) -> MemoStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

/// Reads a table from the store by digest, only the named columns if given (`None`: the
/// object is gone).
pub type TableReader = Arc<dyn Fn(&Digest, Option<&[&str]>) -> anyhow::Result<Option<Table>> + Send + Sync>;

/// The last successful run of the same stage (same pipeline and stage name), for
/// incremental operators: its parameters, input digests and outputs.
#[derive(Clone)]
pub struct PreviousRun {
    /// Its stage key.
    pub key: Digest,
    /// Its key-relevant parameters.
    pub params: Value,
    /// Its input digests by port.
    pub input_digests: BTreeMap<String, Vec<Digest>>,
    /// Its outputs by port.
    pub outputs: BTreeMap<String, ArtifactRef>,
    /// Reads a table from the store by reference (None: the object is gone).
    pub reader: TableReader,
}

impl PreviousRun {
    /// The previous output table of a port, if still in the store.
    pub fn output(&self, port: &str) -> anyhow::Result<Option<Table>> {
        self.output_columns(port, None)
    }

    /// [`PreviousRun::output`], only the named columns (those it has) if given: what an
    /// operator reuses of its previous output may leave out the bulky columns.
    pub fn output_columns(&self, port: &str, columns: Option<&[&str]>) -> anyhow::Result<Option<Table>> {
        match self.outputs.get(port) {
            Some(r) => (self.reader)(&r.digest, columns),
            None => Ok(None),
        }
    }

    /// The previous input table of a port (the `index`th connected), if still in the store.
    pub fn input(&self, port: &str, index: usize) -> anyhow::Result<Option<Table>> {
        self.input_columns(port, index, None)
    }

    /// [`PreviousRun::input`], only the named columns (those it has) if given: a diff of
    /// large inputs need not read their bulky columns.
    pub fn input_columns(&self, port: &str, index: usize, columns: Option<&[&str]>) -> anyhow::Result<Option<Table>> {
        match self.input_digests.get(port).and_then(|d| d.get(index)) {
            Some(d) => (self.reader)(d, columns),
            None => Ok(None),
        }
    }
}

/// Everything a running operator gets.
pub struct OpContext {
    /// Stage name.
    pub stage: String,
    /// Resolved parameters.
    pub params: Params,
    /// Inputs by port (named inputs by their names), in the order connected.
    pub inputs: BTreeMap<String, Vec<Input>>,
    /// Progress reporter.
    pub progress: Progress,
    /// Record memo of this operator.
    pub memo: RecordMemo,
    /// Previous successful run of this stage, if any.
    pub previous: Option<PreviousRun>,
    /// Durable directory keyed by the stage key: survives crashes, for checkpoints.
    pub work_dir: PathBuf,
    /// Cancellation flag; check it between records.
    pub cancel: CancelToken,
    /// Threads / data-parallel workers the stage may use.
    pub threads: usize,
    /// Named LLM endpoints of the pipeline, as JSON (`llm:` section).
    pub llm: Map<String, Value>,
    /// GPUs assigned to the stage (`resources.gpu`), for the worker processes it starts
    /// (e.g. a model server); empty means CPU.
    pub gpus: Vec<u32>,
    /// For a dataflow operator in a cluster run (`fleming run --hosts`): the processes
    /// its timely computation spans. `None`: this process alone.
    pub cluster: Option<crate::cluster::Cluster>,
    metrics: Map<String, Value>,
}

impl OpContext {
    /// Builds a context (the executor and the harness do).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stage: String,
        params: Params,
        inputs: BTreeMap<String, Vec<Input>>,
        progress: Progress,
        memo: RecordMemo,
        previous: Option<PreviousRun>,
        work_dir: PathBuf,
        cancel: CancelToken,
        threads: usize,
        llm: Map<String, Value>,
    ) -> Self {
        OpContext {
            stage,
            params,
            inputs,
            progress,
            memo,
            previous,
            work_dir,
            cancel,
            threads,
            llm,
            gpus: Vec::new(),
            cluster: None,
            metrics: Map::new(),
        }
    }

    /// The single table connected to `port`.
    pub fn input_table(&self, port: &str) -> anyhow::Result<&Table> {
        self.input(port)?.table()
    }

    /// The single input connected to `port`, for reading only some of its columns or rows
    /// ([`Input::columns`], [`Input::rows`]).
    pub fn input(&self, port: &str) -> anyhow::Result<&Input> {
        match self.inputs.get(port).map(|v| v.as_slice()) {
            Some([one]) => Ok(one),
            Some([]) | None => bail!("input `{port}` is not connected"),
            Some(more) => bail!("input `{port}` has {} tables connected; this operator reads one", more.len()),
        }
    }

    /// All tables connected to `port` (empty if unconnected).
    pub fn input_tables(&self, port: &str) -> anyhow::Result<Vec<&Table>> {
        self.inputs.get(port).map(|v| v.iter().map(|i| i.table()).collect()).unwrap_or_else(|| Ok(Vec::new()))
    }

    /// The model directory connected to `port`.
    pub fn input_model(&self, port: &str) -> anyhow::Result<&Path> {
        match self.inputs.get(port).and_then(|v| v.first()).map(|i| &i.value) {
            Some(InputValue::Model(p)) => Ok(p),
            Some(InputValue::Table(_) | InputValue::Stored(_)) => bail!("input `{port}` is a table, not a model"),
            None => bail!("input `{port}` is not connected"),
        }
    }

    /// Records a metric (kept in the run manifest).
    pub fn metric(&mut self, name: &str, value: impl Into<Value>) {
        self.metrics.insert(name.to_string(), value.into());
    }

    /// Metrics recorded so far.
    pub fn metrics(&self) -> &Map<String, Value> {
        &self.metrics
    }

    /// Takes the metrics out.
    pub fn take_metrics(&mut self) -> Map<String, Value> {
        std::mem::take(&mut self.metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};

    fn input(value: InputValue) -> Input {
        Input { from: "test".into(), digest: Digest::of(b""), value }
    }

    #[test]
    fn a_stored_input_reads_what_is_asked_and_answers_as_in_memory() {
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values((0..20_000).map(|i| format!("p{i}"))));
        let text: ArrayRef = Arc::new(StringArray::from_iter_values((0..20_000).map(|i| "x".repeat(i % 50))));
        let n: ArrayRef = Arc::new(Int64Array::from_iter_values(0..20_000));
        let t = fleming_artifacts::table::table_from_columns(vec![("id", ids), ("text", text), ("n", n)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        drop(t.write_parquet(std::fs::File::create(&path).unwrap()).unwrap());
        let memory = input(InputValue::Table(t.clone()));
        let stored = input(InputValue::Stored(StoredTable::new(path)));
        let rows = [0, 1, 9_000, 19_999];
        for _ in 0..2 {
            // Before and after the whole table is read.
            for i in [&memory, &stored] {
                assert_eq!(
                    i.columns(&["n", "id"]).unwrap().concat().unwrap(),
                    t.project(&["id", "n"]).unwrap().concat().unwrap()
                );
                let some = i.rows(Some(&["text"]), &rows).unwrap().concat().unwrap();
                let col = some.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                assert_eq!(col.iter().map(|v| v.unwrap().len()).collect::<Vec<_>>(), vec![0, 1, 0, 49]);
                assert!(i.rows(None, &[3, 2]).is_err());
                assert!(i.rows(None, &[20_000]).is_err());
            }
            assert_eq!(stored.table().unwrap().digest().unwrap(), t.digest().unwrap());
        }
    }
}
