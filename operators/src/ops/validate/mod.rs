//! `validate`: the multi-phase refinement of paper §3.1 over every question source.
//!
//! In order: format filtering (a reason per rejected row), anonymisation (placeholders,
//! counted), exact and near-duplicate removal across all inputs (normalised text;
//! MinHash/LSH), reviewed decisions, label verification (a validator answers each item
//! `trials` times; items never answered correctly go to `flagged`), and curated/synthetic
//! mixing. Always: input rows = kept + rejected + flagged + left out by mixing.

pub mod anonymise;
pub mod dedup;
pub mod format;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use anyhow::{Context, anyhow, bail};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::Table;
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamIssue, ParamSpec, ParamType, PortSpec,
    ValidateCtx,
};
use rayon::prelude::*;
use serde_json::{Map, Value, json};

use crate::llm::{Call, Completion, LlmClient, Message, failure_report};
use crate::ops::sample::{Graph, KgModel};
use crate::questions::{self, Question};
use anonymise::{Anonymiser, Kind};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "validate",
    // 2: the LLM validator is asked with the shared prompt and read by the strict extractor.
    version: 2,
    summary: "Format filtering, anonymisation, exact and near-duplicate removal, label verification and mixing of questions",
    doc: "Reads any number of question tables (curated and synthetic) and writes the kept `questions`, \
          the `rejected` rows with a reason, and the `flagged` rows a validator never answered \
          correctly. Every LLM call is memoised by model, prompt, sampling parameters and trial.",
    params: vec![
        ParamSpec::with_default("min_options", ParamType::Int, json!(2), "Fewest options an item may have")
            .range(Some(2.0), Some(26.0)),
        ParamSpec::with_default("max_options", ParamType::Int, json!(10), "Most options an item may have")
            .range(Some(2.0), Some(26.0)),
        ParamSpec::with_default("min_question_chars", ParamType::Int, json!(10), "Shorter stems are malformed")
            .range(Some(1.0), None),
        ParamSpec::with_default(
            "dedup",
            ParamType::Enum(vec!["none", "exact", "near"]),
            json!("near"),
            "Duplicate removal: exact (normalised text) or near as well (MinHash/LSH)",
        ),
        ParamSpec::with_default(
            "near_threshold",
            ParamType::Float,
            json!(0.8),
            "Estimated Jaccard similarity (word 3-shingles) above which two items are near duplicates",
        )
        .range(Some(0.3), Some(1.0)),
        ParamSpec::with_default(
            "anonymise",
            ParamType::List(Box::new(ParamType::Enum(vec![
                "names",
                "dates",
                "phones",
                "emails",
                "records",
                "addresses",
            ]))),
            json!(["names", "dates", "phones", "emails", "records", "addresses"]),
            "What to replace by placeholders ([NAME], [DATE], …); [] turns anonymisation off",
        ),
        ParamSpec::optional(
            "verify",
            ParamType::Object(verify_fields()),
            "Label verification: a validator answers each item `trials` times; never correct -> flagged",
        ),
        ParamSpec::optional(
            "mix",
            ParamType::Object(mix_fields()),
            "Curated/synthetic mixing of the kept rows; left-out rows are counted",
        ),
    ],
    inputs: InputPorts::Fixed(vec![
        PortSpec::table_with(
            "questions",
            questions::required_input_columns(),
            "question tables (any number; duplicates are found across all)",
        )
        .many(),
        PortSpec::table_with(
            "entities",
            vec![ColumnSpec::new("id", DataType::Utf8, false)],
            "the graph's entities (for the `kg` validator)",
        )
        .optional(),
        PortSpec::table_with(
            "relations",
            vec![ColumnSpec::new("id", DataType::Utf8, false)],
            "the graph's relations (for the `kg` validator)",
        )
        .optional(),
        PortSpec::table_with(
            "decisions",
            vec![ColumnSpec::new("id", DataType::Utf8, false), ColumnSpec::new("decision", DataType::Utf8, false)],
            "reviewed decisions: id -> accept (keep even if flagged) or reject",
        )
        .optional(),
    ]),
    outputs: vec![
        PortSpec::table_with("questions", questions::columns(), "kept items (anonymised), in input order"),
        PortSpec::table_with("rejected", rejected_columns(), "rejected items with the step and the reason"),
        PortSpec::table_with(
            "flagged",
            flagged_columns(),
            "items the validator never answered correctly, with its answers, for review",
        ),
    ],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::validate.to_string(),
});

