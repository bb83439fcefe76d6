//! `extract`: from the `pages` table to a typed medical knowledge graph, the `entities` and
//! `relations` tables of DESIGN's data contracts.
//!
//! Each page is parsed ([`wikitext`]) into facts (memoised per page), interpreted with the
//! lexicon and the relation rules ([`rules`]) into keyed records, and the records are
//! merged by a differential dataflow on `-w N` timely workers ([`graph`]): entities are
//! deduplicated by normalised title and redirect, relations by (subject, predicate,
//! object), and degrees counted from the distinct relations.
//!
//! **Incremental.** When the stage ran before with the same settings (same version,
//! `min_confidence` and lexicon: recorded in the outputs' schema metadata) and the pages
//! changed, only the changed pages are parsed. Their old records are retracted and their
//! new ones added, summed first, so that what a page says as before cancels out. The
//! previous rows of the entities and relations whose records changed are decomposed into
//! records (an entity's page list enters as its length and is merged with the changes when
//! the row is rebuilt: hub entities list thousands of pages), the dataflow recomputes those
//! rows, and they replace the old ones; every other previous row is kept as a zero-copy
//! slice. Redirect changes, which move whole entities, recompute the entities involved
//! from all pages that touch them. The diff reads the previous pages without their
//! wikitext (the old facts come from the memo). The result is the same table, byte for
//! byte, as a run from scratch (tested); a previous output that does not fit its input is
//! detected and answered with a full run.

pub mod graph;
pub mod lexicon;
pub mod rules;
pub mod wikitext;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use anyhow::{Context, anyhow};
use arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, Int64Array, Int64Builder, LargeStringArray, ListArray, ListBuilder,
    RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use fleming_artifacts::Table;
use fleming_runtime::context::{Input, OpContext};
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamSpec, ParamType, PortSpec,
};
use rayon::prelude::*;
use serde_json::json;

use self::graph::{EntityAgg, GraphOut};
use self::lexicon::{EntityType, Lexicon};
use self::rules::{Declared, Hex16, Interp, Names, OwnVal, PageFacts, PageRef, Predicate, Rec, RelKey, SupportVal, h};
use self::wikitext::normalize_title;

/// Version of the operator (and of its memoised page facts). 2: entity keys are XXH3-64.
/// 3: relations in (subject, predicate, object) order. 4: a page's own infobox outranks
/// the lexicon (non-medical infoboxes, taxoboxes of animals). 5: so do the categories of
/// a page without an infobox (a person, an animal, software).
pub const VERSION: u32 = 5;
/// Schema metadata key holding the settings fingerprint of an output.
pub const STATE_KEY: &str = "fleming.extract.state";

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "extract",
    version: VERSION,
    summary: "Wikipedia pages to a typed medical knowledge graph (entities and relations)",
    doc: "Parses each page's wikitext (infobox, sections, links, categories, lead sentence), types \
          entities from infoboxes and a lexicon (a page's own infobox outranks the lexicon: a \
          person, a programming language or an animal is never medical by name alone), derives relations (has_symptom, diagnosed_by, \
          treated_by, caused_by, risk_factor, complication_of, differential_diagnosis, \
          contraindicated_with, mechanism, located_in, drug_class, …) from infobox fields and from \
          links grouped by section, and merges them with a differential dataflow on `-w` workers. \
          Reruns after a few pages changed update the previous output instead of rebuilding it.",
    params: vec![
        ParamSpec::optional(
            "lexicon",
            ParamType::InputPath,
            "Typing lexicon: a TSV (name, type[, canonical]) or a directory of them, or the shared Hetionet / Disease Ontology / MeSH tables",
        ),
        ParamSpec::with_default(
            "min_confidence",
            ParamType::Float,
            json!(0.5),
            "Relations below this confidence are dropped",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default(
            "incremental",
            ParamType::Bool,
            json!(true),
            "Update the previous run's output when only some pages changed (the result is the same as a full run)",
        )
        .not_in_key(),
    ],
    inputs: InputPorts::Fixed(vec![PortSpec::table_with(
        "pages",
        vec![
            ColumnSpec::new("id", DataType::Utf8, false),
            ColumnSpec::new("title", DataType::Utf8, false),
            ColumnSpec::new("wikitext", DataType::Utf8, false),
        ],
        "pages (from `crawl`; `ns`, `redirect_to` and `digest` are used when present; with a \
         `redirect_to` column, it alone says which pages are redirects)",
    )]),
    outputs: vec![
        PortSpec::table_with(
            "entities",
            entity_columns(),
            "entities: id, name, type, aliases, description, degree, frequency, pages, …",
        ),
        PortSpec::table_with(
            "relations",
            relation_columns(),
            "relations with their evidence; `parents` are the supporting pages",
        ),
        PortSpec::table_with(
            "rejects",
            reject_columns(),
            "pages that were not used, with the reason (empty title, duplicate title, duplicate page id)",
        ),
    ],
    execution: Execution::Dataflow,
    fingerprint: crate::fingerprints::extract.to_string(),
});

fn list_of(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", t, true)))
}

/// Columns of `entities`.
pub fn entity_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("name", DataType::Utf8, false),
        ColumnSpec::new("type", DataType::Utf8, false),
        ColumnSpec::new("aliases", list_of(DataType::Utf8), false),
        ColumnSpec::new("description", DataType::Utf8, true),
        ColumnSpec::new("degree", DataType::Int64, false),
        ColumnSpec::new("frequency", DataType::Int64, false),
        ColumnSpec::new("pages", list_of(DataType::Utf8), false),
        ColumnSpec::new("page", DataType::Utf8, true),
        ColumnSpec::new("infobox", DataType::Utf8, true),
        ColumnSpec::new("alias_counts", list_of(DataType::Int64), false),
        ColumnSpec::new("type_votes", list_of(DataType::Int64), false),
    ]
}

/// Columns of `relations`.
pub fn relation_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("subject", DataType::Utf8, false),
        ColumnSpec::new("predicate", DataType::Utf8, false),
        ColumnSpec::new("object", DataType::Utf8, false),
        ColumnSpec::new("evidence_page", DataType::Utf8, false),
        ColumnSpec::new("evidence_section", DataType::Utf8, true),
        ColumnSpec::new("evidence_field", DataType::Utf8, true),
        ColumnSpec::new("confidence", DataType::Float64, false),
        ColumnSpec::new("parents", list_of(DataType::Utf8), false),
        ColumnSpec::new("subject_name", DataType::Utf8, false),
        ColumnSpec::new("object_name", DataType::Utf8, false),
        ColumnSpec::new("support_sections", list_of(DataType::Utf8), false),
        ColumnSpec::new("support_fields", list_of(DataType::Utf8), false),
        ColumnSpec::new("support_confidence", list_of(DataType::Float64), false),
    ]
}

fn reject_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("page", DataType::Utf8, false),
        ColumnSpec::new("title", DataType::Utf8, false),
        ColumnSpec::new("reason", DataType::Utf8, false),
    ]
}

fn schema(cols: Vec<ColumnSpec>, state: &str) -> SchemaRef {
    let fields: Vec<Field> = cols.into_iter().map(|c| Field::new(c.name, c.data_type, c.nullable)).collect();
    let meta: HashMap<String, String> = [(STATE_KEY.to_string(), state.to_string())].into_iter().collect();
    Arc::new(Schema::new_with_metadata(fields, meta))
}

/// The `extract` operator.
#[derive(Default)]
pub struct Extract;

impl Extract {
    /// The operator.
    pub fn new() -> Self {
        Extract
    }
}

/// A set of entity keys.
type KeySet = rustc_hash::FxHashSet<u64>;

/// The pages table as the operator reads it.
pub struct PagesView {
    id: StringArray,
    title: StringArray,
    /// `None` for a previous input read without it (see [`Previous`]). 64-bit offsets: a
    /// real dump's pages hold more than the 2 GiB a `Utf8` array can.
    wikitext: Option<LargeStringArray>,
    ns: Option<Int64Array>,
    redirect_to: Option<StringArray>,
    digest: Option<StringArray>,
}

/// The wikitext of some rows of a pages table (an incremental run reads only those).
struct SomeTexts {
    /// Row numbers, ascending.
    rows: Vec<usize>,
    text: LargeStringArray,
}

