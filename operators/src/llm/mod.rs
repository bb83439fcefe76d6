//! The LLM client: any OpenAI-compatible chat-completions endpoint named in the pipeline's
//! `llm:` section (vLLM, SGLang, a hosted API, `fleming serve`).
//!
//! - The API key is read from the environment variable the endpoint names
//!   (`api_key_env`) when the client is built; it is never stored in params, keys,
//!   manifests, memo entries or error messages.
//! - At most `max_concurrency` requests are in flight; each has `timeout_secs`.
//! - 429 and 5xx answers, timeouts, connection errors, resets and unreadable bodies are
//!   retried up to `max_retries` times with exponential backoff and jitter; a
//!   `Retry-After` header (seconds or an HTTP date) is respected. Other 4xx fail at once.
//! - [`LlmClient::run`] memoises every call per record: the key is the model, the full
//!   messages, the sampling parameters (seed included) and the trial index — nothing
//!   else — so a rerun makes no call, a grown input calls only for the new records, and a
//!   killed run keeps every call the memo committed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use fleming_runtime::CancelToken;
use fleming_runtime::context::RecordMemo;
use fleming_runtime::progress::Progress;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(s: impl Into<String>) -> Self {
        Message { role: "system".into(), content: s.into() }
    }
    /// A user message.
    pub fn user(s: impl Into<String>) -> Self {
        Message { role: "user".into(), content: s.into() }
    }

    /// The chat an item is asked as (the shared prompt of [`fleming_questions::prompt`]).
    pub fn for_item(q: &fleming_questions::Question) -> Vec<Message> {
        fleming_questions::messages(q).into_iter().map(Message::from).collect()
    }
}

impl From<fleming_questions::ChatMessage> for Message {
    fn from(m: fleming_questions::ChatMessage) -> Self {
        Message { role: m.role.to_string(), content: m.content }
    }
}

/// One call to make: messages, request parameters (merged over the endpoint's), and the
/// trial index (several independent answers to the same prompt).
#[derive(Clone, Debug)]
pub struct Call {
    /// The chat.
    pub messages: Vec<Message>,
    /// Request parameters (temperature, top_p, max_tokens, seed, stop, …) over the
    /// endpoint's defaults.
    pub params: Map<String, Value>,
    /// Trial index; with a `seed` the request's seed is `seed + trial`.
    pub trial: u32,
}

/// What the endpoint answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The assistant's text.
    pub content: String,
    /// `stop`, `length`, …
    pub finish_reason: Option<String>,
    /// Completion tokens, when the endpoint reports `usage`.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Seconds the answering request took (the last attempt).
    #[serde(default)]
    pub seconds: Option<f64>,
}

impl Completion {
    /// The generation stopped at its token limit (`finish_reason: length`): the strict
    /// extractor does not score such a reply.
    pub fn truncated(&self) -> bool {
        self.finish_reason.as_deref() == Some("length")
    }
}

/// An endpoint of the pipeline's `llm:` section.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Its name in the pipeline.
    pub name: String,
    /// Base URL (`…/v1`) or the full chat-completions URL.
    pub url: String,
    /// Model name sent in requests.
    pub model: String,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Default request parameters.
    pub params: Map<String, Value>,
    /// What identifies the model in memo keys, when not its `model` name: a served model
    /// artifact is keyed by its content digest, not by the name it is served under.
    pub memo_model: Option<String>,
}

