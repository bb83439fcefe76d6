//! `difficulty-label`: the three tiers of paper §3.1 — easy, moderate, difficult — with
//! the evidence behind each label stored per item (`difficulty_evidence`, JSON).
//!
//! Methods:
//! - `judge`: an LLM judge applies the paper's rubric and answers with a tier and a short
//!   rationale (one call per item, memoised).
//! - `pass_rate`: a reference model answers each item `samples` times; pass rate ≥
//!   `easy_above` is easy, ≤ `difficult_below` difficult, between moderate. The reference
//!   is an `llm` endpoint or the `kg` model (answers synthetic items from the graph knowing
//!   a degree-dependent share of it, so rare entities and long paths fail more often).
//!   Items the `kg` model cannot answer (curated ones) get the `fallback` method.
//! - `heuristic`: an evidence-free rule on the item's shape (stem length, options, KG hops,
//!   answer rarity, context), for pipelines with no model at all.

use std::sync::LazyLock;

use anyhow::{Context, anyhow};
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamIssue, ParamSpec, ParamType, PortSpec,
    ValidateCtx,
};
use serde_json::{Map, Value, json};

use crate::llm::{Call, LlmClient, Message, failure_report};
use crate::ops::sample::{Graph, KgModel};
use crate::questions::{self, Question};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "difficulty-label",
    // 2: the reference model is asked with the shared prompt and read by the strict
    // extractor; the judge sees the item as every other model does.
    version: 2,
    summary: "Label each question easy / moderate / difficult (LLM judge, reference pass rate, or heuristic) with its evidence",
    doc: "Writes `difficulty` and `difficulty_evidence` (JSON: method, rationale or pass rate) for \
          every row. LLM calls are memoised by model, prompt, sampling parameters and trial.",
    params: vec![
        ParamSpec::with_default(
            "method",
            ParamType::Enum(vec!["judge", "pass_rate", "heuristic"]),
            json!("judge"),
            "How to label: an LLM judge with the rubric, a reference model's pass rate, or a heuristic",
        ),
        ParamSpec::optional(
            "llm",
            ParamType::SectionRef("llm"),
            "The judge (method judge) or the reference model (method pass_rate) as an `llm:` endpoint",
        ),
        ParamSpec::with_default(
            "kg",
            ParamType::Bool,
            json!(false),
            "method pass_rate: use the `kg` reference model (inputs `entities`, `relations`)",
        ),
        ParamSpec::with_default("samples", ParamType::Int, json!(8), "method pass_rate: answers per item")
            .range(Some(1.0), Some(256.0)),
        ParamSpec::with_default(
            "easy_above",
            ParamType::Float,
            json!(0.8),
            "method pass_rate: pass rate at or above which an item is easy",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default(
            "difficult_below",
            ParamType::Float,
            json!(0.35),
            "method pass_rate: pass rate at or below which an item is difficult",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default(
            "knowledge",
            ParamType::Float,
            json!(0.8),
            "kg reference model: how much of the graph it knows",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default("seed", ParamType::Int, json!(0), "kg reference model: seed of its choices"),
        ParamSpec::optional("temperature", ParamType::Float, "LLM sampling temperature (default: the endpoint's)"),
        ParamSpec::with_default(
            "rubric",
            ParamType::Str,
            json!(RUBRIC),
            "method judge: the system prompt (the paper's tier definitions)",
        ),
        ParamSpec::with_default(
            "fallback",
            ParamType::Enum(vec!["heuristic", "none"]),
            json!("heuristic"),
            "Items the method cannot label (the kg model on curated items): heuristic, or leave unlabelled",
        ),
    ],
    inputs: InputPorts::Fixed(vec![
        PortSpec::table_with("questions", questions::required_input_columns(), "the questions to label"),
        PortSpec::table_with(
            "entities",
            vec![ColumnSpec::new("id", arrow::datatypes::DataType::Utf8, false)],
            "the graph's entities (kg reference)",
        )
        .optional(),
        PortSpec::table_with(
            "relations",
            vec![ColumnSpec::new("id", arrow::datatypes::DataType::Utf8, false)],
            "the graph's relations (kg reference)",
        )
        .optional(),
    ]),
    outputs: vec![PortSpec::table_with(
        "questions",
        questions::columns(),
        "the questions with `difficulty` and `difficulty_evidence`",
    )],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::difficulty_label.to_string(),
});

/// The judge's rubric (paper §3.1).
pub const RUBRIC: &str = "You grade the difficulty of medical multiple-choice questions for a curriculum. Tiers:\n\
easy: assesses basic medical knowledge commonly known among practitioners.\n\
moderate: requires detailed medical understanding or intermediate clinical reasoning.\n\
difficult: demands advanced or specialized knowledge, complex multi-step inference, or familiarity with rare conditions.\n\
Reply with one short sentence of rationale, then the tier inside <tier></tier>, e.g. <tier>moderate</tier>.";

/// The `difficulty-label` operator.
#[derive(Default)]
pub struct DifficultyLabel;

impl DifficultyLabel {
    /// The operator.
    pub fn new() -> Self {
        DifficultyLabel
    }
}

/// The tier a judge's answer names, and its rationale.
///
/// Tags and tier names are ASCII, so the search lowercases ASCII only: byte offsets in the
/// lowercased text are offsets in the original (full Unicode lowercasing changes the
/// length of characters like `İ` and would slice the reply out of bounds).
pub fn parse_tier(text: &str) -> Option<(String, String)> {
    let lower = text.to_ascii_lowercase();
    let tag = lower.rfind("<tier>");
    let tier = match tag {
        Some(p) => {
            let rest = &lower[p + "<tier>".len()..];
            rest.split("</tier>").next().map(|s| s.trim().to_string())
        }
        None => ["difficult", "moderate", "easy"]
            .iter()
            .filter_map(|t| lower.rfind(t).map(|p| (p, *t)))
            .max()
            .map(|(_, t)| t.to_string()),
    }?;
    let tier = match tier.as_str() {
        "easy" | "moderate" | "difficult" => tier,
        "hard" => "difficult".into(),
        "medium" | "intermediate" => "moderate".into(),
        _ => return None,
    };
    let rationale = match lower.find("<tier>") {
        Some(p) => text.get(..p).unwrap_or(text).trim().to_string(),
        None => text.trim().to_string(),
    };
    Some((tier, rationale))
}

/// The evidence-free heuristic: a score from the item's shape.
pub fn heuristic(q: &Question) -> (String, Value) {
    let words = q.question.split_whitespace().count() + q.question.chars().filter(|c| !c.is_ascii()).count() / 2;
    let hops = q.kg_path.len() / 2;
    let degree = q
        .meta
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .and_then(|m| m.get("answer_degree").and_then(Value::as_u64));
    let mut score = 0.0;
    score += (words as f64 / 60.0).min(2.0);
    score += (q.options.len() as f64 - 4.0).max(0.0) * 0.15;
    score += if q.context.as_deref().is_some_and(|c| c.len() > 500) { 0.5 } else { 0.0 };
    score += hops as f64 * 0.6;
    if let Some(d) = degree {
        score += if d <= 2 {
            0.8
        } else if d <= 5 {
            0.4
        } else {
            0.0
        };
    }
    if q.multi_answer {
        score += 0.8;
    }
    let tier = if score < 1.0 {
        "easy"
    } else if score < 2.0 {
        "moderate"
    } else {
        "difficult"
    };
    (
        tier.to_string(),
        json!({"method": "heuristic", "score": (score * 100.0).round() / 100.0, "words": words, "hops": hops, "answer_degree": degree}),
    )
}

fn tier_of(rate: f64, easy: f64, difficult: f64) -> &'static str {
    if rate >= easy {
        "easy"
    } else if rate <= difficult {
        "difficult"
    } else {
        "moderate"
    }
}

