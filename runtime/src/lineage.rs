//! Lineage: where a stage's outputs came from (stage level, from refs and manifests), and
//! where a single record came from or went (record level, by the `parents` columns).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, anyhow, bail};
use arrow::array::{Array, ListArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use fleming_artifacts::{ArtifactKind, ArtifactRef, Digest, RunManifest, Store, Table};
use serde::Serialize;
use serde_json::Value;

use crate::keys::canonical_json;
use crate::spec::Pipeline;
use crate::state::StageRef;

/// One stage in a lineage tree.
#[derive(Clone, Debug, Serialize)]
pub struct StageNode {
    /// Stage name.
    pub stage: String,
    /// Operator and version.
    pub op: String,
    /// Operator version.
    pub version: u32,
    /// Digest of the key-relevant parameters (first 12 hex).
    pub params_digest: String,
    /// Stage key (None: never ran).
    pub key: Option<String>,
    /// Output digests by port.
    pub outputs: BTreeMap<String, String>,
    /// Rows by port.
    pub rows: BTreeMap<String, u64>,
    /// Files named by path parameters: param -> (path, digest).
    pub files: BTreeMap<String, (String, String)>,
    /// When the current outputs were computed.
    pub finished_at: Option<String>,
    /// Wall time of that run, ms.
    pub duration_ms: Option<u64>,
    /// Edges: for upstream trees, the inputs (port, from, digest); for downstream trees,
    /// the readers.
    pub edges: Vec<Edge>,
}

/// An edge of a lineage tree.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// Input port (of the reader).
    pub port: String,
    /// `stage.port` read.
    pub from: String,
    /// Digest of the artifact on the edge, if known.
    pub digest: Option<String>,
    /// The stage at the other end.
    pub node: StageNode,
}

fn node(p: &Pipeline, store: &Store, index: usize) -> anyhow::Result<StageNode> {
    let stage = &p.stages[index];
    let spec = stage.op.spec();
    let r = StageRef::load(store, &p.name, &stage.name)?;
    let manifest = match &r {
        Some(r) => store.read_json::<RunManifest>(&RunManifest::path(store, &r.run_id))?,
        None => None,
    };
    let params = stage.params.key_json(&spec.params);
    let params_digest = Digest::of_parts("params", [canonical_json(&params).as_bytes()]).short(12);
    Ok(StageNode {
        stage: stage.name.clone(),
        op: spec.name.to_string(),
        version: spec.version,
        params_digest,
        key: r.as_ref().map(|r| r.key.hex()),
        outputs: r
            .as_ref()
            .map(|r| r.outputs.iter().map(|(k, a)| (k.clone(), a.digest.hex())).collect())
            .unwrap_or_default(),
        rows: r
            .as_ref()
            .map(|r| r.outputs.iter().filter_map(|(k, a)| a.rows.map(|n| (k.clone(), n))).collect())
            .unwrap_or_default(),
        files: manifest
            .as_ref()
            .map(|m| m.files.iter().map(|(k, f)| (k.clone(), (f.path.clone(), f.digest.hex()))).collect())
            .unwrap_or_default(),
        finished_at: manifest.as_ref().map(|m| m.finished_at.format("%Y-%m-%d %H:%M:%S").to_string()),
        duration_ms: manifest.as_ref().map(|m| m.duration_ms),
        edges: Vec::new(),
    })
}

/// The upstream tree of a stage.
pub fn upstream(p: &Pipeline, store: &Store, index: usize) -> anyhow::Result<StageNode> {
    let mut n = node(p, store, index)?;
    let current = StageRef::load(store, &p.name, &p.stages[index].name)?;
    for (port, refs) in &p.stages[index].inputs {
        for (i, r) in refs.iter().enumerate() {
            let digest =
                current.as_ref().and_then(|c| c.parts.inputs.get(port)).and_then(|d| d.get(i)).map(|d| d.hex());
            n.edges.push(Edge {
                port: port.clone(),
                from: r.to_string(),
                digest,
                node: upstream(p, store, r.stage_index)?,
            });
        }
    }
    Ok(n)
}

/// The downstream tree of a stage.
pub fn downstream(p: &Pipeline, store: &Store, index: usize) -> anyhow::Result<StageNode> {
    let mut n = node(p, store, index)?;
    for (j, s) in p.stages.iter().enumerate() {
        for (port, refs) in &s.inputs {
            for r in refs.iter().filter(|r| r.stage_index == index) {
                let digest = n.outputs.get(&r.port).cloned();
                n.edges.push(Edge { port: port.clone(), from: r.to_string(), digest, node: downstream(p, store, j)? });
            }
        }
    }
    Ok(n)
}

