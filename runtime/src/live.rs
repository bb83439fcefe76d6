//! Live progress of a run, for viewers in other processes (`fleming ui`).
//!
//! [`LiveSink`] wraps the run's progress sink and keeps, in `live/` under the store, one
//! small JSON file per running `fleming run`: the stages it is running and their progress.
//! A background thread rewrites it (atomically) when something changed, at most a few
//! times a second, and at least every [`HEARTBEAT`] so a reader can tell a run that died
//! (`kill -9`) from one that is busy; the file goes when the run ends. [`read`] gathers the
//! files of a pipeline whose process is alive and whose heartbeat is fresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleming_artifacts::Store;
use serde::{Deserialize, Serialize};

use crate::progress::{Progress, ProgressSink, StageProgress};

/// How often an idle run still rewrites its file.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A file not rewritten for this long belongs to a run that is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// Shortest time between two writes.
const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// One running stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveStage {
    /// Operator name.
    pub op: String,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// Units done.
    pub position: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// What the units are (rows, steps, pages).
    pub unit: String,
    /// The operator's last message.
    pub message: String,
}

/// What one `fleming run` process is doing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LiveRun {
    /// Pipeline name.
    pub pipeline: String,
    /// Process id of `fleming run`.
    pub pid: u32,
    /// When the run started.
    pub started_at: Option<DateTime<Utc>>,
    /// Last rewrite of the file.
    pub updated_at: Option<DateTime<Utc>>,
    /// Stages finished (ran, cached or failed) so far.
    pub done: usize,
    /// Stages the run considers.
    pub total: usize,
    /// Running stages by name.
    pub stages: BTreeMap<String, LiveStage>,
}

struct Shared {
    run: Mutex<(LiveRun, bool)>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut LiveRun)) {
        if let Ok(mut g) = self.run.lock() {
            f(&mut g.0);
            g.1 = true;
        }
        self.wake.notify_one();
    }
}

/// A progress sink that also publishes the run's progress under the store.
pub struct LiveSink {
    inner: Arc<dyn ProgressSink>,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

/// The directory of live files.
pub fn dir(store: &Store) -> PathBuf {
    store.dir("live")
}

impl LiveSink {
    /// Publishes the progress of a run of `pipeline` beside passing it on to `inner`.
    pub fn new(inner: Arc<dyn ProgressSink>, store: &Store, pipeline: &str) -> LiveSink {
        let dir = dir(store);
        let pid = std::process::id();
        let path = dir.join(format!("{}.{pid}.json", fleming_artifacts::fsutil::sanitize(pipeline)));
        let _ = std::fs::create_dir_all(&dir);
        remove_dead(&dir);
        let now = Utc::now();
        let run = LiveRun {
            pipeline: pipeline.to_string(),
            pid,
            started_at: Some(now),
            updated_at: Some(now),
            ..LiveRun::default()
        };
        let shared =
            Arc::new(Shared { run: Mutex::new((run, true)), wake: Condvar::new(), stop: AtomicBool::new(false) });
        let writer = {
            let shared = shared.clone();
            let path = path.clone();
            let tmp = store.tmp_dir();
            std::thread::Builder::new().name("fleming-live".into()).spawn(move || write_loop(&shared, &path, &tmp)).ok()
        };
        LiveSink { inner, shared, writer: Mutex::new(writer), path }
    }

