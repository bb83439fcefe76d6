//! `crawl`: medical Wikipedia pages, from a MediaWiki XML dump or the live Action API, into
//! the `pages` table (DESIGN's data contract).
//!
//! - **Dump** (`dump:`): an XML export or dump, plain or `.bz2` (multistream too), streamed
//!   with memory bounded by the largest page (decompression on its own thread). Without
//!   seeds every page of the kept namespaces is taken (up to `max_pages`); with seeds or
//!   categories a first pass indexes titles, links and redirects, discovery runs over the
//!   index, and a second pass reads the chosen pages. Unchanged pages (same title, revision
//!   and text digest as the previous run of the stage) reuse the previous run's links and
//!   categories instead of re-parsing.
//! - **API** (`api:`): discovery from seeds and categories over the network (see
//!   [`api`] for the HTTP behaviour). Each page is memoised as soon as it arrives, so a
//!   killed crawl resumes without refetching; `snapshot` names the remote state (change it
//!   to refetch everything).
//!
//! Redirects are resolved and kept as rows whose `redirect_to` names their target (the
//! aliases of the target). Pages that failed for good go to `rejects` with the reason.

pub mod api;
pub mod discover;
pub mod dump;
mod multistream;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{Array, ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use fleming_artifacts::Table;
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamIssue, ParamSpec, ParamType, PortSpec,
    ValidateCtx,
};
use rayon::prelude::*;
use serde_json::json;

use self::discover::{Outcome, PageRec, Plan, Strategy};
use crate::ops::extract::wikitext::{self, normalize_title};

/// The default `User-Agent`: who we are and how to reach us, as Wikimedia's policy asks.
pub const DEFAULT_USER_AGENT: &str =
    "fleming/0.1 (https://github.com/fleming-rs/fleming; medical knowledge-graph research crawler)";

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "crawl",
    version: 1,
    summary: "Medical Wikipedia pages from a MediaWiki dump or the live Action API",
    doc: "Reads a MediaWiki XML dump (plain or .bz2, multistream too) with bounded memory, or crawls \
          the Action API from seed pages and categories (breadth-first or by medical relevance) with \
          a descriptive User-Agent, a rate limit, maxlag, and retries with backoff. Redirects become \
          alias rows. Output `pages`: id, page_id, title, ns, revision_id, timestamp, wikitext, \
          categories, links, redirect_to, url, digest, depth. Pages that failed for good go to `rejects`.",
    params: vec![
        ParamSpec::optional(
            "dump",
            ParamType::InputPath,
            "MediaWiki XML export or dump to read (.xml, .xml.bz2, .xml.gz)",
        ),
        ParamSpec::optional(
            "api",
            ParamType::Str,
            "MediaWiki Action API endpoint to crawl, e.g. https://en.wikipedia.org/w/api.php",
        ),
        ParamSpec::with_default("seeds", ParamType::List(Box::new(ParamType::Str)), json!([]), "Titles to start from"),
        ParamSpec::with_default(
            "categories",
            ParamType::List(Box::new(ParamType::Str)),
            json!([]),
            "Categories whose member articles are seeds (with or without the `Category:` prefix)",
        ),
        ParamSpec::with_default(
            "strategy",
            ParamType::Enum(vec!["priority", "bfs"]),
            json!("priority"),
            "Frontier order: `priority` (links from medical pages and medical titles first) or `bfs`",
        ),
        ParamSpec::with_default(
            "max_pages",
            ParamType::Int,
            json!(10000),
            "Most articles kept (0: no bound; dumps only)",
        )
        .range(Some(0.0), None),
        ParamSpec::with_default(
            "max_depth",
            ParamType::Int,
            json!(2),
            "Links are followed up to this many hops from the seeds",
        )
        .range(Some(0.0), Some(100.0)),
        ParamSpec::with_default(
            "wave",
            ParamType::Int,
            json!(200),
            "Titles decided and fetched together per crawl step",
        )
        .range(Some(1.0), Some(100000.0)),
        ParamSpec::with_default(
            "namespaces",
            ParamType::List(Box::new(ParamType::Int)),
            json!([0]),
            "Namespaces kept (0: articles)",
        ),
        ParamSpec::with_default(
            "snapshot",
            ParamType::Str,
            json!(""),
            "API: label of the remote wiki's state; change it to refetch (the API is not content-addressed)",
        ),
        ParamSpec::with_default(
            "user_agent",
            ParamType::Str,
            json!(DEFAULT_USER_AGENT),
            "API: the User-Agent header (name, URL, contact)",
        )
        .not_in_key(),
        ParamSpec::with_default(
            "rate_limit",
            ParamType::Float,
            json!(5.0),
            "API: requests per second at most (0: no limit)",
        )
        .range(Some(0.0), None)
        .not_in_key(),
        ParamSpec::with_default("concurrency", ParamType::Int, json!(2), "API: requests in flight at most")
            .range(Some(1.0), Some(64.0))
            .not_in_key(),
        ParamSpec::with_default(
            "maxlag",
            ParamType::Int,
            json!(5),
            "API: `maxlag` seconds sent with each request (0: none)",
        )
        .range(Some(0.0), None)
        .not_in_key(),
        ParamSpec::with_default(
            "max_retries",
            ParamType::Int,
            json!(6),
            "API: retries of a failed request before giving up",
        )
        .range(Some(0.0), Some(100.0))
        .not_in_key(),
        ParamSpec::with_default("timeout", ParamType::Float, json!(30.0), "API: seconds before one attempt times out")
            .range(Some(0.001), None)
            .not_in_key(),
        ParamSpec::with_default(
            "backoff",
            ParamType::Float,
            json!(1.0),
            "API: first retry delay in seconds (doubles, with jitter)",
        )
        .range(Some(0.0), None)
        .not_in_key(),
        ParamSpec::with_default("backoff_max", ParamType::Float, json!(60.0), "API: longest retry delay in seconds")
            .range(Some(0.0), None)
            .not_in_key(),
    ],
    inputs: InputPorts::Fixed(vec![]),
    outputs: vec![
        PortSpec::table_with("pages", pages_columns(), "the pages: articles, and redirects to them (as aliases)"),
        PortSpec::table_with("rejects", rejects_columns(), "pages that could not be read or fetched, with the reason"),
    ],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::crawl.to_string(),
});