impl SomeTexts {
    /// The wikitext of `rows` (ascending): from the view if it has the text, else read from
    /// the input the view was made from.
    fn of(view: &PagesView, input: &Input, rows: &[usize]) -> anyhow::Result<SomeTexts> {
        let text = match &view.wikitext {
            Some(w) => {
                let indices = arrow::array::UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
                arrow::compute::take(w, &indices, None)?
            }
            None => {
                let t = input.rows(Some(&["wikitext"]), rows)?.concat()?;
                let c =
                    t.column_by_name("wikitext").ok_or_else(|| anyhow!("the pages table has no `wikitext` column"))?;
                arrow::compute::cast(c, &DataType::LargeUtf8)?
            }
        };
        let text = text
            .as_any()
            .downcast_ref::<LargeStringArray>()
            .cloned()
            .ok_or_else(|| anyhow!("`wikitext` is not text"))?;
        Ok(SomeTexts { rows: rows.to_vec(), text })
    }

    /// The text of row `i` (empty if null or not read).
    fn get(&self, i: usize) -> &str {
        match self.rows.binary_search(&i) {
            Ok(j) if !self.text.is_null(j) => self.text.value(j),
            _ => "",
        }
    }
}

fn utf8(batch: &RecordBatch, name: &str) -> anyhow::Result<Option<StringArray>> {
    let Some(c) = batch.column_by_name(name) else { return Ok(None) };
    let c = if c.data_type() == &DataType::Utf8 { c.clone() } else { arrow::compute::cast(c, &DataType::Utf8)? };
    Ok(c.as_any().downcast_ref::<StringArray>().cloned())
}

/// The columns of a pages table that extract reads ([`DIFF_COLUMNS`] and the wikitext): the
/// others (links, categories, ...) are neither read from the store nor copied.
const PAGE_COLUMNS: &[&str] = &["id", "title", "ns", "wikitext", "redirect_to", "digest"];

impl PagesView {
    /// Reads the columns of a pages table.
    pub fn new(t: &Table) -> anyhow::Result<Self> {
        // One array per column (only those read here: a whole table would copy every column).
        // The text is joined on its own, with 64-bit offsets.
        let b = t.project(DIFF_COLUMNS)?.concat()?;
        let wikitext = match t.schema.column_with_name("wikitext") {
            Some((at, _)) => {
                let parts = t
                    .batches
                    .iter()
                    .map(|b| arrow::compute::cast(b.column(at), &DataType::LargeUtf8))
                    .collect::<Result<Vec<_>, _>>()?;
                if parts.is_empty() {
                    Some(LargeStringArray::from(Vec::<&str>::new()))
                } else {
                    let joined = arrow::compute::concat(&parts.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?;
                    joined.as_any().downcast_ref::<LargeStringArray>().cloned()
                }
            }
            None => None,
        };
        let need = |n: &str| -> anyhow::Result<StringArray> {
            utf8(&b, n)?.ok_or_else(|| anyhow!("the pages table has no `{n}` column"))
        };
        let ns = match b.column_by_name("ns") {
            Some(c) => arrow::compute::cast(c, &DataType::Int64)?.as_any().downcast_ref::<Int64Array>().cloned(),
            None => None,
        };
        Ok(PagesView {
            id: need("id")?,
            title: need("title")?,
            wikitext,
            ns,
            redirect_to: utf8(&b, "redirect_to")?,
            digest: utf8(&b, "digest")?,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    fn text(&self, i: usize) -> &str {
        match &self.wikitext {
            Some(w) if !w.is_null(i) => w.value(i),
            _ => "",
        }
    }

    fn redirect(&self, i: usize) -> Option<&str> {
        self.redirect_to.as_ref().filter(|r| !r.is_null(i)).map(|r| r.value(i)).filter(|s| !s.is_empty())
    }

    /// Whether a page's wikitext `#REDIRECT` makes it a redirect: only without a
    /// `redirect_to` column (`crawl` fills it from the text). With it, which pages are
    /// redirects is known without reading any text, which an incremental run relies on.
    fn text_redirects(&self) -> bool {
        self.redirect_to.is_none()
    }

    fn ns(&self, i: usize) -> i64 {
        self.ns.as_ref().filter(|n| !n.is_null(i)).map(|n| n.value(i)).unwrap_or(0)
    }

    /// Content digest of a row (the `digest` column, else computed).
    fn digest(&self, i: usize) -> String {
        self.digest_str(i).into_owned()
    }

    fn digest_str(&self, i: usize) -> std::borrow::Cow<'_, str> {
        match &self.digest {
            Some(d) if !d.is_null(i) => std::borrow::Cow::Borrowed(d.value(i)),
            _ => std::borrow::Cow::Owned(crate::ops::crawl::text_digest(self.title.value(i), self.text(i))),
        }
    }

    fn page_ref(&self, i: usize) -> PageRef<'_> {
        PageRef {
            id: self.id.value(i),
            title: self.title.value(i),
            redirect_to: self.redirect(i),
            text_redirects: self.text_redirects(),
        }
    }

    /// Which rows are used: articles with a title, the first row (in id order) of each
    /// title and of each id.
    fn usable(&self) -> Usable {
        let mut keep = vec![false; self.len()];
        let mut rejects = Vec::new();
        let mut first: rustc_hash::FxHashMap<std::borrow::Cow<'_, str>, usize> = Default::default();
        first.reserve(self.len());
        let mut order: Vec<usize> = (0..self.len()).collect();
        // `crawl` writes its rows sorted by id already.
        if !(1..self.len()).all(|i| self.id.value(i - 1) <= self.id.value(i)) {
            order.sort_by(|&a, &b| self.id.value(a).cmp(self.id.value(b)));
        }
        let mut by_id = Vec::with_capacity(self.len());
        let mut reject = |i: usize, why: String| {
            rejects.push((self.id.value(i).to_string(), self.title.value(i).to_string(), why));
        };
        for i in order {
            if self.ns(i) != 0 {
                continue;
            }
            let id = self.id.value(i);
            if by_id.last().is_some_and(|&j| self.id.value(j) == id) {
                reject(i, format!("duplicate page id `{id}`"));
                continue;
            }
            let t = wikitext::normalized_title(self.title.value(i));
            if t.is_empty() {
                reject(i, "empty title".to_string());
                continue;
            }
            match first.get(&t) {
                Some(&j) => reject(i, format!("duplicate title `{t}` (page {} is used)", self.id.value(j))),
                None => {
                    first.insert(t, i);
                    keep[i] = true;
                    by_id.push(i);
                }
            }
        }
        Usable { keep, by_id, rejects }
    }

    /// Redirect map: normalised title -> normalised target.
    fn redirects(&self, keep: &[bool]) -> Redirects {
        let mut m = Redirects::default();
        for (i, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
            let target = match self.text_redirects() {
                false => self.redirect(i).map(normalize_title),
                true => wikitext::parse_redirect(self.text(i)),
            };
            if let Some(t) = target {
                let from = normalize_title(self.title.value(i));
                if !t.is_empty() && t != from {
                    m.insert(from, t);
                }
            }
        }
        m
    }
}

/// The rows of a pages table that extract uses.
struct Usable {
    /// Per row: whether it is used.
    keep: Vec<bool>,
    /// The used rows in id order.
    by_id: Vec<usize>,
    /// (page id, title, reason) of the rows left out for a reason.
    rejects: Vec<(String, String, String)>,
}

/// Normalised title -> the normalised title it redirects to.
type Redirects = rustc_hash::FxHashMap<String, String>;

/// The used rows of `old` and of `new` whose page changed (its id is on one side only, or
/// its digest differs), each in row order: a merge of the two id orders.
fn changed_pages(old: &PagesView, old_rows: &Usable, new: &PagesView, new_rows: &Usable) -> (Vec<usize>, Vec<usize>) {
    use std::cmp::Ordering;
    let (a, b) = (&old_rows.by_id, &new_rows.by_id);
    let (mut changed_old, mut changed_new) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => old.id.value(x).cmp(new.id.value(y)),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => changed_old.push(a[i]),
            Ordering::Greater => changed_new.push(b[j]),
            Ordering::Equal => {
                if old.digest_str(a[i]) != new.digest_str(b[j]) {
                    changed_old.push(a[i]);
                    changed_new.push(b[j]);
                }
            }
        }
        i += usize::from(order != Ordering::Greater);
        j += usize::from(order != Ordering::Less);
    }
    changed_old.sort_unstable();
    changed_new.sort_unstable();
    (changed_old, changed_new)
}

fn memo_key(memo: &fleming_runtime::context::RecordMemo, title: &str, digest: &str) -> fleming_artifacts::Digest {
    memo.key(&json!({}), format!("{title}\0{digest}").as_bytes())
}

/// Facts of a page from the memo, if there.
fn memo_facts(memo: &fleming_runtime::context::RecordMemo, title: &str, digest: &str) -> Option<PageFacts> {
    memo_facts_at(memo, &memo_key(memo, title, digest))
}

fn memo_facts_at(memo: &fleming_runtime::context::RecordMemo, key: &fleming_artifacts::Digest) -> Option<PageFacts> {
    postcard::from_bytes::<PageFacts>(&memo.get(key)?).ok()
}

