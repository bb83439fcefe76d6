//! `fleming ui` over HTTP: the pages, a run in another process shown live, the token off
//! loopback, and a store left as it was. (The browser drives it against the quickstart's
//! store in the worker's suite: `worker/tests/it/browser.rs`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::support::{Project, graph_boxes, rows_jsonl};

const PIPELINE: &str = r#"
name: live
stages:
  raw: { op: load, params: { path: data/rows.jsonl } }
  slow:
    op: test-slow
    inputs: { table: raw }
    params: { tag: s, delay_ms: 100 }
  after: { op: sql, inputs: { t: slow }, params: { query: "select count(*) as n from t" } }
"#;

/// A running `fleming ui`, stopped when dropped.
struct Ui {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    /// The first line it printed.
    banner: String,
}

impl Ui {
    fn start(p: &Project, extra: &[&str]) -> Ui {
        let mut args = vec!["ui", "pipeline.yaml", "--port", "0"];
        args.extend_from_slice(extra);
        let mut child =
            p.command(&args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start fleming ui");
        let mut banner = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut banner).expect("first line");
        let port = banner
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|hp| hp.rsplit(':').next())
            .unwrap_or_else(|| panic!("no address in {banner:?}"))
            .to_string();
        Ui { child, addr: format!("127.0.0.1:{port}"), banner }
    }

    fn get(&self, path: &str) -> Reply {
        get(&self.addr, path, &[])
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.0 GET (the server closes the connection after the reply).
fn get(addr: &str, path: &str, headers: &[&str]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut req = format!("GET {path} HTTP/1.0\r\n");
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_string(), body: body.to_string() }
}

fn status_of(ui: &Ui) -> serde_json::Value {
    let r = ui.get("/api/status");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("status JSON")
}

fn stage_json<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["stages"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).expect("stage in status")
}

