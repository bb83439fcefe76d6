//! `sample`: knowledge-graph-guided synthesis of multiple-choice questions (paper §3.1).
//!
//! 1. **Answer first, long tail.** The hidden node (the answer) is drawn with weight
//!    `(1 + degree)^-long_tail` among the entities that can play its role, so a positive
//!    `long_tail` favours rare diseases and drugs (0: uniform).
//! 2. **Topological sampling.** From the answer, a path grows over typed relations:
//!    either one of the `patterns` (node types and predicates along a chain, e.g.
//!    symptom → disease → test → drug, with the masked position) or, without patterns, a
//!    random walk of `hops` steps whose far end is named and whose intermediate nodes are
//!    described, not named (multi-hop questions).
//! 3. **Masking.** The stem shows the visible part (several templates per pattern); the
//!    set of entities that satisfy the stem is computed from the graph.
//! 4. **Distractors** have the answer's type and are never in that set: first entities
//!    that share part of the stem's constraints but not all (relation-preserving
//!    perturbation), then ones sharing a neighbour with the answer, then ones with the same
//!    relation, then any of the type; names never repeat.
//! 5. **Options** are shuffled with the answer position balanced over blocks of
//!    `options` questions; everything derives from `seed` (and is independent of threads).
//!
//! Output questions carry `kg_path` (entity, relation, entity, … ids along the path) and
//! `parents` (the relation and entity rows behind the item).

pub mod fixture;
mod graph;
pub(crate) mod kg_answer;

use std::collections::{HashMap, HashSet};

use rustc_hash::FxHashSet;
use std::sync::{Arc, LazyLock};

use anyhow::{Context, anyhow, bail};
use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::Table;
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamIssue, ParamSpec, ParamType, PortSpec,
    ValidateCtx,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{Value, json};

pub use graph::{Dir, Graph};
pub use kg_answer::KgModel;

use crate::questions::{self, Choice, Question, label};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "sample",
    version: 1,
    summary: "Synthesise multiple-choice questions from knowledge-graph paths (long-tail, masked node, relation-preserving distractors)",
    doc: "Reads `entities` and `relations` (DESIGN data contracts) and writes `questions` with \
          `kg_path` and `parents`, plus `degrees`: the degree distribution of the sampled answers \
          against the graph's. Reproducible from `seed`, whatever the thread count.",
    params: vec![
        ParamSpec::with_default("questions", ParamType::Int, json!(1000), "How many questions to generate")
            .range(Some(1.0), Some(1e9)),
        ParamSpec::with_default("options", ParamType::Int, json!(4), "Options per question (answer + distractors)")
            .range(Some(2.0), Some(26.0)),
        ParamSpec::with_default(
            "seed",
            ParamType::Int,
            json!(0),
            "Random seed; the output is a function of seed, inputs and params",
        ),
        ParamSpec::with_default(
            "long_tail",
            ParamType::Float,
            json!(0.7),
            "Rarity preference: answers are drawn with weight (1 + degree)^-long_tail (0 = uniform)",
        )
        .range(Some(0.0), Some(10.0)),
        ParamSpec::with_default(
            "hops",
            ParamType::List(Box::new(ParamType::Int)),
            json!([2, 3]),
            "Without patterns: [min, max] hops of the random-walk paths (the far end is named, intermediate nodes are described)",
        ),
        ParamSpec::with_default(
            "patterns",
            ParamType::List(Box::new(ParamType::Object(pattern_fields()))),
            json!([]),
            "Path patterns; empty: random walks of `hops` hops",
        ),
        ParamSpec::optional(
            "answer_types",
            ParamType::List(Box::new(ParamType::Str)),
            "Without patterns: entity types the answer may have (default: any)",
        ),
        ParamSpec::with_default(
            "max_correct",
            ParamType::Int,
            json!(25),
            "Skip paths whose stem more than this many entities satisfy (too ambiguous)",
        )
        .range(Some(1.0), None),
        ParamSpec::with_default(
            "min_confidence",
            ParamType::Float,
            json!(0.0),
            "Ignore relations below this confidence",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default(
            "phrases",
            ParamType::Map(Box::new(ParamType::List(Box::new(ParamType::Str)))),
            json!({}),
            "Predicate -> [forward, inverse] phrases for stems, e.g. treats: [treats, is treated by]",
        ),
        ParamSpec::with_default("source", ParamType::Str, json!("synthetic"), "Value of the `source` column"),
    ],
    inputs: InputPorts::Fixed(vec![
        PortSpec::table_with("entities", entity_columns(), "entities: id, name, type (aliases, degree optional)"),
        PortSpec::table_with(
            "relations",
            relation_columns(),
            "relations: id, subject, predicate, object (confidence optional)",
        ),
    ]),
    outputs: vec![
        PortSpec::table_with("questions", questions::columns(), "the synthetic questions"),
        PortSpec::table_with(
            "degrees",
            degree_columns(),
            "degree distribution of sampled answers vs the graph's (entities of the answer types)",
        ),
    ],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::sample.to_string(),
});

