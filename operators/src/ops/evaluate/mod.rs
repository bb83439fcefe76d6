//! `evaluate`: any model on any benchmark, scored strictly (paper §4; Tables 1 and 2).
//!
//! Every model — a model artifact from a training stage or the `model` source operator,
//! or a named `llm:` endpoint — is asked every item of every benchmark with the shared
//! prompt ([`fleming_questions::prompt`]), and every completion is read by the shared
//! strict extractor ([`fleming_questions::extract`]): truncated and unparsed answers are
//! counted by status, never guessed, never dropped from n. A model artifact is served by
//! the torch worker (`fleming-worker serve`, which batches concurrent requests) and asked
//! through the same client as an endpoint.
//!
//! Every answer is memoised by model (the artifact's digest, or the endpoint's model),
//! prompt, decoding parameters and sample index: adding a benchmark or a model generates
//! only what is new, and a killed run keeps every answer it got.
//!
//! Outputs: `results` (a row per model × item × sample), `scores` (per model × benchmark,
//! × difficulty tier when items have one, and a macro average per model), `comparisons`
//! (each model against the previous one and the first, per benchmark and on average,
//! with a paired test on the shared items), and `report` (Markdown and a self-contained
//! HTML file in the paper's Table 1 and Table 2 layouts).

mod report;
pub mod stats;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock};

use anyhow::{Context, anyhow, bail};
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use fleming_artifacts::Table;
use fleming_questions::{Question, Status, Verdict};
use fleming_runtime::context::{InputValue, OpContext};
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamIssue, ParamSpec, ParamType, PortSpec,
    ValidateCtx,
};
use serde_json::{Map, Value, json};

use crate::llm::{Call, Completion, Message};
use crate::questions;
use crate::served::{self, ModelSource};
use stats::{Accuracy, Paired};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "evaluate",
    version: 1,
    summary: "Score models (artifacts or llm endpoints) on benchmarks with the shared prompt and strict extractor; Table 1/2 reports",
    doc: "Asks every item of every `benchmarks` table to every model — the `models` inputs in order (model \
          artifacts, served by the torch worker with batched generation), then the `endpoints` — greedy by \
          default, or `samples` draws. Completions are read by the shared strict extractor; `truncated`, \
          `no_answer`, `invalid` and `several` answers count as wrong and are counted. Answers are memoised \
          per model, prompt, decoding parameters and sample. The order of the models is the order of the \
          ablation: `comparisons` and the report compare each with the previous one and the first \
          (McNemar's exact test for one sample per item, a paired z-test otherwise). `fleming show PIPELINE \
          STAGE.report` prints the Markdown report; `report.html` beside it is self-contained.",
    params: vec![
        ParamSpec::with_default(
            "endpoints",
            ParamType::List(Box::new(ParamType::SectionRef("llm"))),
            json!([]),
            "Endpoints of the `llm:` section to evaluate, after the `models` inputs",
        ),
        ParamSpec::with_default(
            "samples",
            ParamType::Int,
            json!(1),
            "Completions per item and model (more than 1: mean accuracy, pass@k and majority vote)",
        )
        .range(Some(1.0), Some(256.0)),
        ParamSpec::with_default("temperature", ParamType::Float, json!(0.0), "Sampling temperature (0: greedy)")
            .range(Some(0.0), Some(2.0)),
        ParamSpec::with_default("top_p", ParamType::Float, json!(1.0), "Nucleus sampling mass")
            .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default("seed", ParamType::Int, json!(0), "Seed of sampling (sample i uses seed + i)"),
        ParamSpec::with_default(
            "max_new_tokens",
            ParamType::Int,
            json!(512),
            "Longest completion; one that reaches it is `truncated`, never scored",
        )
        .range(Some(1.0), None),
        ParamSpec::with_default(
            "batch_size",
            ParamType::Int,
            json!(16),
            "Model artifacts: sequences generated together by the model server",
        )
        .range(Some(1.0), Some(256.0))
        .not_in_key(),
    ],
    inputs: InputPorts::Fixed(vec![
        PortSpec::model("models", "models to evaluate, in the order of the ablation").many().optional(),
        PortSpec::table_with(
            "benchmarks",
            questions::required_input_columns(),
            "question tables with gold answers, each named by its stage",
        )
        .many(),
    ]),
    outputs: vec![
        PortSpec::table_with("results", result_columns(), "a row per model × item × sample"),
        PortSpec::table_with(
            "scores",
            score_columns(),
            "a row per model × benchmark (× tier), and each model's average",
        ),
        PortSpec::table_with(
            "comparisons",
            comparison_columns(),
            "each model against the previous and the first, with a paired test on shared items",
        ),
        PortSpec::dir("report", "report.md (Table 1 and Table 2 layouts) and report.html"),
    ],
    execution: Execution::CpuWithWorkers,
    fingerprint: crate::fingerprints::evaluate.to_string(),
});

