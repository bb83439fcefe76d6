//! Incremental reruns: nothing reruns when nothing changed, a param change reruns exactly
//! that stage and its dependents, early cutoff, --force, --stage, --until, --dry-run.

use crate::support::{Project, jsonl_rows, rows_jsonl};

const PIPELINE: &str = r#"
name: demo
stages:
  raw:
    op: load
    params: { path: data/rows.jsonl }
  big:
    op: sql
    inputs: { t: raw }
    params: { query: "select id, x from t where x >= ${MIN_X:-5} order by id" }
  count:
    op: sql
    inputs: { b: big }
    params: { query: "select 'n' as id, count(*) as n from b" }
  other:
    op: sql
    inputs: { t: raw }
    params: { query: "select id from t where x < 3 order by id" }
  out:
    op: export
    inputs: { table: count }
    params: { path: out/count.jsonl }
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(10));
    p.pipeline(PIPELINE);
    p
}

#[test]
fn rerun_executes_nothing() {
    let p = project();
    let first = p.run_ok(&[]);
    for s in ["raw", "big", "count", "other", "out"] {
        assert_eq!(first.outcome(s), "ran", "{}", first.stdout);
    }
    let n = p.manifests().len();
    let second = p.run_ok(&[]);
    for s in ["raw", "big", "count", "other", "out"] {
        assert_eq!(second.outcome(s), "cached", "{}", second.stdout);
    }
    assert_eq!(p.manifests().len(), n, "a cached rerun wrote manifests");
    assert!(second.stdout.contains("0 ran, 5 cached"), "{}", second.stdout);
    assert_eq!(jsonl_rows(&p.path().join("out/count.jsonl"))[0]["n"], 5);
}

#[test]
fn param_change_reruns_that_stage_and_dependents_only() {
    let p = project();
    p.run_ok(&[]);
    let r = p.command(&["run", "pipeline.yaml"]).env("MIN_X", "7").output().expect("run");
    let r = crate::support::Ran {
        code: r.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&r.stdout).into(),
        stderr: String::from_utf8_lossy(&r.stderr).into(),
    };
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.outcome("raw"), "cached");
    assert_eq!(r.outcome("other"), "cached");
    assert_eq!(r.outcome("big"), "ran");
    assert!(r.line("big").contains("params changed: query:"), "{}", r.line("big"));
    assert_eq!(r.outcome("count"), "ran");
    assert!(r.line("count").contains("input `b` changed"), "{}", r.line("count"));
    assert_eq!(r.outcome("out"), "ran");
    assert_eq!(jsonl_rows(&p.path().join("out/count.jsonl"))[0]["n"], 3);
}

#[test]
fn early_cutoff_keeps_downstream_cached() {
    let p = project();
    p.run_ok(&[]);
    // Edit the file so that `raw` changes but `other` (x < 3) does not.
    let mut content = rows_jsonl(10);
    content.push_str("{\"id\": \"r0100\", \"x\": 100}\n");
    p.write("data/rows.jsonl", &content);
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("raw"), "ran");
    assert!(r.line("raw").contains("file of `path` changed"), "{}", r.line("raw"));
    assert_eq!(r.outcome("other"), "ran", "its input changed");
    assert_eq!(r.outcome("big"), "ran");
    assert_eq!(r.outcome("count"), "ran");
    // `count`'s output changed (5 -> 6), so out ran. Now a change that leaves `big` equal:
    let mut content = rows_jsonl(10);
    content.push_str("{\"id\": \"r0100\", \"x\": 100}\n{\"id\": \"r0101\", \"x\": 1}\n");
    p.write("data/rows.jsonl", &content);
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("raw"), "ran");
    assert_eq!(r.outcome("big"), "ran");
    assert_eq!(r.outcome("other"), "ran");
    assert_eq!(r.outcome("count"), "cached", "early cutoff: `big` produced the same bytes\n{}", r.stdout);
    assert_eq!(r.outcome("out"), "cached");
}

