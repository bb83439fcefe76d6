//! A validator / reference model that answers synthetic items from the knowledge graph.
//!
//! It rebuilds the item's path from `kg_path` and the masking recorded in `meta`, computes
//! which options satisfy the stem over the relations it *knows*, and picks one of them
//! (uniformly at random among options when none does). With `knowledge = 1` it knows
//! every relation: a graph-checked label verifier. With `knowledge < 1` it knows a
//! relation with a probability that grows with its entities' degree (well-known facts are
//! known, rare ones often not) — a cheap reference model whose pass rate over several
//! trials tracks how rare and how long the reasoning path is (used by
//! `difficulty-label` in the quickstart). Every choice is a function of
//! (seed, item id, trial).

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::graph::{Dir, Graph};
use super::{Chain, satisfying};
use crate::questions::Question;

/// Answers synthetic questions from a graph.
pub struct KgModel<'a> {
    g: &'a Graph,
    ids: HashMap<&'a str, u32>,
    rels: HashMap<&'a str, u32>,
    knowledge: f64,
    reference_degree: f64,
    seed: u64,
}

/// A 64-bit hash of `parts` (each followed by a separator), for seeding per-item choices.
pub(crate) fn h64(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
        h.update(&[0xff]);
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

impl<'a> KgModel<'a> {
    /// A model over `g` knowing each relation with a degree-dependent probability scaled
    /// by `knowledge` (1: knows everything).
    pub fn new(g: &'a Graph, knowledge: f64, seed: u64) -> Self {
        let mut d: Vec<u32> = g.degree.clone();
        d.sort_unstable();
        let p90 = d.get(d.len() * 9 / 10).copied().unwrap_or(1).max(2) as f64;
        KgModel {
            g,
            ids: g.ids.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect(),
            rels: g.rel_ids.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect(),
            knowledge: knowledge.clamp(0.0, 1.0),
            reference_degree: p90,
            seed,
        }
    }

    /// Whether the model knows relation `rel` in `trial`.
    fn knows(&self, rel: u32, trial: u32) -> bool {
        if self.knowledge >= 1.0 {
            return true;
        }
        let (s, o, _) = self.g.rel_ends[rel as usize];
        let fame = ((1.0 + self.g.degree[s as usize] as f64).ln() + (1.0 + self.g.degree[o as usize] as f64).ln())
            / (2.0 * (1.0 + self.reference_degree).ln());
        let p = (self.knowledge * (0.35 + 0.65 * fame.min(1.0))).clamp(0.02, 1.0);
        let x = h64(&[&self.seed.to_le_bytes(), &rel.to_le_bytes(), &trial.to_le_bytes()]) as f64 / u64::MAX as f64;
        x < p
    }

    /// The item's chain and option entities, when it is a synthetic item of this graph.
    pub(crate) fn chain_of(&self, q: &Question) -> Option<(Chain, Vec<Option<u32>>)> {
        let meta: Value = serde_json::from_str(q.meta.as_deref()?).ok()?;
        let mask = meta.get("mask")?.as_u64()? as usize;
        let mut nodes = Vec::new();
        let mut rels = Vec::new();
        for (i, id) in q.kg_path.iter().enumerate() {
            if i % 2 == 0 {
                nodes.push(*self.ids.get(id.as_str())?);
            } else {
                rels.push(*self.rels.get(id.as_str())?);
            }
        }
        if nodes.len() != rels.len() + 1 || mask >= nodes.len() {
            return None;
        }
        let mut dirs = Vec::new();
        let mut preds = Vec::new();
        for (i, &r) in rels.iter().enumerate() {
            let (s, o, p) = self.g.rel_ends[r as usize];
            let dir = if s == nodes[i] && o == nodes[i + 1] {
                Dir::Out
            } else if o == nodes[i] && s == nodes[i + 1] {
                Dir::In
            } else {
                return None;
            };
            dirs.push(dir);
            preds.push(p);
        }
        let named: Vec<bool> = match meta.get("named").and_then(Value::as_array) {
            Some(a) if a.len() == nodes.len() => a.iter().map(|b| b.as_bool().unwrap_or(true)).collect(),
            _ => (0..nodes.len()).map(|i| i != mask).collect(),
        };
        // Option entities: the answer and the distractors recorded in meta, by name.
        let mut by_name: HashMap<&str, u32> = HashMap::new();
        let answer = nodes[mask];
        by_name.insert(self.g.names[answer as usize].as_str(), answer);
        for d in meta.get("distractors").and_then(Value::as_array).into_iter().flatten() {
            if let Some(e) = d.get("entity").and_then(Value::as_str).and_then(|s| self.ids.get(s)) {
                by_name.insert(self.g.names[*e as usize].as_str(), *e);
            }
        }
        let options = q.options.iter().map(|c| by_name.get(c.text.as_str()).copied()).collect();
        Some((Chain { nodes, rels, dirs, preds, named, mask }, options))
    }

    /// Whether the model can answer this item at all (a synthetic item of this graph).
    pub fn can_answer(&self, q: &Question) -> bool {
        self.chain_of(q).is_some()
    }

    /// The model's answer (an option label) in `trial`, or `None` if the item is not a
    /// synthetic item of this graph.
    pub fn answer(&self, q: &Question, trial: u32) -> Option<String> {
        let (chain, options) = self.chain_of(q)?;
        let set = satisfying(self.g, &chain, usize::MAX, |r| self.knows(r, trial)).unwrap_or_default();
        let fits: Vec<usize> =
            options.iter().enumerate().filter(|(_, e)| e.is_some_and(|e| set.contains(&e))).map(|(i, _)| i).collect();
        let mut rng =
            ChaCha8Rng::seed_from_u64(h64(&[&self.seed.to_le_bytes(), q.id.as_bytes(), &trial.to_le_bytes()]));
        let pick = if fits.is_empty() {
            rng.random_range(0..q.options.len().max(1))
        } else {
            fits[rng.random_range(0..fits.len())]
        };
        q.options.get(pick).map(|c| c.label.clone())
    }
}
