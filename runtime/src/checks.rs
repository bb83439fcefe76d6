//! Data checks on stage outputs (`checks:` in a stage): SQL queries that return failing
//! rows, and built-ins (row count range, not null, unique, accepted values, value range)
//! which are SQL queries too. A failing `error` check blocks the stages downstream;
//! a `warn` check only reports.
//!
//! Results are cached by (stage key, check definition): a cached stage is not re-checked
//! unless the check itself changed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fleming_artifacts::{Digest, Store, StoreError, Table};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::canonical_json;

/// How much a failing check matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Report only.
    Warn,
    /// Block downstream stages.
    Error,
}

/// What a check tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// A query returning the failing rows.
    Sql(String),
    /// The number of rows lies in a range.
    RowCount {
        /// Fewest rows allowed.
        min: Option<u64>,
        /// Most rows allowed.
        max: Option<u64>,
    },
    /// These columns have no nulls.
    NotNull(Vec<String>),
    /// These columns together identify a row.
    Unique(Vec<String>),
    /// A column takes only these values (nulls are not checked; use not_null).
    AcceptedValues {
        /// The column.
        column: String,
        /// Allowed values.
        values: Vec<Value>,
    },
    /// A column's values lie in a range (inclusive).
    Range {
        /// The column.
        column: String,
        /// Smallest allowed.
        min: Option<f64>,
        /// Largest allowed.
        max: Option<f64>,
    },
}

/// A declared check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// Name, unique within the stage.
    pub name: String,
    /// What it tests.
    pub kind: CheckKind,
    /// What a failure does.
    pub severity: Severity,
    /// Output port it reads (default: the stage's first output).
    pub port: Option<String>,
}

impl CheckSpec {
    /// Digest of the definition (a changed check is re-evaluated on cached outputs).
    pub fn digest(&self) -> Digest {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        Digest::of_parts("fleming-check-v1", [canonical_json(&v).as_bytes()])
    }

    /// The query returning failing rows, over a table called `table`, or the check's SQL.
    pub fn query(&self) -> String {
        let q = quote_ident;
        match &self.kind {
            CheckKind::Sql(sql) => sql.clone(),
            CheckKind::RowCount { min, max } => {
                let mut conds = Vec::new();
                if let Some(m) = min {
                    conds.push(format!("count(*) < {m}"));
                }
                if let Some(m) = max {
                    conds.push(format!("count(*) > {m}"));
                }
                if conds.is_empty() {
                    conds.push("false".into());
                }
                format!("select count(*) as rows from \"table\" having {}", conds.join(" or "))
            }
            CheckKind::NotNull(cols) => format!(
                "select * from \"table\" where {}",
                cols.iter().map(|c| format!("{} is null", q(c))).collect::<Vec<_>>().join(" or ")
            ),
            CheckKind::Unique(cols) => {
                let list = cols.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
                format!(
                    "select {list}, count(*) as occurrences from \"table\" group by {list} having count(*) > 1 order by {list}"
                )
            }
            CheckKind::AcceptedValues { column, values } => format!(
                "select * from \"table\" where {} is not null and {} not in ({})",
                q(column),
                q(column),
                values.iter().map(sql_literal).collect::<Vec<_>>().join(", ")
            ),
            CheckKind::Range { column, min, max } => {
                let mut conds = Vec::new();
                if let Some(m) = min {
                    conds.push(format!("{} < {m}", q(column)));
                }
                if let Some(m) = max {
                    conds.push(format!("{} > {m}", q(column)));
                }
                if conds.is_empty() {
                    conds.push("false".into());
                }
                format!("select * from \"table\" where {}", conds.join(" or "))
            }
        }
    }

    /// A short description of the check, for listings.
    pub fn describe(&self) -> String {
        match &self.kind {
            CheckKind::Sql(_) => "sql".into(),
            CheckKind::RowCount { min, max } => format!(
                "row_count {}..{}",
                min.map(|m| m.to_string()).unwrap_or_default(),
                max.map(|m| m.to_string()).unwrap_or_default()
            ),
            CheckKind::NotNull(c) => format!("not_null {}", c.join(", ")),
            CheckKind::Unique(c) => format!("unique {}", c.join(", ")),
            CheckKind::AcceptedValues { column, .. } => format!("accepted_values {column}"),
            CheckKind::Range { column, .. } => format!("range {column}"),
        }
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sql_literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".into(),
        other => format!("'{}'", other.to_string().replace('\'', "''")),
    }
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// No failing rows.
    Passed,
    /// Some failing rows.
    Failed,
    /// The check could not run (bad SQL, missing column).
    Error,
}

/// Rows kept as a sample of failures.
pub const FAILING_SAMPLE: usize = 5;

/// The result of one check on one stage key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckResult {
    /// Stage name.
    pub stage: String,
    /// Check name.
    pub name: String,
    /// Severity.
    pub severity: Severity,
    /// Passed, failed or error.
    pub status: CheckStatus,
    /// Number of failing rows.
    pub failing_rows: u64,
    /// Up to [`FAILING_SAMPLE`] failing rows, as JSON objects.
    pub sample: Vec<Value>,
    /// Error text, when the check could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The query that ran.
    pub query: String,
    /// Stage key of the outputs checked.
    pub stage_key: Digest,
    /// Digest of the check's definition.
    pub check_digest: Digest,
    /// When it was evaluated.
    pub evaluated_at: DateTime<Utc>,
}

