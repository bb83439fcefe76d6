//! Crashes and interruptions never leave a half-written artifact referenced, and never
//! lose committed work: kill -9 and Ctrl-C mid-stage, then rerun.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Project, rows_jsonl};

const SLOW: &str = r#"
name: slow
stages:
  raw: { op: load, params: { path: data/rows.jsonl } }
  slow:
    op: test-slow
    inputs: { table: raw }
    params: { tag: s, delay_ms: 60 }
  after: { op: sql, inputs: { t: slow }, params: { query: "select count(*) as n from t" } }
"#;

/// Bytes of committed memo segments of an operator.
fn memo_bytes(store: &Path, op: &str) -> u64 {
    std::fs::read_dir(store.join("memo").join(op))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Starts a run, waits until at least `entries` memo entries are on disk, then signals it.
fn interrupt_mid_stage(p: &Project, signal: i32) -> std::process::Output {
    let child = p
        .command(&["run", "pipeline.yaml", "-j", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    // One entry is 4 + 32 + ~10 + 16 bytes; wait for roughly ten committed entries.
    let start = Instant::now();
    while memo_bytes(&p.store(), "test-slow") < 8 + 10 * 60 {
        assert!(start.elapsed() < Duration::from_secs(60), "the slow stage never made progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(pid, signal) };
    child.wait_with_output().expect("wait")
}

fn check_recovery(p: &Project) {
    // Nothing of `slow` is referenced: no ref, no cache entry.
    assert!(!p.store().join("refs/slow/slow.json").exists());
    let r = p.run_ok(&["-j", "1"]);
    assert_eq!(r.outcome("raw"), "cached");
    assert_eq!(r.outcome("slow"), "ran");
    let m = p.manifests_of("slow").into_iter().rfind(|m| m["status"] == "succeeded").expect("manifest");
    let hits = m["metrics"]["memo_hits"].as_u64().expect("hits");
    let computed = m["metrics"]["computed"].as_u64().expect("computed");
    assert!(hits >= 5, "committed rows were recomputed: {m:#}");
    assert_eq!(hits + computed, 40);
    assert_eq!(m["outputs"]["table"]["rows"], 40);
    // Leftovers of the dead run are gone.
    let tmp: Vec<_> = std::fs::read_dir(p.store().join("tmp")).expect("tmp").flatten().collect();
    assert!(tmp.is_empty(), "tmp not cleaned: {:?}", tmp.iter().map(|e| e.path()).collect::<Vec<_>>());
}

#[test]
fn kill_9_mid_stage_then_rerun() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(40));
    p.pipeline(SLOW);
    let out = interrupt_mid_stage(&p, libc::SIGKILL);
    assert!(!out.status.success());
    check_recovery(&p);
}

#[test]
fn ctrl_c_mid_stage_commits_nothing_and_keeps_finished_records() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(40));
    p.pipeline(SLOW);
    let out = interrupt_mid_stage(&p, libc::SIGINT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stdout.contains("cancelled"), "{stdout}");
    let m = p.manifests_of("slow");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["status"], "cancelled");
    check_recovery(&p);
}

#[test]
fn data_dependent_schema_is_checked_at_run_time() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(3));
    p.pipeline("stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  t:\n    op: test-slow\n    inputs: { table: raw, extra: raw }\n");
    let r = p.fleming(&["run", "pipeline.yaml"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("pipeline.yaml:5:34: input `extra` cannot read `raw.table`: column `value` (Utf8) is missing"),
        "{}",
        r.stderr
    );
}

/// The pipeline of the output tests: a load and a SQL stage.
const TWO_STAGES: &str = r#"
name: two
stages:
  raw: { op: load, params: { path: data/rows.jsonl } }
  n: { op: sql, inputs: { t: raw }, params: { query: "select count(*) as n from t" } }
"#;

/// Waits for a child up to a minute; kills it and fails if it is still running.
fn wait_or_kill(mut child: std::process::Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{what} still running after a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `fleming run … 2>&1 | head`: the reader of its log and table goes away; the run goes on
/// without them and ends as it would have (it used to hang: the log line panicked in the
/// stage's thread, and the run waited for that stage forever).
#[test]
fn a_run_whose_reader_left_still_finishes() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(5));
    p.pipeline(TWO_STAGES);
    let (out_reader, out_writer) = std::io::pipe().expect("pipe");
    let (err_reader, err_writer) = std::io::pipe().expect("pipe");
    drop((out_reader, err_reader));
    let child = p.command(&["run", "pipeline.yaml"]).stdout(out_writer).stderr(err_writer).spawn().expect("spawn");
    let status = wait_or_kill(child, "a run with no reader");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(p.store().join("refs/two/n.json").exists(), "the run did not finish its stages");
    let r = p.run_ok(&[]);
    assert_eq!((r.outcome("raw").as_str(), r.outcome("n").as_str()), ("cached", "cached"));
}

/// A panic in the runtime outside the operator (whose own panics are caught where it runs)
/// fails its stage with the panic's message; the run does not wait for the stage forever.
#[test]
fn a_panic_outside_the_operator_fails_the_stage() {
    use fleming_runtime::progress::{Progress, ProgressSink};
    struct BrokenSink;
    impl ProgressSink for BrokenSink {
        fn stage(&self, _: &str, _: &str) -> Progress {
            Progress::silent()
        }
        fn println(&self, line: &str) {
            panic!("the log broke at `{line}`");
        }
        fn overall(&self, _: usize, _: usize) {}
        fn finish(&self) {}
    }
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(5));
    let path = p.pipeline(TWO_STAGES);
    let (tx, rx) = std::sync::mpsc::channel();
    let store_dir = p.store();
    std::thread::spawn(move || {
        let registry = fleming_operators::registry();
        let pipeline = fleming_runtime::spec::load(&path, &registry).expect("pipeline");
        let store = fleming_artifacts::store::Store::open(&store_dir).expect("store");
        let executor = fleming_runtime::executor::Executor::new(
            &pipeline,
            &store,
            std::sync::Arc::new(BrokenSink),
            fleming_runtime::CancelToken::new(),
        );
        let report = executor.run(&fleming_runtime::executor::RunOptions {
            jobs: 1,
            workers: 1,
            selection: fleming_runtime::executor::Selection::All,
            force: false,
            keep_going: false,
            dry_run: false,
            skip_checks: false,
            read_only: false,
        });
        let _ = tx.send(report.map(|r| r.stages));
    });
    let stages = rx.recv_timeout(Duration::from_secs(60)).expect("the run hung").expect("run");
    let raw = stages.iter().find(|s| s.stage == "raw").expect("raw");
    assert_eq!(raw.outcome, fleming_runtime::executor::Outcome::Failed);
    let error = raw.error.as_deref().unwrap_or_default();
    assert!(error.contains("panicked") && error.contains("the log broke at `▶ raw [load]"), "{error}");
    let n = stages.iter().find(|s| s.stage == "n").expect("n");
    assert_eq!(n.outcome, fleming_runtime::executor::Outcome::Skipped, "{}", n.reason);
}
