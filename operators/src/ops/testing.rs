//! Operators for the runtime's own tests, registered only when `FLEMING_TEST_OPS=1`:
//! `test-slow` (per-row memoised work that can be slow, fail or panic on a given row) and
//! `test-worker` (runs in a worker process; see `src/bin/fleming-test-worker.rs`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{anyhow, bail};
use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::Table;
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamSpec, ParamType, PortSpec,
};
use serde_json::json;

/// The test operators.
pub fn all() -> Vec<Arc<dyn Operator>> {
    vec![Arc::new(TestSlow), Arc::new(TestWorker)]
}

static SLOW: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "test-slow",
    version: 1,
    summary: "(tests) Tags each row, slowly, memoising per row",
    doc: "",
    params: vec![
        ParamSpec::with_default("tag", ParamType::Str, json!("t"), "Prefix of the value (part of the memo key)"),
        ParamSpec::with_default("delay_ms", ParamType::Int, json!(0), "Sleep per computed row").not_in_key(),
        ParamSpec::optional("fail_at", ParamType::Str, "Fail on reaching this id"),
        ParamSpec::optional("panic_at", ParamType::Str, "Panic on reaching this id"),
    ],
    inputs: InputPorts::Fixed(vec![
        PortSpec::table_with("table", vec![ColumnSpec::new("id", DataType::Utf8, false)], "rows with ids"),
        PortSpec::table_with(
            "extra",
            vec![ColumnSpec::new("value", DataType::Utf8, false)],
            "unused; declares a column to test schema checks",
        )
        .optional(),
    ]),
    outputs: vec![PortSpec::table_with(
        "table",
        vec![ColumnSpec::new("id", DataType::Utf8, false), ColumnSpec::new("value", DataType::Utf8, false)],
        "id and tagged value",
    )],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::testing.to_string(),
});

/// `test-slow`.
pub struct TestSlow;

impl Operator for TestSlow {
    fn spec(&self) -> &OpSpec {
        &SLOW
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let tag = ctx.params.str("tag")?.to_string();
        let delay = Duration::from_millis(ctx.params.u64("delay_ms")?);
        let fail_at = ctx.params.opt_str("fail_at").map(str::to_string);
        let panic_at = ctx.params.opt_str("panic_at").map(str::to_string);
        let input = ctx.input_table("table")?.concat()?;
        let ids = input
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| anyhow!("`id` must be a string column"))?;
        ctx.progress.set_total(ids.len() as u64);
        let mut values = Vec::with_capacity(ids.len());
        let mut computed = 0u64;
        for i in 0..ids.len() {
            ctx.cancel.check()?;
            let id = ids.value(i);
            if fail_at.as_deref() == Some(id) {
                bail!("asked to fail at `{id}`");
            }
            if panic_at.as_deref() == Some(id) {
                panic!("asked to panic at `{id}`");
            }
            let key = ctx.memo.key(&json!({"tag": tag}), id.as_bytes());
            let value = match ctx.memo.get(&key) {
                Some(v) => String::from_utf8(v)?,
                None => {
                    std::thread::sleep(delay);
                    let v = format!("{tag}:{id}");
                    ctx.memo.put(key, v.as_bytes())?;
                    computed += 1;
                    v
                }
            };
            values.push(value);
            ctx.progress.inc(1);
        }
        ctx.metric("computed", computed);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(ids.clone()), Arc::new(StringArray::from(values))])?;
        Ok(Outputs::new().table("table", Table::from_batch(batch)))
    }
}

static WORKER: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "test-worker",
    version: 1,
    summary: "(tests) Copies its input in a worker process; can crash, fail or hang",
    doc: "",
    params: vec![
        ParamSpec::with_default(
            "mode",
            ParamType::Enum(vec!["copy", "crash", "fail", "hang", "no-output", "model"]),
            json!("copy"),
            "What the worker does",
        ),
        ParamSpec::with_default("sleep_ms", ParamType::Int, json!(0), "Sleep before finishing").not_in_key(),
        ParamSpec::with_default("tag", ParamType::Str, json!(""), "Distinguishes otherwise identical stages"),
    ],
    inputs: InputPorts::Fixed(vec![PortSpec::table("table", "rows to copy")]),
    outputs: vec![PortSpec::table("table", "the rows, with a `device` column")],
    execution: Execution::Worker,
    fingerprint: crate::fingerprints::testing.to_string(),
});

/// `test-worker` (executed by `fleming-test-worker`).
pub struct TestWorker;

impl Operator for TestWorker {
    fn spec(&self) -> &OpSpec {
        &WORKER
    }
}