/// Facts of some rows (ascending) of a view: from the memo, else parsed (and memoised).
/// Only the text of the rows missing from the memo is read, in one go: a page seen before
/// (a reverted edit, a dump version read before) costs no read.
fn facts_of_rows(
    memo: &fleming_runtime::context::RecordMemo,
    view: &PagesView,
    input: &Input,
    rows: &[usize],
    parsed: &mut u64,
) -> anyhow::Result<Vec<PageFacts>> {
    let found: Vec<Option<PageFacts>> =
        rows.iter().map(|&i| memo_facts(memo, view.title.value(i), &view.digest(i))).collect();
    let missing: Vec<usize> = rows.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(&i, _)| i).collect();
    let texts = SomeTexts::of(view, input, &missing)?;
    Ok(rows
        .iter()
        .zip(found)
        .map(|(&i, f)| f.unwrap_or_else(|| facts_for(memo, view.title.value(i), &view.digest(i), texts.get(i), parsed)))
        .collect())
}

/// Facts of a page: from the memo, else parsed (and memoised).
fn facts_for(
    memo: &fleming_runtime::context::RecordMemo,
    title: &str,
    digest: &str,
    text: &str,
    parsed: &mut u64,
) -> PageFacts {
    let key = memo_key(memo, title, digest);
    if let Some(f) = memo_facts_at(memo, &key) {
        return f;
    }
    *parsed += 1;
    let f = PageFacts::of_text(text);
    if let Ok(bytes) = postcard::to_allocvec(&f) {
        let _ = memo.put(key, &bytes);
    }
    f
}

struct Settings {
    lexicon: Arc<Lexicon>,
    min_conf: u16,
    state: String,
}

fn settings(ctx: &OpContext) -> anyhow::Result<Settings> {
    let lexicon = match ctx.params.opt_path("lexicon") {
        Some(p) => Lexicon::load(&p).with_context(|| format!("loading the lexicon {}", p.display()))?,
        None => Lexicon::empty(),
    };
    let min_conf = (ctx.params.f64("min_confidence")? * 1000.0).round() as u16;
    let state = format!("v{VERSION};min_confidence={min_conf};lexicon={}", lexicon.digest);
    Ok(Settings { lexicon: Arc::new(lexicon), min_conf, state })
}

impl Operator for Extract {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let t0 = Instant::now();
        let s = settings(ctx)?;
        ctx.metric("lexicon_names", s.lexicon.len() as u64);
        ctx.metric("lexicon_s", t0.elapsed().as_secs_f64());
        let incremental = ctx.params.bool("incremental")?;
        let t_prev = Instant::now();
        let prev = if !incremental {
            Err("`incremental` is off")
        } else if ctx.cluster.is_some() {
            // Every process would have to follow process 0's fall-backs; a cluster is for
            // the full build, and an incremental rerun is cheap on one process.
            Err("a cluster run builds in full")
        } else {
            previous_state(ctx, &s.state)?
        };
        ctx.metric("previous_s", t_prev.elapsed().as_secs_f64());
        let updated = match prev {
            Ok(prev) => {
                // The diff reads the pages without their wikitext (most of the bytes); the
                // changed pages' text is read on its own. Without digests it hashes the text.
                let t = Instant::now();
                let input = ctx.input("pages")?.clone();
                let small = input.columns(DIFF_COLUMNS)?;
                let pages = match small.schema.column_with_name("digest") {
                    Some(_) => PagesView::new(&small)?,
                    None => PagesView::new(&input.columns(PAGE_COLUMNS)?)?,
                };
                ctx.metric("input_s", t.elapsed().as_secs_f64());
                // The previous outputs (every row, the bulk of what a rerun reads) are read
                // on their own thread while the diff runs, which does not need them. (When
                // the diff falls back to a full run, the scope still waits for the read.)
                std::thread::scope(|scope| {
                    let reading = scope.spawn(|| prev.outputs());
                    let outputs = || reading.join().map_err(|_| anyhow!("reading the previous outputs panicked"))?;
                    incremental_run(ctx, &s, &pages, &input, &prev, outputs)
                })?
            }
            Err(why) => Err(why),
        };
        let (ents, rels, rejects) = match updated {
            Ok(out) => out,
            Err(why) => {
                // Said in the manifest, so that a slow rerun explains itself.
                ctx.metric("full_reason", why);
                let (pages, texts) = full_input(ctx)?;
                match full_run(ctx, &s, &pages, &texts)? {
                    Some(built) => built,
                    // Another process of the cluster builds the tables.
                    None => return Ok(Outputs::new()),
                }
            }
        };
        ctx.metric("entities", ents.num_rows() as u64);
        ctx.metric("relations", rels.num_rows() as u64);
        ctx.metric("total_s", t0.elapsed().as_secs_f64());
        Ok(Outputs::new().table("entities", ents).table("relations", rels).table("rejects", rejects))
    }
}

/// The previous run's input, when its outputs were made with the same settings.
struct Previous {
    /// Its pages, read without their wikitext when they have digests (see [`Previous::texts`]).
    pages: PagesView,
    run: fleming_runtime::context::PreviousRun,
}

/// The previous entities and relations, as read.
struct PreviousOutputs {
    entities: Vec<RecordBatch>,
    relations: Vec<RecordBatch>,
    /// Seconds the read took.
    read_s: f64,
}

/// The columns of the previous pages that the diff reads: the wikitext, most of the bytes,
/// is only needed for a changed page whose facts are not in the memo.
const DIFF_COLUMNS: &[&str] = &["id", "title", "ns", "redirect_to", "digest"];

impl Previous {
    /// The previous pages with their wikitext (same rows as `pages`), when `pages` lacks it.
    fn texts(&self) -> anyhow::Result<Option<PagesView>> {
        if self.pages.wikitext.is_some() {
            return Ok(None);
        }
        let p = self
            .run
            .input_columns("pages", 0, Some(PAGE_COLUMNS))?
            .ok_or_else(|| anyhow!("the previous pages are no longer in the store"))?;
        Ok(Some(PagesView::new(&p)?))
    }

    /// Reads the previous entities and relations (checked to be in the store).
    fn outputs(&self) -> anyhow::Result<PreviousOutputs> {
        let read = |port: &str| -> anyhow::Result<Vec<RecordBatch>> {
            let t = self.run.output(port)?.ok_or_else(|| anyhow!("the previous {port} are no longer in the store"))?;
            Ok(t.batches)
        };
        let t = Instant::now();
        let (entities, relations) = (read("entities")?, read("relations")?);
        Ok(PreviousOutputs { entities, relations, read_s: t.elapsed().as_secs_f64() })
    }
}

fn previous_state(ctx: &OpContext, state: &str) -> anyhow::Result<Result<Previous, &'static str>> {
    let Some(prev) = &ctx.previous else { return Ok(Err("no previous run of this stage")) };
    let pages = match prev.input_columns("pages", 0, Some(DIFF_COLUMNS)) {
        // Without digests the diff hashes the text.
        Ok(Some(p)) if p.schema.column_with_name("digest").is_none() => {
            prev.input_columns("pages", 0, Some(PAGE_COLUMNS))
        }
        other => other,
    };
    // The outputs' settings are in their schema: no column is read here (see
    // [`Previous::outputs`]).
    let schema_of = |port: &str| -> anyhow::Result<Option<Table>> {
        match prev.outputs.get(port) {
            Some(r) => (prev.reader)(&r.digest, Some(&[])),
            None => Ok(None),
        }
    };
    let (Ok(Some(e)), Ok(Some(r)), Ok(Some(p))) = (schema_of("entities"), schema_of("relations"), pages) else {
        return Ok(Err("the previous output or input is no longer in the store"));
    };
    let same = |t: &Table| t.schema.metadata().get(STATE_KEY).map(String::as_str) == Some(state);
    if !same(&e) || !same(&r) {
        return Ok(Err("the previous output was made with other settings"));
    }
    Ok(Ok(Previous { pages: PagesView::new(&p)?, run: prev.clone() }))
}

type Built = (Table, Table, Table);

/// The wikitext a process parses: every page's, or in a cluster run its share's, a
/// contiguous range of rows (the other processes read the rest).
enum Texts {
    /// In the pages view.
    All,
    /// Rows `lo..lo + text.len()`.
    Share { lo: usize, text: LargeStringArray },
}

impl Texts {
    fn get<'a>(&'a self, pages: &'a PagesView, i: usize) -> &'a str {
        match self {
            Texts::All => pages.text(i),
            Texts::Share { lo, text } => match i.checked_sub(*lo) {
                Some(at) if at < text.len() && !text.is_null(at) => text.value(at),
                _ => "",
            },
        }
    }
}

