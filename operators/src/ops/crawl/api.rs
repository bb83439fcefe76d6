//! A MediaWiki Action API client that behaves the way a crawler must: a descriptive
//! User-Agent, a global request rate and a cap on requests in flight, `maxlag`, retries
//! with exponential backoff and jitter on timeouts, connection failures, truncated or
//! malformed bodies, `429` (honouring `Retry-After`), `5xx` and `maxlag` errors, and a
//! bound on retries after which a request fails with the reason of its last attempt.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ops::extract::wikitext::normalize_title;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The API endpoint (`https://en.wikipedia.org/w/api.php`).
    pub url: String,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Requests per second, across all requests in flight.
    pub rate: f64,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// `maxlag` seconds sent with every request (0: not sent).
    pub maxlag: u64,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// First backoff delay; doubles with each retry.
    pub backoff: Duration,
    /// Longest wait between attempts (also caps `Retry-After`).
    pub backoff_max: Duration,
}

/// A request that failed for good.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchError {
    /// Why the last attempt failed.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
}

/// One article as the API returns it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiPage {
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
    /// Wikitext of the revision.
    pub text: String,
    /// Category names, without the prefix.
    pub categories: Vec<String>,
    /// Linked article titles.
    pub links: Vec<String>,
    /// Redirects to this page: (page id, title).
    pub redirects: Vec<(i64, String)>,
    /// Canonical URL.
    pub url: Option<String>,
}

/// What a batch of titles resolved to.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Pages found, by title.
    pub pages: BTreeMap<String, ApiPage>,
    /// Requested title -> the title it resolved to (normalisation and redirects).
    pub resolved: BTreeMap<String, String>,
    /// Titles (after resolution) that do not exist.
    pub missing: Vec<String>,
    /// Redirect pages among the answers: title -> target.
    pub redirects: BTreeMap<String, String>,
}

/// Counters for the run report.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// HTTP attempts made.
    pub attempts: AtomicU64,
    /// Attempts that were retried.
    pub retries: AtomicU64,
    /// Of which: 429 answers.
    pub throttled: AtomicU64,
    /// Of which: maxlag answers.
    pub lagged: AtomicU64,
}

/// The client.
pub struct ApiClient {
    http: reqwest::Client,
    cfg: ApiConfig,
    next_slot: Mutex<Instant>,
    in_flight: tokio::sync::Semaphore,
    /// Counters.
    pub stats: ApiStats,
}

/// Why an attempt failed, and whether to try again (and after how long at least).
enum Attempt {
    Retry { reason: String, wait: Option<Duration> },
    Fail(String),
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

impl ApiClient {
    /// A client; fails on a bad configuration (e.g. an invalid User-Agent).
    pub fn new(cfg: ApiConfig) -> anyhow::Result<Self> {
        if cfg.user_agent.trim().is_empty() {
            anyhow::bail!("`user_agent` must not be empty: Wikimedia requires a descriptive User-Agent");
        }
        let http = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .build()?;
        let permits = cfg.concurrency.max(1);
        Ok(ApiClient {
            http,
            cfg,
            next_slot: Mutex::new(Instant::now()),
            in_flight: tokio::sync::Semaphore::new(permits),
            stats: ApiStats::default(),
        })
    }