/// Finds the stage whose current output has this digest (or hex prefix, ≥ 6 characters).
pub fn stage_of_artifact(p: &Pipeline, store: &Store, prefix: &str) -> anyhow::Result<Option<(usize, String)>> {
    if prefix.len() < 6 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(None);
    }
    for (i, s) in p.stages.iter().enumerate() {
        if let Some(r) = StageRef::load(store, &p.name, &s.name)? {
            for (port, a) in &r.outputs {
                if a.digest.hex().starts_with(&prefix.to_lowercase()) {
                    return Ok(Some((i, port.clone())));
                }
            }
        }
    }
    Ok(None)
}

/// Renders a tree as indented text.
pub fn render_tree(n: &StageNode, down: bool) -> String {
    let mut out = String::new();
    render(n, "", true, true, down, None, &mut out);
    out
}

fn render(n: &StageNode, prefix: &str, last: bool, root: bool, down: bool, edge: Option<&Edge>, out: &mut String) {
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let via = match edge {
        Some(e) if down => format!("→ {}.{} ", n.stage, e.port),
        Some(e) => format!("{} ← ", e.port),
        None => String::new(),
    };
    let outputs = n
        .outputs
        .iter()
        .map(|(port, d)| {
            let rows = n.rows.get(port).map(|r| format!(", {r} rows")).unwrap_or_default();
            format!("{port} {}{rows}", &d[..12.min(d.len())])
        })
        .collect::<Vec<_>>()
        .join("; ");
    let when = match (&n.finished_at, n.duration_ms) {
        (Some(t), Some(ms)) => format!("  {t} ({:.2}s)", ms as f64 / 1000.0),
        _ => String::new(),
    };
    let key =
        n.key.as_deref().map(|k| format!("key {}", k.get(..12).unwrap_or(k))).unwrap_or_else(|| "never ran".into());
    out.push_str(&format!(
        "{prefix}{branch}{via}{} [{} v{}] {key} params {}{when}\n",
        n.stage, n.op, n.version, n.params_digest
    ));
    let child_prefix = child_prefix(prefix, root, last);
    if !outputs.is_empty() {
        out.push_str(&format!("{child_prefix}   outputs: {outputs}\n"));
    }
    for (param, (path, d)) in &n.files {
        out.push_str(&format!("{child_prefix}   file {param}: {path} {}\n", &d[..12.min(d.len())]));
    }
    for (i, e) in n.edges.iter().enumerate() {
        render(&e.node, &child_prefix, i + 1 == n.edges.len(), false, down, Some(e), out);
    }
}

/// One record in a record-lineage chain.
#[derive(Clone, Debug, Serialize)]
pub struct RecordNode {
    /// Stage holding the record.
    pub stage: String,
    /// Output port.
    pub port: String,
    /// Record id.
    pub id: String,
    /// A few identifying fields.
    pub fields: BTreeMap<String, Value>,
    /// The records it came from (up) or that came from it (down).
    pub links: Vec<RecordNode>,
}

/// Fields shown for a record, when present, in this order.
const KEY_FIELDS: &[&str] =
    &["title", "name", "type", "question", "answer", "subject", "predicate", "object", "source", "url", "value"];

/// Loads and indexes output tables of a pipeline's stages for record lineage.
struct Tables<'a> {
    p: &'a Pipeline,
    store: &'a Store,
    cache: HashMap<Digest, Table>,
}

impl Tables<'_> {
    fn output(&mut self, stage: usize, port: &str) -> anyhow::Result<Option<(Table, ArtifactRef)>> {
        let name = &self.p.stages[stage].name;
        let Some(r) = StageRef::load(self.store, &self.p.name, name)? else { return Ok(None) };
        let Some(a) = r.outputs.get(port).cloned() else { return Ok(None) };
        if a.kind != ArtifactKind::Table {
            return Ok(None);
        }
        if !self.cache.contains_key(&a.digest) {
            let t = self.store.read_table(&a).with_context(|| format!("reading {name}.{port}"))?;
            self.cache.insert(a.digest, t);
        }
        Ok(self.cache.get(&a.digest).cloned().map(|t| (t, a)))
    }
}

