//! Tests of the server with a raw TCP client, so socket-level faults are observed exactly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;

fn echo() -> impl Handler {
    |req: &Request| {
        Response::json(
            200,
            &serde_json::json!({ "method": req.method, "path": req.path(), "q": req.param("q"), "body": req.body_text() }),
        )
    }
}

/// Sends one request on a fresh connection and reads until the server closes it.
fn raw(server: &TestServer, request: &str) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server.addr())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn get(server: &TestServer, target: &str) -> std::io::Result<String> {
    raw(server, &format!("GET {target} HTTP/1.1\r\nhost: x\r\nuser-agent: testkit-test/1\r\nconnection: close\r\n\r\n"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

#[test]
fn serves_the_handler_and_logs_requests() {
    let server = TestServer::start(echo()).unwrap();
    let r = get(&server, "/w/api.php?q=a%20b+c&x=1").unwrap();
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let v: serde_json::Value = serde_json::from_str(body_of(&r)).unwrap();
    assert_eq!(v["path"], "/w/api.php");
    assert_eq!(v["q"], "a b c");
    let log = server.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].user_agent.as_deref(), Some("testkit-test/1"));
    assert_eq!(log[0].param("x"), Some("1"));
    assert!(log[0].fault.is_none());
}

#[test]
fn keep_alive_and_form_and_chunked_bodies() {
    let server = TestServer::start(echo()).unwrap();
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let form = "q=hello%21&y=2";
    write!(
        s,
        "POST /api HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    write!(s, "POST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.contains("\"q\":\"hello!\""), "{out}");
    assert!(out.contains("\"body\":\"hello world\""), "{out}");
    assert_eq!(server.connection_count(), 1);
    assert_eq!(server.request_count(), 2);
}

#[test]
fn status_and_429_faults_by_rule() {
    let plan = FaultPlan::new()
        .add_times(When::PathStartsWith("/a".into()), Fault::Status(503), 1)
        .add(When::Param("q".into(), "limit".into()), Fault::TooManyRequests { retry_after: Some("2".into()) });
    let server = TestServer::builder().plan(plan).start(echo()).unwrap();
    let r = get(&server, "/a").unwrap();
    assert!(r.starts_with("HTTP/1.1 503 Service Unavailable"), "{r}");
    let r = get(&server, "/a").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "only once: {r}");
    let r = get(&server, "/b?q=limit").unwrap();
    assert!(r.starts_with("HTTP/1.1 429 Too Many Requests"), "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after: 2\r\n"), "{r}");
    assert_eq!(server.fired(), vec![1, 1]);
    let summary = fault_summary(&server.requests());
    assert_eq!(summary.get("ok"), Some(&1));
    assert_eq!(summary.get("status 503"), Some(&1));
}

#[test]
fn skip_and_nth() {
    let plan = FaultPlan::new()
        .rule(FaultRule::new(When::Always, Fault::Status(500)).skip(1).times(1))
        .add(When::Nth(3), Fault::Status(502));
    let server = TestServer::builder().plan(plan).start(echo()).unwrap();
    let codes: Vec<String> = (0..4).map(|_| get(&server, "/").unwrap()[9..12].to_string()).collect();
    assert_eq!(codes, vec!["200", "500", "200", "502"]);
}

#[test]
fn truncated_body_keeps_content_length_and_closes() {
    let plan = FaultPlan::new().add(When::Always, Fault::Truncate { keep: 5 });
    let server = TestServer::builder().plan(plan).start(|_: &Request| Response::text(200, "0123456789")).unwrap();
    let r = get(&server, "/").unwrap();
    assert!(r.contains("content-length: 10\r\n"), "{r}");
    assert_eq!(body_of(&r), "01234");
}

#[test]
fn broken_json_is_not_json() {
    let plan = FaultPlan::new().add(When::Always, Fault::BrokenJson);
    let server = TestServer::builder().plan(plan).start(echo()).unwrap();
    let r = get(&server, "/x").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"));
    assert!(serde_json::from_str::<serde_json::Value>(body_of(&r)).is_err());
}

