//! `fleming ui`: a local web app over a pipeline's store — the DAG coloured by status (live
//! while a `fleming run` goes on in another terminal), a page per stage, record lineage,
//! training curves and evaluations.
//!
//! Read-only like `fleming status`: every page is computed from a dry run of the executor
//! that writes nothing ([`RunOptions::read_only`](fleming_runtime::executor::RunOptions)),
//! the store's refs, manifests and objects, and the live files `fleming run` keeps
//! ([`fleming_runtime::live`]). Its assets are compiled in: nothing is fetched at run time.
//! It binds 127.0.0.1 unless told otherwise; on any other address every request needs the
//! token (`Authorization: Bearer`, or `?token=` once, which sets a cookie).

mod pages;
mod rows;
mod stage;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use fleming_artifacts::Store;
use fleming_runtime::op::Registry;
use fleming_runtime::spec::Pipeline;
use serde::Deserialize;

use crate::report::{self, PipelineView};

/// How `fleming ui` is started.
pub struct UiOptions {
    /// The pipeline file (re-read when it changes).
    pub pipeline: PathBuf,
    /// The store.
    pub store: Store,
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Token every request must carry (required off loopback).
    pub token: Option<String>,
}

/// A snapshot of the pipeline and its state, shared by the pages for a moment.
pub(crate) struct Snapshot {
    pub pipeline: Pipeline,
    pub view: PipelineView,
}

/// What changes when the store or the file changes: a new snapshot is computed at once
/// then, and otherwise at most every [`MAX_AGE`] (input files edited in place).
#[derive(Clone, PartialEq, Eq)]
struct Signature(Vec<Option<(SystemTime, u64)>>);

const MAX_AGE: Duration = Duration::from_secs(5);
const MIN_AGE: Duration = Duration::from_millis(500);

pub(crate) struct App {
    pipeline_file: PathBuf,
    pub store: Store,
    registry: Arc<dyn Registry>,
    token: Option<String>,
    cache: Mutex<Option<(Instant, Signature, Arc<Snapshot>)>>,
}

impl App {
    fn signature(&self, name: Option<&str>) -> Signature {
        let stamp = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut parts =
            vec![stamp(&self.pipeline_file), stamp(&self.store.dir("runs")), stamp(&self.store.dir("checks"))];
        if let Some(name) = name {
            parts.push(stamp(&self.store.dir("refs").join(fleming_artifacts::fsutil::sanitize(name))));
        }
        Signature(parts)
    }

    /// The current snapshot, recomputed when the store or the file changed.
    pub(crate) fn snapshot(&self) -> anyhow::Result<Arc<Snapshot>> {
        let mut cache = self.cache.lock().map_err(|_| anyhow::anyhow!("a page panicked"))?;
        if let Some((made, sig, snap)) = cache.as_ref() {
            let age = made.elapsed();
            if age < MIN_AGE || (age < MAX_AGE && *sig == self.signature(Some(&snap.pipeline.name))) {
                return Ok(snap.clone());
            }
        }
        // Taken before reading, so a change made while reading brings a new snapshot next time.
        let name = cache.as_ref().map(|c| c.2.pipeline.name.clone());
        let sig_before = self.signature(name.as_deref());
        let pipeline = fleming_runtime::spec::load(&self.pipeline_file, self.registry.as_ref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let view = report::collect(&pipeline, &self.store)?;
        let snap = Arc::new(Snapshot { pipeline, view });
        let sig = if name.as_deref() == Some(snap.pipeline.name.as_str()) {
            sig_before
        } else {
            self.signature(Some(&snap.pipeline.name))
        };
        *cache = Some((Instant::now(), sig, snap.clone()));
        Ok(snap)
    }

    /// The snapshot with the stages running now marked, and their progress.
    pub(crate) fn live_view(&self) -> anyhow::Result<(Arc<Snapshot>, PipelineView)> {
        let snap = self.snapshot()?;
        let mut view = snap.view.clone();
        report::apply_live(&mut view, &fleming_runtime::live::read(&self.store, &snap.pipeline.name));
        Ok((snap, view))
    }
}

/// Serves until Ctrl-C or SIGTERM.
pub fn serve(opts: UiOptions, registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let loopback = opts.addr.ip().is_loopback();
    if !loopback && opts.token.is_none() {
        anyhow::bail!("{} is not a loopback address: give a token (--token or FLEMING_UI_TOKEN)", opts.addr.ip());
    }
    let app = Arc::new(App {
        pipeline_file: opts.pipeline,
        store: opts.store,
        registry,
        token: opts.token,
        cache: Mutex::new(None),
    });
    // Refuse to start on a pipeline that does not load, with its positioned errors.
    app.snapshot()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(opts.addr).await.with_context(|| format!("binding {}", opts.addr))?;
        let local = listener.local_addr()?;
        let host = match local.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let suffix = app.token.as_ref().map(|t| format!("/?token={t}")).unwrap_or_else(|| "/".into());
        // The first line is the address, for scripts (and tests) that start it on port 0.
        println!("fleming ui: http://{host}:{}{suffix}", local.port());
        let router = router(app);
        axum::serve(listener, router).with_graceful_shutdown(shutdown()).await.context("serving")
    })
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(dag_page))
        .route("/api/status", get(api_status))
        .route("/stage/{name}", get(stage_page))
        .route("/lineage", get(lineage_page))
        .route("/curves", get(curves_page))
        .route("/evaluation", get(evaluation_page))
        .route("/report.html", get(report_file))
        .route("/assets/app.js", get(app_js))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}

