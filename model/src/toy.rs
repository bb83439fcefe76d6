//! A templated multiple-choice task (which drug treats which made-up disease)
//! for the learning test, smoke runs and benchmarks. Deterministic from a seed.

use crate::chat;
use fleming_questions::{Choice, Question};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One question with its options and the correct label.
#[derive(Debug, Clone, PartialEq)]
pub struct ToyQuestion {
    /// The item (stem, options, correct label) in the shared question format.
    pub item: Question,
    /// The fact the reasoning states.
    pub reasoning: String,
}

impl ToyQuestion {
    /// The chat prompt (system + user + open assistant turn).
    pub fn prompt(&self) -> String {
        chat::question_prompt(&self.item)
    }
    /// The target completion in the `<think>`/`<answer>` convention, ending the turn.
    pub fn completion(&self) -> String {
        chat::training_completion(&self.reasoning, &self.item.answer)
    }
}

/// A fixed world of diseases, each treated by one drug.
#[derive(Debug, Clone)]
pub struct ToyTask {
    /// `(disease, drug)` facts.
    pub facts: Vec<(String, String)>,
    /// Every drug name.
    pub drugs: Vec<String>,
}

fn word(rng: &mut ChaCha8Rng, syllables: usize, suffix: &str) -> String {
    const C: &[u8] = b"bdfgklmnprstvz";
    const V: &[u8] = b"aeiou";
    let mut s = String::new();
    for _ in 0..syllables {
        s.push(C[rng.random_range(0..C.len())] as char);
        s.push(V[rng.random_range(0..V.len())] as char);
    }
    s.push_str(suffix);
    s
}

impl ToyTask {
    /// `diseases` facts over `drugs` drugs, names drawn from `seed`.
    pub fn new(diseases: usize, drugs: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut drug_names: Vec<String> = vec![];
        while drug_names.len() < drugs {
            let w = word(&mut rng, 2, ["ine", "ol", "mab", "pril"][drug_names.len() % 4]);
            if !drug_names.contains(&w) {
                drug_names.push(w);
            }
        }
        let mut facts: Vec<(String, String)> = vec![];
        while facts.len() < diseases {
            let d = word(&mut rng, 2, ["itis", "osis", "emia"][facts.len() % 3]);
            if facts.iter().all(|(x, _)| *x != d) {
                let drug = drug_names[facts.len() % drugs].clone();
                facts.push((d, drug));
            }
        }
        ToyTask { facts, drugs: drug_names }
    }

    /// `n` questions with freshly shuffled options (`n_options` of them, A, B, …).
    pub fn questions(&self, n: usize, n_options: usize, seed: u64) -> Vec<ToyQuestion> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5151);
        (0..n)
            .map(|i| {
                let (disease, drug) = &self.facts[i % self.facts.len()];
                let mut opts: Vec<String> = vec![drug.clone()];
                let mut others: Vec<&String> = self.drugs.iter().filter(|d| *d != drug).collect();
                others.shuffle(&mut rng);
                opts.extend(others.into_iter().take(n_options.saturating_sub(1)).cloned());
                opts.shuffle(&mut rng);
                let options: Vec<Choice> =
                    opts.iter().enumerate().map(|(j, t)| Choice::new(fleming_questions::label(j), t.clone())).collect();
                let answer = options.iter().find(|c| &c.text == drug).map(|c| c.label.clone()).unwrap_or_default();
                // The reasoning checks each option in turn, so the answer letter is
                // read off a nearby "yes" rather than searched for in the prompt.
                let checks: Vec<String> = options
                    .iter()
                    .map(|c| format!("{}. {}: {}.", c.label, c.text, if &c.text == drug { "yes" } else { "no" }))
                    .collect();
                ToyQuestion {
                    item: Question {
                        id: format!("toy-{i}"),
                        question: format!("Which drug treats {disease}?"),
                        options,
                        answer,
                        ..Default::default()
                    },
                    reasoning: format!("{disease} is treated with {drug}. {}", checks.join(" ")),
                }
            })
            .collect()
    }
}
