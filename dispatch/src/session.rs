//! The worker side of the protocol, for worker binaries (the torch worker, test workers):
//! read the job, talk back on stdout, keep metrics on disk, notice SIGTERM.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleming_artifacts::Table;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Event, Job, METRICS_FILE, PROTOCOL_VERSION};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether `fleming` asked the worker to stop (SIGTERM, or SIGINT from a terminal's
/// Ctrl-C). A training loop checks it between steps, writes a checkpoint and exits; the
/// runtime kills the worker only after [`crate::GRACE_PERIOD`].
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop_signal as *const () as libc::sighandler_t);
    }
}

/// A running job: the job description and the event stream back to `fleming`.
pub struct WorkerSession {
    /// The job.
    pub job: Job,
    out: Mutex<std::io::Stdout>,
    metrics: Mutex<Option<MetricsLog>>,
}

impl WorkerSession {
    /// Reads a job file and announces the worker.
    pub fn start(job_path: &Path, worker: &str, version: &str) -> anyhow::Result<WorkerSession> {
        let bytes = std::fs::read(job_path).with_context(|| format!("reading job {}", job_path.display()))?;
        let job: Job = serde_json::from_slice(&bytes).with_context(|| format!("parsing job {}", job_path.display()))?;
        if job.protocol != PROTOCOL_VERSION {
            bail!("job uses protocol {}, this worker speaks {PROTOCOL_VERSION}", job.protocol);
        }
        let s = WorkerSession { job, out: Mutex::new(std::io::stdout()), metrics: Mutex::new(None) };
        s.emit(&Event::Hello { worker: worker.into(), version: version.into(), protocol: PROTOCOL_VERSION });
        Ok(s)
    }

    /// From now on SIGTERM and SIGINT do not end the process: they set
    /// [`stop_requested`], which a training loop checks between steps to save a checkpoint
    /// and exit within the grace period. Operators that keep no checkpoint do not call it
    /// (the signal then ends them at once).
    pub fn catch_stop_signals(&self) {
        install_stop_handler();
    }

    /// Sends one event.
    pub fn emit(&self, event: &Event) {
        if let (Ok(line), Ok(mut out)) = (serde_json::to_string(event), self.out.lock()) {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    /// Reports progress.
    pub fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        self.emit(&Event::Progress { done, total, unit: Some(unit.into()), message: None });
    }

    /// Records a metrics row: appended to the durable log in the checkpoint directory
    /// (kept if the run dies), then sent to `fleming`. The row is stored with its `step`.
    pub fn metrics(&self, step: Option<u64>, values: Map<String, Value>) -> anyhow::Result<()> {
        let mut row = values.clone();
        if let Some(s) = step {
            row.insert("step".into(), Value::from(s));
        }
        {
            let mut log = self.metrics.lock().map_err(|_| anyhow::anyhow!("metrics log poisoned"))?;
            if log.is_none() {
                *log = Some(MetricsLog::open(&self.metrics_path())?);
            }
            if let Some(log) = log.as_mut() {
                log.append(&row)?;
            }
        }
        self.emit(&Event::Metrics { step, values });
        Ok(())
    }

    /// Where the durable metrics rows are: `<checkpoint dir>/metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.job.checkpoint_dir.join(METRICS_FILE)
    }

    /// Before a resumed run continues from a checkpoint at `step`: drops the rows of later
    /// steps (they were computed after the checkpoint and will be computed again), so the
    /// log has each step once.
    pub fn resume_metrics_at(&self, step: u64) -> anyhow::Result<()> {
        let mut log = self.metrics.lock().map_err(|_| anyhow::anyhow!("metrics log poisoned"))?;
        *log = None;
        MetricsLog::truncate_after(&self.metrics_path(), step)
    }

    /// Every durable metrics row so far, in order.
    pub fn metrics_rows(&self) -> anyhow::Result<Vec<Map<String, Value>>> {
        if let Ok(mut log) = self.metrics.lock()
            && let Some(log) = log.as_mut()
        {
            log.sync()?;
        }
        MetricsLog::read(&self.metrics_path())
    }

    /// Logs a line.
    pub fn log(&self, level: &str, message: &str) {
        self.emit(&Event::Log { level: level.into(), message: message.into() });
    }

    /// Reports success (after writing the outputs).
    pub fn done(&self, metrics: Map<String, Value>) {
        self.emit(&Event::Done { metrics });
    }

    /// Reports failure.
    pub fn fail(&self, message: &str) {
        self.emit(&Event::Error { message: message.into() });
    }

