//! The pages of `fleming ui` other than a stage's: the graph, curves, evaluations, record
//! lineage, and the status the pages poll.

use std::fmt::Write;

use fleming_runtime::lineage::{
    RecordNode, downstream, record_downstream, record_upstream, render_tree, stage_of_artifact, upstream,
};
use serde_json::json;

use super::{App, LineageQuery, Snapshot};
use crate::report::curves::{self, Line};
use crate::report::html::escape;
use crate::report::page::{self, Links, url_escape};
use crate::report::{PipelineView, dag};

/// Extra style of the app (the report's sheet comes first).
const APP_STYLE: &str = "nav{display:flex;gap:1.2em;align-items:baseline;border-bottom:1px solid #ddd;padding:.3em 0 .6em;margin-bottom:1em}\
nav .name{font-weight:600}#conn{color:#a33}.bad{background:#fde8e6}pre{background:#f7f7f7;padding:.6em;overflow:auto}\
form.inline input{margin-right:.6em}ul.records{list-style:none;padding-left:1.2em;border-left:1px solid #ddd}\
.pager a{margin-right:1em}.tools{display:flex;gap:1.5em;align-items:center;margin:.4em 0}g.stage.found rect{stroke:#d9534f;stroke-width:3}td.cell{max-width:40em;overflow-wrap:break-word}.scroll{overflow-x:auto}body{max-width:none}";

/// A page of the app: the report's style, the navigation, and the live script.
pub(crate) fn shell(title: &str, pipeline: &str, body: &str) -> String {
    let mut s = String::new();
    page::open(
        &mut s,
        &format!("{title} — {pipeline}"),
        &format!("<style>{APP_STYLE}</style><script src=\"/assets/app.js\" defer></script>"),
    );
    let _ = writeln!(
        s,
        "<nav><span class=\"name\">{p}</span><a href=\"/\">Graph</a><a href=\"/curves\">Curves</a><a href=\"/evaluation\">Evaluation</a><a href=\"/lineage\">Lineage</a><a href=\"/report.html\">report.html</a><span id=\"conn\"></span></nav>",
        p = escape(pipeline),
    );
    s.push_str(body);
    s.push_str("</body></html>\n");
    s
}

/// A page that says what went wrong.
pub(crate) fn error_page(title: &str, text: &str) -> String {
    let mut s = String::new();
    page::open(&mut s, title, "");
    let _ = write!(
        s,
        "<p><a href=\"/\">fleming ui</a></p><h1>{}</h1><pre>{}</pre></body></html>",
        escape(title),
        escape(text)
    );
    s
}

/// The graph and the stage table.
pub(crate) fn dag(view: &PipelineView) -> String {
    let mut b = String::new();
    let _ = writeln!(b, "<h1>Pipeline <code>{}</code></h1>", escape(&view.name));
    if !view.description.is_empty() {
        let _ = writeln!(b, "<p>{}</p>", escape(&view.description));
    }
    let _ = writeln!(b, "<p id=\"summary\">{}</p>", escape(&page::summary(view)));
    // Finding and zooming: what makes a graph of hundreds of stages usable.
    b.push_str("<div class=\"tools\"><label>find a stage <input id=\"find\" list=\"stage-names\" size=\"24\"></label><datalist id=\"stage-names\">");
    for st in &view.stages {
        let _ = write!(b, "<option value=\"{}\">", escape(&st.name));
    }
    b.push_str("</datalist><label>zoom <input id=\"zoom\" type=\"range\" min=\"10\" max=\"100\" value=\"100\"></label></div>\n");
    page::graph(&mut b, view, Links::Pages);
    b.push_str("<h2>Stages</h2>\n");
    page::stage_table(&mut b, view, Links::Pages);
    shell("Graph", &view.name, &b)
}