    /// Waits for the next request slot of the global rate.
    async fn pace(&self) {
        if self.cfg.rate <= 0.0 {
            return;
        }
        let interval = Duration::from_secs_f64(1.0 / self.cfg.rate);
        let at = {
            let Ok(mut next) = self.next_slot.lock() else { return };
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }

    fn backoff(&self, retry: u32) -> Duration {
        let exp = self.cfg.backoff.saturating_mul(1u32 << retry.min(16));
        let capped = exp.min(self.cfg.backoff_max);
        // Full jitter on the upper half: [d/2, d).
        let f: f64 = rand::rng().random_range(0.5..1.0);
        capped.mul_f64(f)
    }

    /// One attempt.
    async fn attempt(&self, params: &[(String, String)]) -> Result<Value, Attempt> {
        let _permit = self.in_flight.acquire().await.map_err(|_| Attempt::Fail("client closed".into()))?;
        self.pace().await;
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let resp = match self.http.post(&self.cfg.url).form(params).send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "connection error"
                };
                return Err(Attempt::Retry { reason: format!("{what}: {}", root_cause(&e)), wait: None });
            }
        };
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        if status.as_u16() == 429 {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(Attempt::Retry { reason: "HTTP 429 Too Many Requests".into(), wait: retry_after });
        }
        if status.is_server_error() {
            return Err(Attempt::Retry { reason: format!("HTTP {}", status.as_u16()), wait: retry_after });
        }
        if !status.is_success() {
            return Err(Attempt::Fail(format!("HTTP {}", status.as_u16())));
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                let what = if e.is_timeout() { "timeout reading the body" } else { "truncated body" };
                return Err(Attempt::Retry { reason: format!("{what}: {}", root_cause(&e)), wait: None });
            }
        };
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return Err(Attempt::Retry { reason: format!("malformed JSON: {e}"), wait: None }),
        };
        if let Some(err) = v.get("error") {
            let code = err.get("code").and_then(Value::as_str).unwrap_or("unknown");
            let info = err.get("info").and_then(Value::as_str).unwrap_or("");
            if code == "maxlag" {
                self.stats.lagged.fetch_add(1, Ordering::Relaxed);
                let lag = err.get("lag").and_then(Value::as_f64).map(Duration::from_secs_f64);
                return Err(Attempt::Retry { reason: format!("maxlag: {info}"), wait: retry_after.or(lag) });
            }
            if matches!(code, "ratelimited" | "readonly" | "internal_api_error_DBQueryTimeoutError") {
                return Err(Attempt::Retry { reason: format!("API error {code}: {info}"), wait: retry_after });
            }
            return Err(Attempt::Fail(format!("API error {code}: {info}")));
        }
        Ok(v)
    }

    /// A GET-like query with retries; returns the JSON answer.
    pub async fn call(&self, params: &[(&str, String)]) -> Result<Value, FetchError> {
        let mut p: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        p.push(("format".into(), "json".into()));
        p.push(("formatversion".into(), "2".into()));
        if self.cfg.maxlag > 0 {
            p.push(("maxlag".into(), self.cfg.maxlag.to_string()));
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(&p).await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(reason)) => return Err(FetchError { reason, attempts }),
                Err(Attempt::Retry { reason, wait }) => {
                    if attempts > self.cfg.max_retries {
                        return Err(FetchError {
                            reason: format!("{reason} (gave up after {attempts} attempts)"),
                            attempts,
                        });
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let mut delay = self.backoff(attempts - 1);
                    if let Some(w) = wait {
                        // The server's Retry-After wins over our backoff, up to 5 minutes.
                        delay = delay.max(w.min(Duration::from_secs(300)));
                    }
                    tracing::debug!(%reason, ?delay, attempts, "retrying a MediaWiki API request");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Fetches up to 50 titles: content, categories, links, redirects and URL, following
    /// continuation and resolving redirects.
    pub async fn query_titles(&self, titles: &[String]) -> Result<Batch, FetchError> {
        let base: Vec<(&str, String)> = vec![
            ("action", "query".into()),
            ("prop", "revisions|categories|links|redirects|info".into()),
            ("rvprop", "ids|timestamp|content".into()),
            ("rvslots", "main".into()),
            ("cllimit", "max".into()),
            ("pllimit", "max".into()),
            ("plnamespace", "0".into()),
            ("rdlimit", "max".into()),
            ("rdprop", "pageid|title".into()),
            ("rdnamespace", "0".into()),
            ("inprop", "url".into()),
            // No `redirects=1`: a redirect answers with its own (tiny) page, and the crawl
            // asks for its target only if it has not got it already, so no article's content
            // is ever fetched twice.
            ("titles", titles.join("|")),
        ];
        let mut batch = Batch::default();
        let mut cont: Vec<(String, String)> = Vec::new();
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 10_000 {
                return Err(FetchError { reason: "continuation does not end".into(), attempts: rounds });
            }
            let mut params = base.clone();
            params.extend(cont.iter().map(|(k, v)| (k.as_str(), v.clone())));
            let v = self.call(&params).await?;
            merge_query(&mut batch, &v).map_err(|reason| FetchError { reason, attempts: 1 })?;
            cont = match v.get("continue").and_then(Value::as_object) {
                Some(c) => c
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                    .collect(),
                None => break,
            };
        }
        // Requested title -> final title.
        let mut norm: BTreeMap<String, String> = BTreeMap::new();
        let mut redir: BTreeMap<String, String> = BTreeMap::new();
        for (from, to) in batch.resolved.iter() {
            redir.insert(from.clone(), to.clone());
        }
        for t in titles {
            let n = normalize_title(t);
            let mut cur = n.clone();
            for _ in 0..3 {
                match redir.get(&cur) {
                    Some(next) if *next != cur => cur = next.clone(),
                    _ => break,
                }
            }
            norm.insert(t.clone(), cur);
        }
        batch.resolved = norm;
        Ok(batch)
    }

    /// Members of a category (`Category:` prefix optional) in the given namespaces.
    pub async fn category_members(&self, category: &str, namespaces: &str) -> Result<Vec<(i64, String)>, FetchError> {
        let name = category.strip_prefix("Category:").unwrap_or(category);
        let mut out = Vec::new();
        let mut cont: Vec<(String, String)> = Vec::new();
        for _ in 0..100_000 {
            let mut params: Vec<(&str, String)> = vec![
                ("action", "query".into()),
                ("list", "categorymembers".into()),
                ("cmtitle", format!("Category:{name}")),
                ("cmnamespace", namespaces.into()),
                ("cmlimit", "max".into()),
            ];
            params.extend(cont.iter().map(|(k, v)| (k.as_str(), v.clone())));
            let v = self.call(&params).await?;
            let members = v.pointer("/query/categorymembers").and_then(Value::as_array).cloned().unwrap_or_default();
            for m in members {
                let ns = m.get("ns").and_then(Value::as_i64).unwrap_or(0);
                if let Some(t) = m.get("title").and_then(Value::as_str) {
                    out.push((ns, t.to_string()));
                }
            }
            cont = match v.get("continue").and_then(Value::as_object) {
                Some(c) => {
                    c.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_default())).collect()
                }
                None => return Ok(out),
            };
        }
        Err(FetchError { reason: "category continuation does not end".into(), attempts: 0 })
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

/// Merges one `action=query` answer into a batch (continuation answers add list items).
fn merge_query(batch: &mut Batch, v: &Value) -> Result<(), String> {
    let q = v.get("query").ok_or_else(|| "answer without `query`".to_string())?;
    for key in ["normalized", "redirects"] {
        if let Some(list) = q.get(key).and_then(Value::as_array) {
            for r in list {
                if let (Some(f), Some(t)) = (r.get("from").and_then(Value::as_str), r.get("to").and_then(Value::as_str))
                {
                    batch.resolved.insert(normalize_title(f), normalize_title(t));
                }
            }
        }
    }
    let pages = q.get("pages").and_then(Value::as_array).cloned().unwrap_or_default();
    for p in pages {
        let title = p.get("title").and_then(Value::as_str).unwrap_or("").to_string();
        if title.is_empty() {
            continue;
        }
        if p.get("missing").is_some() || p.get("invalid").is_some() {
            if !batch.missing.contains(&title) {
                batch.missing.push(title);
            }
            continue;
        }
        if p.get("redirect").and_then(Value::as_bool) == Some(true) {
            let content = p
                .get("revisions")
                .and_then(Value::as_array)
                .and_then(|r| r.first())
                .and_then(|rev| rev.pointer("/slots/main/content").or_else(|| rev.get("content")))
                .and_then(Value::as_str);
            if let Some(target) = content.and_then(crate::ops::extract::wikitext::parse_redirect) {
                batch.redirects.insert(normalize_title(&title), target);
            }
            continue;
        }
        let entry =
            batch.pages.entry(title.clone()).or_insert_with(|| ApiPage { title: title.clone(), ..Default::default() });
        entry.page_id = p.get("pageid").and_then(Value::as_i64).unwrap_or(entry.page_id);
        entry.ns = p.get("ns").and_then(Value::as_i64).unwrap_or(entry.ns);
        if let Some(rev) = p.get("revisions").and_then(Value::as_array).and_then(|r| r.first()) {
            entry.revision_id = rev.get("revid").and_then(Value::as_i64);
            entry.timestamp = rev.get("timestamp").and_then(Value::as_str).map(str::to_string);
            let content = rev.pointer("/slots/main/content").or_else(|| rev.get("content")).and_then(Value::as_str);
            if let Some(c) = content {
                entry.text = c.to_string();
            }
        }
        if let Some(u) = p.get("fullurl").and_then(Value::as_str) {
            entry.url = Some(u.to_string());
        }
        if let Some(cats) = p.get("categories").and_then(Value::as_array) {
            for c in cats {
                if let Some(t) = c.get("title").and_then(Value::as_str) {
                    let name = t.split_once(':').map(|(_, n)| n).unwrap_or(t).to_string();
                    entry.categories.push(name);
                }
            }
        }
        if let Some(links) = p.get("links").and_then(Value::as_array) {
            for l in links {
                if l.get("ns").and_then(Value::as_i64).unwrap_or(0) == 0
                    && let Some(t) = l.get("title").and_then(Value::as_str)
                {
                    entry.links.push(t.to_string());
                }
            }
        }
        if let Some(rds) = p.get("redirects").and_then(Value::as_array) {
            for r in rds {
                if let Some(t) = r.get("title").and_then(Value::as_str) {
                    entry.redirects.push((r.get("pageid").and_then(Value::as_i64).unwrap_or(0), t.to_string()));
                }
            }
        }
    }
    Ok(())
}
