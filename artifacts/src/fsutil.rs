//! Crash-safe file operations: write to a temporary file, fsync, rename, fsync the directory.
//!
//! A reader never sees a half-written file: either the old content or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call: `<pid>-<nonce>-<label>`. The pid lets a later
/// run tell leftovers of dead processes from files a live run is still writing.
pub fn unique_name(label: &str) -> String {
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{:x}{:x}-{}", std::process::id(), n, t, sanitize(label))
}

/// Replaces characters that do not belong in a file name.
pub fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .take(80)
        .collect()
}

/// The pid encoded at the start of a name made by [`unique_name`].
pub fn pid_of_name(name: &str) -> Option<u32> {
    name.split('-').next()?.parse().ok()
}

/// Whether a process with this pid is alive (on this host).
pub fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // kill(pid, 0) checks for existence without sending anything.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// fsync a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dest` atomically, with a temporary file in `tmp_dir` (same filesystem).
pub fn write_atomic(dest: &Path, tmp_dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_dir.join(unique_name(dest.file_name().and_then(|s| s.to_str()).unwrap_or("file")));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        rename_durable(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` to `to` and fsyncs the destination directory.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(from, to)?;
    if let Some(parent) = to.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Writes JSON atomically (pretty-printed so that people can read store files).
pub fn write_json_atomic<T: serde::Serialize>(dest: &Path, tmp_dir: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(dest, tmp_dir, &bytes)
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A temporary path for writing a file next to `dest` (same directory, so the final rename is
/// atomic), e.g. for exports to a user's path.
pub fn sibling_tmp(dest: &Path) -> PathBuf {
    let name = dest.file_name().and_then(|s| s.to_str()).unwrap_or("file");
    dest.with_file_name(format!(".{}.fleming-tmp", unique_name(name)))
}
