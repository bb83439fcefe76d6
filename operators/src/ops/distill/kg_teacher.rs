//! The `kg` teacher: writes a chain of thought for a synthetic item from the graph it
//! was built from, needing no model and no network.
//!
//! It rebuilds the item's path (`kg_path`, the masking in `meta`), states the facts along
//! it from the named clues to the answer — hidden links named, since naming them is the
//! reasoning — and rules out each distractor by the relation that separates it (with what
//! the distractor does relate to, when the graph says). Chains vary per candidate: three
//! orders of evidence (clues first, elimination first, conclusion then elimination), and
//! several phrasings of each fact, ruling-out and conclusion. Refinement rounds change the
//! shape by strategy: `backtrack` re-derives the path hop by hop, `alternatives` weighs
//! every option in turn, `self_correct` keeps only what the verdict asked for (a concise
//! chain when it was too long).
//!
//! When the node next to the answer is hidden (`the drug that treats the likely cause of
//! a symptom`), the question never names it, so a chain that starts from the clue and
//! asserts one bridge ("the symptom is a sign of D") is a guess whenever the clue has
//! several. Those chains check each option instead: the option, the bridge it relates to,
//! and whether that bridge reaches the named clue — the deduction the question allows.
//!
//! Every choice is a function of (seed, item id, candidate, round).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Strategy;
use crate::ops::sample::kg_answer::h64;
use crate::ops::sample::{Dir, Graph, KgModel, default_phrase};
use fleming_questions::Question;

/// Writes chains from a graph.
pub struct KgTeacher<'a> {
    g: &'a Graph,
    model: KgModel<'a>,
}

/// What the teacher knows of one item.
struct Path {
    /// Entity names along the path.
    names: Vec<String>,
    /// For hop i (between node i and i+1): the phrase read from node i to node i+1.
    forward: Vec<String>,
    /// For hop i: the phrase read from node i+1 to node i.
    backward: Vec<String>,
    mask: usize,
    type_name: String,
    /// Label and name of the answer.
    answer: (String, String),
    /// Label, name and why each other option is ruled out.
    others: Vec<(String, String, String)>,
    /// When the answer's neighbour is hidden: each option checked through a bridge.
    checks: Option<OptionChecks>,
}

/// Every option checked against the named clue through the hidden bridge node.
struct OptionChecks {
    /// The named clue the bridge must reach.
    clue: String,
    /// The bridge's entity type (`disease`).
    bridge_type: String,
    /// Option to bridge phrase (`treats`), bridge to clue phrase (`presents with`).
    to_bridge: String,
    to_clue: String,
    /// Per option in label order: label, option text, the bridge it relates to, and
    /// whether that bridge reaches the clue.
    options: Vec<(String, String, Option<String>, bool)>,
}

/// How a relation reads in prose: (subject to object, object to subject). The extract
/// operator's predicates, then the stem phrases of `sample`.
fn phrases(pred: &str) -> (String, String) {
    let (f, i) = match pred {
        "has_symptom" => ("presents with", "is a symptom of"),
        "diagnosed_by" => ("is diagnosed by", "is used to diagnose"),
        "treated_by" => ("is treated with", "treats"),
        "caused_by" => ("is caused by", "causes"),
        "risk_factor" => ("has the risk factor", "is a risk factor for"),
        "complication_of" => ("is a complication of", "can be complicated by"),
        "differential_diagnosis" => ("is in the differential diagnosis of", "is in the differential diagnosis of"),
        "contraindicated_with" => ("is contraindicated with", "is contraindicated with"),
        "mechanism" => ("acts by", "is the mechanism of"),
        "located_in" => ("affects", "is affected by"),
        "drug_class" => ("belongs to the class", "is the class of"),
        "adverse_effect" => ("can cause the adverse effect", "is an adverse effect of"),
        "associated_gene" => ("is associated with the gene", "is a gene associated with"),
        "prevented_by" => ("is prevented by", "prevents"),
        "part_of" => ("is part of", "includes"),
        "interacts_with" => ("interacts with", "interacts with"),
        "specialty" => ("falls under the specialty", "is the specialty for"),
        _ => return default_phrase(pred),
    };
    (f.to_string(), i.to_string())
}

fn pick<'s>(rng: &mut ChaCha8Rng, options: &[&'s str]) -> &'s str {
    options[rng.random_range(0..options.len())]
}

