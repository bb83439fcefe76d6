//! `mine-hard`: adaptive hard mining (paper §3.3). The policy answers every item
//! `rollouts` times; each item's pass rate by the shared strict extractor decides whether
//! it is hard (`fleming_questions::mining`, the rule stage 2's re-mining uses too).
//!
//! Rollouts go through the model server with the per-call memo, keyed by the policy's
//! digest, the prompt, the sampling parameters and the rollout index: re-mining a grown
//! set rolls out only the new items, and a killed run keeps every rollout it finished.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use anyhow::{anyhow, bail};
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::Table;
use fleming_questions::Question;
use fleming_questions::mining::{HardRule, ItemRate, histogram};
use fleming_runtime::context::{InputValue, OpContext};
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamSpec, ParamType, PortSpec,
};
use serde_json::{Map, json};

use crate::llm::{Call, Message};
use crate::questions;
use crate::served::{self, ModelSource};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "mine-hard",
    version: 1,
    summary: "Adaptive hard mining: the policy's repeated failures (difficult items weighted up) become the next training set",
    doc: "Samples `rollouts` completions of every item from the `policy` (served by the torch worker, batched), \
          scores each with the shared strict extractor, and keeps the items whose pass rate is at most \
          `max_pass_rate` as `hard`, each with a sampling `weight` by difficulty tier (`tier_weights`). \
          Rollouts are memoised per policy, prompt, sampling parameters and rollout index, so mining a \
          grown set rolls out only the new items. The manifest has the pass-rate histogram (`correct_K`: \
          items with K correct rollouts) and the hard count per tier.",
    params: [
        mining_params(),
        vec![
            ParamSpec::with_default(
                "temperature",
                ParamType::Float,
                json!(1.0),
                "Sampling temperature of the rollouts",
            )
            .range(Some(0.0), Some(2.0)),
            ParamSpec::with_default("top_p", ParamType::Float, json!(1.0), "Nucleus mass of the rollouts")
                .range(Some(0.0), Some(1.0)),
            ParamSpec::with_default("seed", ParamType::Int, json!(0), "Seed of the rollouts (rollout i uses seed + i)"),
            ParamSpec::with_default(
                "max_new_tokens",
                ParamType::Int,
                json!(256),
                "Longest completion; one that reaches it is truncated and counts as wrong",
            )
            .range(Some(1.0), None),
            ParamSpec::with_default(
                "batch_size",
                ParamType::Int,
                json!(32),
                "Sequences generated together by the server",
            )
            .range(Some(1.0), Some(256.0))
            .not_in_key(),
        ],
    ]
    .concat(),
    inputs: InputPorts::Fixed(vec![
        PortSpec::model("policy", "the policy to mine with (usually RL stage 1's model)"),
        PortSpec::table_with("questions", questions::required_input_columns(), "every training item"),
    ]),
    outputs: vec![
        PortSpec::table("hard", "the hard items: the question rows with pass_rate, n_correct, rollouts, weight"),
        PortSpec::table_with("pass_rates", pass_rate_columns(), "every item's pass rate"),
        PortSpec::table_with("rollouts", rollout_columns(), "every rollout, scored (parents: the item)"),
    ],
    execution: Execution::CpuWithWorkers,
    fingerprint: crate::fingerprints::mine_hard.to_string(),
});

/// What decides the hard set (shared with `grpo-stage2`'s re-mining): rollouts per item,
/// the pass-rate bound and the weights by tier.
pub(crate) fn mining_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::with_default("rollouts", ParamType::Int, json!(8), "Completions sampled per item")
            .range(Some(1.0), Some(256.0)),
        ParamSpec::with_default(
            "max_pass_rate",
            ParamType::Float,
            json!(0.25),
            "Items whose share of correct rollouts is at most this are hard",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default(
            "tier_weights",
            ParamType::Map(Box::new(ParamType::Float)),
            json!({"difficult": 2.0}),
            "Sampling weight of a hard item by difficulty tier (other tiers: 1)",
        ),
    ]
}

fn pass_rate_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("difficulty", DataType::Utf8, true),
        ColumnSpec::new("rollouts", DataType::Int64, false),
        ColumnSpec::new("n_correct", DataType::Int64, false),
        ColumnSpec::new("pass_rate", DataType::Float64, false),
        ColumnSpec::new("hard", DataType::Boolean, false),
    ]
}

