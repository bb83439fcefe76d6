//! `fleming-worker serve`: an OpenAI-compatible chat completions server.
//!
//! One generation thread owns the model (libtorch calls stay off the async
//! runtime); HTTP handlers send it jobs and receive tokens over channels. Concurrent
//! requests are batched continuously: a request joins the running batch at the next
//! decode step and leaves it when done ([`fleming_model::Engine`]).
//! Every failure becomes an OpenAI-style JSON error, never a crash.

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleming_model::chat::{Message, render};
use fleming_model::engine::Event as EngineEvent;
use fleming_model::{Engine, Flow, Placement, Qwen2, SamplingParams, TextTokenizer};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// What `serve` needs to start.
pub struct ServeOptions {
    /// Model directory.
    pub model_dir: PathBuf,
    /// Bind address.
    pub host: String,
    /// Port (0: any free one).
    pub port: u16,
    /// Served model name.
    pub name: Option<String>,
    /// Device override (None: automatic).
    pub device: Option<tch::Device>,
    /// Sequences generated together at most (continuous batching).
    pub max_batch: usize,
}

const MAX_N: usize = 16;
const MAX_STOPS: usize = 4;

/// An OpenAI-style error response.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }
    fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, axum::Json(body)).into_response()
    }
}

/// A parsed, validated chat request.
struct ChatRequest {
    prompt: Vec<i64>,
    n: usize,
    params: SamplingParams,
    stops: Vec<String>,
    stream: bool,
}

/// What the generation thread sends back.
enum GenEvent {
    /// New text for choice `index`.
    Delta { index: usize, text: String },
    /// Choice `index` is complete.
    Finish { index: usize, reason: &'static str, tokens: usize },
    /// The whole job failed.
    Error(String),
}

struct Job {
    prompt: Vec<i64>,
    n: usize,
    params: SamplingParams,
    stops: Vec<String>,
    events: mpsc::UnboundedSender<GenEvent>,
}

struct AppState {
    name: String,
    tokenizer: Arc<TextTokenizer>,
    max_context: Option<usize>,
    stop_ids: Vec<i64>,
    jobs: std::sync::Mutex<std_mpsc::Sender<Job>>,
}

/// Loads the model and serves until interrupted.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let dir = opts.model_dir.clone();
    let tokenizer =
        Arc::new(TextTokenizer::from_dir(&dir).with_context(|| format!("loading the tokenizer of {}", dir.display()))?);
    let placement = Placement { device: opts.device, kind: None };
    let model = Qwen2::load(&dir, placement).with_context(|| format!("loading the model in {}", dir.display()))?;
    let name = opts.name.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| "model".into())
    });
    let mut stop_ids = tokenizer.stop_ids();
    stop_ids.extend(model.config.eos_ids());
    stop_ids.sort_unstable();
    stop_ids.dedup();
    let max_context = model.config.max_position_embeddings;
    let (tx, rx) = std_mpsc::channel::<Job>();
    let tk = tokenizer.clone();
    let pad = tokenizer.pad_id();
    let max_batch = opts.max_batch.max(1);
    std::thread::Builder::new()
        .name("generation".into())
        .spawn(move || generation_loop(model, tk, pad, max_batch, rx))?;
    let state =
        Arc::new(AppState { name: name.clone(), tokenizer, max_context, stop_ids, jobs: std::sync::Mutex::new(tx) });
    let app = router(state);
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .await
        .with_context(|| format!("binding {}:{}", opts.host, opts.port))?;
    let addr = listener.local_addr()?;
    // Tests and the runtime read this line to learn the port.
    println!("fleming-worker: serving {name} on http://{addr}/v1");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "unknown endpoint".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("not_found"),
            }
        })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "method not allowed".into(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            }
        })
        .with_state(state)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn list_models(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(
        json!({"object": "list", "data": [{"id": st.name, "object": "model", "created": 0, "owned_by": "fleming"}]}),
    )
    .into_response()
}