fn pattern_fields() -> Vec<ParamSpec> {
    vec![
        ParamSpec::required("name", ParamType::Str, "Pattern name (kept in each item's meta)"),
        ParamSpec::required(
            "path",
            ParamType::List(Box::new(ParamType::Str)),
            "Entity types along the chain, e.g. [symptom, disease, drug] (`*`: any)",
        ),
        ParamSpec::required(
            "predicates",
            ParamType::List(Box::new(ParamType::Str)),
            "Predicate of each hop (one fewer than `path`): `treats` either way, `>treats` left is subject, `<treats` left is object, `*` any",
        ),
        ParamSpec::required("mask", ParamType::Int, "Position in `path` of the hidden node (the answer), from 0"),
        ParamSpec::with_default(
            "hidden",
            ParamType::List(Box::new(ParamType::Int)),
            json!([]),
            "Positions described rather than named in the stem (multi-hop: `the disease that …`)",
        ),
        ParamSpec::with_default(
            "templates",
            ParamType::List(Box::new(ParamType::Str)),
            json!([]),
            "Stem templates: `{0}`, `{1}`… node names, `{type}` the answer's type; empty: generated from the relations",
        ),
        ParamSpec::with_default(
            "weight",
            ParamType::Float,
            json!(1.0),
            "Share of questions drawn from this pattern (relative)",
        )
        .range(Some(0.0), None),
    ]
}

fn entity_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("name", DataType::Utf8, true),
        ColumnSpec::new("type", DataType::Utf8, true),
    ]
}

fn relation_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("subject", DataType::Utf8, false),
        ColumnSpec::new("predicate", DataType::Utf8, true),
        ColumnSpec::new("object", DataType::Utf8, false),
    ]
}

fn degree_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("degree_min", DataType::Int64, false),
        ColumnSpec::new("degree_max", DataType::Int64, false),
        ColumnSpec::new("graph", DataType::Int64, false),
        ColumnSpec::new("sampled", DataType::Int64, false),
        ColumnSpec::new("graph_share", DataType::Float64, false),
        ColumnSpec::new("sampled_share", DataType::Float64, false),
    ]
}

/// The `sample` operator.
#[derive(Default)]
pub struct Sample;

impl Sample {
    /// The operator.
    pub fn new() -> Self {
        Sample
    }
}

/// A hop constraint of a pattern, seen from the left node.
#[derive(Clone, Debug)]
struct HopSpec {
    pred: Option<u32>,
    dir: Option<Dir>,
}

/// A pattern resolved against the graph.
#[derive(Clone, Debug)]
struct Pattern {
    name: String,
    types: Vec<Option<u32>>,
    hops: Vec<HopSpec>,
    mask: usize,
    hidden: Vec<usize>,
    templates: Vec<String>,
    /// Entities that can be the answer, and their cumulative weights.
    candidates: Vec<u32>,
    cumulative: Vec<f64>,
}

/// The settings every draw needs.
struct Setup<'a> {
    g: &'a Graph,
    patterns: Vec<Pattern>,
    pattern_cumulative: Vec<f64>,
    /// Without patterns: the walk's answer candidates.
    walk: Option<Pattern>,
    hops: (usize, usize),
    options: usize,
    max_correct: usize,
    phrases: HashMap<String, (String, String)>,
    seed: u64,
    source: String,
}

/// One sampled path: nodes, and for each hop the relation row and its direction seen
/// from the left node.
#[derive(Clone, Debug)]
pub(crate) struct Chain {
    pub(crate) nodes: Vec<u32>,
    pub(crate) rels: Vec<u32>,
    pub(crate) dirs: Vec<Dir>,
    pub(crate) preds: Vec<u32>,
    pub(crate) named: Vec<bool>,
    pub(crate) mask: usize,
}

/// The entities of the mask's type that satisfy a chain's visible part, using only the
/// relations `knows` accepts (`None`: more than `cap`, or nothing is named).
pub(crate) fn satisfying(g: &Graph, c: &Chain, cap: usize, knows: impl Fn(u32) -> bool) -> Option<FxHashSet<u32>> {
    let ty = g.types[c.nodes[c.mask] as usize];
    let flip = |d: Dir| if d == Dir::Out { Dir::In } else { Dir::Out };
    // Fast path: both neighbours of the mask are named; walk the smaller adjacency and
    // look the other edge up.
    if c.mask > 0 && c.mask + 1 < c.nodes.len() && c.named[c.mask - 1] && c.named[c.mask + 1] {
        let a = (c.nodes[c.mask - 1], c.preds[c.mask - 1], c.dirs[c.mask - 1]);
        let b = (c.nodes[c.mask + 1], c.preds[c.mask], flip(c.dirs[c.mask]));
        let count = |(n, p, _): (u32, u32, Dir)| g.pred_degree(n, p);
        let (small, large) = if count(a) <= count(b) { (a, b) } else { (b, a) };
        let mut out = FxHashSet::default();
        for x in g.step(small.0, Some(small.1), Some(small.2), Some(ty)) {
            if knows(x.rel) && g.has_edge(large.0, large.1, large.2, x.to, &knows) {
                out.insert(x.to);
                if out.len() > cap {
                    return None;
                }
            }
        }
        return Some(out);
    }
    let inner_cap = cap.saturating_mul(64).max(4096);
    // Left to right up to the mask, right to left down to it.
    let side = |range: Vec<usize>, forward: bool| -> Option<Option<FxHashSet<u32>>> {
        let mut cur: Option<FxHashSet<u32>> = None;
        for pos in range {
            let next = if forward { pos + 1 } else { pos - 1 };
            let hop = if forward { pos } else { pos - 1 };
            let dir = if forward { c.dirs[hop] } else { flip(c.dirs[hop]) };
            let from = if c.named[pos] { Some(FxHashSet::from_iter([c.nodes[pos]])) } else { cur.take() };
            let limit = if next == c.mask { cap } else { inner_cap };
            cur = match from {
                None => None,
                Some(set) => {
                    let want = if next == c.mask { ty } else { g.types[c.nodes[next] as usize] };
                    let mut out = FxHashSet::default();
                    for &e in &set {
                        for x in g.step(e, Some(c.preds[hop]), Some(dir), Some(want)) {
                            if knows(x.rel) {
                                out.insert(x.to);
                            }
                        }
                        if out.len() > limit {
                            return None;
                        }
                    }
                    Some(out)
                }
            };
        }
        Some(cur)
    };
    let left = side((0..c.mask).collect(), true)?;
    let right = side((c.mask + 1..c.nodes.len()).rev().collect(), false)?;
    match (left, right) {
        (Some(l), Some(r)) => Some(l.intersection(&r).copied().collect()),
        (Some(s), None) | (None, Some(s)) => Some(s),
        (None, None) => None,
    }
}