#[test]
fn dry_run_says_why_and_runs_nothing() {
    let p = project();
    let r = p.run_ok(&["--dry-run"]);
    assert_eq!(r.outcome("raw"), "would run");
    assert!(r.line("raw").contains("new: never ran"), "{}", r.line("raw"));
    assert!(r.line("big").contains("upstream `raw` will run"), "{}", r.line("big"));
    assert!(p.manifests().is_empty());
    p.run_ok(&[]);
    let changed = PIPELINE.replace("x < 3", "x < 4");
    p.pipeline(&changed);
    let r = p.run_ok(&["-n"]);
    assert_eq!(r.outcome("raw"), "cached");
    assert_eq!(r.outcome("other"), "would run");
    assert!(r.line("other").contains(r#"params changed: query: "select id from t where x < 3 order by id" -> "select id from t where x < 4 order by id""#), "{}", r.line("other"));
    assert!(r.stdout.contains("1 would run, 4 cached"), "{}", r.stdout);
}

#[test]
fn force_stage_and_until() {
    let p = project();
    p.run_ok(&[]);
    let r = p.run_ok(&["--force", "--stage", "big"]);
    assert_eq!(r.outcome("big"), "ran");
    assert!(r.line("big").contains("forced"));
    assert_eq!(r.outcome("raw"), "cached");
    assert!(!r.stdout.lines().any(|l| l.starts_with("count ")), "stages outside the selection are not listed");

    // --stage with a stale upstream refuses to run it and says how.
    p.write("data/rows.jsonl", &rows_jsonl(12));
    let r = p.fleming(&["run", "pipeline.yaml", "--stage", "count"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(r.outcome("count"), "skipped");
    assert!(r.line("count").contains("use --until count"), "{}", r.line("count"));
    assert_eq!(r.outcome("raw"), "stale");

    let r = p.run_ok(&["--until", "count"]);
    assert_eq!(r.outcome("raw"), "ran");
    assert_eq!(r.outcome("count"), "ran");
    assert!(!r.stdout.lines().any(|l| l.starts_with("other ") || l.starts_with("out ")), "{}", r.stdout);
}

#[test]
fn deleted_export_is_written_again() {
    let p = project();
    p.run_ok(&[]);
    std::fs::remove_file(p.path().join("out/count.jsonl")).expect("rm");
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("out"), "ran");
    assert!(r.line("out").contains("effects"), "{}", r.line("out"));
    assert!(p.path().join("out/count.jsonl").exists());
}

#[test]
fn determinism_across_job_counts() {
    let a = project();
    let b = project();
    a.run_ok(&["-j", "1"]);
    b.run_ok(&["-j", "2"]);
    for (stage, port) in [("raw", "table"), ("big", "table"), ("count", "table"), ("other", "table")] {
        assert_eq!(a.output_digest("demo", stage, port), b.output_digest("demo", stage, port), "{stage}");
    }
    // Keys are portable: a second clone elsewhere computes the same stage keys.
    let keys = |p: &Project| -> Vec<String> {
        let mut k: Vec<String> =
            p.manifests().iter().map(|m| m["key"].as_str().unwrap_or_default().to_string()).collect();
        k.sort();
        k
    };
    assert_eq!(keys(&a), keys(&b));
}

#[test]
fn failing_stage_commits_nothing_and_keep_going_runs_the_rest() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(5));
    p.pipeline(
        r#"
stages:
  raw: { op: load, params: { path: data/rows.jsonl } }
  bad: { op: test-slow, inputs: { table: raw }, params: { fail_at: r0002 } }
  after_bad: { op: sql, inputs: { t: bad }, params: { query: "select * from t" } }
  good: { op: test-slow, inputs: { table: raw }, params: { tag: g } }
"#,
    );
    let r = p.fleming(&["run", "pipeline.yaml", "-j", "1", "--keep-going"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.outcome("bad"), "FAILED");
    assert!(r.stderr.contains("asked to fail at `r0002`"), "{}", r.stderr);
    assert_eq!(r.outcome("after_bad"), "skipped");
    assert!(r.line("after_bad").contains("upstream `bad` failed"));
    assert_eq!(r.outcome("good"), "ran");
    let failed = p.manifests_of("bad");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"], "failed");
    assert!(failed[0]["outputs"].as_object().is_some_and(|o| o.is_empty()));
    // The rows computed before the failure were memoised.
    let r = p.fleming(&["run", "pipeline.yaml", "-j", "1"]);
    assert_eq!(r.code, 1);
    let again = p.manifests_of("bad");
    assert_eq!(again[1]["metrics"]["memo_hits"], 2, "{:#}", again[1]);
}

#[test]
fn panicking_operator_fails_its_stage_only() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(3));
    p.pipeline(
        r#"
stages:
  raw: { op: load, params: { path: data/rows.jsonl } }
  boom: { op: test-slow, inputs: { table: raw }, params: { panic_at: r0001 } }
"#,
    );
    let r = p.fleming(&["run", "pipeline.yaml"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.outcome("boom"), "FAILED");
    assert!(r.stderr.contains("panicked: asked to panic at `r0001`"), "{}", r.stderr);
}
