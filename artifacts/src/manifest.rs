//! Run manifests: one JSON file per executed stage, under `runs/`. Together they are the
//! lineage graph of everything the store holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::{ArtifactRef, Store, StoreError};

/// How an executed stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Outputs committed.
    Succeeded,
    /// The operator or worker failed; nothing committed.
    Failed,
    /// Interrupted (Ctrl-C); nothing committed.
    Cancelled,
}

/// One input artifact as the stage saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// `stage.port` it came from.
    pub from: String,
    /// Its digest.
    pub digest: Digest,
    /// Its rows, for tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// A file named by a path parameter; it enters the key by content digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The path as written in the pipeline (relative to the pipeline file).
    pub path: String,
    /// Content digest (a tree digest for directories).
    pub digest: Digest,
    /// Size in bytes.
    pub bytes: u64,
}

/// What the store knows of one executed stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunManifest {
    /// Unique id: start time, stage, key prefix.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline file as given.
    pub pipeline_file: String,
    /// Stage name.
    pub stage: String,
    /// Stage key.
    pub key: Digest,
    /// Operator name.
    pub op: String,
    /// Operator version.
    pub op_version: u32,
    /// Fingerprint of the operator's source when it ran.
    pub op_fingerprint: String,
    /// Resolved parameters (defaults filled).
    pub params: serde_json::Value,
    /// Input artifacts by port.
    pub inputs: BTreeMap<String, Vec<InputRecord>>,
    /// Files named by path parameters.
    #[serde(default)]
    pub files: BTreeMap<String, FileRecord>,
    /// Output artifacts by port (empty unless succeeded).
    pub outputs: BTreeMap<String, ArtifactRef>,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// End time.
    pub finished_at: DateTime<Utc>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Metrics the operator reported.
    #[serde(default)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Host name.
    pub host: String,
    /// fleming version.
    pub tool_version: String,
    /// Why it ran (new, params changed, input changed, ...).
    pub reason: String,
    /// How it ended.
    pub status: RunStatus,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Worker process details, for stages run by a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<serde_json::Value>,
    /// The devices the stage ran on, for stages that declare `resources: { gpu: N }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DeviceMap>,
    /// Results of the stage's data checks (with a sample of failing rows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<serde_json::Value>,
}

/// Which of the machine's GPUs a stage had: its processes see them (through
/// `CUDA_VISIBLE_DEVICES`) as `cuda:0`, `cuda:1`, ... in this order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMap {
    /// `cuda`, or `cpu` when the machine had no GPU.
    pub kind: String,
    /// Physical GPU indices, in the order the stage sees them.
    pub gpus: Vec<u32>,
    /// What each device the stage saw was: `cuda:0` -> physical index.
    pub visible: BTreeMap<String, u32>,
}

impl DeviceMap {
    /// The map of a stage given these physical GPUs (none: the CPU).
    pub fn of(gpus: &[u32]) -> DeviceMap {
        DeviceMap {
            kind: if gpus.is_empty() { "cpu" } else { "cuda" }.into(),
            gpus: gpus.to_vec(),
            visible: gpus.iter().enumerate().map(|(i, g)| (format!("cuda:{i}"), *g)).collect(),
        }
    }
}

impl RunManifest {
    /// Path of a manifest in the store.
    pub fn path(store: &Store, run_id: &str) -> PathBuf {
        store.dir("runs").join(format!("{run_id}.json"))
    }

    /// Writes the manifest atomically.
    pub fn save(&self, store: &Store) -> Result<PathBuf, StoreError> {
        let p = Self::path(store, &self.run_id);
        store.write_json(&p, self)?;
        Ok(p)
    }

    /// Reads every manifest in the store, oldest first. Unreadable files are reported by path.
    pub fn load_all(store: &Store) -> Result<(Vec<RunManifest>, Vec<PathBuf>), StoreError> {
        // Those other machines wrote, on a remote store.
        store.pull_dir("runs")?;
        let dir = store.dir("runs");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| StoreError::Io { path: dir.clone(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for p in paths {
            match load_one(&p) {
                Some(m) => out.push(m),
                None => bad.push(p),
            }
        }
        Ok((out, bad))
    }
}

fn load_one(p: &Path) -> Option<RunManifest> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Whether a manifest's file name (a [`new_run_id`] and `.json`) may be a run of `stage`
/// (with `key`, when given): lets readers open only those files. The stage name is
/// sanitised in the id, so a match is to be confirmed against the manifest's own fields.
pub fn file_may_be_of(name: &str, stage: &str, key: Option<&Digest>) -> bool {
    let tag = match key {
        Some(k) => format!("-{}-{}-", crate::fsutil::sanitize(stage), k.short(8)),
        None => format!("-{}-", crate::fsutil::sanitize(stage)),
    };
    name.ends_with(".json") && name.contains(&tag)
}

/// A run id: sortable by time, readable, unique.
pub fn new_run_id(stage: &str, key: &Digest, started: DateTime<Utc>) -> String {
    format!(
        "{}-{}-{}-{}",
        started.format("%Y%m%dT%H%M%S%.3fZ"),
        crate::fsutil::sanitize(stage),
        key.short(8),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_file_names_are_found_by_stage_and_key() {
        let (k1, k2) = (Digest::of(b"one"), Digest::of(b"two"));
        let name = format!("{}.json", new_run_id("rl 2", &k1, Utc::now()));
        assert!(file_may_be_of(&name, "rl 2", None));
        assert!(file_may_be_of(&name, "rl 2", Some(&k1)));
        assert!(!file_may_be_of(&name, "rl 2", Some(&k2)));
        assert!(!file_may_be_of(&name, "rl", None));
        assert!(!file_may_be_of(&name.replace(".json", ".metrics.jsonl"), "rl 2", None));
    }
}
