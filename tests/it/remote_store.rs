//! The store on object storage (`--store s3://bucket/prefix`), against a real
//! S3-compatible server started on 127.0.0.1 (moto's, from PyPI: `scripts/ensure-moto`):
//! clones of a project share cache hits and memoised records through the bucket, two
//! concurrent runs compute a key once, a `kill -9` during an upload leaves the store
//! consistent, and `verify` and `gc` work on the remote.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fleming_artifacts::remote::Remote;
use fleming_testkit::s3::S3Server;
use serde_json::Value;

use crate::support::{Project, Ran, rows_jsonl};

struct Bucket {
    server: S3Server,
    url: String,
}

impl Bucket {
    fn new(prefix: &str) -> Bucket {
        let server = S3Server::start().expect("moto's S3 server (scripts/ensure-moto installs it)");
        server.create_bucket("fleming").expect("bucket");
        Bucket { server, url: format!("s3://fleming/{prefix}") }
    }

    /// `fleming ARGS --store URL` in `p`, with the server's credentials.
    fn command(&self, p: &Project, args: &[&str]) -> Command {
        let mut c = p.command(args);
        c.args(["--store", &self.url]);
        for (k, v) in self.server.env() {
            c.env(k, v);
        }
        c
    }

    fn fleming(&self, p: &Project, args: &[&str]) -> Ran {
        Ran::from(self.command(p, args).output().expect("run fleming"))
    }

