//! The content-addressed store: `.fleming/` beside the pipeline file.
//!
//! ```text
//! .fleming/
//!   STORE                 format marker
//!   store.lock            shared by runs, exclusive for gc
//!   objects/ab/<62 hex>.parquet   tables (canonical Parquet, zstd), read-only
//!   objects/ab/<62 hex>.tree/     directories (models), hashed as trees
//!   cache/ab/<62 hex>.json        stage key -> outputs (the cache entry)
//!   refs/<pipeline>/<stage>.json  what each stage of a pipeline currently points at
//!   checks/ab/<62 hex>.json       data-check results by (stage key, check definition)
//!   runs/<run id>.json            one manifest per executed stage
//!   memo/<op>/*.seg               record memo segments
//!   work/<stage key>/             durable per-stage work and checkpoint directories
//!   locks/<stage key>.lock        held while a stage key is being computed
//!   tmp/<pid>-...                 in-flight writes; leftovers of dead processes are removed
//!   quarantine/                   objects that failed verification
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::PutMode;
use serde::{Deserialize, Serialize};

use crate::remote::{Lease, Remote};

use crate::digest::{Digest, digest_file};
use crate::fsutil::{self, pid_alive, pid_of_name, rename_durable, unique_name};
use crate::table::{SchemaSummary, Table, TableError};

/// Version of the on-disk layout.
pub const STORE_FORMAT: &str = "fleming-store 1";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A table could not be encoded or decoded.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The directory is not a fleming store of a format we know.
    #[error("{0}")]
    Format(String),
    /// An object is missing or quarantined.
    #[error("object {0} is missing from the store (deleted, or quarantined by `fleming verify`)")]
    Missing(Digest),
    /// The remote store failed (network, credentials, service).
    #[error("remote store: {0}")]
    Remote(String),
}

/// Attach a path to an io::Error.
pub trait IoContext<T> {
    /// Adds the path to the error.
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io { path: path.to_path_buf(), source })
    }
}

/// What kind of object an artifact is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A table, stored as canonical Parquet.
    Table,
    /// A directory (a model), stored as a tree.
    Tree,
}

/// A reference to an object in the store, with what is worth knowing without opening it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// Table or tree.
    pub kind: ArtifactKind,
    /// Content digest.
    pub digest: Digest,
    /// Rows, for tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Size in bytes (for trees, the sum of file sizes).
    pub bytes: u64,
    /// Schema, for tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaSummary>,
}

/// A handle on a store directory, and on the remote store it caches, if any
/// ([`crate::remote`]).
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    remote: Option<Arc<Remote>>,
}

/// The listing of a tree object on a remote store, written after its files.
#[derive(Serialize, Deserialize)]
struct TreeListing {
    files: Vec<TreeFile>,
}

#[derive(Serialize, Deserialize)]
struct TreeFile {
    path: String,
    executable: bool,
}

/// The lock of a stage key: a file lock on this machine, and on a remote store a lease
/// that other machines respect. Released on drop.
#[derive(Debug)]
pub struct KeyLock {
    // Dropped in this order: the lease first.
    _lease: Option<Lease>,
    _file: FileLock,
}