impl Endpoint {
    /// The endpoint `name` of an `llm:` section (as `OpContext::llm` holds it).
    pub fn from_section(section: &Map<String, Value>, name: &str) -> anyhow::Result<Endpoint> {
        let e = section.get(name).and_then(Value::as_object).ok_or_else(|| {
            let known: Vec<&str> = section.keys().map(String::as_str).collect();
            anyhow!(
                "the pipeline's `llm:` section has no endpoint `{name}` (it has: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )
        })?;
        let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str, d: f64| e.get(k).and_then(Value::as_f64).unwrap_or(d);
        Ok(Endpoint {
            name: name.to_string(),
            url: s("endpoint").ok_or_else(|| anyhow!("llm endpoint `{name}` has no `endpoint` URL"))?,
            model: s("model").ok_or_else(|| anyhow!("llm endpoint `{name}` has no `model`"))?,
            api_key_env: s("api_key_env"),
            max_concurrency: n("max_concurrency", 8.0).max(1.0) as usize,
            timeout: Duration::from_secs_f64(n("timeout_secs", 120.0).max(0.001)),
            max_retries: n("max_retries", 5.0).max(0.0) as u32,
            params: e.get("params").and_then(Value::as_object).cloned().unwrap_or_default(),
            memo_model: None,
        })
    }

    fn chat_url(&self) -> String {
        let u = self.url.trim_end_matches('/');
        if u.ends_with("/chat/completions") { u.to_string() } else { format!("{u}/chat/completions") }
    }
}

/// Why one call failed (after its retries).
#[derive(Clone, Debug)]
pub struct CallFailure {
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

enum Attempt {
    Retry { error: String, after: Option<Duration> },
    Fatal(String),
}

/// A client for one endpoint.
pub struct LlmClient {
    inner: Arc<Inner>,
    rt: tokio::runtime::Runtime,
}

/// What the request tasks share.
struct Inner {
    endpoint: Endpoint,
    http: reqwest::Client,
    api_key: Option<String>,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl LlmClient {
    /// A client for `endpoint`; reads the API key from its environment variable now.
    pub fn new(endpoint: Endpoint) -> anyhow::Result<LlmClient> {
        let api_key = match &endpoint.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => bail!(
                    "llm endpoint `{}` reads its API key from ${var}, which is not set (export {var}=… before running)",
                    endpoint.name
                ),
            },
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(endpoint.timeout)
            .connect_timeout(endpoint.timeout.min(Duration::from_secs(30)))
            .pool_max_idle_per_host(endpoint.max_concurrency)
            .build()
            .context("building the HTTP client")?;
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the HTTP runtime")?;
        let inner = Inner {
            endpoint,
            http,
            api_key,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        };
        Ok(LlmClient { inner: Arc::new(inner), rt })
    }

    /// A client for the endpoint `name` of an `llm:` section.
    pub fn from_section(section: &Map<String, Value>, name: &str) -> anyhow::Result<LlmClient> {
        LlmClient::new(Endpoint::from_section(section, name)?)
    }

    /// Sets the backoff: the first retry waits about `base`, doubling up to `max`.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.backoff_base = base;
            inner.backoff_max = max;
        }
        self
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The memo key of a call: model, full messages, sampling parameters and trial.
    pub fn memo_key(&self, memo: &RecordMemo, call: &Call) -> fleming_artifacts::Digest {
        let e = &self.inner.endpoint;
        let model = e.memo_model.as_deref().unwrap_or(&e.model);
        let what = json!({ "model": model, "params": self.inner.request_params(call) });
        let record = json!({ "messages": call.messages, "trial": call.trial });
        memo.key(&what, fleming_runtime::keys::canonical_json(&record).as_bytes())
    }

    /// Makes one call (with retries), no memo.
    pub fn chat(&self, call: &Call) -> Result<Completion, CallFailure> {
        let sem = Arc::new(tokio::sync::Semaphore::new(1));
        self.rt.block_on(self.inner.clone().call_with_retries(call.clone(), sem, CancelToken::new()))
    }

