//! The strict answer extractor: the one rule by which a completion's answer is read,
//! used for pass rates (validate, difficulty-label, mine-hard), teacher verification
//! (distill), rewards (GRPO) and scores (evaluate).
//!
//! It never guesses:
//! - a truncated completion (the generation hit its token limit) is not scored;
//! - when the completion opens `<think>`, only the text after the last `</think>` counts,
//!   so an answer mentioned while reasoning is not taken; an unclosed `<think>` has no answer;
//! - exactly one `<answer>…</answer>` must follow; none, an unclosed one, or several are
//!   reasons, not answers;
//! - the tag holds a label (`B`, `(B)`, `B.`, `b`), a label with its own option text
//!   (`B. Heparin`), exactly one option's text (`heparin`), or, for a multi-answer item,
//!   labels separated by commas, spaces, `;`, `/` or `and` (`A, C`). Several labels for a
//!   single-answer item count as `several`; anything else is not an option.

use std::fmt;

use crate::item::{Choice, Question};

/// How a completion counts, as the `status` column of evaluation results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// An answer was read (right or wrong).
    Ok,
    /// No `<answer>` tag after the reasoning (or the reasoning never closed).
    NoAnswer,
    /// The generation stopped at its token limit.
    Truncated,
    /// The tag holds nothing, or something that is not an option.
    Invalid,
    /// Several answer tags, or several options for a single-answer item.
    Several,
}

impl Status {
    /// Every status, in report order.
    pub const ALL: [Status; 5] = [Status::Ok, Status::NoAnswer, Status::Truncated, Status::Invalid, Status::Several];

    /// The name stored in tables (`ok`, `no_answer`, `truncated`, `invalid`, `several`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NoAnswer => "no_answer",
            Status::Truncated => "truncated",
            Status::Invalid => "invalid",
            Status::Several => "several",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a completion has no usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    /// Generation stopped at the token limit: whatever it wrote is unfinished.
    #[error("the completion was truncated at the token limit")]
    Truncated,
    /// `<think>` was opened and never closed.
    #[error("<think> is never closed")]
    UnclosedThink,
    /// No complete `<answer>…</answer>` after the reasoning.
    #[error("no <answer>…</answer> after the reasoning")]
    MissingTag,
    /// More than one answer tag: we do not pick one.
    #[error("{count} <answer> tags")]
    SeveralTags {
        /// How many `<answer>` openings were found.
        count: usize,
    },
    /// Several options for an item with one correct option.
    #[error("{count} options given for a single-answer item")]
    SeveralOptions {
        /// How many distinct options the tag named.
        count: usize,
    },
    /// The tag is empty.
    #[error("the <answer> tag is empty")]
    Empty,
    /// The tag holds something that is not one of the options.
    #[error("{text:?} is not one of the options")]
    NotAnOption {
        /// What the tag held (at most 80 characters).
        text: String,
    },
}