fn col(name: &'static str, ty: DataType, nullable: bool) -> ColumnSpec {
    ColumnSpec::new(name, ty, nullable)
}

fn result_columns() -> Vec<ColumnSpec> {
    vec![
        col("id", DataType::Utf8, false),
        col("model", DataType::Utf8, false),
        col("benchmark", DataType::Utf8, false),
        col("item", DataType::Utf8, false),
        col("sample", DataType::Int64, false),
        col("difficulty", DataType::Utf8, true),
        col("completion", DataType::Utf8, false),
        col("answer", DataType::Utf8, true),
        col("gold", DataType::Utf8, false),
        col("status", DataType::Utf8, false),
        col("correct", DataType::Boolean, false),
        col("format_ok", DataType::Boolean, false),
        col("reason", DataType::Utf8, true),
        col("finish_reason", DataType::Utf8, true),
        col("completion_tokens", DataType::Int64, true),
        col("seconds", DataType::Float64, true),
        col("parents", fleming_questions::table::string_list_type(), false),
    ]
}

fn score_columns() -> Vec<ColumnSpec> {
    let mut c = vec![
        col("model", DataType::Utf8, false),
        col("benchmark", DataType::Utf8, false),
        col("tier", DataType::Utf8, true),
        col("items", DataType::Int64, false),
        col("samples", DataType::Int64, false),
        col("n", DataType::Int64, false),
        col("correct", DataType::Int64, false),
        col("accuracy", DataType::Float64, true),
        col("stderr", DataType::Float64, true),
        col("ci_low", DataType::Float64, true),
        col("ci_high", DataType::Float64, true),
    ];
    for s in Status::ALL {
        c.push(col(s.as_str(), DataType::Int64, false));
    }
    c.extend([
        col("accuracy_parsed", DataType::Float64, true),
        col("pass_at_k", DataType::Float64, true),
        col("majority", DataType::Float64, true),
    ]);
    c
}

fn comparison_columns() -> Vec<ColumnSpec> {
    vec![
        col("model", DataType::Utf8, false),
        col("baseline", DataType::Utf8, false),
        col("against", DataType::Utf8, false),
        col("benchmark", DataType::Utf8, false),
        col("items", DataType::Int64, false),
        col("accuracy", DataType::Float64, true),
        col("baseline_accuracy", DataType::Float64, true),
        col("delta", DataType::Float64, true),
        col("stderr", DataType::Float64, true),
        col("z", DataType::Float64, true),
        col("wins", DataType::Int64, false),
        col("losses", DataType::Int64, false),
        col("test", DataType::Utf8, false),
        col("p_value", DataType::Float64, true),
    ]
}

/// The `evaluate` operator.
#[derive(Default)]
pub struct Evaluate;

impl Evaluate {
    /// The operator.
    pub fn new() -> Self {
        Evaluate
    }
}

/// A benchmark: its name (the stage it came from) and its items.
struct Benchmark {
    name: String,
    items: Vec<Question>,
}

/// A model under evaluation.
struct Model {
    /// Its name in tables (the stage, or the endpoint).
    label: String,
    source: ModelSource,
}

