//! The record memo: a durable map from record key to result bytes, per operator.
//!
//! Each process appends to segment files of its own (`memo/<op>/<pid>-....seg`), so that
//! several `fleming run`s can memoise the same operator at once without a database lock.
//! Readers see every segment that existed when they opened. Writes are group-committed:
//! an entry is durable (fsynced) at most [`GROUP_COMMIT`] after `put` returns, and at once
//! on [`MemoLog::flush`]. A crash can lose only entries not yet committed; a torn tail is
//! detected by each entry's checksum and ignored.
//!
//! Segment format: the 8-byte magic, then entries
//! `[u32 LE payload length][32-byte key][payload][16-byte BLAKE3 of key and payload]`.
//! A segment closed cleanly gets an index (`.idx`) so readers need not scan it.
//! (Hand-written: the embedded stores we know take a whole-file lock per database, which
//! would make concurrent runs of one operator wait for each other.)

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::fsutil::{self, unique_name};

/// Magic at the start of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"FLMEMO1\n";
const INDEX_MAGIC: &[u8; 8] = b"FLMIDX1\n";
/// Longest committed-entry delay.
pub const GROUP_COMMIT: Duration = Duration::from_secs(1);
/// Largest payload accepted (guards the scanner against garbage lengths).
pub const MAX_PAYLOAD: usize = 1 << 30;
const CHECK_LEN: usize = 16;
const HEADER_LEN: usize = 4 + 32;

#[derive(Clone, Copy, Debug)]
struct Location {
    segment: usize,
    offset: u64,
    len: u32,
}

struct Writer {
    path: PathBuf,
    segment: usize,
    out: BufWriter<File>,
    len: u64,
    entries: Vec<(Digest, u64, u32)>,
    dirty: bool,
    last_sync: Instant,
}

struct Inner {
    dir: PathBuf,
    segments: RwLock<Vec<File>>,
    index: RwLock<HashMap<Digest, Location>>,
    /// Entries written but not yet readable through `segments` (still in the buffer).
    pending: Mutex<HashMap<Digest, Vec<u8>>>,
    writer: Mutex<Option<Writer>>,
    stats: Mutex<MemoStats>,
}

/// Counters of a memo's use in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoStats {
    /// Lookups that found an entry.
    pub hits: u64,
    /// Lookups that found none.
    pub misses: u64,
    /// Entries written.
    pub puts: u64,
    /// Entries skipped because their checksum did not match.
    pub corrupt: u64,
}

/// The memo of one operator, shared by every stage of that operator in this process.
#[derive(Clone)]
pub struct MemoLog {
    inner: Arc<Inner>,
}

/// A problem found in a segment.
#[derive(Debug, Clone)]
pub struct SegmentProblem {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset of the bad entry.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
    /// Whether the segment was closed cleanly (has an index); a torn tail on an unsealed
    /// segment is what a crash leaves, not corruption.
    pub sealed: bool,
}