impl NoAnswer {
    /// The status this reason counts as.
    pub fn status(&self) -> Status {
        match self {
            NoAnswer::Truncated => Status::Truncated,
            NoAnswer::UnclosedThink | NoAnswer::MissingTag => Status::NoAnswer,
            NoAnswer::SeveralTags { .. } | NoAnswer::SeveralOptions { .. } => Status::Several,
            NoAnswer::Empty | NoAnswer::NotAnOption { .. } => Status::Invalid,
        }
    }
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const OPEN: &str = "<answer>";
const CLOSE: &str = "</answer>";

/// The chosen labels of a completion: one label, or for a multi-answer item the labels in
/// option order joined by `,`.
pub fn extract(completion: &str, options: &[Choice], multi_answer: bool, truncated: bool) -> Result<String, NoAnswer> {
    if truncated {
        return Err(NoAnswer::Truncated);
    }
    let inner = answer_tag(completion)?;
    parse_answer(inner, options, multi_answer)
}

/// The text inside the one answer tag after the reasoning.
fn answer_tag(completion: &str) -> Result<&str, NoAnswer> {
    let tail = match completion.rfind(THINK_CLOSE) {
        Some(i) => &completion[i + THINK_CLOSE.len()..],
        None if completion.contains(THINK_OPEN) => return Err(NoAnswer::UnclosedThink),
        None => completion,
    };
    let Some(open) = tail.find(OPEN) else { return Err(NoAnswer::MissingTag) };
    let after = &tail[open + OPEN.len()..];
    let more = after.matches(OPEN).count();
    if more > 0 {
        return Err(NoAnswer::SeveralTags { count: more + 1 });
    }
    match after.find(CLOSE) {
        Some(j) => Ok(&after[..j]),
        None => Err(NoAnswer::MissingTag),
    }
}

/// Reads the labels a tag's text names.
fn parse_answer(inner: &str, options: &[Choice], multi_answer: bool) -> Result<String, NoAnswer> {
    let t = inner.trim();
    if t.is_empty() {
        return Err(NoAnswer::Empty);
    }
    if let Some(i) = single_label(t, options) {
        return Ok(options[i].label.clone());
    }
    if let Some(mask) = label_list(t, options) {
        let count = mask.count_ones() as usize;
        if count > 1 && !multi_answer {
            return Err(NoAnswer::SeveralOptions { count });
        }
        let mut out = String::with_capacity(2 * count);
        for (i, c) in options.iter().enumerate() {
            if mask & (1 << i) != 0 {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(&c.label);
            }
        }
        return Ok(out);
    }
    let mut hit = None;
    for (i, c) in options.iter().enumerate() {
        if eq_loose(t.trim_end_matches('.'), c.text.trim().trim_end_matches('.')) {
            if hit.is_some() {
                hit = None;
                break;
            }
            hit = Some(i);
        }
    }
    match hit {
        Some(i) => Ok(options[i].label.clone()),
        None => Err(NoAnswer::NotAnOption { text: t.chars().take(80).collect() }),
    }
}

/// Which option `label` is, compared without regard to ASCII case.
fn label_index(label: &str, options: &[Choice]) -> Option<usize> {
    if label.is_empty() {
        return None;
    }
    options.iter().position(|c| c.label.eq_ignore_ascii_case(label))
}

/// `B`, `(B)`, `B.`, `B)`, `B:`, or a label followed by its own option's text.
fn single_label(t: &str, options: &[Choice]) -> Option<usize> {
    let (bare, paren) = match t.strip_prefix('(') {
        Some(rest) => (rest, true),
        None => (t, false),
    };
    for (i, c) in options.iter().enumerate() {
        let l = c.label.as_str();
        if l.is_empty() || bare.len() < l.len() || !bare.is_char_boundary(l.len()) {
            continue;
        }
        if !bare[..l.len()].eq_ignore_ascii_case(l) {
            continue;
        }
        let mut rest = &bare[l.len()..];
        if paren {
            let Some(r) = rest.strip_prefix(')') else { continue };
            rest = r;
        } else if let Some(r) = rest.strip_prefix([')', '.', ':']) {
            rest = r;
        } else if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            // `Because`: a word that starts with a label.
            continue;
        }
        let rest = rest.trim();
        if rest.is_empty() || eq_loose(rest.trim_end_matches('.'), c.text.trim().trim_end_matches('.')) {
            return Some(i);
        }
    }
    None
}

/// Labels separated by `,`, `;`, `/`, whitespace or `and` (each may be in parentheses),
/// as a bit set over the options; `None` unless every piece is a label.
fn label_list(t: &str, options: &[Choice]) -> Option<u64> {
    if options.len() > 64 {
        return None;
    }
    let mut mask = 0u64;
    let mut any = false;
    for piece in t.split([',', ';', '/', ' ', '\t', '\n', '\r']) {
        let p = piece.trim().trim_start_matches('(').trim_end_matches([')', '.']);
        if p.is_empty() || p.eq_ignore_ascii_case("and") || p == "&" {
            continue;
        }
        mask |= 1 << label_index(p, options)?;
        any = true;
    }
    any.then_some(mask)
}