const SUBDIRS: &[&str] =
    &["objects", "cache", "refs", "runs", "memo", "work", "checkpoints", "locks", "tmp", "quarantine", "checks"];

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes temporary files left by
    /// processes that are no longer running.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(root).at(root)?;
        let root = root.canonicalize().at(root)?;
        let marker = root.join("STORE");
        match fs::read_to_string(&marker) {
            Ok(s) if s.trim() == STORE_FORMAT => {}
            Ok(s) => {
                return Err(StoreError::Format(format!(
                    "{} is a store of format {:?}; this fleming understands {:?}",
                    root.display(),
                    s.trim(),
                    STORE_FORMAT
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                for d in SUBDIRS {
                    fs::create_dir_all(root.join(d)).at(&root.join(d))?;
                }
                fsutil::write_atomic(&marker, &root.join("tmp"), format!("{STORE_FORMAT}\n").as_bytes()).at(&marker)?;
            }
            Err(e) => return Err(StoreError::Io { path: marker, source: e }),
        }
        for d in SUBDIRS {
            fs::create_dir_all(root.join(d)).at(&root.join(d))?;
        }
        let store = Store { root, remote: None };
        store.clean_dead_tmp();
        Ok(store)
    }

    /// Opens the remote store at `url` (`s3://bucket/prefix`), with the local store at
    /// `cache` as its cache. Creates the remote store if the prefix is empty.
    pub fn open_remote(cache: &Path, url: &str) -> Result<Store, StoreError> {
        let mut store = Store::open(cache)?;
        let remote = Arc::new(Remote::connect(url)?);
        match remote.get("STORE")? {
            Some((bytes, _)) if String::from_utf8_lossy(&bytes).trim() == STORE_FORMAT => {}
            Some((bytes, _)) => {
                return Err(StoreError::Format(format!(
                    "{url} is a store of format {:?}; this fleming understands {STORE_FORMAT:?}",
                    String::from_utf8_lossy(&bytes).trim()
                )));
            }
            None => {
                remote.put("STORE", format!("{STORE_FORMAT}\n").into_bytes(), PutMode::Create)?;
            }
        }
        store.remote = Some(remote);
        Ok(store)
    }

    /// The remote store this one caches, if any.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Where the store is, for messages: its URL, or its directory.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(r) => r.url().to_string(),
            None => self.root.display().to_string(),
        }
    }

    /// The name of a path of the store relative to its root, as on the remote.
    pub fn rel(&self, path: &Path) -> Option<String> {
        crate::remote::rel_name(&self.root, path)
    }

    /// Downloads the files of a directory of the remote store (`runs`, `refs`, `memo/x`)
    /// that this machine lacks or has shorter (memo segments grow); returns how many.
    pub fn pull_dir(&self, dir: &str) -> Result<usize, StoreError> {
        let Some(r) = &self.remote else { return Ok(0) };
        let mut n = 0;
        for item in r.list(dir)? {
            let local = self.root.join(&item.rel);
            if fs::metadata(&local).is_ok_and(|m| m.len() >= item.size) {
                continue;
            }
            if r.download(&item.rel, &local, &self.tmp_dir())? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Uploads the files of a local directory that the remote lacks or has of another
    /// size (memo segments, after a stage wrote to them); returns how many.
    pub fn push_dir(&self, dir: &str) -> Result<usize, StoreError> {
        let Some(r) = &self.remote else { return Ok(0) };
        let local = self.root.join(dir);
        if !local.is_dir() {
            return Ok(0);
        }
        let remote: std::collections::HashMap<String, u64> =
            r.list(dir)?.into_iter().map(|l| (l.rel, l.size)).collect();
        let mut n = 0;
        for f in walk_files(&local)? {
            let Some(rel) = self.rel(&f) else { continue };
            let len = fs::metadata(&f).at(&f)?.len();
            if remote.get(&rel) != Some(&len) {
                r.upload(&rel, &f)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Uploads one file written under the store (a manifest's metrics); nothing without a
    /// remote.
    pub fn publish(&self, path: &Path) -> Result<(), StoreError> {
        match (&self.remote, self.rel(path)) {
            (Some(r), Some(rel)) => r.upload(&rel, path),
            _ => Ok(()),
        }
    }
    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A subdirectory of the root (`objects`, `runs`, ...).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Where in-flight files go.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, empty temporary directory owned by this process.
    pub fn new_tmp_dir(&self, label: &str) -> Result<PathBuf, StoreError> {
        let p = self.tmp_dir().join(unique_name(label));
        fs::create_dir_all(&p).at(&p)?;
        Ok(p)
    }

    /// Removes temporary files and directories whose writer process is gone.
    pub fn clean_dead_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let dead = pid_of_name(&name).map(|pid| !pid_alive(pid)).unwrap_or(false);
            if dead {
                let p = e.path();
                let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            }
        }
    }

    /// Path of an object.
    pub fn object_path(&self, kind: ArtifactKind, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        let ext = match kind {
            ArtifactKind::Table => "parquet",
            ArtifactKind::Tree => "tree",
        };
        self.root.join("objects").join(&hex[..2]).join(format!("{}.{ext}", &hex[2..]))
    }

    /// The name of an object on the remote (a tree's listing is this plus `.json`).
    pub fn object_rel(kind: ArtifactKind, digest: &Digest) -> String {
        let hex = digest.hex();
        let ext = match kind {
            ArtifactKind::Table => "parquet",
            ArtifactKind::Tree => "tree",
        };
        format!("objects/{}/{}.{ext}", &hex[..2], &hex[2..])
    }

    /// Whether the object is present (not deleted, not quarantined), here or on the
    /// remote. A remote that cannot be reached counts as not having it (with a warning):
    /// the stage recomputes rather than fails.
    pub fn has(&self, aref: &ArtifactRef) -> bool {
        if self.object_path(aref.kind, &aref.digest).exists() {
            return true;
        }
        let Some(r) = &self.remote else { return false };
        let rel = Self::object_rel(aref.kind, &aref.digest);
        let marker = match aref.kind {
            ArtifactKind::Table => rel,
            ArtifactKind::Tree => format!("{rel}.json"),
        };
        r.exists(&marker).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            false
        })
    }

    /// The local path of an object, downloading it from the remote store first if this
    /// machine does not have it yet.
    pub fn fetch(&self, kind: ArtifactKind, digest: &Digest) -> Result<PathBuf, StoreError> {
        let dest = self.object_path(kind, digest);
        if dest.exists() {
            return Ok(dest);
        }
        let Some(r) = &self.remote else { return Err(StoreError::Missing(*digest)) };
        let rel = Self::object_rel(kind, digest);
        match kind {
            ArtifactKind::Table => {
                if !r.download(&rel, &dest, &self.tmp_dir())? {
                    return Err(StoreError::Missing(*digest));
                }
                set_readonly(&dest);
            }
            ArtifactKind::Tree => {
                let Some((dir, got)) = self.download_tree(digest)? else {
                    return Err(StoreError::Missing(*digest));
                };
                if got != *digest {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(StoreError::Remote(format!(
                        "{}/{rel}: downloaded tree has digest {}, not {} (run `fleming verify`)",
                        r.url(),
                        got.short(12),
                        digest.short(12)
                    )));
                }
                if dest.exists() {
                    let _ = fs::remove_dir_all(&dir);
                } else {
                    rename_durable(&dir, &dest).at(&dest)?;
                }
            }
        }
        Ok(dest)
    }

    /// Downloads a tree object of the remote store into a fresh temporary directory;
    /// returns it with the digest of what arrived, `None` if the remote has no such tree.
    pub fn download_tree(&self, digest: &Digest) -> Result<Option<(PathBuf, Digest)>, StoreError> {
        let Some(r) = &self.remote else { return Ok(None) };
        let rel = Self::object_rel(ArtifactKind::Tree, digest);
        let Some((bytes, _)) = r.get(&format!("{rel}.json"))? else { return Ok(None) };
        let listing: TreeListing =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Remote(format!("{}/{rel}.json: {e}", r.url())))?;
        let dir = self.new_tmp_dir("tree")?;
        let fail = |why: String| {
            let _ = fs::remove_dir_all(&dir);
            Err(StoreError::Remote(format!("{}/{rel}: {why}", r.url())))
        };
        for f in &listing.files {
            if f.path.split('/').any(|c| c == ".." || c.is_empty()) {
                return fail(format!("unsafe file name `{}`", f.path));
            }
            let local = dir.join(&f.path);
            if !r.download(&format!("{rel}/{}", f.path), &local, &self.tmp_dir())? {
                return fail(format!("file `{}` is missing", f.path));
            }
            if f.executable {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&local, fs::Permissions::from_mode(0o755)).at(&local)?;
            }
        }
        let (got, _) = digest_tree(&dir)?;
        Ok(Some((dir, got)))
    }

    /// Uploads an object to the remote store unless it is there already.
    fn push_object(&self, kind: ArtifactKind, digest: &Digest) -> Result<(), StoreError> {
        let Some(r) = &self.remote else { return Ok(()) };
        let rel = Self::object_rel(kind, digest);
        let path = self.object_path(kind, digest);
        match kind {
            ArtifactKind::Table => {
                if !r.exists(&rel)? {
                    r.upload(&rel, &path)?;
                }
            }
            ArtifactKind::Tree => {
                let listing_rel = format!("{rel}.json");
                if r.exists(&listing_rel)? {
                    return Ok(());
                }
                let mut files = Vec::new();
                for f in walk_files(&path)? {
                    use std::os::unix::fs::PermissionsExt;
                    let Some(name) = crate::remote::rel_name(&path, &f) else { continue };
                    r.upload(&format!("{rel}/{name}"), &f)?;
                    let executable = fs::metadata(&f).at(&f)?.permissions().mode() & 0o111 != 0;
                    files.push(TreeFile { path: name, executable });
                }
                // The listing last: a tree is on the remote once its listing is.
                let bytes =
                    serde_json::to_vec(&TreeListing { files }).map_err(|e| StoreError::Format(e.to_string()))?;
                r.put(&listing_rel, bytes, PutMode::Overwrite)?;
            }
        }
        Ok(())
    }

    /// Stores a table; returns its reference. Writing the same content twice is a no-op.
    pub fn put_table(&self, table: &Table) -> Result<ArtifactRef, StoreError> {
        let tmp = self.tmp_dir().join(unique_name("table.parquet"));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp).at(&tmp)?;
        let written = table.write_parquet(io::BufWriter::with_capacity(1 << 20, file));
        let (buf, digest, bytes) = match written {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        let file = buf.into_inner().map_err(|e| e.into_error()).at(&tmp)?;
        file.sync_all().at(&tmp)?;
        drop(file);
        let dest = self.object_path(ArtifactKind::Table, &digest);
        if dest.exists() {
            let _ = fs::remove_file(&tmp);
        } else {
            set_readonly(&tmp);
            rename_durable(&tmp, &dest).at(&dest)?;
        }
        self.push_object(ArtifactKind::Table, &digest)?;
        Ok(ArtifactRef {
            kind: ArtifactKind::Table,
            digest,
            rows: Some(table.num_rows() as u64),
            bytes,
            schema: Some(table.schema_summary()),
        })
    }

    /// Stores a Parquet file produced elsewhere (e.g. by a worker) in canonical form.
    pub fn put_parquet_file(&self, path: &Path) -> Result<ArtifactRef, StoreError> {
        let table = Table::read_parquet(path)?;
        self.put_table(&table)
    }

    /// Reads a stored table.
    pub fn read_table(&self, aref: &ArtifactRef) -> Result<Table, StoreError> {
        self.read_table_columns(aref, None)
    }

    /// Reads a table object, only the named columns if given.
    pub fn read_table_columns(&self, aref: &ArtifactRef, columns: Option<&[&str]>) -> Result<Table, StoreError> {
        let p = self.fetch(ArtifactKind::Table, &aref.digest)?;
        Ok(Table::read_parquet_columns(&p, columns)?)
    }

    /// Moves a directory into the store as a tree object; returns its reference.
    pub fn put_tree(&self, dir: &Path) -> Result<ArtifactRef, StoreError> {
        let (digest, bytes) = digest_tree(dir)?;
        let dest = self.object_path(ArtifactKind::Tree, &digest);
        if dest.exists() {
            let _ = fs::remove_dir_all(dir);
        } else {
            // Sync every file before the rename makes the tree visible.
            for f in walk_files(dir)? {
                File::open(&f).and_then(|h| h.sync_all()).at(&f)?;
            }
            rename_durable(dir, &dest).at(&dest)?;
        }
        self.push_object(ArtifactKind::Tree, &digest)?;
        Ok(ArtifactRef { kind: ArtifactKind::Tree, digest, rows: None, bytes, schema: None })
    }

    /// Moves an object to `quarantine/`, with the reason beside it.
    pub fn quarantine(&self, kind: ArtifactKind, digest: &Digest, reason: &str) -> Result<PathBuf, StoreError> {
        let src = self.object_path(kind, digest);
        let name = src.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let dest = self.root.join("quarantine").join(format!("{}{}", &digest.hex()[..2], name));
        rename_durable(&src, &dest).at(&dest)?;
        let note = dest.with_extension("reason.txt");
        fsutil::write_atomic(&note, &self.tmp_dir(), reason.as_bytes()).at(&note)?;
        Ok(dest)
    }

    /// Writes a JSON file under the store atomically, and to the remote store: cache
    /// entries only if the key has none there yet (the first machine's stands), the rest
    /// (refs, manifests, check results) over what is there.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StoreError> {
        fsutil::write_json_atomic(path, &self.tmp_dir(), value).at(path)?;
        if let (Some(r), Some(rel)) = (&self.remote, self.rel(path)) {
            let bytes = fs::read(path).at(path)?;
            let mode = if rel.starts_with("cache/") { PutMode::Create } else { PutMode::Overwrite };
            r.put(&rel, bytes, mode)?;
        }
        Ok(())
    }

    /// Reads a JSON file under the store; `None` if absent. With a remote store, refs
    /// (which change) are read from it every time, everything else (written once) only
    /// when this machine lacks it, and kept.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        let local = fsutil::read_json(path).at(path)?;
        let (Some(r), Some(rel)) = (&self.remote, self.rel(path)) else { return Ok(local) };
        if local.is_some() && !rel.starts_with("refs/") {
            return Ok(local);
        }
        let Some((bytes, _)) = r.get(&rel)? else { return Ok(local) };
        fsutil::write_atomic(path, &self.tmp_dir(), &bytes).at(path)?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Remote(format!("{}/{rel}: {e}", r.url())))
    }

    /// Path of the cache entry of a stage key.
    pub fn cache_entry_path(&self, key: &Digest) -> PathBuf {
        let hex = key.hex();
        self.root.join("cache").join(&hex[..2]).join(format!("{}.json", &hex[2..]))
    }

    /// The durable work directory of a stage key (created on demand).
    pub fn work_dir(&self, key: &Digest) -> Result<PathBuf, StoreError> {
        let p = self.root.join("work").join(key.hex());
        fs::create_dir_all(&p).at(&p)?;
        Ok(p)
    }

    /// Takes the store lock: shared for runs, exclusive for gc. Blocks until granted.
    pub fn lock_store(&self, exclusive: bool) -> Result<FileLock, StoreError> {
        FileLock::acquire(&self.root.join("store.lock"), exclusive)
    }

    /// Tries to take the exclusive lock of a stage key without waiting; `None` if another
    /// process (on a remote store: of any machine) holds it.
    pub fn try_lock_key(&self, key: &Digest) -> Result<Option<KeyLock>, StoreError> {
        let Some(file) = FileLock::try_acquire(&self.root.join("locks").join(format!("{}.lock", key.hex())))? else {
            return Ok(None);
        };
        let lease = match &self.remote {
            Some(r) => match r.try_lease(&format!("locks/{}.lease", key.hex()), crate::remote::lease_ttl())? {
                Some(l) => Some(l),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(KeyLock { _lease: lease, _file: file }))
    }

    /// Takes the exclusive lock of a stage key, waiting for another process to release it.
    pub fn lock_key(&self, key: &Digest) -> Result<KeyLock, StoreError> {
        loop {
            if let Some(l) = self.try_lock_key(key)? {
                return Ok(l);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

fn set_readonly(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mut perms = meta.permissions();
        perms.set_readonly(true);
        let _ = fs::set_permissions(path, perms);
    }
}

/// An OS file lock, released on drop (and by the OS if the process dies).
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    fn open(path: &Path) -> Result<File, StoreError> {
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).at(path)
    }

    /// Blocks until the lock is granted.
    pub fn acquire(path: &Path, exclusive: bool) -> Result<FileLock, StoreError> {
        let file = Self::open(path)?;
        if exclusive { file.lock() } else { file.lock_shared() }.at(path)?;
        Ok(FileLock { file })
    }

    /// Takes the exclusive lock if free.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>, StoreError> {
        let file = Self::open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::Io { path: path.to_path_buf(), source: e }),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// All regular files under `dir`, sorted by path.
pub fn walk_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).at(&d)? {
            let e = e.at(&d)?;
            let ft = e.file_type().at(&e.path())?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            } else {
                return Err(StoreError::Format(format!(
                    "{}: only regular files and directories can be stored (found a link or special file)",
                    e.path().display()
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Names of the files a Hugging Face model directory needs besides its weights.
pub const MODEL_METADATA_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
];

/// The files of a Hugging Face model directory that a model is made of: its configuration
/// and tokenizer files ([`MODEL_METADATA_FILES`]), its safetensors weights and their index.
/// READMEs, licences, other weight formats and subdirectories are left out. Symbolic links
/// are followed (the Hugging Face cache links snapshots to blobs). Sorted by name.
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().to_string();
        let wanted = MODEL_METADATA_FILES.contains(&name.as_str())
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json");
        if wanted && fs::metadata(e.path()).at(&e.path())?.is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Digest of some files of a directory, as [`digest_tree`] would give for a directory
/// holding only them (none executable). Returns the digest and their total size.
pub fn digest_files(dir: &Path, files: &[PathBuf]) -> Result<(Digest, u64), StoreError> {
    let mut listing = String::new();
    let mut bytes = 0u64;
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(f).to_string_lossy().replace('\\', "/");
        bytes += fs::metadata(f).at(f)?.len();
        let d = digest_file(f).at(f)?;
        listing.push_str(&format!("{rel}\0-\0{d}\n"));
    }
    Ok((Digest::of_parts("fleming-tree-v1", [listing.as_bytes()]), bytes))
}

/// Digest of a directory tree: BLAKE3 over the sorted list of (relative path, executable
/// bit, file digest). Returns the digest and the total size of the files.
pub fn digest_tree(dir: &Path) -> Result<(Digest, u64), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mut listing = String::new();
    let mut bytes = 0u64;
    for f in walk_files(dir)? {
        let rel = f.strip_prefix(dir).unwrap_or(&f).to_string_lossy().replace('\\', "/");
        let meta = fs::metadata(&f).at(&f)?;
        bytes += meta.len();
        let exec = meta.permissions().mode() & 0o111 != 0;
        let d = digest_file(&f).at(&f)?;
        listing.push_str(&format!("{rel}\0{}\0{d}\n", if exec { "x" } else { "-" }));
    }
    Ok((Digest::of_parts("fleming-tree-v1", [listing.as_bytes()]), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::table_from_columns;
    use arrow::array::{ArrayRef, StringArray};
    use std::sync::Arc;

    #[test]
    fn put_and_read_table_and_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a: ArrayRef = Arc::new(StringArray::from(vec!["x", "y"]));
        let t = table_from_columns(vec![("id", a)]).unwrap();
        let r1 = store.put_table(&t).unwrap();
        let r2 = store.put_table(&t).unwrap();
        assert_eq!(r1, r2);
        assert!(store.has(&r1));
        assert_eq!(store.read_table(&r1).unwrap().num_rows(), 2);

        let model = store.new_tmp_dir("model").unwrap();
        fs::write(model.join("config.json"), "{}").unwrap();
        fs::create_dir(model.join("sub")).unwrap();
        fs::write(model.join("sub/w.bin"), [1u8, 2, 3]).unwrap();
        let (expected, _) = digest_tree(&model).unwrap();
        let tr = store.put_tree(&model).unwrap();
        assert_eq!(tr.digest, expected);
        assert!(store.object_path(ArtifactKind::Tree, &tr.digest).join("sub/w.bin").exists());
        assert!(!model.exists());
    }

    #[test]
    fn stale_tmp_of_dead_process_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // pid 4194304 is above Linux's pid_max default: never alive.
        let stale = store.tmp_dir().join("4194304-1-half.parquet");
        fs::write(&stale, b"half").unwrap();
        let mine = store.tmp_dir().join(unique_name("mine"));
        fs::write(&mine, b"live").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(mine.exists());
        drop(store);
    }
}
