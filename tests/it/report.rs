//! `fleming report`: one self-contained HTML page of the pipeline's state, read from the
//! store. (The quickstart's page, with training curves and evaluations, is checked by the
//! worker's suite: `worker/tests/it/quickstart.rs`.)

use crate::support::{Project, graph_boxes, rows_jsonl};

const PIPELINE: &str = r#"
name: rep
description: a <small> pipeline & its report
stages:
  raw:
    op: load
    params: { path: data/rows.jsonl }
  big:
    op: sql
    inputs: { t: raw }
    params: { query: "select * from t where x > 1" }
    checks:
      - { name: few, row_count: { max: 2 } }
  after:
    op: sql
    inputs: { t: big }
    params: { query: "select count(*) as n from t" }
  side:
    op: sql
    inputs: { t: raw }
    params: { query: "select id from t" }
"#;

#[test]
fn the_page_shows_each_stage_once_with_its_status_and_opens_alone() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(5));
    p.pipeline(PIPELINE);
    let before = p.fleming(&["report", "pipeline.yaml", "-o", "never.html"]);
    assert_eq!(before.code, 0, "{}\n{}", before.stdout, before.stderr);
    let page = std::fs::read_to_string(p.path().join("never.html")).expect("page");
    assert!(graph_boxes(&page).iter().all(|(_, s)| s == "never-ran"), "{:?}", graph_boxes(&page));

    // `big` keeps 3 rows, so its error check fails and `after` is blocked.
    let run = p.fleming(&["run", "pipeline.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    p.write("data/rows.jsonl", &rows_jsonl(6)); // `raw` changes: everything downstream is stale
    let r = p.fleming(&["report", "pipeline.yaml", "-o", "out/report.html"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let page = std::fs::read_to_string(p.path().join("out/report.html")).expect("page");
    let got = graph_boxes(&page);
    let want = [("raw", "stale"), ("big", "stale"), ("after", "never-ran"), ("side", "stale")];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())), "`after` was blocked, so it never ran");
    assert!(page.contains("a &lt;small&gt; pipeline &amp; its report"), "escaped description");
    // Nothing to fetch: no script, no external reference.
    assert!(!page.contains("<script") && !page.contains("http://") && !page.contains("https://"));
    // Three edges drawn: raw→big, big→after, raw→side.
    assert_eq!(page.matches("<path class=\"edge\"").count(), 3);

    // Back to the data it ran on: `raw`, `big` and `side` are cached, `big`'s check fails, `after` blocked.
    p.write("data/rows.jsonl", &rows_jsonl(5));
    p.fleming(&["report", "pipeline.yaml", "-o", "out/report.html"]);
    let page = std::fs::read_to_string(p.path().join("out/report.html")).expect("page");
    let got = graph_boxes(&page);
    let want = [("raw", "cached"), ("big", "check-failed"), ("after", "blocked"), ("side", "cached")];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert!(page.contains("few: failed, 1 failing row(s)"), "the failing check in the stage table");
    assert!(page.contains("check few failed: downstream is blocked"), "why `big` is red");
    assert!(page.contains("<td>table: 3 rows</td>"), "the output's row count");
}