/// The columns of `pages`.
pub fn pages_columns() -> Vec<ColumnSpec> {
    let list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("page_id", DataType::Int64, false),
        ColumnSpec::new("title", DataType::Utf8, false),
        ColumnSpec::new("ns", DataType::Int64, false),
        ColumnSpec::new("revision_id", DataType::Int64, true),
        ColumnSpec::new("timestamp", DataType::Utf8, true),
        ColumnSpec::new("wikitext", DataType::Utf8, false),
        ColumnSpec::new("categories", list.clone(), false),
        ColumnSpec::new("links", list, false),
        ColumnSpec::new("redirect_to", DataType::Utf8, true),
        ColumnSpec::new("url", DataType::Utf8, false),
        ColumnSpec::new("digest", DataType::Utf8, false),
        ColumnSpec::new("depth", DataType::Int64, true),
    ]
}

fn rejects_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("title", DataType::Utf8, false),
        ColumnSpec::new("reason", DataType::Utf8, false),
        ColumnSpec::new("attempts", DataType::Int64, false),
    ]
}

fn schema_of(cols: Vec<ColumnSpec>) -> SchemaRef {
    Arc::new(Schema::new(cols.into_iter().map(|c| Field::new(c.name, c.data_type, c.nullable)).collect::<Vec<_>>()))
}

/// The id of a page row: derived from its title (stable across revisions).
pub fn page_row_id(title: &str) -> String {
    blake3::hash(format!("page\0{title}").as_bytes()).to_hex()[..16].to_string()
}

