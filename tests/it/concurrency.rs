//! Two `fleming run`s on one store both succeed; each stage key is computed once.

use crate::support::{Project, rows_jsonl};

#[test]
fn two_concurrent_runs_compute_each_key_once() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(30));
    p.pipeline(
        r#"
name: conc
stages:
  raw: { op: load, params: { path: data/rows.jsonl } }
  slow: { op: test-slow, inputs: { table: raw }, params: { tag: c, delay_ms: 40 } }
  n: { op: sql, inputs: { t: slow }, params: { query: "select count(*) as n from t" } }
"#,
    );
    let a = p
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("a");
    let b = p
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("b");
    let a = a.wait_with_output().expect("a");
    let b = b.wait_with_output().expect("b");
    for o in [&a, &b] {
        assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    for stage in ["raw", "slow", "n"] {
        let ms = p.manifests_of(stage);
        assert_eq!(ms.len(), 1, "stage `{stage}` computed {} times", ms.len());
    }
    let outs = format!("{}{}", String::from_utf8_lossy(&a.stdout), String::from_utf8_lossy(&b.stdout));
    assert!(outs.contains("computed by a concurrent run") || outs.matches("cached").count() >= 3, "{outs}");
    let r = p.run_ok(&[]);
    assert!(r.stdout.contains("0 ran, 3 cached"), "{}", r.stdout);
}
