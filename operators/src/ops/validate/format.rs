//! Format filtering: the structural and encoding problems that make an item unusable,
//! each with a reason.

use crate::questions::Question;

/// Option-count bounds and text limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Fewest options.
    pub min_options: usize,
    /// Most options.
    pub max_options: usize,
    /// Shortest stem, in characters.
    pub min_question_chars: usize,
}

/// Mojibake markers: UTF-8 read as Latin-1/Windows-1252 (`Ã©`, `â€™`, `Â `), and the
/// replacement character.
fn mojibake(s: &str) -> Option<&'static str> {
    if s.is_ascii() {
        return None;
    }
    if s.contains('\u{FFFD}') {
        return Some("replacement character U+FFFD");
    }
    let b = s.as_bytes();
    // Fast path: every marker starts with Ã (C3 83), Â (C3 82) or â (C3 A2).
    if !b.windows(2).any(|w| w[0] == 0xC3 && matches!(w[1], 0x82 | 0x83 | 0xA2)) {
        return None;
    }
    const MARKERS: [&str; 12] = ["Ã©", "Ã¨", "Ã¤", "Ã¶", "Ã¼", "Ã±", "Ã§", "Ã¡", "Ã³", "â€", "Â ", "Â°"];
    MARKERS.iter().find(|m| s.contains(*m)).map(|_| "mojibake (UTF-8 decoded as Latin-1)")
}

fn control(s: &str) -> Option<char> {
    // Fast path: printable ASCII and ordinary whitespace only.
    if s.bytes().all(|b| (0x20..0x7F).contains(&b) || matches!(b, b'\n' | b'\t' | b'\r')) {
        return None;
    }
    s.chars().find(|&c| {
        (c.is_control() && c != '\n' && c != '\t' && c != '\r') || matches!(c, '\u{200B}'..='\u{200D}' | '\u{FEFF}')
    })
}

/// Leftover markup: HTML tags and entities, wiki markup.
fn markup(s: &str) -> Option<&'static str> {
    let b = s.as_bytes();
    let (tags, entities) = (b.contains(&b'<'), b.contains(&b'&'));
    let lower = if tags || entities { s.to_ascii_lowercase() } else { String::new() };
    for tag in [
        "<br", "<p>", "</p", "<div", "</div", "<span", "</span", "<img", "<sup>", "<sub>", "</sup", "</sub", "<table",
        "<td", "<tr", "<b>", "</b>", "<i>", "</i>", "<a href", "</a>", "<li>", "<ul>",
    ] {
        if tags && lower.contains(tag) {
            return Some("leftover HTML tag");
        }
    }
    for ent in ["&amp;", "&lt;", "&gt;", "&nbsp;", "&quot;", "&#"] {
        if entities && lower.contains(ent) {
            return Some("leftover HTML entity");
        }
    }
    if s.contains("[[") || s.contains("]]") || s.contains("{{") || s.contains("}}") || s.contains("'''") {
        return Some("leftover wiki markup");
    }
    None
}

