//! One multiple-choice item: the rows of the `questions` table as a Rust value.

use serde::{Deserialize, Serialize};

/// One option of a multiple-choice item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// `A`, `B`, …
    pub label: String,
    /// The option's text.
    pub text: String,
}

impl Choice {
    /// An option.
    pub fn new(label: impl Into<String>, text: impl Into<String>) -> Self {
        Choice { label: label.into(), text: text.into() }
    }
}

/// One row of the `questions` table (DESIGN's data contract).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// Stable id.
    pub id: String,
    /// Where it came from.
    pub source: String,
    /// Language code.
    pub language: String,
    /// The stem.
    pub question: String,
    /// Supporting text (PubMedQA's abstract).
    pub context: Option<String>,
    /// The options.
    pub options: Vec<Choice>,
    /// The correct label (labels joined by `,` when `multi_answer`).
    pub answer: String,
    /// Several labels are correct.
    pub multi_answer: bool,
    /// The source's explanation.
    pub explanation: Option<String>,
    /// Subject or topic.
    pub subject: Option<String>,
    /// `easy`, `moderate` or `difficult`.
    pub difficulty: Option<String>,
    /// Evidence behind the difficulty label (JSON).
    pub difficulty_evidence: Option<String>,
    /// KG entity and relation ids behind a synthetic item.
    pub kg_path: Vec<String>,
    /// Ids of the rows this item came from.
    pub parents: Vec<String>,
    /// Other source fields (JSON).
    pub meta: Option<String>,
}

impl Question {
    /// The correct labels (one, or several for multi-answer items).
    pub fn answers(&self) -> Vec<&str> {
        if self.multi_answer {
            self.answer.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
        } else {
            vec![self.answer.trim()]
        }
    }

    /// Whether `given` (one label, or comma-separated labels) is exactly the answer set.
    pub fn is_answered_by(&self, given: &str) -> bool {
        let mut want: Vec<&str> = self.answers();
        want.sort_unstable();
        want.dedup();
        let mut got: Vec<&str> = given.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        got.sort_unstable();
        got.dedup();
        !want.is_empty() && want == got
    }

    /// The text of the option with `label`.
    pub fn option_text(&self, label: &str) -> Option<&str> {
        self.options.iter().find(|c| c.label == label).map(|c| c.text.as_str())
    }
}

/// Option labels in order: `A`..`Z`.
pub fn label(i: usize) -> String {
    char::from(b'A' + (i % 26) as u8).to_string()
}

/// Content-derived id: `prefix` + 16 hex of BLAKE3 over the stem and options.
pub fn content_id(prefix: &str, question: &str, options: &[Choice]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(question.as_bytes());
    for c in options {
        h.update(&[0]);
        h.update(c.label.as_bytes());
        h.update(&[1]);
        h.update(c.text.as_bytes());
    }
    let hex = h.finalize().to_hex();
    format!("{prefix}{}", &hex.as_str()[..16])
}

/// Digest of everything about an item that can change a model's answer or its score:
/// stem, context, options, gold answer and whether several options are correct. Memo keys
/// of evaluation and mining use it, so an edited item is asked again.
pub fn item_digest(q: &Question) -> String {
    let mut h = blake3::Hasher::new();
    for part in [q.question.as_str(), q.context.as_deref().unwrap_or(""), q.answer.as_str()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(&[q.multi_answer as u8, q.context.is_some() as u8]);
    for c in &q.options {
        h.update(&(c.label.len() as u64).to_le_bytes());
        h.update(c.label.as_bytes());
        h.update(&(c.text.len() as u64).to_le_bytes());
        h.update(c.text.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_sets_compare_as_sets() {
        let q = Question { answer: "C, A".into(), multi_answer: true, ..Default::default() };
        assert!(q.is_answered_by("A,C"));
        assert!(q.is_answered_by("C,A,A"));
        assert!(!q.is_answered_by("A"));
        assert!(!q.is_answered_by(""));
        let one = Question { answer: "B".into(), ..Default::default() };
        assert!(one.is_answered_by("B"));
        assert!(!one.is_answered_by("B,C"));
    }

    #[test]
    fn item_digest_sees_every_field_that_matters() {
        let q = Question {
            question: "Which?".into(),
            options: vec![Choice::new("A", "x"), Choice::new("B", "y")],
            answer: "A".into(),
            ..Default::default()
        };
        let d = item_digest(&q);
        assert_eq!(d, item_digest(&Question { id: "other id".into(), subject: Some("s".into()), ..q.clone() }));
        assert_ne!(d, item_digest(&Question { answer: "B".into(), ..q.clone() }));
        assert_ne!(d, item_digest(&Question { context: Some(String::new()), ..q.clone() }));
        assert_ne!(d, item_digest(&Question { options: vec![Choice::new("A", "xy")], ..q.clone() }));
    }
}
