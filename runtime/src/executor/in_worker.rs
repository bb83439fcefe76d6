//! Running a stage in a worker process: the job, the devices, the worker's outputs, its
//! durable metrics, and the final checkpoint a later run may continue from.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use fleming_artifacts::{ArtifactKind, ArtifactRef, Digest, Store};
use serde_json::{Map, Value};

use super::{Executor, StageRun, llm_json};
use crate::dispatch::launcher::{find_worker, run_job};
use crate::dispatch::{Device, Job, JobInput, PROTOCOL_VERSION};
use crate::op::{PortKind, check_outputs};

/// Where the final checkpoint of the training stage run with `key` is kept.
pub fn continuation_checkpoint(store: &Store, key: &Digest) -> std::path::PathBuf {
    store.dir("checkpoints").join(key.hex())
}

impl Executor<'_> {
    /// Runs a stage in the worker: writes its job, streams its events, commits what it
    /// wrote, keeps its curve and (for training stages) its final checkpoint.
    pub(super) fn run_in_worker(
        &self,
        run: &StageRun<'_>,
        metrics: &mut Map<String, Value>,
        worker_info: &mut Option<Value>,
    ) -> anyhow::Result<BTreeMap<String, ArtifactRef>> {
        let StageRun { stage, pending: p, loaded, threads, gpus, progress, run_id, work_dir } = *run;
        let spec = stage.op.spec();
        let worker = find_worker()?;
        let out_dir = self.store.new_tmp_dir(&format!("out-{}", stage.name))?;
        let device = Device::for_gpus(gpus);
        if stage.resources.gpu > 0 && gpus.is_empty() {
            self.log(&format!("  {}: no GPU on this machine; running on CPU", stage.name));
        }
        let mut inputs = BTreeMap::new();
        for (port, items) in loaded {
            let mut v = Vec::new();
            for (from, a) in items {
                v.push(JobInput {
                    kind: match a.kind {
                        ArtifactKind::Table => "table".into(),
                        ArtifactKind::Tree => "model".into(),
                    },
                    path: self.store.fetch(a.kind, &a.digest)?,
                    digest: a.digest.hex(),
                    from: from.clone(),
                });
            }
            inputs.insert(port.clone(), v);
        }
        let job = Job {
            protocol: PROTOCOL_VERSION,
            pipeline: self.pipeline.name.clone(),
            stage: stage.name.clone(),
            op: spec.name.to_string(),
            op_version: spec.version,
            key: p.key.hex(),
            params: stage.params.values().clone(),
            base_dir: self.pipeline.base_dir.clone(),
            inputs,
            output_dir: out_dir.clone(),
            checkpoint_dir: work_dir.join("checkpoint"),
            device,
            threads,
            llm: llm_json(self.pipeline),
            resume_from: p.resume_from.clone(),
        };
        std::fs::create_dir_all(&job.checkpoint_dir)?;
        let log = |line: &str| self.log(&format!("  {}: {line}", stage.name));
        let result = run_job(&worker, &job, work_dir, progress, &self.cancel, &log);
        let wr = match result {
            Ok(wr) => wr,
            Err(e) => {
                // A failed or interrupted run keeps its curve beside its manifest.
                if let Err(k) = self.keep_metrics(&job, run_id, metrics) {
                    self.log(&format!("  {}: warning: keeping its metrics: {k:#}", stage.name));
                }
                return Err(e);
            }
        };
        *worker_info = Some(serde_json::json!({
            "executable": worker.display().to_string(),
            "hello": wr.hello,
            "device": job.device,
        }));
        metrics.extend(wr.metrics);
        self.keep_metrics(&job, run_id, metrics)?;
        let mut outputs = crate::op::Outputs::new();
        for port in &spec.outputs {
            match port.kind {
                PortKind::Table(_) => {
                    let f = out_dir.join(format!("{}.parquet", port.name));
                    if !f.is_file() {
                        bail!("the worker reported success but did not write output `{}` ({})", port.name, f.display());
                    }
                    let t = fleming_artifacts::Table::read_parquet(&f)
                        .with_context(|| format!("reading worker output `{}`", port.name))?;
                    outputs = outputs.table(port.name, t);
                }
                PortKind::Model | PortKind::Dir => {
                    let d = out_dir.join(port.name);
                    if !d.is_dir() {
                        bail!("the worker reported success but did not write output `{}` ({})", port.name, d.display());
                    }
                    outputs = outputs.model(port.name, d);
                }
            }
        }
        check_outputs(spec, &outputs)?;
        let committed = self.commit_outputs(outputs);
        let _ = std::fs::remove_dir_all(&out_dir);
        let committed = committed?;
        if spec.params.iter().any(|p| p.continues) {
            self.keep_final_checkpoint(&job.checkpoint_dir, &p.key);
        }
        let _ = std::fs::remove_dir_all(work_dir);
        Ok(committed)
    }

    /// Copies the worker's durable metrics rows beside the run's manifest
    /// (`runs/<run id>.metrics.jsonl`), whether the run succeeded or not.
    fn keep_metrics(&self, job: &Job, run_id: &str, metrics: &mut Map<String, Value>) -> anyhow::Result<()> {
        let src = job.checkpoint_dir.join(crate::dispatch::METRICS_FILE);
        let rows = crate::dispatch::MetricsLog::read(&src)?;
        if rows.is_empty() {
            return Ok(());
        }
        metrics.insert("metric_rows".into(), Value::from(rows.len()));
        let mut lines = String::new();
        for row in rows {
            lines.push_str(&Value::Object(row).to_string());
            lines.push('\n');
        }
        let path = self.store.dir("runs").join(format!("{run_id}.metrics.jsonl"));
        fleming_artifacts::fsutil::write_atomic(&path, &self.store.tmp_dir(), lines.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(self.store.publish(&path)?)
    }

    /// Keeps a finished training stage's checkpoint directory (its final checkpoint and
    /// metrics) under `checkpoints/<key>/`, so that a later run with more `steps` continues
    /// from it. `gc` drops it once no stage's current run has that key.
    fn keep_final_checkpoint(&self, checkpoint_dir: &Path, key: &Digest) {
        if !checkpoint_dir.join("checkpoints").join("latest").is_file() {
            return;
        }
        let dest = continuation_checkpoint(self.store, key);
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(self.store.dir("checkpoints"))?;
            if dest.exists() {
                std::fs::remove_dir_all(&dest)?;
            }
            std::fs::rename(checkpoint_dir, &dest)
        })();
        if let Err(e) = result {
            self.log(&format!("warning: keeping the final checkpoint in {}: {e}", dest.display()));
        }
    }
}
