//! What the runtime keeps in the store besides objects and manifests:
//! cache entries (stage key -> outputs) and refs (what each stage of a pipeline currently
//! points at, and the key parts that produced it, so that `status` can say what changed).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use fleming_artifacts::{ArtifactRef, Digest, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::keys::KeyParts;

/// A completed stage key: its outputs. Written after the outputs are in the store, so a
/// cache entry never points at a missing object unless something deleted it since.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Stage key.
    pub key: Digest,
    /// Operator.
    pub op: String,
    /// Operator version.
    pub op_version: u32,
    /// Operator source fingerprint when computed.
    pub op_fingerprint: String,
    /// Outputs by port.
    pub outputs: BTreeMap<String, ArtifactRef>,
    /// Manifest of the run that computed it.
    pub run_id: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl CacheEntry {
    /// Reads the entry of a key.
    pub fn load(store: &Store, key: &Digest) -> Result<Option<CacheEntry>, StoreError> {
        store.read_json(&store.cache_entry_path(key))
    }

    /// Writes it.
    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        store.write_json(&store.cache_entry_path(&self.key), self)
    }
}

/// What a stage of a pipeline currently points at.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageRef {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
    /// Current stage key.
    pub key: Digest,
    /// Its parts.
    pub parts: KeyParts,
    /// Outputs by port.
    pub outputs: BTreeMap<String, ArtifactRef>,
    /// Manifest of the run that computed them.
    pub run_id: String,
    /// When the ref was last set.
    pub updated_at: DateTime<Utc>,
}

impl StageRef {
    /// Path of a ref.
    pub fn path(store: &Store, pipeline: &str, stage: &str) -> PathBuf {
        store.dir("refs").join(fleming_artifacts::fsutil::sanitize(pipeline)).join(format!("{stage}.json"))
    }

    /// Reads the ref of a stage.
    pub fn load(store: &Store, pipeline: &str, stage: &str) -> Result<Option<StageRef>, StoreError> {
        store.read_json(&Self::path(store, pipeline, stage))
    }

    /// Writes it.
    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        store.write_json(&Self::path(store, &self.pipeline, &self.stage), self)
    }
}
