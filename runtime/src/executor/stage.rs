//! Running one stage: under its key lock (one process computes a key; the others wait and
//! reuse it), then its checks, its manifest, its cache entry and its ref, in that order.
//! A process of a cluster run other than 0 takes part in dataflow stages instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use chrono::Utc;
use fleming_artifacts::manifest::{DeviceMap, InputRecord, RunStatus, new_run_id};
use fleming_artifacts::{ArtifactKind, Digest, RunManifest};
use serde_json::Map;

use super::{Executor, Launch, Outcome, Pending, StageReport, hostname, upstream_rows};
use crate::cancel::Cancelled;
use crate::checks::{CheckResult, evaluate};
use crate::spec::Stage;
use crate::state::CacheEntry;

impl Executor<'_> {
    /// Runs one stage under its key lock and commits its outputs.
    pub(super) fn execute(&self, i: usize, p: Pending, launch: &Launch, skip_checks: bool) -> StageReport {
        let stage = &self.pipeline.stages[i];
        let spec = stage.op.spec();
        let started = Instant::now();
        let started_at = Utc::now();
        let run_id = new_run_id(&stage.name, &p.key, started_at);
        let mut report = StageReport::new(stage, Outcome::Ran, p.reason.clone());
        report.key = Some(p.key);
        report.warnings = p.warnings.clone();

        if let Some(cluster) = self.cluster_of(stage)
            && !cluster.is_leader()
        {
            return self.take_part(stage, &p, launch, report);
        }
        // The key lock: one process computes a key; others wait and reuse.
        let _lock = match self.lock_key(stage, &p.key) {
            Ok(Some(l)) => l,
            Ok(None) => {
                report.outcome = Outcome::Cancelled;
                report.reason = "cancelled while waiting for another run".into();
                return report;
            }
            Err(e) => {
                report.outcome = Outcome::Failed;
                report.error = Some(format!("{e:#}"));
                return report;
            }
        };
        if !p.forced
            && let Ok(Some(entry)) = CacheEntry::load(self.store, &p.key)
            && matches!(self.unusable(stage, &entry), Ok(None))
        {
            let _ = self.set_ref(stage, &p.parts, p.key, &entry.outputs, &entry.run_id);
            report.outcome = Outcome::Cached;
            report.reason = match self.twin(stage, &p.key) {
                Some(twin) => format!(
                    "cached: stage `{twin}` has the same key (the same operator, params and inputs) and computed it in this run"
                ),
                None => "cached (computed by a concurrent run)".into(),
            };
            report.outputs = entry.outputs;
            report.run_id = Some(entry.run_id);
            return report;
        }

        self.log(&format!("▶ {} [{}]: {}", stage.name, spec.name, p.reason));
        let progress = self.progress.stage(&stage.name, spec.name);
        let mut metrics = Map::new();
        let mut worker_info = None;
        let result = self.compute(stage, &p, launch, &progress, &mut metrics, &mut worker_info, &run_id);
        let finished_at = Utc::now();
        let (status, error) = match &result {
            Ok(outputs) => {
                report.outputs = outputs.clone();
                (RunStatus::Succeeded, None)
            }
            Err(e) if e.downcast_ref::<Cancelled>().is_some() || self.cancel.is_cancelled() => {
                report.outcome = Outcome::Cancelled;
                (RunStatus::Cancelled, Some(format!("{e:#}")))
            }
            Err(e) => {
                report.outcome = Outcome::Failed;
                (RunStatus::Failed, Some(format!("{e:#}")))
            }
        };
        report.error = error.clone();
        report.duration = started.elapsed();
        report.run_id = Some(run_id.clone());
        if status == RunStatus::Succeeded && !skip_checks {
            report.checks = self.run_checks(stage, &report, true, true);
        }
        let manifest = RunManifest {
            run_id: run_id.clone(),
            pipeline: self.pipeline.name.clone(),
            pipeline_file: self.pipeline.file.display().to_string(),
            stage: stage.name.clone(),
            key: p.key,
            op: spec.name.to_string(),
            op_version: spec.version,
            op_fingerprint: spec.fingerprint.clone(),
            params: stage.params.to_json(),
            inputs: stage
                .inputs
                .iter()
                .map(|(port, refs)| {
                    let recs = refs
                        .iter()
                        .zip(p.parts.inputs.get(port).into_iter().flatten())
                        .map(|(r, d)| InputRecord {
                            from: r.to_string(),
                            digest: *d,
                            rows: upstream_rows(&launch.upstream, stage, r),
                        })
                        .collect();
                    (port.clone(), recs)
                })
                .collect(),
            files: p.files.clone(),
            outputs: report.outputs.clone(),
            started_at,
            finished_at,
            duration_ms: report.duration.as_millis() as u64,
            metrics,
            host: hostname(),
            tool_version: crate::TOOL_VERSION.to_string(),
            reason: p.reason.clone(),
            status,
            error,
            worker: worker_info,
            devices: (stage.resources.gpu > 0).then(|| DeviceMap::of(&launch.gpus)),
            checks: report.checks.iter().filter_map(|c| serde_json::to_value(c).ok()).collect(),
        };
        let commit = (|| -> anyhow::Result<()> {
            manifest.save(self.store)?;
            if status == RunStatus::Succeeded {
                CacheEntry {
                    key: p.key,
                    op: spec.name.to_string(),
                    op_version: spec.version,
                    op_fingerprint: spec.fingerprint.clone(),
                    outputs: report.outputs.clone(),
                    run_id: run_id.clone(),
                    created_at: finished_at,
                }
                .save(self.store)?;
                self.set_ref(stage, &p.parts, p.key, &report.outputs, &run_id)?;
            }
            Ok(())
        })();
        if let Err(e) = commit {
            report.outcome = Outcome::Failed;
            report.error = Some(format!("committing the outputs: {e:#}"));
        }
        let summary = match report.outcome {
            Outcome::Ran => {
                let rows: u64 = report.outputs.values().filter_map(|o| o.rows).sum();
                format!("✓ {} [{}]: {} rows in {:.1?}", stage.name, spec.name, rows, report.duration)
            }
            Outcome::Cancelled => format!("■ {} [{}]: cancelled; nothing committed", stage.name, spec.name),
            _ => format!("✗ {} [{}]: failed after {:.1?}", stage.name, spec.name, report.duration),
        };
        progress.finish(&summary);
        self.log(&summary);
        report
    }

    /// Takes part in a dataflow stage of a cluster run as a process other than 0: runs its
    /// share, then waits for process 0 (which holds the key lock until it has committed)
    /// and reports what it committed. Writes no manifest: process 0's is the stage's.
    fn take_part(&self, stage: &Stage, p: &Pending, launch: &Launch, mut report: StageReport) -> StageReport {
        let spec = stage.op.spec();
        let (process, processes) = self.cluster.as_ref().map(|c| (c.process, c.processes())).unwrap_or((0, 1));
        let started = Instant::now();
        self.log(&format!("▶ {} [{}]: {} (process {process} of {processes})", stage.name, spec.name, p.reason));
        let progress = self.progress.stage(&stage.name, spec.name);
        let mut metrics = Map::new();
        let run_id = new_run_id(&stage.name, &p.key, Utc::now());
        let computed = self.compute(stage, p, launch, &progress, &mut metrics, &mut None, &run_id);
        let committed = computed.and_then(|_| {
            let _lock = self.lock_key(stage, &p.key)?.ok_or(Cancelled)?;
            CacheEntry::load(self.store, &p.key)?
                .ok_or_else(|| anyhow!("process 0 did not commit the outputs (it failed or was stopped: see its log)"))
        });
        report.duration = started.elapsed();
        match committed {
            Ok(entry) => {
                report.reason = format!("{} (process {process} of {processes}; process 0 committed)", p.reason);
                report.outputs = entry.outputs;
                report.run_id = Some(entry.run_id);
            }
            Err(e) => {
                report.outcome = if e.downcast_ref::<Cancelled>().is_some() || self.cancel.is_cancelled() {
                    Outcome::Cancelled
                } else {
                    Outcome::Failed
                };
                report.error = Some(format!("{e:#}"));
            }
        }
        let summary = match report.outcome {
            Outcome::Ran => format!("✓ {} [{}]: took part in {:.1?}", stage.name, spec.name, report.duration),
            Outcome::Cancelled => format!("■ {} [{}]: cancelled", stage.name, spec.name),
            _ => format!("✗ {} [{}]: failed after {:.1?}", stage.name, spec.name, report.duration),
        };
        progress.finish(&summary);
        self.log(&summary);
        report
    }

    /// Evaluates the stage's checks on its outputs, reusing stored results for the same
    /// stage key and check definition unless `fresh` (the stage just ran). Without
    /// `compute` (dry runs, status), only stored results are returned.
    pub(super) fn run_checks(
        &self,
        stage: &Stage,
        report: &StageReport,
        fresh: bool,
        compute: bool,
    ) -> Vec<CheckResult> {
        let Some(key) = report.key else { return Vec::new() };
        let default_port = stage.op.spec().default_output().map(|o| o.name).unwrap_or("table");
        let mut tables: Option<BTreeMap<String, fleming_artifacts::Table>> = None;
        let mut out = Vec::new();
        for check in &stage.checks {
            if !fresh && let Ok(Some(r)) = CheckResult::load(self.store, &key, check) {
                out.push(r);
                continue;
            }
            if !compute {
                continue;
            }
            if tables.is_none() {
                let mut t = BTreeMap::new();
                for (port, a) in &report.outputs {
                    if a.kind == ArtifactKind::Table {
                        match self.store.read_table(a) {
                            Ok(table) => {
                                t.insert(port.clone(), table);
                            }
                            Err(e) => self
                                .log(&format!("warning: {}: cannot read output `{port}` for checks: {e}", stage.name)),
                        }
                    }
                }
                tables = Some(t);
            }
            let r = evaluate(&stage.name, key, check, tables.as_ref().unwrap_or(&BTreeMap::new()), default_port);
            if let Err(e) = r.save(self.store) {
                self.log(&format!("warning: {}: cannot store the result of check `{}`: {e}", stage.name, check.name));
            }
            out.push(r);
        }
        out
    }

    /// The stage of this run that took up `key` before `stage` did, if another did.
    fn twin(&self, stage: &Stage, key: &Digest) -> Option<String> {
        self.claimed.lock().ok()?.get(key).filter(|first| **first != stage.name).cloned()
    }

    /// Records that `stage` holds the lock of `key` — the first of this run to hold it
    /// is the one that computes it, whichever asked first.
    fn claim(&self, stage: &Stage, key: &Digest) {
        if let Ok(mut claimed) = self.claimed.lock() {
            claimed.entry(*key).or_insert_with(|| stage.name.clone());
        }
    }

    fn lock_key(&self, stage: &Stage, key: &Digest) -> anyhow::Result<Option<fleming_artifacts::KeyLock>> {
        if let Some(l) = self.store.try_lock_key(key)? {
            self.claim(stage, key);
            return Ok(Some(l));
        }
        let cluster_peer = self.cluster_of(stage).is_some_and(|c| !c.is_leader());
        match self.twin(stage, key) {
            _ if cluster_peer => self.log(&format!("… {}: waiting for process 0 to commit the outputs", stage.name)),
            Some(twin) => self.log(&format!(
                "… {}: stage `{twin}` has the same key (the same operator, params and inputs) and is computing it; waiting for it",
                stage.name
            )),
            None => self.log(&format!(
                "… {}: another fleming run is computing the same stage; waiting for it",
                stage.name
            )),
        }
        loop {
            if self.cancel.is_cancelled() {
                return Ok(None);
            }
            if let Some(l) = self.store.try_lock_key(key)? {
                self.claim(stage, key);
                return Ok(Some(l));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