impl MemoLog {
    /// Opens the memo directory (creating it), indexing every segment in it.
    pub fn open(dir: &Path) -> io::Result<MemoLog> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        names.sort();
        let mut segments = Vec::new();
        let mut index = HashMap::new();
        for path in names {
            let Ok(file) = File::open(&path) else { continue };
            let n = segments.len();
            let entries = match read_index(&path, &file) {
                Some(entries) => entries,
                None => scan_segment(&file, &path, &mut Vec::new())?,
            };
            for (key, offset, len) in entries {
                index.insert(key, Location { segment: n, offset, len });
            }
            segments.push(file);
        }
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            segments: RwLock::new(segments),
            index: RwLock::new(index),
            pending: Mutex::new(HashMap::new()),
            writer: Mutex::new(None),
            stats: Mutex::new(MemoStats::default()),
        });
        spawn_committer(Arc::downgrade(&inner));
        Ok(MemoLog { inner })
    }

    /// Number of entries known.
    pub fn len(&self) -> usize {
        let idx = self.inner.index.read().map(|i| i.len()).unwrap_or(0);
        idx + self.inner.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Whether the memo is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Usage counters.
    pub fn stats(&self) -> MemoStats {
        self.inner.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Looks up a key.
    pub fn get(&self, key: &Digest) -> Option<Vec<u8>> {
        let found = self.lookup(key);
        if let Ok(mut s) = self.inner.stats.lock() {
            if found.is_some() { s.hits += 1 } else { s.misses += 1 }
        }
        found
    }

    /// Whether a sound entry exists for `key`, without counting a hit or a miss (for
    /// planning: which calls a run will have to make).
    pub fn contains(&self, key: &Digest) -> bool {
        self.lookup(key).is_some()
    }

    fn lookup(&self, key: &Digest) -> Option<Vec<u8>> {
        if let Some(v) = self.inner.pending.lock().ok()?.get(key) {
            return Some(v.clone());
        }
        let loc = *self.inner.index.read().ok()?.get(key)?;
        let segments = self.inner.segments.read().ok()?;
        let file = segments.get(loc.segment)?;
        let mut buf = vec![0u8; loc.len as usize + CHECK_LEN];
        file.read_exact_at(&mut buf, loc.offset + HEADER_LEN as u64).ok()?;
        let (payload, check) = buf.split_at(loc.len as usize);
        if checksum(key, payload) != check {
            if let Ok(mut s) = self.inner.stats.lock() {
                s.corrupt += 1;
            }
            tracing::warn!("memo entry {} in {} is corrupt; recomputing it", key.short(12), self.inner.dir.display());
            return None;
        }
        Some(payload.to_vec())
    }

    /// Records a value. It is durable within [`GROUP_COMMIT`], or at [`MemoLog::flush`].
    pub fn put(&self, key: Digest, value: &[u8]) -> io::Result<()> {
        if value.len() > MAX_PAYLOAD {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "memo value larger than 1 GiB"));
        }
        let mut guard = self.inner.writer.lock().map_err(|_| io::Error::other("memo writer poisoned"))?;
        if guard.is_none() {
            *guard = Some(self.new_writer()?);
        }
        let w = guard.as_mut().ok_or_else(|| io::Error::other("memo writer missing"))?;
        let offset = w.len;
        w.out.write_all(&(value.len() as u32).to_le_bytes())?;
        w.out.write_all(&key.0)?;
        w.out.write_all(value)?;
        w.out.write_all(&checksum(&key, value))?;
        w.len += (HEADER_LEN + value.len() + CHECK_LEN) as u64;
        w.entries.push((key, offset, value.len() as u32));
        w.dirty = true;
        if let Ok(mut p) = self.inner.pending.lock() {
            p.insert(key, value.to_vec());
        }
        if let Ok(mut s) = self.inner.stats.lock() {
            s.puts += 1;
        }
        if w.last_sync.elapsed() >= GROUP_COMMIT {
            commit(&self.inner, w)?;
        }
        Ok(())
    }

    fn new_writer(&self) -> io::Result<Writer> {
        let path = self.inner.dir.join(format!("{}.seg", unique_name("memo")));
        let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        file.write_all(SEGMENT_MAGIC)?;
        file.sync_all()?;
        fsutil::sync_dir(&self.inner.dir)?;
        let reader = File::open(&path)?;
        let mut segs = self.inner.segments.write().map_err(|_| io::Error::other("memo poisoned"))?;
        segs.push(reader);
        let segment = segs.len() - 1;
        Ok(Writer {
            path,
            segment,
            out: BufWriter::with_capacity(1 << 20, file),
            len: SEGMENT_MAGIC.len() as u64,
            entries: Vec::new(),
            dirty: false,
            last_sync: Instant::now(),
        })
    }

    /// Makes every entry written so far durable.
    pub fn flush(&self) -> io::Result<()> {
        let mut guard = self.inner.writer.lock().map_err(|_| io::Error::other("memo writer poisoned"))?;
        if let Some(w) = guard.as_mut() {
            commit(&self.inner, w)?;
        }
        Ok(())
    }

    /// Commits, then writes the index of this process's segment so that later readers need
    /// not scan it. Further puts go to a new segment.
    pub fn close(&self) -> io::Result<()> {
        let mut guard = self.inner.writer.lock().map_err(|_| io::Error::other("memo writer poisoned"))?;
        if let Some(mut w) = guard.take() {
            commit(&self.inner, &mut w)?;
            write_index(&w.path, &w.entries, w.len, &self.inner.dir)?;
        }
        Ok(())
    }

    /// The memo's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.writer.lock()
            && let Some(mut w) = guard.take()
        {
            let _ = commit(self, &mut w);
            let _ = write_index(&w.path, &w.entries, w.len, &self.dir);
        }
    }
}