impl Operator for DifficultyLabel {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let method = ctx.params.opt_str("method").unwrap_or("judge");
        let llm = !ctx.params.get("llm").is_null();
        let kg = ctx.params.get("kg").as_bool().unwrap_or(false);
        match method {
            "judge" if !llm => issues.push(ParamIssue {
                param: vec!["llm".into()],
                message: "method `judge` needs `llm: <endpoint>` (the judge)".into(),
            }),
            "pass_rate" if llm == kg => issues.push(ParamIssue {
                param: vec!["method".into()],
                message: "method `pass_rate` needs exactly one reference: `llm: <endpoint>` or `kg: true`".into(),
            }),
            _ => {}
        }
        if kg && !(ctx.inputs.iter().any(|i| i == "entities") && ctx.inputs.iter().any(|i| i == "relations")) {
            issues.push(ParamIssue {
                param: vec!["kg".into()],
                message: "the `kg` reference needs the `entities` and `relations` inputs".into(),
            });
        }
        let (e, d) = (
            ctx.params.get("easy_above").as_f64().unwrap_or(0.8),
            ctx.params.get("difficult_below").as_f64().unwrap_or(0.35),
        );
        if d >= e {
            issues.push(ParamIssue {
                param: vec!["difficult_below".into()],
                message: format!("difficult_below ({d}) must be below easy_above ({e})"),
            });
        }
        issues
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let mut items = questions::from_table(ctx.input_table("questions")?, "unknown")?;
        let method = ctx.params.str("method")?.to_string();
        let fallback = ctx.params.str("fallback")? == "heuristic";
        ctx.progress.set_total(items.len() as u64);
        let mut labels: Vec<Option<(String, Value)>> = vec![None; items.len()];
        match method.as_str() {
            "heuristic" => {
                for (l, q) in labels.iter_mut().zip(&items) {
                    *l = Some(heuristic(q));
                }
            }
            "pass_rate" if ctx.params.bool("kg")? => {
                let ents = ctx
                    .inputs
                    .get("entities")
                    .and_then(|x| x.first())
                    .ok_or_else(|| anyhow!("the `kg` reference needs `entities`"))?
                    .table()?
                    .clone();
                let rels = ctx
                    .inputs
                    .get("relations")
                    .and_then(|x| x.first())
                    .ok_or_else(|| anyhow!("the `kg` reference needs `relations`"))?
                    .table()?
                    .clone();
                let (g, _) = Graph::build(&ents, &rels, 0.0)?;
                let model = KgModel::new(&g, ctx.params.f64("knowledge")?, ctx.params.i64("seed")? as u64);
                let n = ctx.params.u64("samples")? as u32;
                let (easy, diff) = (ctx.params.f64("easy_above")?, ctx.params.f64("difficult_below")?);
                for (l, q) in labels.iter_mut().zip(&items) {
                    if !model.can_answer(q) {
                        continue;
                    }
                    let correct = (0..n).filter(|&t| model.answer(q, t).is_some_and(|a| q.is_answered_by(&a))).count();
                    let rate = correct as f64 / n as f64;
                    *l = Some((
                        tier_of(rate, easy, diff).to_string(),
                        json!({"method": "pass_rate", "reference": "kg", "pass_rate": rate, "samples": n}),
                    ));
                }
            }
            _ => {
                let name = ctx.params.str("llm").context("`llm` names the endpoint")?.to_string();
                let client = LlmClient::from_section(&ctx.llm, &name)?;
                let mut params = Map::new();
                if let Some(t) = ctx.params.get("temperature").as_f64() {
                    params.insert("temperature".into(), json!(t));
                }
                let judge = method == "judge";
                let n = if judge { 1 } else { ctx.params.u64("samples")? as u32 };
                let rubric = ctx.params.str("rubric")?.to_string();
                let calls: Vec<Call> = items
                    .iter()
                    .flat_map(|q| {
                        let messages = if judge {
                            let item = fleming_questions::user_message(q);
                            vec![
                                Message::system(rubric.clone()),
                                Message::user(format!("{item}\n\nCorrect answer: {}", q.answer)),
                            ]
                        } else {
                            Message::for_item(q)
                        };
                        let params = params.clone();
                        (0..n).map(move |t| Call { messages: messages.clone(), params: params.clone(), trial: t })
                    })
                    .collect();
                ctx.progress.set_total(calls.len() as u64);
                let before = ctx.memo.stats();
                let results = client.run(&calls, &ctx.memo, &ctx.progress, &ctx.cancel);
                ctx.memo.flush()?;
                let after = ctx.memo.stats();
                ctx.metric("llm_calls", after.puts - before.puts);
                ctx.metric("llm_memo_hits", after.hits - before.hits);
                ctx.cancel.check()?;
                if let Some(e) = failure_report(client.endpoint(), &results) {
                    return Err(e);
                }
                let (easy, diff) = (ctx.params.f64("easy_above")?, ctx.params.f64("difficult_below")?);
                for (i, (l, q)) in labels.iter_mut().zip(&items).enumerate() {
                    let rs = &results[i * n as usize..(i + 1) * n as usize];
                    if judge {
                        let text = rs[0].as_ref().map(|c| c.content.clone()).unwrap_or_default();
                        *l = parse_tier(&text)
                            .map(|(t, why)| (t, json!({"method": "judge", "llm": name, "rationale": why})));
                    } else {
                        let correct = rs
                            .iter()
                            .filter(|r| {
                                r.as_ref().is_ok_and(|c| fleming_questions::score(q, &c.content, c.truncated()).correct)
                            })
                            .count();
                        let rate = correct as f64 / n as f64;
                        *l = Some((
                            tier_of(rate, easy, diff).to_string(),
                            json!({"method": "pass_rate", "reference": format!("llm:{name}"), "pass_rate": rate, "samples": n}),
                        ));
                    }
                }
            }
        }
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        let mut unlabelled = 0u64;
        let mut by_fallback = 0u64;
        for (q, l) in items.iter_mut().zip(labels) {
            let l = match l {
                Some(l) => Some(l),
                None if fallback => {
                    by_fallback += 1;
                    let (t, mut e) = heuristic(q);
                    if let Some(o) = e.as_object_mut() {
                        o.insert("fallback_from".into(), json!(method));
                    }
                    Some((t, e))
                }
                None => None,
            };
            match l {
                Some((t, e)) => {
                    *counts.entry(t.clone()).or_default() += 1;
                    q.difficulty = Some(t);
                    q.difficulty_evidence = Some(e.to_string());
                }
                None => {
                    unlabelled += 1;
                    q.difficulty = None;
                    q.difficulty_evidence = Some(json!({"method": method, "unlabelled": true}).to_string());
                }
            }
        }
        ctx.metric("labels", json!(counts));
        ctx.metric("unlabelled", unlabelled);
        ctx.metric("labelled_by_fallback", by_fallback);
        ctx.progress.set_position(items.len() as u64);
        Ok(Outputs::new().table("questions", questions::to_table(&items)?))
    }
}

#[cfg(test)]
mod tests;
