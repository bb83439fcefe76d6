//! Operator tests without writing Rust: YAML files of cases, each running one operator
//! through the [`Harness`] on small inline or file inputs, with expectations on its
//! outputs (exact rows, row counts, SQL assertions) or on its failure.
//!
//! ```yaml
//! op: sql                                  # default operator of the cases below
//! cases:
//!   - name: keeps the hard items
//!     params: { query: "select id from q where difficulty <> 'easy' order by id" }
//!     inputs:
//!       q: [{ id: a, difficulty: easy }, { id: b, difficulty: hard }]   # inline rows
//!     expect:
//!       rows: [{ id: b }]                  # the default output, in order
//!   - name: reads a file
//!     op: load
//!     params: { path: fixtures/items.jsonl }   # relative to this file
//!     expect:
//!       outputs:
//!         table: { row_count: 3, sql: ["select * from \"table\" where id is null"] }
//!         rejects: { rows: [] }
//!   - name: rejects bad SQL
//!     params: { query: "select nope from q" }
//!     inputs: { q: [{ id: a }] }
//!     expect: { error: "nope" }
//! ```
//!
//! Inputs are lists of rows, or `{ file: path }` (JSONL, JSON array, or Parquet), or
//! `{ tables: [...] }` of those for a port that takes several. In
//! `rows`, only the columns written are compared (numbers by value); `ordered: false`
//! compares rows as a multiset. Each `sql` query must return no rows (it selects the
//! failing ones); the checked output is the table `table`. `${TEST_TMP}` in params is a
//! scratch directory of the case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use fleming_artifacts::Table;
use fleming_artifacts::table::{from_json_rows, to_json_rows};
use serde_json::{Map, Value};

use crate::harness::Harness;
use crate::keys::canonical_json;
use crate::op::{OutputValue, Registry};

/// One case, as read from a file.
#[derive(Clone, Debug)]
pub struct Case {
    /// The file it came from.
    pub file: PathBuf,
    /// Its name.
    pub name: String,
    /// The operator.
    pub op: String,
    /// Parameters.
    pub params: Map<String, Value>,
    /// Inputs: port -> list of tables (inline rows or files).
    pub inputs: BTreeMap<String, Vec<Value>>,
    /// Expectations.
    pub expect: Map<String, Value>,
}

/// How a case ended.
#[derive(Debug)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// `None` if it passed, else what went wrong (multi-line, with diffs).
    pub failure: Option<String>,
    /// Why the case did not run at all (a worker operator, and no torch worker is
    /// built); `failure` is then `None`.
    pub not_run: Option<String>,
    /// Wall time.
    pub duration: Duration,
}

/// Reads every case of the given files or directories (`*.yaml`/`*.yml`, recursively).
pub fn load_cases(paths: &[PathBuf]) -> anyhow::Result<Vec<Case>> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files)?;
    }
    files.sort();
    let mut cases = Vec::new();
    for f in files {
        cases.extend(read_file(&f)?);
    }
    Ok(cases)
}

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(p).with_context(|| format!("{} does not exist", p.display()))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(p)? {
            let path = e?.path();
            if path.is_dir() {
                collect_files(&path, out)?;
            } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(path);
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<Vec<Case>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let yaml: serde_norway::Value = serde_norway::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let doc: Value = serde_json::to_value(&yaml).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let top = doc.as_object().ok_or_else(|| anyhow!("{}: a test file is a mapping with `cases:`", path.display()))?;
    for k in top.keys() {
        if k != "op" && k != "cases" && k != "description" {
            bail!("{}: unknown field `{k}` (expected `op`, `cases`, `description`)", path.display());
        }
    }
    let default_op = top.get("op").and_then(|o| o.as_str());
    let cases = top
        .get("cases")
        .and_then(|c| c.as_array())
        .ok_or_else(|| anyhow!("{}: `cases:` must be a list", path.display()))?;
    let mut out = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let m = c.as_object().ok_or_else(|| anyhow!("{}: case {} is not a mapping", path.display(), i + 1))?;
        for k in m.keys() {
            if !["name", "op", "params", "inputs", "expect"].contains(&k.as_str()) {
                bail!(
                    "{}: case {}: unknown field `{k}` (expected name, op, params, inputs, expect)",
                    path.display(),
                    i + 1
                );
            }
        }
        let name =
            m.get("name").and_then(|n| n.as_str()).map(str::to_string).unwrap_or_else(|| format!("case {}", i + 1));
        let op = m
            .get("op")
            .and_then(|o| o.as_str())
            .or(default_op)
            .ok_or_else(|| anyhow!("{}: case `{name}` names no operator (`op:`)", path.display()))?
            .to_string();
        let params = match m.get("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => bail!("{}: case `{name}`: `params` must be a mapping", path.display()),
        };
        let mut inputs = BTreeMap::new();
        if let Some(iv) = m.get("inputs") {
            let im = iv
                .as_object()
                .ok_or_else(|| anyhow!("{}: case `{name}`: `inputs` must be a mapping", path.display()))?;
            for (port, v) in im {
                // A port takes one table (a list of rows or {file}) or a list of tables ({tables: [...]}).
                let tables = match v {
                    Value::Object(o) if o.contains_key("tables") => o["tables"].as_array().cloned().unwrap_or_default(),
                    other => vec![other.clone()],
                };
                inputs.insert(port.clone(), tables);
            }
        }
        let expect = match m.get("expect") {
            Some(Value::Object(e)) => e.clone(),
            _ => bail!("{}: case `{name}` has no `expect:` mapping", path.display()),
        };
        out.push(Case { file: path.to_path_buf(), name, op, params, inputs, expect });
    }
    Ok(out)
}