fn rollout_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("item", DataType::Utf8, false),
        ColumnSpec::new("rollout", DataType::Int64, false),
        ColumnSpec::new("completion", DataType::Utf8, false),
        ColumnSpec::new("status", DataType::Utf8, false),
        ColumnSpec::new("correct", DataType::Boolean, false),
        ColumnSpec::new("format_ok", DataType::Boolean, false),
        ColumnSpec::new("parents", fleming_questions::table::string_list_type(), false),
    ]
}

/// The `mine-hard` operator.
#[derive(Default)]
pub struct MineHard;

impl Operator for MineHard {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let n = ctx.params.u64("rollouts")? as u32;
        let rule = HardRule {
            max_pass_rate: ctx.params.f64("max_pass_rate")?,
            tier_weights: ctx
                .params
                .get("tier_weights")
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
                .unwrap_or_default(),
        };
        let input = ctx.inputs.get("policy").and_then(|v| v.first()).ok_or_else(|| anyhow!("no `policy` input"))?;
        let InputValue::Model(dir) = &input.value else { bail!("input from {} is not a model", input.from) };
        let label = input.from.split('.').next().unwrap_or(&input.from).to_string();
        let source = ModelSource::Artifact { dir: dir.clone(), digest: input.digest.hex() };
        let items = questions::from_table(ctx.input_table("questions")?, "unknown")?;
        if items.is_empty() {
            bail!("the questions table is empty: there is nothing to mine");
        }
        let mut request = Map::new();
        request.insert("temperature".into(), json!(ctx.params.f64("temperature")?));
        request.insert("top_p".into(), json!(ctx.params.f64("top_p")?));
        request.insert("max_tokens".into(), json!(ctx.params.u64("max_new_tokens")?));
        request.insert("seed".into(), json!(ctx.params.i64("seed")?));
        let calls: Vec<Call> = items
            .iter()
            .flat_map(|q| {
                let messages = Message::for_item(q);
                let params = request.clone();
                (0..n).map(move |t| Call { messages: messages.clone(), params: params.clone(), trial: t })
            })
            .collect();
        ctx.progress.set_unit("rollouts");
        ctx.progress.set_total(calls.len() as u64);
        let answers = served::ask(ctx, &label, &source, &calls, ctx.params.u64("batch_size")? as usize)?;
        if let Some(e) = answers.failures {
            return Err(e);
        }
        let mut rollouts = RolloutRows::default();
        let mut rates = Vec::with_capacity(items.len());
        for (q, results) in items.iter().zip(answers.results.chunks(n as usize)) {
            let mut correct = 0;
            for (t, r) in results.iter().enumerate() {
                let c = r.as_ref().map_err(|f| anyhow!("rollout {t} of `{}`: {}", q.id, f.error))?;
                let v = fleming_questions::score(q, &c.content, c.truncated());
                correct += v.correct as u32;
                rollouts.push(q, t, &c.content, v);
            }
            rates.push(ItemRate { rollouts: n, correct, difficulty: q.difficulty.clone() });
        }
        let weights: Vec<Option<f64>> = rates.iter().map(|r| rule.weight(r)).collect();
        let hard_items: Vec<(usize, f64)> = weights.iter().enumerate().filter_map(|(i, w)| w.map(|w| (i, w))).collect();
        for (k, count) in histogram(&rates, n).iter().enumerate() {
            ctx.metric(&format!("correct_{k}"), *count);
        }
        let mut by_tier: BTreeMap<String, u64> = BTreeMap::new();
        for &(i, _) in &hard_items {
            *by_tier.entry(items[i].difficulty.clone().unwrap_or_else(|| "unlabelled".into())).or_default() += 1;
        }
        for (tier, c) in by_tier {
            ctx.metric(&format!("hard.{tier}"), c);
        }
        ctx.metric("items", items.len() as u64);
        ctx.metric("hard", hard_items.len() as u64);
        let mean = rates.iter().map(ItemRate::pass_rate).sum::<f64>() / rates.len() as f64;
        ctx.metric("mean_pass_rate", json!(mean));
        Ok(Outputs::new()
            .table("hard", hard_table(&items, &rates, &hard_items)?)
            .table("pass_rates", pass_rates_table(&items, &rates, &weights)?)
            .table("rollouts", rollouts.table()?))
    }
}