/// The digest of a page's text (hex, 128 bits).
pub fn text_digest(title: &str, text: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(title.as_bytes());
    h.update(&[0]);
    h.update(text.as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

/// One row of `pages`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PageRow {
    /// Row id ([`page_row_id`]).
    pub id: String,
    /// Page id in the wiki.
    pub page_id: i64,
    /// Title.
    pub title: String,
    /// Namespace.
    pub ns: i64,
    /// Revision id.
    pub revision_id: Option<i64>,
    /// Revision timestamp.
    pub timestamp: Option<String>,
    /// Wikitext.
    pub wikitext: String,
    /// Categories (sorted, unique).
    pub categories: Vec<String>,
    /// Linked article titles (sorted, unique).
    pub links: Vec<String>,
    /// Redirect target, for redirects.
    pub redirect_to: Option<String>,
    /// URL.
    pub url: String,
    /// [`text_digest`].
    pub digest: String,
    /// Hops from the seeds (null when every page was taken).
    pub depth: Option<i64>,
}

/// Most bytes of text (wikitext, links, categories) per batch of the `pages` table: one
/// `Utf8` array holds at most 2 GiB, and a real crawl can hold more.
const BATCH_TEXT_BYTES: usize = 1 << 30;

/// Builds the `pages` table (rows sorted by title).
pub fn pages_table(rows: Vec<PageRow>) -> anyhow::Result<Table> {
    pages_table_in_batches(rows, BATCH_TEXT_BYTES)
}

/// [`pages_table`], a new batch whenever the next row would take one past `budget` bytes
/// of text (a row larger than that gets a batch of its own).
fn pages_table_in_batches(mut rows: Vec<PageRow>, budget: usize) -> anyhow::Result<Table> {
    rows.sort_by(|a, b| a.title.cmp(&b.title));
    let schema = schema_of(pages_columns());
    let text_bytes =
        |r: &PageRow| r.wikitext.len() + r.links.iter().chain(&r.categories).map(String::len).sum::<usize>();
    let mut batches = Vec::new();
    let mut start = 0;
    loop {
        let (mut end, mut bytes) = (start, 0);
        while end < rows.len() && (end == start || bytes + text_bytes(&rows[end]) <= budget) {
            bytes += text_bytes(&rows[end]);
            end += 1;
        }
        batches.push(pages_batch(&schema, &rows[start..end])?);
        start = end;
        if start == rows.len() {
            break;
        }
    }
    Ok(Table::new(schema, batches))
}

/// One batch of the `pages` table.
fn pages_batch(schema: &SchemaRef, rows: &[PageRow]) -> anyhow::Result<RecordBatch> {
    let n = rows.len();
    let mut id = StringBuilder::with_capacity(n, n * 16);
    let mut page_id = Int64Builder::with_capacity(n);
    let mut title = StringBuilder::new();
    let mut ns = Int64Builder::with_capacity(n);
    let mut rev = Int64Builder::with_capacity(n);
    let mut ts = StringBuilder::new();
    let mut text = StringBuilder::with_capacity(n, rows.iter().map(|r| r.wikitext.len()).sum());
    let mut cats = ListBuilder::new(StringBuilder::new());
    let mut links = ListBuilder::new(StringBuilder::new());
    let mut redirect = StringBuilder::new();
    let mut url = StringBuilder::new();
    let mut digest = StringBuilder::new();
    let mut depth = Int64Builder::with_capacity(n);
    for r in rows {
        id.append_value(&r.id);
        page_id.append_value(r.page_id);
        title.append_value(&r.title);
        ns.append_value(r.ns);
        rev.append_option(r.revision_id);
        ts.append_option(r.timestamp.as_deref());
        text.append_value(&r.wikitext);
        for c in &r.categories {
            cats.values().append_value(c);
        }
        cats.append(true);
        for l in &r.links {
            links.values().append_value(l);
        }
        links.append(true);
        redirect.append_option(r.redirect_to.as_deref());
        url.append_value(&r.url);
        digest.append_value(&r.digest);
        depth.append_option(r.depth);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(page_id.finish()),
        Arc::new(title.finish()),
        Arc::new(ns.finish()),
        Arc::new(rev.finish()),
        Arc::new(ts.finish()),
        Arc::new(text.finish()),
        Arc::new(cats.finish()),
        Arc::new(links.finish()),
        Arc::new(redirect.finish()),
        Arc::new(url.finish()),
        Arc::new(digest.finish()),
        Arc::new(depth.finish()),
    ];
    // The list columns' item fields must match the declared ones.
    let cols = cols
        .into_iter()
        .zip(schema.fields().iter())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { arrow::compute::cast(&c, f.data_type()) })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// A page that failed.
#[derive(Clone, Debug)]
pub struct Reject {
    /// Title (may be empty).
    pub title: String,
    /// Why.
    pub reason: String,
    /// Attempts (0 for unreadable dump pages).
    pub attempts: u32,
}

fn rejects_table(mut rejects: Vec<Reject>) -> anyhow::Result<Table> {
    rejects.sort_by(|a, b| (&a.title, &a.reason).cmp(&(&b.title, &b.reason)));
    let schema = schema_of(rejects_columns());
    let ids: Vec<String> = rejects
        .iter()
        .enumerate()
        .map(|(i, r)| {
            blake3::hash(format!("reject\0{}\0{}\0{i}", r.title, r.reason).as_bytes()).to_hex()[..16].to_string()
        })
        .collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.title.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())),
            Arc::new(arrow::array::Int64Array::from(rejects.iter().map(|r| r.attempts as i64).collect::<Vec<_>>())),
        ],
    )?;
    Ok(Table::new(schema, vec![batch]))
}

/// Links and categories of wikitext (sorted, unique) and its medical relevance.
pub fn scan(title: &str, text: &str) -> (Vec<String>, Vec<String>, f64) {
    let parsed = wikitext::parse(text);
    let mut links: Vec<String> = parsed.links.iter().map(|l| l.target.clone()).collect();
    links.sort();
    links.dedup();
    let mut cats = parsed.categories.clone();
    cats.sort();
    cats.dedup();
    let rel = discover::relevance(&parsed, &cats, title);
    (links, cats, rel)
}

/// The `crawl` operator.
#[derive(Default)]
pub struct Crawl;

impl Crawl {
    /// The operator.
    pub fn new() -> Self {
        Crawl
    }
}

struct Settings {
    plan: Plan,
    seeds: Vec<String>,
    categories: Vec<String>,
}

