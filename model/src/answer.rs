//! The one answer extractor used everywhere (evaluation, rewards, mining).
//! It returns the chosen option or the reason there is none; it never guesses.

use serde::{Deserialize, Serialize};

/// Why a completion has no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NoAnswer {
    /// Generation stopped at the token limit: whatever it wrote is unfinished.
    #[error("the completion was truncated")]
    Truncated,
    /// No complete `<answer>…</answer>` after the reasoning.
    #[error("no <answer>…</answer> tag")]
    MissingTag,
    /// More than one answer tag: we do not pick one.
    #[error("{count} answer tags")]
    SeveralAnswers {
        /// How many were found.
        count: usize,
    },
    /// The tag holds something that is not one of the options.
    #[error("{text:?} is not one of the options")]
    NotAnOption {
        /// What the tag held.
        text: String,
    },
}

const OPEN: &str = "<answer>";
const CLOSE: &str = "</answer>";

/// Extracts the chosen option label from a completion.
///
/// * `options`: `(label, text)` pairs, e.g. `("A", "Aspirin")`.
/// * `truncated`: the generation hit its token limit; such output is never scored.
///
/// Only text after the last `</think>` counts when the completion opened a
/// `<think>` block, so an answer mentioned while reasoning is not taken.
/// The tag may hold the label (`B`, `(B)`, `B.`), the label followed by the
/// option's exact text (`B. Aspirin`), or exactly one option's text.
pub fn extract_answer(completion: &str, options: &[(String, String)], truncated: bool) -> Result<String, NoAnswer> {
    if truncated {
        return Err(NoAnswer::Truncated);
    }
    let tail = match completion.rfind("</think>") {
        Some(i) => &completion[i + "</think>".len()..],
        None if completion.contains("<think>") => return Err(NoAnswer::MissingTag),
        None => completion,
    };
    let mut found = vec![];
    let mut rest = tail;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        match after.find(CLOSE) {
            Some(j) => {
                found.push(&after[..j]);
                rest = &after[j + CLOSE.len()..];
            }
            None => break,
        }
    }
    let inner = match found.as_slice() {
        [] => return Err(NoAnswer::MissingTag),
        [one] => one.trim(),
        many => return Err(NoAnswer::SeveralAnswers { count: many.len() }),
    };
    match_option(inner, options).ok_or_else(|| NoAnswer::NotAnOption { text: inner.to_string() })
}

fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn match_option(inner: &str, options: &[(String, String)]) -> Option<String> {
    let bare = inner.trim().trim_start_matches('(').trim();
    for (label, text) in options {
        let Some(rest) = bare.strip_prefix(label.as_str()) else { continue };
        let rest = rest.trim_start_matches([')', '.', ':']).trim();
        if rest.is_empty() || norm(rest) == norm(text) {
            // `(B)`, `B.`, `B) text`: the label alone or followed by its own text.
            if bare.len() == label.len() || bare[label.len()..].starts_with([')', '.', ':', ' ']) {
                return Some(label.clone());
            }
        }
    }
    let hits: Vec<_> = options.iter().filter(|(_, t)| norm(t) == norm(inner)).collect();
    match hits.as_slice() {
        [(label, _)] => Some(label.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Vec<(String, String)> {
        [("A", "Aspirin"), ("B", "Heparin"), ("C", "Warfarin"), ("D", "None of the above")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn extracts_labels_in_the_accepted_forms() {
        for c in [
            "<think>x</think><answer>B</answer>",
            "<think>x</think>\n<answer> (B) </answer>",
            "<think>x</think><answer>B. Heparin</answer>",
            "<think>x</think><answer>heparin</answer>",
            "<answer>B)</answer>",
        ] {
            assert_eq!(extract_answer(c, &opts(), false), Ok("B".into()), "{c}");
        }
    }

    #[test]
    fn says_why_there_is_no_answer() {
        let o = opts();
        assert_eq!(extract_answer("<think>x</think><answer>B</answer>", &o, true), Err(NoAnswer::Truncated));
        assert_eq!(extract_answer("<think>the answer is B", &o, false), Err(NoAnswer::MissingTag));
        assert_eq!(extract_answer("<think><answer>B</answer> hmm", &o, false), Err(NoAnswer::MissingTag));
        assert_eq!(extract_answer("The answer is B", &o, false), Err(NoAnswer::MissingTag));
        assert_eq!(extract_answer("<think>x</think><answer>B", &o, false), Err(NoAnswer::MissingTag));
        assert_eq!(
            extract_answer("<think>x</think><answer>A</answer><answer>B</answer>", &o, false),
            Err(NoAnswer::SeveralAnswers { count: 2 })
        );
        assert_eq!(
            extract_answer("<think>x</think><answer>E</answer>", &o, false),
            Err(NoAnswer::NotAnOption { text: "E".into() })
        );
        assert_eq!(
            extract_answer("<think>x</think><answer>B. Warfarin</answer>", &o, false),
            Err(NoAnswer::NotAnOption { text: "B. Warfarin".into() })
        );
        assert_eq!(
            extract_answer("<think>x</think><answer>Because</answer>", &o, false),
            Err(NoAnswer::NotAnOption { text: "Because".into() })
        );
    }

    #[test]
    fn answers_inside_the_reasoning_do_not_count() {
        let c = "<think>maybe <answer>A</answer>?</think><answer>C</answer>";
        assert_eq!(extract_answer(c, &opts(), false), Ok("C".into()));
    }
}