/// Every file under `dir` with its size and modification time.
fn tree(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().expect("mtime")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_ui_shows_a_run_live_serves_every_page_and_never_writes_the_store() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(40));
    p.pipeline(PIPELINE);
    let ui = Ui::start(&p, &[]);
    assert!(ui.banner.starts_with("fleming ui: http://127.0.0.1:"), "{}", ui.banner);
    let page = ui.get("/");
    assert_eq!(page.status, 200);
    assert_eq!(graph_boxes(&page.body).len(), 3);
    assert!(graph_boxes(&page.body).iter().all(|(_, s)| s == "never-ran"), "{:?}", graph_boxes(&page.body));
    assert!(!page.body.contains("https://"), "nothing fetched from the internet");
    // A page of another site whose name was rebound to 127.0.0.1 gets nothing.
    assert_eq!(get(&ui.addr, "/api/status", &["Host: evil.example:80"]).status, 403);

    // A run in another process: `slow` takes 4 s (40 rows × 100 ms) and shows as running,
    // with its progress, while it goes on.
    let mut run =
        p.command(&["run", "pipeline.yaml", "-q"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run");
    let start = Instant::now();
    let live = loop {
        let st = status_of(&ui);
        let slow = stage_json(&st, "slow").clone();
        if slow["status"] == "running" && slow["why"].as_str().is_some_and(|w| w.contains("/40 rows")) {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never shown running: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(stage_json(&live, "after")["status"], "running", "{live}");
    assert!(graph_boxes(&ui.get("/").body).contains(&("slow".into(), "running".into())));
    assert!(run.wait().expect("wait").success());
    let start = Instant::now();
    while !status_of(&ui)["stages"].as_array().is_some_and(|s| s.iter().all(|s| s["status"] == "cached")) {
        assert!(start.elapsed() < Duration::from_secs(30), "the finished run never showed: {}", status_of(&ui));
        std::thread::sleep(Duration::from_millis(100));
    }

    // From here on the UI only reads.
    let before = tree(&p.store());
    let stage = ui.get("/stage/slow");
    assert_eq!(stage.status, 200, "{}", stage.body);
    assert_eq!(stage.body.matches("<tr data-row=").count(), 40, "a page of the output's rows");
    assert!(stage.body.contains("delay_ms"), "its parameters");
    assert_eq!(stage.body.matches("<tr data-run=").count(), 1, "its run history");
    assert!(stage.body.contains("reads from: <a href=\"/stage/raw\""), "its lineage");
    assert_eq!(ui.get("/stage/nope").status, 404);
    let id = "r0007";
    let lineage = ui.get(&format!("/lineage?target=slow&id={id}"));
    assert_eq!(lineage.status, 200);
    assert!(lineage.body.contains("<li data-record=\"r0007\">"), "{}", lineage.body);
    let search = ui.get(&format!("/lineage?id={id}"));
    // An id alone: found in the last stage that holds it (`after` only counts), followed up.
    assert!(search.body.contains("<li data-record=\"r0007\"><a href=\"/stage/slow\""), "{}", search.body);
    assert!(search.body.contains("<li data-record=\"r0007\"><a href=\"/stage/raw\""), "{}", search.body);
    for path in ["/curves", "/evaluation", "/lineage", "/lineage?target=after&down=1", "/assets/app.js"] {
        assert_eq!(ui.get(path).status, 200, "{path}");
    }
    let report = ui.get("/report.html");
    assert!(report.head.to_ascii_lowercase().contains("content-disposition: attachment"), "{}", report.head);
    assert!(report.body.contains("<svg class=\"dag\""));
    assert_eq!(tree(&p.store()), before, "the UI changed the store");
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(3));
    p.pipeline(PIPELINE);
    let ui = Ui::start(&p, &["--bind", "0.0.0.0", "--token", "s3cret"]);
    assert_eq!(get(&ui.addr, "/", &[]).status, 401);
    assert_eq!(get(&ui.addr, "/api/status", &["Authorization: Bearer nope"]).status, 401);
    assert_eq!(get(&ui.addr, "/api/status", &["Authorization: Bearer s3cret"]).status, 200);
    let first = get(&ui.addr, "/?token=s3cret", &[]);
    assert_eq!(first.status, 200);
    let cookie = first
        .head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .expect("the token is kept in a cookie")
        .to_string();
    assert_eq!(get(&ui.addr, "/stage/raw", &[&format!("Cookie: {cookie}")]).status, 200);
    drop(ui);

    // Without a token it makes one, and prints it in the address.
    let ui = Ui::start(&p, &["--bind", "0.0.0.0"]);
    let token = ui.banner.trim().rsplit("?token=").next().unwrap_or_default().to_string();
    assert_eq!(token.len(), 32, "{}", ui.banner);
    assert_eq!(get(&ui.addr, "/", &[]).status, 401);
    assert_eq!(get(&ui.addr, &format!("/?token={token}"), &[]).status, 200);
}

#[test]
fn a_stage_whose_last_run_failed_is_shown_failed_with_its_error() {
    let p = Project::new();
    p.write("data/rows.jsonl", &rows_jsonl(5));
    p.pipeline(&PIPELINE.replace("delay_ms: 100", "fail_at: r0003"));
    assert_eq!(p.fleming(&["run", "pipeline.yaml", "-q"]).code, 1);
    let ui = Ui::start(&p, &[]);
    let st = status_of(&ui);
    let slow = stage_json(&st, "slow");
    assert_eq!(slow["status"], "failed", "{st}");
    assert!(slow["why"].as_str().is_some_and(|w| w.starts_with("its last run failed: ")), "{st}");
    assert_eq!(stage_json(&st, "raw")["status"], "cached");
    assert_eq!(stage_json(&st, "after")["status"], "never-ran");
    let page = ui.get("/stage/slow").body;
    assert!(page.contains("<td>failed: "), "the failed run in the history: {page}");
}