fn verify_fields() -> Vec<ParamSpec> {
    vec![
        ParamSpec::optional(
            "llm",
            ParamType::SectionRef("llm"),
            "Validator: an endpoint of the pipeline's `llm:` section",
        ),
        ParamSpec::with_default(
            "kg",
            ParamType::Bool,
            json!(false),
            "Validator: answer synthetic items from the graph (inputs `entities`, `relations`); other items pass unverified",
        ),
        ParamSpec::with_default("trials", ParamType::Int, json!(5), "Independent answers per item")
            .range(Some(1.0), Some(100.0)),
        ParamSpec::optional("temperature", ParamType::Float, "LLM sampling temperature (default: the endpoint's)"),
        ParamSpec::optional("max_tokens", ParamType::Int, "LLM answer length cap (default: the endpoint's)"),
        ParamSpec::with_default(
            "knowledge",
            ParamType::Float,
            json!(1.0),
            "`kg` validator: share of the graph it knows (1: all relations)",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default("seed", ParamType::Int, json!(0), "`kg` validator: seed of its choices"),
    ]
}

fn mix_fields() -> Vec<ParamSpec> {
    vec![
        ParamSpec::required(
            "synthetic",
            ParamType::Float,
            "Share of synthetic items (non-empty kg_path or source `synthetic`) among the kept rows",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::optional("total", ParamType::Int, "Rows to keep (default: as many as the share allows)"),
        ParamSpec::with_default("seed", ParamType::Int, json!(0), "Seed of which rows are left out"),
    ]
}

fn rejected_columns() -> Vec<ColumnSpec> {
    let mut c = questions::columns();
    c.push(ColumnSpec::new("step", DataType::Utf8, false));
    c.push(ColumnSpec::new("reason", DataType::Utf8, false));
    c
}

fn flagged_columns() -> Vec<ColumnSpec> {
    let mut c = questions::columns();
    c.push(ColumnSpec::new("validator", DataType::Utf8, false));
    c.push(ColumnSpec::new("trials", DataType::Int64, false));
    c.push(ColumnSpec::new("correct", DataType::Int64, false));
    c.push(ColumnSpec::new("answers", DataType::Utf8, false));
    c.push(ColumnSpec::new("reason", DataType::Utf8, false));
    c
}

/// The `validate` operator.
#[derive(Default)]
pub struct Validate;

impl Validate {
    /// The operator.
    pub fn new() -> Self {
        Validate
    }
}

/// A questions table with extra columns appended.
pub fn with_columns(items: &[Question], extra: Vec<(&str, ArrayRef)>) -> anyhow::Result<Table> {
    let base = questions::to_table(items)?.concat()?;
    let mut fields: Vec<Field> = base.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut cols: Vec<ArrayRef> = base.columns().to_vec();
    for (name, a) in extra {
        fields.push(Field::new(name, a.data_type().clone(), false));
        cols.push(a);
    }
    let schema = Arc::new(Schema::new(fields));
    Ok(Table::new(schema.clone(), vec![RecordBatch::try_new(schema, cols).context("building an output table")?]))
}

fn strs(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

/// What the per-item pass computed.
struct Prepared {
    problem: Option<String>,
    item: Question,
    exact: [u8; 16],
    sig: Option<dedup::Signature>,
    counts: anonymise::Counts,
}

/// Settings of the pure part of validation.
pub struct Settings {
    /// Format limits.
    pub limits: format::Limits,
    /// Kinds to anonymise.
    pub kinds: Vec<Kind>,
    /// `none`, `exact`, `near`.
    pub dedup: String,
    /// Near-duplicate threshold.
    pub near_threshold: f64,
}

/// Outcome of the pure part: kept items, rejected (item, step, reason), metrics.
pub struct Cleaned {
    /// Kept items, in input order.
    pub kept: Vec<Question>,
    /// Rejected items with step and reason.
    pub rejected: Vec<(Question, &'static str, String)>,
    /// Replacements by kind.
    pub anonymised: BTreeMap<&'static str, u64>,
}

fn anonymise_item(a: &Anonymiser, q: &mut Question, counts: &mut anonymise::Counts) {
    if let Some(s) = a.apply(&q.question, counts) {
        q.question = s;
    }
    if let Some(c) = &q.context
        && let Some(s) = a.apply(c, counts)
    {
        q.context = Some(s);
    }
    for o in q.options.iter_mut() {
        if let Some(s) = a.apply(&o.text, counts) {
            o.text = s;
        }
    }
    if let Some(e) = &q.explanation
        && let Some(s) = a.apply(e, counts)
    {
        q.explanation = Some(s);
    }
}

/// Format filtering, anonymisation and deduplication (no validator): the fast path
/// the benchmark measures.
pub fn clean(items: Vec<Question>, s: &Settings, threads: usize) -> anyhow::Result<Cleaned> {
    let anon = Anonymiser::new(&s.kinds);
    let near = s.dedup == "near";
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().context("starting validation threads")?;
    let prepared: Vec<Prepared> = pool.install(|| {
        items
            .into_par_iter()
            .with_min_len(256)
            .map(|mut item| {
                let mut counts = [0u64; 6];
                let mut problem = format::check(&item, &s.limits);
                if problem.is_none() && !s.kinds.is_empty() {
                    let before: Vec<String> = item.options.iter().map(|o| o.text.clone()).collect();
                    anonymise_item(&anon, &mut item, &mut counts);
                    if item.options.iter().zip(&before).any(|(o, b)| o.text != *b) {
                        problem = format::check(&item, &s.limits).map(|p| format!("{p} (after anonymisation)"));
                    }
                }
                let (exact, sig) = if problem.is_none() && s.dedup != "none" {
                    let norm = dedup::normalised_text(&item);
                    (dedup::exact_key(&norm), near.then(|| dedup::signature(&norm)))
                } else {
                    ([0; 16], None)
                };
                Prepared { problem, item, exact, sig, counts }
            })
            .collect()
    });
    let mut kept = Vec::with_capacity(prepared.len());
    let mut rejected = Vec::new();
    let mut totals = [0u64; 6];
    let mut exact_seen: HashMap<[u8; 16], u32> = HashMap::with_capacity(prepared.len());
    let mut ids_seen: HashMap<String, u32> = HashMap::with_capacity(prepared.len());
    let mut lsh = dedup::Lsh::new();
    let mut sigs: Vec<dedup::Signature> = Vec::new();
    let mut kept_ids: Vec<String> = Vec::new();
    for p in prepared {
        for (t, c) in totals.iter_mut().zip(p.counts) {
            *t += c;
        }
        if let Some(reason) = p.problem {
            rejected.push((p.item, "format", reason));
            continue;
        }
        if let Some(&first) = ids_seen.get(&p.item.id) {
            let reason = format!("duplicate id (first: row {first} of the inputs)");
            rejected.push((p.item, "duplicate", reason));
            continue;
        }
        if s.dedup != "none" {
            if let Some(&k) = exact_seen.get(&p.exact) {
                let reason = format!("duplicate of {} (same normalised text)", kept_ids[k as usize]);
                rejected.push((p.item, "duplicate", reason));
                continue;
            }
            if let Some(sig) = &p.sig
                && let Some((k, sim)) = lsh.query(sig, &sigs, s.near_threshold)
            {
                let reason = format!("near-duplicate of {} (estimated Jaccard {:.2})", kept_ids[k as usize], sim);
                rejected.push((p.item, "near-duplicate", reason));
                continue;
            }
        }
        let k = kept_ids.len() as u32;
        ids_seen.insert(p.item.id.clone(), k);
        if s.dedup != "none" {
            exact_seen.insert(p.exact, k);
        }
        if let Some(sig) = p.sig {
            lsh.insert(k, &sig);
            sigs.push(sig);
        } else if near {
            sigs.push([0; dedup::PERMS]);
        }
        kept_ids.push(p.item.id.clone());
        kept.push(p.item);
    }
    let anonymised = Kind::ALL.iter().zip(totals).map(|(k, n)| (k.name(), n)).collect();
    Ok(Cleaned { kept, rejected, anonymised })
}

fn is_synthetic(q: &Question) -> bool {
    !q.kg_path.is_empty() || q.source == "synthetic"
}

fn rank(seed: i64, id: &str) -> [u8; 8] {
    let h = blake3::hash(&[&seed.to_le_bytes(), id.as_bytes()].concat());
    let mut r = [0u8; 8];
    r.copy_from_slice(&h.as_bytes()[..8]);
    r
}

/// Which kept rows stay after mixing (by index), and how many of each class.
fn mix(items: &[Question], share: f64, total: Option<u64>, seed: i64) -> (Vec<bool>, u64, u64) {
    let syn: Vec<usize> = (0..items.len()).filter(|&i| is_synthetic(&items[i])).collect();
    let cur: Vec<usize> = (0..items.len()).filter(|&i| !is_synthetic(&items[i])).collect();
    let (s, c) = (syn.len() as f64, cur.len() as f64);
    let (mut want_s, mut want_c) = match total {
        Some(t) => ((t as f64 * share).round(), t as f64 - (t as f64 * share).round()),
        None if share >= 1.0 => (s, 0.0),
        None if share <= 0.0 => (0.0, c),
        None => {
            if s / (s + c).max(1.0) > share {
                ((c * share / (1.0 - share)).round(), c)
            } else {
                (s, (s * (1.0 - share) / share).round())
            }
        }
    };
    // Scale both down when a class has fewer rows than wanted (keeps the share).
    let scale = (if want_s > 0.0 { s / want_s } else { 1.0 }).min(if want_c > 0.0 { c / want_c } else { 1.0 }).min(1.0);
    want_s = (want_s * scale).floor();
    want_c = (want_c * scale).floor();
    let mut keep = vec![false; items.len()];
    for (class, want) in [(&syn, want_s as usize), (&cur, want_c as usize)] {
        let mut order: Vec<usize> = class.clone();
        order.sort_by_key(|&i| (rank(seed, &items[i].id), i));
        for &i in order.iter().take(want) {
            keep[i] = true;
        }
    }
    (keep, want_s as u64, want_c as u64)
}

/// Reviewed decisions: id -> true (accept) / false (reject).
fn decisions(t: &Table) -> anyhow::Result<HashMap<String, bool>> {
    let b = t.concat()?;
    let col = |n: &str| -> anyhow::Result<StringArray> {
        let c = b.column_by_name(n).ok_or_else(|| anyhow!("`decisions` has no `{n}` column"))?;
        let c = arrow::compute::cast(c, &DataType::Utf8)?;
        c.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| anyhow!("`decisions.{n}` is not text"))
    };
    let (ids, ds) = (col("id")?, col("decision")?);
    let mut out = HashMap::new();
    for i in 0..b.num_rows() {
        let d = ds.value(i).trim().to_lowercase();
        let v = match d.as_str() {
            "accept" | "accepted" | "keep" => true,
            "reject" | "rejected" | "drop" => false,
            other => {
                bail!("`decisions`: row {} (id `{}`) has decision `{other}`; use accept or reject", i + 1, ids.value(i))
            }
        };
        out.insert(ids.value(i).to_string(), v);
    }
    Ok(out)
}

/// A validator's verdict on one item.
struct Verdict {
    /// Each trial's labels, `[status]` when it gave no answer (strict extractor), or null.
    answers: Vec<Option<String>>,
    correct: usize,
}

/// A validator's reply as the flagged table shows it: the labels it chose, or the status
/// of the strict extractor in brackets (`[no_answer]`, `[truncated]`, …).
fn read_answer(q: &Question, c: &Completion) -> String {
    let v = fleming_questions::score(q, &c.content, c.truncated());
    v.answer.unwrap_or_else(|| format!("[{}]", v.status))
}

impl Operator for Validate {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let (lo, hi) =
            (ctx.params.get("min_options").as_i64().unwrap_or(2), ctx.params.get("max_options").as_i64().unwrap_or(10));
        if lo > hi {
            issues.push(ParamIssue {
                param: vec!["min_options".into()],
                message: format!("min_options {lo} is above max_options {hi}"),
            });
        }
        if let Some(v) = ctx.params.get("verify").as_object() {
            let llm = v.get("llm").is_some_and(|x| !x.is_null());
            let kg = v.get("kg").and_then(Value::as_bool).unwrap_or(false);
            if llm == kg {
                issues.push(ParamIssue {
                    param: vec!["verify".into()],
                    message: "name exactly one validator: `llm: <endpoint>` or `kg: true`".into(),
                });
            }
            if kg && !(ctx.inputs.iter().any(|i| i == "entities") && ctx.inputs.iter().any(|i| i == "relations")) {
                issues.push(ParamIssue {
                    param: vec!["verify".into(), "kg".into()],
                    message: "the `kg` validator needs the `entities` and `relations` inputs".into(),
                });
            }
        }
        issues
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let mut items = Vec::new();
        for (i, t) in ctx.input_tables("questions")?.into_iter().enumerate() {
            items.extend(
                questions::from_table(t, "unknown")
                    .with_context(|| format!("reading input {} of `questions`", i + 1))?,
            );
        }
        let input_rows = items.len() as u64;
        ctx.progress.set_total(input_rows);
        ctx.progress.set_unit("items");
        let kinds: Vec<String> = ctx.params.get_as("anonymise")?;
        let settings = Settings {
            limits: format::Limits {
                min_options: ctx.params.u64("min_options")? as usize,
                max_options: ctx.params.u64("max_options")? as usize,
                min_question_chars: ctx.params.u64("min_question_chars")? as usize,
            },
            kinds: kinds.iter().filter_map(|k| Kind::parse(k)).collect(),
            dedup: ctx.params.str("dedup")?.to_string(),
            near_threshold: ctx.params.f64("near_threshold")?,
        };
        ctx.progress.set_message("format, anonymisation, duplicates");
        let Cleaned { kept, mut rejected, anonymised } = clean(items, &settings, ctx.threads)?;
        ctx.cancel.check()?;
        let mut by_step: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, step, _) in &rejected {
            *by_step.entry(step).or_default() += 1;
        }
        // Reviewed decisions.
        let reviewed = match ctx.inputs.get("decisions").and_then(|v| v.first()) {
            Some(i) => decisions(i.table()?)?,
            None => HashMap::new(),
        };
        let mut next = Vec::with_capacity(kept.len());
        let mut review_rejected = 0u64;
        for q in kept {
            if reviewed.get(&q.id) == Some(&false) {
                review_rejected += 1;
                rejected.push((q, "review", "rejected by review (decisions input)".into()));
            } else {
                next.push(q);
            }
        }
        let kept = next;
        // Label verification.
        let mut flagged: Vec<(Question, Verdict)> = Vec::new();
        let mut verified_kept = Vec::with_capacity(kept.len());
        let mut unverified = 0u64;
        let mut accepted_by_review = 0u64;
        let mut validator_name = String::new();
        let trials;
        if let Some(v) = ctx.params.get("verify").as_object().cloned() {
            trials = v.get("trials").and_then(Value::as_u64).unwrap_or(5) as u32;
            let verdicts: Vec<Option<Verdict>> = if v.get("kg").and_then(Value::as_bool).unwrap_or(false) {
                validator_name = "kg".into();
                let g = Graph::from_inputs(ctx, "the `kg` validator")?;
                let model = KgModel::new(
                    &g,
                    v.get("knowledge").and_then(Value::as_f64).unwrap_or(1.0),
                    v.get("seed").and_then(Value::as_i64).unwrap_or(0) as u64,
                );
                kept.iter()
                    .map(|q| {
                        if !model.can_answer(q) {
                            return None;
                        }
                        let answers: Vec<Option<String>> = (0..trials).map(|t| model.answer(q, t)).collect();
                        let correct =
                            answers.iter().filter(|a| a.as_deref().is_some_and(|a| q.is_answered_by(a))).count();
                        Some(Verdict { answers, correct })
                    })
                    .collect()
            } else {
                let name =
                    v.get("llm").and_then(Value::as_str).ok_or_else(|| anyhow!("`verify` names no validator"))?;
                validator_name = format!("llm:{name}");
                let client = LlmClient::from_section(&ctx.llm, name)?;
                let mut params = Map::new();
                for k in ["temperature", "max_tokens"] {
                    if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
                        params.insert(k.into(), x.clone());
                    }
                }
                let calls: Vec<Call> = kept
                    .iter()
                    .flat_map(|q| {
                        let messages = Message::for_item(q);
                        let params = params.clone();
                        (0..trials).map(move |t| Call { messages: messages.clone(), params: params.clone(), trial: t })
                    })
                    .collect();
                ctx.progress.set_message(&format!("verifying labels with {name} ({} calls)", calls.len()));
                ctx.progress.set_total(calls.len() as u64);
                ctx.progress.set_position(0);
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
                kept.iter()
                    .enumerate()
                    .map(|(i, q)| {
                        let answers: Vec<Option<String>> = results[i * trials as usize..(i + 1) * trials as usize]
                            .iter()
                            .map(|r| r.as_ref().ok().map(|c| read_answer(q, c)))
                            .collect();
                        let correct =
                            answers.iter().filter(|a| a.as_deref().is_some_and(|a| q.is_answered_by(a))).count();
                        Some(Verdict { answers, correct })
                    })
                    .collect()
            };
            for (q, verdict) in kept.into_iter().zip(verdicts) {
                match verdict {
                    None => {
                        unverified += 1;
                        verified_kept.push(q);
                    }
                    Some(v) if v.correct == 0 => {
                        if reviewed.get(&q.id) == Some(&true) {
                            accepted_by_review += 1;
                            verified_kept.push(q);
                        } else {
                            flagged.push((q, v));
                        }
                    }
                    Some(_) => verified_kept.push(q),
                }
            }
        } else {
            trials = 0;
            verified_kept = kept;
        }
        // Mixing.
        let mut mixed_out = 0u64;
        let out_items: Vec<Question> = match ctx.params.get("mix").as_object() {
            Some(m) => {
                let share = m.get("synthetic").and_then(Value::as_f64).unwrap_or(0.5);
                let total = m.get("total").and_then(Value::as_u64);
                let seed = m.get("seed").and_then(Value::as_i64).unwrap_or(0);
                let (keep, s, c) = mix(&verified_kept, share, total, seed);
                ctx.metric("mixed_synthetic", s);
                ctx.metric("mixed_curated", c);
                let mut out = Vec::with_capacity(verified_kept.len());
                for (q, k) in verified_kept.into_iter().zip(keep) {
                    if k { out.push(q) } else { mixed_out += 1 }
                }
                out
            }
            None => verified_kept,
        };
        let total_out = out_items.len() as u64 + rejected.len() as u64 + flagged.len() as u64 + mixed_out;
        if total_out != input_rows {
            bail!("internal error: {input_rows} input rows but {total_out} accounted for");
        }
        ctx.metric("input_rows", input_rows);
        ctx.metric("kept", out_items.len() as u64);
        ctx.metric("rejected", rejected.len() as u64);
        ctx.metric("rejected_by_step", json!(by_step));
        ctx.metric("rejected_by_review", review_rejected);
        ctx.metric("flagged", flagged.len() as u64);
        ctx.metric("accepted_by_review", accepted_by_review);
        ctx.metric("unverified", unverified);
        ctx.metric("left_out_by_mixing", mixed_out);
        ctx.metric("anonymised", json!(anonymised));
        ctx.progress.set_position(input_rows);
        // Outputs.
        let (rq, rest): (Vec<Question>, Vec<(&'static str, String)>) =
            rejected.into_iter().map(|(q, s, r)| (q, (s, r))).unzip();
        let rejected_t = with_columns(
            &rq,
            vec![
                ("step", strs(rest.iter().map(|(s, _)| s.to_string()).collect())),
                ("reason", strs(rest.into_iter().map(|(_, r)| r).collect())),
            ],
        )?;
        let (fq, fv): (Vec<Question>, Vec<Verdict>) = flagged.into_iter().unzip();
        let flagged_t = with_columns(
            &fq,
            vec![
                ("validator", strs(vec![validator_name.clone(); fq.len()])),
                ("trials", Arc::new(Int64Array::from(vec![trials as i64; fq.len()]))),
                ("correct", Arc::new(Int64Array::from(fv.iter().map(|v| v.correct as i64).collect::<Vec<_>>()))),
                ("answers", strs(fv.iter().map(|v| json!(v.answers).to_string()).collect())),
                (
                    "reason",
                    strs(
                        fv.iter()
                            .map(|_| format!("never answered correctly in {trials} trials by {validator_name}"))
                            .collect(),
                    ),
                ),
            ],
        )?;
        Ok(Outputs::new()
            .table("questions", questions::to_table(&out_items)?)
            .table("rejected", rejected_t)
            .table("flagged", flagged_t))
    }
}

#[cfg(test)]
mod tests;