fn commit(inner: &Inner, w: &mut Writer) -> io::Result<()> {
    if !w.dirty {
        return Ok(());
    }
    w.out.flush()?;
    w.out.get_ref().sync_data()?;
    w.dirty = false;
    w.last_sync = Instant::now();
    // Entries are now readable through the segment file: move them from `pending` to the index.
    let mut index = inner.index.write().map_err(|_| io::Error::other("memo poisoned"))?;
    let mut pending = inner.pending.lock().map_err(|_| io::Error::other("memo poisoned"))?;
    for (key, offset, len) in w.entries.iter().rev() {
        if pending.remove(key).is_some() {
            index.insert(*key, Location { segment: w.segment, offset: *offset, len: *len });
        }
    }
    Ok(())
}

/// A background thread that commits dirty writers, so that an entry is durable within
/// [`GROUP_COMMIT`] even if no further `put` comes.
fn spawn_committer(weak: Weak<Inner>) {
    let _ = std::thread::Builder::new().name("memo-commit".into()).spawn(move || {
        loop {
            std::thread::sleep(GROUP_COMMIT / 2);
            let Some(inner) = weak.upgrade() else { return };
            if let Ok(mut guard) = inner.writer.lock()
                && let Some(w) = guard.as_mut()
                && w.dirty
                && w.last_sync.elapsed() >= GROUP_COMMIT / 2
                && let Err(e) = commit(&inner, w)
            {
                tracing::warn!("memo commit failed in {}: {e}", inner.dir.display());
            }
        }
    });
}

fn checksum(key: &Digest, payload: &[u8]) -> [u8; CHECK_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(&key.0);
    h.update(payload);
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK_LEN]);
    out
}

/// Reads a segment entry by entry, verifying checksums. Stops at the first bad entry (a
/// torn tail after a crash, or corruption), which it reports in `problems`.
fn scan_segment(file: &File, path: &Path, problems: &mut Vec<SegmentProblem>) -> io::Result<Vec<(Digest, u64, u32)>> {
    let total = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    r.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != SEGMENT_MAGIC {
        problems.push(SegmentProblem {
            path: path.into(),
            offset: 0,
            message: "not a memo segment".into(),
            sealed: false,
        });
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut offset = 8u64;
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        if offset == total {
            break;
        }
        let sealed = index_path(path).exists();
        let bad = |msg: &str, problems: &mut Vec<SegmentProblem>| {
            problems.push(SegmentProblem { path: path.into(), offset, message: msg.into(), sealed })
        };
        if r.read_exact(&mut header).is_err() {
            bad("truncated entry header", problems);
            break;
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_PAYLOAD || offset + (HEADER_LEN + len + CHECK_LEN) as u64 > total {
            bad("truncated entry", problems);
            break;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&header[4..]);
        let key = Digest(key);
        payload.resize(len + CHECK_LEN, 0);
        r.read_exact(&mut payload)?;
        let (p, check) = payload.split_at(len);
        if checksum(&key, p) != check {
            bad("checksum mismatch", problems);
            break;
        }
        out.push((key, offset, len as u32));
        offset += (HEADER_LEN + len + CHECK_LEN) as u64;
    }
    Ok(out)
}

fn index_path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

fn write_index(segment: &Path, entries: &[(Digest, u64, u32)], seg_len: u64, dir: &Path) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(24 + entries.len() * 44);
    bytes.extend_from_slice(INDEX_MAGIC);
    bytes.extend_from_slice(&seg_len.to_le_bytes());
    for (key, offset, len) in entries {
        bytes.extend_from_slice(&key.0);
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
    }
    let check = blake3::hash(&bytes);
    bytes.extend_from_slice(&check.as_bytes()[..CHECK_LEN]);
    let tmp_dir = dir;
    fsutil::write_atomic(&index_path(segment), tmp_dir, &bytes)
}

