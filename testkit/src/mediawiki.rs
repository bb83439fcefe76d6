//! A MediaWiki Action API over a fixture wiki, as a [`Handler`](crate::Handler) for
//! [`TestServer`](crate::TestServer): what the crawler tests fetch from.
//!
//! It answers `action=query` the way MediaWiki does with `format=json&formatversion=2`:
//! `titles=` (at most 50) with `redirects` resolution and `normalized` titles, `missing`
//! pages, `prop=revisions` (`rvslots=main` content), `prop=categories`, `prop=links`
//! (`plnamespace`), `prop=redirects`, `prop=info` (`inprop=url`), `list=categorymembers`
//! (`cmnamespace`), and continuation (`continue` with `plcontinue`, `clcontinue`,
//! `rdcontinue`, `cmcontinue`) with a small page size ([`FixtureWiki::with_limit`]) so
//! that clients must follow it. `maxlag` is honoured: while the simulated replication lag
//! ([`FixtureWiki::set_lag`]) exceeds the request's `maxlag`, it answers the `maxlag` error
//! with `Retry-After`. It counts how many times each page's content was served, so tests
//! can check that nothing is fetched twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::{Request, Response};

/// One page of the fixture wiki.
#[derive(Clone, Debug)]
pub struct WikiPage {
    /// Page id.
    pub page_id: i64,
    /// Title (with its namespace prefix, e.g. `Category:Rare diseases`).
    pub title: String,
    /// Wikitext of the current revision.
    pub text: String,
    /// Revision id.
    pub revision_id: i64,
    /// Revision timestamp.
    pub timestamp: String,
}

impl WikiPage {
    /// A page; the revision id is derived from the page id.
    pub fn new(page_id: i64, title: &str, text: &str) -> Self {
        WikiPage {
            page_id,
            title: title.to_string(),
            text: text.to_string(),
            revision_id: 1_000_000 + page_id,
            timestamp: "2024-01-01T00:00:00Z".into(),
        }
    }
}

/// The fixture wiki and its API behaviour.
pub struct FixtureWiki {
    pages: BTreeMap<String, WikiPage>,
    limit: usize,
    lag: AtomicU64,
    served: Mutex<HashMap<String, u64>>,
    base_url: String,
}