fn settings(ctx: &OpContext) -> anyhow::Result<Settings> {
    let strategy = match ctx.params.str("strategy")? {
        "bfs" => Strategy::Bfs,
        _ => Strategy::Priority,
    };
    let seeds: Vec<String> = ctx.params.get_as("seeds")?;
    let categories: Vec<String> = ctx.params.get_as("categories")?;
    let namespaces: Vec<i64> = ctx.params.get_as("namespaces")?;
    Ok(Settings {
        plan: Plan {
            strategy,
            max_pages: ctx.params.u64("max_pages")? as usize,
            max_depth: ctx.params.u64("max_depth")? as u32,
            wave: ctx.params.u64("wave")? as usize,
            namespaces,
        },
        seeds,
        categories: categories.iter().map(|c| normalize_title(c.strip_prefix("Category:").unwrap_or(c))).collect(),
    })
}

impl Operator for Crawl {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let has = |n: &str| !ctx.params.get(n).is_null();
        match (has("dump"), has("api")) {
            (true, true) => issues
                .push(ParamIssue { param: vec!["api".into()], message: "set either `dump` or `api`, not both".into() }),
            (false, false) => issues.push(ParamIssue {
                param: vec!["dump".into()],
                message: "set `dump` (a file) or `api` (a URL)".into(),
            }),
            _ => {}
        }
        if has("api") {
            let url = ctx.params.get("api").as_str().unwrap_or("");
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                issues
                    .push(ParamIssue { param: vec!["api".into()], message: format!("`{url}` is not an http(s) URL") });
            }
            let empty = |n: &str| ctx.params.get(n).as_array().is_none_or(|a| a.is_empty());
            if empty("seeds") && empty("categories") {
                issues.push(ParamIssue {
                    param: vec!["seeds".into()],
                    message: "an API crawl needs `seeds` or `categories`".into(),
                });
            }
            if ctx.params.get("max_pages").as_u64() == Some(0) {
                issues.push(ParamIssue {
                    param: vec!["max_pages".into()],
                    message: "an API crawl needs a bound: `max_pages` > 0".into(),
                });
            }
            if ctx.params.get("user_agent").as_str().is_none_or(|s| s.trim().is_empty()) {
                issues.push(ParamIssue {
                    param: vec!["user_agent".into()],
                    message: "a descriptive User-Agent is required".into(),
                });
            }
        }
        issues
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let s = settings(ctx)?;
        let (rows, rejects) =
            if let Some(path) = ctx.params.opt_path("dump") { from_dump(ctx, &path, &s)? } else { from_api(ctx, &s)? };
        ctx.metric("pages", rows.iter().filter(|r| r.redirect_to.is_none()).count() as u64);
        ctx.metric("redirects", rows.iter().filter(|r| r.redirect_to.is_some()).count() as u64);
        ctx.metric("rejected", rejects.len() as u64);
        let t = Instant::now();
        let pages = pages_table(rows)?;
        let rejects = rejects_table(rejects)?;
        ctx.metric("write_s", t.elapsed().as_secs_f64());
        Ok(Outputs::new().table("pages", pages).table("rejects", rejects))
    }
}

/// Previous rows by title, for pages whose revision and text are unchanged: (digest,
/// links, categories).
type Previous = HashMap<String, (String, Vec<String>, Vec<String>)>;

fn previous_rows(ctx: &OpContext) -> Previous {
    let mut out = Previous::new();
    let Some(prev) = &ctx.previous else { return out };
    // Not the wikitext: most of the bytes, and the digest already says whether it changed.
    let Ok(Some(t)) = prev.output_columns("pages", Some(&["title", "digest", "links", "categories"])) else {
        return out;
    };
    for b in &t.batches {
        let col = |n: &str| b.column_by_name(n).cloned();
        let (Some(title), Some(digest), Some(links), Some(cats)) =
            (col("title"), col("digest"), col("links"), col("categories"))
        else {
            return Previous::new();
        };
        let (Some(title), Some(digest)) =
            (title.as_any().downcast_ref::<StringArray>(), digest.as_any().downcast_ref::<StringArray>())
        else {
            return Previous::new();
        };
        let list = |a: &ArrayRef, i: usize| -> Vec<String> {
            match a.as_any().downcast_ref::<arrow::array::ListArray>() {
                Some(l) => {
                    let v = l.value(i);
                    match v.as_any().downcast_ref::<StringArray>() {
                        Some(s) => (0..s.len()).map(|j| s.value(j).to_string()).collect(),
                        None => Vec::new(),
                    }
                }
                None => Vec::new(),
            }
        };
        for i in 0..b.num_rows() {
            out.insert(title.value(i).to_string(), (digest.value(i).to_string(), list(&links, i), list(&cats, i)));
        }
    }
    out
}

/// A dump page as a row: links and categories from the previous run when unchanged.
fn dump_row(p: dump::DumpPage, site: &dump::SiteInfo, prev: &Previous, depth: Option<i64>) -> (PageRow, bool) {
    let title = p.title.clone();
    let digest = text_digest(&title, &p.text);
    let (links, categories, reused) = match prev.get(&title) {
        Some((d, l, c)) if *d == digest => (l.clone(), c.clone(), true),
        _ => {
            let (l, c, _) = scan(&title, &p.text);
            (l, c, false)
        }
    };
    let redirect_to = p.redirect.as_deref().map(normalize_title).or_else(|| wikitext::parse_redirect(&p.text));
    (
        PageRow {
            id: page_row_id(&title),
            page_id: p.page_id,
            url: site.page_url(&title),
            title,
            ns: p.ns,
            revision_id: p.revision_id,
            timestamp: p.timestamp,
            wikitext: p.text,
            categories,
            links,
            redirect_to,
            digest,
            depth,
        },
        reused,
    )
}

