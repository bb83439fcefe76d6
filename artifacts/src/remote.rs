//! A store on object storage (`--store s3://bucket/prefix`), through the `object_store`
//! crate: any S3-compatible service, with credentials and endpoint from the usual
//! `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP` for a plain-HTTP endpoint).
//!
//! The remote holds what the local store holds, under the same relative names
//! (`objects/ab/<hex>.parquet`, `cache/…`, `refs/…`, `runs/…`, `checks/…`, `memo/…`); a
//! tree object is its files under `objects/ab/<hex>.tree/` plus a listing,
//! `objects/ab/<hex>.tree.json`, written last. The local store beside the pipeline is its
//! cache: an object is downloaded once, and work directories, checkpoints and locks stay
//! local. What makes it safe to share between machines:
//!
//! - every write is one atomic PUT (large files: a multipart upload, invisible until
//!   complete), and a run publishes in order: objects, then the cache entry, then the
//!   manifest and the ref. No reader sees a cache entry whose objects are missing, and a
//!   `kill -9` mid-upload leaves at most an unreferenced object (gc removes it);
//! - a stage key is computed under a lease ([`Lease`]): an object created with a
//!   conditional PUT (`If-None-Match: *`), renewed while the stage runs and taken over
//!   (`If-Match` on its ETag) only once expired, so two machines compute a key once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

pub use object_store::PutMode;

use crate::fsutil::{self, unique_name};
use crate::store::StoreError;

/// Files at most this large go up in one PUT; larger ones in parts.
const SINGLE_PUT_MAX: u64 = 16 << 20;

/// How long a lease holds without renewal, unless `FLEMING_LEASE_SECS` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

fn remote_error(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote(format!("{what}: {e}"))
}

/// A connection to the remote store.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Taken on drop (see there).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime (the UI's).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

/// An object of the remote, as listed.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Its name relative to the store's prefix.
    pub rel: String,
    /// Its size.
    pub size: u64,
    /// When it was written.
    pub last_modified: DateTime<Utc>,
}

/// An object's bytes and its ETag (its version, for a conditional update).
pub type Fetched = (Vec<u8>, Option<String>);

/// How a conditional write went.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Written; the new version's ETag.
    Done(Option<String>),
    /// `PutMode::Create`: an object was already there.
    Exists,
    /// `PutMode::Update`: the object changed since that version.
    Changed,
}

impl Remote {
    /// Connects to `url` (`s3://bucket/prefix`), configured from the environment.
    pub fn connect(url: &str) -> Result<Remote, StoreError> {
        Self::connect_with(url, &[])
    }