/// Runs cases in parallel (at most `jobs` at once); results in the cases' order.
pub fn run_cases(cases: Vec<Case>, registry: Arc<dyn Registry>, jobs: usize) -> Vec<CaseResult> {
    let jobs = jobs.max(1);
    let n = cases.len();
    let queue = std::sync::Mutex::new(cases.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..jobs.min(n.max(1)) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| if q.is_empty() { None } else { Some(q.remove(0)) });
                    let Some((i, case)) = next else { break };
                    let r = run_case(case, registry.as_ref());
                    if let Ok(mut res) = results.lock() {
                        res.push((i, r));
                    }
                }
            });
        }
    });
    let mut r = results.into_inner().unwrap_or_default();
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, r)| r).collect()
}

fn run_case(case: Case, registry: &dyn Registry) -> CaseResult {
    let start = Instant::now();
    let (failure, not_run) =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_case(&case, registry))) {
            Ok(Ok(())) => (None, None),
            Ok(Err(e)) => match e.downcast_ref::<crate::harness::WorkerNotBuilt>() {
                Some(w) => (None, Some(w.to_string())),
                None => (Some(format!("{e:#}")), None),
            },
            Err(_) => (Some("the operator panicked".to_string()), None),
        };
    CaseResult { case, failure, not_run, duration: start.elapsed() }
}

fn base_dir(case: &Case) -> PathBuf {
    case.file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn read_input(case: &Case, v: &Value) -> anyhow::Result<Table> {
    match v {
        Value::Array(rows) => Ok(from_json_rows(rows)?),
        Value::Object(o) if o.contains_key("rows") => match &o["rows"] {
            Value::Array(rows) => Ok(from_json_rows(rows)?),
            _ => bail!("`rows` must be a list of rows"),
        },
        Value::Object(o) if o.contains_key("file") => {
            let rel = o["file"].as_str().ok_or_else(|| anyhow!("`file` must be a path"))?;
            let path = base_dir(case).join(rel);
            let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            match ext.as_str() {
                "parquet" => Ok(Table::read_parquet(&path)?),
                "json" => {
                    let v: Value = serde_json::from_slice(
                        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                    )?;
                    Ok(from_json_rows(
                        v.as_array().ok_or_else(|| anyhow!("{}: expected a JSON array", path.display()))?,
                    )?)
                }
                _ => {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    let rows = text
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(serde_json::from_str)
                        .collect::<Result<Vec<Value>, _>>()?;
                    Ok(from_json_rows(&rows)?)
                }
            }
        }
        _ => bail!(
            "an input is a list of rows, {{ rows: [...] }}, {{ file: path }} or {{ model: dir }} (each may add `name:`)"
        ),
    }
}

fn interpolate_tmp(v: &Value, tmp: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("${TEST_TMP}", tmp)),
        Value::Array(a) => Value::Array(a.iter().map(|x| interpolate_tmp(x, tmp)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), interpolate_tmp(x, tmp))).collect()),
        other => other.clone(),
    }
}

