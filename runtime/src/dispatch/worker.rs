//! The worker side of the protocol, for worker binaries (the torch worker, test workers).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use fleming_artifacts::Table;
use serde_json::{Map, Value};

use super::{Event, Job, PROTOCOL_VERSION};
use crate::params::Params;

/// A running job: the job description and the event stream back to `fleming`.
pub struct WorkerSession {
    /// The job.
    pub job: Job,
    out: Mutex<std::io::Stdout>,
}

impl WorkerSession {
    /// Reads a job file and announces the worker.
    pub fn start(job_path: &Path, worker: &str, version: &str) -> anyhow::Result<WorkerSession> {
        let bytes = std::fs::read(job_path).with_context(|| format!("reading job {}", job_path.display()))?;
        let job: Job = serde_json::from_slice(&bytes).with_context(|| format!("parsing job {}", job_path.display()))?;
        if job.protocol != PROTOCOL_VERSION {
            bail!("job uses protocol {}, this worker speaks {PROTOCOL_VERSION}", job.protocol);
        }
        let s = WorkerSession { job, out: Mutex::new(std::io::stdout()) };
        s.emit(&Event::Hello { worker: worker.into(), version: version.into(), protocol: PROTOCOL_VERSION });
        Ok(s)
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

    /// Reports a metrics row.
    pub fn metrics(&self, step: Option<u64>, values: Map<String, Value>) {
        self.emit(&Event::Metrics { step, values });
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

    /// The job's parameters, typed.
    pub fn params(&self) -> Params {
        Params::from_resolved(self.job.params.clone(), &self.job.base_dir)
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
        let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let (f, _, _) = table.write_parquet(f)?;
        f.sync_all()?;
        Ok(())
    }

    /// The directory to write a model output into (created).
    pub fn model_dir(&self, port: &str) -> anyhow::Result<PathBuf> {
        let p = self.job.output_dir.join(port);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }
}