fn parse_request(st: &AppState, body: &[u8]) -> Result<ChatRequest, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}"), None))?;
    let obj = v.as_object().ok_or_else(|| ApiError::bad("the body must be a JSON object", None))?;
    match obj.get("model").and_then(|m| m.as_str()) {
        None => return Err(ApiError::bad("'model' is required", Some("model"))),
        Some(m) if m != st.name => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("The model '{m}' does not exist; this server serves '{}'", st.name),
                kind: "invalid_request_error",
                param: Some("model"),
                code: Some("model_not_found"),
            });
        }
        Some(_) => {}
    }
    let msgs = obj
        .get("messages")
        .and_then(|m| m.as_array())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad("'messages' must be a non-empty array", Some("messages")))?;
    let mut messages = vec![];
    for m in msgs {
        let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("");
        if !matches!(role, "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::bad(format!("unsupported message role {role:?}"), Some("messages")));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(|t| t.as_str()), p.get("text").and_then(|t| t.as_str())) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => return Err(ApiError::bad("only text content parts are supported", Some("messages"))),
                    }
                }
                s
            }
            Some(Value::Null) | None if role == "assistant" => String::new(),
            _ => return Err(ApiError::bad("each message needs a string 'content'", Some("messages"))),
        };
        let role = if role == "developer" { "system" } else { role };
        messages.push(Message::new(role, content));
    }
    let number = |key: &'static str| -> Result<Option<f64>, ApiError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| ApiError::bad(format!("'{key}' must be a number"), Some(key)))
            }
        }
    };
    let integer = |key: &'static str| -> Result<Option<i64>, ApiError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_i64().map(Some).ok_or_else(|| ApiError::bad(format!("'{key}' must be an integer"), Some(key)))
            }
        }
    };
    let n = integer("n")?.unwrap_or(1);
    if !(1..=MAX_N as i64).contains(&n) {
        return Err(ApiError::bad(format!("'n' must be between 1 and {MAX_N}"), Some("n")));
    }
    let temperature = number("temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad("'temperature' must be between 0 and 2", Some("temperature")));
    }
    let top_p = number("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad("'top_p' must be in (0, 1]", Some("top_p")));
    }
    let top_k = integer("top_k")?.unwrap_or(0);
    if top_k < 0 {
        return Err(ApiError::bad("'top_k' must be >= 0", Some("top_k")));
    }
    let seed = integer("seed")?
        .map(|s| s as u64)
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        _ => return Err(ApiError::bad("'stream' must be a boolean", Some("stream"))),
    };
    let stops: Vec<String> = match obj.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad("'stop' must be a string or an array of strings", Some("stop")))?,
        _ => return Err(ApiError::bad("'stop' must be a string or an array of strings", Some("stop"))),
    };
    if stops.len() > MAX_STOPS || stops.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad(format!("'stop' takes at most {MAX_STOPS} non-empty strings"), Some("stop")));
    }
    let text = render(&messages, true);
    let prompt = st.tokenizer.encode(&text).map_err(|e| ApiError::internal(e.to_string()))?;
    let room = st.max_context.map(|c| c.saturating_sub(prompt.len()));
    if room == Some(0) {
        // OpenAI's code for it, so clients can tell it from other refusals.
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad(
                format!(
                    "the prompt has {} tokens, the model's context is {}",
                    prompt.len(),
                    st.max_context.unwrap_or(0)
                ),
                Some("messages"),
            )
        });
    }
    let max_tokens = match (integer("max_completion_tokens")?, integer("max_tokens")?) {
        (Some(m), _) | (None, Some(m)) => m,
        (None, None) => room.unwrap_or(1024).min(1024) as i64,
    };
    if max_tokens < 1 {
        return Err(ApiError::bad("'max_tokens' must be at least 1", Some("max_tokens")));
    }
    // Like a completion that reaches `max_tokens`, one that reaches the end of the model's
    // context stops there with finish_reason `length`: an evaluation counts it as truncated
    // instead of losing the item to an error.
    let max_tokens = room.map_or(max_tokens as usize, |room| (max_tokens as usize).min(room));
    let params = SamplingParams {
        temperature,
        top_p,
        top_k: top_k as usize,
        max_new_tokens: max_tokens,
        stop_token_ids: st.stop_ids.clone(),
        seed,
    };
    Ok(ChatRequest { prompt, n: n as usize, params, stops, stream })
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    match chat_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(st: Arc<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req = parse_request(&st, &body)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let prompt_tokens = req.prompt.len();
    let n = req.n;
    let job = Job { prompt: req.prompt, n, params: req.params, stops: req.stops, events: tx };
    st.jobs
        .lock()
        .map_err(|_| ApiError::internal("the generation thread is gone"))?
        .send(job)
        .map_err(|_| ApiError::internal("the generation thread is gone"))?;
    let id = format!("chatcmpl-{:x}", SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    let created = now();
    let model = st.name.clone();
    if req.stream {
        let stream = UnboundedReceiverStream::new(rx);
        let head = (0..n).map(move |i| GenEvent::Delta { index: i, text: String::new() });
        let (id2, model2) = (id.clone(), model.clone());
        let mut started = vec![false; n];
        let events = tokio_stream::iter(head).chain(stream).map(move |ev| {
            let chunk = |choice: Value| {
                json!({"id": id2, "object": "chat.completion.chunk", "created": created, "model": model2, "choices": [choice]})
            };
            let data = match ev {
                GenEvent::Delta { index, text } => {
                    // The first chunk of each choice carries the role, as OpenAI's do.
                    let delta = if started.get(index).copied().unwrap_or(true) {
                        json!({"content": text})
                    } else {
                        if let Some(s) = started.get_mut(index) {
                            *s = true;
                        }
                        json!({"role": "assistant", "content": text})
                    };
                    chunk(json!({"index": index, "delta": delta, "finish_reason": null, "logprobs": null}))
                }
                GenEvent::Finish { index, reason, .. } => {
                    chunk(json!({"index": index, "delta": {}, "finish_reason": reason, "logprobs": null}))
                }
                GenEvent::Error(msg) => json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}}),
            };
            Ok::<Event, std::convert::Infallible>(Event::default().data(data.to_string()))
        });
        let done = tokio_stream::once(Ok(Event::default().data("[DONE]")));
        return Ok(Sse::new(events.chain(done)).keep_alive(KeepAlive::default()).into_response());
    }
    let mut texts = vec![String::new(); n];
    let mut reasons = vec!["length"; n];
    let mut completion_tokens = 0;
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Delta { index, text } => {
                if let Some(t) = texts.get_mut(index) {
                    t.push_str(&text);
                }
            }
            GenEvent::Finish { index, reason, tokens } => {
                if let Some(r) = reasons.get_mut(index) {
                    *r = reason;
                }
                completion_tokens += tokens;
            }
            GenEvent::Error(msg) => return Err(ApiError::internal(msg)),
        }
    }
    let choices: Vec<Value> = texts
        .into_iter()
        .zip(reasons)
        .enumerate()
        .map(|(i, (text, reason))| {
            json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": null})
        })
        .collect();
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response())
}

