//! `distill`: the CoT cold start's teacher half (paper §3.2) — chains of thought that
//! bridge each question and its gold answer, selected pass@k style by verifiers, with
//! refinement rounds for the items no candidate passed.
//!
//! 1. **Teacher.** `kg` writes chains for synthetic items from the graph they were built
//!    from ([`kg_teacher`]); `llm` asks an endpoint of the pipeline's `llm:` section;
//!    `model` serves the `teacher` model artifact with the torch worker. The LLM teachers
//!    see the shared user message of the item, its gold answer, and the completion format.
//! 2. **pass@k.** `k` candidates per item, each checked by the enabled verifiers
//!    ([`verify`]); an item passes when one candidate passes all of them.
//! 3. **Refinement.** Items with no passing candidate go through up to `refine_rounds`
//!    rounds; round r uses `strategies[r-1]` (backtrack, explore alternatives,
//!    self-correct), with the best failed chain and its verifiers' reasons in the prompt.
//! 4. **Selection.** One chain per item: the shortest passing one (or the first), ties
//!    broken by round, then candidate.
//!
//! Every teacher call is memoised by model, full prompt, sampling parameters and trial
//! (round × k + candidate): a rerun makes no call, a grown input calls only for new items,
//! a killed run keeps every answer it got. Training the student on `selected` is the `sft`
//! operator's job (a separate stage: it runs in the torch worker, on a GPU, while this
//! stage talks to a teacher; each reruns alone when its own params change).

pub mod kg_teacher;
#[cfg(test)]
mod tests;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use anyhow::{Context, anyhow, bail};
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use fleming_artifacts::Table;
use fleming_questions::Question;
use fleming_runtime::context::{InputValue, OpContext};
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamIssue, ParamSpec, ParamType, PortSpec,
    ValidateCtx,
};
use serde_json::{Map, Value, json};

