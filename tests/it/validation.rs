//! Every validation error names file, line and column, exits 2, and runs nothing.

use crate::support::Project;

/// Runs `fleming validate` on `yaml`; returns stderr (asserting exit 2 and no store).
fn invalid(yaml: &str) -> String {
    let p = Project::new();
    p.write("data/rows.jsonl", "{\"id\": \"a\"}\n");
    p.pipeline(yaml);
    let r = p.fleming(&["validate", "pipeline.yaml"]);
    assert_eq!(r.code, 2, "expected exit 2 for:\n{yaml}\nstdout:{}\nstderr:{}", r.stdout, r.stderr);
    let run = p.fleming(&["run", "pipeline.yaml"]);
    assert_eq!(run.code, 2);
    assert!(!p.store().join("runs").exists() || p.manifests().is_empty(), "something ran");
    r.stderr
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

#[test]
fn yaml_syntax_error() {
    let e = invalid("stages:\n  a: { op: load\n  b: 1\n");
    assert!(first_line(&e).starts_with("pipeline.yaml:3:"), "{e}");
    assert!(first_line(&e).contains("YAML syntax error"), "{e}");
}

#[test]
fn unknown_op_suggests_the_closest() {
    let e = invalid("stages:\n  a:\n    op: lod\n    params: { path: data/rows.jsonl }\n");
    assert_eq!(first_line(&e), "pipeline.yaml:3:9: error: unknown operator `lod`");
    assert!(e.contains("= help: did you mean `load`?"), "{e}");
    assert!(e.contains("3 |     op: lod\n  |         ^"), "{e}");
}

#[test]
fn unknown_stage_and_port() {
    let e = invalid(
        "stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  q:\n    op: sql\n    inputs: { t: rwa }\n    params: { query: select * from t }\n",
    );
    assert_eq!(first_line(&e), "pipeline.yaml:5:18: error: stage `q` reads from `rwa`, which is not a stage");
    assert!(e.contains("did you mean `raw`?"), "{e}");
    let e = invalid(
        "stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  q:\n    op: sql\n    inputs: { t: raw.tabel }\n    params: { query: select * from t }\n",
    );
    assert_eq!(first_line(&e), "pipeline.yaml:5:18: error: stage `raw` (operator `load`) has no output `tabel`");
    assert!(e.contains("did you mean `table`?"), "{e}");
}

#[test]
fn unknown_input_port_of_op() {
    let e = invalid(
        "stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  out:\n    op: export\n    inputs: { tabel: raw }\n    params: { path: o.jsonl }\n",
    );
    assert!(e.contains("pipeline.yaml:5:15: error: operator `export` has no input `tabel`"), "{e}");
    assert!(e.contains("did you mean `table`?"));
    assert!(e.contains("stage `out` does not connect required input `table`"), "{e}");
}

#[test]
fn duplicate_keys() {
    let e = invalid(
        "stages:\n  a: { op: load, params: { path: data/rows.jsonl } }\n  a: { op: load, params: { path: data/rows.jsonl } }\n",
    );
    assert_eq!(first_line(&e), "pipeline.yaml:3:3: error: duplicate key `a`");
    assert!(e.contains("`a` is already set at line 2, column 3"), "{e}");
}

#[test]
fn cycles_are_printed() {
    let e = invalid(
        "stages:\n  a: { op: sql, inputs: { x: c }, params: { query: select * from x } }\n  b: { op: sql, inputs: { x: a }, params: { query: select * from x } }\n  c: { op: sql, inputs: { x: b }, params: { query: select * from x } }\n",
    );
    assert!(e.contains("error: the stages form a cycle: "), "{e}");
    let cycle = e.lines().find(|l| l.contains("cycle")).unwrap_or_default();
    assert!(
        cycle.ends_with("a -> b -> c -> a")
            || cycle.ends_with("b -> c -> a -> b")
            || cycle.ends_with("c -> a -> b -> c"),
        "{cycle}"
    );
    assert!(first_line(&e).starts_with("pipeline.yaml:"), "{e}");
}

#[test]
fn missing_unknown_and_mistyped_params() {
    let e =
        invalid("stages:\n  a:\n    op: load\n    params: { pth: data/rows.jsonl, header: yes-please, format: jsn }\n");
    assert!(e.contains("pipeline.yaml:4:15: error: stage `a`: unknown parameter `pth`"), "{e}");
    assert!(e.contains("did you mean `path`?"), "{e}");
    assert!(e.contains("error: stage `a`: missing required parameter `path` (path (read; content-hashed))"), "{e}");
    assert!(
        e.contains("pipeline.yaml:4:45: error: stage `a`: parameter `header` must be boolean, found a string"),
        "{e}"
    );
    assert!(
        e.contains(
            "error: stage `a`: parameter `format` must be one of auto, jsonl, json, csv, tsv, parquet, found `jsn`"
        ),
        "{e}"
    );
    assert!(e.contains("4 errors in pipeline.yaml"), "{e}");
}

#[test]
fn schema_mismatch_between_declared_ports() {
    // `test-slow`'s `extra` input needs a `value` column; `load`'s `rejects` declares its
    // columns and has none. (`load.table` is data-dependent: checked when it exists, see
    // `crash::data_dependent_schema_is_checked_at_run_time`.)
    let e = invalid(
        "stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  t: { op: test-slow, inputs: { table: raw, extra: raw.rejects } }\n  bad: { op: sql, inputs: { x: raw }, resources: { gpu: 1 }, params: { query: select 1 } }\n",
    );
    assert!(
        e.contains("pipeline.yaml:3:52: error: input `extra` of stage `t` cannot read `raw.rejects`: column `value` (Utf8) is missing"),
        "{e}"
    );
    assert!(
        e.contains(
            "pipeline.yaml:4:57: error: operator `sql` runs on the CPU; `resources.gpu` applies to GPU operators only"
        ),
        "{e}"
    );
}

#[test]
fn sql_errors_are_found_before_running() {
    let e = invalid(
        "stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  q: { op: sql, inputs: { t: raw }, params: { query: \"select * from tt\" } }\n",
    );
    assert!(
        e.contains("pipeline.yaml:3:54: error: stage `q`: the query reads `tt` which is not an input (inputs: `t`)"),
        "{e}"
    );
}

#[test]
fn interpolation_errors_and_secrets() {
    let e = invalid("stages:\n  a: { op: load, params: { path: \"${NOPE_NOT_SET}\" } }\n");
    assert!(e.contains("pipeline.yaml:2:34: error: environment variable `NOPE_NOT_SET` is not set"), "{e}");
    let e = invalid("stages:\n  a: { op: load, params: { path: \"${OPENAI_API_KEY:-x}\" } }\n");
    assert!(e.contains("looks like a secret"), "{e}");
}

#[test]
fn missing_input_file() {
    let e = invalid("stages:\n  a: { op: load, params: { path: data/nope.jsonl } }\n");
    assert!(e.starts_with("pipeline.yaml:2:34: error: stage `a`: `path` names "), "{e}");
    assert!(e.contains("nope.jsonl, which does not exist"), "{e}");
}

#[test]
fn unknown_fields_and_bad_shapes() {
    let e = invalid("stages:\n  a:\n    op: load\n    parms: { path: data/rows.jsonl }\n");
    assert!(e.contains("pipeline.yaml:4:5: error: unknown stage field `parms`"), "{e}");
    assert!(e.contains("did you mean `params`?"), "{e}");
    let e = invalid("stagez: {}\n");
    assert!(e.contains("unknown top-level field `stagez`"), "{e}");
    let e = invalid("- just\n- a list\n");
    assert!(e.contains("the pipeline file must be a mapping"), "{e}");
    let e = invalid("");
    assert!(e.contains("the pipeline file is empty"), "{e}");
}

#[test]
fn yaml_bombs_and_deep_nesting_are_refused_quickly() {
    let bomb = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\nstages: *i\n";
    let start = std::time::Instant::now();
    let e = invalid(bomb);
    assert!(start.elapsed().as_secs() < 20);
    assert!(e.contains("error"), "{e}");
    let deep = format!("stages: {}{}\n", "[".repeat(5000), "]".repeat(5000));
    let e = invalid(&deep);
    assert!(e.contains("error: YAML syntax error: recursion limit exceeded"), "{e}");
    let deep = format!("stages: {}{}\n", "[".repeat(100), "]".repeat(100));
    let e = invalid(&deep);
    assert!(e.contains("nesting deeper than 64 levels is not accepted"), "{e}");
    let long = format!("stages:\n  a: {{ op: load, params: {{ path: \"{}\" }} }}\n", "x".repeat(2_000_000));
    let e = invalid(&long);
    assert!(e.contains("does not exist"), "{}", &e[..200.min(e.len())]);
}

/// Pipelines as editors and YAML habits write them (issue 21).
mod as_users_write_them {
    use super::*;

    const PIPELINE: &str = "name: habits\nstages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  out: { op: export, inputs: { table: raw }, params: { path: out.jsonl } }\n";

    fn project() -> Project {
        let p = Project::new();
        p.write("data/rows.jsonl", "{\"id\": \"a\"}\n{\"id\": \"b\"}\n");
        p
    }

    #[test]
    fn a_byte_order_mark_and_crlf_line_endings_load() {
        for text in [format!("\u{feff}{PIPELINE}"), format!("\u{feff}{}", PIPELINE.replace('\n', "\r\n"))] {
            let p = project();
            p.pipeline(&text);
            let r = p.run_ok(&[]);
            assert_eq!(r.outcome("out"), "ran", "{}", r.stdout);
        }
        // Errors in such a file still point at the right line and column.
        let p = project();
        p.pipeline("\u{feff}stages:\r\n  raw:\r\n    op: lod\r\n");
        let r = p.fleming(&["validate", "pipeline.yaml"]);
        assert!(r.stderr.starts_with("pipeline.yaml:3:9: error: unknown operator `lod`"), "{}", r.stderr);
    }

    #[test]
    fn top_level_x_keys_hold_anchors_and_other_keys_are_still_refused() {
        let p = project();
        p.pipeline(
            "x-export: &export\n  op: export\n  params: { format: jsonl }\nx-unused: { anything: \"${SURELY_NOT_SET_ANYWHERE}\" }\nstages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  a:\n    <<: *export\n    inputs: { table: raw }\n    params: { format: jsonl, path: a.jsonl }\n  b: { <<: *export, inputs: { table: raw }, params: { path: b.jsonl } }\n",
        );
        let r = p.run_ok(&[]);
        assert_eq!((r.outcome("a"), r.outcome("b")), ("ran".into(), "ran".into()), "{}", r.stdout);
        assert!(p.path().join("a.jsonl").is_file() && p.path().join("b.jsonl").is_file());
        let e = invalid("common: &c { op: load }\nstages:\n  a: { <<: *c, params: { path: data/rows.jsonl } }\n");
        assert!(e.contains("pipeline.yaml:1:1: error: unknown top-level field `common`"), "{e}");
        assert!(e.contains("keys starting with `x-` are ignored"), "{e}");
    }

    #[test]
    fn a_stage_name_with_non_ascii_letters_is_refused_for_what_it_is() {
        let e = invalid("stages:\n  données: { op: load, params: { path: data/rows.jsonl } }\n");
        assert!(e.contains("stage name `données` may only contain ASCII letters, digits"), "{e}");
    }

    #[test]
    fn two_identical_stages_say_they_share_a_key() {
        let p = project();
        p.pipeline(
            "stages:\n  raw: { op: load, params: { path: data/rows.jsonl } }\n  copy1: { op: sql, inputs: { t: raw }, params: { query: select * from t } }\n  copy2: { op: sql, inputs: { t: raw }, params: { query: select * from t } }\n",
        );
        let r = p.run_ok(&[]);
        let (first, second) = if r.outcome("copy1") == "ran" { ("copy1", "copy2") } else { ("copy2", "copy1") };
        assert_eq!(r.outcome(first), "ran", "{}", r.stdout);
        let line = r.line(second);
        assert!(line.contains(&format!("stage `{first}` has the same key")), "{}", r.stdout);
        assert!(
            !r.stdout.contains("concurrent run") && !r.stderr.contains("another fleming run"),
            "{}{}",
            r.stdout,
            r.stderr
        );
    }
}