    /// The job's parameters as the operator's own type. The runtime hands over resolved
    /// parameters (every declared name, defaults filled in), so the type needs no
    /// defaults of its own; give it `#[serde(deny_unknown_fields)]` so that a name the
    /// declaration has and the worker does not is an error, not a silent default.
    pub fn params<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_value(Value::Object(self.job.params.clone()))
            .with_context(|| format!("the parameters of `{}` do not match what the worker expects", self.job.op))
    }

    /// Whether a port is connected.
    pub fn has_input(&self, port: &str) -> bool {
        self.job.inputs.get(port).is_some_and(|v| !v.is_empty())
    }

    /// The `index`th table connected to `port`.
    pub fn input_table(&self, port: &str, index: usize) -> anyhow::Result<Table> {
        let input = self.job.inputs.get(port).and_then(|v| v.get(index));
        match input {
            Some(i) if i.kind == "table" => Ok(Table::read_parquet(&i.path)?),
            Some(_) => bail!("input `{port}` is not a table"),
            None => bail!("input `{port}` is not connected"),
        }
    }

    /// The model directory connected to `port`.
    pub fn input_model(&self, port: &str) -> anyhow::Result<PathBuf> {
        match self.job.inputs.get(port).and_then(|v| v.first()) {
            Some(i) if i.kind == "model" => Ok(i.path.clone()),
            Some(_) => bail!("input `{port}` is not a model"),
            None => bail!("input `{port}` is not connected"),
        }
    }

    /// Writes a table output.
    pub fn write_table(&self, port: &str, table: &Table) -> anyhow::Result<()> {
        let path = self.job.output_dir.join(format!("{port}.parquet"));
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let (f, _, _) = table.write_parquet(f)?;
        f.sync_all()?;
        Ok(())
    }

    /// Writes the durable metrics rows as the table output `port` (see [`metrics_table`]).
    pub fn write_metrics_table(&self, port: &str) -> anyhow::Result<usize> {
        let rows = self.metrics_rows()?;
        self.write_table(port, &metrics_table(&rows)?)?;
        Ok(rows.len())
    }

    /// The directory to write a model output into (created).
    pub fn model_dir(&self, port: &str) -> anyhow::Result<PathBuf> {
        let p = self.job.output_dir.join(port);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }
}

/// Metrics rows as a table: `step` (int64) first, then every other key in order of first
/// appearance; numbers become float64, booleans boolean, anything else its JSON text.
/// A row without a key has null there.
pub fn metrics_table(rows: &[Map<String, Value>]) -> anyhow::Result<Table> {
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let mut keys: Vec<&str> = vec!["step"];
    for r in rows {
        for k in r.keys() {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for k in keys {
        let vals: Vec<Option<&Value>> = rows.iter().map(|r| r.get(k).filter(|v| !v.is_null())).collect();
        let (ty, col): (DataType, ArrayRef) = if k == "step" {
            (DataType::Int64, Arc::new(vals.iter().map(|v| v.and_then(Value::as_i64)).collect::<Int64Array>()))
        } else if vals.iter().flatten().all(|v| v.is_number()) {
            (DataType::Float64, Arc::new(vals.iter().map(|v| v.and_then(Value::as_f64)).collect::<Float64Array>()))
        } else if vals.iter().flatten().all(|v| v.is_boolean()) {
            (DataType::Boolean, Arc::new(vals.iter().map(|v| v.and_then(Value::as_bool)).collect::<BooleanArray>()))
        } else {
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (DataType::Utf8, Arc::new(vals.iter().map(|v| v.map(text)).collect::<StringArray>()))
        };
        fields.push(Field::new(k, ty, true));
        columns.push(col);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = arrow::array::RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Table::new(schema, vec![batch]))
}

/// Metrics rows as JSON lines in a file that outlives the process: written as they arrive
/// (a killed run keeps its curve), synced to disk at most once a second and when asked.
pub struct MetricsLog {
    file: File,
    last_sync: Instant,
}

impl MetricsLog {
    /// Opens (creating) the log for appending.
    pub fn open(path: &Path) -> anyhow::Result<MetricsLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog { file, last_sync: Instant::now() })
    }

    /// Appends one row.
    pub fn append(&mut self, row: &Map<String, Value>) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(row)?;
        line.push(b'\n');
        self.file.write_all(&line).context("writing a metrics row")?;
        if self.last_sync.elapsed() >= Duration::from_secs(1) {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every appended row durable.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.file.sync_data().context("syncing the metrics log")?;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The rows of a log, in order; a torn last line (a crash mid-write) is left out.
    pub fn read(path: &Path) -> anyhow::Result<Vec<Map<String, Value>>> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut rows = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&line) {
                rows.push(m);
            }
        }
        Ok(rows)
    }

    /// Keeps the rows whose `step` is at most `step` (rows without a step are kept),
    /// replacing the file atomically.
    pub fn truncate_after(path: &Path, step: u64) -> anyhow::Result<()> {
        let rows = Self::read(path)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for r in rows.iter().filter(|r| r.get("step").and_then(Value::as_u64).is_none_or(|s| s <= step)) {
            text.extend(serde_json::to_vec(r)?);
            text.push(b'\n');
        }
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(step: u64) -> Map<String, Value> {
        json!({"step": step, "loss": 1.0 / step as f64}).as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_resumed_log_has_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck").join(METRICS_FILE);
        let mut log = MetricsLog::open(&path).unwrap();
        for s in 1..=7 {
            log.append(&row(s)).unwrap();
        }
        drop(log);
        // A torn last line, as a crash mid-write leaves it.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"step\": 8, \"lo").unwrap();
        assert_eq!(MetricsLog::read(&path).unwrap().len(), 7);
        // The checkpoint was at step 5: steps 6 and 7 are recomputed.
        MetricsLog::truncate_after(&path, 5).unwrap();
        let mut log = MetricsLog::open(&path).unwrap();
        for s in 6..=9 {
            log.append(&row(s)).unwrap();
        }
        let steps: Vec<u64> = MetricsLog::read(&path).unwrap().iter().filter_map(|r| r["step"].as_u64()).collect();
        assert_eq!(steps, (1..=9).collect::<Vec<_>>());
        let t = metrics_table(&MetricsLog::read(&path).unwrap()).unwrap();
        assert_eq!(t.num_rows(), 9);
        assert_eq!(t.schema.field(0).name(), "step");
        assert_eq!(t.schema.field(1).data_type(), &arrow::datatypes::DataType::Float64);
    }
}
