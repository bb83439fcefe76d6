//! Page discovery: from seeds, follow links breadth-first or by medical relevance, bounded
//! by a page budget and a depth, never asking for a title twice.
//!
//! The crawl is a sequence of *waves*: the best `wave` candidates of the frontier (by depth
//! then title for `bfs`; by relevance score, then depth, then title for `priority`) are
//! fetched together, and their outcomes are applied in that order. The waves do not depend
//! on timing or on how many requests run at once, so the same wiki gives the same pages.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::ops::extract::wikitext::{Parsed, normalize_title};

/// How the frontier is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Breadth-first: by depth, then title.
    Bfs,
    /// Medical relevance first (links from medical pages, medical-looking titles), then depth.
    Priority,
}

/// A fetched article.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PageRec {
    /// Title.
    pub title: String,
    /// Page id.
    pub page_id: i64,
    /// Namespace.
    pub ns: i64,
    /// Revision id.
    pub revision_id: Option<i64>,
    /// Revision timestamp.
    pub timestamp: Option<String>,
    /// Wikitext (empty in a dump's first pass).
    pub text: String,
    /// Categories.
    pub categories: Vec<String>,
    /// Linked article titles.
    pub links: Vec<String>,
    /// Redirects to it: (page id, title).
    pub aliases: Vec<(i64, String)>,
    /// URL.
    pub url: Option<String>,
    /// Medical relevance in [0, 1].
    pub relevance: f64,
}

/// What asking for a title gave.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The article.
    Page(PageRec),
    /// The title redirects to `to`, whose page came along when it exists.
    Redirect {
        /// Target title.
        to: String,
        /// The target page.
        page: Option<PageRec>,
    },
    /// No such page.
    Missing,
    /// The request failed for good.
    Failed {
        /// Why.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// Crawl bounds and order.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Order of the frontier.
    pub strategy: Strategy,
    /// Most articles kept (0: no bound).
    pub max_pages: usize,
    /// Links are followed from pages at depth < `max_depth`.
    pub max_depth: u32,
    /// Titles decided per wave.
    pub wave: usize,
    /// Namespaces kept.
    pub namespaces: Vec<i64>,
}

/// The result of a crawl.
#[derive(Debug, Default)]
pub struct Crawl {
    /// Articles by title, with their depth.
    pub pages: BTreeMap<String, (PageRec, u32)>,
    /// Titles that failed for good: (title, reason, attempts).
    pub failed: Vec<(String, String, u32)>,
    /// Titles that do not exist.
    pub missing: u64,
    /// Titles asked for.
    pub asked: u64,
    /// Waves run.
    pub waves: u64,
}

/// Medical relevance of a page from its parse: medical infoboxes first, then medical
/// categories, then a medical-looking title.
pub fn relevance(parsed: &Parsed, categories: &[String], title: &str) -> f64 {
    const BOXES: &[&str] = &[
        "infobox medical condition",
        "infobox medical condition (new)",
        "infobox disease",
        "infobox drug",
        "drugbox",
        "infobox symptom",
        "infobox anatomy",
        "infobox bone",
        "infobox muscle",
        "infobox nerve",
        "infobox artery",
        "infobox vein",
        "infobox brain",
        "infobox medical intervention",
        "infobox diagnostic",
        "infobox gene",
        "infobox protein",
        "infobox enzyme",
        "infobox bacteria",
        "infobox virus",
        "medical resources",
        "chembox",
        "taxobox",
        "automatic taxobox",
    ];
    if parsed.templates.iter().any(|t| BOXES.contains(&t.as_str())) {
        return 1.0;
    }
    if categories.iter().any(|c| medical_words(c)) {
        return 0.6;
    }
    if medical_words(title) {
        return 0.3;
    }
    0.05
}

/// Whether text has words typical of medical topics.
pub fn medical_words(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "disease",
        "disorder",
        "syndrome",
        "infection",
        "cancer",
        "tumor",
        "tumour",
        "medical",
        "medicine",
        "drug",
        "symptom",
        "anatomy",
        "surgery",
        "surgical",
        "therapy",
        "pharmac",
        "patholog",
        "diagnos",
        "clinical",
        "virus",
        "bacteri",
        "itis",
        "oma",
        "osis",
        "emia",
        "algia",
        "pathy",
        "psychiatr",
        "neurolog",
        "cardio",
        "health",
        "vaccin",
        "antibiotic",
        "inhibitor",
        "hormone",
        "gland",
        "organ",
        "tissue",
        "receptor",
        "enzyme",
    ];
    let l = s.to_lowercase();
    WORDS.iter().any(|w| l.contains(w))
}