impl CheckResult {
    /// Whether this result blocks downstream stages.
    pub fn blocks(&self) -> bool {
        self.severity == Severity::Error && self.status != CheckStatus::Passed
    }

    /// Where the cached result of `check` on the stage run `stage_key` lives.
    pub(crate) fn path(store: &Store, stage_key: &Digest, check: &Digest) -> std::path::PathBuf {
        let d = Digest::of_parts("fleming-check-result-v1", [stage_key.0.as_slice(), check.0.as_slice()]).hex();
        store.dir("checks").join(&d[..2]).join(format!("{}.json", &d[2..]))
    }

    /// The stored result of `check` on `stage_key`, if evaluated before.
    pub fn load(store: &Store, stage_key: &Digest, check: &CheckSpec) -> Result<Option<CheckResult>, StoreError> {
        store.read_json(&Self::path(store, stage_key, &check.digest()))
    }

    /// Stores it.
    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        store.write_json(&Self::path(store, &self.stage_key, &self.check_digest), self)
    }

    /// Every stored result (for `fleming query`'s `checks` table).
    pub fn load_all(store: &Store) -> Vec<CheckResult> {
        let mut out = Vec::new();
        // Those other machines stored, on a remote store.
        if let Err(e) = store.pull_dir("checks") {
            tracing::warn!("{e}");
        }
        let Ok(dirs) = std::fs::read_dir(store.dir("checks")) else { return out };
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else { continue };
            for f in files.flatten() {
                if let Ok(Some(r)) = fleming_artifacts::fsutil::read_json::<CheckResult>(&f.path()) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| (a.evaluated_at, &a.stage, &a.name).cmp(&(b.evaluated_at, &b.stage, &b.name)));
        out
    }
}

/// Evaluates a check on a stage's output tables (by port); `default_port` is the stage's
/// first output. The checked table is named `table`, and every port by its name.
pub fn evaluate(
    stage: &str,
    stage_key: Digest,
    check: &CheckSpec,
    outputs: &BTreeMap<String, Table>,
    default_port: &str,
) -> CheckResult {
    let query = check.query();
    let port = check.port.as_deref().unwrap_or(default_port);
    let mut tables: Vec<(String, Table)> = Vec::new();
    if let Some(t) = outputs.get(port) {
        tables.push(("table".into(), t.clone()));
    }
    for (name, t) in outputs {
        if name != "table" {
            tables.push((name.clone(), t.clone()));
        }
    }
    let mut result = CheckResult {
        stage: stage.to_string(),
        name: check.name.clone(),
        severity: check.severity,
        status: CheckStatus::Passed,
        failing_rows: 0,
        sample: Vec::new(),
        message: None,
        query: query.clone(),
        stage_key,
        check_digest: check.digest(),
        evaluated_at: Utc::now(),
    };
    match fleming_artifacts::sql::query(&tables, &query) {
        Ok(failing) => {
            result.failing_rows = failing.num_rows() as u64;
            if result.failing_rows > 0 {
                result.status = CheckStatus::Failed;
                result.sample = fleming_artifacts::table::to_json_rows(&failing, FAILING_SAMPLE).unwrap_or_default();
            }
        }
        Err(e) => {
            result.status = CheckStatus::Error;
            result.message = Some(e.to_string());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use fleming_artifacts::table::table_from_columns;
    use std::sync::Arc;

    fn outputs() -> BTreeMap<String, Table> {
        let id: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("b"), None]));
        let x: ArrayRef = Arc::new(Int64Array::from(vec![1, 5, 9, 2]));
        let mut m = BTreeMap::new();
        m.insert("table".to_string(), table_from_columns(vec![("id", id), ("x", x)]).unwrap());
        m
    }

    fn check(kind: CheckKind) -> CheckSpec {
        CheckSpec { name: "c".into(), kind, severity: Severity::Error, port: None }
    }

    #[test]
    fn builtins_find_failing_rows() {
        let o = outputs();
        let run = |k| evaluate("s", Digest([0; 32]), &check(k), &o, "table");
        assert_eq!(run(CheckKind::NotNull(vec!["id".into()])).failing_rows, 1);
        let u = run(CheckKind::Unique(vec!["id".into()]));
        assert_eq!(u.failing_rows, 1);
        assert_eq!(u.sample[0]["id"], "b");
        assert_eq!(u.sample[0]["occurrences"], 2);
        assert_eq!(run(CheckKind::RowCount { min: Some(5), max: None }).status, CheckStatus::Failed);
        assert_eq!(run(CheckKind::RowCount { min: Some(1), max: Some(4) }).status, CheckStatus::Passed);
        let av = CheckKind::AcceptedValues { column: "id".into(), values: vec![Value::from("a")] };
        assert_eq!(run(av).failing_rows, 2);
        assert_eq!(run(CheckKind::Range { column: "x".into(), min: Some(2.0), max: Some(8.0) }).failing_rows, 2);
        assert_eq!(run(CheckKind::Sql("select * from \"table\" where x > 100".into())).status, CheckStatus::Passed);
        let bad = run(CheckKind::NotNull(vec!["nope".into()]));
        assert_eq!(bad.status, CheckStatus::Error);
        assert!(bad.blocks());
    }
}