/// Timings of a dump read.
#[derive(Default)]
struct DumpStats {
    parse: Duration,
    diff: Duration,
    reused: u64,
    reparsed: u64,
}

fn from_dump(ctx: &mut OpContext, path: &std::path::Path, s: &Settings) -> anyhow::Result<(Vec<PageRow>, Vec<Reject>)> {
    let t0 = Instant::now();
    let prev = previous_rows(ctx);
    let mut stats = DumpStats { diff: t0.elapsed(), ..Default::default() };
    let seeded = !s.seeds.is_empty() || !s.categories.is_empty();
    let mut rejects = Vec::new();
    ctx.progress.set_unit("pages");
    let (rows, timing) = if seeded {
        let (chosen, depth_of) = discover_in_dump(ctx, path, s, &mut rejects)?;
        read_dump(ctx, path, &prev, &mut stats, &mut rejects, |p| {
            let keep = chosen.get(&p.title).copied();
            keep.map(|d| Some(d as i64)).or_else(|| {
                // Redirects to chosen pages are kept as aliases.
                p.redirect.as_deref().map(normalize_title).and_then(|t| depth_of.get(&t).map(|d| Some(*d as i64)))
            })
        })?
    } else {
        let max = s.plan.max_pages;
        let ns = s.plan.namespaces.clone();
        let mut kept = 0usize;
        let (mut rows, timing) = read_dump(ctx, path, &prev, &mut stats, &mut rejects, |p| {
            if !ns.contains(&p.ns) {
                return None;
            }
            if p.redirect.is_some() {
                return Some(None);
            }
            if max > 0 && kept >= max {
                return None;
            }
            kept += 1;
            Some(None)
        })?;
        // Redirects whose target was not kept are dropped.
        let articles: std::collections::HashSet<String> =
            rows.iter().filter(|r| r.redirect_to.is_none()).map(|r| r.title.clone()).collect();
        rows.retain(|r| r.redirect_to.as_ref().is_none_or(|t| articles.contains(t)));
        (rows, timing)
    };
    ctx.metric("decompress_s", timing.decompress_secs());
    ctx.metric("parse_s", stats.parse.as_secs_f64());
    ctx.metric("diff_s", stats.diff.as_secs_f64());
    ctx.metric("reused", stats.reused);
    ctx.metric("reparsed", stats.reparsed);
    ctx.metric("xml_bytes", timing.xml_bytes.load(Ordering::Relaxed));
    ctx.metric("file_bytes", timing.file_bytes.load(Ordering::Relaxed));
    if !prev.is_empty() {
        let now: HashMap<&str, &str> = rows.iter().map(|r| (r.title.as_str(), r.digest.as_str())).collect();
        let changed = rows.iter().filter(|r| prev.get(&r.title).is_some_and(|(d, _, _)| *d != r.digest)).count();
        let added = rows.iter().filter(|r| !prev.contains_key(&r.title)).count();
        let removed = prev.keys().filter(|t| !now.contains_key(t.as_str())).count();
        ctx.metric("changed", changed as u64);
        ctx.metric("added", added as u64);
        ctx.metric("removed", removed as u64);
    }
    Ok((rows, rejects))
}

/// Streams the dump; `keep` says whether to keep a page and at what depth.
fn read_dump(
    ctx: &mut OpContext,
    path: &std::path::Path,
    prev: &Previous,
    stats: &mut DumpStats,
    rejects: &mut Vec<Reject>,
    mut keep: impl FnMut(&dump::DumpPage) -> Option<Option<i64>>,
) -> anyhow::Result<(Vec<PageRow>, Arc<dump::Timing>)> {
    let (reader, timing) = dump::open(path, ctx.threads).with_context(|| format!("opening {}", path.display()))?;
    let mut xml = dump::DumpReader::new(reader);
    let mut rows = Vec::new();
    let mut batch: Vec<(dump::DumpPage, Option<i64>)> = Vec::new();
    let threads = ctx.threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let flush = |batch: &mut Vec<(dump::DumpPage, Option<i64>)>,
                 site: &dump::SiteInfo,
                 rows: &mut Vec<PageRow>,
                 stats: &mut DumpStats| {
        let t = Instant::now();
        let done: Vec<(PageRow, bool)> =
            pool.install(|| batch.par_drain(..).map(|(p, d)| dump_row(p, site, prev, d)).collect());
        for (r, reused) in done {
            if reused {
                stats.reused += 1
            } else {
                stats.reparsed += 1
            }
            rows.push(r);
        }
        stats.parse += t.elapsed();
    };
    let mut seen = 0u64;
    while let Some(item) = xml.next() {
        let item = item.with_context(|| format!("reading {}", path.display()))?;
        seen += 1;
        if seen.is_multiple_of(1024) {
            ctx.cancel.check()?;
            ctx.progress.set_position(seen);
        }
        match item {
            Ok(p) => {
                if let Some(depth) = keep(&p) {
                    batch.push((p, depth));
                }
            }
            Err(bad) => rejects.push(Reject { title: bad.title, reason: bad.reason, attempts: 0 }),
        }
        if batch.len() >= 512 {
            let site = xml.site.clone();
            flush(&mut batch, &site, &mut rows, stats);
        }
    }
    let site = xml.site.clone();
    flush(&mut batch, &site, &mut rows, stats);
    Ok((rows, timing))
}

