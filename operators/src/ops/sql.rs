//! `sql`: a DataFusion query over the stage's named inputs.

use std::sync::LazyLock;

use fleming_artifacts::sql;
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    Execution, InputPorts, OpSpec, Operator, Outputs, ParamIssue, ParamSpec, ParamType, PortSpec, ValidateCtx,
};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "sql",
    version: 1,
    summary: "Run a SQL query (DataFusion) over named input tables",
    doc: "Each input is registered as a table under its input name, so `inputs: { q: questions }` \
          makes `select * from q` work. The result keeps the query's row order; add ORDER BY for a \
          defined order. Queries run on one partition, so the same inputs always give the same bytes.",
    params: vec![ParamSpec::required("query", ParamType::Str, "The SQL query; input tables are named as in `inputs:`")],
    inputs: InputPorts::Named { doc: "each named input becomes a table of that name" },
    outputs: vec![PortSpec::table("table", "the query's result")],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::sql.to_string(),
});

/// The `sql` operator.
#[derive(Default)]
pub struct Sql;

impl Sql {
    /// The operator.
    pub fn new() -> Self {
        Sql
    }
}

impl Operator for Sql {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        let Ok(query) = ctx.params.str("query") else { return Vec::new() };
        let issue = |message: String| vec![ParamIssue { param: vec!["query".into()], message }];
        match sql::referenced_tables(query) {
            Err(e) => issue(format!("SQL error: {e}")),
            Ok(tables) => {
                let unknown: Vec<&String> = tables.iter().filter(|t| !ctx.inputs.contains(t)).collect();
                if unknown.is_empty() {
                    Vec::new()
                } else {
                    issue(format!(
                        "the query reads {} which {} not an input (inputs: {})",
                        unknown.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
                        if unknown.len() == 1 { "is" } else { "are" },
                        if ctx.inputs.is_empty() {
                            "none".to_string()
                        } else {
                            ctx.inputs.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
                        }
                    ))
                }
            }
        }
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let query = ctx.params.str("query")?.to_string();
        let mut tables = Vec::new();
        for name in ctx.inputs.keys() {
            tables.push((name.clone(), ctx.input_table(name)?.clone()));
        }
        ctx.progress.set_message("querying");
        let out = sql::query(&tables, &query)?;
        ctx.metric("rows", out.num_rows() as u64);
        Ok(Outputs::new().table("table", out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use fleming_artifacts::table::table_from_columns;
    use fleming_runtime::Harness;
    use std::sync::Arc;

    fn items() -> fleming_artifacts::Table {
        let id: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let x: ArrayRef = Arc::new(Int64Array::from(vec![1, 5, 9]));
        table_from_columns(vec![("id", id), ("x", x)]).unwrap()
    }

    #[test]
    fn filters_rows() {
        let out = Harness::new(Arc::new(Sql))
            .param("query", "select id from t where x > 2 order by id")
            .input("t", items())
            .run()
            .unwrap();
        assert_eq!(out.table("table").unwrap().num_rows(), 2);
    }

    #[test]
    fn unknown_table_and_syntax_errors_are_caught_before_running() {
        let err =
            Harness::new(Arc::new(Sql)).param("query", "select * from nope").input("t", items()).run().unwrap_err();
        assert!(err.to_string().contains("`nope` which is not an input (inputs: `t`)"), "{err}");
        let err = Harness::new(Arc::new(Sql)).param("query", "selec * frm t").input("t", items()).run().unwrap_err();
        assert!(err.to_string().contains("SQL error"), "{err}");
    }
}