/// The rows process `process` of `processes` parses: a contiguous share of `len`.
fn share_of(len: usize, process: usize, processes: usize) -> std::ops::Range<usize> {
    let n = processes.max(1);
    len * process / n..len * (process + 1) / n
}

/// The pages a full run reads: every column of every page, or in a cluster run (when the
/// pages carry `redirect_to` and `digest`, so that the text is needed only to parse) the
/// wikitext of this process's share alone.
fn full_input(ctx: &OpContext) -> anyhow::Result<(Arc<PagesView>, Arc<Texts>)> {
    let input = ctx.input("pages")?;
    if let Some(c) = &ctx.cluster {
        let view = PagesView::new(&input.columns(DIFF_COLUMNS)?)?;
        if view.redirect_to.is_some() && view.digest.is_some() {
            let rows: Vec<usize> = share_of(view.len(), c.process, c.processes()).collect();
            let some = SomeTexts::of(&view, input, &rows)?;
            let lo = rows.first().copied().unwrap_or(0);
            return Ok((Arc::new(view), Arc::new(Texts::Share { lo, text: some.text })));
        }
    }
    let pages = PagesView::new(&input.columns(PAGE_COLUMNS)?)?;
    if pages.wikitext.is_none() {
        anyhow::bail!("the pages table has no `wikitext` column");
    }
    Ok((Arc::new(pages), Arc::new(Texts::All)))
}

/// Parses the pages and merges their records; `None` on a process of a cluster other than
/// 0, which only feeds its share.
fn full_run(
    ctx: &mut OpContext,
    s: &Settings,
    pages: &Arc<PagesView>,
    texts: &Arc<Texts>,
) -> anyhow::Result<Option<Built>> {
    let t = Instant::now();
    let Usable { keep, rejects, .. } = pages.usable();
    let keep = Arc::new(keep);
    let redirects = Arc::new(pages.redirects(&keep));
    let memo = ctx.memo.clone();
    let parsed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let processes = ctx.cluster.as_ref().map(|c| c.processes()).unwrap_or(1);
    let mine = share_of(pages.len(), ctx.cluster.as_ref().map(|c| c.process).unwrap_or(0), processes);
    let bytes: u64 = mine.clone().filter(|&i| keep[i]).map(|i| texts.get(pages, i).len() as u64).sum();
    ctx.progress.set_unit("pages");
    ctx.progress.set_total(mine.len() as u64);
    let (p2, k2, r2, t2, lex, parsed2, progress, cancel) = (
        pages.clone(),
        keep.clone(),
        redirects.clone(),
        texts.clone(),
        s.lexicon.clone(),
        parsed.clone(),
        ctx.progress.clone(),
        ctx.cancel.clone(),
    );
    let min_conf = s.min_conf;
    let feed: Arc<graph::Feed> = Arc::new(move |index, peers, emit, names| {
        let interp = Interp { lexicon: &lex, min_conf };
        let resolve = |t: &str| r2.get(t).cloned();
        let mut n_parsed = 0;
        // The workers of process p are p * threads .. (p + 1) * threads (timely's numbering);
        // each takes every `threads`-th row of its process's share.
        let threads = (peers / processes).max(1);
        let share = share_of(p2.len(), index / threads, processes);
        for (done, i) in (share.start + index % threads..share.end).step_by(threads).enumerate() {
            if !k2[i] {
                continue;
            }
            if done % 256 == 0 {
                cancel.check()?;
                progress.inc(256.min(p2.len() as u64));
            }
            let title = p2.title.value(i);
            let facts = facts_for(&memo, title, &p2.digest(i), t2.get(&p2, i), &mut n_parsed);
            for (r, d) in rules::records(&p2.page_ref(i), &facts, &interp, &resolve, names) {
                emit(r, d);
            }
        }
        parsed2.fetch_add(n_parsed, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    });
    ctx.metric("prep_s", t.elapsed().as_secs_f64());
    let out = graph::run(ctx.threads, ctx.cluster.as_ref(), &ctx.cancel, feed)?;
    let _ = ctx.memo.flush();
    let Some(out) = out else { return Ok(None) };
    let graph_s = t.elapsed().as_secs_f64();
    ctx.metric("graph_finish_s", out.finish_s);
    ctx.metric("graph_feed_s", out.feed_s);
    ctx.metric("graph_dataflow_s", out.dataflow_s);
    ctx.metric("mode", "full");
    // In a cluster run, of process 0's share.
    let here = if processes > 1 { "_process_0" } else { "" };
    ctx.metric(&format!("parsed_pages{here}"), parsed.load(std::sync::atomic::Ordering::Relaxed));
    ctx.metric(&format!("wikitext_bytes{here}"), bytes);
    ctx.metric("graph_s", graph_s);
    if out.negative > 0 {
        anyhow::bail!("internal error: {} records with negative multiplicity in a full run", out.negative);
    }
    let t = Instant::now();
    let (ents, rels) = build_batches(&out, s, pages, None, None, ctx.threads)?;
    ctx.metric("build_s", t.elapsed().as_secs_f64());
    let (ent_schema, rel_schema) = (schema(entity_columns(), &s.state), schema(relation_columns(), &s.state));
    Ok(Some((Table::new(ent_schema, ents), Table::new(rel_schema, rels), rejects_table(rejects)?)))
}

/// The entity rows (of the keys in `only`, if given) and the relation rows of the graph;
/// with more than one thread, each table is cut into one slice per thread and the slices
/// are built side by side (a table's digest does not depend on how it is cut into batches).
fn build_batches(
    out: &GraphOut,
    s: &Settings,
    pages: &PagesView,
    only: Option<&KeySet>,
    base: Option<&PagesMerge>,
    threads: usize,
) -> anyhow::Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let entity_rows: Vec<&(u64, EntityAgg)> =
        out.entities.iter().filter(|(k, _)| only.is_none_or(|o| o.contains(k))).collect();
    // An incremental build cites a few pages.
    let titles_of = |rows: &[RelationRow<'_>]| page_titles(pages, only.map(|_| rows));
    if threads <= 1 {
        let rows = relation_rows(out, false);
        let rels = relations_batch(&rows, out, s, &titles_of(&rows))?;
        return Ok((vec![entities_batch(&entity_rows, out, s, base)?], vec![rels]));
    }
    let ents = || -> anyhow::Result<Vec<RecordBatch>> {
        let chunk = entity_rows.len().div_ceil(threads).max(1);
        entity_rows.par_chunks(chunk).map(|part| entities_batch(part, out, s, base)).collect()
    };
    let rels = || -> anyhow::Result<Vec<RecordBatch>> {
        let (rows, titles) = match only {
            None => rayon::join(|| relation_rows(out, true), || page_titles(pages, None)),
            Some(_) => {
                let rows = relation_rows(out, true);
                let titles = titles_of(&rows);
                (rows, titles)
            }
        };
        let chunk = rows.len().div_ceil(threads).max(1);
        rows.par_chunks(chunk).map(|part| relations_batch(part, out, s, &titles)).collect()
    };
    let (e, r) = rayon::join(ents, rels);
    Ok((e?, r?))
}

/// Page hash -> title, of the pages that the rows `cited_by` cite (of every page if `None`:
/// a full build cites nearly all, and the set would cost more than it saves). A title is
/// normalised, an allocation, only for a page in the map.
fn page_titles(pages: &PagesView, cited_by: Option<&[RelationRow<'_>]>) -> Names {
    let cited: Option<rustc_hash::FxHashSet<u64>> =
        cited_by.map(|rows| rows.iter().flat_map(|r| r.2.iter().map(|x| x.page)).collect());
    (0..pages.len())
        .filter_map(|i| {
            let k = h(pages.id.value(i));
            cited.as_ref().is_none_or(|c| c.contains(&k)).then(|| (k, normalize_title(pages.title.value(i))))
        })
        .collect()
}

fn rejects_table(rejects: Vec<(String, String, String)>) -> anyhow::Result<Table> {
    let sch = schema(reject_columns(), "");
    let sch = Arc::new(Schema::new(sch.fields().clone()));
    let ids: Vec<String> = rejects.iter().map(|(p, _, r)| format!("{:016x}", h(&format!("{p}\0{r}")))).collect();
    let batch = RecordBatch::try_new(
        sch.clone(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())),
        ],
    )?;
    Ok(Table::new(sch, vec![batch]))
}

fn name_of(names: &Names, k: u64) -> anyhow::Result<&str> {
    names.get(&k).map(String::as_str).ok_or_else(|| anyhow!("internal error: no string for hash {k:016x}"))
}