fn check_case(case: &Case, registry: &dyn Registry) -> anyhow::Result<()> {
    let op = registry.get(&case.op).ok_or_else(|| {
        anyhow!("unknown operator `{}` ({})", case.op, crate::diagnostic::suggestion(&case.op, registry.names()))
    })?;
    let scratch = tempfile::tempdir()?;
    let tmp = scratch.path().to_string_lossy().to_string();
    let mut h = Harness::new(op.clone())
        .base_dir(&base_dir(case))
        .params(interpolate_tmp(&Value::Object(case.params.clone()), &tmp));
    for (port, tables) in &case.inputs {
        for t in tables {
            // `name:` says which stage the input stands for (evaluate names models and
            // benchmarks by it); `model:` connects a model directory.
            let from = t.get("name").and_then(Value::as_str).map(str::to_string);
            if let Some(dir) = t.get("model").and_then(Value::as_str) {
                let dir = base_dir(case).join(dir);
                h = h.model_input_from(port, &from.unwrap_or_else(|| format!("harness.{port}")), &dir);
                continue;
            }
            let table = read_input(case, t).with_context(|| format!("input `{port}`"))?;
            h = match from {
                Some(f) => h.input_from(port, &f, table),
                None => h.input(port, table),
            };
        }
    }
    let expected_error = case.expect.get("error").and_then(|e| e.as_str());
    let result = h.run();
    if let Err(e) = &result
        && e.downcast_ref::<crate::harness::WorkerNotBuilt>().is_some()
    {
        return result.map(|_| ());
    }
    match (result, expected_error) {
        (Err(e), Some(want)) => {
            let got = format!("{e:#}");
            if got.contains(want) {
                Ok(())
            } else {
                bail!("failed as expected, but the error does not contain {want:?}:\n  {got}")
            }
        }
        (Err(e), None) => bail!("the operator failed: {e:#}"),
        (Ok(_), Some(want)) => bail!("expected an error containing {want:?}, but the operator succeeded"),
        (Ok(out), None) => {
            let default_port = op.spec().default_output().map(|p| p.name.to_string()).unwrap_or_default();
            let mut problems = Vec::new();
            let mut per_port: Vec<(String, Map<String, Value>)> = Vec::new();
            let direct: Map<String, Value> = case
                .expect
                .iter()
                .filter(|(k, _)| *k != "outputs" && *k != "output")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !direct.is_empty() {
                let port = case.expect.get("output").and_then(|o| o.as_str()).unwrap_or(&default_port).to_string();
                per_port.push((port, direct));
            }
            if let Some(Value::Object(outs)) = case.expect.get("outputs") {
                for (port, e) in outs {
                    let e = e.as_object().cloned().ok_or_else(|| anyhow!("`outputs.{port}` must be a mapping"))?;
                    per_port.push((port.clone(), e));
                }
            }
            for (port, e) in per_port {
                let table = match out.outputs.get(&port) {
                    Some(OutputValue::Table(t)) => t,
                    Some(OutputValue::Model(_)) => {
                        problems.push(format!("output `{port}` is a model; only tables can be compared"));
                        continue;
                    }
                    None => {
                        problems.push(format!("no output `{port}`"));
                        continue;
                    }
                };
                problems.extend(check_table(&port, table, &e)?);
            }
            if problems.is_empty() { Ok(()) } else { bail!("{}", problems.join("\n")) }
        }
    }
}

fn check_table(port: &str, table: &Table, e: &Map<String, Value>) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for k in e.keys() {
        if !["rows", "row_count", "sql", "columns", "ordered"].contains(&k.as_str()) {
            bail!("unknown expectation `{k}` for output `{port}` (expected rows, row_count, columns, sql, ordered)");
        }
    }
    if let Some(n) = e.get("row_count") {
        let want = n.as_u64().ok_or_else(|| anyhow!("`row_count` must be a whole number"))?;
        if table.num_rows() as u64 != want {
            problems.push(format!("output `{port}`: expected {want} rows, got {}", table.num_rows()));
        }
    }
    if let Some(cols) = e.get("columns") {
        let want: Vec<String> = serde_json::from_value(cols.clone()).context("`columns` must be a list of names")?;
        let got = table.column_names();
        if want != got {
            problems.push(format!("output `{port}`: columns differ\n  - expected {want:?}\n  + actual   {got:?}"));
        }
    }
    if let Some(rows) = e.get("rows") {
        let want = rows.as_array().ok_or_else(|| anyhow!("`rows` must be a list"))?;
        let ordered = e.get("ordered").and_then(|o| o.as_bool()).unwrap_or(true);
        let got = to_json_rows(table, usize::MAX)?;
        if let Some(diff) = diff_rows(want, &got, ordered) {
            problems.push(format!("output `{port}`: rows differ\n{diff}"));
        }
    }
    if let Some(sqls) = e.get("sql") {
        let list: Vec<String> = match sqls {
            Value::String(s) => vec![s.clone()],
            other => serde_json::from_value(other.clone()).context("`sql` must be a query or a list of queries")?,
        };
        for q in list {
            match fleming_artifacts::sql::query(&[("table".to_string(), table.clone())], &q) {
                Ok(failing) if failing.num_rows() == 0 => {}
                Ok(failing) => {
                    let sample = to_json_rows(&failing, 3)?;
                    problems.push(format!(
                        "output `{port}`: `{q}` returned {} failing row(s), e.g.\n{}",
                        failing.num_rows(),
                        sample.iter().map(|r| format!("    {}", canonical_json(r))).collect::<Vec<_>>().join("\n")
                    ));
                }
                Err(err) => problems.push(format!("output `{port}`: `{q}` could not run: {err}")),
            }
        }
    }
    Ok(problems)
}

