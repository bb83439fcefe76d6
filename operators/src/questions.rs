//! The `questions` table (DESIGN's data contracts) as operators use it: the shared format
//! of [`fleming_questions`] (items, Arrow schema, prompt, strict extractor), with the
//! runtime's port declarations and store tables. The column list is in
//! [`fleming_questions::table`].

use fleming_artifacts::Table;
use fleming_runtime::op::ColumnSpec;

pub use fleming_questions::table::schema;
pub use fleming_questions::{Choice, Question, content_id, item_digest, label};

/// The columns of the `questions` table, for port declarations.
pub fn columns() -> Vec<ColumnSpec> {
    fleming_questions::table::columns().into_iter().map(|(n, t, null)| ColumnSpec::new(n, t, null)).collect()
}

/// What an input port reading questions requires (the rest is optional on input).
pub fn required_input_columns() -> Vec<ColumnSpec> {
    fleming_questions::table::required_input_columns()
        .into_iter()
        .map(|(n, t, null)| ColumnSpec::new(n, t, null))
        .collect()
}

/// A `questions` table from items.
pub fn to_table(items: &[Question]) -> anyhow::Result<Table> {
    Ok(Table::new(schema(), vec![fleming_questions::table::to_batch(items)?]))
}

/// Reads a table of questions into items. Tolerant of tables from `load` or `sql`: only
/// `id`, `question`, `options` (list of {label, text}) and `answer` are required; other
/// columns default (`source` from `default_source`).
pub fn from_table(table: &Table, default_source: &str) -> anyhow::Result<Vec<Question>> {
    fleming_questions::table::from_batches(&table.batches, default_source)
}

/// Environment variable naming the shared data directory (tests and benchmarks).
pub const SHARED_DATA_ENV: &str = "FLEMING_SHARED_DATA";

/// Where the shared benchmark data is: `$FLEMING_SHARED_DATA`, else `../shared/data`
/// beside the repository. Fails with a clear message when it is missing (tests that need
/// it must fail, never pass silently).
pub fn shared_data_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = match std::env::var_os(SHARED_DATA_ENV) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../../shared/data"),
    };
    if !dir.join("benchmarks").is_dir() {
        anyhow::bail!(
            "the shared data is missing: {} has no `benchmarks/` (set {SHARED_DATA_ENV} to the directory holding `benchmarks/` and `kg/`)",
            dir.display()
        );
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_a_stable_digest() {
        let q = Question {
            id: "x".into(),
            source: "s".into(),
            language: "en".into(),
            question: "Which?".into(),
            options: vec![Choice::new("A", "one"), Choice::new("B", "two")],
            answer: "A".into(),
            ..Default::default()
        };
        let t = to_table(std::slice::from_ref(&q)).unwrap();
        let back = from_table(&t, "z").unwrap();
        assert_eq!(back[0], q);
        assert_eq!(t.digest().unwrap(), to_table(&back).unwrap().digest().unwrap());
        assert_eq!(columns().len(), schema().fields().len());
        assert_eq!(
            required_input_columns().iter().map(|c| c.name).collect::<Vec<_>>(),
            ["id", "question", "options", "answer"]
        );
    }
}
