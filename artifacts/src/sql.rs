//! SQL over tables with DataFusion.
//!
//! Queries run on one partition so that the same inputs always give rows in the same
//! order (and so the same output digest) whatever the machine's core count.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::table::Table;

/// Errors of SQL execution.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// DataFusion rejected or failed the query.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// The async runtime could not start.
    #[error("cannot start the SQL runtime: {0}")]
    Runtime(std::io::Error),
}

/// A DataFusion session with fleming's settings (one partition: deterministic order).
pub fn session() -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(1).with_information_schema(true).with_batch_size(8192);
    SessionContext::new_with_config(config)
}

/// Registers a table under `name`.
pub fn register(ctx: &SessionContext, name: &str, table: &Table) -> Result<(), SqlError> {
    let mem = MemTable::try_new(table.schema.clone(), vec![table.batches.clone()])?;
    ctx.register_table(name, Arc::new(mem))?;
    Ok(())
}

/// Runs `f` on a fresh single-threaded async runtime (DataFusion is async).
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, SqlError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SqlError::Runtime)?;
    Ok(rt.block_on(f))
}

/// Runs one query over named tables and collects the result.
pub fn query(tables: &[(String, Table)], sql: &str) -> Result<Table, SqlError> {
    block_on(async {
        let ctx = session();
        for (name, t) in tables {
            register(&ctx, name, t)?;
        }
        let df = ctx.sql(sql).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(Table::new(schema, batches))
    })?
}

/// Names of the tables a query reads, or a syntax error (checked before anything runs).
/// Parses without a session, so validating thousands of stages stays fast.
pub fn referenced_tables(sql: &str) -> Result<Vec<String>, SqlError> {
    use datafusion::sql::parser::DFParser;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?;
    if statements.len() != 1 {
        return Err(SqlError::DataFusion(DataFusionError::Plan(format!(
            "expected one SQL statement, found {}",
            statements.len()
        ))));
    }
    let mut names = Vec::new();
    for st in &statements {
        let (refs, _ctes) = datafusion::sql::resolve::resolve_table_references(st, true)?;
        names.extend(refs.iter().map(|r| r.table().to_string()));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::table_from_columns;
    use arrow::array::{ArrayRef, Int64Array};

    #[test]
    fn query_and_references() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let t = table_from_columns(vec![("v", a)]).unwrap();
        let out = query(&[("t".into(), t)], "select sum(v) as s from t").unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(referenced_tables("select * from a join b on a.x = b.x").unwrap(), vec!["a", "b"]);
        assert!(referenced_tables("selec * frm").is_err());
    }
}