/// How completions are drawn.
#[derive(Clone, Debug)]
pub(crate) struct Decoding {
    pub samples: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: i64,
    pub max_new_tokens: u64,
}

impl Decoding {
    /// Request parameters of every call (the sample index shifts the seed).
    fn request(&self) -> Map<String, Value> {
        let mut p = Map::new();
        p.insert("temperature".into(), json!(self.temperature));
        p.insert("top_p".into(), json!(self.top_p));
        p.insert("max_tokens".into(), json!(self.max_new_tokens));
        // Greedy answers do not depend on the seed; leaving it out keeps them memoised
        // when only the seed changes.
        if self.temperature > 0.0 {
            p.insert("seed".into(), json!(self.seed));
        }
        p
    }

    pub(crate) fn describe(&self) -> String {
        let how = if self.temperature == 0.0 {
            "greedy".to_string()
        } else {
            format!("temperature {}, top-p {}, seed {}", self.temperature, self.top_p, self.seed)
        };
        let samples = if self.samples == 1 { String::new() } else { format!("{} samples per item, ", self.samples) };
        format!("{samples}{how}, at most {} new tokens", self.max_new_tokens)
    }
}

/// One scored completion.
pub(crate) struct Scored {
    pub model: usize,
    pub bench: usize,
    pub item: usize,
    pub sample: usize,
    pub completion: Completion,
    pub verdict: Verdict,
}

impl Operator for Evaluate {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        let endpoints = ctx.params.get("endpoints").as_array().map_or(0, Vec::len);
        if endpoints == 0 && !ctx.inputs.iter().any(|i| i == "models") {
            return vec![ParamIssue {
                param: vec!["endpoints".into()],
                message: "nothing to evaluate: connect `models` (model artifacts) or name `endpoints`".into(),
            }];
        }
        Vec::new()
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let decoding = Decoding {
            samples: ctx.params.u64("samples")? as usize,
            temperature: ctx.params.f64("temperature")?,
            top_p: ctx.params.f64("top_p")?,
            seed: ctx.params.i64("seed")?,
            max_new_tokens: ctx.params.u64("max_new_tokens")?,
        };
        let batch = ctx.params.u64("batch_size")? as usize;
        let benchmarks = read_benchmarks(ctx)?;
        let models = models(ctx)?;
        let calls: Vec<Call> = benchmarks
            .iter()
            .flat_map(|b| b.items.iter())
            .flat_map(|q| {
                let messages = Message::for_item(q);
                let params = decoding.request();
                (0..decoding.samples as u32).map(move |t| Call {
                    messages: messages.clone(),
                    params: params.clone(),
                    trial: t,
                })
            })
            .collect();
        ctx.progress.set_unit("answers");
        ctx.progress.set_total((calls.len() * models.len()) as u64);
        let mut answers: Vec<Vec<Completion>> = Vec::with_capacity(models.len());
        let (mut generated, mut memoised) = (0u64, 0u64);
        for (mi, m) in models.iter().enumerate() {
            let before = ctx.memo.stats();
            let got = ask(ctx, m, &calls, batch)
                .with_context(|| format!("evaluating `{}` ({} of {} models)", m.label, mi + 1, models.len()))?;
            let after = ctx.memo.stats();
            generated += after.puts - before.puts;
            memoised += after.hits - before.hits;
            answers.push(got);
        }
        ctx.metric("answers_generated", generated);
        ctx.metric("answers_memoised", memoised);

