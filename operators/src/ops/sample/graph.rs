//! The knowledge graph `sample` walks: entities and relations indexed for sampling.

use std::collections::HashMap;

use anyhow::{Context, anyhow, bail};
use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use fleming_artifacts::Table;

/// Which way an edge is read from the node at hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The node is the relation's subject.
    Out,
    /// The node is the relation's object.
    In,
}

/// One adjacency entry.
#[derive(Clone, Copy, Debug)]
pub struct Edge {
    /// The other entity.
    pub to: u32,
    /// Predicate (interned).
    pub pred: u32,
    /// Direction seen from the node.
    pub dir: Dir,
    /// Row of the relation.
    pub rel: u32,
}

/// Entities and relations, interned and indexed.
pub struct Graph {
    /// Entity ids.
    pub ids: Vec<String>,
    /// Entity names.
    pub names: Vec<String>,
    /// Lower-cased names and aliases of each entity (to keep options distinct).
    pub surface: Vec<Vec<String>>,
    /// Interned type of each entity.
    pub types: Vec<u32>,
    /// Degree of each entity (the table's `degree`, else counted).
    pub degree: Vec<u32>,
    /// Type names (lower case).
    pub type_names: Vec<String>,
    /// Predicate names.
    pub pred_names: Vec<String>,
    /// Relation ids.
    pub rel_ids: Vec<String>,
    /// Subject, object and predicate of each relation.
    pub rel_ends: Vec<(u32, u32, u32)>,
    /// CSR offsets into `edges`, per entity.
    pub offsets: Vec<u32>,
    /// Adjacency, grouped by entity, sorted by (pred, dir, to).
    pub edges: Vec<Edge>,
    /// Entities by type.
    pub by_type: Vec<Vec<u32>>,
}

fn strings(t: &arrow::array::RecordBatch, name: &str) -> anyhow::Result<StringArray> {
    let c = t.column_by_name(name).ok_or_else(|| anyhow!("no `{name}` column"))?;
    let c = cast(c, &DataType::Utf8).with_context(|| format!("column `{name}` is not text"))?;
    c.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| anyhow!("column `{name}` is not text"))
}

fn opt_ints(t: &arrow::array::RecordBatch, name: &str) -> Option<Int64Array> {
    let c: &ArrayRef = t.column_by_name(name)?;
    cast(c, &DataType::Int64).ok()?.as_any().downcast_ref::<Int64Array>().cloned()
}

fn opt_floats(t: &arrow::array::RecordBatch, name: &str) -> Option<Float64Array> {
    let c: &ArrayRef = t.column_by_name(name)?;
    cast(c, &DataType::Float64).ok()?.as_any().downcast_ref::<Float64Array>().cloned()
}

fn aliases(t: &arrow::array::RecordBatch) -> Option<arrow::array::ListArray> {
    t.column_by_name("aliases")?.as_any().downcast_ref::<arrow::array::ListArray>().cloned()
}

impl Graph {
    /// The graph of a stage's `entities` and `relations` inputs (the reference model of
    /// `validate` and `difficulty-label`); `user` names what needs it, for the error.
    pub fn from_inputs(ctx: &fleming_runtime::context::OpContext, user: &str) -> anyhow::Result<Graph> {
        let ents = ctx.input_table("entities").with_context(|| format!("{user} needs `entities`"))?;
        let rels = ctx.input_table("relations").with_context(|| format!("{user} needs `relations`"))?;
        Ok(Graph::build(ents, rels, 0.0)?.0)
    }