/// The type of an entity from its aggregate.
fn entity_type(name: &str, agg: &EntityAgg, infobox: Option<&str>, lexicon: &Lexicon) -> EntityType {
    match rules::declared(infobox) {
        Declared::Medical(t) => return t,
        Declared::NotMedical => return EntityType::Other,
        // An organism is a pathogen when the lexicon says so or medical infoboxes name it
        // (a disease's `causes`); otherwise an animal or a plant.
        Declared::Organism => {
            let named = agg.votes.get(EntityType::Pathogen as usize).is_some_and(|v| *v > 0);
            return if lexicon.type_of(name) == Some(EntityType::Pathogen) || named {
                EntityType::Pathogen
            } else {
                EntityType::Other
            };
        }
        Declared::Unknown => {}
    }
    if let Some(t) = lexicon.type_of(name) {
        return t;
    }
    let mut best = (0i64, EntityType::Other);
    for (i, v) in agg.votes.iter().enumerate() {
        if *v > best.0 {
            best = (*v, EntityType::from_index(i));
        }
    }
    best.1
}

/// The entities table's rows for `rows` (in key order, as the graph gives them: ids are
/// the keys in fixed-width hex, so key order is id order); `base` holds the previous rows
/// whose page lists an incremental run updates.
fn entities_batch(
    rows: &[&(u64, EntityAgg)],
    out: &GraphOut,
    s: &Settings,
    base: Option<&PagesMerge>,
) -> anyhow::Result<RecordBatch> {
    let names = &out.names;
    let n = rows.len();
    let n_pages: usize = rows.iter().map(|r| r.1.pages.len() + r.1.pages_base.max(0) as usize).sum();
    let n_aliases: usize = rows.iter().map(|r| r.1.aliases.len()).sum();
    let text = |per_row: usize| StringBuilder::with_capacity(n, n * per_row);
    let ints = |items: usize| ListBuilder::with_capacity(Int64Builder::with_capacity(items), n);
    let mut id = text(16);
    let mut name = text(20);
    let mut ty = text(8);
    let mut aliases = ListBuilder::with_capacity(StringBuilder::with_capacity(n_aliases, n_aliases * 16), n);
    let mut description = text(64);
    let mut degree = Int64Builder::with_capacity(n);
    let mut frequency = Int64Builder::with_capacity(n);
    let mut pages = ListBuilder::with_capacity(StringBuilder::with_capacity(n_pages, n_pages * 16), n);
    let mut page = text(16);
    let mut infobox = text(8);
    let mut alias_counts = ints(n_aliases);
    let mut votes = ints(n * lexicon::TYPES.len());
    let mut al: Vec<(&str, i64)> = Vec::new();
    let (mut ps, mut removed, mut merged): (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for (k, agg) in rows.iter().map(|r| (&r.0, &r.1)) {
        let nm = name_of(names, *k)?;
        let own_box = match agg.own {
            Some(OwnVal { infobox: b, .. }) if b != 0 => Some(name_of(names, b)?),
            _ => None,
        };
        id.append_value(Hex16::new(*k).as_str());
        name.append_value(nm);
        ty.append_value(entity_type(nm, agg, own_box, &s.lexicon).as_str());
        // Aliases: labels and redirect titles with their counts, lexicon synonyms (count 0).
        al.clear();
        for (a, c) in &agg.aliases {
            al.push((name_of(names, *a)?, *c));
        }
        for syn in s.lexicon.synonyms_of(nm) {
            if !syn.eq_ignore_ascii_case(nm) && !al.iter().any(|(a, _)| a == syn) {
                al.push((syn, 0));
            }
        }
        al.sort_unstable();
        for (a, c) in &al {
            aliases.values().append_value(a);
            alias_counts.values().append_value(*c);
        }
        aliases.append(true);
        alias_counts.append(true);
        match agg.own {
            Some(o) => {
                if o.description != 0 {
                    description.append_value(name_of(names, o.description)?);
                } else {
                    description.append_null();
                }
                page.append_value(name_of(names, o.page)?);
            }
            None => {
                description.append_null();
                page.append_null();
            }
        }
        infobox.append_option(own_box);
        degree.append_value(agg.degree);
        frequency.append_value(agg.frequency);
        ps.clear();
        for p in &agg.pages {
            ps.push(name_of(names, *p)?);
        }
        ps.sort_unstable();
        let list = if agg.pages_base == 0 && agg.pages_removed.is_empty() {
            &ps
        } else {
            let base = base.ok_or(Inconsistent("pages taken from a list that is not there"))?;
            removed.clear();
            for p in &agg.pages_removed {
                removed.push(name_of(names, *p)?);
            }
            removed.sort_unstable();
            base.merge(*k, agg.pages_base, &ps, &removed, &mut merged)?;
            &merged
        };
        for p in list {
            pages.values().append_value(p);
        }
        pages.append(true);
        for v in &agg.votes {
            votes.values().append_value(*v);
        }
        votes.append(true);
    }
    let sch = schema(entity_columns(), &s.state);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(name.finish()),
        Arc::new(ty.finish()),
        Arc::new(aliases.finish()),
        Arc::new(description.finish()),
        Arc::new(degree.finish()),
        Arc::new(frequency.finish()),
        Arc::new(pages.finish()),
        Arc::new(page.finish()),
        Arc::new(infobox.finish()),
        Arc::new(alias_counts.finish()),
        Arc::new(votes.finish()),
    ];
    Ok(RecordBatch::try_new(sch, cols)?)
}

/// The previous entity rows an incremental run starts from: the dataflow gives the changes
/// to their `pages` lists, and the lists are merged here (hub entities list thousands of
/// pages, too many to feed back through the dataflow).
struct PagesMerge<'a> {
    batches: &'a [RecordBatch],
    /// Entity key -> its previous row (batch, row).
    rows: rustc_hash::FxHashMap<u64, (usize, usize)>,
}

/// The previous output does not fit its input (an incremental run then makes a full run).
#[derive(Debug, thiserror::Error)]
#[error("the previous output is inconsistent with its input: {0}")]
struct Inconsistent(&'static str);

impl<'a> PagesMerge<'a> {
    /// Entity `k`'s pages: its previous list (of `len` pages) minus `removed`, plus `added`
    /// (both sorted), in order.
    fn merge<'s>(
        &self,
        k: u64,
        len: i64,
        added: &[&'s str],
        removed: &[&str],
        out: &mut Vec<&'s str>,
    ) -> anyhow::Result<()>
    where
        'a: 's,
    {
        out.clear();
        let &(batch, row) = self.rows.get(&k).ok_or(Inconsistent("an entity's previous row is missing"))?;
        let list = col_list(&self.batches[batch], "pages")?;
        let values: &'a StringArray = list
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| anyhow!("previous output: `pages` is not a list of strings"))?;
        let offsets = list.value_offsets();
        let range = offsets[row] as usize..offsets[row + 1] as usize;
        if range.len() as i64 != len {
            return Err(Inconsistent("an entity's page count").into());
        }
        let (mut add, mut rm) = (added.iter().copied().peekable(), removed.iter().copied().peekable());
        let mut last: Option<&str> = None;
        for j in range {
            let p = values.value(j);
            if values.is_null(j) || last.is_some_and(|l| l >= p) {
                return Err(Inconsistent("an entity's page list is not a sorted set").into());
            }
            last = Some(p);
            while let Some(a) = add.next_if(|a| *a < p) {
                out.push(a);
            }
            if add.next_if_eq(&p).is_some() {
                return Err(Inconsistent("a page added to a list that has it").into());
            }
            if rm.next_if_eq(&p).is_some() {
                continue;
            }
            if rm.peek().is_some_and(|r| *r < p) {
                return Err(Inconsistent("a page removed from a list that does not have it").into());
            }
            out.push(p);
        }
        if rm.next().is_some() {
            return Err(Inconsistent("a page removed from a list that does not have it").into());
        }
        out.extend(add);
        Ok(())
    }
}

/// A relation's id.
pub fn relation_id(s: u64, p: u8, o: u64) -> String {
    format!("{:016x}", relation_key(s, p, o, &mut String::new()))
}

/// The number behind a relation's id (its id is this in fixed-width hex), hashing in a
/// reused buffer.
fn relation_key(s: u64, p: u8, o: u64, buf: &mut String) -> u64 {
    let pred = Predicate::from_index(p).map(|p| p.as_str()).unwrap_or("?");
    buf.clear();
    for part in [Hex16::new(s).as_str(), "|", pred, "|", Hex16::new(o).as_str()] {
        buf.push_str(part);
    }
    h(buf)
}

/// A relation row to build: (the number behind its id, its key, its supports).
type RelationRow<'a> = (u64, &'a RelKey, &'a Vec<SupportVal>);

