//! The evaluation report: the paper's Table 1 layout (benchmarks as columns, macro average
//! last), the Table 2 layout for several models (Δ against the first model, a paired test
//! per step), accuracy by difficulty tier, and the counts of unscored answers — as Markdown
//! and as one self-contained HTML file (inline styles and SVG, nothing fetched).

use std::fmt::Write;

use fleming_questions::Status;

use super::{AVERAGE, ComparisonRow, Decoding, ScoreRow};

/// What the report shows.
pub(crate) struct Report<'a> {
    pub stage: &'a str,
    pub models: &'a [&'a str],
    /// Benchmark names and item counts, in input order.
    pub benchmarks: &'a [(&'a str, usize)],
    pub decoding: &'a Decoding,
    pub scores: &'a [ScoreRow],
    pub comparisons: &'a [ComparisonRow],
}

/// A cell of a table: text, and whether it is a number (right-aligned in HTML).
struct Cell(String, bool);

struct Grid {
    title: String,
    note: Option<String>,
    header: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

fn pct(x: f64) -> String {
    if x.is_finite() { format!("{:.1}", 100.0 * x) } else { "–".into() }
}

fn signed_pct(x: f64) -> String {
    if x.is_finite() { format!("{:+.1}", 100.0 * x) } else { "–".into() }
}

fn p_value(p: f64) -> String {
    if !p.is_finite() {
        "–".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

impl Report<'_> {
    fn score(&self, model: &str, bench: &str, tier: Option<&str>) -> Option<&ScoreRow> {
        self.scores.iter().find(|s| s.model == model && s.benchmark == bench && s.tier.as_deref() == tier)
    }

    fn grids(&self) -> Vec<Grid> {
        let mut grids = Vec::new();
        // Table 1: accuracy per benchmark, macro average last.
        let mut header = vec!["Model".to_string()];
        header.extend(self.benchmarks.iter().map(|(b, n)| format!("{b} (n={n})")));
        header.push("Avg".into());
        let rows = self
            .models
            .iter()
            .map(|m| {
                let mut row = vec![Cell(m.to_string(), false)];
                for (b, _) in self.benchmarks.iter().copied().chain([(AVERAGE, 0)]) {
                    let text = self
                        .score(m, b, None)
                        .map(|s| format!("{} ± {}", pct(s.accuracy.mean), pct(s.accuracy.stderr)))
                        .unwrap_or_else(|| "–".into());
                    row.push(Cell(text, true));
                }
                row
            })
            .collect();
        grids.push(Grid {
            title: "Table 1: accuracy per benchmark".into(),
            note: Some("Accuracy in %, ± standard error. Avg is the macro average over benchmarks.".into()),
            header,
            rows,
        });
        // Table 2: the ablation, when there are several models.
        if self.models.len() > 1 {
            let first = self.models[0];
            let first_avg = self.score(first, AVERAGE, None).map_or(f64::NAN, |s| s.accuracy.mean);
            let rows = self
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let avg = self.score(m, AVERAGE, None).map_or(f64::NAN, |s| s.accuracy.mean);
                    let step = self
                        .comparisons
                        .iter()
                        .find(|c| c.model == *m && c.against == "previous" && c.benchmark == AVERAGE);
                    let (delta_prev, test) = match step {
                        Some(c) => (
                            format!("{} ± {}", signed_pct(c.paired.delta), pct(c.paired.stderr)),
                            format!(
                                "{} p = {} (z = {:.2}; {} better, {} worse of {})",
                                c.paired.test,
                                p_value(c.paired.p_value),
                                c.paired.z,
                                c.paired.wins,
                                c.paired.losses,
                                c.paired.items
                            ),
                        ),
                        None => ("–".into(), "–".into()),
                    };
                    vec![
                        Cell(m.to_string(), false),
                        Cell(pct(avg), true),
                        Cell(if i == 0 { "–".into() } else { signed_pct(avg - first_avg) }, true),
                        Cell(delta_prev, true),
                        Cell(test, false),
                    ]
                })
                .collect();
            grids.push(Grid {
                title: "Table 2: ablation".into(),
                note: Some(format!(
                    "Models in the order given. Δ Avg is against `{first}`; each step is compared with the previous \
                     model on the same items."
                )),
                header: ["Model", "Avg", "Δ Avg", "Δ vs previous", "paired test vs previous"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                rows,
            });
        }
        // Accuracy by difficulty tier, when the items have tiers.
        let tiers: Vec<&str> = {
            let mut t: Vec<&str> = self.scores.iter().filter_map(|s| s.tier.as_deref()).collect();
            t.sort_by_key(|x| (super::tier_rank(x), *x));
            t.dedup();
            t
        };
        if !tiers.is_empty() {
            let mut header = vec!["Model".to_string(), "Benchmark".to_string()];
            header.extend(tiers.iter().map(|t| t.to_string()));
            let mut rows = Vec::new();
            for m in self.models {
                for (b, _) in self.benchmarks {
                    let mut row = vec![Cell(m.to_string(), false), Cell(b.to_string(), false)];
                    for t in &tiers {
                        let text = self
                            .score(m, b, Some(*t))
                            .map(|s| format!("{} (n={})", pct(s.accuracy.mean), s.items))
                            .unwrap_or_else(|| "–".into());
                        row.push(Cell(text, true));
                    }
                    rows.push(row);
                }
            }
            grids.push(Grid { title: "Accuracy by difficulty".into(), note: None, header, rows });
        }
        // How every answer was read.
        let mut header = vec!["Model".to_string(), "Benchmark".to_string(), "n".to_string()];
        header.extend(Status::ALL.iter().map(|s| s.as_str().to_string()));
        header.push("accuracy on parsed".into());
        let mut rows = Vec::new();
        for m in self.models {
            for (b, _) in self.benchmarks {
                if let Some(s) = self.score(m, b, None) {
                    let mut row =
                        vec![Cell(m.to_string(), false), Cell(b.to_string(), false), Cell(s.n.to_string(), true)];
                    for st in Status::ALL {
                        row.push(Cell(s.status.get(&st).copied().unwrap_or(0).to_string(), true));
                    }
                    row.push(Cell(s.accuracy_parsed.map(pct).unwrap_or_else(|| "–".into()), true));
                    rows.push(row);
                }
            }
        }
        grids.push(Grid {
            title: "How the answers were read".into(),
            note: Some(
                "Only `ok` answers can be right; the others count as wrong: `no_answer` (no <answer> tag after the \
                 reasoning), `truncated` (stopped at the token limit, or the prompt did not fit the model's context), `invalid` (empty, or not an option), `several` \
                 (several tags, or several options for a single-answer item)."
                    .into(),
            ),
            header,
            rows,
        });
        grids
    }

    fn intro(&self) -> String {
        format!(
            "{} model(s) on {} benchmark(s); {}; the shared prompt and strict answer extractor.",
            self.models.len(),
            self.benchmarks.len(),
            self.decoding.describe()
        )
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!("# Evaluation `{}`\n\n{}\n", self.stage, self.intro());
        for g in self.grids() {
            let _ = write!(s, "\n## {}\n\n", g.title);
            if let Some(n) = &g.note {
                let _ = write!(s, "{n}\n\n");
            }
            let _ = writeln!(s, "| {} |", g.header.join(" | "));
            let _ = writeln!(
                s,
                "|{}|",
                (0..g.header.len())
                    .map(|i| if g.rows.first().and_then(|r| r.get(i)).is_some_and(|c| c.1) { "---:" } else { "---" })
                    .collect::<Vec<_>>()
                    .join("|")
            );
            for r in &g.rows {
                let cells: Vec<String> = r.iter().map(|c| c.0.replace('|', "\\|")).collect();
                let _ = writeln!(s, "| {} |", cells.join(" | "));
            }
        }
        s
    }

    /// The report as one HTML page with no outside resources.
    pub fn html(&self) -> String {
        let mut s = String::from(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        );
        let _ = writeln!(s, "<title>Evaluation {}</title>", esc(self.stage));
        s.push_str(
            "<style>body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}\
             table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em}\
             th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
             p.note{color:#555;margin:.2em 0}svg text{font:12px system-ui,sans-serif}</style></head><body>\n",
        );
        let _ = write!(s, "<h1>Evaluation <code>{}</code></h1>\n<p>{}</p>\n", esc(self.stage), esc(&self.intro()));
        s.push_str(&self.bars());
        for g in self.grids() {
            let _ = writeln!(s, "<h2>{}</h2>", esc(&g.title));
            if let Some(n) = &g.note {
                let _ = writeln!(s, "<p class=\"note\">{}</p>", esc(n));
            }
            s.push_str("<table><thead><tr>");
            for h in &g.header {
                let _ = write!(s, "<th>{}</th>", esc(h));
            }
            s.push_str("</tr></thead><tbody>\n");
            for r in &g.rows {
                s.push_str("<tr>");
                for c in r {
                    let _ = write!(s, "<td{}>{}</td>", if c.1 { " class=\"n\"" } else { "" }, esc(&c.0));
                }
                s.push_str("</tr>\n");
            }
            s.push_str("</tbody></table>\n");
        }
        s.push_str("</body></html>\n");
        s
    }

    /// Average accuracy per model as bars with 95% intervals (inline SVG).
    fn bars(&self) -> String {
        let w = 640.0;
        let row = 28.0;
        let left = 160.0;
        let h = row * self.models.len() as f64 + 30.0;
        let mut s = format!(
            "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"average accuracy per model\">\n"
        );
        let x = |v: f64| left + (w - left - 20.0) * v.clamp(0.0, 1.0);
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let _ = writeln!(
                s,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"0\" y2=\"{1:.1}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{3}%</text>",
                x(tick),
                h - 18.0,
                h - 4.0,
                (tick * 100.0) as u32
            );
        }
        for (i, m) in self.models.iter().enumerate() {
            let Some(sc) = self.score(m, AVERAGE, None) else { continue };
            let y = i as f64 * row + 4.0;
            let a = if sc.accuracy.mean.is_finite() { sc.accuracy.mean } else { 0.0 };
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7ab7\"/>",
                left - 8.0,
                y + row * 0.55,
                esc(m),
                x(a) - left,
                row * 0.7
            );
            if sc.accuracy.low.is_finite() && sc.accuracy.high.is_finite() {
                let cy = y + row * 0.35;
                let _ = writeln!(
                    s,
                    "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{cy:.1}\" y2=\"{cy:.1}\" stroke=\"#222\" stroke-width=\"1.5\"/>",
                    x(sc.accuracy.low),
                    x(sc.accuracy.high)
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// HTML-escapes text (safe in element content and double-quoted attributes).
fn esc(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}