    /// Makes `calls`, each answered from the memo when it was made before; new answers
    /// are put in the memo as they arrive. Returns one result per call, in order. Stops
    /// early (the rest fail as cancelled) when `cancel` fires.
    pub fn run(
        &self,
        calls: &[Call],
        memo: &RecordMemo,
        progress: &Progress,
        cancel: &CancelToken,
    ) -> Vec<Result<Completion, CallFailure>> {
        let mut results: Vec<Option<Result<Completion, CallFailure>>> = vec![None; calls.len()];
        let mut todo = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            let key = self.memo_key(memo, c);
            match memo.get_json::<Completion>(&key) {
                Some(done) => {
                    results[i] = Some(Ok(done));
                    progress.inc(1);
                }
                None => todo.push((i, key)),
            }
        }
        if !todo.is_empty() {
            let sem = Arc::new(tokio::sync::Semaphore::new(self.inner.endpoint.max_concurrency));
            let done: Vec<(usize, Result<Completion, CallFailure>)> = self.rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                let mut out = Vec::with_capacity(todo.len());
                for (i, key) in todo {
                    let this = self.inner.clone();
                    let call = calls[i].clone();
                    let sem = sem.clone();
                    let cancel = cancel.clone();
                    let memo = memo.clone();
                    let progress = progress.clone();
                    // Keep the number of spawned tasks bounded (the semaphore bounds requests).
                    while set.len() >= self.inner.endpoint.max_concurrency * 4 {
                        if let Some(Ok(r)) = set.join_next().await {
                            out.push(r);
                        }
                    }
                    set.spawn(async move {
                        let r = this.call_with_retries(call, sem, cancel).await;
                        if let Ok(c) = &r
                            && let Err(e) = memo.put_json(key, c)
                        {
                            return (
                                i,
                                Err(CallFailure {
                                    attempts: 1,
                                    error: format!("answer received but not memoised: {e:#}"),
                                }),
                            );
                        }
                        progress.inc(1);
                        (i, r)
                    });
                }
                while let Some(r) = set.join_next().await {
                    if let Ok(r) = r {
                        out.push(r);
                    }
                }
                out
            });
            for (i, r) in done {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(CallFailure { attempts: 0, error: "the call task was lost".into() })))
            .collect()
    }
}

impl Inner {
    /// The request parameters of a call: the endpoint's, the call's over them, the seed
    /// shifted by the trial.
    fn request_params(&self, call: &Call) -> Map<String, Value> {
        let mut p = self.endpoint.params.clone();
        for (k, v) in &call.params {
            p.insert(k.clone(), v.clone());
        }
        if let Some(seed) = p.get("seed").and_then(Value::as_i64) {
            p.insert("seed".into(), json!(seed + call.trial as i64));
        }
        p
    }

    async fn call_with_retries(
        self: Arc<Self>,
        call: Call,
        sem: Arc<tokio::sync::Semaphore>,
        cancel: CancelToken,
    ) -> Result<Completion, CallFailure> {
        let body = {
            let mut b = self.request_params(&call);
            b.insert("model".into(), json!(self.endpoint.model));
            b.insert("messages".into(), json!(call.messages));
            b.insert("stream".into(), json!(false));
            Value::Object(b)
        };
        let mut attempt = 0u32;
        loop {
            if cancel.is_cancelled() {
                return Err(CallFailure { attempts: attempt, error: "cancelled".into() });
            }
            attempt += 1;
            let outcome = {
                let Ok(_permit) = sem.acquire().await else {
                    return Err(CallFailure { attempts: attempt, error: "the request pool closed".into() });
                };
                self.attempt(&body).await
            };
            match outcome {
                Ok(c) => return Ok(c),
                Err(Attempt::Fatal(error)) => return Err(CallFailure { attempts: attempt, error }),
                Err(Attempt::Retry { error, after }) => {
                    if attempt > self.endpoint.max_retries {
                        return Err(CallFailure {
                            attempts: attempt,
                            error: format!("{error} (gave up after {attempt} attempts)"),
                        });
                    }
                    let wait = after.unwrap_or_else(|| self.backoff(attempt));
                    tracing::debug!(endpoint = %self.endpoint.name, attempt, ?wait, %error, "retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_base.saturating_mul(1u32 << (attempt - 1).min(16));
        let capped = exp.min(self.backoff_max);
        // Deterministic-enough jitter from the clock: 50–100 % of the capped wait.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        capped.mul_f64(0.5 + (nanos % 1000) as f64 / 2000.0)
    }

    async fn attempt(&self, body: &Value) -> Result<Completion, Attempt> {
        let started = std::time::Instant::now();
        let url = self.endpoint.chat_url();
        let mut req = self.http.post(&url).json(body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    format!("timed out after {:.1}s", self.endpoint.timeout.as_secs_f64())
                } else if e.is_connect() {
                    format!("cannot connect to {url}")
                } else {
                    format!("request failed: {}", error_chain(&e))
                };
                return Err(Attempt::Retry { error: what, after: None });
            }
        };
        let status = resp.status();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out reading the answer".to_string()
                } else {
                    format!("the answer was cut off: {}", error_chain(&e))
                };
                return Err(Attempt::Retry { error: format!("HTTP {status}: {what}"), after: None });
            }
        };
        if status.as_u16() == 429 || status.is_server_error() {
            let after = retry_after.map(|d| d.min(self.backoff_max.max(Duration::from_secs(60))));
            return Err(Attempt::Retry { error: format!("HTTP {status}: {}", snippet(&text)), after });
        }
        if status.as_u16() == 400 && exceeds_the_context(&text) {
            // The item does not fit the model: no retry changes that. It is an answer that
            // stopped before it began (counted as truncated by the strict extractor), so
            // an evaluation keeps the item in its n instead of failing on it.
            return Ok(Completion {
                content: String::new(),
                finish_reason: Some("length".into()),
                tokens: Some(0),
                seconds: Some(started.elapsed().as_secs_f64()),
            });
        }
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => match &self.endpoint.api_key_env {
                    Some(v) => format!(" (check the key in ${v})"),
                    None => " (the endpoint may need a key: set `api_key_env`)".to_string(),
                },
                404 => format!(
                    " (is {url} an OpenAI-compatible chat-completions URL, and `{}` a model it serves?)",
                    self.endpoint.model
                ),
                _ => String::new(),
            };
            return Err(Attempt::Fatal(format!("HTTP {status}: {}{hint}", snippet(&text))));
        }
        match parse_completion(&text) {
            Ok(c) => Ok(Completion { seconds: Some(started.elapsed().as_secs_f64()), ..c }),
            Err(e) => Err(Attempt::Retry { error: format!("unreadable answer: {e}: {}", snippet(&text)), after: None }),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `Retry-After`: delay seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s));
    }
    let t = chrono_like_http_date(v)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs((t - now).max(0) as u64))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
