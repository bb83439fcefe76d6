//! Storage for fleming: the content-addressed object store (`.fleming/`), canonical
//! Arrow/Parquet encoding of tables and their digests, run manifests, the per-operator
//! record memo, SQL over tables with DataFusion, and stores on object storage
//! ([`remote`]).
//!
//! Nothing here knows about pipelines or operators; the runtime builds on it.

pub mod digest;
pub mod fsutil;
pub mod manifest;
pub mod memo;
pub mod remote;
#[cfg(feature = "sql")]
pub mod sql;
pub mod statcache;
pub mod store;
pub mod table;

pub use digest::{Digest, digest_file};
pub use manifest::RunManifest;
pub use memo::{MemoLog, MemoStats};
pub use store::{ArtifactKind, ArtifactRef, FileLock, KeyLock, Store, StoreError};
pub use table::{SchemaSummary, Table, TableError};
