//! Positioned errors for pipeline files: `file:line:column: error: message`, with the
//! offending line and a caret, like a compiler.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub col: usize,
}

/// A source file's text, kept to quote lines in messages.
#[derive(Clone, Debug)]
pub struct SourceText {
    /// The path as the user gave it.
    pub path: PathBuf,
    /// The text.
    pub text: Arc<str>,
}

impl SourceText {
    /// The text of a line (1-based), if it exists.
    pub fn line(&self, n: usize) -> Option<&str> {
        self.text.lines().nth(n.checked_sub(1)?)
    }
}

/// One problem in a pipeline file.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    /// Where, if known.
    pub pos: Option<Pos>,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at a position.
    pub fn at(pos: Option<Pos>, message: impl Into<String>) -> Self {
        Diagnostic { pos, message: message.into(), help: None }
    }

    /// Adds a hint.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// All problems found in one pipeline file; validation reports them together.
#[derive(Clone, Debug)]
pub struct SpecErrors {
    /// The file.
    pub source: SourceText,
    /// The problems, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecErrors {
    /// Errors for a file.
    pub fn new(source: SourceText, mut diagnostics: Vec<Diagnostic>) -> Self {
        diagnostics.sort_by_key(|d| d.pos.unwrap_or_default());
        SpecErrors { source, diagnostics }
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.source.path.display();
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match d.pos {
                Some(p) => writeln!(f, "{path}:{}:{}: error: {}", p.line, p.col, d.message)?,
                None => writeln!(f, "{path}: error: {}", d.message)?,
            }
            if let Some(p) = d.pos
                && let Some(line) = self.source.line(p.line)
            {
                let shown: String = line.chars().take(200).collect();
                let gutter = p.line.to_string();
                writeln!(f, "{:w$} |", "", w = gutter.len())?;
                writeln!(f, "{gutter} | {shown}")?;
                let caret_col = p.col.saturating_sub(1).min(shown.chars().count());
                writeln!(f, "{:w$} | {:c$}^", "", "", w = gutter.len(), c = caret_col)?;
            }
            if let Some(h) = &d.help {
                writeln!(f, "  = help: {h}")?;
            }
        }
        let n = self.diagnostics.len();
        write!(f, "{n} error{} in {path}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for SpecErrors {}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase());
        let lev = strsim::levenshtein(word, c);
        let ok = score >= 0.8 || lev <= 2 || (word.len() > 3 && c.contains(word));
        if ok && best.is_none_or(|(_, s)| score > s) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c)
}

/// "did you mean `x`?" or a list of what is allowed.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str> + Clone) -> String {
    match closest(word, candidates.clone()) {
        Some(c) => format!("did you mean `{c}`?"),
        None => {
            let all: Vec<&str> = candidates.into_iter().collect();
            if all.is_empty() {
                "nothing is allowed here".to_string()
            } else {
                format!("expected one of: {}", all.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

/// The message of a panic (its payload), for an error that says what went wrong.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}