    /// Connects to `url`, configured from the environment and then `options` (`object_store`
    /// S3 keys such as `aws_endpoint_url`, or the variables' names).
    pub fn connect_with(url: &str, options: &[(&str, String)]) -> Result<Remote, StoreError> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(StoreError::Format(format!(
                "{url}: a remote store is `s3://bucket/prefix` (any S3-compatible service; set AWS_ENDPOINT_URL for one that is not AWS)"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Format(format!("{url}: no bucket name")));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let key = key.to_ascii_lowercase().parse().map_err(|e| remote_error(key, e))?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| remote_error(url, e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fleming-remote")
            .enable_all()
            .build()
            .map_err(|e| remote_error("starting the remote store's I/O threads", e))?;
        Ok(Remote {
            url: url.to_string(),
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_string(),
            runtime: Some(runtime),
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() { ObjPath::from(rel) } else { ObjPath::from(format!("{}/{rel}", self.prefix)) }
    }

    fn rel_of(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        match s.strip_prefix(&self.prefix) {
            Some(r) if !self.prefix.is_empty() => r.trim_start_matches('/').to_string(),
            _ => s.to_string(),
        }
    }

    /// Runs a future to completion, also from inside another runtime (the UI's).
    fn block<F: Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        let Some(runtime) = &self.runtime else { unreachable!("the runtime is only taken on drop") };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| match s.spawn(|| runtime.block_on(f)).join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            runtime.block_on(f)
        }
    }

    /// Whether an object exists.
    pub fn exists(&self, rel: &str) -> Result<bool, StoreError> {
        match self.block(self.store.head(&self.path(rel))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(remote_error(format!("{}/{rel}", self.url), e)),
        }
    }

    /// The bytes of an object and its ETag; `None` if absent.
    pub fn get(&self, rel: &str) -> Result<Option<Fetched>, StoreError> {
        let path = self.path(rel);
        let got = self.block(async {
            let r = self.store.get(&path).await?;
            let etag = r.meta.e_tag.clone();
            Ok::<_, object_store::Error>((r.bytes().await?.to_vec(), etag))
        });
        match got {
            Ok(v) => Ok(Some(v)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_error(format!("{}/{rel}", self.url), e)),
        }
    }

    /// Downloads an object to `dest` (through a temporary file in `tmp_dir`, renamed into
    /// place). `false` if it is absent.
    pub fn download(&self, rel: &str, dest: &Path, tmp_dir: &Path) -> Result<bool, StoreError> {
        use futures::StreamExt;
        use std::io::Write;
        let tmp = tmp_dir.join(unique_name("download"));
        let path = self.path(rel);
        let result = self.block(async {
            let r = match self.store.get(&path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(remote_error(format!("{}/{rel}", self.url), e)),
            };
            let mut file = std::fs::File::create(&tmp).map_err(|e| remote_error(tmp.display(), e))?;
            let mut stream = r.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| remote_error(format!("{}/{rel}", self.url), e))?;
                file.write_all(&chunk).map_err(|e| remote_error(tmp.display(), e))?;
            }
            file.sync_all().map_err(|e| remote_error(tmp.display(), e))?;
            Ok(true)
        });
        match result {
            Ok(true) => {
                fsutil::rename_durable(&tmp, dest).map_err(|e| remote_error(dest.display(), e))?;
                Ok(true)
            }
            other => {
                let _ = std::fs::remove_file(&tmp);
                other
            }
        }
    }