use crate::llm::{Call, Completion, Message};
use crate::ops::sample::Graph;
use crate::questions;
use crate::served::{self, ModelSource};
use kg_teacher::KgTeacher;
use verify::{Check, Rules, VERIFIERS};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| {
    OpSpec {
    name: "distill",
    // 2: the kg teacher checks every option when the answer's neighbour is hidden.
    version: 2,
    summary: "Teacher chains of thought for each question and its gold answer: pass@k, verifiers, refinement rounds",
    doc: "For every item of `questions`, the teacher (`kg`: from the graph a synthetic item was built from; \
          `llm`: an endpoint; `model`: the `teacher` model artifact, served by the torch worker) writes `k` \
          chains in the completion format `<think>…</think><answer>X</answer>`, knowing the gold answer. \
          Each is checked by the enabled `verifiers` (answer: the strict extractor reads the gold; format; \
          no_leak: it does not lean on having been given the answer; length: min_words..max_words of \
          reasoning; grounded: a synthetic item's chain names every entity of its graph path). Items with no \
          passing chain go through up to `refine_rounds` rounds (strategies backtrack, alternatives, \
          self_correct, in `strategies` order) with the failed chain and its reasons in the prompt. One \
          chain per item is selected (the shortest passing, or the first); `selected` is the items with \
          that chain as their `explanation` — train the student on it with `sft`. Items that never pass are \
          in `unresolved` with the last reasons. Teacher calls are memoised per model, prompt, sampling \
          parameters and trial.",
    params: vec![
        ParamSpec::with_default(
            "teacher",
            ParamType::Enum(vec!["kg", "llm", "model"]),
            json!("kg"),
            "Who writes the chains: the graph (inputs entities, relations), an `llm` endpoint, or the `teacher` model input",
        ),
        ParamSpec::optional("llm", ParamType::SectionRef("llm"), "teacher llm: the endpoint of the `llm:` section"),
        ParamSpec::with_default("k", ParamType::Int, json!(4), "Candidate chains per item and round (pass@k)")
            .range(Some(1.0), Some(64.0)),
        ParamSpec::with_default(
            "refine_rounds",
            ParamType::Int,
            json!(2),
            "Refinement rounds at most for items with no passing chain (0: none)",
        )
        .range(Some(0.0), Some(16.0)),
        ParamSpec::with_default(
            "strategies",
            ParamType::List(Box::new(ParamType::Str)),
            json!(["backtrack", "alternatives", "self_correct"]),
            "Refinement strategy of each round, in order (cycled): backtrack, alternatives, self_correct",
        ),
        ParamSpec::with_default(
            "verifiers",
            ParamType::List(Box::new(ParamType::Str)),
            json!(VERIFIERS),
            "Enabled verifiers: answer, format, no_leak, length, grounded",
        ),
        ParamSpec::with_default("min_words", ParamType::Int, json!(8), "Verifier length: fewest words of reasoning")
            .range(Some(0.0), None),
        ParamSpec::with_default("max_words", ParamType::Int, json!(200), "Verifier length: most words of reasoning")
            .range(Some(1.0), None),
        ParamSpec::with_default(
            "select",
            ParamType::Enum(vec!["shortest", "first"]),
            json!("shortest"),
            "Which passing chain an item keeps: the shortest (brevity), or the first",
        ),
        ParamSpec::optional(
            "tiers",
            ParamType::List(Box::new(ParamType::Str)),
            "Distil only items of these difficulty tiers (e.g. [moderate, difficult]); default: every item",
        ),
        ParamSpec::with_default("temperature", ParamType::Float, json!(0.8), "Teacher sampling temperature")
            .range(Some(0.0), Some(2.0)),
        ParamSpec::with_default("top_p", ParamType::Float, json!(0.95), "Teacher nucleus sampling mass")
            .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default(
            "seed",
            ParamType::Int,
            json!(0),
            "Seed of the teacher's sampling (trial t of a call uses seed + t) and of the kg teacher's phrasing",
        ),
        ParamSpec::with_default("max_new_tokens", ParamType::Int, json!(512), "Longest teacher reply in tokens")
            .range(Some(1.0), None),
        ParamSpec::with_default(
            "max_failed_calls",
            ParamType::Float,
            json!(0.05),
            "Share of teacher calls that may fail (after retries) and count as failed candidates; above it the stage fails",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default(
            "batch_size",
            ParamType::Int,
            json!(16),
            "teacher model: sequences generated together by the model server",
        )
        .range(Some(1.0), Some(256.0))
        .not_in_key(),
    ],
    inputs: InputPorts::Fixed(vec![
        PortSpec::table_with("questions", questions::required_input_columns(), "the items to distil, with gold answers"),
        PortSpec::table("entities", "the graph's entities (teacher kg; the grounded verifier)").optional(),
        PortSpec::table("relations", "the graph's relations (teacher kg; the grounded verifier)").optional(),
        PortSpec::model("teacher", "teacher model: the model artifact that writes the chains").optional(),
    ]),
    outputs: vec![
        PortSpec::table_with("traces", trace_columns(), "every candidate: chain, verdict per verifier, reasons"),
        PortSpec::table_with(
            "selected",
            questions::required_input_columns(),
            "the items with a passing chain, that chain as `explanation` (what sft trains on)",
        ),
        PortSpec::table_with(
            "unresolved",
            questions::required_input_columns(),
            "the items no chain passed, with `reason`",
        ),
        PortSpec::table_with("rounds", round_columns(), "per round: items, candidates, passes, acceptance, rejections"),
    ],
    execution: Execution::CpuWithWorkers,
    fingerprint: crate::fingerprints::distill.to_string(),
}
});

fn col(name: &'static str, ty: DataType, nullable: bool) -> ColumnSpec {
    ColumnSpec::new(name, ty, nullable)
}

fn trace_columns() -> Vec<ColumnSpec> {
    let list = fleming_questions::table::string_list_type();
    vec![
        col("id", DataType::Utf8, false),
        col("item", DataType::Utf8, false),
        col("round", DataType::Int64, false),
        col("candidate", DataType::Int64, false),
        col("strategy", DataType::Utf8, true),
        col("chain", DataType::Utf8, false),
        col("reply", DataType::Utf8, false),
        col("passed", DataType::Boolean, false),
        col("selected", DataType::Boolean, false),
        col("verdicts", DataType::Utf8, false),
        col("reasons", list.clone(), false),
        col("words", DataType::Int64, false),
        col("tokens", DataType::Int64, true),
        col("finish_reason", DataType::Utf8, true),
        col("parents", list, false),
    ]
}

