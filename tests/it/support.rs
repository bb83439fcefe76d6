//! Helpers: a temporary project with a pipeline file, and running `fleming` in it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root. Read at run time (cargo sets it for tests): a test binary in a
/// target directory shared by several clones must not use the path it was built from.
pub fn repo() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
}

/// A temporary directory holding a pipeline and its data.
pub struct Project {
    pub dir: tempfile::TempDir,
}

/// What a `fleming` invocation printed.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The outcome column of the summary line of a stage (`ran`, `cached`, ...).
    pub fn outcome(&self, stage: &str) -> String {
        for line in self.stdout.lines() {
            let mut cols = line.split_whitespace();
            if cols.next() == Some(stage) {
                let _op = cols.next();
                let rest: Vec<&str> = cols.collect();
                if rest.len() >= 2 && rest[0] == "would" && rest[1] == "run" {
                    return "would run".into();
                }
                if rest.len() >= 2 && rest[0] == "not" && rest[1] == "selected" {
                    return "not selected".into();
                }
                return rest.first().map(|s| s.to_string()).unwrap_or_default();
            }
        }
        panic!("no line for stage `{stage}` in:\n{}\n{}", self.stdout, self.stderr);
    }

    /// The summary line of a stage.
    pub fn line(&self, stage: &str) -> String {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no line for `{stage}` in:\n{}", self.stdout))
            .to_string()
    }
}

pub fn fleming_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fleming")
}

pub fn test_worker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fleming-test-worker")
}

impl Project {
    pub fn new() -> Project {
        Project { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
        p
    }

    pub fn pipeline(&self, yaml: &str) -> PathBuf {
        self.write("pipeline.yaml", yaml)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(fleming_bin());
        c.current_dir(self.dir.path())
            .args(args)
            .env("FLEMING_TEST_OPS", "1")
            .env("FLEMING_WORKER", test_worker_bin())
            .env("FLEMING_GPUS", "none")
            .env_remove("FLEMING_STORE")
            .env_remove("FLEMING_LOG");
        c
    }

    pub fn fleming(&self, args: &[&str]) -> Ran {
        Ran::from(self.command(args).output().expect("run fleming"))
    }

    /// Starts `fleming run pipeline.yaml`, lets it make `calls` requests to `server` and
    /// run 1.2 s more, then kills it with SIGKILL. Returns the requests made by then.
    pub fn run_killed_after_calls(&self, server: &fleming_testkit::TestServer, calls: u64) -> u64 {
        let mut child = self
            .command(&["run", "pipeline.yaml", "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start fleming");
        let t = std::time::Instant::now();
        while server.request_count() < calls && t.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(1200));
        child.kill().expect("kill fleming");
        child.wait().expect("wait for fleming");
        server.request_count()
    }

    /// `fleming run pipeline.yaml ARGS`, which must succeed.
    pub fn run_ok(&self, args: &[&str]) -> Ran {
        let mut all = vec!["run", "pipeline.yaml"];
        all.extend_from_slice(args);
        let r = self.fleming(&all);
        assert_eq!(r.code, 0, "fleming {all:?} failed:\n{}\n{}", r.stdout, r.stderr);
        r
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join(".fleming")
    }

    /// Every manifest in the store.
    pub fn manifests(&self) -> Vec<Value> {
        let dir = self.store().join("runs");
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => {
                rd.map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect()
            }
            Err(_) => return Vec::new(),
        };
        paths.sort();
        paths.iter().map(|p| serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")).collect()
    }

    /// Manifests of one stage.
    pub fn manifests_of(&self, stage: &str) -> Vec<Value> {
        self.manifests().into_iter().filter(|m| m["stage"] == stage).collect()
    }

    /// The current output digest of a stage port (from its ref).
    pub fn output_digest(&self, pipeline: &str, stage: &str, port: &str) -> String {
        let p = self.store().join("refs").join(pipeline).join(format!("{stage}.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .expect("json");
        v["outputs"][port]["digest"].as_str().expect("digest").to_string()
    }
}

/// Rows of a JSONL file written by `export`.
pub fn jsonl_rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// A JSONL file with `n` rows `{"id": "r<i>", "x": i}`.
pub fn rows_jsonl(n: usize) -> String {
    (0..n).map(|i| format!("{{\"id\": \"r{i:04}\", \"x\": {i}}}\n")).collect()
}

/// An OpenAI-compatible chat handler that answers every request with `text` after `delay`.
pub fn slow_chat(
    delay: std::time::Duration,
    text: &'static str,
) -> impl Fn(&fleming_testkit::Request) -> fleming_testkit::Response + Send + Sync + 'static {
    move |req: &fleming_testkit::Request| {
        std::thread::sleep(delay);
        let body = req.json().unwrap_or(Value::Null);
        fleming_testkit::Response::json(
            200,
            &serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "model": body["model"]}),
        )
    }
}

/// Writes `items.jsonl` into the project: `n` distinct MedQA-format items whose answer is B.
pub fn write_medqa_items(p: &Project, n: usize) {
    let mut lines = String::new();
    for i in 0..n {
        lines.push_str(&serde_json::json!({"question": format!("Question {i}: which organ makes hormone {}?", i * 7919 % 10007), "options": {"A": "Liver", "B": "Pancreas", "C": "Kidney", "D": "Thyroid"}, "answer_idx": "B", "answer": "Pancreas"}).to_string());
        lines.push('\n');
    }
    p.write("items.jsonl", &lines);
}

/// `(stage, data-status)` of each box of the graph in a page of `fleming report` or `fleming ui`.
pub fn graph_boxes(page: &str) -> Vec<(String, String)> {
    page.split("<g class=\"stage\" data-stage=\"")
        .skip(1)
        .filter_map(|rest| {
            let (stage, rest) = rest.split_once('"')?;
            let status = rest.split("data-status=\"").nth(1)?.split('"').next()?;
            Some((stage.to_string(), status.to_string()))
        })
        .collect()
}

/// `FLEMING_SHARED_DATA`, else `../shared/data` beside the repository; a clear failure
/// when missing.
pub fn shared_data() -> PathBuf {
    let dir =
        std::env::var_os("FLEMING_SHARED_DATA").map(PathBuf::from).unwrap_or_else(|| repo().join("../shared/data"));
    assert!(
        dir.join("wiki").is_dir() && dir.join("kg").is_dir(),
        "shared data not found at {} (set FLEMING_SHARED_DATA to the directory holding wiki/ and kg/)",
        dir.display()
    );
    dir
}

/// A generated wiki fixture of `entities` entities (`fleming fixtures wiki`, bz2 dump,
/// lexicon, truth) in `p/dir`.
pub fn wiki_fixture(p: &Project, dir: &str, entities: u32) -> PathBuf {
    let shared = shared_data();
    let fx = p.path().join(dir);
    let g = p.fleming(&[
        "fixtures",
        "wiki",
        "--out",
        fx.to_str().expect("path"),
        "--entities",
        &entities.to_string(),
        "--bz2",
        "--shared",
        shared.to_str().expect("path"),
    ]);
    assert_eq!(g.code, 0, "{}\n{}", g.stdout, g.stderr);
    fx
}