fn string_col(t: &Table, name: &str) -> anyhow::Result<Option<Vec<Option<String>>>> {
    let b = t.concat()?;
    let Some(c) = b.column_by_name(name) else { return Ok(None) };
    let c = cast(c, &DataType::Utf8)?;
    let c = c.as_any().downcast_ref::<StringArray>().ok_or_else(|| anyhow!("cast"))?;
    Ok(Some((0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i).to_string())).collect()))
}

fn parents_col(t: &Table) -> anyhow::Result<Option<Vec<Vec<String>>>> {
    let b = t.concat()?;
    let Some(c) = b.column_by_name("parents") else { return Ok(None) };
    let c = cast(c, &DataType::List(std::sync::Arc::new(arrow::datatypes::Field::new("item", DataType::Utf8, true))))?;
    let list = c.as_any().downcast_ref::<ListArray>().ok_or_else(|| anyhow!("`parents` is not a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        if list.is_null(i) {
            out.push(Vec::new());
            continue;
        }
        let v = list.value(i);
        let s = v.as_any().downcast_ref::<StringArray>().ok_or_else(|| anyhow!("`parents` items are not strings"))?;
        out.push((0..s.len()).filter(|&j| s.is_valid(j)).map(|j| s.value(j).to_string()).collect());
    }
    Ok(Some(out))
}

fn fields_of(t: &Table, row: usize) -> BTreeMap<String, Value> {
    let Ok(b) = t.concat() else { return BTreeMap::new() };
    let one = Table::from_batch(b.slice(row, 1));
    let Ok(rows) = fleming_artifacts::table::to_json_rows(&one, 1) else { return BTreeMap::new() };
    let Some(Value::Object(m)) = rows.into_iter().next() else { return BTreeMap::new() };
    let mut out = BTreeMap::new();
    let chosen: Vec<&str> = KEY_FIELDS.iter().copied().filter(|k| m.contains_key(*k)).take(4).collect();
    let names: Vec<String> = if chosen.is_empty() {
        m.keys().filter(|k| *k != "id" && *k != "parents").take(3).cloned().collect()
    } else {
        chosen.iter().map(|s| s.to_string()).collect()
    };
    for k in names {
        if let Some(v) = m.get(&k) {
            let v = match v {
                Value::String(s) if s.chars().count() > 80 => {
                    Value::String(format!("{}…", s.chars().take(79).collect::<String>()))
                }
                other => other.clone(),
            };
            out.insert(k, v);
        }
    }
    out
}

fn default_port(p: &Pipeline, stage: usize) -> String {
    p.stages[stage].op.spec().default_output().map(|o| o.name.to_string()).unwrap_or_default()
}

/// Where record `id` of `stage` (default output) came from, back to source rows. Records
/// with a `parents` column link to those ids in the stage's inputs; records without one
/// link to the same id in the inputs (pass-through stages like `sql`).
pub fn record_upstream(
    p: &Pipeline,
    store: &Store,
    stage: usize,
    port: Option<&str>,
    id: &str,
) -> anyhow::Result<RecordNode> {
    let mut tables = Tables { p, store, cache: HashMap::new() };
    let port = port.map(str::to_string).unwrap_or_else(|| default_port(p, stage));
    let Some(node) = record_up(&mut tables, stage, &port, id, 0)? else {
        bail!("no record with id `{id}` in {}.{port} (has the stage run?)", p.stages[stage].name);
    };
    Ok(node)
}

fn record_up(
    t: &mut Tables<'_>,
    stage: usize,
    port: &str,
    id: &str,
    depth: usize,
) -> anyhow::Result<Option<RecordNode>> {
    let Some((table, _)) = t.output(stage, port)? else { return Ok(None) };
    let Some(ids) = string_col(&table, "id")? else { return Ok(None) };
    let Some(row) = ids.iter().position(|x| x.as_deref() == Some(id)) else { return Ok(None) };
    let mut node = RecordNode {
        stage: t.p.stages[stage].name.clone(),
        port: port.to_string(),
        id: id.to_string(),
        fields: fields_of(&table, row),
        links: Vec::new(),
    };
    if depth > 64 {
        return Ok(Some(node));
    }
    let inputs: Vec<(usize, String)> =
        t.p.stages[stage].inputs.values().flatten().map(|r| (r.stage_index, r.port.clone())).collect();
    // The same id in an input is the same record passed through (`select * from t`), even
    // when it carries its `parents` column along: those are its input's parents, not its own.
    for (up, up_port) in &inputs {
        if let Some(n) = record_up(t, *up, up_port, id, depth + 1)? {
            node.links.push(n);
        }
    }
    if !node.links.is_empty() {
        return Ok(Some(node));
    }
    let parents = parents_col(&table)?.map(|p| p[row].clone()).unwrap_or_else(|| vec![id.to_string()]);
    for parent in &parents {
        for (up, up_port) in &inputs {
            if let Some(n) = record_up(t, *up, up_port, parent, depth + 1)? {
                node.links.push(n);
            }
        }
    }
    Ok(Some(node))
}