        let mut scored = Vec::with_capacity(calls.len() * models.len());
        for (mi, got) in answers.into_iter().enumerate() {
            let mut it = got.into_iter();
            for (bi, b) in benchmarks.iter().enumerate() {
                for (qi, q) in b.items.iter().enumerate() {
                    for s in 0..decoding.samples {
                        let completion = it.next().ok_or_else(|| anyhow!("an answer went missing"))?;
                        let verdict = fleming_questions::score(q, &completion.content, completion.truncated());
                        scored.push(Scored { model: mi, bench: bi, item: qi, sample: s, completion, verdict });
                    }
                }
            }
        }
        let labels: Vec<&str> = models.iter().map(|m| m.label.as_str()).collect();
        let scores = score_rows(&labels, &benchmarks, &scored, decoding.samples);
        let comparisons = comparison_rows(&labels, &benchmarks, &scored, decoding.samples);
        for s in scores.iter().filter(|s| s.benchmark == AVERAGE && s.tier.is_none()) {
            ctx.metric(&format!("accuracy.{}", s.model), json!(s.accuracy.mean));
        }
        let results = results_table(&labels, &benchmarks, &scored)?;
        let report_dir = ctx.work_dir.join("report");
        let _ = std::fs::remove_dir_all(&report_dir);
        std::fs::create_dir_all(&report_dir).with_context(|| format!("creating {}", report_dir.display()))?;
        let bench_info: Vec<(&str, usize)> = benchmarks.iter().map(|b| (b.name.as_str(), b.items.len())).collect();
        let doc = report::Report {
            stage: &ctx.stage,
            models: &labels,
            benchmarks: &bench_info,
            decoding: &decoding,
            scores: &scores,
            comparisons: &comparisons,
        };
        write_file(&report_dir.join("report.md"), doc.markdown().as_bytes())?;
        write_file(&report_dir.join("report.html"), doc.html().as_bytes())?;
        Ok(Outputs::new()
            .table("results", results)
            .table("scores", scores_table(&scores)?)
            .table("comparisons", comparisons_table(&comparisons)?)
            .model("report", report_dir))
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The benchmarks, named by the stage they came from, checked: not empty, unique ids,
/// gold answers among the options.
fn read_benchmarks(ctx: &OpContext) -> anyhow::Result<Vec<Benchmark>> {
    let inputs = ctx.inputs.get("benchmarks").map(Vec::as_slice).unwrap_or_default();
    if inputs.is_empty() {
        bail!("no benchmark is connected to `benchmarks`");
    }
    let stages: Vec<&str> = inputs.iter().map(|i| i.from.split('.').next().unwrap_or(&i.from)).collect();
    let mut out: Vec<Benchmark> = Vec::new();
    for (input, stage) in inputs.iter().zip(&stages) {
        // Two ports of one stage keep their port in the name.
        let name =
            if stages.iter().filter(|s| *s == stage).count() > 1 { input.from.clone() } else { stage.to_string() };
        if out.iter().any(|b| b.name == name) {
            bail!("benchmark `{name}` is connected twice");
        }
        let items =
            questions::from_table(input.table()?, &name).with_context(|| format!("reading benchmark `{name}`"))?;
        if items.is_empty() {
            bail!("benchmark `{name}` is empty: there is nothing to score");
        }
        let mut seen = HashSet::new();
        let mut no_gold = Vec::new();
        for q in &items {
            if !seen.insert(q.id.as_str()) {
                bail!("benchmark `{name}` has the id `{}` twice; results are keyed by item id", q.id);
            }
            let gold = q.answers();
            if gold.is_empty() || gold.iter().any(|a| a.is_empty() || q.option_text(a).is_none()) {
                no_gold.push(q);
            }
        }
        if !no_gold.is_empty() {
            let examples: Vec<String> =
                no_gold.iter().take(3).map(|q| format!("`{}` (answer {:?})", q.id, q.answer)).collect();
            bail!(
                "benchmark `{name}`: {} of {} items have no gold answer among their options, e.g. {}; evaluate needs \
                 a gold label for every item (filter them out upstream, e.g. with `sql`)",
                no_gold.len(),
                items.len(),
                examples.join(", ")
            );
        }
        out.push(Benchmark { name, items });
    }
    Ok(out)
}

/// The models to evaluate: the `models` inputs in order, then the `endpoints`.
fn models(ctx: &OpContext) -> anyhow::Result<Vec<Model>> {
    let mut out: Vec<Model> = Vec::new();
    for input in ctx.inputs.get("models").map(Vec::as_slice).unwrap_or_default() {
        let InputValue::Model(dir) = &input.value else { bail!("input from {} is not a model", input.from) };
        let label = input.from.split('.').next().unwrap_or(&input.from).to_string();
        out.push(Model { label, source: ModelSource::Artifact { dir: dir.clone(), digest: input.digest.hex() } });
    }
    for name in ctx.params.get("endpoints").as_array().into_iter().flatten() {
        let name = name.as_str().ok_or_else(|| anyhow!("`endpoints` must list endpoint names"))?;
        out.push(Model { label: name.to_string(), source: ModelSource::Endpoint(name.to_string()) });
    }
    let mut seen = HashSet::new();
    for m in &out {
        if !seen.insert(m.label.as_str()) {
            bail!("model `{}` is listed twice", m.label);
        }
    }
    if out.is_empty() {
        bail!("nothing to evaluate: connect `models` or name `endpoints`");
    }
    Ok(out)
}

/// Every call's answer from one model; any failure fails the evaluation (a score over
/// fewer items than asked would not compare with the others).
fn ask(ctx: &OpContext, m: &Model, calls: &[Call], batch: usize) -> anyhow::Result<Vec<Completion>> {
    let answers = served::ask(ctx, &m.label, &m.source, calls, batch)?;
    if let Some(e) = answers.failures {
        return Err(e);
    }
    answers.results.into_iter().map(|r| r.map_err(|f| anyhow!(f.error))).collect()
}

/// The name of the macro-average rows.
pub const AVERAGE: &str = "average";

/// One row of `scores`.
pub(crate) struct ScoreRow {
    pub model: String,
    pub benchmark: String,
    pub tier: Option<String>,
    pub items: usize,
    pub samples: usize,
    pub n: usize,
    pub correct: usize,
    pub accuracy: Accuracy,
    pub status: BTreeMap<Status, usize>,
    pub accuracy_parsed: Option<f64>,
    pub pass_at_k: Option<f64>,
    pub majority: Option<f64>,
}

/// Per-item score (mean over samples), per model and benchmark, in item order.
fn item_scores(scored: &[Scored], models: usize, benchmarks: &[Benchmark], samples: usize) -> Vec<Vec<Vec<f64>>> {
    let mut out: Vec<Vec<Vec<f64>>> =
        (0..models).map(|_| benchmarks.iter().map(|b| vec![0.0; b.items.len()]).collect()).collect();
    for s in scored {
        if s.verdict.correct {
            out[s.model][s.bench][s.item] += 1.0 / samples as f64;
        }
    }
    out
}

fn score_rows(models: &[&str], benchmarks: &[Benchmark], scored: &[Scored], samples: usize) -> Vec<ScoreRow> {
    let per_item = item_scores(scored, models.len(), benchmarks, samples);
    let mut rows = Vec::new();
    for (mi, model) in models.iter().enumerate() {
        let mut bench_acc = Vec::new();
        let mut total = ScoreRow {
            model: model.to_string(),
            benchmark: AVERAGE.into(),
            tier: None,
            items: 0,
            samples,
            n: 0,
            correct: 0,
            accuracy: stats::accuracy(&[], samples),
            status: BTreeMap::new(),
            accuracy_parsed: None,
            pass_at_k: None,
            majority: None,
        };
        for (bi, b) in benchmarks.iter().enumerate() {
            let mut tiers: Vec<Option<&str>> = vec![None];
            let mut named: Vec<&str> = b.items.iter().filter_map(|q| q.difficulty.as_deref()).collect();
            named.sort_by_key(|t| (tier_rank(t), *t));
            named.dedup();
            tiers.extend(named.into_iter().map(Some));
            for tier in tiers {
                let keep: Vec<usize> = (0..b.items.len())
                    .filter(|&i| tier.is_none_or(|t| b.items[i].difficulty.as_deref() == Some(t)))
                    .collect();
                let row = score_row(model, b, tier, &keep, scored, mi, bi, &per_item[mi][bi], samples);
                if tier.is_none() {
                    bench_acc.push(row.accuracy);
                    total.items += row.items;
                    total.n += row.n;
                    total.correct += row.correct;
                    for (s, c) in &row.status {
                        *total.status.entry(*s).or_default() += c;
                    }
                }
                rows.push(row);
            }
        }
        total.accuracy = stats::macro_average(&bench_acc);
        let ok = total.status.get(&Status::Ok).copied().unwrap_or(0);
        total.accuracy_parsed = (ok > 0).then(|| total.correct as f64 / ok as f64);
        rows.push(total);
    }
    rows
}

/// `easy`, `moderate`, `difficult` first, in that order, then any other tier names.
fn tier_rank(t: &str) -> usize {
    ["easy", "moderate", "difficult"].iter().position(|x| *x == t).unwrap_or(3)
}

#[allow(clippy::too_many_arguments)]
fn score_row(
    model: &str,
    b: &Benchmark,
    tier: Option<&str>,
    keep: &[usize],
    scored: &[Scored],
    mi: usize,
    bi: usize,
    per_item: &[f64],
    samples: usize,
) -> ScoreRow {
    let wanted: HashSet<usize> = keep.iter().copied().collect();
    let mine: Vec<&Scored> =
        scored.iter().filter(|s| s.model == mi && s.bench == bi && wanted.contains(&s.item)).collect();
    let mut status: BTreeMap<Status, usize> = Status::ALL.iter().map(|s| (*s, 0)).collect();
    for s in &mine {
        *status.entry(s.verdict.status).or_default() += 1;
    }
    let correct = mine.iter().filter(|s| s.verdict.correct).count();
    let ok = status.get(&Status::Ok).copied().unwrap_or(0);
    let scores: Vec<f64> = keep.iter().map(|&i| per_item[i]).collect();
    let (pass_at_k, majority) = if samples > 1 {
        let mut pass = 0usize;
        let mut major = 0usize;
        let mut by_item: BTreeMap<usize, Vec<&Scored>> = BTreeMap::new();
        for &s in &mine {
            by_item.entry(s.item).or_default().push(s);
        }
        for &i in keep {
            let draws = by_item.get(&i).map(Vec::as_slice).unwrap_or_default();
            pass += draws.iter().any(|s| s.verdict.correct) as usize;
            // Majority vote over the answers read (unparsed ones do not vote); a tie is no answer.
            let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
            for s in draws {
                if let Some(a) = s.verdict.answer.as_deref() {
                    *votes.entry(a).or_default() += 1;
                }
            }
            let best = votes.values().copied().max().unwrap_or(0);
            let leaders: Vec<&&str> = votes.iter().filter(|(_, v)| **v == best).map(|(a, _)| a).collect();
            if let [a] = leaders.as_slice()
                && b.items[i].is_answered_by(a)
            {
                major += 1;
            }
        }
        let k = keep.len().max(1) as f64;
        (Some(pass as f64 / k), Some(major as f64 / k))
    } else {
        (None, None)
    };
    ScoreRow {
        model: model.to_string(),
        benchmark: b.name.clone(),
        tier: tier.map(str::to_string),
        items: keep.len(),
        samples,
        n: mine.len(),
        correct,
        accuracy: stats::accuracy(&scores, samples),
        status,
        accuracy_parsed: (ok > 0).then(|| correct as f64 / ok as f64),
        pass_at_k,
        majority,
    }
}

/// One row of `comparisons`.
pub(crate) struct ComparisonRow {
    pub model: String,
    pub baseline: String,
    /// `previous` or `first`.
    pub against: &'static str,
    pub benchmark: String,
    pub accuracy: f64,
    pub baseline_accuracy: f64,
    pub paired: Paired,
}

fn comparison_rows(models: &[&str], benchmarks: &[Benchmark], scored: &[Scored], samples: usize) -> Vec<ComparisonRow> {
    let per_item = item_scores(scored, models.len(), benchmarks, samples);
    let mut rows = Vec::new();
    for mi in 1..models.len() {
        let mut against = vec![(mi - 1, "previous")];
        if mi >= 2 {
            against.push((0, "first"));
        }
        for (base, how) in against {
            let mut parts = Vec::new();
            for (bi, b) in benchmarks.iter().enumerate() {
                let (new, old) = (&per_item[mi][bi], &per_item[base][bi]);
                let p = stats::paired(new, old, samples);
                let row = ComparisonRow {
                    model: models[mi].to_string(),
                    baseline: models[base].to_string(),
                    against: how,
                    benchmark: b.name.clone(),
                    accuracy: mean(new),
                    baseline_accuracy: mean(old),
                    paired: p,
                };
                parts.push((row.accuracy, row.baseline_accuracy, row.paired.clone()));
                rows.push(row);
            }
            // The average: the difference of macro averages, its standard error from the
            // benchmarks' paired standard errors.
            let k = parts.len() as f64;
            let delta = parts.iter().map(|p| p.2.delta).sum::<f64>() / k;
            let se = parts.iter().map(|p| p.2.stderr.powi(2)).sum::<f64>().sqrt() / k;
            let z = if se > 0.0 { delta / se } else { 0.0 };
            let p_value = if parts.len() == 1 {
                parts[0].2.p_value
            } else if se > 0.0 {
                (2.0 * (1.0 - stats::normal_cdf(z.abs()))).clamp(0.0, 1.0)
            } else if delta == 0.0 {
                1.0
            } else {
                0.0
            };
            rows.push(ComparisonRow {
                model: models[mi].to_string(),
                baseline: models[base].to_string(),
                against: how,
                benchmark: AVERAGE.into(),
                accuracy: parts.iter().map(|p| p.0).sum::<f64>() / k,
                baseline_accuracy: parts.iter().map(|p| p.1).sum::<f64>() / k,
                paired: Paired {
                    items: parts.iter().map(|p| p.2.items).sum(),
                    delta,
                    stderr: se,
                    z,
                    wins: parts.iter().map(|p| p.2.wins).sum(),
                    losses: parts.iter().map(|p| p.2.losses).sum(),
                    test: if parts.len() == 1 { parts[0].2.test } else { "paired-z (macro)" },
                    p_value,
                },
            });
        }
    }
    rows
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn table(columns: Vec<(&str, ArrayRef)>) -> anyhow::Result<Table> {
    Ok(fleming_artifacts::table::table_from_columns(columns)?)
}

fn results_table(models: &[&str], benchmarks: &[Benchmark], scored: &[Scored]) -> anyhow::Result<Table> {
    let mut parents = ListBuilder::new(StringBuilder::new());
    for s in scored {
        parents.values().append_value(&benchmarks[s.bench].items[s.item].id);
        parents.append(true);
    }
    fn item<'b>(benchmarks: &'b [Benchmark], s: &Scored) -> &'b Question {
        &benchmarks[s.bench].items[s.item]
    }
    let strs =
        |f: &dyn Fn(&Scored) -> Option<String>| -> ArrayRef { Arc::new(scored.iter().map(f).collect::<StringArray>()) };
    table(vec![
        (
            "id",
            strs(&|s| Some(result_id(models[s.model], &benchmarks[s.bench].name, &item(benchmarks, s).id, s.sample))),
        ),
        ("model", strs(&|s| Some(models[s.model].to_string()))),
        ("benchmark", strs(&|s| Some(benchmarks[s.bench].name.clone()))),
        ("item", strs(&|s| Some(item(benchmarks, s).id.clone()))),
        ("sample", Arc::new(scored.iter().map(|s| s.sample as i64).collect::<Int64Array>())),
        ("difficulty", strs(&|s| item(benchmarks, s).difficulty.clone())),
        ("completion", strs(&|s| Some(s.completion.content.clone()))),
        ("answer", strs(&|s| s.verdict.answer.clone())),
        ("gold", strs(&|s| Some(item(benchmarks, s).answer.clone()))),
        ("status", strs(&|s| Some(s.verdict.status.as_str().to_string()))),
        ("correct", Arc::new(scored.iter().map(|s| Some(s.verdict.correct)).collect::<BooleanArray>())),
        ("format_ok", Arc::new(scored.iter().map(|s| Some(s.verdict.format_ok)).collect::<BooleanArray>())),
        ("reason", strs(&|s| s.verdict.reason.as_ref().map(|r| r.to_string()))),
        ("finish_reason", strs(&|s| s.completion.finish_reason.clone())),
        (
            "completion_tokens",
            Arc::new(scored.iter().map(|s| s.completion.tokens.map(|t| t as i64)).collect::<Int64Array>()),
        ),
        ("seconds", Arc::new(scored.iter().map(|s| s.completion.seconds).collect::<Float64Array>())),
        ("parents", Arc::new(parents.finish())),
    ])
}

