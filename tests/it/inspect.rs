//! Inspection commands: status, dag, lineage (stage and record), show, query, ops, gc,
//! verify.

use crate::support::{Project, rows_jsonl};

const PIPELINE: &str = r#"
name: insp
stages:
  raw:
    op: load
    params: { path: data/rows.jsonl }
  doubled:
    op: sql
    inputs: { t: raw }
    params: { query: "select 'd-' || id as id, make_array(id) as parents, x * 2 as x from t order by id" }
  picked:
    op: sql
    inputs: { d: doubled }
    params: { query: "select 'p-' || id as id, make_array(id) as parents, x from d where x >= 4 order by id" }
  out:
    op: export
    inputs: { table: picked }
    params: { path: out/picked.jsonl }
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(4));
    p.pipeline(PIPELINE);
    p
}

#[test]
fn status_says_cached_or_stale_and_why() {
    let p = project();
    let r = p.fleming(&["status", "pipeline.yaml"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[1].starts_with("  raw      [load]    stale    new: never ran"), "{}", r.stdout);
    assert!(r.stdout.contains("4 stages: 0 cached, 4 stale"), "{}", r.stdout);
    p.run_ok(&[]);
    let r = p.fleming(&["status", "pipeline.yaml"]);
    assert!(r.stdout.contains("4 stages: 4 cached, 0 stale"), "{}", r.stdout);
    p.pipeline(&PIPELINE.replace("x >= 4", "x >= 6"));
    let r = p.fleming(&["status", "pipeline.yaml"]);
    assert!(r.stdout.contains("  picked   [sql]     stale    params changed: query:"), "{}", r.stdout);
    assert!(r.stdout.contains("  out      [export]  stale    upstream `picked` will run"), "{}", r.stdout);
    assert!(r.stdout.contains("4 stages: 2 cached, 2 stale"), "{}", r.stdout);
    // status changes nothing.
    assert_eq!(p.manifests().len(), 4);
}

#[test]
fn dag_in_three_formats() {
    let p = project();
    let r = p.fleming(&["dag", "pipeline.yaml"]);
    assert_eq!(
        r.stdout,
        "raw [load]\ndoubled [sql]  (t ← raw.table)\npicked [sql]  (d ← doubled.table)\nout [export]  (table ← picked.table)\n"
    );
    let r = p.fleming(&["dag", "pipeline.yaml", "--format", "mermaid"]);
    assert_eq!(
        r.stdout,
        "flowchart LR\n  s_raw[\"raw<br/>[load]\"]\n  s_doubled[\"doubled<br/>[sql]\"]\n  s_picked[\"picked<br/>[sql]\"]\n  s_out[\"out<br/>[export]\"]\n  s_raw -->|table→t| s_doubled\n  s_doubled -->|table→d| s_picked\n  s_picked -->|table→table| s_out\n"
    );
    let r = p.fleming(&["dag", "pipeline.yaml", "--format", "dot"]);
    assert!(r.stdout.starts_with("digraph \"insp\" {"), "{}", r.stdout);
    assert!(r.stdout.contains("  \"doubled\" -> \"picked\" [label=\"table→d\"];"), "{}", r.stdout);
}

#[test]
fn lineage_of_stages_and_records() {
    let p = project();
    p.run_ok(&[]);
    let r = p.fleming(&["lineage", "pipeline.yaml", "out"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let names: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains(" ["))
        .map(|l| l.trim_start_matches(|c: char| !c.is_alphanumeric()))
        .collect();
    assert!(names[0].starts_with("out [export v1] key "), "{}", r.stdout);
    assert!(r.stdout.contains("table ← picked [sql v1]"), "{}", r.stdout);
    assert!(r.stdout.contains("d ← doubled [sql v1]"), "{}", r.stdout);
    assert!(r.stdout.contains("t ← raw [load v1]"), "{}", r.stdout);
    assert!(r.stdout.contains("file path: data/rows.jsonl"), "{}", r.stdout);
    let j = p.fleming(&["lineage", "pipeline.yaml", "raw", "--down", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("json");
    assert_eq!(v["stage"], "raw");
    assert_eq!(v["edges"][0]["node"]["stage"], "doubled");
    assert_eq!(v["edges"][0]["node"]["edges"][0]["node"]["stage"], "picked");
    // By artifact digest.
    let d = p.output_digest("insp", "picked", "table");
    let r = p.fleming(&["lineage", "pipeline.yaml", &d[..10]]);
    assert!(r.stdout.starts_with("picked [sql v1]"), "{}", r.stdout);

    // Record lineage across three stages, up and down.
    let r = p.fleming(&["lineage", "pipeline.yaml", "picked", "--record", "p-d-r0003"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "picked.table p-d-r0003  x=6\n└← doubled.table d-r0003  x=6\n   └← raw.table r0003  x=3\n");
    let r = p.fleming(&["lineage", "pipeline.yaml", "raw", "--record", "r0002", "--down"]);
    assert_eq!(r.stdout, "raw.table r0002  x=2\n└→ doubled.table d-r0002  x=4\n   └→ picked.table p-d-r0002  x=4\n");
    // A stage that passes records through with their `parents` column (`select *`) links each
    // to the same record upstream, not to its parents' ids (which are not in its input).
    p.pipeline(&format!(
        "{PIPELINE}  kept:\n    op: sql\n    inputs: {{ k: picked }}\n    params: {{ query: \"select * from k\" }}\n"
    ));
    p.run_ok(&[]);
    let r = p.fleming(&["lineage", "pipeline.yaml", "kept", "--record", "p-d-r0003"]);
    assert_eq!(
        r.stdout,
        "kept.table p-d-r0003  x=6\n└← picked.table p-d-r0003  x=6\n   └← doubled.table d-r0003  x=6\n      └← raw.table r0003  x=3\n"
    );
    let r = p.fleming(&["lineage", "pipeline.yaml", "doubled", "--record", "d-r0003", "--down"]);
    assert!(r.stdout.ends_with("└→ picked.table p-d-r0003  x=6\n   └→ kept.table p-d-r0003  x=6\n"), "{}", r.stdout);
    let r = p.fleming(&["lineage", "pipeline.yaml", "picked", "--record", "nope"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no record with id `nope` in picked.table"), "{}", r.stderr);
}

#[test]
fn show_and_query() {
    let p = project();
    p.run_ok(&[]);
    let r = p.fleming(&["show", "pipeline.yaml", "picked", "--rows", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("  2 rows"), "{}", r.stdout);
    assert!(r.stdout.contains("| p-d-r0002 | [d-r0002] | 4 |"), "{}", r.stdout);
    assert!(!r.stdout.contains("p-d-r0003"), "{}", r.stdout);
    let r = p.fleming(&["show", "pipeline.yaml", "raw.rejects", "--schema"]);
    assert!(r.stdout.contains("  line                     Int64 not null"), "{}", r.stdout);
    let r = p.fleming(&[
        "query",
        "pipeline.yaml",
        "select d.id, r.x from doubled d join raw_table r on d.parents[1] = r.id order by d.id",
        "--format",
        "csv",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,x\nd-r0000,0\nd-r0001,1\nd-r0002,2\nd-r0003,3\n");
    let r = p.fleming(&["query", "pipeline.yaml", "select stage, status from runs order by stage", "--format", "json"]);
    assert_eq!(
        r.stdout,
        "{\"stage\":\"doubled\",\"status\":\"succeeded\"}\n{\"stage\":\"out\",\"status\":\"succeeded\"}\n{\"stage\":\"picked\",\"status\":\"succeeded\"}\n{\"stage\":\"raw\",\"status\":\"succeeded\"}\n"
    );
    let r = p.fleming(&["query", "pipeline.yaml", "select count(*) as n from picked"]);
    assert!(r.stdout.contains("| n |") && r.stdout.contains("| 2 |"), "{}", r.stdout);
    let out = p.path().join("q.parquet");
    let r = p.fleming(&[
        "query",
        "pipeline.yaml",
        "select * from picked",
        "--format",
        "parquet",
        "-o",
        out.to_str().expect("path"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let f = std::fs::File::open(&out).expect("parquet");
    let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("reader")
        .build()
        .expect("build")
        .map(|b| b.expect("batch").num_rows())
        .sum();
    assert_eq!(rows, 2);
    let r = p.fleming(&["query", "pipeline.yaml", "select * from nope"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
}

/// `fleming query … | head` and the like: when the reader has gone, a printing command
/// ends as Unix tools do (SIGPIPE, no message), not with a panic.
#[test]
fn printing_commands_end_quietly_when_the_reader_leaves() {
    use std::os::unix::process::ExitStatusExt;
    let p = project();
    p.run_ok(&[]);
    p.write(
        "t/cases.yaml",
        "op: sql\ncases:\n  - name: one\n    params: { query: \"select 1 as x\" }\n    expect: { rows: [{ x: 1 }] }\n",
    );
    // `gc`, `verify` and `test` print only after their work, and end the same way.
    let commands: [&[&str]; 7] = [
        &["show", "pipeline.yaml", "picked"],
        &["query", "pipeline.yaml", "select * from picked"],
        &["dag", "pipeline.yaml"],
        &["ops"],
        &["verify", "pipeline.yaml"],
        &["gc", "pipeline.yaml"],
        &["test", "t"],
    ];
    for args in commands {
        // The reader is closed before the command starts: its first print finds no reader.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = p.command(args).stdout(writer).output().expect("run fleming");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {:?} {stderr}", out.status);
    }
}

#[test]
fn ops_catalogue() {
    let p = Project::new();
    let r = p.fleming(&["ops"]);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("load ") && l.contains("v1  Read a JSONL, JSON, CSV or Parquet file into a table")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.lines().any(|l| l.starts_with("sft ") && l.ends_with("(GPU worker)")), "{}", r.stdout);
    let r = p.fleming(&["ops", "load"]);
    assert!(r.stdout.starts_with("load v1 — Read a JSONL, JSON, CSV or Parquet file into a table\n"), "{}", r.stdout);
    assert!(
        r.stdout.contains(
            "  path (path (read; content-hashed), required)\n      File to read, relative to the pipeline file\n"
        ),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("  format (one of auto|jsonl|json|csv|tsv|parquet, default \"auto\")"), "{}", r.stdout);
    assert!(r.stdout.contains("  rejects: table [id: Utf8, line: Int64, reason: Utf8, raw: Utf8]"), "{}", r.stdout);
    let r = p.fleming(&["ops", "lod"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `load`?"), "{}", r.stderr);
}

#[test]
fn gc_keeps_what_current_stages_reference() {
    let p = project();
    p.run_ok(&[]);
    p.pipeline(&PIPELINE.replace("x * 2", "x * 3"));
    p.run_ok(&[]);
    let objects = |p: &Project| -> usize {
        walk(&p.store().join("objects")).iter().filter(|f| f.extension().is_some_and(|x| x == "parquet")).count()
    };
    let before = objects(&p);
    let r = p.fleming(&["gc", "pipeline.yaml", "--keep-runs", "0", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("would remove 3 objects"), "{}", r.stdout);
    assert_eq!(objects(&p), before, "dry run removed something");
    let r = p.fleming(&["gc", "pipeline.yaml", "--keep-runs", "0"]);
    assert!(r.stdout.starts_with("removed 3 objects"), "{}", r.stdout);
    assert_eq!(objects(&p), before - 3);
    let r = p.run_ok(&[]);
    assert!(r.stdout.contains("0 ran, 4 cached"), "gc deleted something current: {}", r.stdout);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn verify_quarantines_a_flipped_byte_and_the_next_run_recomputes() {
    let p = project();
    p.run_ok(&[]);
    let r = p.fleming(&["verify", "pipeline.yaml"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("checked 5 objects"), "{}", r.stdout);
    let d = p.output_digest("insp", "doubled", "table");
    let obj = p.store().join("objects").join(&d[..2]).join(format!("{}.parquet", &d[2..]));
    let mut bytes = std::fs::read(&obj).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let mut perms = std::fs::metadata(&obj).expect("meta").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&obj, perms).expect("chmod");
    std::fs::write(&obj, &bytes).expect("write");
    let r = p.fleming(&["verify", "pipeline.yaml"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains(&format!("CORRUPT {}", obj.display())), "{}", r.stdout);
    assert!(!obj.exists());
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("doubled"), "ran");
    assert!(r.line("doubled").contains("cached outputs are missing"), "{}", r.line("doubled"));
    assert_eq!(r.outcome("picked"), "cached", "the recomputed output has the same digest");
    assert_eq!(p.output_digest("insp", "doubled", "table"), d);
}

#[test]
fn source_change_without_version_bump_is_warned() {
    let p = project();
    p.run_ok(&[]);
    // Pretend `doubled` was computed by an older build of `sql` with the same version.
    let key = {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.store().join("refs/insp/doubled.json")).expect("ref"))
                .expect("json");
        r["key"].as_str().expect("key").to_string()
    };
    let entry = p.store().join("cache").join(&key[..2]).join(format!("{}.json", &key[2..]));
    let text = std::fs::read_to_string(&entry).expect("entry");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["op_fingerprint"] = serde_json::Value::from("0000000000000000");
    std::fs::write(&entry, serde_json::to_string(&v).expect("json")).expect("write");
    let warning = "warning: operator `sql` changed since stage `doubled` was computed, but its version is still 1: the cached outputs are reused. Bump the operator's version (or run with --force) to recompute.";
    let s = p.fleming(&["status", "pipeline.yaml"]);
    assert!(s.stdout.contains(warning), "{}", s.stdout);
    let r = p.run_ok(&[]);
    assert_eq!(r.outcome("doubled"), "cached");
    assert!(r.stderr.contains(warning), "{}", r.stderr);
}