const TOKEN_COOKIE: &str = "fleming_ui_token";

/// Off loopback, every request must carry the token; `?token=` sets it as a cookie.
async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(token) = app.token.clone() else {
        // On loopback without a token, only pages asked for by a loopback name: a web page
        // elsewhere that rebinds its own host name to 127.0.0.1 must not read the store.
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !loopback_host(host) {
            return (StatusCode::FORBIDDEN, "fleming ui answers to 127.0.0.1, localhost or [::1] only\n")
                .into_response();
        }
        return next.run(req).await;
    };
    let same = |given: &str| blake3::hash(given.as_bytes()) == blake3::hash(token.as_bytes());
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim()));
    let cookie = cookie(headers, TOKEN_COOKIE).is_some_and(|t| same(&t));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(percent_decode))
        .is_some_and(|t| same(&t));
    if !(bearer || cookie || query) {
        return (StatusCode::UNAUTHORIZED, "a token is required: open the address `fleming ui` printed\n")
            .into_response();
    }
    let mut resp = next.run(req).await;
    if query
        && !cookie
        && let Ok(v) = HeaderValue::from_str(&format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Whether a `Host` header names the loopback interface (any port).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// `%XX` and `+` decoded; invalid escapes are kept as written.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A page, or the error that kept it from being made.
type PageResult = Result<Html<String>, (StatusCode, Html<String>)>;

/// Runs a page's (blocking: files, SQL) work off the async threads.
async fn blocking(
    app: Arc<App>,
    f: impl FnOnce(&App) -> anyhow::Result<Option<String>> + Send + 'static,
) -> PageResult {
    let out = tokio::task::spawn_blocking(move || f(&app)).await;
    match out {
        Ok(Ok(Some(page))) => Ok(Html(page)),
        Ok(Ok(None)) => Err((StatusCode::NOT_FOUND, Html(pages::error_page("Not found", "No such page.")))),
        Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, Html(pages::error_page("Error", &format!("{e:#}"))))),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, Html(pages::error_page("Error", &e.to_string())))),
    }
}

async fn dag_page(State(app): State<Arc<App>>) -> PageResult {
    blocking(app, |app| {
        let (_, view) = app.live_view()?;
        Ok(Some(pages::dag(&view)))
    })
    .await
}

async fn curves_page(State(app): State<Arc<App>>) -> PageResult {
    blocking(app, |app| {
        let (_, view) = app.live_view()?;
        Ok(Some(pages::curves(&view)))
    })
    .await
}

async fn evaluation_page(State(app): State<Arc<App>>) -> PageResult {
    blocking(app, |app| {
        let (_, view) = app.live_view()?;
        Ok(Some(pages::evaluation(&view)))
    })
    .await
}

/// Query of a stage page: which output to page through, and the page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StageQuery {
    /// Output port.
    pub port: Option<String>,
    /// Page of rows (from 0).
    pub page: Option<usize>,
}

async fn stage_page(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<StageQuery>,
) -> PageResult {
    blocking(app, move |app| {
        let (snap, view) = app.live_view()?;
        stage::page(app, &snap, &view, &name, &q)
    })
    .await
}

/// Query of the lineage page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LineageQuery {
    /// `stage` or `stage.port`.
    pub target: Option<String>,
    /// Record id.
    pub id: Option<String>,
    /// Descendants instead of ancestors.
    pub down: Option<String>,
}

async fn lineage_page(State(app): State<Arc<App>>, Query(q): Query<LineageQuery>) -> PageResult {
    blocking(app, move |app| {
        let (snap, view) = app.live_view()?;
        pages::lineage(app, &snap, &view, &q).map(Some)
    })
    .await
}

async fn report_file(State(app): State<Arc<App>>) -> Response {
    match blocking(app, |app| Ok(Some(report::render(&app.snapshot()?.view)))).await {
        Ok(page) => ([(header::CONTENT_DISPOSITION, "attachment; filename=\"report.html\"")], page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("app.js"))
}

async fn api_status(State(app): State<Arc<App>>) -> Response {
    let out = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let (_, view) = app.live_view()?;
        Ok(pages::status_json(&view))
    })
    .await;
    match out {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"error": format!("{e:#}")})))
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(super::percent_decode("a%20b+c"), "a b c");
        assert_eq!(super::percent_decode("%zz%"), "%zz%");
        assert_eq!(super::percent_decode("%C3%A9"), "é");
        assert_eq!(super::percent_decode("%4"), "%4");
    }

    #[test]
    fn only_loopback_host_names_pass() {
        for ok in ["127.0.0.1:8470", "localhost:1", "[::1]:8470", "127.0.0.1", "localhost"] {
            assert!(super::loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example:8470", "10.0.0.1:8470", "", "[::2]:1", "localhost.evil.example"] {
            assert!(!super::loopback_host(bad), "{bad}");
        }
    }
}
