//! A stage's page: what it is and why it is in its state, its parameters against the
//! previous run, its outputs (schema, a page of rows), its checks with failing rows, its
//! lineage, its curves with earlier runs overlaid, and its run history.

use std::collections::BTreeMap;
use std::fmt::Write;

use fleming_artifacts::manifest::file_may_be_of;
use fleming_artifacts::{ArtifactKind, RunManifest};
use fleming_runtime::state::StageRef;
use serde_json::Value;

use super::pages::shell;
use super::rows::{self, PAGE};
use super::{App, Snapshot, StageQuery};
use crate::report::curves::{self, Line};
use crate::report::html::escape;
use crate::report::local_object;
use crate::report::page::{Links, check_line, url_escape};
use crate::report::{PipelineView, StageView, dag, metrics_series};

/// Earlier runs overlaid on a stage's curves, at most.
const RUNS_OVERLAID: usize = 6;

/// The page of stage `name`, or `None` when the pipeline has no such stage.
pub(crate) fn page(
    app: &App,
    snap: &Snapshot,
    view: &PipelineView,
    name: &str,
    q: &StageQuery,
) -> anyhow::Result<Option<String>> {
    let p = &snap.pipeline;
    let Some(index) = p.stage_index(name) else { return Ok(None) };
    let (stage, st) = (&p.stages[index], &view.stages[index]);
    let spec = stage.op.spec();
    let manifests = runs_of(app, name);
    let history: Vec<&RunManifest> = manifests.iter().filter(|m| m.pipeline == p.name && m.stage == name).collect();
    let current_ref = StageRef::load(&app.store, &p.name, name)?;
    let current = current_ref.as_ref().and_then(|r| history.iter().rev().find(|m| m.run_id == r.run_id).copied());

    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>Stage <code>{n}</code> <span id=\"stage-status\" class=\"status\" data-stage=\"{n}\" data-status=\"{s}\" style=\"background:{c};padding:0 .4em;border:1px solid #555;border-radius:3px\">{s}</span></h1>",
        n = escape(name),
        s = st.status.label(),
        c = dag::colour(st.status),
    );
    b.push_str("<table class=\"facts\">");
    let fact = |b: &mut String, k: &str, v: String| {
        let _ = write!(b, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    fact(
        &mut b,
        "operator",
        format!("<code>{}</code> version {} — {}", escape(spec.name), spec.version, escape(spec.summary)),
    );
    if let Some(d) = &stage.description {
        fact(&mut b, "description", escape(d));
    }
    let why =
        st.progress.clone().unwrap_or_else(|| if st.reason.is_empty() { "cached".into() } else { st.reason.clone() });
    let _ = write!(b, "<tr><th>state</th><td class=\"why\" data-stage=\"{}\">{}</td></tr>", escape(name), escape(&why));
    fact(&mut b, "key", format!("<code>{}</code>", escape(st.key.as_deref().unwrap_or("(not computable yet)"))));
    if let Some(m) = current {
        fact(
            &mut b,
            "last run",
            format!(
                "<code>{}</code>, {} on {}, {}",
                escape(&m.run_id),
                secs(m.duration_ms),
                escape(&m.host),
                escape(&m.reason)
            ),
        );
    }
    for w in &st.warnings {
        fact(&mut b, "warning", escape(w));
    }
    b.push_str("</table>\n");

    lineage_section(&mut b, view, index, name);
    params_section(&mut b, &stage.params.to_json(), current, &history);
    if !st.checks.is_empty() {
        b.push_str("<h2>Checks</h2>\n");
        for c in &st.checks {
            let _ = writeln!(
                b,
                "<h3>{}</h3><p>severity {:?}; query <code>{}</code></p>",
                check_line(c),
                c.severity,
                escape(&c.query)
            );
            if let Some(m) = &c.message {
                let _ = writeln!(b, "<pre>{}</pre>", escape(m));
            }
            if !c.sample.is_empty() {
                let _ = writeln!(b, "<p>Failing rows (up to {}):</p>", c.sample.len());
                b.push_str(&rows::json_rows_html(&c.sample));
            }
        }
    }
    curves_section(app, &mut b, &history, current);
    outputs_section(app, &mut b, st, name, q)?;
    history_section(&mut b, &history);
    Ok(Some(shell(&format!("Stage {name}"), &view.name, &b)))
}

/// The manifests of a stage's runs, oldest first: only the files named after it are read
/// (a run's file name is `TIME-STAGE-KEY-PID.json`), not the whole store's history.
fn runs_of(app: &App, stage: &str) -> Vec<RunManifest> {
    let dir = app.store.dir("runs");
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| file_may_be_of(&e.file_name().to_string_lossy(), stage, None))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|p| serde_json::from_slice::<RunManifest>(&std::fs::read(p).ok()?).ok())
        .filter(|m| m.stage == stage)
        .collect()
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// `a.b.c` → value (arrays as JSON).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The parameters now, marked where they differ from the last run (or, when they are the
/// same, where the last run differed from the one before).
fn params_section(b: &mut String, now: &Value, current: Option<&RunManifest>, history: &[&RunManifest]) {
    b.push_str("<h2>Parameters</h2>\n");
    let mut mine = BTreeMap::new();
    flatten("", now, &mut mine);
    let last = current.or_else(|| {
        history.iter().rev().find(|m| m.status == fleming_artifacts::manifest::RunStatus::Succeeded).copied()
    });
    let (shown, other, caption) = match last {
        Some(last) if last.params != *now => {
            (mine, Some(&last.params), "Changed since the last run (its values in the right column).".to_string())
        }
        Some(last) => {
            let before = history.iter().rev().find(|m| m.started_at < last.started_at && m.params != last.params);
            let caption = match before {
                Some(m) => format!(
                    "As in the last run; changed since the run of {} (its values on the right).",
                    m.started_at.format("%Y-%m-%d %H:%M")
                ),
                None => "As in the last run.".to_string(),
            };
            (mine, before.map(|m| &m.params), caption)
        }
        None => (mine, None, "The stage has not run yet.".to_string()),
    };
    let mut theirs = BTreeMap::new();
    if let Some(o) = other {
        flatten("", o, &mut theirs);
    }
    let changed = |k: &String| other.is_some() && shown.get(k) != theirs.get(k);
    let n_changed =
        shown.keys().chain(theirs.keys().filter(|k| !shown.contains_key(*k))).filter(|k| changed(k)).count();
    // Folded when nothing changed: the diff is what a reader comes for.
    let _ = writeln!(
        b,
        "<details{}><summary>{} <span data-changed=\"{n_changed}\">{n_changed} changed.</span></summary>",
        if n_changed > 0 { " open" } else { "" },
        escape(&caption)
    );
    b.push_str("<table class=\"params\"><tr><th>parameter</th><th>value</th><th>before</th></tr>\n");
    let mut keys: Vec<&String> = shown.keys().collect();
    keys.extend(theirs.keys().filter(|k| !shown.contains_key(*k)));
    keys.sort();
    for k in keys {
        let cls = if changed(k) { " class=\"bad\"" } else { "" };
        let _ = writeln!(
            b,
            "<tr{cls}><td><code>{}</code></td><td class=\"cell\">{}</td><td class=\"cell\">{}</td></tr>",
            escape(k),
            escape(shown.get(k).map(String::as_str).unwrap_or("(absent)")),
            if changed(k) { escape(theirs.get(k).map(String::as_str).unwrap_or("(absent)")) } else { String::new() },
        );
    }
    b.push_str("</table></details>\n");
}

