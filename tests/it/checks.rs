//! Data checks (`checks:`) and operator tests (`fleming test`).

use crate::support::{Project, Ran, repo, rows_jsonl};

fn pipeline(checks: &str) -> String {
    format!(
        r#"
name: chk
stages:
  raw:
    op: load
    params: {{ path: data/rows.jsonl }}
    checks:
{checks}
  after:
    op: sql
    inputs: {{ t: raw }}
    params: {{ query: "select count(*) as n from t" }}
"#
    )
}

fn project(checks: &str) -> Project {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(5));
    p.pipeline(&pipeline(checks));
    p
}

#[test]
fn failing_error_check_blocks_downstream() {
    let p = project(
        "      - { name: ids_unique, unique: id }\n      - { name: small_x, range: { column: x, max: 2 } }\n      - { name: enough_rows, row_count: { min: 1 }, severity: warn }\n",
    );
    let r = p.fleming(&["run", "pipeline.yaml"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.outcome("raw"), "ran");
    assert!(r.stdout.contains("✓ check `ids_unique` passed"), "{}", r.stdout);
    assert!(
        r.stdout.contains("✗ check `small_x` (error) FAILED: 2 failing row(s), e.g. {\"id\":\"r0003\",\"x\":3}"),
        "{}",
        r.stdout
    );
    assert_eq!(r.outcome("after"), "skipped");
    assert!(r.line("after").contains("blocked: check `small_x` of `raw` failed"), "{}", r.line("after"));
    let m = &p.manifests_of("raw")[0];
    assert_eq!(m["checks"].as_array().map(|a| a.len()), Some(3));
    assert_eq!(m["checks"][1]["status"], "failed");
    assert_eq!(m["checks"][1]["sample"][1]["id"], "r0004");
    // `status` says why downstream is blocked; `checks` lists every result and exits 1.
    let s = p.fleming(&["status", "pipeline.yaml"]);
    assert!(s.stdout.contains("  after  [sql]   blocked  blocked: check `small_x` of `raw` failed"), "{}", s.stdout);
    let c = p.fleming(&["checks", "pipeline.yaml"]);
    assert_eq!(c.code, 1);
    let lines: Vec<&str> = c.stdout.lines().collect();
    assert_eq!(lines[0], "stage  check        severity  status  failing  evaluated");
    assert!(lines[1].starts_with("raw    ids_unique   error     passed  0        "), "{}", c.stdout);
    assert!(lines[2].starts_with("raw    small_x      error     FAILED  2        "), "{}", c.stdout);
    assert!(lines[3].starts_with("raw    enough_rows  warn      passed  0        "), "{}", c.stdout);
    assert!(c.stdout.contains("    {\"id\":\"r0003\",\"x\":3}"), "{}", c.stdout);
    // Results are a table in `fleming query`.
    let q = p.fleming(&[
        "query",
        "pipeline.yaml",
        "select \"check\", status from checks order by \"check\"",
        "--format",
        "csv",
    ]);
    assert_eq!(q.stdout, "check,status\nenough_rows,passed\nids_unique,passed\nsmall_x,failed\n");
}

#[test]
fn warn_checks_only_report() {
    let p = project("      - { name: small_x, range: { column: x, max: 2 }, severity: warn }\n");
    let r = p.run_ok(&[]);
    assert!(r.stdout.contains("✗ check `small_x` (warn) FAILED: 2 failing row(s)"), "{}", r.stdout);
    assert_eq!(r.outcome("after"), "ran");
    assert!(r.stdout.contains("1 check(s) not passing: raw.small_x"), "{}", r.stdout);
}

#[test]
fn check_results_are_cached_and_reevaluated_when_the_check_changes() {
    let p = project("      - { name: small_x, sql: \"select * from \\\"table\\\" where x > 10\" }\n");
    p.run_ok(&[]);
    let evaluated = |p: &Project| -> String {
        let q = p.fleming(&[
            "query",
            "pipeline.yaml",
            "select evaluated_at from checks order by evaluated_at desc limit 1",
            "--format",
            "csv",
        ]);
        q.stdout.lines().nth(1).unwrap_or_default().to_string()
    };
    let first = evaluated(&p);
    let runs = p.manifests().len();
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("raw"), "cached");
    assert_eq!(evaluated(&p), first, "a cached stage re-evaluated an unchanged check");
    p.pipeline(&pipeline("      - { name: small_x, sql: \"select * from \\\"table\\\" where x > 3\" }\n"));
    let r = p.fleming(&["run", "pipeline.yaml"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.outcome("raw"), "cached", "changing a check must not rerun the stage");
    assert!(r.stdout.contains("✗ check `small_x` (error) FAILED: 1 failing row(s)"), "{}", r.stdout);
    assert_ne!(evaluated(&p), first);
    assert_eq!(p.manifests().len(), runs, "nothing reran");
    // --skip-checks, loudly.
    let r = p.fleming(&["run", "pipeline.yaml", "--skip-checks"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("WARNING: --skip-checks"), "{}", r.stderr);
    assert_eq!(r.outcome("after"), "cached");
}

#[test]
fn check_definitions_are_validated() {
    let p = project(
        "      - { name: a, unique: id, not_null: [x] }\n      - { name: b, range: { column: x } }\n      - { name: c, sql: \"select * from nope\" }\n      - { name: d, port: rejects, not_null: [nope] }\n",
    );
    let r = p.fleming(&["validate", "pipeline.yaml"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("pipeline.yaml:8:9: error: check `a` must have exactly one of sql, row_count, not_null, unique, accepted_values, range"), "{}", r.stderr);
    assert!(r.stderr.contains("error: `range` is `{ column: c, min: x, max: y }` (min, max or both)"), "{}", r.stderr);
    assert!(r.stderr.contains("error: check `c` reads `nope`, which is not an output of the stage"), "{}", r.stderr);
    assert!(r.stderr.contains("error: check `d`: the output has no column `nope`"), "{}", r.stderr);
}

#[test]
fn shipped_operator_tests_pass() {
    let p = Project::new();
    let ops = repo().join("tests/ops");
    // No torch worker in this suite: the cases that need it are reported as not run
    // (`make test` runs them all with the worker, and `--require-worker`).
    let r = Ran::from(
        p.command(&["test", ops.to_str().expect("path")])
            .env("FLEMING_WORKER", "/nonexistent/fleming-worker")
            .output()
            .expect("run"),
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let summary = r.stdout.lines().rev().nth(1).unwrap_or_default();
    assert!(summary.contains(" passed, 0 failed, ") && summary.contains(" not run in "), "{}", r.stdout);
    assert!(r.stdout.contains("SKIP  ") && r.stdout.contains("[sft]"), "{}", r.stdout);
    assert!(r.stdout.lines().last().unwrap_or_default().starts_with("not run: "), "{}", r.stdout);
    for op in ["load", "sql", "export"] {
        assert!(r.stdout.contains(&format!("[{op}]")), "no cases for {op}: {}", r.stdout);
    }
    let r = p.fleming(&["test", ops.to_str().expect("path"), "--op", "sql"]);
    assert!(r.stdout.lines().filter(|l| l.starts_with("ok")).all(|l| l.contains("[sql]")), "{}", r.stdout);
}

#[test]
fn worker_operator_cases_run_in_the_worker_or_say_they_did_not() {
    let p = Project::new();
    p.write(
        "t/worker.yaml",
        r#"
op: test-worker
cases:
  - name: copies its input in the worker
    inputs: { table: [{ id: a }, { id: b }] }
    expect: { rows: [{ id: a, device: "cpu:" }, { id: b, device: "cpu:" }] }
  - name: a failing worker fails the case
    params: { mode: fail }
    inputs: { table: [{ id: a }] }
    expect: { error: "failing on purpose" }
"#,
    );
    // With a worker (here `fleming-test-worker`), through the harness as in a pipeline.
    let r = p.fleming(&["test", "t"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("2 passed, 0 failed in "), "{}", r.stdout);
    // Without one: not run, said clearly, and not a failure unless asked.
    let without = |extra: &[&str]| {
        let mut args = vec!["test", "t"];
        args.extend_from_slice(extra);
        Ran::from(p.command(&args).env("FLEMING_WORKER", "/nonexistent/worker").output().expect("run"))
    };
    let r = without(&[]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stdout.contains("SKIP  t/worker.yaml [test-worker] copies its input in the worker: not run"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("0 passed, 0 failed, 2 not run in "), "{}", r.stdout);
    assert!(
        r.stdout.contains("not run: operator `test-worker` runs in the torch worker, which is not built"),
        "{}",
        r.stdout
    );
    let r = without(&["--require-worker"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("0 passed, 2 failed in "), "{}", r.stdout);
}

#[test]
fn failing_cases_are_reported_precisely() {
    let p = Project::new();
    p.write(
        "t/cases.yaml",
        r#"
op: sql
cases:
  - name: right
    params: { query: "select id from t order by id" }
    inputs: { t: [{ id: a }, { id: b }] }
    expect: { rows: [{ id: a }, { id: b }] }
  - name: wrong rows
    params: { query: "select id, x from t order by id" }
    inputs: { t: [{ id: a, x: 1 }, { id: b, x: 2 }] }
    expect: { rows: [{ id: a, x: 1 }, { id: b, x: 3 }, { id: c }] }
  - name: wrong assertion
    params: { query: "select * from t" }
    inputs: { t: [{ id: a, x: -1 }] }
    expect: { sql: ["select * from \"table\" where x < 0"] }
  - name: expected an error
    params: { query: "select * from t" }
    inputs: { t: [{ id: a }] }
    expect: { error: "boom" }
"#,
    );
    let r = p.fleming(&["test", "t"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("ok    t/cases.yaml [sql] right"), "{}", r.stdout);
    assert!(
        r.stdout.contains(
            "FAIL  t/cases.yaml [sql] wrong rows\n      output `table`: rows differ\n        (3 expected, 2 actual)\n        row 2:\n          - expected {\"id\":\"b\",\"x\":3}\n          + actual   {\"id\":\"b\",\"x\":2}\n        row 3: missing\n          - expected {\"id\":\"c\"}\n"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("FAIL  t/cases.yaml [sql] wrong assertion\n      output `table`: `select * from \"table\" where x < 0` returned 1 failing row(s), e.g.\n          {\"id\":\"a\",\"x\":-1}\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("FAIL  t/cases.yaml [sql] expected an error\n      expected an error containing \"boom\", but the operator succeeded"), "{}", r.stdout);
    assert!(r.stdout.lines().last().unwrap_or_default().starts_with("1 passed, 3 failed in "), "{}", r.stdout);
    let r = p.fleming(&["test", "t", "--op", "load"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no cases for operator `load`"), "{}", r.stderr);
}