    /// Uploads a file (overwriting): one PUT, or a multipart upload for large files, so
    /// that the object appears whole or not at all.
    pub fn upload(&self, rel: &str, src: &Path) -> Result<(), StoreError> {
        use std::io::Read;
        let len = std::fs::metadata(src).map_err(|e| remote_error(src.display(), e))?.len();
        let path = self.path(rel);
        let what = || format!("uploading {} to {}/{rel}", src.display(), self.url);
        if len <= SINGLE_PUT_MAX {
            let bytes = std::fs::read(src).map_err(|e| remote_error(src.display(), e))?;
            self.block(self.store.put(&path, PutPayload::from(bytes))).map_err(|e| remote_error(what(), e))?;
            return Ok(());
        }
        let mut file = std::fs::File::open(src).map_err(|e| remote_error(src.display(), e))?;
        self.block(async {
            let upload = self.store.put_multipart(&path).await?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
            let mut buf = vec![0u8; 8 << 20];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        writer.abort().await?;
                        return Err(object_store::Error::Generic { store: "file", source: Box::new(e) });
                    }
                };
                writer.wait_for_capacity(4).await?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map(|_| ())
        })
        .map_err(|e| remote_error(what(), e))
    }

    /// Writes bytes with a mode: overwrite, create only if absent, or update only the
    /// given version.
    pub fn put(&self, rel: &str, bytes: Vec<u8>, mode: PutMode) -> Result<Written, StoreError> {
        let opts = PutOptions { mode, ..Default::default() };
        match self.block(self.store.put_opts(&self.path(rel), PutPayload::from(bytes), opts)) {
            Ok(r) => Ok(Written::Done(r.e_tag)),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Written::Exists),
            Err(object_store::Error::Precondition { .. }) => Ok(Written::Changed),
            Err(e) => Err(remote_error(format!("writing {}/{rel}", self.url), e)),
        }
    }

    /// Deletes an object (absent is fine).
    pub fn delete(&self, rel: &str) -> Result<(), StoreError> {
        match self.block(self.store.delete(&self.path(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_error(format!("deleting {}/{rel}", self.url), e)),
        }
    }

    /// Every object under a directory (`runs`, `objects/ab`, …), recursively.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        use futures::TryStreamExt;
        let prefix = self.path(dir.trim_end_matches('/'));
        let metas: Vec<object_store::ObjectMeta> = self
            .block(self.store.list(Some(&prefix)).try_collect())
            .map_err(|e| remote_error(format!("listing {}/{dir}", self.url), e))?;
        Ok(metas
            .into_iter()
            .map(|m| Listed { rel: self.rel_of(&m.location), size: m.size, last_modified: m.last_modified })
            .collect())
    }

    /// Takes the lease `rel` for `ttl` if it is free or expired; `None` if another holds it.
    pub fn try_lease(self: &Arc<Self>, rel: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let owner = format!("{}:{}", hostname(), unique_name("lease"));
        let body = move |owner: &str| -> Vec<u8> {
            let until = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(60));
            serde_json::to_vec(&LeaseBody { owner: owner.to_string(), expires_at: until }).unwrap_or_default()
        };
        let mut etag = match self.put(rel, body(&owner), PutMode::Create)? {
            Written::Done(etag) => etag,
            Written::Changed => return Ok(None),
            Written::Exists => {
                let Some((bytes, etag)) = self.get(rel)? else { return Ok(None) };
                let expired =
                    serde_json::from_slice::<LeaseBody>(&bytes).map(|b| b.expires_at < Utc::now()).unwrap_or(true);
                if !expired {
                    return Ok(None);
                }
                // The holder died (or stalled past its lease): take over, unless another
                // process does first.
                let version = UpdateVersion { e_tag: etag, version: None };
                match self.put(rel, body(&owner), PutMode::Update(version))? {
                    Written::Done(etag) => etag,
                    _ => return Ok(None),
                }
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (remote, rel, stop, lost) = (self.clone(), rel.to_string(), stop.clone(), lost.clone());
            std::thread::Builder::new()
                .name("fleming-lease".into())
                .spawn(move || {
                    let every = ttl / 3;
                    let mut waited = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        waited += Duration::from_millis(50);
                        if waited < every {
                            continue;
                        }
                        waited = Duration::ZERO;
                        let version = UpdateVersion { e_tag: etag.clone(), version: None };
                        match remote.put(&rel, body(&owner), PutMode::Update(version)) {
                            Ok(Written::Done(e)) => etag = e,
                            Ok(_) => {
                                tracing::warn!("lost the lease {rel}: another process took it over");
                                lost.store(true, Ordering::Relaxed);
                                return;
                            }
                            // A network blip: try again at the next turn.
                            Err(e) => tracing::warn!("renewing the lease {rel}: {e}"),
                        }
                    }
                })
                .map_err(|e| remote_error("starting the lease renewer", e))?
        };
        Ok(Some(Lease { remote: self.clone(), rel: rel.to_string(), stop, lost, renewer: Mutex::new(Some(renewer)) }))
    }
}

#[derive(Serialize, Deserialize)]
struct LeaseBody {
    owner: String,
    expires_at: DateTime<Utc>,
}

/// A lease on a remote object, renewed in the background and released on drop.
pub struct Lease {
    remote: Arc<Remote>,
    rel: String,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    renewer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.rel)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.renewer.lock().ok().and_then(|mut g| g.take()) {
            let _ = h.join();
        }
        if !self.lost.load(Ordering::Relaxed) {
            let _ = self.remote.delete(&self.rel);
        }
    }
}

/// The lease time: `FLEMING_LEASE_SECS`, else [`DEFAULT_LEASE`].
pub fn lease_ttl() -> Duration {
    std::env::var("FLEMING_LEASE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LEASE)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "host".into())
}

/// The relative name (with `/`) of a path under `root`.
pub fn rel_name(root: &Path, path: &Path) -> Option<String> {
    let rel: PathBuf = path.strip_prefix(root).ok()?.to_path_buf();
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}