/// A result row's id: model, benchmark, item and sample.
fn result_id(model: &str, benchmark: &str, item: &str, sample: usize) -> String {
    let mut h = blake3::Hasher::new();
    for part in [model, benchmark, item] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(&(sample as u64).to_le_bytes());
    h.finalize().to_hex().as_str()[..16].to_string()
}

fn scores_table(rows: &[ScoreRow]) -> anyhow::Result<Table> {
    let ints = |f: &dyn Fn(&ScoreRow) -> usize| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(r) as i64).collect::<Int64Array>())
    };
    let floats = |f: &dyn Fn(&ScoreRow) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(r).and_then(finite)).collect::<Float64Array>())
    };
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        ("model", Arc::new(rows.iter().map(|r| Some(r.model.clone())).collect::<StringArray>())),
        ("benchmark", Arc::new(rows.iter().map(|r| Some(r.benchmark.clone())).collect::<StringArray>())),
        ("tier", Arc::new(rows.iter().map(|r| r.tier.clone()).collect::<StringArray>())),
        ("items", ints(&|r| r.items)),
        ("samples", ints(&|r| r.samples)),
        ("n", ints(&|r| r.n)),
        ("correct", ints(&|r| r.correct)),
        ("accuracy", floats(&|r| Some(r.accuracy.mean))),
        ("stderr", floats(&|r| Some(r.accuracy.stderr))),
        ("ci_low", floats(&|r| Some(r.accuracy.low))),
        ("ci_high", floats(&|r| Some(r.accuracy.high))),
    ];
    for s in Status::ALL {
        columns.push((s.as_str(), ints(&|r| r.status.get(&s).copied().unwrap_or(0))));
    }
    columns.push(("accuracy_parsed", floats(&|r| r.accuracy_parsed)));
    columns.push(("pass_at_k", floats(&|r| r.pass_at_k)));
    columns.push(("majority", floats(&|r| r.majority)));
    table(columns)
}