/// Every metric on one chart per metric, a line per stage, then each stage's own charts.
pub(crate) fn curves(view: &PipelineView) -> String {
    let mut b = String::new();
    let _ = writeln!(b, "<h1>Training curves</h1>");
    if view.curves.is_empty() {
        b.push_str("<p>No stage has a stored <code>metrics</code> table yet.</p>\n");
        return shell("Curves", &view.name, &b);
    }
    b.push_str("<h2>All stages</h2>\n<div class=\"curves\">");
    for metric in curves::METRICS {
        let lines: Vec<Line<'_>> = view
            .curves
            .iter()
            .filter_map(|c| {
                let series = c.series.iter().find(|s| s.metric == *metric)?;
                Some(Line { label: c.stage.clone(), points: &series.points })
            })
            .collect();
        if !lines.is_empty() {
            b.push_str(&curves::overlay(metric, &lines));
        }
    }
    b.push_str("</div>\n<p>Each stage's page overlays its runs.</p>\n");
    for c in &view.curves {
        let _ = write!(
            b,
            "<h3 id=\"curves-{0}\"><a href=\"{1}\"><code>{0}</code></a></h3>\n<div class=\"curves\">",
            escape(&c.stage),
            Links::Pages.stage(&c.stage)
        );
        for series in &c.series {
            b.push_str(&curves::svg(series));
        }
        b.push_str("</div>\n");
    }
    shell("Curves", &view.name, &b)
}

/// Each evaluation stage: ablation bars, Table 1 and Table 2.
pub(crate) fn evaluation(view: &PipelineView) -> String {
    let mut b = String::new();
    b.push_str("<h1>Evaluation</h1>\n");
    if view.evaluations.is_empty() {
        b.push_str("<p>No <code>evaluate</code> stage has run yet.</p>\n");
    }
    page::evaluation_sections(&mut b, view);
    shell("Evaluation", &view.name, &b)
}

/// Stage statuses for the pages' live updates.
pub(crate) fn status_json(view: &PipelineView) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = view
        .stages
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "status": s.status.label(),
                "colour": dag::colour(s.status),
                "why": s.progress.clone().unwrap_or_else(|| s.reason.clone()),
            })
        })
        .collect();
    json!({"pipeline": view.name, "summary": page::summary(view), "stages": stages})
}

/// Record lineage: a search form, and the chain of the record found.
pub(crate) fn lineage(app: &App, snap: &Snapshot, view: &PipelineView, q: &LineageQuery) -> anyhow::Result<String> {
    let p = &snap.pipeline;
    let target = q.target.clone().unwrap_or_default();
    let id = q.id.clone().unwrap_or_default();
    let down = q.down.as_deref().is_some_and(|d| !d.is_empty() && d != "0");
    let mut b = String::new();
    b.push_str("<h1>Lineage</h1>\n<form class=\"inline\" method=\"get\" action=\"/lineage\">");
    b.push_str("<label>stage or stage.port <input name=\"target\" list=\"stages\" size=\"24\" value=\"");
    b.push_str(&escape(&target));
    b.push_str("\"></label><datalist id=\"stages\">");
    for st in &p.stages {
        let _ = write!(b, "<option value=\"{}\">", escape(&st.name));
    }
    let _ = writeln!(
        b,
        "</datalist><label>record id <input name=\"id\" size=\"28\" value=\"{}\"></label><label><input type=\"checkbox\" name=\"down\" value=\"1\"{}> descendants</label> <button>Find</button></form>",
        escape(&id),
        if down { " checked" } else { "" }
    );
    let target = if target.is_empty() && !id.is_empty() {
        match stages_holding(app, p, &id, down) {
            Some(found) => found,
            None => {
                let _ = writeln!(
                    b,
                    "<p class=\"bad\">No stage's output has a record with id <code>{}</code>.</p>",
                    escape(&id)
                );
                return Ok(shell("Lineage", &view.name, &b));
            }
        }
    } else {
        target
    };
    if target.is_empty() {
        b.push_str("<p>Give a record id (and, if you know it, the stage that holds it) to follow its chain back to the source pages, or forward to every descendant; a stage alone shows the stage's whole lineage.</p>\n");
        return Ok(shell("Lineage", &view.name, &b));
    }
    let (stage_name, port) = match target.split_once('.') {
        Some((s, port)) => (s.to_string(), Some(port.to_string())),
        None => (target.clone(), None),
    };
    let found = match p.stage_index(&stage_name) {
        Some(i) => Some((i, port)),
        None => stage_of_artifact(p, &app.store, &target)?.map(|(i, port)| (i, Some(port))),
    };
    let Some((index, port)) = found else {
        let _ = writeln!(
            b,
            "<p class=\"bad\">`{}` is neither a stage nor the digest of a current output ({}).</p>",
            escape(&target),
            escape(&fleming_runtime::diagnostic::suggestion(&stage_name, p.stages.iter().map(|s| s.name.as_str())))
        );
        return Ok(shell("Lineage", &view.name, &b));
    };
    if id.is_empty() {
        let tree = if down { downstream(p, &app.store, index)? } else { upstream(p, &app.store, index)? };
        let _ = writeln!(b, "<pre>{}</pre>", escape(&render_tree(&tree, down)));
        return Ok(shell("Lineage", &view.name, &b));
    }
    let chain = if down {
        record_downstream(p, &app.store, index, port.as_deref(), &id)
    } else {
        record_upstream(p, &app.store, index, port.as_deref(), &id)
    };
    match chain {
        Ok(chain) => {
            b.push_str("<ul class=\"records\">");
            record_html(&mut b, &chain, down);
            b.push_str("</ul>\n");
        }
        Err(e) => {
            let _ = writeln!(b, "<p class=\"bad\">{}</p>", escape(&format!("{e:#}")));
        }
    }
    Ok(shell("Lineage", &view.name, &b))
}