fn outputs_section(app: &App, b: &mut String, st: &StageView, name: &str, q: &StageQuery) -> anyhow::Result<()> {
    b.push_str("<h2>Outputs</h2>\n");
    if st.outputs.is_empty() {
        b.push_str("<p>None stored yet.</p>\n");
    }
    for o in &st.outputs {
        let _ = writeln!(
            b,
            "<h3 id=\"out-{p}\"><code>{p}</code> — {kind}{rows}, {bytes} bytes, <code title=\"{d}\">{short}</code></h3>",
            p = escape(&o.port),
            kind = o.kind,
            rows = o.rows.map(|r| format!(", {r} rows")).unwrap_or_default(),
            bytes = o.bytes,
            d = escape(&o.digest),
            short = escape(&o.digest.chars().take(12).collect::<String>()),
        );
        let Ok(digest) = o.digest.parse() else { continue };
        if o.kind == "table" {
            let path = local_object(&app.store, ArtifactKind::Table, &digest);
            match rows::schema(&path) {
                Ok(schema) => {
                    b.push_str("<details><summary>schema</summary><table>");
                    for (n, t) in schema {
                        let _ = write!(b, "<tr><td><code>{}</code></td><td>{}</td></tr>", escape(&n), escape(&t));
                    }
                    b.push_str("</table></details>\n");
                }
                Err(e) => {
                    let _ = writeln!(b, "<p class=\"bad\">unreadable: {}</p>", escape(&format!("{e:#}")));
                    continue;
                }
            }
            let page_no = if q.port.as_deref() == Some(o.port.as_str()) { q.page.unwrap_or(0) } else { 0 };
            let total = o.rows.unwrap_or(0) as usize;
            let pages = total.div_ceil(PAGE).max(1);
            let page_no = page_no.min(pages - 1);
            let href = |k: usize| {
                format!("/stage/{}?port={}&amp;page={k}#out-{}", url_escape(name), url_escape(&o.port), escape(&o.port))
            };
            let shown = match total {
                0 => "no rows".to_string(),
                _ => format!("rows {}–{} of {total}", page_no * PAGE, ((page_no + 1) * PAGE).min(total) - 1),
            };
            let _ = write!(b, "<p class=\"pager\" data-port=\"{}\">{shown} ", escape(&o.port));
            if page_no > 0 {
                let _ = write!(b, "<a href=\"{}\">← previous</a>", href(page_no - 1));
            }
            if page_no + 1 < pages {
                let _ = write!(b, "<a href=\"{}\">next →</a>", href(page_no + 1));
            }
            b.push_str("</p>\n");
            let target = format!("{name}.{}", o.port);
            match rows::page(&path, page_no)
                .and_then(|batches| rows::batches_html(&batches, page_no * PAGE, Some(&target)))
            {
                Ok(html) => b.push_str(&html),
                Err(e) => {
                    let _ = writeln!(b, "<p class=\"bad\">unreadable: {}</p>", escape(&format!("{e:#}")));
                }
            }
        } else {
            let dir = local_object(&app.store, ArtifactKind::Tree, &digest);
            let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| {
                            (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0))
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            let _ = writeln!(b, "<p>In <code>{}</code>:</p><ul>", escape(&dir.display().to_string()));
            for (f, size) in files {
                let _ = write!(b, "<li><code>{}</code> ({size} bytes)</li>", escape(&f));
            }
            b.push_str("</ul>\n");
        }
    }
    Ok(())
}