/// Per-choice text bookkeeping: what was sent, and stop-string handling.
struct ChoiceText {
    tokens: Vec<i64>,
    sent: usize,
    /// A stop string ended it (its text is final).
    done: bool,
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop
/// string: that much text is held back in case the stop string completes.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                hold = hold.max(i);
            }
        }
    }
    hold
}

/// A request being generated: its choices run as sequences of the engine.
struct Running {
    job: Job,
    choices: Vec<ChoiceText>,
    finished: usize,
    /// The client went away: its sequences are stopped.
    disconnected: bool,
}

impl Running {
    /// A new token of choice `i`: stream the text that is certain, watch for stop strings.
    fn on_token(&mut self, tk: &TextTokenizer, i: usize, tok: i64) -> Flow {
        if self.disconnected {
            return Flow::Stop;
        }
        if self.job.params.stop_token_ids.contains(&tok) {
            return Flow::Continue;
        }
        let Some(c) = self.choices.get_mut(i) else { return Flow::Stop };
        c.tokens.push(tok);
        let text = tk.decode(&c.tokens, true).unwrap_or_default();
        let mut stop_at = None;
        for s in &self.job.stops {
            // Search only from where the unsent text begins (minus a stop's length).
            let from = c.sent.saturating_sub(s.len());
            let from = (0..=from).rev().find(|&k| text.is_char_boundary(k)).unwrap_or(0);
            if let Some(p) = text[from..].find(s.as_str()) {
                stop_at = Some(stop_at.map_or(from + p, |q: usize| q.min(from + p)));
            }
        }
        let (end, flow) = match stop_at {
            Some(p) => (p, Flow::Stop),
            // Hold back a possible stop-string prefix and any unfinished UTF-8 sequence.
            None if text.ends_with('\u{FFFD}') => (c.sent, Flow::Continue),
            None => (text.len() - held_back(&text, &self.job.stops), Flow::Continue),
        };
        if end > c.sent && text.is_char_boundary(end) && text.is_char_boundary(c.sent) {
            if self.job.events.send(GenEvent::Delta { index: i, text: text[c.sent..end].to_string() }).is_err() {
                self.disconnected = true;
                return Flow::Stop;
            }
            c.sent = end;
        }
        if flow == Flow::Stop {
            c.done = true;
        }
        flow
    }