/// Reads a segment's index if it exists, is intact and matches the segment's length.
fn read_index(segment: &Path, file: &File) -> Option<Vec<(Digest, u64, u32)>> {
    let bytes = fs::read(index_path(segment)).ok()?;
    if bytes.len() < 16 + CHECK_LEN || &bytes[..8] != INDEX_MAGIC {
        return None;
    }
    let (body, check) = bytes.split_at(bytes.len() - CHECK_LEN);
    if &blake3::hash(body).as_bytes()[..CHECK_LEN] != check {
        return None;
    }
    let seg_len = u64::from_le_bytes(body[8..16].try_into().ok()?);
    if file.metadata().ok()?.len() != seg_len {
        return None;
    }
    let rest = &body[16..];
    if rest.len() % 44 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(44)
            .filter_map(|c| {
                let key = Digest(c[..32].try_into().ok()?);
                let offset = u64::from_le_bytes(c[32..40].try_into().ok()?);
                let len = u32::from_le_bytes(c[40..44].try_into().ok()?);
                Some((key, offset, len))
            })
            .collect(),
    )
}

/// The good entries of a segment (up to the first bad one), with their values.
pub fn read_segment(path: &Path) -> io::Result<Vec<(Digest, Vec<u8>)>> {
    let file = File::open(path)?;
    let entries = scan_segment(&file, path, &mut Vec::new())?;
    let mut out = Vec::with_capacity(entries.len());
    for (key, offset, len) in entries {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset + HEADER_LEN as u64)?;
        out.push((key, buf));
    }
    Ok(out)
}

/// Writes entries as a new sealed segment (with its index) in `dir`, atomically.
pub fn write_segment(dir: &Path, entries: &[(Digest, Vec<u8>)]) -> io::Result<PathBuf> {
    let name = unique_name("compacted");
    let tmp = dir.join(format!("{name}.seg.tmp"));
    let path = dir.join(format!("{name}.seg"));
    let mut out = BufWriter::new(OpenOptions::new().write(true).create_new(true).open(&tmp)?);
    out.write_all(SEGMENT_MAGIC)?;
    let mut len = SEGMENT_MAGIC.len() as u64;
    let mut index = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        out.write_all(&(value.len() as u32).to_le_bytes())?;
        out.write_all(&key.0)?;
        out.write_all(value)?;
        out.write_all(&checksum(key, value))?;
        index.push((*key, len, value.len() as u32));
        len += (HEADER_LEN + value.len() + CHECK_LEN) as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    write_index(&path, &index, len, dir)?;
    fs::rename(&tmp, &path)?;
    fsutil::sync_dir(dir)?;
    Ok(path)
}

/// Checks every entry of every segment in `dir` against its checksum (for `fleming verify`).
/// Returns the number of good entries and the problems found.
pub fn verify_dir(dir: &Path) -> io::Result<(u64, Vec<SegmentProblem>)> {
    let mut problems = Vec::new();
    let mut good = 0u64;
    if !dir.exists() {
        return Ok((0, problems));
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                let f = File::open(&p)?;
                good += scan_segment(&f, &p, &mut problems)?.len() as u64;
            }
        }
    }
    Ok((good, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let m = MemoLog::open(dir.path()).unwrap();
        let k1 = Digest::of(b"one");
        let k2 = Digest::of(b"two");
        m.put(k1, b"1").unwrap();
        assert_eq!(m.get(&k1).as_deref(), Some(b"1".as_slice()));
        m.flush().unwrap();
        m.put(k2, b"2").unwrap();
        assert_eq!(m.get(&k1).as_deref(), Some(b"1".as_slice()));
        m.close().unwrap();
        drop(m);
        let m = MemoLog::open(dir.path()).unwrap();
        assert_eq!(m.get(&k2).as_deref(), Some(b"2".as_slice()));
        assert_eq!(m.len(), 2);
        assert!(m.get(&Digest::of(b"three")).is_none());
    }

    #[test]
    fn torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let m = MemoLog::open(dir.path()).unwrap();
        for i in 0..10u32 {
            m.put(Digest::of(&i.to_le_bytes()), &i.to_le_bytes()).unwrap();
        }
        m.flush().unwrap();
        // Simulate a crash: no close (no index), and a half-written entry at the end.
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().unwrap() == "seg")
            .unwrap();
        std::mem::forget(m);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[7, 0, 0, 0, 1, 2, 3]).unwrap();
        let m = MemoLog::open(dir.path()).unwrap();
        assert_eq!(m.len(), 10);
        let (good, problems) = verify_dir(dir.path()).unwrap();
        assert_eq!(good, 10);
        assert_eq!(problems.len(), 1);
    }
}