#[test]
fn close_and_reset() {
    let plan = FaultPlan::new()
        .add(When::PathStartsWith("/close".into()), Fault::Close)
        .add(When::PathStartsWith("/reset".into()), Fault::Reset);
    let server = TestServer::builder().plan(plan).start(echo()).unwrap();
    // Closed: the client reads EOF without a byte.
    assert_eq!(get(&server, "/close").unwrap(), "");
    // Reset: the client's read fails with a reset (or, on some kernels, sees EOF first).
    match raw(&server, "GET /reset HTTP/1.1\r\nhost: x\r\n\r\n") {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(b) => assert!(b.is_empty()),
    }
    // The server keeps serving.
    assert!(get(&server, "/fine").unwrap().starts_with("HTTP/1.1 200"));
}

#[test]
fn delay_and_trickle() {
    let plan = FaultPlan::new()
        .add(When::PathStartsWith("/slow".into()), Fault::Delay(Duration::from_millis(300)))
        .add(When::PathStartsWith("/drip".into()), Fault::Trickle { bytes: 4, every: Duration::from_millis(20) });
    let server = TestServer::builder().plan(plan).start(|_: &Request| Response::text(200, "abcdefghijkl")).unwrap();
    let t = Instant::now();
    assert_eq!(body_of(&get(&server, "/slow").unwrap()), "abcdefghijkl");
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(body_of(&get(&server, "/drip").unwrap()), "abcdefghijkl");
    assert!(t.elapsed() >= Duration::from_millis(60));
}

#[test]
fn server_sent_events_are_chunked() {
    let server = TestServer::start(|_: &Request| {
        Response::sse(vec!["{\"a\":1}".into(), "{\"b\":2}".into()], true, Duration::from_millis(1))
    })
    .unwrap();
    let r = get(&server, "/v1/chat/completions").unwrap();
    assert!(r.contains("transfer-encoding: chunked\r\n"), "{r}");
    assert!(r.contains("data: {\"a\":1}\n\n"), "{r}");
    assert!(r.contains("data: [DONE]\n\n\r\n0\r\n\r\n"), "{r}");
}

#[test]
fn random_faults_are_reproducible() {
    let run = |seed| {
        let plan = FaultPlan::new().random(seed, 0.5, vec![Fault::Status(500), Fault::Status(503)]);
        let server = TestServer::builder().plan(plan).start(echo()).unwrap();
        (0..20).map(|_| get(&server, "/").unwrap()[9..12].to_string()).collect::<Vec<_>>()
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert!(a.iter().any(|c| c == "200") && a.iter().any(|c| c != "200"), "{a:?}");
}

#[test]
fn set_plan_changes_faults_live() {
    let server =
        TestServer::builder().plan(FaultPlan::new().add(When::Always, Fault::Status(500))).start(echo()).unwrap();
    assert!(get(&server, "/").unwrap().starts_with("HTTP/1.1 500"));
    server.set_plan(FaultPlan::new());
    assert!(get(&server, "/").unwrap().starts_with("HTTP/1.1 200"));
}

#[test]
fn garbage_requests_get_400_and_do_not_kill_the_server() {
    let server = TestServer::start(echo()).unwrap();
    let r = raw(&server, "NONSENSE\r\n\r\n").unwrap();
    assert!(String::from_utf8_lossy(&r).starts_with("HTTP/1.1 400"));
    let r = raw(&server, "POST / HTTP/1.1\r\ncontent-length: nope\r\n\r\n").unwrap();
    assert!(String::from_utf8_lossy(&r).starts_with("HTTP/1.1 400"));
    assert!(get(&server, "/").unwrap().starts_with("HTTP/1.1 200"));
}

#[test]
fn percent_coding_round_trips() {
    for s in ["a b", "Category:Rare diseases", "x&y=z", "Ünïcode/ß", "100%"] {
        assert_eq!(percent_decode(&percent_encode(s)), s);
    }
    assert_eq!(percent_decode("%zz%4"), "%zz%4");
}
