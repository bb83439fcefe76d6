//! Store maintenance: `gc` (drop what no current stage needs) and `verify` (rehash
//! everything, quarantine what is corrupt so the next run recomputes it), of a local store
//! and of a remote one ([`remote`]).

mod remote;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use fleming_artifacts::memo::SegmentProblem;
use fleming_artifacts::store::{digest_tree, walk_files};
use fleming_artifacts::{ArtifactKind, Digest, RunManifest, Store, digest_file};
use serde::Serialize;

use crate::checks::CheckResult;
use crate::state::{CacheEntry, StageRef};

/// Where the memo keys a stage used are recorded, for gc.
fn used_path(store: &Store, op: &str, key: &Digest) -> PathBuf {
    store.dir("memo").join(op).join("used").join(format!("{}.keys", key.hex()))
}

/// Records the memo keys a successful stage read or wrote (sorted 32-byte keys).
pub fn record_used_memo(store: &Store, op: &str, key: &Digest, keys: &[Digest]) -> anyhow::Result<()> {
    let path = used_path(store, op, key);
    let mut bytes = Vec::with_capacity(keys.len() * 32);
    for k in keys {
        bytes.extend_from_slice(&k.0);
    }
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fleming_artifacts::fsutil::write_atomic(&path, &store.tmp_dir(), &bytes)?;
    Ok(())
}

/// Options of `fleming gc`.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Runs (manifests and their outputs) kept per stage, besides the current one.
    pub keep_runs: usize,
    /// Only report.
    pub dry_run: bool,
    /// Memo entries younger than this are kept even if no current stage used them (they
    /// are likely the finished records of an interrupted run, to be resumed).
    pub memo_grace: Duration,
    /// On a remote store, objects younger than this are kept even if nothing refers to
    /// them: a run on another machine uploads its outputs before their cache entry.
    pub remote_grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_runs: 3,
            dry_run: false,
            memo_grace: Duration::from_secs(24 * 3600),
            remote_grace: Duration::from_secs(3600),
        }
    }
}

/// What gc removed (or would remove).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Objects removed.
    pub objects: usize,
    /// Bytes of objects removed.
    pub object_bytes: u64,
    /// Objects kept.
    pub objects_kept: usize,
    /// Cache entries removed.
    pub cache_entries: usize,
    /// Manifests removed.
    pub manifests: usize,
    /// Check results removed.
    pub check_results: usize,
    /// Memo entries removed.
    pub memo_entries: u64,
    /// Bytes of memo removed.
    pub memo_bytes: u64,
    /// Memo entries kept.
    pub memo_entries_kept: u64,
    /// Work directories of finished stages removed.
    pub work_dirs: usize,
    /// Final training checkpoints removed (no current stage run has their key).
    pub checkpoints: usize,
    /// Bytes of those checkpoints.
    pub checkpoint_bytes: u64,
    /// Objects removed from the remote store.
    pub remote_objects: usize,
    /// Bytes of those objects.
    pub remote_object_bytes: u64,
}

fn all_refs(store: &Store) -> Vec<StageRef> {
    let mut out = Vec::new();
    let Ok(pipes) = fs::read_dir(store.dir("refs")) else { return out };
    for p in pipes.flatten() {
        let Ok(stages) = fs::read_dir(p.path()) else { continue };
        for s in stages.flatten() {
            if let Ok(Some(r)) = fleming_artifacts::fsutil::read_json::<StageRef>(&s.path()) {
                out.push(r);
            }
        }
    }
    out
}

fn all_cache_entries(store: &Store) -> Vec<(PathBuf, Option<CacheEntry>)> {
    let mut out = Vec::new();
    let Ok(dirs) = fs::read_dir(store.dir("cache")) else { return out };
    for d in dirs.flatten() {
        let Ok(files) = fs::read_dir(d.path()) else { continue };
        for f in files.flatten() {
            let e = fleming_artifacts::fsutil::read_json::<CacheEntry>(&f.path()).ok().flatten();
            out.push((f.path(), e));
        }
    }
    out
}

/// Every object file or tree in the store, with its kind and digest.
fn all_objects(store: &Store) -> Vec<(PathBuf, ArtifactKind, Option<Digest>)> {
    let mut out = Vec::new();
    let Ok(dirs) = fs::read_dir(store.dir("objects")) else { return out };
    for d in dirs.flatten() {
        let prefix = d.file_name().to_string_lossy().to_string();
        let Ok(files) = fs::read_dir(d.path()) else { continue };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let (stem, kind) = if let Some(s) = name.strip_suffix(".parquet") {
                (s.to_string(), ArtifactKind::Table)
            } else if let Some(s) = name.strip_suffix(".tree") {
                (s.to_string(), ArtifactKind::Tree)
            } else {
                continue;
            };
            out.push((f.path(), kind, format!("{prefix}{stem}").parse().ok()));
        }
    }
    out
}

fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        walk_files(path).map(|fs| fs.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
    } else {
        path.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

fn remove(path: &Path) {
    let _ = if path.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
}

/// Drops objects, cache entries, manifests, check results and memo entries that no
/// current stage (of any pipeline in the store) and none of the last `keep_runs` runs of
/// each stage needs. Takes the store lock exclusively (waits for running runs).
pub fn gc(store: &Store, opts: &GcOptions) -> anyhow::Result<GcReport> {
    let _lock = store.lock_store(true)?;
    let mut report = GcReport::default();
    // A remote store: decide on what every machine wrote.
    let remote_memo: HashSet<String> = match store.remote() {
        Some(r) => {
            for dir in remote::METADATA {
                store.pull_dir(dir)?;
            }
            let before = r.list("memo")?.into_iter().map(|l| l.rel).collect();
            store.pull_dir("memo")?;
            before
        }
        None => HashSet::new(),
    };
    let refs = all_refs(store);
    let live_keys: HashSet<Digest> = refs.iter().map(|r| r.key).collect();
    let live_runs: HashSet<String> = refs.iter().map(|r| r.run_id.clone()).collect();

    // Manifests: the current run of each stage plus the last `keep_runs` successful ones.
    let (manifests, _) = RunManifest::load_all(store)?;
    let mut by_stage: BTreeMap<(String, String), Vec<&RunManifest>> = BTreeMap::new();
    for m in &manifests {
        by_stage.entry((m.pipeline.clone(), m.stage.clone())).or_default().push(m);
    }
    let mut kept_runs: HashSet<String> = live_runs.clone();
    let mut kept_keys: HashSet<Digest> = live_keys.clone();
    let mut drop_manifests = Vec::new();
    for runs in by_stage.values_mut() {
        runs.sort_by_key(|m| m.finished_at);
        let mut kept = 0;
        for m in runs.iter().rev() {
            let current = live_runs.contains(&m.run_id);
            if current || kept < opts.keep_runs {
                kept_runs.insert(m.run_id.clone());
                kept_keys.insert(m.key);
                if !current {
                    kept += 1;
                }
            } else {
                drop_manifests.push(m.run_id.clone());
            }
        }
    }
    // Cache entries of kept keys keep their outputs alive.
    let mut live_objects: HashSet<Digest> = HashSet::new();
    for r in &refs {
        live_objects.extend(r.outputs.values().map(|o| o.digest));
    }
    let mut drop_cache = Vec::new();
    for (path, entry) in all_cache_entries(store) {
        match entry {
            Some(e) if kept_keys.contains(&e.key) => live_objects.extend(e.outputs.values().map(|o| o.digest)),
            _ => drop_cache.push(path),
        }
    }
    let mut drop_objects = Vec::new();
    for (path, _, digest) in all_objects(store) {
        match digest {
            Some(d) if live_objects.contains(&d) => report.objects_kept += 1,
            _ => drop_objects.push(path),
        }
    }
    report.objects = drop_objects.len();
    report.object_bytes = drop_objects.iter().map(|p| size_of(p)).sum();
    report.cache_entries = drop_cache.len();
    report.manifests = drop_manifests.len();
    let drop_checks: Vec<CheckResult> =
        CheckResult::load_all(store).into_iter().filter(|c| !kept_keys.contains(&c.stage_key)).collect();
    report.check_results = drop_checks.len();
    let finished_work: Vec<PathBuf> = fs::read_dir(store.dir("work"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<Digest>()
                        .is_ok_and(|k| CacheEntry::load(store, &k).ok().flatten().is_some())
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    report.work_dirs = finished_work.len();
    // Final checkpoints are kept for continuing a stage's current run only.
    let stale_checkpoints: Vec<PathBuf> = fs::read_dir(store.dir("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<Digest>().is_ok_and(|k| !live_keys.contains(&k)))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    report.checkpoints = stale_checkpoints.len();
    report.checkpoint_bytes = stale_checkpoints.iter().map(|p| size_of(p)).sum();
    let memo = compact_memos(store, &kept_keys, opts, &mut report)?;
    let remote_drop = remote::unreferenced(store, &live_objects, opts.remote_grace)?;
    report.remote_objects = remote_drop.len();
    report.remote_object_bytes = remote_drop.iter().map(|o| o.bytes).sum();
    if opts.dry_run {
        return Ok(report);
    }
    // The remote first: what it refers to goes before what refers to it.
    remote::delete(store, remote_drop.into_iter().flat_map(|o| o.parts))?;
    let rel = |p: &Path| store.rel(p);
    remote::delete(
        store,
        drop_cache
            .iter()
            .filter_map(|p| rel(p))
            .chain(drop_manifests.iter().flat_map(|id| [format!("runs/{id}.json"), format!("runs/{id}.metrics.jsonl")]))
            .chain(drop_checks.iter().filter_map(|c| rel(&CheckResult::path(store, &c.stage_key, &c.check_digest)))),
    )?;
    for p in &drop_objects {
        // Objects are read-only; removal needs only the directory's write permission.
        remove(p);
    }
    for p in &drop_cache {
        remove(p);
    }
    for id in &drop_manifests {
        remove(&RunManifest::path(store, id));
        remove(&store.dir("runs").join(format!("{id}.metrics.jsonl")));
    }
    for c in &drop_checks {
        remove(&crate::checks::CheckResult::path(store, &c.stage_key, &c.check_digest));
    }
    for w in finished_work.iter().chain(&stale_checkpoints) {
        remove(w);
    }
    memo.apply()?;
    if store.remote().is_some() {
        // The compacted segments up, then the segments they replace (those this gc saw;
        // a segment another machine uploaded since is left alone).
        store.push_dir("memo")?;
        let local_now: HashSet<String> =
            walk_files(&store.dir("memo")).unwrap_or_default().iter().filter_map(|p| store.rel(p)).collect();
        remote::delete(store, remote_memo.into_iter().filter(|r| !local_now.contains(r)))?;
    }
    Ok(report)
}

/// A planned rewrite of one operator's memo: the segments to replace, the entries to
/// keep, and the used-key files of stage keys no longer kept.
struct MemoRewrite {
    dir: PathBuf,
    old_segments: Vec<PathBuf>,
    keep: Vec<(Digest, Vec<u8>)>,
    stale_used: Vec<PathBuf>,
}

/// The memo rewrites of all operators.
struct MemoPlan {
    ops: Vec<MemoRewrite>,
}

impl MemoPlan {
    fn apply(self) -> anyhow::Result<()> {
        for MemoRewrite { dir, old_segments, keep, stale_used } in self.ops {
            if !keep.is_empty() {
                fleming_artifacts::memo::write_segment(&dir, &keep)
                    .with_context(|| format!("compacting {}", dir.display()))?;
            }
            for s in old_segments {
                remove(&s.with_extension("idx"));
                remove(&s);
            }
            for u in stale_used {
                remove(&u);
            }
        }
        Ok(())
    }
}

fn compact_memos(
    store: &Store,
    kept_keys: &HashSet<Digest>,
    opts: &GcOptions,
    report: &mut GcReport,
) -> anyhow::Result<MemoPlan> {
    let mut plan = MemoPlan { ops: Vec::new() };
    let Ok(ops) = fs::read_dir(store.dir("memo")) else { return Ok(plan) };
    let cutoff = SystemTime::now() - opts.memo_grace;
    for op in ops.flatten() {
        let dir = op.path();
        if !dir.is_dir() {
            continue;
        }
        // Keys used by kept stage keys.
        let mut used: HashSet<Digest> = HashSet::new();
        let mut stale_used = Vec::new();
        if let Ok(files) = fs::read_dir(dir.join("used")) {
            for f in files.flatten() {
                let key = f.path().file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<Digest>().ok());
                match key {
                    Some(k) if kept_keys.contains(&k) => {
                        if let Ok(bytes) = fs::read(f.path()) {
                            used.extend(bytes.chunks_exact(32).filter_map(|c| c.try_into().ok().map(Digest)));
                        }
                    }
                    _ => stale_used.push(f.path()),
                }
            }
        }
        let mut segments = Vec::new();
        let mut keep = Vec::new();
        let mut changed = false;
        for seg in fs::read_dir(&dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "seg"))
        {
            let recent = seg.metadata().and_then(|m| m.modified()).map(|t| t > cutoff).unwrap_or(true);
            if recent {
                continue;
            }
            let entries = fleming_artifacts::memo::read_segment(&seg)?;
            for (k, v) in entries {
                if used.contains(&k) {
                    report.memo_entries_kept += 1;
                    keep.push((k, v));
                } else {
                    report.memo_entries += 1;
                    report.memo_bytes += v.len() as u64 + 52;
                    changed = true;
                }
            }
            segments.push(seg);
        }
        if changed || segments.len() > 1 {
            plan.ops.push(MemoRewrite { dir, old_segments: segments, keep, stale_used });
        } else if !stale_used.is_empty() {
            plan.ops.push(MemoRewrite { dir, old_segments: Vec::new(), keep: Vec::new(), stale_used });
        }
    }
    Ok(plan)
}

/// What verify found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Objects rehashed.
    pub objects: usize,
    /// Memo entries whose checksum was checked.
    pub memo_entries: u64,
    /// Objects and segments found corrupt, with the reason, and where they went.
    pub corrupt: Vec<(String, String)>,
    /// Torn tails of memo segments (a crash while writing; harmless).
    pub torn_tails: usize,
}

/// Rehashes every object and memo segment; moves corrupt ones to `quarantine/` so that
/// no run uses them (the next run recomputes). Takes the store lock exclusively.
pub fn verify(store: &Store) -> anyhow::Result<VerifyReport> {
    let _lock = store.lock_store(true)?;
    let mut report = VerifyReport::default();
    for (path, kind, digest) in all_objects(store) {
        report.objects += 1;
        let Some(expected) = digest else {
            report.corrupt.push((path.display().to_string(), "not named by a digest".into()));
            continue;
        };
        let actual = match kind {
            ArtifactKind::Table => digest_file(&path).map_err(anyhow::Error::from),
            ArtifactKind::Tree => digest_tree(&path).map(|(d, _)| d).map_err(anyhow::Error::from),
        };
        let reason = match actual {
            Ok(d) if d == expected => continue,
            Ok(d) => format!("content digest is {}, not {}", d.short(12), expected.short(12)),
            Err(e) => format!("unreadable: {e}"),
        };
        let dest = store.quarantine(kind, &expected, &reason)?;
        report.corrupt.push((path.display().to_string(), format!("{reason}; moved to {}", dest.display())));
    }
    // Memo segments: a torn tail on an unsealed segment is a crash, not corruption.
    let (good, problems) = fleming_artifacts::memo::verify_dir(&store.dir("memo"))?;
    report.memo_entries = good;
    for SegmentProblem { path, offset, message, sealed } in problems {
        if !sealed && message.starts_with("truncated") {
            report.torn_tails += 1;
            continue;
        }
        let salvaged = fleming_artifacts::memo::read_segment(&path).unwrap_or_default();
        let dest = store.dir("quarantine").join(format!(
            "memo-{}-{}",
            path.parent().and_then(|p| p.file_name()).map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
            path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
        ));
        fs::rename(&path, &dest)?;
        remove(&path.with_extension("idx"));
        if let Some(dir) = path.parent()
            && !salvaged.is_empty()
        {
            fleming_artifacts::memo::write_segment(dir, &salvaged)?;
        }
        report.corrupt.push((
            path.display().to_string(),
            format!(
                "{message} at byte {offset}; {} good entries salvaged; moved to {}",
                salvaged.len(),
                dest.display()
            ),
        ));
    }
    // A remote store: every object rehashed as downloaded; a corrupt one is deleted there
    // (and here, where the pass above found it too), so that the next run recomputes it.
    for o in remote::remote_objects(store)? {
        report.objects += 1;
        if let Some(reason) = remote::check(store, &o)? {
            let name = o.parts.first().cloned().unwrap_or_default();
            remote::delete(store, o.parts)?;
            let local = store.object_path(o.kind, &o.digest);
            if local.exists() {
                store.quarantine(o.kind, &o.digest, &reason)?;
            }
            report.corrupt.push((format!("{}/{name}", store.location()), format!("{reason}; deleted")));
        }
    }
    if store.remote().is_some() {
        store.pull_dir("cache")?;
    }
    // Cache entries and refs that cannot be read are removed (they will be recomputed).
    for (path, entry) in all_cache_entries(store) {
        if entry.is_none() {
            remove(&path);
            if let Some(rel) = store.rel(&path) {
                remote::delete(store, [rel])?;
            }
            report.corrupt.push((path.display().to_string(), "unreadable cache entry; removed".into()));
        }
    }
    Ok(report)
}