    fn run_ok(&self, p: &Project) -> Ran {
        let r = self.fleming(p, &["run", "pipeline.yaml"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        r
    }

    fn remote(&self) -> Remote {
        let env: Vec<(&str, String)> = self.server.env();
        Remote::connect_with(&self.url, &env).expect("connect")
    }

    /// Every remote name under a directory.
    fn names(&self, dir: &str) -> BTreeSet<String> {
        self.remote().list(dir).expect("list").into_iter().map(|l| l.rel).collect()
    }

    fn json(&self, rel: &str) -> Value {
        let (bytes, _) = self.remote().get(rel).expect("get").expect("present");
        serde_json::from_slice(&bytes).expect("json")
    }

    /// What must hold whatever happened: every cache entry and ref names objects that are
    /// on the remote, whole (their digests check out with `verify`).
    fn assert_consistent(&self) {
        let objects = self.names("objects");
        let present = |o: &Value| -> bool {
            let d = o["digest"].as_str().unwrap_or("");
            let (a, b) = d.split_at(2.min(d.len()));
            match o["kind"].as_str() {
                Some("table") => objects.contains(&format!("objects/{a}/{b}.parquet")),
                _ => objects.contains(&format!("objects/{a}/{b}.tree.json")),
            }
        };
        for dir in ["cache", "refs"] {
            for rel in self.names(dir) {
                let v = self.json(&rel);
                for (port, o) in v["outputs"].as_object().expect("outputs") {
                    assert!(present(o), "{rel}: output `{port}` is not on the remote: {o}");
                }
            }
        }
    }
}

fn project(pipeline: &str) -> Project {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(40));
    p.pipeline(pipeline);
    p
}

const PIPELINE: &str = "stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  slow: { op: test-slow, inputs: { table: raw }, params: { delay_ms: 20 } }\n  q: { op: sql, inputs: { t: slow }, params: { query: select id from t order by id } }\n";

#[test]
fn clones_sharing_a_bucket_get_cache_hits_and_memoised_records() {
    let bucket = Bucket::new("clones");
    let a = project(PIPELINE);
    let r = bucket.run_ok(&a);
    assert!(r.stdout.contains("3 ran"), "{}", r.stdout);
    bucket.assert_consistent();

    // Another clone (its own local cache) reuses everything and reads the outputs.
    let b = project(PIPELINE);
    let r = bucket.run_ok(&b);
    assert!(r.stdout.contains("0 ran, 3 cached"), "{}", r.stdout);
    let show = bucket.fleming(&b, &["show", "pipeline.yaml", "q"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(show.stdout.contains("40 rows"), "{}", show.stdout);
    // Only what it read was downloaded: the output of `q`, not those of `raw` and `slow`.
    let local: Vec<_> = walk(&b.store().join("objects"));
    assert_eq!(local.len(), 1, "{local:?}");
    // Status and lineage see the runs of the other machine.
    let status = bucket.fleming(&b, &["status", "pipeline.yaml"]);
    assert_eq!(status.code, 0, "{}", status.stderr);

    // A changed stage key with the same records: the other clone's memo answers.
    let changed = PIPELINE.replace("delay_ms: 20", "delay_ms: 20, fail_at: never");
    b.pipeline(&changed);
    let r = bucket.run_ok(&b);
    assert_eq!(r.outcome("slow"), "ran");
    let m = b.manifests_of("slow").into_iter().find(|m| m["params"]["fail_at"] == "never").expect("manifest");
    assert_eq!(m["metrics"]["memo_hits"], 40, "{m}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn two_machines_at_once_compute_each_key_once() {
    let bucket = Bucket::new("concurrent");
    let (a, b) = (project(PIPELINE), project(PIPELINE));
    let start = |p: &Project| {
        bucket.command(p, &["run", "pipeline.yaml"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run")
    };
    let (ca, cb) = (start(&a), start(&b));
    let (oa, ob): (Output, Output) = (ca.wait_with_output().expect("a"), cb.wait_with_output().expect("b"));
    let (ra, rb) = (Ran::from(oa), Ran::from(ob));
    assert_eq!((ra.code, rb.code), (0, 0), "{}\n{}\n{}\n{}", ra.stdout, ra.stderr, rb.stdout, rb.stderr);
    for stage in ["raw", "slow", "q"] {
        let outcomes = [ra.outcome(stage), rb.outcome(stage)];
        assert!(
            outcomes.contains(&"ran".to_string()) && outcomes.contains(&"cached".to_string()),
            "{stage}: {outcomes:?}"
        );
    }
    let runs: Vec<String> = bucket.names("runs").into_iter().filter(|r| r.contains("-slow-")).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    bucket.assert_consistent();
}

/// `kill -9` the moment the output of the big stage is in the local store, that is while
/// it is being uploaded: the remote stays consistent, `verify` finds nothing wrong, and
/// the next run (after the dead run's lease expires) completes.
#[test]
fn kill_9_during_an_upload_leaves_the_store_consistent() {
    let bucket = Bucket::new("killed");
    let p = Project::new();
    // ~60 MB of Parquet: uploaded in parts.
    let mut rows = String::new();
    for i in 0..300_000u64 {
        let noise = blake3::hash(&i.to_le_bytes()).to_hex().to_string();
        rows.push_str(&format!("{{\"id\": \"r{i:07}\", \"text\": \"{noise}{noise}{noise}\"}}\n"));
    }
    p.write("data/rows.jsonl", &rows);
    p.pipeline("stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  q: { op: sql, inputs: { t: raw }, params: { query: select count(*) as n from t } }\n");
    for attempt in 0..2 {
        let mut child = bucket
            .command(&p, &["run", "pipeline.yaml"])
            .env("FLEMING_LEASE_SECS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run");
        let objects = p.store().join("objects");
        let t = Instant::now();
        let big = |f: &std::path::PathBuf| std::fs::metadata(f).is_ok_and(|m| m.len() > 8 << 20);
        while !walk(&objects).iter().any(big) {
            assert!(t.elapsed() < Duration::from_secs(120), "the big object never appeared");
            assert!(child.try_wait().expect("wait").is_none(), "the run ended before it could be killed");
            std::thread::sleep(Duration::from_millis(2));
        }
        if attempt == 1 {
            // The second time a little later, into the upload.
            std::thread::sleep(Duration::from_millis(150));
        }
        child.kill().expect("kill -9");
        child.wait().expect("wait");
        if attempt == 0 {
            // Killed between its output and the publication of its cache entry.
            assert!(bucket.names("cache").is_empty(), "{:?}", bucket.names("cache"));
        }
        bucket.assert_consistent();
        let v = bucket.fleming(&p, &["verify", "pipeline.yaml"]);
        assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
        // The next attempt starts from a clean local cache: what is remote is all it has.
        std::fs::remove_dir_all(p.store()).expect("clear the local cache");
    }
    std::thread::sleep(Duration::from_secs(2));
    let r = bucket.fleming(&p, &["run", "pipeline.yaml"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    bucket.assert_consistent();
    let fresh = project("stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n");
    std::fs::copy(p.path().join("data/rows.jsonl"), fresh.path().join("data/rows.jsonl")).expect("copy");
    let again = bucket.run_ok(&fresh);
    assert!(again.stdout.contains("0 ran, 1 cached"), "{}", again.stdout);
}

#[test]
fn verify_and_gc_work_on_the_remote() {
    let bucket = Bucket::new("maint");
    let p = project(PIPELINE);
    bucket.run_ok(&p);
    // Corrupt the remote copy of `q`'s output (this machine's copy is fine).
    let q = p.output_digest("pipeline", "q", "table");
    let rel = format!("objects/{}/{}.parquet", &q[..2], &q[2..]);
    bucket
        .remote()
        .put(&rel, b"not parquet".to_vec(), fleming_artifacts::remote::PutMode::Overwrite)
        .expect("overwrite");
    let v = bucket.fleming(&p, &["verify", "pipeline.yaml"]);
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains(&rel), "{}", v.stdout);
    assert!(!bucket.names("objects").contains(&rel));
    // A clone recomputes what was lost, and only that.
    let b = project(PIPELINE);
    let r = bucket.run_ok(&b);
    assert_eq!(r.outcome("q"), "ran", "{}", r.stdout);
    assert_eq!(r.outcome("slow"), "cached");
    assert_eq!(bucket.fleming(&b, &["verify", "pipeline.yaml"]).code, 0);

    // A new query: the old outputs of `q` are no stage's; gc drops them from the remote.
    b.pipeline(&PIPELINE.replace("order by id", "order by id desc"));
    bucket.run_ok(&b);
    let before = bucket.names("objects").len();
    let g = bucket.fleming(&b, &["gc", "pipeline.yaml", "--keep-runs", "0", "--remote-grace-minutes", "0"]);
    assert_eq!(g.code, 0, "{}\n{}", g.stdout, g.stderr);
    assert!(g.stdout.contains("objects") && g.stdout.contains("from s3://fleming/maint"), "{}", g.stdout);
    let after = bucket.names("objects").len();
    assert!(after < before, "{before} -> {after}: {}", g.stdout);
    bucket.assert_consistent();
    // What is current is still shared.
    let c = project(&PIPELINE.replace("order by id", "order by id desc"));
    let r = bucket.run_ok(&c);
    assert!(r.stdout.contains("0 ran, 3 cached"), "{}", r.stdout);
}
