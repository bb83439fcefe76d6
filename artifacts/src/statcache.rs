//! A stat cache for input files: content digests keyed by path and
//! (size, mtime, ctime, inode, device), so unchanged files are not rehashed on every run.
//!
//! A file edited in place changes its mtime and ctime; a file replaced by another
//! changes its inode. Restoring an old mtime (`touch -d`) still moves ctime, which only
//! the kernel sets, so that is caught too. An entry recorded within [`RACY_WINDOW`] of the
//! file's mtime is not trusted (the file may have changed again within the timestamp's
//! granularity, as git's "racy clean" problem); such files are rehashed until they age.
//! Directories are cached by the stats of every file under them.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, digest_file};
use crate::store::{IoContext, Store, StoreError, digest_files, digest_tree, model_files, walk_files};

/// Entries closer than this to the file's mtime are rehashed.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    /// Stamps of the file, or of every file under a directory (sorted by path).
    stamps: Vec<(String, Stamp)>,
    digest: Digest,
    bytes: u64,
    recorded_ns: i128,
}

/// The cache, loaded from and saved to `stat-cache.json` in the store.
pub struct StatCache {
    path: PathBuf,
    tmp: PathBuf,
    entries: Mutex<HashMap<PathBuf, Entry>>,
    dirty: Mutex<bool>,
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

impl StatCache {
    /// Loads the cache of a store (empty if absent or unreadable).
    pub fn open(store: &Store) -> StatCache {
        let path = store.root().join("stat-cache.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<(PathBuf, Entry)>>(&b).ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        StatCache { path, tmp: store.tmp_dir(), entries: Mutex::new(entries), dirty: Mutex::new(false) }
    }

    /// A cache that is not saved (tests, the harness).
    pub fn ephemeral() -> StatCache {
        StatCache {
            path: PathBuf::new(),
            tmp: PathBuf::new(),
            entries: Mutex::new(HashMap::new()),
            dirty: Mutex::new(false),
        }
    }

    fn stamps(path: &Path) -> Result<Vec<(String, Stamp)>, StoreError> {
        let meta = std::fs::metadata(path).at(path)?;
        if meta.is_dir() {
            let mut out = Vec::new();
            for f in walk_files(path)? {
                let m = std::fs::metadata(&f).at(&f)?;
                out.push((f.strip_prefix(path).unwrap_or(&f).to_string_lossy().to_string(), Stamp::of(&m)));
            }
            Ok(out)
        } else {
            Ok(vec![(String::new(), Stamp::of(&meta))])
        }
    }

    /// The content digest (tree digest for a directory) and size of `path`, rehashing
    /// only when its stats changed.
    pub fn digest(&self, path: &Path) -> Result<(Digest, u64), StoreError> {
        let abs = path.canonicalize().at(path)?;
        self.cached(
            abs.clone(),
            || Self::stamps(&abs),
            |stamps| {
                if std::fs::metadata(&abs).at(&abs)?.is_dir() {
                    digest_tree(&abs)
                } else {
                    Ok((digest_file(&abs).at(&abs)?, stamps.first().map(|(_, s)| s.size).unwrap_or(0)))
                }
            },
        )
    }

    /// The digest of a Hugging Face model directory's model files ([`model_files`]), as
    /// [`digest_files`] gives it, rehashing only when one of them changed (their stamps are
    /// taken through symbolic links). Other files of the directory do not matter.
    pub fn digest_model_dir(&self, dir: &Path) -> Result<(Digest, u64), StoreError> {
        let abs = dir.canonicalize().at(dir)?;
        let files = model_files(&abs)?;
        let stamps = || -> Result<Vec<(String, Stamp)>, StoreError> {
            let mut stamps = Vec::with_capacity(files.len());
            for f in &files {
                let m = std::fs::metadata(f).at(f)?;
                stamps.push((f.strip_prefix(&abs).unwrap_or(f).to_string_lossy().to_string(), Stamp::of(&m)));
            }
            Ok(stamps)
        };
        // Keyed apart from a whole-tree digest of the same directory.
        self.cached(abs.join(".fleming-model-files"), stamps, |_| digest_files(&abs, &files))
    }

    /// The digest recorded under `key` when the files' stamps (taken by `stamps`) are the
    /// recorded ones and older than the racy window; else `hash`ed and recorded, unless
    /// the files changed while they were hashed.
    fn cached(
        &self,
        key: PathBuf,
        stamps: impl Fn() -> Result<Vec<(String, Stamp)>, StoreError>,
        hash: impl FnOnce(&[(String, Stamp)]) -> Result<(Digest, u64), StoreError>,
    ) -> Result<(Digest, u64), StoreError> {
        let before = stamps()?;
        let newest_mtime = before.iter().map(|(_, s)| s.mtime_ns).max().unwrap_or(0);
        if let Ok(entries) = self.entries.lock()
            && let Some(e) = entries.get(&key)
            && e.stamps == before
            && e.recorded_ns - newest_mtime > RACY_WINDOW.as_nanos() as i128
        {
            return Ok((e.digest, e.bytes));
        }
        let (digest, bytes) = hash(&before)?;
        if stamps()? == before
            && let Ok(mut entries) = self.entries.lock()
        {
            entries.insert(key, Entry { stamps: before, digest, bytes, recorded_ns: now_ns() });
            if let Ok(mut d) = self.dirty.lock() {
                *d = true;
            }
        }
        Ok((digest, bytes))
    }

    /// Writes the cache back if anything changed (entries for vanished files are dropped).
    pub fn save(&self) -> Result<(), StoreError> {
        if self.path.as_os_str().is_empty() || !self.dirty.lock().map(|d| *d).unwrap_or(false) {
            return Ok(());
        }
        let entries: Vec<(PathBuf, Entry)> = match self.entries.lock() {
            Ok(e) => e
                .iter()
                .filter(|(p, _)| p.exists() || p.parent().is_some_and(|d| d.exists()))
                .map(|(p, e)| (p.clone(), e.clone()))
                .collect(),
            Err(_) => return Ok(()),
        };
        crate::fsutil::write_json_atomic(&self.path, &self.tmp, &entries).at(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_rehashed_and_changes_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, b"one").unwrap();
        let cache = StatCache::open(&store);
        let (d1, _) = cache.digest(&f).unwrap();
        assert_eq!(d1, Digest::of(b"one"));
        // Make the entry old enough to be trusted, then change the content but restore
        // size and mtime: ctime still moves, so the change is caught.
        {
            let mut e = cache.entries.lock().unwrap();
            for v in e.values_mut() {
                v.recorded_ns += 10_000_000_000;
            }
        }
        let meta = std::fs::metadata(&f).unwrap();
        let mtime = meta.modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&f, b"two").unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), mtime);
        let (d2, _) = cache.digest(&f).unwrap();
        assert_eq!(d2, Digest::of(b"two"));
        cache.save().unwrap();
        assert!(StatCache::open(&store).entries.lock().unwrap().contains_key(&f.canonicalize().unwrap()));
    }
}