/// The hard items: their question rows, with pass rate, correct count, rollouts and weight.
fn hard_table(items: &[Question], rates: &[ItemRate], hard: &[(usize, f64)]) -> anyhow::Result<Table> {
    let rows: Vec<Question> = hard.iter().map(|&(i, _)| items[i].clone()).collect();
    let base = fleming_questions::table::to_batch(&rows)?;
    let mut fields: Vec<Field> = base.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = base.columns().to_vec();
    let extra: [(&str, DataType, ArrayRef); 4] = [
        (
            "pass_rate",
            DataType::Float64,
            Arc::new(Float64Array::from_iter_values(hard.iter().map(|&(i, _)| rates[i].pass_rate()))),
        ),
        (
            "n_correct",
            DataType::Int64,
            Arc::new(Int64Array::from_iter_values(hard.iter().map(|&(i, _)| rates[i].correct as i64))),
        ),
        (
            "rollouts",
            DataType::Int64,
            Arc::new(Int64Array::from_iter_values(hard.iter().map(|&(i, _)| rates[i].rollouts as i64))),
        ),
        ("weight", DataType::Float64, Arc::new(Float64Array::from_iter_values(hard.iter().map(|&(_, w)| w)))),
    ];
    for (name, ty, col) in extra {
        fields.push(Field::new(name, ty, false));
        columns.push(col);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok(Table::from_batch(batch))
}

fn pass_rates_table(items: &[Question], rates: &[ItemRate], weights: &[Option<f64>]) -> anyhow::Result<Table> {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(StringArray::from_iter_values(items.iter().map(|q| q.id.as_str())))),
        ("difficulty", Arc::new(StringArray::from_iter(items.iter().map(|q| q.difficulty.as_deref())))),
        ("rollouts", Arc::new(Int64Array::from_iter_values(rates.iter().map(|r| r.rollouts as i64)))),
        ("n_correct", Arc::new(Int64Array::from_iter_values(rates.iter().map(|r| r.correct as i64)))),
        ("pass_rate", Arc::new(Float64Array::from_iter_values(rates.iter().map(ItemRate::pass_rate)))),
        ("hard", Arc::new(BooleanArray::from_iter(weights.iter().map(|w| Some(w.is_some()))))),
    ];
    Ok(fleming_artifacts::table::table_from_columns(columns)?)
}

/// The `rollouts` output, built row by row.
#[derive(Default)]
struct RolloutRows {
    id: Vec<String>,
    item: Vec<String>,
    rollout: Vec<i64>,
    completion: Vec<String>,
    status: Vec<&'static str>,
    correct: Vec<bool>,
    format_ok: Vec<bool>,
}

impl RolloutRows {
    fn push(&mut self, q: &Question, t: usize, completion: &str, v: fleming_questions::Verdict) {
        self.id.push(format!("{}#{t}", q.id));
        self.item.push(q.id.clone());
        self.rollout.push(t as i64);
        self.completion.push(completion.to_string());
        self.status.push(v.status.as_str());
        self.correct.push(v.correct);
        self.format_ok.push(v.format_ok);
    }

    fn table(self) -> anyhow::Result<Table> {
        let mut parents = ListBuilder::new(StringBuilder::new());
        for item in &self.item {
            parents.values().append_value(item);
            parents.append(true);
        }
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("id", Arc::new(StringArray::from(self.id))),
            ("item", Arc::new(StringArray::from(self.item))),
            ("rollout", Arc::new(Int64Array::from(self.rollout))),
            ("completion", Arc::new(StringArray::from(self.completion))),
            ("status", Arc::new(StringArray::from(self.status))),
            ("correct", Arc::new(BooleanArray::from(self.correct))),
            ("format_ok", Arc::new(BooleanArray::from(self.format_ok))),
            ("parents", Arc::new(parents.finish())),
        ];
        Ok(fleming_artifacts::table::table_from_columns(columns)?)
    }
}
