//! Test support for fleming: a fault-injecting HTTP/1.1 server.
//!
//! [`TestServer`] listens on `127.0.0.1` on a random port, hands every request to a
//! pluggable [`Handler`] (any `Fn(&Request) -> Response`), and, following a [`FaultPlan`],
//! replaces or damages responses: server errors, `429 Too Many Requests` with
//! `Retry-After`, slow responses, bodies that trickle in, truncated bodies, broken JSON,
//! connections closed without an answer and connection resets (TCP RST).
//!
//! Tests of network clients use it with a handler that plays the remote service: the
//! crawler tests serve a MediaWiki Action API over a fixture wiki, the LLM-client tests an
//! OpenAI-compatible chat-completions endpoint (see [`Response::sse`] for streaming).
//!
//! ```
//! use fleming_testkit::{Fault, FaultPlan, Response, TestServer, When};
//!
//! let server = TestServer::builder()
//!     .plan(FaultPlan::new().add(When::Nth(0), Fault::Status(503)).add(When::PathStartsWith("/slow".into()), Fault::Reset))
//!     .start(|req: &fleming_testkit::Request| Response::json(200, &serde_json::json!({ "path": req.path() })))
//!     .unwrap();
//! let url = server.url("/hello");           // http://127.0.0.1:<port>/hello
//! # let _ = url;
//! // ... run the client under test ...
//! assert!(server.requests().iter().all(|r| r.method == "GET" || r.method == "POST"));
//! ```
//!
//! **Why a hand-written server.** Socket-level faults — a body cut short after a
//! `Content-Length` promised more, a reset in the middle of an exchange, a connection
//! closed before any byte of the answer — cannot be produced through the APIs of the
//! usual server frameworks (hyper, axum), which always finish or cleanly abort a response.
//! So this is a small HTTP/1.1 server over `std::net` with one thread per connection:
//! keep-alive, `Content-Length` and chunked request bodies, `Content-Length` or chunked
//! responses. It is for tests only: no TLS, no pipelining, bounded header size.
//!
//! [`mediawiki::FixtureWiki`] is a ready handler: a MediaWiki Action API over fixture pages.
//!
//! **Fault plans.** A plan is a list of rules `(When, Fault)`, each optionally limited to
//! its first `n` matches ([`FaultPlan::add_times`]) or after skipping matches
//! ([`FaultRule::skip`]); the first rule that fires applies. [`FaultPlan::random`] adds a
//! seeded, reproducible fault rate. The plan can be replaced while the server runs
//! ([`TestServer::set_plan`]). Every request is logged with the fault it got
//! ([`TestServer::requests`]).

/// Headless Chromium for browser tests.
pub mod browser;
/// A real S3-compatible server (moto) for tests of remote stores.
pub mod s3;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// How long an idle keep-alive connection is kept open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP request as the handler sees it.
#[derive(Clone, Debug)]
pub struct Request {
    /// Sequence number of the request on this server, from 0.
    pub seq: u64,
    /// Method (`GET`, `POST`, ...).
    pub method: String,
    /// Request target: path and query string (`/w/api.php?action=query`).
    pub target: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The raw query string (after `?`), or "".
    pub fn query_string(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// The query-string parameters, percent-decoded, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        parse_form(self.query_string())
    }

    /// Query parameters merged with form-encoded body parameters
    /// (`application/x-www-form-urlencoded` POSTs, as the MediaWiki API accepts).
    pub fn params(&self) -> Vec<(String, String)> {
        let mut out = self.query_pairs();
        let form = self.header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if form {
            out.extend(parse_form(&String::from_utf8_lossy(&self.body)));
        }
        out
    }