/// MediaWiki's title normalisation: `_` as space, trimmed, first letter upper-case.
pub fn normalize(title: &str) -> String {
    let t = title.replace('_', " ");
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    let (prefix, rest) = match t.split_once(':') {
        Some((p, r)) if namespace_of(p) != 0 => (format!("{}:", upper_first(p.trim())), r.trim().to_string()),
        _ => (String::new(), t.clone()),
    };
    format!("{prefix}{}", upper_first(&rest))
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Namespace number of a title prefix (0 when it is not a namespace).
pub fn namespace_of(prefix: &str) -> i64 {
    match prefix.trim().to_lowercase().as_str() {
        "talk" => 1,
        "user" => 2,
        "wikipedia" => 4,
        "file" | "image" => 6,
        "template" => 10,
        "help" => 12,
        "category" => 14,
        "portal" => 100,
        _ => 0,
    }
}

fn ns_of_title(title: &str) -> i64 {
    title.split_once(':').map(|(p, _)| namespace_of(p)).unwrap_or(0)
}

/// `#REDIRECT [[Target]]`: the normalised target.
pub fn redirect_target(text: &str) -> Option<String> {
    let t = text.trim_start();
    if t.len() < 9 || !t[..9].eq_ignore_ascii_case("#redirect") {
        return None;
    }
    let rest = &t[9..];
    let open = rest.find("[[")?;
    let close = rest[open..].find("]]")? + open;
    let target = rest[open + 2..close].split(['|', '#']).next()?;
    Some(normalize(target))
}

/// Links (`(namespace, title)`) of wikitext: a simple `[[…]]` scanner, enough for fixtures.
pub fn scan_links(text: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("[[") {
        rest = &rest[i + 2..];
        let Some(j) = rest.find("]]") else { break };
        let inner = &rest[..j];
        if inner.contains("[[") {
            continue;
        }
        let target = inner.split('|').next().unwrap_or("").split('#').next().unwrap_or("").trim();
        let target = target.strip_prefix(':').unwrap_or(target);
        if !target.is_empty() {
            let t = normalize(target);
            out.push((ns_of_title(&t), t));
        }
        rest = &rest[j + 2..];
    }
    out
}

impl FixtureWiki {
    /// A wiki holding `pages` (redirects are pages whose text is `#REDIRECT [[…]]`).
    pub fn new(pages: Vec<WikiPage>) -> Self {
        FixtureWiki {
            pages: pages.into_iter().map(|p| (normalize(&p.title), p)).collect(),
            limit: 500,
            lag: AtomicU64::new(0),
            served: Mutex::new(HashMap::new()),
            base_url: "https://fixture.wiki/wiki/".into(),
        }
    }

    /// Items per list and per continuation batch (MediaWiki's is 500; small values force
    /// clients through continuation).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }

    /// Simulated replication lag in seconds (answered with `maxlag` errors).
    pub fn set_lag(&self, seconds: u64) {
        self.lag.store(seconds, Ordering::SeqCst);
    }

    /// How many times each page's content was served.
    pub fn served(&self) -> HashMap<String, u64> {
        self.served.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Titles whose content was served more than once.
    pub fn served_twice(&self) -> Vec<String> {
        let mut v: Vec<String> = self.served().into_iter().filter(|(_, n)| *n > 1).map(|(t, _)| t).collect();
        v.sort();
        v
    }

    /// A page by (normalised) title.
    pub fn page(&self, title: &str) -> Option<&WikiPage> {
        self.pages.get(&normalize(title))
    }

    fn error(code: &str, info: &str) -> Response {
        Response::json(200, &json!({ "error": { "code": code, "info": info } }))
    }

    /// Answers one API request.
    pub fn handle(&self, req: &Request) -> Response {
        let p: HashMap<String, String> = req.params().into_iter().collect();
        if let Some(max) = p.get("maxlag").and_then(|m| m.parse::<u64>().ok()) {
            let lag = self.lag.load(Ordering::SeqCst);
            if lag > max {
                return Response::json(
                    200,
                    &json!({ "error": { "code": "maxlag", "info": format!("Waiting for db1: {lag} seconds lagged."), "host": "db1", "lag": lag } }),
                )
                .header("retry-after", "1")
                .header("x-database-lag", &lag.to_string());
            }
        }
        if p.get("format").map(String::as_str) != Some("json") {
            return Self::error("badformat", "only format=json is served");
        }
        match p.get("action").map(String::as_str) {
            Some("query") => {}
            Some(a) => return Self::error("badvalue", &format!("Unrecognized value for parameter \"action\": {a}.")),
            None => return Self::error("noaction", "The action parameter must be set."),
        }
        if p.get("list").map(String::as_str) == Some("categorymembers") {
            return self.category_members(&p);
        }
        match p.get("titles") {
            Some(t) => self.query_titles(t, &p),
            None => Self::error("missingparam", "One of the parameters titles, pageids is required."),
        }
    }

    fn category_members(&self, p: &HashMap<String, String>) -> Response {
        let Some(cat) = p.get("cmtitle") else { return Self::error("missingparam", "cmtitle is required") };
        let cat = normalize(cat);
        let name = cat.split_once(':').map(|(_, n)| n.to_string()).unwrap_or(cat.clone());
        let namespaces: Option<Vec<i64>> =
            p.get("cmnamespace").map(|s| s.split('|').filter_map(|x| x.trim().parse().ok()).collect());
        let mut members: Vec<&WikiPage> = self
            .pages
            .values()
            .filter(|pg| redirect_target(&pg.text).is_none())
            .filter(|pg| {
                scan_links(&pg.text)
                    .iter()
                    .any(|(ns, t)| *ns == 14 && normalize(t.split_once(':').map(|x| x.1).unwrap_or("")) == name)
            })
            .filter(|pg| namespaces.as_ref().is_none_or(|n| n.contains(&ns_of_title(&pg.title))))
            .collect();
        members.sort_by(|a, b| a.title.cmp(&b.title));
        let start: usize = p.get("cmcontinue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let end = (start + self.limit).min(members.len());
        let items: Vec<Value> = members[start.min(end)..end]
            .iter()
            .map(|pg| json!({ "pageid": pg.page_id, "ns": ns_of_title(&pg.title), "title": pg.title }))
            .collect();
        let mut out = json!({ "batchcomplete": true, "query": { "categorymembers": items } });
        if end < members.len() {
            out["continue"] = json!({ "cmcontinue": end.to_string(), "continue": "-||" });
        }
        Response::json(200, &out)
    }

    fn query_titles(&self, titles: &str, p: &HashMap<String, String>) -> Response {
        let titles: Vec<&str> = titles.split('|').collect();
        if titles.len() > 50 {
            return Self::error("toomanyvalues", "Too many values supplied for parameter \"titles\". The limit is 50.");
        }
        let props: Vec<&str> = p.get("prop").map(|s| s.split('|').collect()).unwrap_or_default();
        let follow = p.contains_key("redirects");
        let mut normalized = Vec::new();
        let mut redirects = Vec::new();
        let mut resolved: Vec<String> = Vec::new();
        for t in &titles {
            let n = normalize(t);
            if n != *t {
                normalized.push(json!({ "fromencoded": false, "from": t, "to": n }));
            }
            let mut target = n.clone();
            if follow
                && let Some(pg) = self.pages.get(&n)
                && let Some(to) = redirect_target(&pg.text)
            {
                redirects.push(json!({ "from": n, "to": to }));
                target = to;
            }
            if !resolved.contains(&target) {
                resolved.push(target);
            }
        }
        // Continuation offsets: one per list prop, counting items across the batch.
        let cont = |key: &str| p.get(key).and_then(|c| c.parse::<usize>().ok());
        let continuing = ["plcontinue", "clcontinue", "rdcontinue"].iter().any(|k| p.contains_key(*k));
        let mut pages = Vec::new();
        let mut counters: BTreeMap<&str, (usize, usize)> = BTreeMap::new(); // prop -> (seen, emitted)
        let mut more: BTreeMap<&str, usize> = BTreeMap::new();
        for title in &resolved {
            let Some(pg) = self.pages.get(title) else {
                pages.push(json!({ "ns": ns_of_title(title), "title": title, "missing": true }));
                continue;
            };
            let mut obj = json!({ "pageid": pg.page_id, "ns": ns_of_title(&pg.title), "title": pg.title });
            if redirect_target(&pg.text).is_some() {
                obj["redirect"] = json!(true);
            }
            if props.contains(&"revisions") && !continuing {
                obj["revisions"] = json!([{
                    "revid": pg.revision_id,
                    "parentid": pg.revision_id - 1,
                    "timestamp": pg.timestamp,
                    "slots": { "main": { "contentmodel": "wikitext", "contentformat": "text/x-wiki", "content": pg.text } }
                }]);
                if let Ok(mut s) = self.served.lock() {
                    *s.entry(pg.title.clone()).or_insert(0) += 1;
                }
            }
            if props.contains(&"info") && !continuing {
                obj["lastrevid"] = json!(pg.revision_id);
                obj["length"] = json!(pg.text.len());
                obj["fullurl"] = json!(format!("{}{}", self.base_url, pg.title.replace(' ', "_")));
            }
            let mut lists: Vec<(&str, &str, &str, Vec<Value>)> = Vec::new();
            if props.contains(&"links") {
                let only: Option<Vec<i64>> =
                    p.get("plnamespace").map(|s| s.split('|').filter_map(|x| x.trim().parse().ok()).collect());
                let mut links: Vec<(i64, String)> = scan_links(&pg.text)
                    .into_iter()
                    .filter(|(ns, _)| *ns != 14 && *ns != 6)
                    .filter(|(ns, _)| only.as_ref().is_none_or(|o| o.contains(ns)))
                    .collect();
                links.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
                links.dedup();
                lists.push((
                    "links",
                    "plcontinue",
                    "pl",
                    links.into_iter().map(|(ns, t)| json!({ "ns": ns, "title": t })).collect(),
                ));
            }
            if props.contains(&"categories") {
                let mut cats: Vec<String> =
                    scan_links(&pg.text).into_iter().filter(|(ns, _)| *ns == 14).map(|(_, t)| t).collect();
                cats.sort();
                cats.dedup();
                lists.push((
                    "categories",
                    "clcontinue",
                    "cl",
                    cats.into_iter().map(|t| json!({ "ns": 14, "title": t })).collect(),
                ));
            }
            if props.contains(&"redirects") {
                let rds: Vec<Value> = self
                    .pages
                    .values()
                    .filter(|r| redirect_target(&r.text).as_deref() == Some(pg.title.as_str()))
                    .map(|r| json!({ "pageid": r.page_id, "ns": ns_of_title(&r.title), "title": r.title }))
                    .collect();
                lists.push(("redirects", "rdcontinue", "rd", rds));
            }
            for (prop, key, _, items) in lists {
                let (seen, emitted) = counters.entry(prop).or_insert((0, 0));
                let start = cont(key).unwrap_or(0);
                // Without a continue token for this prop while continuing, it is complete.
                if continuing && !p.contains_key(key) {
                    *seen += items.len();
                    continue;
                }
                let mut kept = Vec::new();
                for it in items {
                    if *seen >= start && *emitted < self.limit {
                        kept.push(it);
                        *emitted += 1;
                    } else if *seen >= start && !more.contains_key(prop) {
                        more.insert(prop, *seen);
                    }
                    *seen += 1;
                }
                if !kept.is_empty() {
                    obj[prop] = Value::Array(kept);
                }
            }
            pages.push(obj);
        }
        let mut query = json!({ "pages": pages });
        if !normalized.is_empty() {
            query["normalized"] = Value::Array(normalized);
        }
        if !redirects.is_empty() {
            query["redirects"] = Value::Array(redirects);
        }
        let mut out = json!({ "query": query });
        if more.is_empty() {
            out["batchcomplete"] = json!(true);
        } else {
            let mut c = serde_json::Map::new();
            for (prop, at) in more {
                let key = match prop {
                    "links" => "plcontinue",
                    "categories" => "clcontinue",
                    _ => "rdcontinue",
                };
                c.insert(key.into(), json!(at.to_string()));
            }
            c.insert("continue".into(), json!("||"));
            out["continue"] = Value::Object(c);
        }
        Response::json(200, &out)
    }
}