fn comparisons_table(rows: &[ComparisonRow]) -> anyhow::Result<Table> {
    let strs = |f: &dyn Fn(&ComparisonRow) -> String| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let floats = |f: &dyn Fn(&ComparisonRow) -> f64| -> ArrayRef {
        Arc::new(rows.iter().map(|r| finite(f(r))).collect::<Float64Array>())
    };
    let ints = |f: &dyn Fn(&ComparisonRow) -> usize| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(r) as i64).collect::<Int64Array>())
    };
    table(vec![
        ("model", strs(&|r| r.model.clone())),
        ("baseline", strs(&|r| r.baseline.clone())),
        ("against", strs(&|r| r.against.to_string())),
        ("benchmark", strs(&|r| r.benchmark.clone())),
        ("items", ints(&|r| r.paired.items)),
        ("accuracy", floats(&|r| r.accuracy)),
        ("baseline_accuracy", floats(&|r| r.baseline_accuracy)),
        ("delta", floats(&|r| r.paired.delta)),
        ("stderr", floats(&|r| r.paired.stderr)),
        ("z", floats(&|r| r.paired.z)),
        ("wins", ints(&|r| r.paired.wins)),
        ("losses", ints(&|r| r.paired.losses)),
        ("test", strs(&|r| r.paired.test.to_string())),
        ("p_value", floats(&|r| r.paired.p_value)),
    ])
}