/// Every record that came from record `id` of `stage`, in every downstream stage.
pub fn record_downstream(
    p: &Pipeline,
    store: &Store,
    stage: usize,
    port: Option<&str>,
    id: &str,
) -> anyhow::Result<RecordNode> {
    let mut tables = Tables { p, store, cache: HashMap::new() };
    let port = port.map(str::to_string).unwrap_or_else(|| default_port(p, stage));
    let Some((table, _)) = tables.output(stage, &port)? else {
        bail!("{}.{port} has no current output (has the stage run?)", p.stages[stage].name);
    };
    let ids = string_col(&table, "id")?.ok_or_else(|| anyhow!("{}.{port} has no `id` column", p.stages[stage].name))?;
    let row = ids
        .iter()
        .position(|x| x.as_deref() == Some(id))
        .ok_or_else(|| anyhow!("no record with id `{id}` in {}.{port}", p.stages[stage].name))?;
    let mut root = RecordNode {
        stage: p.stages[stage].name.clone(),
        port: port.clone(),
        id: id.to_string(),
        fields: fields_of(&table, row),
        links: Vec::new(),
    };
    record_down(&mut tables, stage, &port, &mut root, 0)?;
    Ok(root)
}

fn record_down(
    t: &mut Tables<'_>,
    stage: usize,
    port: &str,
    node: &mut RecordNode,
    depth: usize,
) -> anyhow::Result<()> {
    if depth > 64 {
        return Ok(());
    }
    let readers: Vec<usize> =
        t.p.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.inputs.values().flatten().any(|r| r.stage_index == stage && r.port == port))
            .map(|(j, _)| j)
            .collect();
    for j in readers {
        for out_port in t.p.stages[j].op.spec().outputs.iter().map(|o| o.name.to_string()).collect::<Vec<_>>() {
            let Some((table, _)) = t.output(j, &out_port)? else { continue };
            let Some(ids) = string_col(&table, "id")? else { continue };
            let parents = parents_col(&table)?;
            for (row, rid) in ids.iter().enumerate() {
                let Some(rid) = rid else { continue };
                // Its parents name the record, or it is the record passed through.
                let linked = rid == &node.id || parents.as_ref().is_some_and(|p| p[row].iter().any(|x| x == &node.id));
                if linked {
                    let mut child = RecordNode {
                        stage: t.p.stages[j].name.clone(),
                        port: out_port.clone(),
                        id: rid.clone(),
                        fields: fields_of(&table, row),
                        links: Vec::new(),
                    };
                    record_down(t, j, &out_port, &mut child, depth + 1)?;
                    node.links.push(child);
                }
            }
        }
    }
    Ok(())
}

/// Renders a record chain as indented text.
pub fn render_records(n: &RecordNode, down: bool) -> String {
    let mut out = String::new();
    render_record(n, "", true, true, down, &mut out);
    out
}

fn render_record(n: &RecordNode, prefix: &str, last: bool, root: bool, down: bool, out: &mut String) {
    let branch = if root {
        ""
    } else if last {
        if down { "└→ " } else { "└← " }
    } else if down {
        "├→ "
    } else {
        "├← "
    };
    let fields = n.fields.iter().map(|(k, v)| format!("{k}={}", canonical_json(v))).collect::<Vec<_>>().join("  ");
    out.push_str(&format!("{prefix}{branch}{}.{} {}  {fields}\n", n.stage, n.port, n.id));
    let child_prefix = child_prefix(prefix, root, last);
    for (i, c) in n.links.iter().enumerate() {
        render_record(c, &child_prefix, i + 1 == n.links.len(), false, down, out);
    }
}

/// The prefix of a tree node's children: nothing under the root, a bar while siblings
/// follow, spaces after the last one.
fn child_prefix(prefix: &str, root: bool, last: bool) -> String {
    let pad = if root {
        ""
    } else if last {
        "   "
    } else {
        "│  "
    };
    format!("{prefix}{pad}")
}