fn lineage_section(b: &mut String, view: &PipelineView, index: usize, name: &str) {
    let link = |i: usize| {
        let n = &view.stages[i].name;
        format!(
            "<a href=\"{}\" data-status=\"{}\"><code>{}</code></a>",
            Links::Pages.stage(n),
            view.stages[i].status.label(),
            escape(n)
        )
    };
    let ups: Vec<String> = view.stages[index].upstream.iter().map(|&u| link(u)).collect();
    let downs: Vec<String> =
        (0..view.stages.len()).filter(|&i| view.stages[i].upstream.contains(&index)).map(link).collect();
    let q = escape(&url_escape(name));
    let _ = writeln!(
        b,
        "<h2>Lineage</h2>\n<p>reads from: {} · read by: {} · <a href=\"/lineage?target={q}\">all the way up</a> · <a href=\"/lineage?target={q}&amp;down=1\">all the way down</a> · follow a record: <form class=\"inline\" style=\"display:inline\" action=\"/lineage\"><input type=\"hidden\" name=\"target\" value=\"{n}\"><input name=\"id\" placeholder=\"record id\" size=\"20\"><button>up</button></form></p>",
        if ups.is_empty() { "nothing".into() } else { ups.join(", ") },
        if downs.is_empty() { "nothing".into() } else { downs.join(", ") },
        n = escape(name),
    );
}