fn round_columns() -> Vec<ColumnSpec> {
    let mut c = vec![
        col("round", DataType::Int64, false),
        col("strategy", DataType::Utf8, true),
        col("items", DataType::Int64, false),
        col("candidates", DataType::Int64, false),
        col("calls_failed", DataType::Int64, false),
        col("passed", DataType::Int64, false),
        col("resolved", DataType::Int64, false),
        col("acceptance", DataType::Float64, true),
    ];
    for v in VERIFIERS {
        c.push(ColumnSpec::new(rejected_column(v), DataType::Int64, false));
    }
    c
}

fn rejected_column(verifier: &str) -> &'static str {
    match verifier {
        "answer" => "rejected_answer",
        "format" => "rejected_format",
        "no_leak" => "rejected_no_leak",
        "length" => "rejected_length",
        _ => "rejected_grounded",
    }
}

/// A refinement strategy (paper §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Backtrack and re-examine the assumptions.
    Backtrack,
    /// Explore alternative hypotheses.
    Alternatives,
    /// Self-correct the failed chain.
    SelfCorrect,
}

impl Strategy {
    /// Every strategy, by name.
    pub const ALL: [(&'static str, Strategy); 3] = [
        ("backtrack", Strategy::Backtrack),
        ("alternatives", Strategy::Alternatives),
        ("self_correct", Strategy::SelfCorrect),
    ];

    fn parse(s: &str) -> Option<Strategy> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, st)| *st)
    }

    /// Its name in params and tables.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, st)| *st == self).map_or("?", |(n, _)| n)
    }

    /// What the teacher is asked to do in a round of this strategy.
    fn instruction(self) -> &'static str {
        match self {
            Strategy::Backtrack => {
                "Backtrack: re-examine the assumptions of that reasoning step by step, find where it went wrong, and reason again from the findings."
            }
            Strategy::Alternatives => {
                "Explore alternative hypotheses: consider each option in turn, say what supports or rules it out, and reach the correct one."
            }
            Strategy::SelfCorrect => {
                "Self-correct: rewrite the reasoning so that it fixes exactly the problem named above."
            }
        }
    }
}

/// Why the kg teacher writes nothing for an item.
const NOT_IN_GRAPH: &str =
    "not distillable by the kg teacher: it writes chains only for synthetic items of the connected graph";

/// The teacher's instructions (LLM and model teachers).
pub const TEACHER_SYSTEM: &str = "You are a medical expert writing worked reasoning for a student. You are given a multiple-choice question and its correct answer. Write the concise chain of thought a careful expert would follow from the question alone to that answer: use the key findings, connect them step by step, and rule out the other options. Never mention that the answer was given to you. Reply in exactly this format: <think>your reasoning</think><answer>LETTER</answer>";

/// The user message a teacher gets for an item: the shared user message, then the gold.
pub fn teacher_message(q: &Question) -> String {
    let gold: Vec<String> = q
        .answers()
        .iter()
        .map(|l| match q.option_text(l) {
            Some(t) => format!("{l} ({})", t.trim()),
            None => l.to_string(),
        })
        .collect();
    format!("{}\n\nCorrect answer: {}", fleming_questions::user_message(q), gold.join(", "))
}

/// One candidate chain.
struct Candidate {
    item: usize,
    round: u32,
    index: u32,
    strategy: Option<Strategy>,
    reply: String,
    finish_reason: Option<String>,
    tokens: Option<u64>,
    checks: Vec<Check>,
    /// The call failed (after retries): no chain.
    failure: Option<String>,
}

impl Candidate {
    fn passed(&self) -> bool {
        self.failure.is_none() && self.checks.iter().all(|c| c.ok)
    }

    fn reasons(&self) -> Vec<String> {
        match &self.failure {
            Some(f) => vec![format!("call failed: {f}")],
            None => self.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.verifier, c.reason)).collect(),
        }
    }

    fn words(&self) -> usize {
        verify::words(verify::reasoning(&self.reply))
    }

    fn id(&self, items: &[Question]) -> String {
        format!("{}#r{}c{}", items[self.item].id, self.round, self.index)
    }
}

/// Who writes the chains.
enum Teacher<'g> {
    Kg(&'g KgTeacher<'g>),
    Asked { label: String, source: ModelSource },
}

/// The operator's settings, read from its params.
struct Settings {
    k: u32,
    rounds: u32,
    strategies: Vec<Strategy>,
    rules: Rules,
    shortest: bool,
    seed: i64,
    sampling: Map<String, Value>,
    max_failed_calls: f64,
    batch: usize,
}

