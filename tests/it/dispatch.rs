//! GPU stages run in a worker process through the dispatch protocol; here the worker is
//! `fleming-test-worker`, which is not a torch program.

use crate::support::{Project, rows_jsonl};

fn project(stages: &str) -> Project {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(5));
    p.pipeline(&format!("name: gpu\nstages:\n  raw: {{ op: load, params: {{ path: data/rows.jsonl }} }}\n{stages}"));
    p
}

fn device_column(p: &Project, stage: &str) -> String {
    string_column(p, stage, "device")
}

fn string_column(p: &Project, stage: &str, column: &str) -> String {
    let d = p.output_digest("gpu", stage, "table");
    let path = p.store().join("objects").join(&d[..2]).join(format!("{}.parquet", &d[2..]));
    let file = std::fs::File::open(&path).expect("object");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let batch = reader.into_iter().next().expect("batch").expect("batch");
    let col = batch.column_by_name(column).expect("column");
    let col = col.as_any().downcast_ref::<arrow::array::StringArray>().expect("strings");
    col.value(0).to_string()
}

#[test]
fn worker_stage_runs_commits_and_caches() {
    let p = project("  w: { op: test-worker, inputs: { table: raw }, resources: { gpu: 1 } }\n");
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("w"), "ran");
    assert!(r.stderr.contains("no GPU on this machine; running on CPU"), "{}", r.stderr);
    assert_eq!(device_column(&p, "w"), "cpu:");
    let m = &p.manifests_of("w")[0];
    assert_eq!(m["worker"]["hello"]["worker"], "fleming-test-worker");
    assert_eq!(m["metrics"]["rows"], 5);
    let run_id = m["run_id"].as_str().expect("run id");
    let rows =
        std::fs::read_to_string(p.store().join("runs").join(format!("{run_id}.metrics.jsonl"))).expect("metrics rows");
    assert_eq!(rows, "{\"rows\":5,\"step\":1}\n");
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("w"), "cached");
}

#[test]
fn gpus_are_assigned_from_the_pool() {
    let p = project(
        "  a: { op: test-worker, inputs: { table: raw }, resources: { gpu: 2 } }\n  b: { op: test-worker, inputs: { table: raw }, resources: { gpu: 1 }, params: { tag: b } }\n  c: { op: test-worker, inputs: { table: raw }, resources: { gpu: 3 }, params: { tag: c } }\n",
    );
    let r = p.command(&["run", "pipeline.yaml", "--keep-going"]).env("FLEMING_GPUS", "3,5").output().expect("run");
    let stdout = String::from_utf8_lossy(&r.stdout);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(device_column(&p, "a"), "cuda:3,5");
    let b = device_column(&p, "b");
    assert!(b == "cuda:3" || b == "cuda:5", "{b}");
    assert!(stderr.contains("the stage asks for 3 GPUs; this machine has 2"), "{stderr}");
}

