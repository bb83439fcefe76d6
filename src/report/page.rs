//! The sections of the page — legend, graph, stage table, curves, evaluations — shared by
//! the static report (one file, links within it) and `fleming ui` (links to its pages).

use std::fmt::Write;

use fleming_runtime::checks::{CheckResult, CheckStatus};

use super::html::{STYLE, escape};
use super::{PipelineView, Status, curves, dag};

/// Where a stage's name links to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// To its row of the stage table in the same page (the static report).
    Anchors,
    /// To its own page (`fleming ui`).
    Pages,
}

impl Links {
    /// The address of a stage.
    pub fn stage(self, name: &str) -> String {
        match self {
            Links::Anchors => format!("#stage-{}", escape(name)),
            Links::Pages => format!("/stage/{}", escape(&url_escape(name))),
        }
    }
}

/// A stage name made safe in a URL path segment.
pub fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `<!doctype html>` … `<body>` with the title as heading; `head_extra` goes in `<head>`.
pub fn open(s: &mut String, title: &str, head_extra: &str) {
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t}</title><style>{STYLE}</style>{head_extra}</head><body>\n",
        t = escape(title),
    );
}

/// The one-line count of stages by status.
pub fn summary(view: &PipelineView) -> String {
    let count = |st: Status| view.stages.iter().filter(|s| s.status == st).count();
    let mut parts = Vec::new();
    for st in Status::ALL {
        let n = count(st);
        if n > 0 || matches!(st, Status::Cached | Status::Stale) {
            parts.push(format!("{n} {}", st.label()));
        }
    }
    format!("{} stages: {}.", view.stages.len(), parts.join(", "))
}

/// The colours of the statuses.
pub fn legend(s: &mut String) {
    s.push_str("<p class=\"legend\">");
    for st in Status::ALL {
        let _ = write!(s, "<span style=\"background:{}\">{}</span>", dag::colour(st), st.label());
    }
    s.push_str("</p>\n");
}

/// The graph in its scrolling box.
pub fn graph(s: &mut String, view: &PipelineView, links: Links) {
    legend(s);
    s.push_str("<div class=\"dagbox\">");
    s.push_str(&dag::svg(&view.stages, &|name| links.stage(name)));
    s.push_str("</div>\n");
}

/// One check as a short line.
pub fn check_line(c: &CheckResult) -> String {
    match c.status {
        CheckStatus::Passed => format!("{} ✓", escape(&c.name)),
        CheckStatus::Failed => format!("{}: failed, {} failing row(s)", escape(&c.name), c.failing_rows),
        CheckStatus::Error => format!("{}: error (the check could not run)", escape(&c.name)),
    }
}

/// The table of stages: status, why, outputs, checks, key.
pub fn stage_table(s: &mut String, view: &PipelineView, links: Links) {
    s.push_str("<table class=\"stages\"><tr><th>stage</th><th>op</th><th>status</th><th>why</th><th>outputs</th><th>checks</th><th>key</th></tr>\n");
    for st in &view.stages {
        let outputs: Vec<String> = st
            .outputs
            .iter()
            .map(|o| match o.rows {
                Some(r) => format!("{}: {} rows", escape(&o.port), r),
                None => format!("{}: {} ({} bytes)", escape(&o.port), o.kind, o.bytes),
            })
            .collect();
        let checks: Vec<String> = st.checks.iter().map(check_line).collect();
        let key = st.key.as_deref().map(|k| k.chars().take(12).collect::<String>()).unwrap_or_default();
        let why = match &st.progress {
            Some(p) => escape(p),
            None => escape(&st.reason),
        };
        let _ = writeln!(
            s,
            "<tr id=\"stage-{name}\" data-stage=\"{name}\" data-status=\"{status}\"><td><a href=\"{href}\"><code>{name}</code></a></td><td>{op}</td><td class=\"status\" style=\"background:{fill}\">{status}</td><td class=\"why\">{why}</td><td>{outputs}</td><td>{checks}</td><td><code>{key}</code></td></tr>",
            name = escape(&st.name),
            href = links.stage(&st.name),
            op = escape(&st.op),
            status = st.status.label(),
            fill = dag::colour(st.status),
            outputs = outputs.join("<br>"),
            checks = checks.join("<br>"),
        );
    }
    s.push_str("</table>\n");
}

/// Every stage's curves, a chart per metric.
pub fn curve_sections(s: &mut String, view: &PipelineView) {
    for c in &view.curves {
        let _ = write!(s, "<h3 id=\"curves-{0}\"><code>{0}</code></h3>\n<div class=\"curves\">", escape(&c.stage));
        for series in &c.series {
            s.push_str(&curves::svg(series));
        }
        s.push_str("</div>\n");
    }
}

/// Each evaluation's own report: the ablation as bars with error bars, Table 1, Table 2.
pub fn evaluation_sections(s: &mut String, view: &PipelineView) {
    for e in &view.evaluations {
        let _ = writeln!(s, "<h3 id=\"eval-{0}\"><code>{0}</code></h3>", escape(&e.stage));
        if let Some(doc) = &e.report {
            let _ =
                writeln!(s, "<iframe title=\"evaluation {}\" srcdoc=\"{}\"></iframe>", escape(&e.stage), escape(doc));
        }
    }
}

/// The whole static report.
pub fn render(view: &PipelineView) -> String {
    let mut s = String::new();
    let title = format!("Pipeline {}", view.name);
    open(&mut s, &title, "");
    let _ = writeln!(s, "<h1>{}</h1>", escape(&title));
    if !view.description.is_empty() {
        let _ = writeln!(s, "<p>{}</p>", escape(&view.description));
    }
    let _ = writeln!(s, "<p>{}</p>", summary(view));
    s.push_str("<h2>Graph</h2>\n");
    graph(&mut s, view, Links::Anchors);
    s.push_str("<h2>Stages</h2>\n");
    stage_table(&mut s, view, Links::Anchors);
    if !view.curves.is_empty() {
        s.push_str("<h2>Training curves</h2>\n");
        curve_sections(&mut s, view);
    }
    if !view.evaluations.is_empty() {
        s.push_str("<h2>Evaluation</h2>\n");
        evaluation_sections(&mut s, view);
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_escape_keeps_safe_characters_only() {
        assert_eq!(super::url_escape("rl1"), "rl1");
        assert_eq!(super::url_escape("a b/é"), "a%20b%2F%C3%A9");
    }
}