    /// Indexes the `entities` and `relations` tables. Relations whose ends are not
    /// entities, or below `min_confidence`, are skipped (counted in the second value).
    pub fn build(entities: &Table, relations: &Table, min_confidence: f64) -> anyhow::Result<(Graph, usize)> {
        let e = entities.concat().context("reading entities")?;
        let r = relations.concat().context("reading relations")?;
        let ids = strings(&e, "id").context("entities")?;
        let names = strings(&e, "name").context("entities")?;
        let types = strings(&e, "type").context("entities")?;
        let degrees = opt_ints(&e, "degree");
        let alias_col = aliases(&e);
        let n = e.num_rows();
        let mut index: HashMap<&str, u32> = HashMap::with_capacity(n);
        let mut type_index: HashMap<String, u32> = HashMap::new();
        let mut g = Graph {
            ids: Vec::with_capacity(n),
            names: Vec::with_capacity(n),
            surface: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            degree: vec![0; n],
            type_names: Vec::new(),
            pred_names: Vec::new(),
            rel_ids: Vec::new(),
            rel_ends: Vec::new(),
            offsets: Vec::new(),
            edges: Vec::new(),
            by_type: Vec::new(),
        };
        for i in 0..n {
            if !ids.is_valid(i) {
                bail!("entity row {i} has no id");
            }
            let id = ids.value(i);
            if index.insert(id, i as u32).is_some() {
                bail!("entity id `{id}` appears twice");
            }
            let name = if names.is_valid(i) { names.value(i) } else { id };
            let ty = if types.is_valid(i) { types.value(i).to_lowercase() } else { "entity".to_string() };
            let next = type_index.len() as u32;
            let t = *type_index.entry(ty.clone()).or_insert_with(|| {
                g.type_names.push(ty);
                next
            });
            g.ids.push(id.to_string());
            g.names.push(name.to_string());
            let mut surf = vec![name.to_lowercase()];
            if let Some(a) = &alias_col
                && a.is_valid(i)
            {
                let v = a.value(i);
                if let Some(s) = v.as_any().downcast_ref::<StringArray>() {
                    surf.extend((0..s.len()).filter(|&j| s.is_valid(j)).map(|j| s.value(j).to_lowercase()));
                }
            }
            g.surface.push(surf);
            g.types.push(t);
        }
        g.by_type = vec![Vec::new(); g.type_names.len()];
        for (i, t) in g.types.iter().enumerate() {
            g.by_type[*t as usize].push(i as u32);
        }
        let subj = strings(&r, "subject").context("relations")?;
        let obj = strings(&r, "object").context("relations")?;
        let pred = strings(&r, "predicate").context("relations")?;
        let rid = strings(&r, "id").context("relations")?;
        let conf = opt_floats(&r, "confidence");
        let mut pred_index: HashMap<String, u32> = HashMap::new();
        let mut raw: Vec<(u32, Edge)> = Vec::with_capacity(r.num_rows() * 2);
        let mut skipped = 0;
        for i in 0..r.num_rows() {
            let (Some(&s), Some(&o)) = (
                subj.is_valid(i).then(|| index.get(subj.value(i))).flatten(),
                obj.is_valid(i).then(|| index.get(obj.value(i))).flatten(),
            ) else {
                skipped += 1;
                continue;
            };
            if s == o || conf.as_ref().is_some_and(|c| c.is_valid(i) && c.value(i) < min_confidence) {
                skipped += 1;
                continue;
            }
            let p = if pred.is_valid(i) { pred.value(i) } else { "related_to" };
            let next = pred_index.len() as u32;
            let p = *pred_index.entry(p.to_string()).or_insert_with(|| {
                g.pred_names.push(p.to_string());
                next
            });
            let rel = g.rel_ids.len() as u32;
            g.rel_ids.push(if rid.is_valid(i) { rid.value(i).to_string() } else { format!("rel-{i}") });
            g.rel_ends.push((s, o, p));
            raw.push((s, Edge { to: o, pred: p, dir: Dir::Out, rel }));
            raw.push((o, Edge { to: s, pred: p, dir: Dir::In, rel }));
        }
        raw.sort_unstable_by_key(|(from, e)| (*from, e.pred, e.dir == Dir::In, e.to, e.rel));
        g.offsets = vec![0; n + 1];
        for (from, _) in &raw {
            g.offsets[*from as usize + 1] += 1;
        }
        for i in 0..n {
            g.offsets[i + 1] += g.offsets[i];
        }
        g.edges = raw.into_iter().map(|(_, e)| e).collect();
        for i in 0..n {
            let counted = g.offsets[i + 1] - g.offsets[i];
            g.degree[i] = match &degrees {
                Some(d) if d.is_valid(i) && d.value(i) >= 0 => d.value(i) as u32,
                _ => counted,
            };
        }
        Ok((g, skipped))
    }

    /// The adjacency of an entity.
    pub fn adj(&self, e: u32) -> &[Edge] {
        &self.edges[self.offsets[e as usize] as usize..self.offsets[e as usize + 1] as usize]
    }

    /// Edges of `e` with predicate `pred` (any predicate when `None`) in direction `dir`
    /// (either when `None`), leading to an entity of type `ty` (any when `None`).
    pub fn step<'a>(
        &'a self,
        e: u32,
        pred: Option<u32>,
        dir: Option<Dir>,
        ty: Option<u32>,
    ) -> impl Iterator<Item = &'a Edge> + 'a {
        let adj = self.adj(e);
        let slice = match pred {
            Some(p) => {
                let lo = adj.partition_point(|x| x.pred < p);
                let hi = adj.partition_point(|x| x.pred <= p);
                &adj[lo..hi]
            }
            None => adj,
        };
        slice
            .iter()
            .filter(move |x| dir.is_none_or(|d| x.dir == d) && ty.is_none_or(|t| self.types[x.to as usize] == t))
    }

    /// How many edges of `e` have predicate `pred` (both directions).
    pub fn pred_degree(&self, e: u32, pred: u32) -> usize {
        let adj = self.adj(e);
        adj.partition_point(|x| x.pred <= pred) - adj.partition_point(|x| x.pred < pred)
    }

    /// Whether `e` has an edge with predicate `pred`, direction `dir`, to `to`, whose
    /// relation `knows` accepts.
    pub fn has_edge(&self, e: u32, pred: u32, dir: Dir, to: u32, knows: &impl Fn(u32) -> bool) -> bool {
        let adj = self.adj(e);
        let key = |x: &Edge| (x.pred, x.dir == Dir::In, x.to);
        let want = (pred, dir == Dir::In, to);
        let lo = adj.partition_point(|x| key(x) < want);
        adj[lo..].iter().take_while(|x| key(x) == want).any(|x| knows(x.rel))
    }

    /// A type by name (case-insensitive).
    pub fn type_id(&self, name: &str) -> Option<u32> {
        let l = name.to_lowercase();
        self.type_names.iter().position(|t| *t == l).map(|i| i as u32)
    }

    /// A predicate by name.
    pub fn pred_id(&self, name: &str) -> Option<u32> {
        self.pred_names.iter().position(|t| t == name).map(|i| i as u32)
    }
}