/// A drafted question before answer placement.
struct Draft {
    key: u64,
    chain: Chain,
    pattern: String,
    stem: String,
    answer: u32,
    distractors: Vec<(u32, u8)>,
    correct: usize,
}

fn mix(a: u64, b: u64) -> u64 {
    let h = blake3::hash(&[a.to_le_bytes(), b.to_le_bytes()].concat());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

fn cumulative(g: &Graph, cands: &[u32], long_tail: f64) -> Vec<f64> {
    let mut acc = 0.0;
    cands
        .iter()
        .map(|&e| {
            acc += (1.0 + g.degree[e as usize] as f64).powf(-long_tail);
            acc
        })
        .collect()
}

fn draw(cum: &[f64], rng: &mut ChaCha8Rng) -> Option<usize> {
    let total = *cum.last()?;
    if total <= 0.0 {
        return None;
    }
    let x = rng.random::<f64>() * total;
    Some(cum.partition_point(|&c| c <= x).min(cum.len() - 1))
}

/// Built-in stem phrases: (forward, inverse).
pub(crate) fn default_phrase(pred: &str) -> (String, String) {
    let p = pred.to_lowercase();
    let (f, i) = match p.as_str() {
        "treats" | "treated_by_inverse" => ("treats", "is treated by"),
        "palliates" => ("palliates", "is palliated by"),
        "presents" | "presents_symptom" | "has_symptom" | "symptom" => ("presents with", "is a symptom of"),
        "has_sign" | "sign" => ("shows the sign", "is a sign of"),
        "causes" | "cause" => ("causes", "is caused by"),
        "diagnosed_by" | "test" | "diagnostic_test" => ("is diagnosed by", "is used to diagnose"),
        "diagnoses" => ("is used to diagnose", "is diagnosed by"),
        "imaging_finding" | "has_finding" | "finding" => ("shows the finding", "is a finding of"),
        "mechanism" | "has_mechanism" | "mechanism_of_action" => ("acts by", "is the mechanism of"),
        "contraindicated_in" | "contraindication" | "contraindicates" => ("is contraindicated in", "contraindicates"),
        "localizes" | "location" | "affects" | "anatomy" => ("affects", "is affected by"),
        "resembles" | "differential" => ("resembles", "resembles"),
        "adverse_effect" | "causes_side_effect" | "side_effect" => {
            ("can cause the adverse effect", "is an adverse effect of")
        }
        "risk_factor" | "risk_factor_for" => ("is a risk factor for", "has the risk factor"),
        "complication" | "complication_of" => ("is a complication of", "can be complicated by"),
        "is_a" | "subclass_of" => ("is a kind of", "includes"),
        _ => {
            let words = p.replace(['_', '-'], " ");
            return (format!("has the relation '{words}' to"), format!("is the target of '{words}' from"));
        }
    };
    (f.to_string(), i.to_string())
}

impl<'a> Setup<'a> {
    fn phrase(&self, pred: u32, dir: Dir) -> String {
        let name = &self.g.pred_names[pred as usize];
        let (f, i) = self.phrases.get(name).cloned().unwrap_or_else(|| default_phrase(name));
        if dir == Dir::Out { f } else { i }
    }

    fn type_name(&self, e: u32) -> &str {
        &self.g.type_names[self.g.types[e as usize] as usize]
    }

    /// "the <type> that <clauses>" for an unnamed node, its name for a named one.
    fn describe(&self, c: &Chain, pos: usize, from: usize, depth: usize) -> String {
        let e = c.nodes[pos];
        if c.named[pos] {
            return self.g.names[e as usize].clone();
        }
        let clauses = self.clauses(c, pos, Some(from), depth + 1);
        format!("the {} that {}", self.type_name(e), clauses)
    }

    fn clauses(&self, c: &Chain, pos: usize, except: Option<usize>, depth: usize) -> String {
        let mut parts = Vec::new();
        if pos > 0 && except != Some(pos - 1) && depth < 8 {
            // Hop pos-1 -> pos, read from pos: reversed direction.
            let dir = if c.dirs[pos - 1] == Dir::Out { Dir::In } else { Dir::Out };
            parts.push(format!("{} {}", self.phrase(c.preds[pos - 1], dir), self.describe(c, pos - 1, pos, depth)));
        }
        if pos + 1 < c.nodes.len() && except != Some(pos + 1) && depth < 8 {
            parts.push(format!("{} {}", self.phrase(c.preds[pos], c.dirs[pos]), self.describe(c, pos + 1, pos, depth)));
        }
        parts.join(" and ")
    }

    fn stem(&self, c: &Chain, templates: &[String], rng: &mut ChaCha8Rng) -> String {
        let ty = self.type_name(c.nodes[c.mask]).to_string();
        if !templates.is_empty() {
            let t = &templates[rng.random_range(0..templates.len())];
            let mut s = t.replace("{type}", &ty);
            for (i, &e) in c.nodes.iter().enumerate() {
                s = s.replace(&format!("{{{i}}}"), &self.g.names[e as usize]);
            }
            return s;
        }
        let cl = self.clauses(c, c.mask, None, 0);
        match rng.random_range(0..3) {
            0 => format!("Which {ty} {cl}?"),
            1 => format!("Identify the {ty} that {cl}."),
            _ => format!("Consider a {ty} that {cl}. Which {ty} is it?"),
        }
    }

    /// The entities that satisfy the stem at the masked position (`None`: too many).
    fn correct_set(&self, c: &Chain) -> Option<FxHashSet<u32>> {
        satisfying(self.g, c, self.max_correct, |_| true)
    }

    /// The other side's set at the mask, for relation-preserving distractors: entities
    /// that satisfy one neighbour's constraint but not the whole stem.
    fn one_sided(&self, c: &Chain) -> Vec<u32> {
        let ty = self.g.types[c.nodes[c.mask] as usize];
        let mut out = Vec::new();
        for (pos, hop, dir) in [
            (c.mask.checked_sub(1), c.mask.checked_sub(1), None),
            (Some(c.mask + 1).filter(|&p| p < c.nodes.len()), Some(c.mask), Some(())),
        ]
        .into_iter()
        .filter_map(|(p, h, d)| Some((p?, h?, d)))
        {
            if !c.named[pos] {
                continue;
            }
            // Direction seen from the neighbour toward the mask.
            let d = if dir.is_none() {
                c.dirs[hop]
            } else if c.dirs[hop] == Dir::Out {
                Dir::In
            } else {
                Dir::Out
            };
            for x in self.g.step(c.nodes[pos], Some(c.preds[hop]), Some(d), Some(ty)).take(256) {
                out.push(x.to);
            }
        }
        out
    }

    fn grow(&self, p: &Pattern, answer: u32, rng: &mut ChaCha8Rng) -> Option<Chain> {
        let n = p.types.len();
        let mut nodes = vec![u32::MAX; n];
        let mut rels = vec![0u32; n - 1];
        let mut dirs = vec![Dir::Out; n - 1];
        let mut preds = vec![0u32; n - 1];
        nodes[p.mask] = answer;
        let mut used = FxHashSet::from_iter([answer]);
        // Leftwards: hop i links i and i+1, read from i; from i+1 the direction flips.
        for i in (0..p.mask).rev() {
            let h = &p.hops[i];
            let dir_from_right = h.dir.map(|d| if d == Dir::Out { Dir::In } else { Dir::Out });
            let opts: Vec<&graph::Edge> = self
                .g
                .step(nodes[i + 1], h.pred, dir_from_right, p.types[i])
                .filter(|e| !used.contains(&e.to))
                .collect();
            let e = opts.get(rng.random_range(0..opts.len().max(1)))?;
            nodes[i] = e.to;
            rels[i] = e.rel;
            preds[i] = e.pred;
            dirs[i] = if e.dir == Dir::Out { Dir::In } else { Dir::Out };
            used.insert(e.to);
        }
        for i in p.mask..n - 1 {
            let h = &p.hops[i];
            let opts: Vec<&graph::Edge> =
                self.g.step(nodes[i], h.pred, h.dir, p.types[i + 1]).filter(|e| !used.contains(&e.to)).collect();
            let e = opts.get(rng.random_range(0..opts.len().max(1)))?;
            nodes[i + 1] = e.to;
            rels[i] = e.rel;
            preds[i] = e.pred;
            dirs[i] = e.dir;
            used.insert(e.to);
        }
        let named = (0..n).map(|i| i != p.mask && !p.hidden.contains(&i)).collect();
        Some(Chain { nodes, rels, dirs, preds, named, mask: p.mask })
    }

    fn walk(&self, answer: u32, hops: usize, rng: &mut ChaCha8Rng) -> Option<Chain> {
        let mut nodes = vec![answer];
        let mut rels = Vec::new();
        let mut dirs = Vec::new();
        let mut preds = Vec::new();
        let mut used = FxHashSet::from_iter([answer]);
        for _ in 0..hops {
            let cur = *nodes.last()?;
            let adj = self.g.adj(cur);
            if adj.is_empty() {
                return None;
            }
            // A few tries to avoid revisiting.
            let mut pick = None;
            for _ in 0..8 {
                let e = adj[rng.random_range(0..adj.len())];
                if !used.contains(&e.to) {
                    pick = Some(e);
                    break;
                }
            }
            let e = pick?;
            nodes.push(e.to);
            rels.push(e.rel);
            dirs.push(e.dir);
            preds.push(e.pred);
            used.insert(e.to);
        }
        let n = nodes.len();
        let named = (0..n).map(|i| i == n - 1).collect();
        Some(Chain { nodes, rels, dirs, preds, named, mask: 0 })
    }

    #[allow(clippy::too_many_arguments)]
    fn consider(
        &self,
        pool: &mut Vec<u32>,
        tier: u8,
        ctx: (&Chain, &FxHashSet<u32>, &FxHashSet<u32>),
        out: &mut Vec<(u32, u8)>,
        taken: &mut Vec<&'a str>,
        rng: &mut ChaCha8Rng,
    ) {
        let g: &'a Graph = self.g;
        let (c, correct, on_path) = ctx;
        let need = self.options - 1;
        let ty = g.types[c.nodes[c.mask] as usize];
        pool.sort_unstable();
        pool.dedup();
        pool.shuffle(rng);
        for &d in pool.iter() {
            if out.len() >= need {
                return;
            }
            if g.types[d as usize] != ty
                || correct.contains(&d)
                || on_path.contains(&d)
                || out.iter().any(|(x, _)| *x == d)
            {
                continue;
            }
            let surf = &g.surface[d as usize];
            if surf.iter().any(|s| taken.contains(&s.as_str())) || g.names[d as usize].trim().is_empty() {
                continue;
            }
            taken.push(surf[0].as_str());
            out.push((d, tier));
        }
    }

    fn distractors(&self, c: &Chain, correct: &FxHashSet<u32>, rng: &mut ChaCha8Rng) -> Option<Vec<(u32, u8)>> {
        let g: &'a Graph = self.g;
        let need = self.options - 1;
        let answer = c.nodes[c.mask];
        let ty = g.types[answer as usize];
        let mut taken_names: Vec<&'a str> = g.surface[answer as usize].iter().map(String::as_str).collect();
        let mut out: Vec<(u32, u8)> = Vec::with_capacity(need);
        let on_path: FxHashSet<u32> = c.nodes.iter().copied().collect();
        let cx = (c, correct, &on_path);
        let consider = |pool: &mut Vec<u32>,
                        tier: u8,
                        out: &mut Vec<(u32, u8)>,
                        taken: &mut Vec<&'a str>,
                        rng: &mut ChaCha8Rng| { self.consider(pool, tier, cx, out, taken, rng) };
        // 1: shares one side of the stem's constraints, not all of them.
        let mut pool = self.one_sided(c);
        consider(&mut pool, 1, &mut out, &mut taken_names, rng);
        // 2: shares a neighbour with the answer.
        if out.len() < need {
            let mut pool = Vec::new();
            let adj = self.g.adj(answer);
            let start = if adj.is_empty() { 0 } else { rng.random_range(0..adj.len()) };
            for k in 0..adj.len().min(24) {
                let nb = adj[(start + k) % adj.len()];
                pool.extend(
                    self.g
                        .step(nb.to, Some(nb.pred), Some(if nb.dir == Dir::Out { Dir::In } else { Dir::Out }), Some(ty))
                        .take(48)
                        .map(|e| e.to),
                );
            }
            consider(&mut pool, 2, &mut out, &mut taken_names, rng);
        }
        // 3 and 4: entities of the type (with the same kind of relation first).
        if out.len() < need {
            let all = &self.g.by_type[ty as usize];
            let mut pool: Vec<u32> =
                (0..(need * 8).min(all.len())).map(|_| all[rng.random_range(0..all.len())]).collect();
            let pred = c.preds.get(c.mask).or(c.mask.checked_sub(1).and_then(|m| c.preds.get(m))).copied();
            let (with_rel, without): (Vec<u32>, Vec<u32>) = pool
                .drain(..)
                .partition(|&d| pred.is_some_and(|p| self.g.step(d, Some(p), None, None).next().is_some()));
            let mut a = with_rel;
            consider(&mut a, 3, &mut out, &mut taken_names, rng);
            let mut b = without;
            consider(&mut b, 4, &mut out, &mut taken_names, rng);
        }
        if out.len() < need {
            let all = self.g.by_type[ty as usize].clone();
            let mut pool = all;
            consider(&mut pool, 4, &mut out, &mut taken_names, rng);
        }
        (out.len() == need).then_some(out)
    }

    /// One draft for index `i` of round `round`, or `None` after the attempts fail.
    fn draft(&self, round: u64, i: u64) -> (Option<Draft>, u32) {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(self.seed, round), i));
        let mut failures = 0;
        for _ in 0..16 {
            let (chain, pattern_name, templates) = if let Some(w) = &self.walk {
                let Some(a) = draw(&w.cumulative, &mut rng) else { return (None, failures) };
                let hops = rng.random_range(self.hops.0..=self.hops.1);
                (self.walk(w.candidates[a], hops, &mut rng), format!("walk-{hops}"), &w.templates)
            } else {
                let Some(pi) = draw(&self.pattern_cumulative, &mut rng) else { return (None, failures) };
                let p = &self.patterns[pi];
                let Some(a) = draw(&p.cumulative, &mut rng) else {
                    failures += 1;
                    continue;
                };
                (self.grow(p, p.candidates[a], &mut rng), p.name.clone(), &p.templates)
            };
            let Some(chain) = chain else {
                failures += 1;
                continue;
            };
            let Some(correct) = self.correct_set(&chain) else {
                failures += 1;
                continue;
            };
            if correct.len() > self.max_correct || !correct.contains(&chain.nodes[chain.mask]) {
                failures += 1;
                continue;
            }
            let Some(distractors) = self.distractors(&chain, &correct, &mut rng) else {
                failures += 1;
                continue;
            };
            let stem = self.stem(&chain, templates, &mut rng);
            let mut h = blake3::Hasher::new();
            h.update(pattern_name.as_bytes());
            h.update(&(chain.mask as u64).to_le_bytes());
            for r in &chain.rels {
                h.update(&r.to_le_bytes());
            }
            for n in &chain.nodes {
                h.update(&n.to_le_bytes());
            }
            let key = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]));
            let answer = chain.nodes[chain.mask];
            return (
                Some(Draft { key, chain, pattern: pattern_name, stem, answer, distractors, correct: correct.len() }),
                failures,
            );
        }
        (None, failures)
    }

    fn finish(&self, d: Draft, position: usize, rng: &mut ChaCha8Rng) -> Question {
        let g = self.g;
        let mut others: Vec<(u32, u8)> = d.distractors.clone();
        others.shuffle(rng);
        let mut order: Vec<u32> = others.iter().map(|(e, _)| *e).collect();
        order.insert(position.min(order.len()), d.answer);
        let options: Vec<Choice> =
            order.iter().enumerate().map(|(i, &e)| Choice::new(label(i), g.names[e as usize].clone())).collect();
        let mut kg_path = Vec::with_capacity(d.chain.nodes.len() * 2);
        for (i, &n) in d.chain.nodes.iter().enumerate() {
            kg_path.push(g.ids[n as usize].clone());
            if let Some(&r) = d.chain.rels.get(i) {
                kg_path.push(g.rel_ids[r as usize].clone());
            }
        }
        let mut parents: Vec<String> = d.chain.rels.iter().map(|&r| g.rel_ids[r as usize].clone()).collect();
        parents.extend(d.chain.nodes.iter().map(|&n| g.ids[n as usize].clone()));
        parents.extend(others.iter().map(|(e, _)| g.ids[*e as usize].clone()));
        let id = questions::content_id("syn-", &d.stem, &options);
        let meta = json!({
            "pattern": d.pattern,
            "mask": d.chain.mask,
            "named": d.chain.named,
            "answer_entity": g.ids[d.answer as usize],
            "answer_type": self.type_name(d.answer),
            "answer_degree": g.degree[d.answer as usize],
            "correct_in_graph": d.correct,
            "distractors": others.iter().map(|(e, t)| json!({"entity": g.ids[*e as usize], "tier": t})).collect::<Vec<_>>(),
        });
        Question {
            id,
            source: self.source.clone(),
            language: "en".into(),
            question: d.stem,
            context: None,
            options,
            answer: label(position),
            multi_answer: false,
            explanation: None,
            subject: Some(self.type_name(d.answer).to_string()),
            difficulty: None,
            difficulty_evidence: None,
            kg_path,
            parents,
            meta: Some(meta.to_string()),
        }
    }
}