/// The stage whose default output has a record `id`: the last in the pipeline's order when
/// following it up (its longest chain), the first when following it down.
fn stages_holding(app: &App, p: &fleming_runtime::spec::Pipeline, id: &str, down: bool) -> Option<String> {
    let holds = |i: usize| -> bool {
        let stage = &p.stages[i];
        let Some(port) = stage.op.spec().default_output().map(|o| o.name.to_string()) else { return false };
        let Ok(Some(r)) = fleming_runtime::state::StageRef::load(&app.store, &p.name, &stage.name) else {
            return false;
        };
        let Some(a) = r.outputs.get(&port) else { return false };
        if a.kind != fleming_artifacts::ArtifactKind::Table {
            return false;
        }
        let Ok(t) = app.store.read_table_columns(a, Some(&["id"])) else { return false };
        let Ok(batch) = t.concat() else { return false };
        let Some(col) = batch.column_by_name("id") else { return false };
        let Ok(col) = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8) else { return false };
        col.as_any().downcast_ref::<arrow::array::StringArray>().is_some_and(|c| c.iter().any(|v| v == Some(id)))
    };
    let order = p.topo_order();
    let found =
        if down { order.iter().copied().find(|&i| holds(i)) } else { order.iter().rev().copied().find(|&i| holds(i)) };
    found.map(|i| p.stages[i].name.clone())
}

fn record_html(b: &mut String, n: &RecordNode, down: bool) {
    let target = format!("{}.{}", n.stage, n.port);
    let _ = write!(
        b,
        "<li data-record=\"{id}\"><a href=\"{stage_href}\"><code>{stage}</code></a>.{port} <a href=\"/lineage?target={t}&amp;id={idq}{d}\"><code>{id}</code></a>",
        id = escape(&n.id),
        stage_href = Links::Pages.stage(&n.stage),
        stage = escape(&n.stage),
        port = escape(&n.port),
        t = escape(&url_escape(&target)),
        idq = escape(&url_escape(&n.id)),
        d = if down { "&amp;down=1" } else { "" },
    );
    for (k, v) in &n.fields {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = write!(b, " <span class=\"field\">{}: {}</span>", escape(k), escape(&v));
    }
    if !n.links.is_empty() {
        b.push_str("<ul class=\"records\">");
        for l in &n.links {
            record_html(b, l, down);
        }
        b.push_str("</ul>");
    }
    b.push_str("</li>");
}