    /// The first value of a parameter (query string or form body).
    pub fn param(&self, name: &str) -> Option<String> {
        self.params().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// How a response body is sent.
#[derive(Clone, Debug)]
pub enum Body {
    /// All at once, with `Content-Length`.
    Full(Vec<u8>),
    /// With `Transfer-Encoding: chunked`, one chunk at a time, `delay` before each (for
    /// streaming responses such as server-sent events).
    Chunks {
        /// The chunks.
        chunks: Vec<Vec<u8>>,
        /// Pause before each chunk.
        delay: Duration,
    },
}

/// One HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (`Content-Length`, `Transfer-Encoding` and `Connection` are added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
}

impl Response {
    /// A response with a status and an empty body.
    pub fn status(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Body::Full(Vec::new()) }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Response::status(status).header("content-type", "text/plain; charset=utf-8").with_body(text.into().into_bytes())
    }

    /// An `application/json` response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response::status(status).header("content-type", "application/json; charset=utf-8").with_body(value.to_string())
    }

    /// A `text/event-stream` response sent in chunks, one `data: <event>\n\n` per event
    /// (then `data: [DONE]` if `done`), `delay` apart: the shape of a streaming
    /// chat-completions answer.
    pub fn sse(events: Vec<String>, done: bool, delay: Duration) -> Self {
        let mut chunks: Vec<Vec<u8>> = events.into_iter().map(|e| format!("data: {e}\n\n").into_bytes()).collect();
        if done {
            chunks.push(b"data: [DONE]\n\n".to_vec());
        }
        Response {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/event-stream".into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            body: Body::Chunks { chunks, delay },
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the body (sent with `Content-Length`).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Full(body.into());
        self
    }

    /// The whole body's bytes (chunks concatenated).
    pub fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            Body::Full(b) => b.clone(),
            Body::Chunks { chunks, .. } => chunks.concat(),
        }
    }
}

/// Plays the remote service: turns a request into a response. Any
/// `Fn(&Request) -> Response + Send + Sync` is a handler; keep state behind a `Mutex`.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: &Request) -> Response;
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, req: &Request) -> Response {
        self(req)
    }
}

/// What goes wrong with a response.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this status (e.g. 500, 502, 503) and a short text body; the handler is
    /// not called.
    Status(u16),
    /// Answer `429 Too Many Requests`, with `Retry-After: <value>` when given (seconds or
    /// an HTTP date); the handler is not called.
    TooManyRequests {
        /// The `Retry-After` header value.
        retry_after: Option<String>,
    },
    /// Wait this long, then answer normally (a slow server; longer than the client's
    /// timeout, a timeout).
    Delay(Duration),
    /// Answer normally but send the body `bytes` at a time with `every` between pieces.
    Trickle {
        /// Bytes per piece.
        bytes: usize,
        /// Pause between pieces.
        every: Duration,
    },
    /// Send the status line, the headers (with the full `Content-Length`) and only the first
    /// `keep` bytes of the body, then close the connection.
    Truncate {
        /// Body bytes sent before closing.
        keep: usize,
    },
    /// Answer with the status and headers of the real response but a body that is not
    /// valid JSON (the real body cut in half, then garbage).
    BrokenJson,
    /// Read the request, then close the connection without sending anything.
    Close,
    /// Read the request, then reset the connection (TCP RST: `SO_LINGER` 0 and close).
    Reset,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status(s) => write!(f, "status {s}"),
            Fault::TooManyRequests { retry_after } => match retry_after {
                Some(r) => write!(f, "429 retry-after {r}"),
                None => write!(f, "429"),
            },
            Fault::Delay(d) => write!(f, "delay {d:?}"),
            Fault::Trickle { bytes, every } => write!(f, "trickle {bytes}B/{every:?}"),
            Fault::Truncate { keep } => write!(f, "truncate after {keep}B"),
            Fault::BrokenJson => write!(f, "broken json"),
            Fault::Close => write!(f, "close"),
            Fault::Reset => write!(f, "reset"),
        }
    }
}

/// Which requests a fault rule matches.
#[derive(Clone)]
pub enum When {
    /// Every request.
    Always,
    /// The request with this sequence number (0 = the first the server receives).
    Nth(u64),
    /// Requests whose path starts with this.
    PathStartsWith(String),
    /// Requests whose target (path and query) contains this.
    TargetContains(String),
    /// Requests having this parameter (query or form body) with this value.
    Param(String, String),
    /// Requests the predicate accepts.
    Predicate(Arc<dyn Fn(&Request) -> bool + Send + Sync>),
}