/// First pass over a dump for a seeded crawl: index titles, links, categories and
/// redirects, then run discovery over the index. Returns the chosen titles with their depth.
fn discover_in_dump(
    ctx: &mut OpContext,
    path: &std::path::Path,
    s: &Settings,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<(HashMap<String, u32>, HashMap<String, u32>)> {
    struct Entry {
        page_id: i64,
        ns: i64,
        redirect: Option<String>,
        links: Vec<u32>,
        categories: Vec<String>,
        relevance: f32,
    }
    let (reader, _) = dump::open(path, ctx.threads).with_context(|| format!("opening {}", path.display()))?;
    let mut names: Vec<String> = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |t: &str, names: &mut Vec<String>| -> u32 {
        if let Some(&i) = ids.get(t) {
            return i;
        }
        let i = names.len() as u32;
        names.push(t.to_string());
        ids.insert(t.to_string(), i);
        i
    };
    let mut index: HashMap<String, Entry> = HashMap::new();
    let mut by_category: HashMap<String, Vec<String>> = HashMap::new();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(ctx.threads.max(1)).build()?;
    let mut batch: Vec<dump::DumpPage> = Vec::new();
    let mut absorb = |batch: &mut Vec<dump::DumpPage>, names: &mut Vec<String>, index: &mut HashMap<String, Entry>| {
        let scanned: Vec<(dump::DumpPage, Vec<String>, Vec<String>, f64)> = pool.install(|| {
            batch
                .par_drain(..)
                .map(|p| {
                    let (l, c, r) = scan(&p.title, &p.text);
                    (p, l, c, r)
                })
                .collect()
        });
        for (p, links, cats, rel) in scanned {
            let redirect = p.redirect.as_deref().map(normalize_title).or_else(|| wikitext::parse_redirect(&p.text));
            for c in &cats {
                by_category.entry(c.clone()).or_default().push(p.title.clone());
            }
            let links = links.iter().map(|l| intern(l, names)).collect();
            index.insert(
                p.title.clone(),
                Entry { page_id: p.page_id, ns: p.ns, redirect, links, categories: cats, relevance: rel as f32 },
            );
        }
    };
    for item in dump::DumpReader::new(reader) {
        let item = item.with_context(|| format!("reading {}", path.display()))?;
        ctx.cancel.check()?;
        match item {
            Ok(mut p) => {
                if s.plan.namespaces.contains(&p.ns) || p.redirect.is_some() {
                    p.title = normalize_title(&p.title);
                    batch.push(p);
                }
            }
            Err(bad) => rejects.push(Reject { title: bad.title, reason: bad.reason, attempts: 0 }),
        }
        if batch.len() >= 512 {
            absorb(&mut batch, &mut names, &mut index);
        }
    }
    absorb(&mut batch, &mut names, &mut index);
    let mut seeds = s.seeds.clone();
    for c in &s.categories {
        let mut members = by_category.get(c).cloned().unwrap_or_default();
        members.sort();
        seeds.extend(members);
    }
    let rec = |title: &str, e: &Entry| PageRec {
        title: title.to_string(),
        page_id: e.page_id,
        ns: e.ns,
        categories: e.categories.clone(),
        links: e.links.iter().map(|&i| names[i as usize].clone()).collect(),
        relevance: e.relevance as f64,
        ..Default::default()
    };
    let crawl = discover::crawl(
        &s.plan,
        &seeds,
        |titles| {
            Ok(titles
                .iter()
                .map(|t| match index.get(t) {
                    Some(e) => match &e.redirect {
                        Some(to) => Outcome::Redirect {
                            to: to.clone(),
                            page: index.get(to).filter(|x| x.redirect.is_none()).map(|x| rec(to, x)),
                        },
                        None => Outcome::Page(rec(t, e)),
                    },
                    None => Outcome::Missing,
                })
                .collect())
        },
        || Ok(ctx.cancel.check()?),
    )?;
    ctx.metric("missing", crawl.missing);
    let chosen: HashMap<String, u32> = crawl.pages.iter().map(|(t, (_, d))| (t.clone(), *d)).collect();
    Ok((chosen.clone(), chosen))
}

/// What the memo keeps per title (API crawls).
#[derive(serde::Serialize, serde::Deserialize)]
enum Memo {
    Page(PageRec),
    Redirect(String),
    Missing,
}

fn from_api(ctx: &mut OpContext, s: &Settings) -> anyhow::Result<(Vec<PageRow>, Vec<Reject>)> {
    let url = ctx.params.str("api")?.to_string();
    let cfg = api::ApiConfig {
        url: url.clone(),
        user_agent: ctx.params.str("user_agent")?.to_string(),
        rate: ctx.params.f64("rate_limit")?,
        concurrency: ctx.params.u64("concurrency")? as usize,
        maxlag: ctx.params.u64("maxlag")?,
        max_retries: ctx.params.u64("max_retries")? as u32,
        timeout: Duration::from_secs_f64(ctx.params.f64("timeout")?),
        backoff: Duration::from_secs_f64(ctx.params.f64("backoff")?),
        backoff_max: Duration::from_secs_f64(ctx.params.f64("backoff_max")?),
    };
    let client = Arc::new(api::ApiClient::new(cfg)?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let memo = ctx.memo.clone();
    let memo_params = ctx.params.select(&["api", "snapshot"]);
    let key = |t: &str| memo.key(&memo_params, t.as_bytes());
    let mut rejects = Vec::new();
    // Seeds from categories.
    let mut seeds = s.seeds.clone();
    for c in &s.categories {
        let ck = key(&format!("\0category\0{c}"));
        let members: Vec<(i64, String)> = match memo.get_json(&ck) {
            Some(m) => m,
            None => match rt.block_on(client.category_members(c, "0")) {
                Ok(m) => {
                    memo.put_json(ck, &m)?;
                    m
                }
                Err(e) => {
                    rejects.push(Reject { title: format!("Category:{c}"), reason: e.reason, attempts: e.attempts });
                    Vec::new()
                }
            },
        };
        let mut titles: Vec<String> = members.into_iter().filter(|(ns, _)| *ns == 0).map(|(_, t)| t).collect();
        titles.sort();
        seeds.extend(titles);
    }
    let fetched = std::sync::atomic::AtomicU64::new(0);
    let hits = std::sync::atomic::AtomicU64::new(0);
    ctx.progress.set_unit("pages");
    ctx.progress.set_total(s.plan.max_pages as u64);
    let progress = ctx.progress.clone();
    let cancel = ctx.cancel.clone();
    let crawl = discover::crawl(
        &s.plan,
        &seeds,
        |titles| {
            // Memoised answers first.
            let mut out: Vec<Option<Outcome>> = vec![None; titles.len()];
            let mut todo: Vec<usize> = Vec::new();
            for (i, t) in titles.iter().enumerate() {
                match memo.get_json::<Memo>(&key(t)) {
                    Some(Memo::Page(p)) => out[i] = Some(Outcome::Page(p)),
                    Some(Memo::Missing) => out[i] = Some(Outcome::Missing),
                    Some(Memo::Redirect(to)) => out[i] = Some(Outcome::Redirect { to, page: None }),
                    None => todo.push(i),
                }
            }
            hits.fetch_add((titles.len() - todo.len()) as u64, Ordering::Relaxed);
            // The rest, 50 titles per request, requests concurrently (the client caps them).
            let chunks: Vec<Vec<usize>> = todo.chunks(50).map(|c| c.to_vec()).collect();
            let results = rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for (ci, chunk) in chunks.iter().enumerate() {
                    let names: Vec<String> = chunk.iter().map(|&i| titles[i].clone()).collect();
                    let client = client.clone();
                    let memo = memo.clone();
                    let memo_params = memo_params.clone();
                    set.spawn(async move {
                        let r = client.query_titles(&names).await;
                        // Memoise as soon as the answer arrives.
                        if let Ok(batch) = &r {
                            for (t, p) in &batch.pages {
                                let rec = api_rec(p);
                                let _ = memo.put_json(memo.key(&memo_params, t.as_bytes()), &Memo::Page(rec));
                            }
                            for (from, to) in &batch.redirects {
                                let _ =
                                    memo.put_json(memo.key(&memo_params, from.as_bytes()), &Memo::Redirect(to.clone()));
                            }
                            for (req, fin) in &batch.resolved {
                                let norm = normalize_title(req);
                                if *fin != norm && !batch.redirects.contains_key(&norm) {
                                    let _ = memo.put_json(
                                        memo.key(&memo_params, norm.as_bytes()),
                                        &Memo::Redirect(fin.clone()),
                                    );
                                }
                                if batch.missing.contains(fin) {
                                    let _ = memo.put_json(memo.key(&memo_params, fin.as_bytes()), &Memo::Missing);
                                }
                            }
                        }
                        (ci, r)
                    });
                }
                let mut all = Vec::new();
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(x) => all.push(x),
                        Err(e) => return Err(anyhow::anyhow!("a fetch task failed: {e}")),
                    }
                }
                all.sort_by_key(|(ci, _)| *ci);
                Ok(all)
            })?;
            for (ci, r) in results {
                for &i in &chunks[ci] {
                    let t = &titles[i];
                    out[i] = Some(match &r {
                        Err(e) => Outcome::Failed { reason: e.reason.clone(), attempts: e.attempts },
                        Ok(batch) => {
                            let fin = batch.resolved.get(t).cloned().unwrap_or_else(|| normalize_title(t));
                            match (batch.redirects.get(&fin), batch.pages.get(&fin)) {
                                (Some(to), _) => Outcome::Redirect { to: to.clone(), page: None },
                                (None, Some(p)) if fin == normalize_title(t) => Outcome::Page(api_rec(p)),
                                (None, Some(p)) => Outcome::Redirect { to: fin, page: Some(api_rec(p)) },
                                (None, None) => Outcome::Missing,
                            }
                        }
                    });
                }
            }
            fetched.fetch_add(todo.len() as u64, Ordering::Relaxed);
            let _ = memo.flush();
            Ok(out.into_iter().map(|o| o.unwrap_or(Outcome::Missing)).collect())
        },
        || {
            progress.set_position(0);
            Ok(cancel.check()?)
        },
    )?;
    let _ = memo.flush();
    ctx.metric("memo_hits", hits.load(Ordering::Relaxed));
    ctx.metric("fetched_titles", fetched.load(Ordering::Relaxed));
    ctx.metric("http_attempts", client.stats.attempts.load(Ordering::Relaxed));
    ctx.metric("http_retries", client.stats.retries.load(Ordering::Relaxed));
    ctx.metric("http_429", client.stats.throttled.load(Ordering::Relaxed));
    ctx.metric("maxlag_waits", client.stats.lagged.load(Ordering::Relaxed));
    ctx.metric("missing", crawl.missing);
    ctx.metric("waves", crawl.waves);
    for (title, reason, attempts) in &crawl.failed {
        rejects.push(Reject { title: title.clone(), reason: reason.clone(), attempts: *attempts });
    }
    if !crawl.failed.is_empty() {
        tracing::warn!("crawl: {} pages failed for good (see the `rejects` output)", crawl.failed.len());
    }
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url).to_string();
    let mut rows = Vec::new();
    for (title, (p, depth)) in crawl.pages {
        let url = p.url.clone().unwrap_or_else(|| format!("{base}/index.php?title={}", dump::url_title(&title)));
        let digest = text_digest(&title, &p.text);
        for (rid, alias) in &p.aliases {
            let alias = normalize_title(alias);
            let text = format!("#REDIRECT [[{title}]]");
            rows.push(PageRow {
                id: page_row_id(&alias),
                page_id: *rid,
                url: match url.rfind('/') {
                    Some(i) if p.url.is_some() => format!("{}{}", &url[..=i], dump::url_title(&alias)),
                    _ => format!("{base}/index.php?title={}", dump::url_title(&alias)),
                },
                digest: text_digest(&alias, &text),
                title: alias,
                ns: 0,
                revision_id: None,
                timestamp: None,
                wikitext: text,
                categories: Vec::new(),
                links: vec![title.clone()],
                redirect_to: Some(title.clone()),
                depth: Some(depth as i64),
            });
        }
        let mut links = p.links.iter().map(|l| normalize_title(l)).collect::<Vec<_>>();
        links.sort();
        links.dedup();
        let mut categories = p.categories.clone();
        categories.sort();
        categories.dedup();
        rows.push(PageRow {
            id: page_row_id(&title),
            page_id: p.page_id,
            title,
            ns: p.ns,
            revision_id: p.revision_id,
            timestamp: p.timestamp,
            wikitext: p.text,
            categories,
            links,
            redirect_to: None,
            url,
            digest,
            depth: Some(depth as i64),
        });
    }
    // An alias may also have been crawled as a title of its own: keep one row per title.
    rows.sort_by(|a, b| (&a.title, a.redirect_to.is_some()).cmp(&(&b.title, b.redirect_to.is_some())));
    rows.dedup_by(|a, b| a.title == b.title);
    if rows.is_empty() && !crawl.failed.is_empty() {
        bail!("the crawl fetched nothing: every request failed (first: {})", crawl.failed[0].1);
    }
    Ok((rows, rejects))
}

fn api_rec(p: &api::ApiPage) -> PageRec {
    let (_, _, relevance) = scan(&p.title, &p.text);
    PageRec {
        title: normalize_title(&p.title),
        page_id: p.page_id,
        ns: p.ns,
        revision_id: p.revision_id,
        timestamp: p.timestamp.clone(),
        text: p.text.clone(),
        categories: p.categories.clone(),
        links: p.links.clone(),
        aliases: p.redirects.clone(),
        url: p.url.clone(),
        relevance,
    }
}

#[cfg(test)]
mod tests;