/// The `distill` operator.
#[derive(Default)]
pub struct Distill;

impl Distill {
    /// The operator.
    pub fn new() -> Self {
        Distill
    }
}

fn names_in(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

impl Operator for Distill {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let mut issue = |param: &str, message: String| issues.push(ParamIssue { param: vec![param.into()], message });
        let has = |port: &str| ctx.inputs.iter().any(|i| i == port);
        let llm = !ctx.params.get("llm").is_null();
        match ctx.params.opt_str("teacher").unwrap_or("kg") {
            "kg" if !(has("entities") && has("relations")) => {
                issue("teacher", "teacher `kg` needs the `entities` and `relations` inputs (the graph)".into())
            }
            "llm" if !llm => issue("llm", "teacher `llm` needs `llm: <endpoint>`".into()),
            "model" if !has("teacher") => {
                issue("teacher", "teacher `model` needs the `teacher` input (a model artifact)".into())
            }
            t if t != "llm" && llm => {
                issue("llm", format!("`llm` is set but the teacher is `{t}`; set `teacher: llm`"))
            }
            t if t != "model" && has("teacher") => issue(
                "teacher",
                format!("the `teacher` input is connected but the teacher is `{t}`; set `teacher: model`"),
            ),
            _ => {}
        }
        for v in names_in(ctx.params.get("verifiers")) {
            if !VERIFIERS.contains(&v.as_str()) {
                issue("verifiers", format!("unknown verifier `{v}` (verifiers: {})", VERIFIERS.join(", ")));
            }
        }
        let strategies = names_in(ctx.params.get("strategies"));
        for s in &strategies {
            if Strategy::parse(s).is_none() {
                issue(
                    "strategies",
                    format!("unknown strategy `{s}` (strategies: backtrack, alternatives, self_correct)"),
                );
            }
        }
        if strategies.is_empty() && ctx.params.get("refine_rounds").as_u64().unwrap_or(2) > 0 {
            issue("strategies", "refinement rounds need at least one strategy".into());
        }
        let (lo, hi) =
            (ctx.params.get("min_words").as_u64().unwrap_or(8), ctx.params.get("max_words").as_u64().unwrap_or(200));
        if lo > hi {
            issue("min_words", format!("min_words ({lo}) is above max_words ({hi})"));
        }
        issues
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let mut items = questions::from_table(ctx.input_table("questions")?, "unknown")?;
        let input_count = items.len();
        if let Some(tiers) = ctx.params.get("tiers").as_array() {
            let tiers: Vec<&str> = tiers.iter().filter_map(Value::as_str).collect();
            items.retain(|q| q.difficulty.as_deref().is_some_and(|d| tiers.contains(&d)));
            ctx.metric("items_outside_tiers", (input_count - items.len()) as u64);
        }
        let settings = settings(ctx)?;
        let graph = match (ctx.input_table("entities"), ctx.input_table("relations")) {
            (Ok(_), Ok(_)) => Some(Graph::from_inputs(ctx, "distill")?),
            _ => None,
        };
        // The graph's reader: the kg teacher, and the grounded verifier's path names.
        let kg = graph.as_ref().map(KgTeacher::new);
        let path_names: Vec<Option<Vec<String>>> =
            items.iter().map(|q| kg.as_ref().and_then(|t| t.path_names(q))).collect();
        let teacher = match ctx.params.str("teacher")? {
            "kg" => Teacher::Kg(
                kg.as_ref()
                    .ok_or_else(|| anyhow!("teacher `kg` needs the `entities` and `relations` inputs (the graph)"))?,
            ),
            "llm" => {
                let name = ctx.params.str("llm").context("teacher `llm` needs `llm: <endpoint>`")?.to_string();
                Teacher::Asked { label: name.clone(), source: ModelSource::Endpoint(name) }
            }
            _ => {
                let input = ctx
                    .inputs
                    .get("teacher")
                    .and_then(|v| v.first())
                    .ok_or_else(|| anyhow!("teacher `model` needs the `teacher` input"))?;
                let InputValue::Model(dir) = &input.value else { bail!("input from {} is not a model", input.from) };
                let label = input.from.split('.').next().unwrap_or(&input.from).to_string();
                Teacher::Asked { label, source: ModelSource::Artifact { dir: dir.clone(), digest: input.digest.hex() } }
            }
        };

        // Items the teacher cannot write for at all (the kg teacher and items that are not
        // synthetic items of the graph) are unresolved at once, without candidates.
        let skipped: Vec<Option<&str>> = items
            .iter()
            .enumerate()
            .map(|(i, _)| match &teacher {
                Teacher::Kg(_) if path_names[i].is_none() => Some(NOT_IN_GRAPH),
                _ => None,
            })
            .collect();
        let attempted = skipped.iter().filter(|s| s.is_none()).count();
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut round_rows: Vec<RoundRow> = Vec::new();
        // Per item: resolved, and the best failed candidate of its last round.
        let mut resolved = vec![false; items.len()];
        let mut last_failed: Vec<Option<usize>> = vec![None; items.len()];
        let (mut calls_made, mut calls_failed) = (0usize, 0usize);
        ctx.progress.set_unit("chains");
        for round in 0..=settings.rounds {
            let strategy = match round {
                0 => None,
                r => match settings.strategies.len() {
                    0 => break,
                    n => Some(settings.strategies[(r as usize - 1) % n]),
                },
            };
            let pending: Vec<usize> = (0..items.len()).filter(|&i| !resolved[i] && skipped[i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            ctx.progress.set_total((pending.len() * settings.k as usize) as u64);
            ctx.progress.set_position(0);
            let first = candidates.len();
            let mut failed_here = 0usize;
            match &teacher {
                Teacher::Kg(t) => {
                    for &i in &pending {
                        let concise = last_failed[i]
                            .is_some_and(|c| candidates[c].checks.iter().any(|x| !x.ok && x.verifier == "length"));
                        for c in 0..settings.k {
                            let reasoning = t.reasoning(&items[i], settings.seed as u64, c, round, strategy, concise);
                            candidates.push(Candidate {
                                item: i,
                                round,
                                index: c,
                                strategy,
                                reply: reasoning
                                    .map(|r| fleming_questions::completion(&r, &items[i].answer))
                                    .unwrap_or_default(),
                                finish_reason: None,
                                tokens: None,
                                checks: Vec::new(),
                                failure: None,
                            });
                            ctx.progress.inc(1);
                        }
                    }
                }
                Teacher::Asked { label, source } => {
                    let mut calls = Vec::with_capacity(pending.len() * settings.k as usize);
                    for &i in &pending {
                        let messages = teacher_messages(&items[i], strategy, last_failed[i].map(|c| &candidates[c]));
                        for c in 0..settings.k {
                            calls.push(Call {
                                messages: messages.clone(),
                                params: settings.sampling.clone(),
                                trial: round * settings.k + c,
                            });
                        }
                    }
                    ctx.cancel.check()?;
                    let answers = served::ask(ctx, label, source, &calls, settings.batch)
                        .with_context(|| format!("asking the teacher `{label}`"))?;
                    calls_made += calls.len();
                    let failed = answers.results.iter().filter(|r| r.is_err()).count();
                    calls_failed += failed;
                    failed_here = failed;
                    if let Some(e) = answers.failures
                        && calls_failed as f64 > settings.max_failed_calls * calls_made as f64
                    {
                        return Err(e.context(format!(
                            "more than max_failed_calls ({}) of the teacher's calls failed",
                            settings.max_failed_calls
                        )));
                    }
                    let mut it = answers.results.into_iter();
                    for &i in &pending {
                        for c in 0..settings.k {
                            let r = it.next().ok_or_else(|| anyhow!("a teacher answer went missing"))?;
                            let (completion, failure) = match r {
                                Ok(done) => (done, None),
                                Err(f) => (
                                    Completion {
                                        content: String::new(),
                                        finish_reason: None,
                                        tokens: None,
                                        seconds: None,
                                    },
                                    Some(f.error),
                                ),
                            };
                            candidates.push(Candidate {
                                item: i,
                                round,
                                index: c,
                                strategy,
                                reply: completion.content.clone(),
                                finish_reason: completion.finish_reason.clone(),
                                tokens: completion.tokens,
                                checks: Vec::new(),
                                failure,
                            });
                        }
                    }
                }
            }
            for cand in &mut candidates[first..] {
                if cand.failure.is_none() {
                    let truncated = cand.finish_reason.as_deref() == Some("length");
                    cand.checks = verify::verify(
                        &items[cand.item],
                        &cand.reply,
                        truncated,
                        &settings.rules,
                        path_names[cand.item].as_deref(),
                    );
                }
            }
            let mut row = RoundRow {
                round,
                strategy,
                items: pending.len(),
                candidates: candidates.len() - first,
                calls_failed: failed_here,
                ..Default::default()
            };
            for (ci, cand) in candidates.iter().enumerate().skip(first) {
                if cand.passed() {
                    row.passed += 1;
                    if !resolved[cand.item] {
                        resolved[cand.item] = true;
                        row.resolved += 1;
                    }
                }
                for c in cand.checks.iter().filter(|c| !c.ok) {
                    *row.rejected.entry(c.verifier).or_default() += 1;
                }
                let better = match last_failed[cand.item] {
                    Some(prev) if candidates[prev].round == round => fails(cand) < fails(&candidates[prev]),
                    _ => true,
                };
                if !cand.passed() && better {
                    last_failed[cand.item] = Some(ci);
                }
            }
            row.acceptance = resolved.iter().filter(|r| **r).count() as f64 / attempted.max(1) as f64;
            ctx.progress.set_message(&format!(
                "round {round}: {} of {} items resolved",
                resolved.iter().filter(|r| **r).count(),
                items.len()
            ));
            round_rows.push(row);
        }

        // Selection: one passing chain per item.
        let mut chosen: Vec<Option<usize>> = vec![None; items.len()];
        for (ci, c) in candidates.iter().enumerate().filter(|(_, c)| c.passed()) {
            let better = match chosen[c.item] {
                None => true,
                Some(prev) => {
                    let p = &candidates[prev];
                    let key = |x: &Candidate| (if settings.shortest { x.words() } else { 0 }, x.round, x.index);
                    key(c) < key(p)
                }
            };
            if better {
                chosen[c.item] = Some(ci);
            }
        }
        let mut selected = Vec::new();
        let mut unresolved = Vec::new();
        let mut unresolved_reasons = Vec::new();
        for (i, q) in items.iter().enumerate() {
            match chosen[i] {
                Some(ci) => {
                    let mut s = q.clone();
                    s.explanation = Some(verify::reasoning(&candidates[ci].reply).to_string());
                    s.parents = vec![candidates[ci].id(&items)];
                    selected.push(s);
                }
                None => {
                    let why = match skipped[i] {
                        Some(why) => why.to_string(),
                        None => last_failed[i].map(|c| candidates[c].reasons().join("; ")).unwrap_or_default(),
                    };
                    unresolved.push(q.clone());
                    unresolved_reasons.push(why);
                }
            }
        }
        ctx.metric("not_distillable", (items.len() - attempted) as u64);
        record_metrics(
            ctx,
            &settings,
            attempted,
            &items,
            &candidates,
            &round_rows,
            &selected,
            input_count,
            calls_failed,
        );
        let selected_ids: Vec<Option<usize>> = chosen;
        Ok(Outputs::new()
            .table("traces", traces_table(&items, &candidates, &selected_ids)?)
            .table("selected", questions::to_table(&selected)?)
            .table("unresolved", with_reason(&unresolved, &unresolved_reasons)?)
            .table("rounds", rounds_table(&round_rows)?))
    }
}

/// How many verifiers a candidate fails (a failed call: all of them).
fn fails(c: &Candidate) -> usize {
    if c.failure.is_some() { usize::MAX } else { c.checks.iter().filter(|x| !x.ok).count() }
}

fn settings(ctx: &OpContext) -> anyhow::Result<Settings> {
    let enabled: Vec<&'static str> = names_in(ctx.params.get("verifiers"))
        .iter()
        .filter_map(|v| VERIFIERS.iter().find(|k| *k == v).copied())
        .collect();
    let strategies: Vec<Strategy> = names_in(ctx.params.get("strategies"))
        .iter()
        .map(|s| Strategy::parse(s).ok_or_else(|| anyhow!("unknown strategy `{s}`")))
        .collect::<anyhow::Result<_>>()?;
    let temperature = ctx.params.f64("temperature")?;
    let mut sampling = Map::new();
    sampling.insert("temperature".into(), json!(temperature));
    sampling.insert("top_p".into(), json!(ctx.params.f64("top_p")?));
    sampling.insert("max_tokens".into(), json!(ctx.params.u64("max_new_tokens")?));
    let seed = ctx.params.i64("seed")?;
    if temperature > 0.0 {
        sampling.insert("seed".into(), json!(seed));
    }
    Ok(Settings {
        k: ctx.params.u64("k")? as u32,
        rounds: ctx.params.u64("refine_rounds")? as u32,
        strategies,
        rules: Rules {
            enabled,
            min_words: ctx.params.u64("min_words")? as usize,
            max_words: ctx.params.u64("max_words")? as usize,
        },
        shortest: ctx.params.str("select")? == "shortest",
        seed,
        sampling,
        max_failed_calls: ctx.params.f64("max_failed_calls")?,
        batch: ctx.params.u64("batch_size")? as usize,
    })
}

/// The chat a teacher is asked: the instructions, the item with its gold answer, and in a
/// refinement round the failed chain, its reasons and the strategy.
fn teacher_messages(q: &Question, strategy: Option<Strategy>, failed: Option<&Candidate>) -> Vec<Message> {
    let mut user = teacher_message(q);
    if let Some(s) = strategy {
        match failed {
            Some(f) if f.failure.is_none() => {
                user.push_str("\n\nA previous attempt was rejected.\nAttempt:\n");
                user.push_str(f.reply.trim());
                user.push_str("\nWhy it was rejected: ");
                user.push_str(&f.reasons().join("; "));
            }
            _ => user.push_str("\n\nA previous attempt produced no usable reply."),
        }
        user.push_str("\n\n");
        user.push_str(s.instruction());
    }
    vec![Message::system(TEACHER_SYSTEM), Message::user(user)]
}

/// One row of `rounds`.
#[derive(Default)]
struct RoundRow {
    round: u32,
    strategy: Option<Strategy>,
    items: usize,
    candidates: usize,
    calls_failed: usize,
    passed: usize,
    resolved: usize,
    acceptance: f64,
    rejected: BTreeMap<&'static str, usize>,
}

#[allow(clippy::too_many_arguments)]
fn record_metrics(
    ctx: &mut OpContext,
    settings: &Settings,
    attempted: usize,
    items: &[Question],
    candidates: &[Candidate],
    rounds: &[RoundRow],
    selected: &[Question],
    input_count: usize,
    calls_failed: usize,
) {
    // pass@1 (mean share of passing first-round candidates per item) and pass@k.
    let k = settings.k as f64;
    let mut per_item = vec![0usize; items.len()];
    for c in candidates.iter().filter(|c| c.round == 0 && c.passed()) {
        per_item[c.item] += 1;
    }
    let n = attempted.max(1) as f64;
    ctx.metric("pass_at_1", json!(per_item.iter().map(|&p| p as f64 / k).sum::<f64>() / n));
    ctx.metric("pass_at_k", json!(per_item.iter().filter(|&&p| p > 0).count() as f64 / n));
    for r in rounds {
        ctx.metric(&format!("acceptance_after_round_{}", r.round), json!(r.acceptance));
    }
    let mut rejected: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rounds {
        for (v, c) in &r.rejected {
            *rejected.entry(*v).or_default() += c;
        }
    }
    for (v, c) in rejected {
        ctx.metric(&format!("rejected.{v}"), c as u64);
    }
    let mut lengths: Vec<usize> =
        selected.iter().map(|q| verify::words(q.explanation.as_deref().unwrap_or(""))).collect();
    lengths.sort_unstable();
    if let (Some(min), Some(max)) = (lengths.first(), lengths.last()) {
        let at = |p: f64| lengths[((lengths.len() - 1) as f64 * p).round() as usize];
        ctx.metric("chain_words.min", *min as u64);
        ctx.metric("chain_words.p50", at(0.5) as u64);
        ctx.metric("chain_words.p90", at(0.9) as u64);
        ctx.metric("chain_words.max", *max as u64);
        ctx.metric("chain_words.mean", json!(lengths.iter().sum::<usize>() as f64 / lengths.len() as f64));
    }
    ctx.metric("input", input_count as u64);
    ctx.metric("items", items.len() as u64);
    ctx.metric("selected", selected.len() as u64);
    ctx.metric("unresolved", (items.len() - selected.len()) as u64);
    ctx.metric("candidates", candidates.len() as u64);
    ctx.metric("calls_failed", calls_failed as u64);
}

fn table(columns: Vec<(&str, ArrayRef)>) -> anyhow::Result<Table> {
    Ok(fleming_artifacts::table::table_from_columns(columns)?)
}

fn traces_table(items: &[Question], candidates: &[Candidate], chosen: &[Option<usize>]) -> anyhow::Result<Table> {
    let mut reasons = ListBuilder::new(StringBuilder::new());
    let mut parents = ListBuilder::new(StringBuilder::new());
    for c in candidates {
        for r in c.reasons() {
            reasons.values().append_value(r);
        }
        reasons.append(true);
        parents.values().append_value(&items[c.item].id);
        parents.append(true);
    }
    let strs = |f: &dyn Fn(&Candidate) -> Option<String>| -> ArrayRef {
        Arc::new(candidates.iter().map(f).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&Candidate) -> Option<i64>| -> ArrayRef {
        Arc::new(candidates.iter().map(f).collect::<Int64Array>())
    };
    let is_chosen: Vec<bool> = candidates.iter().enumerate().map(|(ci, c)| chosen[c.item] == Some(ci)).collect();
    table(vec![
        ("id", strs(&|c| Some(c.id(items)))),
        ("item", strs(&|c| Some(items[c.item].id.clone()))),
        ("round", ints(&|c| Some(c.round as i64))),
        ("candidate", ints(&|c| Some(c.index as i64))),
        ("strategy", strs(&|c| c.strategy.map(|s| s.as_str().to_string()))),
        ("chain", strs(&|c| Some(verify::reasoning(&c.reply).to_string()))),
        ("reply", strs(&|c| Some(c.reply.clone()))),
        ("passed", Arc::new(candidates.iter().map(|c| Some(c.passed())).collect::<BooleanArray>())),
        ("selected", Arc::new(is_chosen.into_iter().map(Some).collect::<BooleanArray>())),
        (
            "verdicts",
            strs(&|c| {
                let m: Map<String, Value> = c
                    .checks
                    .iter()
                    .map(|x| (x.verifier.to_string(), json!({"ok": x.ok, "reason": x.reason})))
                    .collect();
                Some(Value::Object(m).to_string())
            }),
        ),
        ("reasons", Arc::new(reasons.finish())),
        ("words", ints(&|c| Some(c.words() as i64))),
        ("tokens", ints(&|c| c.tokens.map(|t| t as i64))),
        ("finish_reason", strs(&|c| c.finish_reason.clone())),
        ("parents", Arc::new(parents.finish())),
    ])
}

/// The unresolved items as a questions table with a `reason` column.
fn with_reason(items: &[Question], reasons: &[String]) -> anyhow::Result<Table> {
    let batch = fleming_questions::table::to_batch(items)?;
    let mut columns: Vec<(String, ArrayRef)> =
        batch.schema().fields().iter().zip(batch.columns()).map(|(f, c)| (f.name().clone(), c.clone())).collect();
    columns.push(("reason".into(), Arc::new(reasons.iter().map(|r| Some(r.as_str())).collect::<StringArray>())));
    table(columns.iter().map(|(n, c)| (n.as_str(), c.clone())).collect())
}

fn rounds_table(rows: &[RoundRow]) -> anyhow::Result<Table> {
    let ints = |f: &dyn Fn(&RoundRow) -> usize| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r) as i64)).collect::<Int64Array>())
    };
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        ("round", ints(&|r| r.round as usize)),
        ("strategy", Arc::new(rows.iter().map(|r| r.strategy.map(|s| s.as_str())).collect::<StringArray>())),
        ("items", ints(&|r| r.items)),
        ("candidates", ints(&|r| r.candidates)),
        ("calls_failed", ints(&|r| r.calls_failed)),
        ("passed", ints(&|r| r.passed)),
        ("resolved", ints(&|r| r.resolved)),
        ("acceptance", Arc::new(rows.iter().map(|r| Some(r.acceptance)).collect::<Float64Array>())),
    ];
    for v in VERIFIERS {
        columns.push((rejected_column(v), ints(&|r| r.rejected.get(v).copied().unwrap_or(0))));
    }
    table(columns)
}