/// The stage's metrics, each chart with the current run and up to [`RUNS_OVERLAID`] - 1
/// earlier ones.
fn curves_section(app: &App, b: &mut String, history: &[&RunManifest], current: Option<&RunManifest>) {
    let mut runs: Vec<(&RunManifest, fleming_artifacts::ArtifactRef)> = Vec::new();
    for m in history.iter().rev() {
        if let Some(a) = m.outputs.get("metrics")
            && a.kind == ArtifactKind::Table
            && !runs.iter().any(|(_, r)| r.digest == a.digest)
        {
            runs.push((m, a.clone()));
        }
        if runs.len() == RUNS_OVERLAID {
            break;
        }
    }
    if runs.is_empty() {
        return;
    }
    runs.reverse();
    let series: Vec<(String, Vec<curves::Series>)> = runs
        .iter()
        .filter_map(|(m, a)| {
            let s = metrics_series(&local_object(&app.store, a.kind, &a.digest)).ok()?;
            let mark = if current.is_some_and(|c| c.run_id == m.run_id) { " (now)" } else { "" };
            Some((format!("{}{mark}", m.started_at.format("%m-%d %H:%M:%S")), s))
        })
        .collect();
    let _ = writeln!(b, "<h2>Curves</h2>\n<p>{} run(s) overlaid.</p><div class=\"curves\">", series.len());
    for metric in curves::METRICS {
        let lines: Vec<Line<'_>> = series
            .iter()
            .filter_map(|(label, s)| {
                let one = s.iter().find(|x| x.metric == *metric)?;
                Some(Line { label: label.clone(), points: &one.points })
            })
            .collect();
        if !lines.is_empty() {
            b.push_str(&curves::overlay(metric, &lines));
        }
    }
    b.push_str("</div>\n");
}

fn history_section(b: &mut String, history: &[&RunManifest]) {
    b.push_str("<h2>Runs</h2>\n");
    if history.is_empty() {
        b.push_str("<p>None yet.</p>\n");
        return;
    }
    b.push_str("<table class=\"history\"><tr><th>started</th><th>time</th><th>status</th><th>why</th><th>key</th><th>outputs</th><th>host</th></tr>\n");
    for m in history.iter().rev() {
        let outputs: Vec<String> = m
            .outputs
            .iter()
            .map(|(p, a)| match a.rows {
                Some(r) => format!("{}: {r} rows", escape(p)),
                None => escape(p),
            })
            .collect();
        let label = format!("{:?}", m.status).to_lowercase();
        let status = match &m.error {
            Some(e) => format!("{label}: {}", e.lines().next().unwrap_or("")),
            None => label,
        };
        let _ = writeln!(
            b,
            "<tr data-run=\"{id}\"><td>{start}</td><td class=\"n\">{t}</td><td>{status}</td><td>{why}</td><td><code>{key}</code></td><td>{outs}</td><td>{host}</td></tr>",
            id = escape(&m.run_id),
            start = m.started_at.format("%Y-%m-%d %H:%M:%S"),
            t = secs(m.duration_ms),
            status = escape(&status),
            why = escape(&m.reason),
            key = escape(&m.key.short(12)),
            outs = outputs.join("<br>"),
            host = escape(&m.host),
        );
    }
    b.push_str("</table>\n");
}