fn parse_hop(s: &str, g: &Graph) -> anyhow::Result<HopSpec> {
    let (dir, name) = match s.as_bytes().first() {
        Some(b'>') => (Some(Dir::Out), &s[1..]),
        Some(b'<') => (Some(Dir::In), &s[1..]),
        _ => (None, s),
    };
    if name == "*" {
        return Ok(HopSpec { pred: None, dir });
    }
    let pred = g
        .pred_id(name)
        .ok_or_else(|| anyhow!("no relation has the predicate `{name}` (predicates: {})", preview(&g.pred_names)))?;
    Ok(HopSpec { pred: Some(pred), dir })
}

fn preview(v: &[String]) -> String {
    let mut s: Vec<&str> = v.iter().map(String::as_str).take(12).collect();
    if v.len() > 12 {
        s.push("…");
    }
    s.join(", ")
}

/// Generates `n` questions (the operator without the runtime).
pub fn generate(
    g: &Graph,
    params: &Value,
    threads: usize,
) -> anyhow::Result<(Vec<Question>, serde_json::Map<String, Value>)> {
    let p = |k: &str| params.get(k).cloned().unwrap_or(Value::Null);
    let n = p("questions").as_u64().unwrap_or(1000) as usize;
    let options = p("options").as_u64().unwrap_or(4) as usize;
    let seed = p("seed").as_i64().unwrap_or(0) as u64;
    let long_tail = p("long_tail").as_f64().unwrap_or(0.7);
    let hops: Vec<u64> = serde_json::from_value(p("hops")).unwrap_or_else(|_| vec![2, 3]);
    let hops = (
        hops.first().copied().unwrap_or(2).max(1) as usize,
        hops.get(1).or(hops.first()).copied().unwrap_or(3).max(1) as usize,
    );
    if hops.0 > hops.1 {
        bail!("`hops`: min {} is above max {}", hops.0, hops.1);
    }
    let phrases: HashMap<String, (String, String)> = p("phrases")
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let a = v.as_array()?;
                    let f = a.first()?.as_str()?.to_string();
                    let i = a
                        .get(1)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("is the target of '{k}' from"));
                    Some((k.clone(), (f, i)))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut patterns = Vec::new();
    for (pi, pv) in p("patterns").as_array().cloned().unwrap_or_default().iter().enumerate() {
        let name = pv.get("name").and_then(Value::as_str).unwrap_or("pattern").to_string();
        let path: Vec<String> = serde_json::from_value(pv.get("path").cloned().unwrap_or(Value::Null))
            .with_context(|| format!("patterns[{pi}].path"))?;
        let preds: Vec<String> = serde_json::from_value(pv.get("predicates").cloned().unwrap_or(Value::Null))
            .with_context(|| format!("patterns[{pi}].predicates"))?;
        let mask = pv.get("mask").and_then(Value::as_u64).unwrap_or(0) as usize;
        if path.len() < 2 || preds.len() + 1 != path.len() || mask >= path.len() {
            bail!("pattern `{name}`: needs ≥ 2 types, one predicate per hop, and `mask` inside the path");
        }
        let types: Vec<Option<u32>> = path
            .iter()
            .map(|t| {
                if t == "*" {
                    Ok(None)
                } else {
                    g.type_id(t).map(Some).ok_or_else(|| {
                        anyhow!("pattern `{name}`: no entity has the type `{t}` (types: {})", preview(&g.type_names))
                    })
                }
            })
            .collect::<anyhow::Result<_>>()?;
        let hops: Vec<HopSpec> = preds
            .iter()
            .map(|s| parse_hop(s, g))
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("pattern `{name}`"))?;
        // Answer candidates: the mask's type, with the adjacent hops available.
        let pool: Vec<u32> = match types[mask] {
            Some(t) => g.by_type[t as usize].clone(),
            None => (0..g.ids.len() as u32).collect(),
        };
        let candidates: Vec<u32> = pool
            .into_iter()
            .filter(|&e| {
                let left = mask == 0 || {
                    let h = &hops[mask - 1];
                    g.step(e, h.pred, h.dir.map(|d| if d == Dir::Out { Dir::In } else { Dir::Out }), types[mask - 1])
                        .next()
                        .is_some()
                };
                let right = mask + 1 >= types.len()
                    || g.step(e, hops[mask].pred, hops[mask].dir, types[mask + 1]).next().is_some();
                left && right
            })
            .collect();
        let templates: Vec<String> =
            serde_json::from_value(pv.get("templates").cloned().unwrap_or(json!([]))).unwrap_or_default();
        let hidden: Vec<usize> =
            serde_json::from_value(pv.get("hidden").cloned().unwrap_or(json!([]))).unwrap_or_default();
        if hidden.iter().any(|&h| h >= path.len() || h == mask)
            || (0..path.len()).all(|i| i == mask || hidden.contains(&i))
        {
            bail!(
                "pattern `{name}`: `hidden` positions must be inside the path, not the mask, and leave one node named"
            );
        }
        for t in &templates {
            if let Some(bad) = (0..30)
                .map(|i| format!("{{{i}}}"))
                .enumerate()
                .find(|(i, s)| *i >= path.len() && t.contains(s.as_str()))
            {
                bail!("pattern `{name}`: template uses {} but the path has {} nodes", bad.1, path.len());
            }
        }
        if candidates.is_empty() {
            bail!(
                "pattern `{name}` matches no path in the graph: no {} has the relations next to the masked node (check each predicate's direction: `>p` when the left node is the subject, `<p` when it is the object)",
                path[mask]
            );
        }
        let cumulative = cumulative(g, &candidates, long_tail);
        let weight = pv.get("weight").and_then(Value::as_f64).unwrap_or(1.0);
        patterns.push((weight, Pattern { name, types, hops, mask, hidden, templates, candidates, cumulative }));
    }
    let walk = if patterns.is_empty() {
        let types: Option<Vec<u32>> = match p("answer_types") {
            Value::Array(a) => Some(
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|t| {
                        g.type_id(t).ok_or_else(|| {
                            anyhow!("`answer_types`: no entity has the type `{t}` (types: {})", preview(&g.type_names))
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
            _ => None,
        };
        let candidates: Vec<u32> = (0..g.ids.len() as u32)
            .filter(|&e| {
                g.offsets[e as usize + 1] > g.offsets[e as usize]
                    && types.as_ref().is_none_or(|t| t.contains(&g.types[e as usize]))
            })
            .collect();
        let cumulative = cumulative(g, &candidates, long_tail);
        Some(Pattern {
            name: "walk".into(),
            types: vec![],
            hops: vec![],
            mask: 0,
            hidden: vec![],
            templates: vec![],
            candidates,
            cumulative,
        })
    } else {
        None
    };
    let mut acc = 0.0;
    let pattern_cumulative: Vec<f64> = patterns
        .iter()
        .map(|(w, p)| {
            acc += if p.candidates.is_empty() { 0.0 } else { *w };
            acc
        })
        .collect();
    if walk.as_ref().is_some_and(|w| w.candidates.is_empty()) || (walk.is_none() && acc <= 0.0) {
        bail!("no entity can be an answer: the graph has no path of the requested shape");
    }
    let setup = Setup {
        g,
        patterns: patterns.into_iter().map(|(_, p)| p).collect(),
        pattern_cumulative,
        walk,
        hops,
        options,
        max_correct: p("max_correct").as_u64().unwrap_or(25) as usize,
        phrases,
        seed,
        source: p("source").as_str().unwrap_or("synthetic").to_string(),
    };
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().context("starting sampling threads")?;
    let mut drafts: Vec<Draft> = Vec::with_capacity(n);
    let mut seen: HashSet<u64> = HashSet::with_capacity(n);
    let mut failures = 0u64;
    let mut duplicates = 0u64;
    let mut round = 0u64;
    let mut dry_rounds = 0;
    while drafts.len() < n && dry_rounds < 3 {
        let want = n - drafts.len();
        let batch = want + want / 8 + 16;
        let got: Vec<(Option<Draft>, u32)> =
            pool.install(|| (0..batch as u64).into_par_iter().map(|i| setup.draft(round, i)).collect());
        let before = drafts.len();
        for (d, f) in got {
            failures += f as u64;
            let Some(d) = d else { continue };
            if drafts.len() >= n {
                break;
            }
            if seen.insert(d.key) {
                drafts.push(d);
            } else {
                duplicates += 1;
            }
        }
        dry_rounds = if drafts.len() == before { dry_rounds + 1 } else { 0 };
        round += 1;
    }
    // Answer positions balanced over blocks of `options`.
    let mut out = Vec::with_capacity(drafts.len());
    let mut position_counts = vec![0u64; options];
    let mut tiers = [0u64; 5];
    for (k, d) in drafts.into_iter().enumerate() {
        let block = (k / options) as u64;
        let mut block_rng = ChaCha8Rng::seed_from_u64(mix(mix(seed, u64::MAX), block));
        let mut perm: Vec<usize> = (0..options).collect();
        perm.shuffle(&mut block_rng);
        let position = perm[k % options];
        position_counts[position] += 1;
        for (_, t) in &d.distractors {
            tiers[*t as usize] += 1;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(seed, u64::MAX - 1), d.key));
        out.push(setup.finish(d, position, &mut rng));
    }
    let mut m = serde_json::Map::new();
    m.insert("generated".into(), json!(out.len()));
    m.insert("requested".into(), json!(n));
    m.insert("failed_attempts".into(), json!(failures));
    m.insert("duplicate_paths".into(), json!(duplicates));
    m.insert("answer_positions".into(), json!(position_counts));
    m.insert("distractor_tiers".into(), json!({"shares_part_of_stem": tiers[1], "shares_neighbour": tiers[2], "same_relation": tiers[3], "same_type": tiers[4]}));
    Ok((out, m))
}

/// Degree buckets: 0, 1, 2–3, 4–7, … (powers of two).
fn bucket(d: u32) -> usize {
    if d == 0 { 0 } else { 32 - d.leading_zeros() as usize }
}

fn degree_report(g: &Graph, qs: &[Question]) -> anyhow::Result<(Table, serde_json::Map<String, Value>)> {
    let index: HashMap<&str, u32> = g.ids.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
    let answers: Vec<u32> = qs
        .iter()
        .filter_map(|q| q.meta.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()))
        .filter_map(|m| m.get("answer_entity").and_then(Value::as_str).and_then(|s| index.get(s).copied()))
        .collect();
    let types: HashSet<u32> = answers.iter().map(|&a| g.types[a as usize]).collect();
    let graph_deg: Vec<u32> = (0..g.ids.len()).filter(|&i| types.contains(&g.types[i])).map(|i| g.degree[i]).collect();
    let sampled_deg: Vec<u32> = answers.iter().map(|&a| g.degree[a as usize]).collect();
    let nb = 33;
    let mut gh = vec![0i64; nb];
    let mut sh = vec![0i64; nb];
    graph_deg.iter().for_each(|&d| gh[bucket(d)] += 1);
    sampled_deg.iter().for_each(|&d| sh[bucket(d)] += 1);
    let used: Vec<usize> = (0..nb).filter(|&b| gh[b] > 0 || sh[b] > 0).collect();
    let lo = |b: usize| if b == 0 { 0 } else { 1i64 << (b - 1) };
    let hi = |b: usize| if b == 0 { 0 } else { (1i64 << b) - 1 };
    let gt = graph_deg.len().max(1) as f64;
    let st = sampled_deg.len().max(1) as f64;
    let schema = Arc::new(Schema::new(
        degree_columns().into_iter().map(|c| Field::new(c.name, c.data_type, c.nullable)).collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(used.iter().map(|&b| format!("{:>5}-{}", lo(b), hi(b))).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(used.iter().map(|&b| lo(b)).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(used.iter().map(|&b| hi(b)).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(used.iter().map(|&b| gh[b]).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(used.iter().map(|&b| sh[b]).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(used.iter().map(|&b| gh[b] as f64 / gt).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(used.iter().map(|&b| sh[b] as f64 / st).collect::<Vec<_>>())),
        ],
    )?;
    let median = |v: &[u32]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let mean = |v: &[u32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
    let mut m = serde_json::Map::new();
    m.insert("answer_degree_median".into(), json!(median(&sampled_deg)));
    m.insert("graph_degree_median".into(), json!(median(&graph_deg)));
    m.insert("answer_degree_mean".into(), json!((mean(&sampled_deg) * 100.0).round() / 100.0));
    m.insert("graph_degree_mean".into(), json!((mean(&graph_deg) * 100.0).round() / 100.0));
    m.insert("distinct_answers".into(), json!(answers.iter().collect::<HashSet<_>>().len()));
    Ok((Table::new(schema, vec![batch]), m))
}

impl Operator for Sample {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if let Some(h) = ctx.params.get("hops").as_array() {
            let v: Vec<i64> = h.iter().filter_map(Value::as_i64).collect();
            if v.is_empty() || v.len() > 2 || v.iter().any(|&x| !(1..=8).contains(&x)) || (v.len() == 2 && v[0] > v[1])
            {
                issues.push(ParamIssue {
                    param: vec!["hops".into()],
                    message: "`hops` is [min, max] with 1 ≤ min ≤ max ≤ 8".into(),
                });
            }
        }
        for (i, p) in ctx.params.get("patterns").as_array().into_iter().flatten().enumerate() {
            let len = |k: &str| p.get(k).and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            let mask = p.get("mask").and_then(Value::as_i64).unwrap_or(-1);
            if len("path") < 2 || len("predicates") + 1 != len("path") || mask < 0 || mask as usize >= len("path") {
                issues.push(ParamIssue {
                    param: vec!["patterns".into(), i.to_string()],
                    message: format!(
                        "a pattern needs ≥ 2 node types, one predicate per hop ({} for {} types), and `mask` in 0..{}",
                        len("path").saturating_sub(1),
                        len("path"),
                        len("path")
                    ),
                });
            }
        }
        issues
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let entities = ctx.input_table("entities")?.clone();
        let relations = ctx.input_table("relations")?.clone();
        ctx.progress.set_message("indexing the graph");
        let (g, skipped) = Graph::build(&entities, &relations, ctx.params.f64("min_confidence")?)?;
        ctx.cancel.check()?;
        let n = ctx.params.u64("questions")?;
        ctx.progress.set_total(n);
        ctx.progress.set_unit("questions");
        let (qs, metrics) = generate(&g, &ctx.params.to_json(), ctx.threads)?;
        ctx.progress.set_position(qs.len() as u64);
        let (report, deg) = degree_report(&g, &qs)?;
        ctx.metric("entities", g.ids.len() as u64);
        ctx.metric("relations", g.rel_ids.len() as u64);
        ctx.metric("relations_skipped", skipped as u64);
        for (k, v) in metrics.into_iter().chain(deg) {
            ctx.metric(&k, v);
        }
        Ok(Outputs::new().table("questions", questions::to_table(&qs)?).table("degrees", report))
    }
}

#[cfg(test)]
mod tests;