impl fmt::Debug for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::Always => write!(f, "Always"),
            When::Nth(n) => write!(f, "Nth({n})"),
            When::PathStartsWith(p) => write!(f, "PathStartsWith({p:?})"),
            When::TargetContains(p) => write!(f, "TargetContains({p:?})"),
            When::Param(k, v) => write!(f, "Param({k:?}, {v:?})"),
            When::Predicate(_) => write!(f, "Predicate(..)"),
        }
    }
}

impl When {
    /// A predicate rule.
    pub fn predicate(f: impl Fn(&Request) -> bool + Send + Sync + 'static) -> Self {
        When::Predicate(Arc::new(f))
    }

    fn matches(&self, req: &Request) -> bool {
        match self {
            When::Always => true,
            When::Nth(n) => req.seq == *n,
            When::PathStartsWith(p) => req.path().starts_with(p.as_str()),
            When::TargetContains(s) => req.target.contains(s.as_str()),
            When::Param(k, v) => req.params().iter().any(|(a, b)| a == k && b == v),
            When::Predicate(f) => f(req),
        }
    }
}

/// One rule of a plan.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// Which requests.
    pub when: When,
    /// What happens to them.
    pub fault: Fault,
    /// Matching requests to let through before the rule fires.
    pub skip: u64,
    /// How many times the rule fires (`None`: always).
    pub times: Option<u64>,
    matched: u64,
    fired: u64,
}

impl FaultRule {
    /// A rule that fires on every match.
    pub fn new(when: When, fault: Fault) -> Self {
        FaultRule { when, fault, skip: 0, times: None, matched: 0, fired: 0 }
    }

    /// Fires at most `n` times.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Lets the first `n` matching requests through.
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// How many times it fired so far.
    pub fn fired(&self) -> u64 {
        self.fired
    }

    fn apply(&mut self, req: &Request) -> Option<Fault> {
        if !self.when.matches(req) {
            return None;
        }
        self.matched += 1;
        if self.matched <= self.skip || self.times.is_some_and(|t| self.fired >= t) {
            return None;
        }
        self.fired += 1;
        Some(self.fault.clone())
    }
}

/// Random faults at a fixed rate, reproducible from a seed.
#[derive(Clone, Debug)]
struct RandomFaults {
    rate: f64,
    faults: Vec<Fault>,
    state: u64,
}

impl RandomFaults {
    /// splitmix64: tiny, seedable, good enough to pick faults.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick(&mut self) -> Option<Fault> {
        if self.faults.is_empty() {
            return None;
        }
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        if x >= self.rate {
            return None;
        }
        let i = (self.next() % self.faults.len() as u64) as usize;
        Some(self.faults[i].clone())
    }
}

/// The faults a server injects: rules tried in order, then an optional random rate.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// The rules, tried in order; the first that fires applies.
    pub rules: Vec<FaultRule>,
    random: Option<RandomFaults>,
}

impl FaultPlan {
    /// No faults.
    pub fn new() -> Self {
        FaultPlan::default()
    }

    /// Adds a rule that fires on every matching request.
    pub fn add(mut self, when: When, fault: Fault) -> Self {
        self.rules.push(FaultRule::new(when, fault));
        self
    }

    /// Adds a rule that fires on the first `times` matching requests.
    pub fn add_times(mut self, when: When, fault: Fault, times: u64) -> Self {
        self.rules.push(FaultRule::new(when, fault).times(times));
        self
    }

    /// Adds a rule built with [`FaultRule`]'s methods.
    pub fn rule(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Requests no rule matched get one of `faults` with probability `rate`, drawn from a
    /// generator seeded with `seed` (same seed and request order, same faults).
    pub fn random(mut self, seed: u64, rate: f64, faults: Vec<Fault>) -> Self {
        self.random = Some(RandomFaults { rate, faults, state: seed });
        self
    }

    fn decide(&mut self, req: &Request) -> Option<Fault> {
        for r in &mut self.rules {
            if let Some(f) = r.apply(req) {
                return Some(f);
            }
        }
        self.random.as_mut().and_then(|r| r.pick())
    }
}

/// One request in the server's log.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Sequence number.
    pub seq: u64,
    /// Method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Parameters (query and form body).
    pub params: Vec<(String, String)>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// Milliseconds since the server started, when the request was read.
    pub at_ms: u64,
}