fn fill(template: &str, a: &str, phrase: &str, b: &str) -> String {
    template.replace("{a}", a).replace("{p}", phrase).replace("{b}", b)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

impl<'a> KgTeacher<'a> {
    /// A teacher over `g`.
    pub fn new(g: &'a Graph) -> Self {
        KgTeacher { g, model: KgModel::new(g, 1.0, 0) }
    }

    /// The names of the entities on the item's path, when it is a synthetic item of this
    /// graph (what the `grounded` verifier checks a chain for).
    pub fn path_names(&self, q: &Question) -> Option<Vec<String>> {
        let (chain, _) = self.model.chain_of(q)?;
        Some(chain.nodes.iter().map(|&n| self.g.names[n as usize].clone()).collect())
    }

    fn phrase(&self, pred: u32, dir: Dir) -> String {
        let (f, i) = phrases(&self.g.pred_names[pred as usize]);
        if dir == Dir::Out { f } else { i }
    }

    fn path(&self, q: &Question) -> Option<Path> {
        let (chain, option_entities) = self.model.chain_of(q)?;
        let g = self.g;
        let name = |e: u32| g.names[e as usize].clone();
        let flip = |d: Dir| if d == Dir::Out { Dir::In } else { Dir::Out };
        let forward: Vec<String> = (0..chain.rels.len()).map(|i| self.phrase(chain.preds[i], chain.dirs[i])).collect();
        let backward: Vec<String> =
            (0..chain.rels.len()).map(|i| self.phrase(chain.preds[i], flip(chain.dirs[i]))).collect();
        let m = chain.mask;
        let answer_entity = chain.nodes[m];
        let answer_label = q.answers().first().map(|s| s.to_string())?;
        let mut others = Vec::new();
        for (choice, entity) in q.options.iter().zip(&option_entities) {
            if choice.label == answer_label {
                continue;
            }
            let why = match entity {
                Some(d) if *d != answer_entity => {
                    // The hops at the mask, seen from the distractor toward the path.
                    let mut hops = Vec::new();
                    if m > 0 {
                        hops.push((chain.nodes[m - 1], chain.preds[m - 1], chain.dirs[m - 1], backward[m - 1].clone()));
                    }
                    if m + 1 < chain.nodes.len() {
                        hops.push((chain.nodes[m + 1], chain.preds[m], flip(chain.dirs[m]), forward[m].clone()));
                    }
                    let failing = hops.iter().find(|(n, p, dir, _)| !g.has_edge(*n, *p, *dir, *d, &|_| true));
                    match failing {
                        Some((n, p, dir, phrase)) => {
                            // What the distractor relates to instead, by the same relation.
                            let instead = g
                                .step(*d, Some(*p), Some(flip(*dir)), Some(g.types[*n as usize]))
                                .map(|x| name(x.to))
                                .find(|other| *other != name(*n));
                            match instead {
                                Some(other) => format!("{}|{}|{}|{}", name(*d), phrase, name(*n), other),
                                None => format!("{}|{}|{}|", name(*d), phrase, name(*n)),
                            }
                        }
                        None => format!("{}|||", name(*d)),
                    }
                }
                _ => format!("{}|||", choice.text),
            };
            others.push((choice.label.clone(), choice.text.clone(), why));
        }
        let checks = self.option_checks(q, &chain, &option_entities);
        Some(Path {
            checks,
            names: chain.nodes.iter().map(|&n| name(n)).collect(),
            forward,
            backward,
            mask: m,
            type_name: g.type_names[g.types[answer_entity as usize] as usize].clone(),
            answer: (answer_label, name(answer_entity)),
            others,
        })
    }

    /// The options checked through the hidden neighbour of the answer, when it is hidden
    /// and the node beyond it is named.
    fn option_checks(
        &self,
        q: &Question,
        chain: &crate::ops::sample::Chain,
        option_entities: &[Option<u32>],
    ) -> Option<OptionChecks> {
        let g = self.g;
        let m = chain.mask;
        let flip = |d: Dir| if d == Dir::Out { Dir::In } else { Dir::Out };
        // (bridge node, clue node, option->bridge hop, bridge->clue hop) on either side.
        let right = (m + 2 < chain.nodes.len())
            .then(|| (m + 1, m + 2, (chain.preds[m], chain.dirs[m]), (chain.preds[m + 1], chain.dirs[m + 1])));
        let left = (m >= 2).then(|| {
            (m - 1, m - 2, (chain.preds[m - 1], flip(chain.dirs[m - 1])), (chain.preds[m - 2], flip(chain.dirs[m - 2])))
        });
        let (bridge, clue, (p1, d1), (p2, d2)) =
            [right, left].into_iter().flatten().find(|(b, c, _, _)| !chain.named[*b] && chain.named[*c])?;
        let clue_entity = chain.nodes[clue];
        let bridge_entity = chain.nodes[bridge];
        let bridge_ty = g.types[bridge_entity as usize];
        let mut options = Vec::new();
        for (choice, entity) in q.options.iter().zip(option_entities) {
            let Some(o) = *entity else {
                options.push((choice.label.clone(), choice.text.clone(), None, false));
                continue;
            };
            let reaches = |b: u32| g.has_edge(b, p2, d2, clue_entity, &|_| true);
            let bridges: Vec<u32> = g.step(o, Some(p1), Some(d1), Some(bridge_ty)).map(|e| e.to).collect();
            // The path's own bridge for the answer; else any bridge that reaches the clue;
            // else the first the graph lists.
            let found = bridges
                .iter()
                .copied()
                .find(|&b| b == bridge_entity)
                .or_else(|| bridges.iter().copied().find(|&b| reaches(b)))
                .map(|b| (b, true))
                .or_else(|| bridges.first().map(|&b| (b, false)));
            let (b, ok) = match found {
                Some((b, ok)) => (Some(g.names[b as usize].clone()), ok),
                None => (None, false),
            };
            options.push((choice.label.clone(), choice.text.clone(), b, ok));
        }
        Some(OptionChecks {
            clue: g.names[clue_entity as usize].clone(),
            bridge_type: g.type_names[bridge_ty as usize].clone(),
            to_bridge: self.phrase(p1, d1),
            to_clue: self.phrase(p2, d2),
            options,
        })
    }

    /// The chain that checks every option through the hidden bridge.
    fn checked_options(&self, p: &Path, c: &OptionChecks, rng: &mut ChaCha8Rng, concise: bool) -> Vec<String> {
        let mut parts = Vec::new();
        if !concise {
            let t = pick(
                rng,
                &[
                    "The question does not name the {b}, so check each option against {c}.",
                    "Each option has to lead to a {b} that fits {c}.",
                    "Which option reaches {c} through a {b}?",
                ],
            );
            parts.push(t.replace("{b}", &c.bridge_type).replace("{c}", &c.clue));
        }
        for (label, text, bridge, ok) in &c.options {
            let t = match (bridge, ok) {
                (Some(_), true) => {
                    pick(rng, &["{o} ({l}) {p1} {b}, which {p2} {c}.", "{o} ({l}) {p1} {b}, and {b} {p2} {c}."])
                }
                (Some(_), false) if concise => "{o} ({l}) {p1} {b}, not linked to {c}.",
                (Some(_), false) => pick(
                    rng,
                    &[
                        "{o} ({l}) {p1} {b}, but nothing says {b} {p2} {c}.",
                        "{o} ({l}) {p1} {b}, which is not linked to {c}.",
                    ],
                ),
                (None, _) => "Nothing says {o} ({l}) {p1} a {t} that {p2} {c}.",
            };
            parts.push(
                t.replace("{o}", text)
                    .replace("{l}", label)
                    .replace("{p1}", &c.to_bridge)
                    .replace("{p2}", &c.to_clue)
                    .replace("{b}", bridge.as_deref().unwrap_or(""))
                    .replace("{t}", &c.bridge_type)
                    .replace("{c}", &c.clue),
            );
        }
        parts.push(self.conclusion(p, rng));
        parts
    }

    /// The reasoning (the text inside `<think>`) for candidate `candidate` of `round`,
    /// written with `strategy` in a refinement round; `None` when `q` is not a synthetic
    /// item of this graph. `concise` asks for the shortest form (a previous chain was
    /// too long).
    pub fn reasoning(
        &self,
        q: &Question,
        seed: u64,
        candidate: u32,
        round: u32,
        strategy: Option<Strategy>,
        concise: bool,
    ) -> Option<String> {
        let p = self.path(q)?;
        let mut rng = ChaCha8Rng::seed_from_u64(h64(&[
            &seed.to_le_bytes(),
            q.id.as_bytes(),
            &candidate.to_le_bytes(),
            &round.to_le_bytes(),
        ]));
        if let Some(c) = &p.checks {
            let mut parts = Vec::new();
            if strategy == Some(Strategy::Backtrack) {
                parts.push("Re-checking each option from the start.".to_string());
            }
            parts.extend(self.checked_options(&p, c, &mut rng, concise));
            return Some(parts.join(" "));
        }
        let facts = self.facts(&p, &mut rng);
        let conclusion = self.conclusion(&p, &mut rng);
        let rulings: Vec<String> = p.others.iter().map(|o| self.ruling(o, &mut rng, concise)).collect();
        let mut parts: Vec<String> = Vec::new();
        match strategy {
            Some(Strategy::Backtrack) => {
                parts.push(
                    pick(
                        &mut rng,
                        &[
                            "Let me re-examine each link of the description in turn.",
                            "Going back over the reasoning, one link at a time.",
                            "Re-checking every assumption from the start.",
                        ],
                    )
                    .to_string(),
                );
                parts.extend(facts);
                parts.push(conclusion);
                if !concise {
                    parts.extend(rulings);
                }
            }
            Some(Strategy::Alternatives) => {
                parts.push(
                    pick(
                        &mut rng,
                        &[
                            "Consider each option in turn.",
                            "Weighing every option against the description.",
                            "Each option as a hypothesis:",
                        ],
                    )
                    .to_string(),
                );
                parts.extend(rulings);
                parts.extend(facts);
                parts.push(conclusion);
            }
            Some(Strategy::SelfCorrect) | None if concise => {
                parts.extend(facts);
                parts.push(conclusion);
            }
            _ => match rng.random_range(0..3) {
                0 => {
                    parts.extend(facts);
                    parts.push(conclusion);
                    parts.extend(rulings);
                }
                1 => {
                    let mut r = rulings;
                    r.shuffle(&mut rng);
                    parts.extend(r);
                    parts.extend(facts);
                    parts.push(conclusion);
                }
                _ => {
                    parts.extend(facts);
                    parts.extend(rulings);
                    parts.push(conclusion);
                }
            },
        }
        Some(parts.join(" "))
    }

    /// The facts along the path, from the named clues toward the answer.
    fn facts(&self, p: &Path, rng: &mut ChaCha8Rng) -> Vec<String> {
        const TEMPLATES: &[&str] =
            &["{a} {p} {b}.", "We know that {a} {p} {b}.", "Recall that {a} {p} {b}.", "Here, {a} {p} {b}."];
        let n = p.names.len();
        let mut out = Vec::new();
        // Hops left of the mask, read toward it; hops right of it, read toward it too.
        for i in 0..p.mask {
            let t = pick(rng, TEMPLATES);
            out.push(capitalise(&fill(t, &p.names[i], &p.forward[i], &p.names[i + 1])));
        }
        let mut right = Vec::new();
        for i in (p.mask..n.saturating_sub(1)).rev() {
            let t = pick(rng, TEMPLATES);
            right.push(capitalise(&fill(t, &p.names[i + 1], &p.backward[i], &p.names[i])));
        }
        // Both sides lead to the answer: which is stated first varies.
        if rng.random_bool(0.5) {
            out.extend(right);
        } else {
            right.extend(out);
            out = right;
        }
        out
    }

    fn conclusion(&self, p: &Path, rng: &mut ChaCha8Rng) -> String {
        let (label, name) = &p.answer;
        let t = pick(
            rng,
            &[
                "So the {type} is {name} ({label}).",
                "This points to {name}, option {label}.",
                "Therefore {name} ({label}) fits every part of the description.",
                "Only {name} ({label}) satisfies all of it.",
            ],
        );
        t.replace("{type}", &p.type_name).replace("{name}", name).replace("{label}", label)
    }

    fn ruling(&self, other: &(String, String, String), rng: &mut ChaCha8Rng, concise: bool) -> String {
        let (label, text, why) = other;
        let mut f = why.split('|');
        let (d, phrase, n, instead) = (f.next().unwrap_or(text), f.next(), f.next(), f.next());
        let d = if d.is_empty() { text.as_str() } else { d };
        match (phrase, n, instead) {
            (Some(ph), Some(n), Some(inst)) if !ph.is_empty() && !inst.is_empty() && !concise => {
                let t = pick(
                    rng,
                    &[
                        "{d} ({l}) {p} {i}, not {n}.",
                        "{d} ({l}) is out: it {p} {i} rather than {n}.",
                        "As for {d} ({l}), it {p} {i}, which does not match {n}.",
                    ],
                );
                t.replace("{d}", d).replace("{l}", label).replace("{p}", ph).replace("{i}", inst).replace("{n}", n)
            }
            (Some(ph), Some(n), _) if !ph.is_empty() => {
                let t = pick(
                    rng,
                    &[
                        "{d} ({l}) is ruled out: nothing says it {p} {n}.",
                        "There is no link by which {d} ({l}) {p} {n}.",
                        "{d} ({l}) does not fit, since it is not the case that it {p} {n}.",
                    ],
                );
                t.replace("{d}", d).replace("{l}", label).replace("{p}", ph).replace("{n}", n)
            }
            _ => {
                let t = pick(
                    rng,
                    &["{d} ({l}) does not fit the whole description.", "{d} ({l}) fails part of the description."],
                );
                t.replace("{d}", d).replace("{l}", label)
            }
        }
    }
}