/// Whether two texts are equal ignoring case and runs of whitespace (no allocation).
pub fn eq_loose(a: &str, b: &str) -> bool {
    let mut x = a.split_whitespace().flat_map(|w| std::iter::once(None).chain(w.chars().map(Some))).skip(1);
    let mut y = b.split_whitespace().flat_map(|w| std::iter::once(None).chain(w.chars().map(Some))).skip(1);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(None), Some(None)) => {}
            (Some(Some(c)), Some(Some(d))) => {
                if c != d && !(c.to_lowercase().eq(d.to_lowercase())) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Whether a completion is in the required format: one `<think>…</think>`, then one
/// `<answer>…</answer>`, nothing else but whitespace around them.
pub fn format_ok(completion: &str) -> bool {
    let t = completion.trim();
    let Some(body) = t.strip_prefix(THINK_OPEN) else { return false };
    let Some((reasoning, tail)) = body.split_once(THINK_CLOSE) else { return false };
    if reasoning.contains(THINK_OPEN) || tail.contains(THINK_OPEN) || tail.contains(THINK_CLOSE) {
        return false;
    }
    let Some(tag) = tail.trim_start().strip_prefix(OPEN).and_then(|r| r.strip_suffix(CLOSE)) else { return false };
    !tag.contains(OPEN) && !tag.contains(CLOSE) && !reasoning.contains(OPEN)
}

/// How one completion of one item scores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// How it counts.
    pub status: Status,
    /// The labels read (status `ok` only).
    pub answer: Option<String>,
    /// Why there is no answer (every status but `ok`).
    pub reason: Option<NoAnswer>,
    /// The answer is exactly the gold set.
    pub correct: bool,
    /// The completion is in the required `<think>…</think><answer>…</answer>` format.
    pub format_ok: bool,
}