/// The graph's relations (but self-loops) in key order: (subject, predicate, object), as
/// the graph gives them. That order puts an entity's relations together, so the subject
/// and evidence columns are runs: the table encodes in half the time and bytes that a
/// hashed-id order takes. Ids are hashed on the rayon pool when `parallel` (650k
/// relations are a large serial part of a `-w > 1` run otherwise).
fn relation_rows<'a>(out: &'a GraphOut, parallel: bool) -> Vec<RelationRow<'a>> {
    let not_a_loop = |((a, _, b), _): &&graph::RelRow| a != b;
    let row =
        |buf: &mut String, (k, v): &'a graph::RelRow| -> RelationRow<'a> { (relation_key(k.0, k.1, k.2, buf), k, v) };
    if parallel {
        out.relations.par_iter().filter(not_a_loop).map_init(String::new, row).collect()
    } else {
        let mut buf = String::new();
        out.relations.iter().filter(not_a_loop).map(|r| row(&mut buf, r)).collect()
    }
}

/// The relation table's rows for `rows`.
fn relations_batch(
    rows: &[RelationRow<'_>],
    out: &GraphOut,
    s: &Settings,
    titles: &Names,
) -> anyhow::Result<RecordBatch> {
    let names = &out.names;
    let n = rows.len();
    let supports: usize = rows.iter().map(|r| r.2.len()).sum();
    // Capacities from the row counts: growing builders of this size costs a copy per
    // doubling.
    let text = |per_row: usize| StringBuilder::with_capacity(n, n * per_row);
    let list =
        |per_item: usize| ListBuilder::with_capacity(StringBuilder::with_capacity(supports, supports * per_item), n);
    let (mut id, mut subject, mut object) = (text(16), text(16), text(16));
    let mut predicate = text(12);
    let (mut ev_page, mut ev_section, mut ev_field) = (text(24), text(16), text(8));
    let mut conf = Float64Builder::with_capacity(n);
    let mut parents = list(16);
    let (mut subject_name, mut object_name) = (text(24), text(24));
    let (mut sup_sections, mut sup_fields) = (list(16), list(8));
    let mut sup_conf = ListBuilder::with_capacity(Float64Builder::with_capacity(supports), n);
    let opt = |k: u64| -> anyhow::Result<Option<&str>> { if k == 0 { Ok(None) } else { name_of(names, k).map(Some) } };
    let mut sorted: Vec<(&str, &SupportVal)> = Vec::new();
    for &(rid, &(sk, p, ok), sups) in rows {
        let Some(best) = sups.iter().fold(None::<&SupportVal>, |b, x| match b {
            Some(b) if rules::better(b, x) => Some(b),
            _ => Some(x),
        }) else {
            continue;
        };
        id.append_value(Hex16::new(rid).as_str());
        subject.append_value(Hex16::new(sk).as_str());
        predicate.append_value(Predicate::from_index(p).map(|p| p.as_str()).unwrap_or("?"));
        object.append_value(Hex16::new(ok).as_str());
        let title = titles.get(&best.page).map(String::as_str).map(Ok).unwrap_or_else(|| name_of(names, best.page))?;
        ev_page.append_value(title);
        ev_section.append_option(opt(best.section)?);
        ev_field.append_option(opt(best.field)?);
        conf.append_value(best.conf as f64 / 1000.0);
        sorted.clear();
        for x in sups {
            sorted.push((name_of(names, x.page)?, x));
        }
        sorted.sort_unstable();
        for (pid, x) in &sorted {
            parents.values().append_value(pid);
            sup_sections.values().append_option(opt(x.section)?);
            sup_fields.values().append_option(opt(x.field)?);
            sup_conf.values().append_value(x.conf as f64 / 1000.0);
        }
        parents.append(true);
        sup_sections.append(true);
        sup_fields.append(true);
        sup_conf.append(true);
        subject_name.append_value(name_of(names, sk)?);
        object_name.append_value(name_of(names, ok)?);
    }
    let sch = schema(relation_columns(), &s.state);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(subject.finish()),
        Arc::new(predicate.finish()),
        Arc::new(object.finish()),
        Arc::new(ev_page.finish()),
        Arc::new(ev_section.finish()),
        Arc::new(ev_field.finish()),
        Arc::new(conf.finish()),
        Arc::new(parents.finish()),
        Arc::new(subject_name.finish()),
        Arc::new(object_name.finish()),
        Arc::new(sup_sections.finish()),
        Arc::new(sup_fields.finish()),
        Arc::new(sup_conf.finish()),
    ];
    Ok(RecordBatch::try_new(sch, cols)?)
}

// ---------------------------------------------------------------------------------------
// Incremental runs.

fn col_str<'a>(b: &'a RecordBatch, name: &str) -> anyhow::Result<&'a StringArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| anyhow!("previous output has no string column `{name}`"))
}

fn col_i64<'a>(b: &'a RecordBatch, name: &str) -> anyhow::Result<&'a Int64Array> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| anyhow!("previous output has no integer column `{name}`"))
}

fn col_list<'a>(b: &'a RecordBatch, name: &str) -> anyhow::Result<&'a ListArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<ListArray>())
        .ok_or_else(|| anyhow!("previous output has no list column `{name}`"))
}

fn list_strs(l: &ListArray, i: usize) -> Vec<Option<String>> {
    let v = l.value(i);
    match v.as_any().downcast_ref::<StringArray>() {
        Some(s) => (0..s.len()).map(|j| (!s.is_null(j)).then(|| s.value(j).to_string())).collect(),
        None => Vec::new(),
    }
}

fn list_i64(l: &ListArray, i: usize) -> Vec<i64> {
    let v = l.value(i);
    match v.as_any().downcast_ref::<Int64Array>() {
        Some(s) => (0..s.len()).map(|j| s.value(j)).collect(),
        None => Vec::new(),
    }
}

fn list_f64(l: &ListArray, i: usize) -> Vec<f64> {
    let v = l.value(i);
    match v.as_any().downcast_ref::<Float64Array>() {
        Some(s) => (0..s.len()).map(|j| s.value(j)).collect(),
        None => Vec::new(),
    }
}

fn parse_hex(s: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(s, 16).map_err(|_| anyhow!("previous output: `{s}` is not an entity id"))
}

/// Records of a previous entity row (its state), with the strings they use. Its pages
/// enter as their count (the list is merged when the row is rebuilt, see [`PagesMerge`]):
/// hub entities list thousands.
fn decompose_entity(b: &RecordBatch, i: usize, names: &mut Names, out: &mut Vec<(Rec, i64)>) -> anyhow::Result<()> {
    let k = parse_hex(col_str(b, "id")?.value(i))?;
    names.insert(k, col_str(b, "name")?.value(i).to_string());
    let freq = col_i64(b, "frequency")?.value(i);
    if freq != 0 {
        out.push((Rec::Freq(k), freq));
    }
    let pages = col_list(b, "pages")?.value_length(i) as i64;
    if pages > 0 {
        out.push((Rec::PagesBase(k), pages));
    }
    let aliases = list_strs(col_list(b, "aliases")?, i);
    let counts = list_i64(col_list(b, "alias_counts")?, i);
    for (a, c) in aliases.into_iter().zip(counts) {
        if let Some(a) = a
            && c > 0
        {
            let ah = h(&a);
            names.insert(ah, a);
            out.push((Rec::Alias(k, ah), c));
        }
    }
    for (t, v) in list_i64(col_list(b, "type_votes")?, i).into_iter().enumerate() {
        if v > 0 {
            out.push((Rec::Vote(k, t as u8), v));
        }
    }
    let page = col_str(b, "page")?;
    if !page.is_null(i) {
        let mut hash = |c: &StringArray| -> u64 {
            if c.is_null(i) {
                return 0;
            }
            let v = c.value(i).to_string();
            let x = h(&v);
            names.insert(x, v);
            x
        };
        let own = OwnVal {
            page: hash(page),
            infobox: hash(col_str(b, "infobox")?),
            description: hash(col_str(b, "description")?),
        };
        out.push((Rec::Own(k, own), 1));
    }
    Ok(())
}