    /// Choice `i` left the batch: flush what was held back and say why it ended.
    fn on_finish(&mut self, tk: &TextTokenizer, i: usize, truncated: bool, tokens: usize) {
        self.finished += 1;
        let Some(c) = self.choices.get(i) else { return };
        if !c.done {
            // No stop string completed: the held-back text is part of the answer.
            let text = tk.decode(&c.tokens, true).unwrap_or_default();
            if text.len() > c.sent && text.is_char_boundary(c.sent) {
                let _ = self.job.events.send(GenEvent::Delta { index: i, text: text[c.sent..].to_string() });
            }
        }
        let reason = if truncated { "length" } else { "stop" };
        let _ = self.job.events.send(GenEvent::Finish { index: i, reason, tokens });
    }
}

/// The generation thread: requests join the engine's running batch as they arrive
/// (continuous batching), so concurrent requests share every forward pass.
fn generation_loop(model: Qwen2, tk: Arc<TextTokenizer>, pad: i64, max_batch: usize, jobs: std_mpsc::Receiver<Job>) {
    let mut engine = Engine::new(&model, pad, max_batch);
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut next_job: u64 = 0;
    loop {
        let mut incoming = Vec::new();
        if !engine.has_work() {
            match jobs.recv() {
                Ok(j) => incoming.push(j),
                Err(_) => return,
            }
        }
        while let Ok(j) = jobs.try_recv() {
            incoming.push(j);
        }
        for mut job in incoming {
            let id = next_job;
            next_job += 1;
            let mut added = 0;
            let mut error = None;
            for i in 0..job.n {
                match engine.add(id * MAX_N as u64 + i as u64, job.prompt.clone(), job.params.clone(), i as u64) {
                    Ok(()) => added += 1,
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            let disconnected = match error {
                Some(e) => {
                    let _ = job.events.send(GenEvent::Error(e));
                    // Sequences already queued run to no one: they stop at their first token.
                    job.n = added;
                    true
                }
                None => false,
            };
            if job.n > 0 {
                let choices = (0..job.n).map(|_| ChoiceText { tokens: vec![], sent: 0, done: false }).collect();
                running.insert(id, Running { job, choices, finished: 0, disconnected });
            }
        }
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.step(|ev| match ev {
                EngineEvent::Token { id, token, .. } => {
                    let (job, choice) = (id / MAX_N as u64, (id % MAX_N as u64) as usize);
                    match running.get_mut(&job) {
                        Some(r) => r.on_token(&tk, choice, *token),
                        None => Flow::Stop,
                    }
                }
                EngineEvent::Finished { id, truncated, tokens } => {
                    let (job, choice) = (id / MAX_N as u64, (id % MAX_N as u64) as usize);
                    if let Some(r) = running.get_mut(&job) {
                        r.on_finish(&tk, choice, *truncated, *tokens);
                        if r.finished >= r.job.n {
                            running.remove(&job);
                        }
                    }
                    Flow::Continue
                }
            })
        }));
        let failure = match step {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            // A panic inside libtorch must fail these requests, not the server.
            Err(_) => Some("generation panicked".to_string()),
        };
        if let Some(msg) = failure {
            engine = Engine::new(&model, pad, max_batch);
            for (_, r) in running.drain() {
                let _ = r.job.events.send(GenEvent::Error(msg.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let stops = vec!["</answer>".to_string(), "XY".to_string()];
        assert_eq!(held_back("abc</ans", &stops), 5);
        assert_eq!(held_back("abcX", &stops), 1);
        assert_eq!(held_back("abc", &stops), 0);
    }
}