/// Normalised form for comparing options and deduplicating: lower case, alphanumerics
/// (any script) kept, everything else collapsed to single spaces.
pub fn normalise(s: &str, out: &mut String) {
    let mut space = true;
    if s.is_ascii() {
        // The same rule on bytes (most items are ASCII): alphanumeric runs, lower-cased,
        // joined by single spaces.
        out.reserve(s.len());
        let mut first = true;
        for word in s.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
            if !first {
                out.push(' ');
            }
            first = false;
            let at = out.len();
            out.push_str(word);
            out[at..].make_ascii_lowercase();
        }
        return;
    }
    for c in s.chars() {
        if c.is_alphanumeric() {
            if c.is_ascii() {
                out.push(c.to_ascii_lowercase());
            } else {
                out.extend(c.to_lowercase());
            }
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
}

fn text_problem(what: &str, s: &str) -> Option<String> {
    if let Some(m) = mojibake(s) {
        return Some(format!("encoding artefact in {what}: {m}"));
    }
    if let Some(c) = control(s) {
        return Some(format!("encoding artefact in {what}: control character U+{:04X}", c as u32));
    }
    markup(s).map(|m| format!("{m} in {what}"))
}

/// The first problem of an item, or `None` when it is well-formed.
pub fn check(q: &Question, l: &Limits) -> Option<String> {
    let stem = q.question.trim();
    if stem.is_empty() {
        return Some("empty question".into());
    }
    if stem.chars().count() < l.min_question_chars {
        return Some(format!("malformed question: shorter than {} characters", l.min_question_chars));
    }
    let n = q.options.len();
    if n < l.min_options || n > l.max_options {
        return Some(format!("wrong option count: {n} (expected {}–{})", l.min_options, l.max_options));
    }
    let mut seen_labels: Vec<&str> = Vec::with_capacity(n);
    let mut seen_texts: Vec<(String, &str)> = Vec::with_capacity(n);
    for c in &q.options {
        if c.label.trim().is_empty() {
            return Some("option without a label".into());
        }
        if seen_labels.contains(&c.label.as_str()) {
            return Some(format!("duplicate option label `{}`", c.label));
        }
        seen_labels.push(&c.label);
        if c.text.trim().is_empty() {
            return Some(format!("empty option {}", c.label));
        }
        let mut norm = String::with_capacity(c.text.len());
        normalise(&c.text, &mut norm);
        if let Some((_, other)) = seen_texts.iter().find(|(t, _)| *t == norm) {
            return Some(format!("duplicate options {other} and {}", c.label));
        }
        seen_texts.push((norm, &c.label));
    }
    let answers = q.answers();
    if answers.is_empty() {
        return Some("no answer".into());
    }
    for a in &answers {
        if !seen_labels.contains(a) {
            return Some(format!("answer `{a}` is not among the options ({})", seen_labels.join(", ")));
        }
    }
    if let Some(p) = text_problem("question", &q.question) {
        return Some(p);
    }
    if let Some(ctx) = &q.context
        && let Some(p) = text_problem("context", ctx)
    {
        return Some(p);
    }
    for c in &q.options {
        if let Some(p) = text_problem(&format!("option {}", c.label), &c.text) {
            return Some(p);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::questions::Choice;

    fn q(stem: &str, opts: &[&str], answer: &str) -> Question {
        Question {
            id: "x".into(),
            question: stem.into(),
            options: opts.iter().enumerate().map(|(i, t)| Choice::new(crate::questions::label(i), *t)).collect(),
            answer: answer.into(),
            ..Default::default()
        }
    }

    #[test]
    fn reasons() {
        let l = Limits { min_options: 3, max_options: 5, min_question_chars: 10 };
        let ok = q("Which drug treats it best?", &["Aspirin", "Heparin", "Warfarin"], "B");
        assert_eq!(check(&ok, &l), None);
        let cases = [
            (q("", &["a", "b", "c"], "A"), "empty question"),
            (q("Short?", &["a", "b", "c"], "A"), "malformed question: shorter than 10 characters"),
            (q("Which drug treats it?", &["a", "b"], "A"), "wrong option count: 2 (expected 3–5)"),
            (q("Which drug treats it?", &["a", " ", "c"], "A"), "empty option B"),
            (q("Which drug treats it?", &["Aspirin", "aspirin.", "c"], "A"), "duplicate options A and B"),
            (q("Which drug treats it?", &["a", "b", "c"], "D"), "answer `D` is not among the options (A, B, C)"),
            (
                q("Which drug trÃ©ats it?", &["a", "b", "c"], "A"),
                "encoding artefact in question: mojibake (UTF-8 decoded as Latin-1)",
            ),
            (
                q("Which drug treats it?\u{7}", &["a", "b", "c"], "A"),
                "encoding artefact in question: control character U+0007",
            ),
            (q("Which drug treats it?", &["a<br/>", "b", "c"], "A"), "leftover HTML tag in option A"),
            (q("Which drug &amp; dose?", &["a", "b", "c"], "A"), "leftover HTML entity in question"),
            (q("Which [[drug]] treats it?", &["a", "b", "c"], "A"), "leftover wiki markup in question"),
            (
                q("Which drug treats it?", &["a", "b", "c\u{FFFD}"], "A"),
                "encoding artefact in option C: replacement character U+FFFD",
            ),
        ];
        for (item, want) in cases {
            assert_eq!(check(&item, &l).as_deref(), Some(want));
        }
    }
}