/// Records of a previous relation row (its supports).
fn decompose_relation(b: &RecordBatch, i: usize, names: &mut Names, out: &mut Vec<(Rec, i64)>) -> anyhow::Result<()> {
    let s = parse_hex(col_str(b, "subject")?.value(i))?;
    let o = parse_hex(col_str(b, "object")?.value(i))?;
    let p = Predicate::parse(col_str(b, "predicate")?.value(i))
        .ok_or_else(|| anyhow!("previous output: unknown predicate"))? as u8;
    names.insert(s, col_str(b, "subject_name")?.value(i).to_string());
    names.insert(o, col_str(b, "object_name")?.value(i).to_string());
    let parents = list_strs(col_list(b, "parents")?, i);
    let sections = list_strs(col_list(b, "support_sections")?, i);
    let fields = list_strs(col_list(b, "support_fields")?, i);
    let confs = list_f64(col_list(b, "support_confidence")?, i);
    for j in 0..parents.len() {
        let mut hash = |v: Option<&Option<String>>| -> u64 {
            match v.cloned().flatten() {
                Some(v) => {
                    let x = h(&v);
                    names.insert(x, v);
                    x
                }
                None => 0,
            }
        };
        let sup = SupportVal {
            page: hash(parents.get(j)),
            section: hash(sections.get(j)),
            field: hash(fields.get(j)),
            conf: (confs.get(j).copied().unwrap_or(0.0) * 1000.0).round() as u16,
        };
        out.push((Rec::Support((s, p, o), sup), 1));
    }
    Ok(())
}

fn touches(r: &Rec, set: &KeySet) -> bool {
    let (a, b) = r.keys();
    set.contains(&a) || b.is_some_and(|b| set.contains(&b))
}

/// Updates the previous output; `Err(why)` when a full run is the better choice.
fn incremental_run(
    ctx: &mut OpContext,
    s: &Settings,
    pages: &PagesView,
    input: &Input,
    prev: &Previous,
    outputs: impl FnOnce() -> anyhow::Result<PreviousOutputs>,
) -> anyhow::Result<Result<Built, &'static str>> {
    let t = Instant::now();
    let (new_rows, old_rows) = rayon::join(|| pages.usable(), || prev.pages.usable());
    if !new_rows.rejects.iter().chain(old_rows.rejects.iter()).all(|r| r.2 == "empty title") {
        // Duplicate titles make "which page is the entity's own" depend on both versions.
        return Ok(Err("duplicate page titles or ids"));
    }
    let (changed_old, changed_new) = changed_pages(&prev.pages, &old_rows, pages, &new_rows);
    let keep_new = &new_rows.keep;
    let changed = changed_new.len().max(changed_old.len());
    ctx.metric("changed_pages", (changed_new.len() + changed_old.len()) as u64);
    if pages.len() > 1000 && changed * 3 > pages.len() {
        // A third of a large wiki changed: a full run is as fast.
        return Ok(Err("more than a third of the pages changed"));
    }
    ctx.metric("prep_diff_s", t.elapsed().as_secs_f64());
    let memo = ctx.memo.clone();
    let mut parsed = 0u64;
    // Facts of the changed pages, from the memo where it has them (the previous pages' are
    // there: the previous run put them there), else from their text, read now for those
    // pages only.
    let new_facts = facts_of_rows(&memo, pages, input, &changed_new, &mut parsed)?;
    let memo_old: Option<Vec<PageFacts>> =
        changed_old.iter().map(|&i| memo_facts(&memo, prev.pages.title.value(i), &prev.pages.digest(i))).collect();
    let old_facts = match memo_old {
        Some(f) => f,
        None => {
            let texts = prev.texts()?;
            let v = texts.as_ref().unwrap_or(&prev.pages);
            changed_old
                .iter()
                .map(|&i| facts_for(&memo, v.title.value(i), &v.digest(i), v.text(i), &mut parsed))
                .collect()
        }
    };
    // The previous redirect map is the current one with the changed pages as they were.
    let new_map = pages.redirects(keep_new);
    let mut old_map = new_map.clone();
    for &i in &changed_new {
        old_map.remove(&normalize_title(pages.title.value(i)));
    }
    for (&i, f) in changed_old.iter().zip(&old_facts) {
        let from = normalize_title(prev.pages.title.value(i));
        let target = match prev.pages.text_redirects() {
            false => prev.pages.redirect(i).map(normalize_title),
            true => f.redirect.clone(),
        };
        if let Some(t) = target.filter(|t| !t.is_empty() && *t != from) {
            old_map.insert(from, t);
        }
    }
    let new_res = |t: &str| new_map.get(t).cloned();
    let old_res = |t: &str| old_map.get(t).cloned();
    // Keys whose resolution changes: their entities are recomputed from all their pages.
    let mut rset = KeySet::default();
    let mut note = |title: &str| {
        let k = normalize_title(title);
        rset.insert(h(&k));
        rset.insert(h(&old_res(&k).unwrap_or_else(|| k.clone())));
        rset.insert(h(&new_res(&k).unwrap_or_else(|| k.clone())));
    };
    for (&i, f) in changed_new.iter().zip(&new_facts) {
        let title = pages.title.value(i);
        if pages.redirect(i).is_some() || f.redirect.is_some() || old_map.contains_key(&normalize_title(title)) {
            note(title);
        }
    }
    for (&i, f) in changed_old.iter().zip(&old_facts) {
        let title = prev.pages.title.value(i);
        if prev.pages.redirect(i).is_some() || f.redirect.is_some() || new_map.contains_key(&normalize_title(title)) {
            note(title);
        }
    }
    ctx.metric("prep_redirects_s", t.elapsed().as_secs_f64());
    let interp = Interp { lexicon: &s.lexicon, min_conf: s.min_conf };
    let mut names = Names::default();
    // Delta: old records out, new records in (those not about re-resolved keys), summed: what
    // a changed page says as before cancels out, so that only the entities and relations
    // whose records changed are rebuilt.
    let mut delta: rustc_hash::FxHashMap<Rec, i64> = Default::default();
    let mut keys: KeySet = rset.clone();
    let mut add = |view: &PagesView, rows: &[usize], facts: &[PageFacts], resolve: &rules::Resolve<'_>, sign: i64| {
        for (&i, f) in rows.iter().zip(facts) {
            for (r, d) in rules::records(&view.page_ref(i), f, &interp, resolve, &mut names) {
                if touches(&r, &rset) {
                    let (a, b) = r.keys();
                    keys.insert(a);
                    keys.extend(b);
                } else {
                    *delta.entry(r).or_default() += sign * d;
                }
            }
        }
    };
    add(&prev.pages, &changed_old, &old_facts, &old_res, -1);
    add(pages, &changed_new, &new_facts, &new_res, 1);
    let mut recs: Vec<(Rec, i64)> = delta.into_iter().filter(|(_, d)| *d != 0).collect();
    recs.sort_unstable();
    for (r, _) in &recs {
        let (a, b) = r.keys();
        keys.insert(a);
        keys.extend(b);
    }
    ctx.metric("prep_parse_s", t.elapsed().as_secs_f64());
    // Re-resolved keys: everything the pages touching them say about them, as it is now.
    // The previous tables are walked batch by batch, as they were read: concatenating them
    // would copy every row.
    let t_wait = Instant::now();
    let read = outputs()?;
    ctx.metric("previous_outputs_s", read.read_s);
    ctx.metric("previous_wait_s", t_wait.elapsed().as_secs_f64());
    let (pe, pr) = (&read.entities, &read.relations);
    if !rset.is_empty() {
        let mut fallback_pages: BTreeSet<String> = BTreeSet::new();
        for b in pe {
            let ids = col_str(b, "id")?;
            for i in 0..b.num_rows() {
                if rset.contains(&parse_hex(ids.value(i))?) {
                    fallback_pages.extend(list_strs(col_list(b, "pages")?, i).into_iter().flatten());
                }
            }
        }
        for &i in &changed_new {
            fallback_pages.insert(pages.id.value(i).to_string());
        }
        let row_of: HashMap<&str, usize> =
            (0..pages.len()).filter(|&i| keep_new[i]).map(|i| (pages.id.value(i), i)).collect();
        let mut rows: Vec<usize> = fallback_pages.iter().filter_map(|id| row_of.get(id.as_str()).copied()).collect();
        rows.sort_unstable();
        // Their facts are in the memo (the unchanged pages' from the previous run, the
        // changed ones' from just above).
        let facts = facts_of_rows(&memo, pages, input, &rows, &mut parsed)?;
        for (&i, f) in rows.iter().zip(facts) {
            for (r, d) in rules::records(&pages.page_ref(i), &f, &interp, &new_res, &mut names) {
                if touches(&r, &rset) {
                    let (a, b) = r.keys();
                    keys.insert(a);
                    keys.extend(b);
                    recs.push((r, d));
                }
            }
        }
        ctx.metric("fallback_pages", fallback_pages.len() as u64);
    }
    ctx.metric("prep_rset_s", t.elapsed().as_secs_f64());
    // Relations about re-resolved keys are recomputed from the pages, so they may vanish or
    // appear: the degrees of both their ends must be recomputed too.
    if !rset.is_empty() {
        for b in pr {
            let (subj, obj) = (col_str(b, "subject")?, col_str(b, "object")?);
            for i in 0..b.num_rows() {
                let (a, b) = (parse_hex(subj.value(i))?, parse_hex(obj.value(i))?);
                if rset.contains(&a) || rset.contains(&b) {
                    keys.insert(a);
                    keys.insert(b);
                }
            }
        }
    }
    ctx.metric("prep_rels_s", t.elapsed().as_secs_f64());
    // Previous rows of the touched entities and relations, as records; the entity rows are
    // replaced.
    let mut lists = PagesMerge { batches: pe, rows: Default::default() };
    let mut drop_ent: Vec<Vec<bool>> = Vec::with_capacity(pe.len());
    for (bi, b) in pe.iter().enumerate() {
        let ids = col_str(b, "id")?;
        let mut dropped = vec![false; b.num_rows()];
        for (i, d) in dropped.iter_mut().enumerate() {
            let k = parse_hex(ids.value(i))?;
            if keys.contains(&k) {
                *d = true;
                if !rset.contains(&k) {
                    decompose_entity(b, i, &mut names, &mut recs)?;
                    lists.rows.insert(k, (bi, i));
                }
            }
        }
        drop_ent.push(dropped);
    }
    ctx.metric("prep_entities_s", t.elapsed().as_secs_f64());
    // Triples the changed pages support (before or after): their rows are rebuilt from all
    // their support. Every other previous row stays as it is; it only counts towards the
    // degree of the touched entities at its ends (degrees are a dataflow count of the
    // rebuilt relations plus that base).
    let affected: rustc_hash::FxHashSet<RelKey> =
        recs.iter().filter_map(|(r, _)| if let Rec::Support(k, _) = r { Some(*k) } else { None }).collect();
    let mut replaced_rels = 0u64;
    let mut drop_rel: Vec<Vec<bool>> = Vec::with_capacity(pr.len());
    let mut base: rustc_hash::FxHashMap<u64, i64> = Default::default();
    for batch in pr {
        let (subj, obj, preds) = (col_str(batch, "subject")?, col_str(batch, "object")?, col_str(batch, "predicate")?);
        let mut dropped = vec![false; batch.num_rows()];
        for (i, d) in dropped.iter_mut().enumerate() {
            let (a, b) = (parse_hex(subj.value(i))?, parse_hex(obj.value(i))?);
            // Rows touching no touched entity stay as they are (the common case: one check).
            let (ka, kb) = (keys.contains(&a), keys.contains(&b));
            if !ka && !kb {
                continue;
            }
            if rset.contains(&a) || rset.contains(&b) {
                replaced_rels += 1;
                *d = true;
                continue;
            }
            let p = Predicate::parse(preds.value(i)).ok_or_else(|| anyhow!("previous output: unknown predicate"))?;
            if affected.contains(&(a, p as u8, b)) {
                replaced_rels += 1;
                *d = true;
                decompose_relation(batch, i, &mut names, &mut recs)?;
                continue;
            }
            if ka {
                *base.entry(a).or_default() += 1;
            }
            if kb && b != a {
                *base.entry(b).or_default() += 1;
            }
        }
        drop_rel.push(dropped);
    }
    recs.extend(base.into_iter().map(|(k, n)| (Rec::DegreeBase(k), n)));
    let prep_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let n_recs = recs.len();
    let recs = Arc::new(recs);
    let names_in = Arc::new(names);
    let (r2, n2) = (recs.clone(), names_in.clone());
    let feed: Arc<graph::Feed> = Arc::new(move |index, peers, emit, names| {
        if index == 0 {
            names.extend(n2.iter().map(|(k, v)| (*k, v.clone())));
        }
        for (r, d) in r2.iter().skip(index).step_by(peers.max(1)) {
            emit(*r, *d);
        }
        Ok(())
    });
    let out = graph::run(ctx.threads, None, &ctx.cancel, feed)?
        .ok_or_else(|| anyhow!("an incremental merge runs on this process alone"))?;
    let graph_s = t.elapsed().as_secs_f64();
    if out.negative > 0 {
        tracing::warn!(
            "extract: the previous output is inconsistent with its input ({} negative records); rebuilding",
            out.negative
        );
        return Ok(Err("the previous output is inconsistent with its input"));
    }
    let t = Instant::now();
    let (new_ents, new_rels) = match build_batches(&out, s, pages, Some(&keys), Some(&lists), ctx.threads) {
        Err(e) if e.downcast_ref::<Inconsistent>().is_some() => {
            tracing::warn!("extract: {e:#}; rebuilding");
            return Ok(Err("the previous output is inconsistent with its input"));
        }
        r => r?,
    };
    ctx.metric("build_tables_s", t.elapsed().as_secs_f64());
    let new_ents = arrow::compute::concat_batches(&schema(entity_columns(), &s.state), &new_ents)?;
    let ents = splice(pe, &new_ents, &drop_ent, entity_order)?;
    let new_rels = arrow::compute::concat_batches(&schema(relation_columns(), &s.state), &new_rels)?;
    let rels = splice(pr, &new_rels, &drop_rel, relation_order)?;
    ctx.metric("mode", "incremental");
    ctx.metric("parsed_pages", parsed);
    ctx.metric("touched_entities", keys.len() as u64);
    ctx.metric("replaced_relations", replaced_rels);
    ctx.metric("built_relations", new_rels.num_rows() as u64);
    ctx.metric("built_entities", new_ents.num_rows() as u64);
    ctx.metric("records", n_recs as u64);
    ctx.metric("prep_s", prep_s);
    ctx.metric("graph_s", graph_s);
    ctx.metric("build_s", t.elapsed().as_secs_f64());
    let _ = ctx.memo.flush();
    let (ent_schema, rel_schema) = (new_ents.schema(), new_rels.schema());
    Ok(Ok((Table::new(ent_schema, ents), Table::new(rel_schema, rels), rejects_table(new_rows.rejects)?)))
}