/// Scores a completion of `q`: the extracted answer, its status, and whether it is right.
pub fn score(q: &Question, completion: &str, truncated: bool) -> Verdict {
    let format_ok = !truncated && format_ok(completion);
    match extract(completion, &q.options, q.multi_answer, truncated) {
        Ok(a) => {
            let correct = q.is_answered_by(&a);
            Verdict { status: Status::Ok, answer: Some(a), reason: None, correct, format_ok }
        }
        Err(r) => Verdict { status: r.status(), answer: None, reason: Some(r), correct: false, format_ok },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts() -> Vec<Choice> {
        [("A", "Aspirin"), ("B", "Heparin"), ("C", "Warfarin"), ("D", "None of the above")]
            .iter()
            .map(|(a, b)| Choice::new(*a, *b))
            .collect()
    }

    fn one(c: &str) -> Result<String, NoAnswer> {
        extract(c, &opts(), false, false)
    }

    #[test]
    fn extracts_labels_in_the_accepted_forms() {
        for c in [
            "<think>x</think><answer>B</answer>",
            "<think>x</think>\n<answer> (B) </answer>",
            "<think>x</think><answer>B. Heparin</answer>",
            "<think>x</think><answer>B) heparin.</answer>",
            "<think>x</think><answer>heparin</answer>",
            "<think>x</think><answer>b</answer>",
            "<answer>B)</answer>",
            "<answer>B:</answer> done",
        ] {
            assert_eq!(one(c), Ok("B".into()), "{c}");
        }
    }

    #[test]
    fn says_why_there_is_no_answer() {
        let o = opts();
        assert_eq!(extract("<think>x</think><answer>B</answer>", &o, false, true), Err(NoAnswer::Truncated));
        assert_eq!(one("<think>the answer is B"), Err(NoAnswer::UnclosedThink));
        assert_eq!(one("<think><answer>B</answer> hmm"), Err(NoAnswer::UnclosedThink));
        assert_eq!(one("The answer is B"), Err(NoAnswer::MissingTag));
        assert_eq!(one("<think>x</think><answer>B"), Err(NoAnswer::MissingTag));
        assert_eq!(
            one("<think>x</think><answer>A</answer><answer>B</answer>"),
            Err(NoAnswer::SeveralTags { count: 2 })
        );
        assert_eq!(one("<think>x</think><answer>A</answer><answer>B"), Err(NoAnswer::SeveralTags { count: 2 }));
        assert_eq!(one("<think>x</think><answer>A, B</answer>"), Err(NoAnswer::SeveralOptions { count: 2 }));
        assert_eq!(one("<think>x</think><answer> </answer>"), Err(NoAnswer::Empty));
        assert_eq!(one("<think>x</think><answer>E</answer>"), Err(NoAnswer::NotAnOption { text: "E".into() }));
        assert_eq!(
            one("<think>x</think><answer>B. Warfarin</answer>"),
            Err(NoAnswer::NotAnOption { text: "B. Warfarin".into() })
        );
        assert_eq!(
            one("<think>x</think><answer>Because</answer>"),
            Err(NoAnswer::NotAnOption { text: "Because".into() })
        );
    }

    #[test]
    fn multi_answer_items_take_a_set_of_labels() {
        let o = opts();
        for c in [
            "<answer>A,C</answer>",
            "<answer>C, A</answer>",
            "<answer>(A) and (C)</answer>",
            "<answer>A; C; A</answer>",
        ] {
            assert_eq!(extract(c, &o, true, false), Ok("A,C".into()), "{c}");
        }
        assert_eq!(extract("<answer>B</answer>", &o, true, false), Ok("B".into()));
        assert_eq!(
            extract("<answer>A, Z</answer>", &o, true, false),
            Err(NoAnswer::NotAnOption { text: "A, Z".into() })
        );
        let q = Question { options: o, answer: "C,A".into(), multi_answer: true, ..Default::default() };
        assert!(score(&q, "<think>.</think><answer>A, C</answer>", false).correct);
        assert!(!score(&q, "<think>.</think><answer>A</answer>", false).correct);
    }

    #[test]
    fn answers_inside_the_reasoning_do_not_count() {
        assert_eq!(one("<think>maybe <answer>A</answer>?</think><answer>C</answer>"), Ok("C".into()));
    }

    #[test]
    fn statuses_and_format() {
        let q = Question { options: opts(), answer: "B".into(), ..Default::default() };
        let v = score(&q, "<think>x</think>\n<answer>B</answer>\n", false);
        assert_eq!((v.status, v.correct, v.format_ok), (Status::Ok, true, true));
        let v = score(&q, "<answer>B</answer>", false);
        assert_eq!((v.status, v.correct, v.format_ok), (Status::Ok, true, false));
        let v = score(&q, "<think>x</think><answer>C</answer>", false);
        assert_eq!((v.status, v.correct, v.answer.as_deref()), (Status::Ok, false, Some("C")));
        for (c, s) in [
            ("<think>x", Status::NoAnswer),
            ("", Status::NoAnswer),
            ("<think>x</think><answer></answer>", Status::Invalid),
            ("<think>x</think><answer>A</answer><answer>A</answer>", Status::Several),
        ] {
            assert_eq!(score(&q, c, false).status, s, "{c}");
        }
        assert_eq!(score(&q, "<think>x</think><answer>B</answer>", true).status, Status::Truncated);
        assert!(!format_ok("<think>a</think><answer>B</answer> and more"));
        assert!(!format_ok("<think>a<think></think><answer>B</answer>"));
        assert!(!format_ok("<think>a</think><answer>B</answer><answer>B</answer>"));
    }

    #[test]
    fn loose_equality() {
        assert!(eq_loose("None  of the\nabove", "none of the above"));
        assert!(eq_loose("ÉTÉ", "été"));
        assert!(!eq_loose("none of", "none of the above"));
        assert!(!eq_loose("", "x"));
        assert!(eq_loose(" ", ""));
    }

    fn any_text() -> impl Strategy<Value = String> {
        // Arbitrary Unicode, with the tags and labels mixed in often enough to matter.
        let piece = prop_oneof![
            any::<String>(),
            Just("<think>".to_string()),
            Just("</think>".to_string()),
            Just("<answer>".to_string()),
            Just("</answer>".to_string()),
            Just("B".to_string()),
            Just("İ".to_string()),
            Just("ẞ".to_string()),
            Just(", ".to_string()),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_replies(text in any_text(), multi in any::<bool>(), truncated in any::<bool>(),
                                             labels in proptest::collection::vec(any::<String>(), 0..6)) {
            let mut options = opts();
            options.extend(labels.iter().enumerate().map(|(i, l)| Choice::new(l.clone(), format!("{l} {i}"))));
            let q = Question { options: options.clone(), answer: "B".into(), multi_answer: multi, ..Default::default() };
            let v = score(&q, &text, truncated);
            prop_assert_eq!(v.status == Status::Ok, v.answer.is_some());
            if v.correct { prop_assert_eq!(v.status, Status::Ok); }
            if let Some(r) = &v.reason { prop_assert_eq!(r.status(), v.status); }
            let _ = format_ok(&text);
        }

        #[test]
        fn the_written_format_always_reads_back(reasoning in "[^<]{0,40}", pick in 0usize..4) {
            let q = Question { options: opts(), answer: "B".into(), ..Default::default() };
            let label = ["A", "B", "C", "D"][pick];
            let v = score(&q, &crate::prompt::completion(&reasoning, label), false);
            prop_assert_eq!(v.answer.as_deref(), Some(label));
            prop_assert!(v.format_ok);
        }
    }
}