impl Logged {
    /// The first value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct Shared {
    handler: Box<dyn Handler>,
    plan: Mutex<FaultPlan>,
    log: Mutex<Vec<Logged>>,
    seq: AtomicU64,
    stop: AtomicBool,
    started: std::time::Instant,
    connections: AtomicU64,
}

/// Configures a [`TestServer`].
#[derive(Default)]
pub struct Builder {
    plan: FaultPlan,
}

impl Builder {
    /// The fault plan to start with.
    pub fn plan(mut self, plan: FaultPlan) -> Self {
        self.plan = plan;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving with `handler`.
    pub fn start(self, handler: impl Handler) -> io::Result<TestServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            plan: Mutex::new(self.plan),
            log: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            started: std::time::Instant::now(),
            connections: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new().name("testkit-accept".into()).spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                let _ = std::thread::Builder::new()
                    .name("testkit-conn".into())
                    .spawn(move || serve_connection(stream, &s2));
            }
        })?;
        Ok(TestServer { addr, shared, accept: Some(accept) })
    }
}

/// A running server; stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server builder (to set a fault plan).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts a server without faults.
    pub fn start(handler: impl Handler) -> io::Result<TestServer> {
        Builder::default().start(handler)
    }

    /// The bound address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces the fault plan (e.g. [`FaultPlan::new`] to stop injecting faults).
    pub fn set_plan(&self, plan: FaultPlan) {
        if let Ok(mut p) = self.shared.plan.lock() {
            *p = plan;
        }
    }

    /// How many times each rule of the current plan fired, in order.
    pub fn fired(&self) -> Vec<u64> {
        self.shared.plan.lock().map(|p| p.rules.iter().map(|r| r.fired).collect()).unwrap_or_default()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> u64 {
        self.shared.seq.load(Ordering::SeqCst)
    }

    /// Number of TCP connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Forgets the request log (sequence numbers keep counting).
    pub fn clear_log(&self) {
        if let Ok(mut l) = self.shared.log.lock() {
            l.clear();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut out = write_half;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let req = match read_request(&mut reader, shared) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = write_response(&mut out, &Response::text(400, format!("bad request: {e}")), false, None);
                return;
            }
        };
        let close = req.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let fault = shared.plan.lock().ok().and_then(|mut p| p.decide(&req));
        if let Ok(mut log) = shared.log.lock() {
            log.push(Logged {
                seq: req.seq,
                method: req.method.clone(),
                target: req.target.clone(),
                params: req.params(),
                user_agent: req.header("user-agent").map(str::to_string),
                fault: fault.clone(),
                at_ms: shared.started.elapsed().as_millis() as u64,
            });
        }
        let keep_open = match fault {
            None => write_response(&mut out, &shared.handler.handle(&req), !close, None).is_ok() && !close,
            Some(Fault::Status(s)) => {
                let r = Response::text(s, format!("injected fault: status {s}"));
                write_response(&mut out, &r, !close, None).is_ok() && !close
            }
            Some(Fault::TooManyRequests { retry_after }) => {
                let mut r = Response::text(429, "injected fault: too many requests");
                if let Some(v) = retry_after {
                    r = r.header("retry-after", &v);
                }
                write_response(&mut out, &r, !close, None).is_ok() && !close
            }
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                write_response(&mut out, &shared.handler.handle(&req), !close, None).is_ok() && !close
            }
            Some(Fault::Trickle { bytes, every }) => {
                let r = shared.handler.handle(&req);
                write_response(&mut out, &r, !close, Some((bytes.max(1), every))).is_ok() && !close
            }
            Some(Fault::Truncate { keep }) => {
                let r = shared.handler.handle(&req);
                let body = r.body_bytes();
                let head = head_bytes(&r, Some(body.len()), false);
                let _ = out.write_all(&head);
                let _ = out.write_all(&body[..keep.min(body.len())]);
                let _ = out.flush();
                let _ = out.shutdown(Shutdown::Both);
                false
            }
            Some(Fault::BrokenJson) => {
                let r = shared.handler.handle(&req);
                let mut body = r.body_bytes();
                body.truncate(body.len() / 2);
                body.extend_from_slice(b"\x00}{ not json");
                let r = Response { status: r.status, headers: r.headers, body: Body::Full(body) };
                write_response(&mut out, &r, !close, None).is_ok() && !close
            }
            Some(Fault::Close) => {
                let _ = out.shutdown(Shutdown::Both);
                false
            }
            Some(Fault::Reset) => {
                let _ = socket2::SockRef::from(&out).set_linger(Some(Duration::ZERO));
                false
            }
        };
        if !keep_open {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn head_bytes(r: &Response, content_length: Option<usize>, keep_alive: bool) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (k, v) in &r.headers {
        let lk = k.to_ascii_lowercase();
        if lk == "content-length" || lk == "transfer-encoding" || lk == "connection" {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match content_length {
        Some(n) => head.push_str(&format!("content-length: {n}\r\n")),
        None => head.push_str("transfer-encoding: chunked\r\n"),
    }
    head.push_str(if keep_alive { "connection: keep-alive\r\n" } else { "connection: close\r\n" });
    head.push_str("\r\n");
    head.into_bytes()
}

fn write_response(
    out: &mut TcpStream,
    r: &Response,
    keep_alive: bool,
    trickle: Option<(usize, Duration)>,
) -> io::Result<()> {
    match &r.body {
        Body::Full(body) => {
            out.write_all(&head_bytes(r, Some(body.len()), keep_alive))?;
            match trickle {
                None => out.write_all(body)?,
                Some((n, every)) => {
                    for piece in body.chunks(n) {
                        out.flush()?;
                        std::thread::sleep(every);
                        out.write_all(piece)?;
                    }
                }
            }
        }
        Body::Chunks { chunks, delay } => {
            out.write_all(&head_bytes(r, None, keep_alive))?;
            out.flush()?;
            for c in chunks {
                if !delay.is_zero() {
                    std::thread::sleep(*delay);
                }
                if c.is_empty() {
                    continue;
                }
                out.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                out.write_all(c)?;
                out.write_all(b"\r\n")?;
                out.flush()?;
            }
            out.write_all(b"0\r\n\r\n")?;
        }
    }
    out.flush()
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
fn read_request(reader: &mut BufReader<TcpStream>, shared: &Shared) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.by_ref().take((MAX_HEAD + 1) as u64).read_until(b'\n', &mut line);
        let n = match n {
            Ok(n) => n,
            Err(e) if head.is_empty() && matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok(None);
            }
            Err(e) if head.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        };
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside the request head"));
        }
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            continue; // tolerate stray blank lines between requests
        }
        let end = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
        if end {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad request line {request_line:?}")));
    };
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let body = if find("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
        read_chunked(reader)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        if len > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request body too large"));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    } else {
        Vec::new()
    };
    if find("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        // Bodies are read above only after the client sends them; clients that wait for
        // 100-continue fall back to sending after a short delay, which is fine for tests.
    }
    let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
    Ok(Some(Request { seq, method: method.to_string(), target: target.to_string(), headers, body }))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers until the blank line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 || t == "\r\n" || t == "\n" {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// Decodes `application/x-www-form-urlencoded` text (also query strings).
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Percent-decodes (and `+` -> space), lossy on invalid UTF-8.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a string for a URL query component.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Counts of requests by the fault they got (`"ok"` for none), for test reports.
pub fn fault_summary(log: &[Logged]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for l in log {
        *m.entry(l.fault.as_ref().map(|f| f.to_string()).unwrap_or_else(|| "ok".into())).or_insert(0) += 1;
    }
    m
}

pub mod mediawiki;

#[cfg(test)]
mod tests;