/// The frontier: candidates with their depth and score, in crawl order.
struct Frontier {
    strategy: Strategy,
    entries: HashMap<String, (u32, i64)>,
    order: BTreeSet<(Reverse<i64>, u32, String)>,
}

impl Frontier {
    fn key(&self, title: &str, depth: u32, score: i64) -> (Reverse<i64>, u32, String) {
        match self.strategy {
            Strategy::Bfs => (Reverse(0), depth, title.to_string()),
            Strategy::Priority => (Reverse(score), depth, title.to_string()),
        }
    }

    fn add(&mut self, title: String, depth: u32, score: i64) {
        let new = match self.entries.get(&title) {
            Some(&(d, s)) => {
                let (nd, ns) = (d.min(depth), s.saturating_add(score));
                let old = self.key(&title, d, s);
                self.order.remove(&old);
                (nd, ns)
            }
            None => (depth, score),
        };
        let k = self.key(&title, new.0, new.1);
        self.order.insert(k);
        self.entries.insert(title, new);
    }

    fn pop(&mut self) -> Option<(String, u32)> {
        let k = self.order.pop_first()?;
        let (depth, _) = self.entries.remove(&k.2)?;
        Some((k.2, depth))
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Runs a crawl; `fetch` answers a wave of titles with one outcome per title, in order.
/// `cancelled` is checked between waves.
pub fn crawl(
    plan: &Plan,
    seeds: &[String],
    mut fetch: impl FnMut(&[String]) -> anyhow::Result<Vec<Outcome>>,
    mut cancelled: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Crawl> {
    let mut frontier = Frontier { strategy: plan.strategy, entries: HashMap::new(), order: BTreeSet::new() };
    let mut asked: HashSet<String> = HashSet::new();
    let mut out = Crawl::default();
    for s in seeds {
        let t = normalize_title(s);
        if !t.is_empty() {
            frontier.add(t, 0, i64::MAX / 4);
        }
    }
    let full = |out: &Crawl| plan.max_pages > 0 && out.pages.len() >= plan.max_pages;
    while !frontier.is_empty() && !full(&out) {
        cancelled()?;
        let budget = if plan.max_pages > 0 {
            (plan.max_pages - out.pages.len()).min(plan.wave.max(1))
        } else {
            plan.wave.max(1)
        };
        let mut wave: Vec<(String, u32)> = Vec::with_capacity(budget);
        while wave.len() < budget {
            let Some((t, d)) = frontier.pop() else { break };
            if asked.insert(t.clone()) {
                wave.push((t, d));
            }
        }
        if wave.is_empty() {
            break;
        }
        out.waves += 1;
        out.asked += wave.len() as u64;
        let titles: Vec<String> = wave.iter().map(|(t, _)| t.clone()).collect();
        let outcomes = fetch(&titles)?;
        for ((title, depth), outcome) in wave.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Page(p) => admit(plan, p, depth, &mut out, &mut frontier, &mut asked),
                Outcome::Redirect { to, page } => {
                    let to = normalize_title(&to);
                    if let Some(p) = page
                        && !asked.contains(&to)
                        && !out.pages.contains_key(&p.title)
                    {
                        asked.insert(to.clone());
                        admit(plan, p, depth, &mut out, &mut frontier, &mut asked);
                    } else if !asked.contains(&to) && !out.pages.contains_key(&to) {
                        frontier.add(to, depth, i64::MAX / 8);
                    }
                }
                Outcome::Missing => out.missing += 1,
                Outcome::Failed { reason, attempts } => out.failed.push((title, reason, attempts)),
            }
        }
    }
    Ok(out)
}

fn admit(plan: &Plan, p: PageRec, depth: u32, out: &mut Crawl, frontier: &mut Frontier, asked: &mut HashSet<String>) {
    if !plan.namespaces.contains(&p.ns) || out.pages.contains_key(&p.title) {
        return;
    }
    // Its redirects are known now: never ask for them.
    for (_, alias) in &p.aliases {
        asked.insert(normalize_title(alias));
    }
    if plan.max_pages > 0 && out.pages.len() >= plan.max_pages {
        return;
    }
    if depth < plan.max_depth {
        let contribution = (p.relevance * 1000.0) as i64;
        for l in &p.links {
            let t = normalize_title(l);
            if t.is_empty() || asked.contains(&t) || out.pages.contains_key(&t) {
                continue;
            }
            let own = if medical_words(&t) { 300 } else { 0 };
            let score = contribution + if frontier.entries.contains_key(&t) { 0 } else { own };
            frontier.add(t, depth + 1, score);
        }
    }
    out.pages.insert(p.title.clone(), (p, depth));
}