fn chrono_like_http_date(v: &str) -> Option<i64> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// The first choice of a chat-completions answer.
pub fn parse_completion(text: &str) -> anyhow::Result<Completion> {
    let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("not JSON ({e})"))?;
    if let Some(err) = v.get("error") {
        bail!("the endpoint reported an error: {err}");
    }
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("no `choices` in the answer"))?;
    let message = choice.get("message").ok_or_else(|| anyhow!("the first choice has no `message`"))?;
    let content = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => bail!("`message.content` is not text: {other}"),
    };
    Ok(Completion {
        content,
        finish_reason: choice.get("finish_reason").and_then(Value::as_str).map(str::to_string),
        tokens: v.get("usage").and_then(|u| u.get("completion_tokens")).and_then(Value::as_u64),
        seconds: None,
    })
}

/// A refusal because the prompt does not fit the model's context: OpenAI's
/// `context_length_exceeded` code, or the wording of vLLM, SGLang and llama.cpp.
fn exceeds_the_context(body: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(body) else { return false };
    let error = v.get("error").unwrap_or(&v);
    if error.get("code").and_then(Value::as_str) == Some("context_length_exceeded") {
        return true;
    }
    let message = error.get("message").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    [
        "maximum context length",
        "context length exceeded",
        "exceeds the available context size",
        "context_length_exceeded",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Summarises failed calls into one error naming the endpoint, how many failed and why.
pub fn failure_report<T>(endpoint: &Endpoint, results: &[Result<T, CallFailure>]) -> Option<anyhow::Error> {
    let failed: Vec<&CallFailure> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if failed.is_empty() {
        return None;
    }
    let mut reasons: Vec<(String, usize)> = Vec::new();
    for f in &failed {
        match reasons.iter_mut().find(|(r, _)| *r == f.error) {
            Some((_, n)) => *n += 1,
            None => reasons.push((f.error.clone(), 1)),
        }
    }
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    let list: Vec<String> = reasons.iter().take(3).map(|(r, n)| format!("{n}× {r}")).collect();
    Some(anyhow!(
        "{} of {} calls to llm endpoint `{}` ({}, model `{}`) failed; the {} that succeeded are memoised and a rerun will not repeat them. Reasons: {}",
        failed.len(),
        results.len(),
        endpoint.name,
        endpoint.chat_url(),
        endpoint.model,
        results.len() - failed.len(),
        list.join("; ")
    ))
}

#[cfg(test)]
pub(crate) mod tests;