#[test]
fn gpu_stages_run_at_once_each_on_its_own_devices() {
    // Four simulated GPUs; `-j 1` would run one CPU stage at a time: GPU stages are limited
    // by their devices instead. a, b and c fit together (2 + 1 + 1); d waits for two.
    let stage = |name: &str, gpu: u32| {
        format!(
            "  {name}: {{ op: test-worker, inputs: {{ table: raw }}, resources: {{ gpu: {gpu} }}, params: {{ tag: {name}, sleep_ms: 1500 }} }}\n"
        )
    };
    let p = project(&[stage("a", 2), stage("b", 1), stage("c", 1), stage("d", 2)].concat());
    let r = p.command(&["run", "pipeline.yaml", "-j", "1"]).env("FLEMING_GPUS", "0,1,2,3").output().expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mut seen = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let visible: Vec<u32> =
            string_column(&p, name, "visible").split(',').map(|g| g.parse().expect("gpu index")).collect();
        let held = string_column(&p, name, "held_ms");
        let (from, to) = held.split_once('-').expect("interval");
        let (from, to): (u128, u128) = (from.parse().expect("ms"), to.parse().expect("ms"));
        let m = &p.manifests_of(name)[0];
        assert_eq!(m["devices"]["kind"], "cuda", "{m}");
        let recorded: Vec<u32> =
            m["devices"]["gpus"].as_array().expect("gpus").iter().map(|g| g.as_u64().expect("index") as u32).collect();
        assert_eq!(recorded, visible, "stage {name}: the manifest's device map is what the worker saw");
        assert_eq!(m["devices"]["visible"]["cuda:0"], visible[0]);
        seen.push((name, visible, from, to));
    }
    let overlap = |x: &(&str, Vec<u32>, u128, u128), y: &(&str, Vec<u32>, u128, u128)| x.2 < y.3 && y.2 < x.3;
    for (i, x) in seen.iter().enumerate() {
        for y in &seen[i + 1..] {
            if overlap(x, y) {
                assert!(x.1.iter().all(|g| !y.1.contains(g)), "{} and {} shared a GPU at once: {seen:?}", x.0, y.0);
            }
        }
    }
    let first_three = &seen[..3];
    for (i, x) in first_three.iter().enumerate() {
        for y in &first_three[i + 1..] {
            assert!(overlap(x, y), "{} and {} did not run at once: {seen:?}", x.0, y.0);
        }
    }
}

#[test]
fn crashing_worker_fails_its_stage_only() {
    let p = project(
        "  crash: { op: test-worker, inputs: { table: raw }, params: { mode: crash } }\n  fine: { op: test-worker, inputs: { table: raw }, params: { mode: copy } }\n  after: { op: sql, inputs: { t: crash }, params: { query: select * from t } }\n",
    );
    let r = p.fleming(&["run", "pipeline.yaml", "--keep-going", "-j", "1"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(r.outcome("crash"), "FAILED");
    assert_eq!(r.outcome("fine"), "ran");
    assert_eq!(r.outcome("after"), "skipped");
    assert!(r.stderr.contains("worker was killed by signal 6 (SIGABRT: aborted)"), "{}", r.stderr);
    assert!(r.stderr.contains("crashing on purpose"), "worker stderr tail missing: {}", r.stderr);
    assert!(!p.store().join("refs/gpu/crash.json").exists());
    assert_eq!(p.manifests_of("crash")[0]["status"], "failed");
}

#[test]
fn worker_errors_are_reported() {
    let p = project(
        "  fail: { op: test-worker, inputs: { table: raw }, params: { mode: fail } }\n  quiet: { op: test-worker, inputs: { table: raw }, params: { mode: no-output } }\n",
    );
    let r = p.fleming(&["run", "pipeline.yaml", "--keep-going"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("worker exited with status 1: failing on purpose"), "{}", r.stderr);
    assert!(r.stderr.contains("the worker reported success but did not write output `table`"), "{}", r.stderr);
}

#[test]
fn missing_worker_is_a_clear_error() {
    let p = project("  w: { op: test-worker, inputs: { table: raw } }\n");
    let r = p
        .command(&["run", "pipeline.yaml"])
        .env("FLEMING_WORKER", "/nonexistent/fleming-worker")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr.contains("FLEMING_WORKER=/nonexistent/fleming-worker does not name a file"), "{stderr}");
}

#[test]
fn ctrl_c_stops_a_hanging_worker() {
    let p = project("  w: { op: test-worker, inputs: { table: raw }, params: { mode: hang } }\n");
    let child = p
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    while !p.store().join("work").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
        assert!(start.elapsed().as_secs() < 30);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(start.elapsed().as_secs() < 30);
    assert_eq!(p.manifests_of("w")[0]["status"], "cancelled");
}

#[test]
fn fleming_does_not_link_libtorch() {
    let out = std::process::Command::new("ldd").arg(crate::support::fleming_bin()).output().expect("ldd");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd failed");
    assert!(!libs.contains("torch") && !libs.contains("libc10"), "fleming links libtorch:\n{libs}");
}