/// Whether an actual row matches an expected one on the expected columns (numbers by value,
/// absent = null).
fn row_matches(want: &Value, got: &Value) -> bool {
    let Some(w) = want.as_object() else { return canonical_json(want) == canonical_json(got) };
    w.iter().all(|(k, wv)| {
        let gv = got.get(k).unwrap_or(&Value::Null);
        values_equal(wv, gv)
    })
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q)),
        (Value::Object(x), Value::Object(_)) => {
            x.iter().all(|(k, v)| values_equal(v, b.get(k).unwrap_or(&Value::Null)))
        }
        _ => canonical_json(a) == canonical_json(b),
    }
}

/// A readable diff of expected vs actual rows, or `None` if they match.
fn diff_rows(want: &[Value], got: &[Value], ordered: bool) -> Option<String> {
    let show = |v: &Value| canonical_json(v);
    let project = |g: &Value, w: &Value| -> Value {
        match (g, w) {
            (Value::Object(gm), Value::Object(wm)) => {
                Value::Object(wm.keys().map(|k| (k.clone(), gm.get(k).cloned().unwrap_or(Value::Null))).collect())
            }
            _ => g.clone(),
        }
    };
    let mut lines = Vec::new();
    if ordered {
        for i in 0..want.len().max(got.len()) {
            match (want.get(i), got.get(i)) {
                (Some(w), Some(g)) if row_matches(w, g) => {}
                (Some(w), Some(g)) => lines.push(format!(
                    "  row {}:\n    - expected {}\n    + actual   {}",
                    i + 1,
                    show(w),
                    show(&project(g, w))
                )),
                (Some(w), None) => lines.push(format!("  row {}: missing\n    - expected {}", i + 1, show(w))),
                (None, Some(g)) => lines.push(format!("  row {}: unexpected\n    + actual   {}", i + 1, show(g))),
                (None, None) => {}
            }
        }
    } else {
        let mut unmatched: Vec<&Value> = got.iter().collect();
        for w in want {
            match unmatched.iter().position(|g| row_matches(w, g)) {
                Some(p) => {
                    unmatched.remove(p);
                }
                None => lines.push(format!("  missing:    {}", show(w))),
            }
        }
        for g in unmatched {
            lines.push(format!("  unexpected: {}", show(g)));
        }
    }
    if lines.is_empty() {
        None
    } else {
        lines.insert(0, format!("  ({} expected, {} actual)", want.len(), got.len()));
        Some(lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn row_diffs_are_readable() {
        let want = vec![json!({"id": "a", "x": 1}), json!({"id": "b"})];
        let got = vec![json!({"id": "a", "x": 1.0, "y": 3}), json!({"id": "c"}), json!({"id": "d"})];
        let d = diff_rows(&want, &got, true).unwrap();
        assert_eq!(
            d,
            "  (2 expected, 3 actual)\n  row 2:\n    - expected {\"id\":\"b\"}\n    + actual   {\"id\":\"c\"}\n  row 3: unexpected\n    + actual   {\"id\":\"d\"}"
        );
        assert!(diff_rows(&want[..1], &got[..1], true).is_none());
        let d = diff_rows(&[json!({"id": "z"})], &[json!({"id": "y"})], false).unwrap();
        assert!(d.contains("missing:    {\"id\":\"z\"}") && d.contains("unexpected: {\"id\":\"y\"}"), "{d}");
    }
}