/// The order of the entities table: by id.
fn entity_order(b: &RecordBatch, i: usize) -> anyhow::Result<u64> {
    parse_hex(col_str(b, "id")?.value(i))
}

/// The order of the relations table: by (subject, predicate, object), the graph's key.
fn relation_order(b: &RecordBatch, i: usize) -> anyhow::Result<RelKey> {
    let pred = col_str(b, "predicate")?.value(i);
    let p = Predicate::parse(pred).ok_or_else(|| anyhow!("previous output: unknown predicate `{pred}`"))?;
    Ok((parse_hex(col_str(b, "subject")?.value(i))?, p as u8, parse_hex(col_str(b, "object")?.value(i))?))
}

/// Previous rows (in batches) minus those `drop` marks (per batch), merged with new rows;
/// all in the order `key` gives. The result is slices of the two: the runs of kept
/// previous rows between changes are not copied, and their bounds are found by binary
/// search, so only a few keys per new row are computed.
fn splice<K: Ord>(
    prev: &[RecordBatch],
    new: &RecordBatch,
    drop: &[Vec<bool>],
    key: impl Fn(&RecordBatch, usize) -> anyhow::Result<K>,
) -> anyhow::Result<Vec<RecordBatch>> {
    let schema = new.schema();
    let n_new = new.num_rows();
    let mut out = Vec::new();
    let mut j = 0;
    for (b, dropped) in prev.iter().zip(drop) {
        let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec())?;
        let n = b.num_rows();
        let is_dropped = |i: usize| dropped.get(i).copied().unwrap_or(false);
        let mut i = 0;
        while i < n {
            // A run of kept rows, [i, end), merged with the new rows.
            let end = (i..n).find(|&r| is_dropped(r)).unwrap_or(n);
            while i < end {
                if j == n_new {
                    out.push(b.slice(i, end - i));
                    i = end;
                    break;
                }
                let next_new = key(new, j)?;
                let kept = first_where(i, end, |r| Ok(key(&b, r)? >= next_new))?;
                if kept > i {
                    out.push(b.slice(i, kept - i));
                    i = kept;
                }
                if i < end {
                    let next_kept = key(&b, i)?;
                    let added = first_where(j, n_new, |r| Ok(key(new, r)? > next_kept))?;
                    out.push(new.slice(j, added - j));
                    j = added;
                }
            }
            while i < n && is_dropped(i) {
                i += 1;
            }
        }
    }
    if j < n_new {
        out.push(new.slice(j, n_new - j));
    }
    Ok(out)
}

/// The first index in `[lo, hi)` where `pred` holds (`hi` if none), for a `pred` that is
/// false and then true over the range.
fn first_where(mut lo: usize, mut hi: usize, pred: impl Fn(usize) -> anyhow::Result<bool>) -> anyhow::Result<usize> {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

#[cfg(test)]
pub(crate) mod tests;