    fn stop(&self) {
        // Under the lock, so the writer cannot miss the wake-up between its check and its wait.
        if let Ok(_g) = self.shared.run.lock() {
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        self.shared.wake.notify_one();
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for LiveSink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_loop(shared: &Shared, path: &Path, tmp: &Path) {
    let mut last = std::time::Instant::now();
    loop {
        let snapshot = {
            let Ok(mut g) = shared.run.lock() else { return };
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            if !g.1 {
                let wait = HEARTBEAT.saturating_sub(last.elapsed());
                let Ok((g2, _)) = shared.wake.wait_timeout(g, wait) else { return };
                g = g2;
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            g.1 = false;
            g.0.updated_at = Some(Utc::now());
            g.0.clone()
        };
        // Writes that fail (a full disk) cost the viewer its live view, never the run.
        let _ = fleming_artifacts::fsutil::write_json_atomic(path, tmp, &snapshot);
        last = std::time::Instant::now();
        std::thread::sleep(MIN_INTERVAL);
    }
}

impl ProgressSink for LiveSink {
    fn stage(&self, stage: &str, op: &str) -> Progress {
        let name = stage.to_string();
        self.shared.update(|r| {
            r.stages.insert(
                name.clone(),
                LiveStage {
                    op: op.to_string(),
                    started_at: Some(Utc::now()),
                    unit: "rows".into(),
                    ..LiveStage::default()
                },
            );
        });
        Progress::new(Arc::new(LiveStageProgress {
            inner: self.inner.stage(stage, op),
            shared: self.shared.clone(),
            name,
        }))
    }
    fn println(&self, line: &str) {
        self.inner.println(line)
    }
    fn overall(&self, done: usize, total: usize) {
        self.shared.update(|r| {
            r.done = done;
            r.total = total;
        });
        self.inner.overall(done, total)
    }
    fn finish(&self) {
        self.inner.finish();
        self.stop();
    }
}

struct LiveStageProgress {
    inner: Progress,
    shared: Arc<Shared>,
    name: String,
}

impl LiveStageProgress {
    fn edit(&self, f: impl FnOnce(&mut LiveStage)) {
        self.shared.update(|r| {
            if let Some(s) = r.stages.get_mut(&self.name) {
                f(s)
            }
        });
    }
}

impl StageProgress for LiveStageProgress {
    fn set_total(&self, total: Option<u64>) {
        match total {
            Some(t) => self.inner.set_total(t),
            None => self.inner.set_total_unknown(),
        }
        self.edit(|s| s.total = total);
    }
    fn set_position(&self, pos: u64) {
        self.inner.set_position(pos);
        self.edit(|s| s.position = pos);
    }
    fn inc(&self, n: u64) {
        self.inner.inc(n);
        self.edit(|s| s.position = s.position.saturating_add(n));
    }
    fn set_unit(&self, unit: &str) {
        self.inner.set_unit(unit);
        self.edit(|s| s.unit = unit.to_string());
    }
    fn set_message(&self, msg: &str) {
        self.inner.set_message(msg);
        self.edit(|s| s.message = msg.to_string());
    }
    fn finish(&self, summary: &str) {
        self.inner.finish(summary);
        let name = self.name.clone();
        self.shared.update(|r| {
            r.stages.remove(&name);
        });
    }
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn is_current(run: &LiveRun) -> bool {
    let fresh = run
        .updated_at
        .and_then(|t| (Utc::now() - t).to_std().ok().map(|age| age < STALE_AFTER))
        // A clock step backwards makes the age negative: trust the pid then.
        .unwrap_or(true);
    fresh && alive(run.pid)
}

fn read_dir_runs(dir: &Path) -> Vec<(PathBuf, Option<LiveRun>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let run = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<LiveRun>(&b).ok());
            (p, run)
        })
        .collect()
}

/// Deletes the files of runs that are gone (a `kill -9` leaves its file behind).
fn remove_dead(dir: &Path) {
    for (path, run) in read_dir_runs(dir) {
        if let Some(run) = run
            && !alive(run.pid)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The runs of `pipeline` going on now (usually none or one). Reads only.
pub fn read(store: &Store, pipeline: &str) -> Vec<LiveRun> {
    let mut runs: Vec<LiveRun> = read_dir_runs(&dir(store))
        .into_iter()
        .filter_map(|(_, r)| r)
        .filter(|r| r.pipeline == pipeline && is_current(r))
        .collect();
    runs.sort_by_key(|r| r.pid);
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::SilentSink;

    #[test]
    fn a_run_publishes_its_running_stages_and_removes_its_file_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sink = LiveSink::new(Arc::new(SilentSink), &store, "p");
        let p = sink.stage("train", "sft");
        p.set_total(40);
        p.set_unit("steps");
        p.set_position(12);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let seen = loop {
            let runs = read(&store, "p");
            if let Some(s) = runs.first().and_then(|r| r.stages.get("train"))
                && s.position == 12
                && s.unit == "steps"
            {
                break s.clone();
            }
            assert!(std::time::Instant::now() < deadline, "never published: {runs:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!((seen.op.as_str(), seen.total), ("sft", Some(40)));
        assert!(read(&store, "other").is_empty());
        p.finish("done");
        sink.finish();
        assert!(read(&store, "p").is_empty());
        assert_eq!(std::fs::read_dir(super::dir(&store)).unwrap().count(), 0);
    }

    #[test]
    fn files_of_dead_processes_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::create_dir_all(super::dir(&store)).unwrap();
        // A pid far above Linux's pid_max (4194304) belongs to no process.
        let gone =
            LiveRun { pipeline: "p".into(), pid: 999_999_999, updated_at: Some(Utc::now()), ..LiveRun::default() };
        std::fs::write(super::dir(&store).join("p.999999999.json"), serde_json::to_vec(&gone).unwrap()).unwrap();
        std::fs::write(super::dir(&store).join("p.1.json"), b"{ torn").unwrap();
        assert!(read(&store, "p").is_empty());
    }
}
