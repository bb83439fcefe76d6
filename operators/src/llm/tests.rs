use super::*;

#[test]
fn parses_completions_and_errors() {
    let c = parse_completion(
        r#"{"choices":[{"message":{"role":"assistant","content":"<answer>B</answer>"},"finish_reason":"stop"}]}"#,
    )
    .unwrap();
    assert_eq!(c.content, "<answer>B</answer>");
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    assert!(parse_completion("{\"choices\": [").is_err());
    assert!(
        parse_completion(r#"{"error": {"message": "overloaded"}}"#).unwrap_err().to_string().contains("overloaded")
    );
    assert!(parse_completion(r#"{"choices": []}"#).is_err());
}

#[test]
fn retry_after_seconds_and_dates() {
    assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
    assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
    assert_eq!(chrono_like_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
    assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon"), None);
}

fn endpoint() -> Map<String, Value> {
    json!({"v": {"endpoint": "http://127.0.0.1:9/v1", "model": "m", "max_concurrency": 2, "timeout_secs": 1, "max_retries": 0, "params": {"temperature": 0.7, "seed": 10}}})
        .as_object()
        .cloned()
        .unwrap()
}

#[test]
fn memo_key_depends_on_what_determines_the_answer() {
    let c = LlmClient::from_section(&endpoint(), "v").unwrap();
    let memo = RecordMemo::in_memory("t", 1);
    let call = Call { messages: vec![Message::user("q")], params: Map::new(), trial: 0 };
    let k = c.memo_key(&memo, &call);
    assert_eq!(k, c.memo_key(&memo, &call.clone()));
    assert_ne!(k, c.memo_key(&memo, &Call { trial: 1, ..call.clone() }));
    assert_ne!(k, c.memo_key(&memo, &Call { messages: vec![Message::user("q2")], ..call.clone() }));
    let mut p = Map::new();
    p.insert("temperature".into(), json!(0.0));
    assert_ne!(k, c.memo_key(&memo, &Call { params: p, ..call.clone() }));
    // The seed of trial t is seed + t.
    assert_eq!(c.inner.request_params(&Call { trial: 3, ..call.clone() })["seed"], json!(13));
}

#[test]
fn missing_key_variable_and_endpoint_are_clear() {
    let mut s = endpoint();
    s["v"]["api_key_env"] = json!("FLEMING_TEST_SURELY_UNSET_KEY");
    let e = LlmClient::from_section(&s, "v").err().unwrap().to_string();
    assert!(e.contains("FLEMING_TEST_SURELY_UNSET_KEY") && e.contains("not set"), "{e}");
    let e = LlmClient::from_section(&s, "nope").err().unwrap().to_string();
    assert!(e.contains("no endpoint `nope`") && e.contains("v"), "{e}");
}

#[test]
fn unreachable_endpoint_fails_with_a_report_and_memoises_nothing() {
    let c = LlmClient::from_section(&endpoint(), "v").unwrap();
    let memo = RecordMemo::in_memory("t", 1);
    let calls = vec![Call { messages: vec![Message::user("q")], params: Map::new(), trial: 0 }];
    let r = c.run(&calls, &memo, &Progress::silent(), &CancelToken::new());
    let report = failure_report(c.endpoint(), &r).unwrap().to_string();
    assert!(report.contains("1 of 1 calls to llm endpoint `v`"), "{report}");
    assert!(report.contains("cannot connect") || report.contains("request failed"), "{report}");
    assert_eq!(memo.stats().puts, 0);
}

// ---- Against a real server on 127.0.0.1 (the testkit's fault-injecting server). ----

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fleming_testkit::{Fault, FaultPlan, Request, Response, TestServer, When};

/// An OpenAI-compatible chat-completions handler: `answer` maps the last user message to
/// the assistant's text. Wrong paths get 404, bodies that are not chat requests 400.
pub(crate) fn openai(
    answer: impl Fn(&str) -> String + Send + Sync + 'static,
) -> impl Fn(&Request) -> Response + Send + Sync + 'static {
    move |req: &Request| {
        if req.method != "POST" || req.path() != "/v1/chat/completions" {
            return Response::json(404, &json!({"error": {"message": format!("no route {}", req.path())}}));
        }
        let Ok(body) = req.json() else {
            return Response::json(400, &json!({"error": {"message": "body is not JSON"}}));
        };
        let Some(user) = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
            .and_then(|m| m["content"].as_str())
        else {
            return Response::json(400, &json!({"error": {"message": "no user message"}}));
        };
        let text = answer(user);
        Response::json(
            200,
            &json!({
                "id": "chatcmpl-test", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }),
        )
    }
}

/// An `llm:` section with one endpoint `v` at `server`.
pub(crate) fn section(server: &TestServer, extra: Value) -> Map<String, Value> {
    let mut e = json!({"endpoint": server.url("/v1"), "model": "test-model", "max_concurrency": 4, "timeout_secs": 5, "max_retries": 5, "params": {"temperature": 0.7}});
    if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    json!({ "v": e }).as_object().cloned().unwrap_or_default()
}

fn fast(c: LlmClient) -> LlmClient {
    c.with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

fn one(text: &str) -> Vec<Call> {
    vec![Call { messages: vec![Message::system("sys"), Message::user(text)], params: Map::new(), trial: 0 }]
}

#[test]
fn talks_to_an_openai_compatible_server_with_the_key_from_the_environment() {
    let seen = std::sync::Arc::new(Mutex::new(Vec::<(Option<String>, Value)>::new()));
    let s2 = seen.clone();
    let inner = openai(|u| format!("echo: {u} <answer>B</answer>"));
    let server = TestServer::start(move |r: &Request| {
        if let Ok(mut v) = s2.lock() {
            v.push((r.header("authorization").map(str::to_string), r.json().unwrap_or(Value::Null)));
        }
        inner(r)
    })
    .unwrap();
    // SAFETY: a variable only this test reads.
    unsafe { std::env::set_var("FLEMING_TEST_LLM_KEY_1", "sk-test-secret") };
    let c = LlmClient::from_section(&section(&server, json!({"api_key_env": "FLEMING_TEST_LLM_KEY_1"})), "v").unwrap();
    let memo = RecordMemo::in_memory("t", 1);
    let mut calls = one("hello");
    calls[0].params.insert("max_tokens".into(), json!(64));
    let r = c.run(&calls, &memo, &Progress::silent(), &CancelToken::new());
    let done = r[0].as_ref().unwrap();
    assert_eq!(done.content, "echo: hello <answer>B</answer>");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].0.as_deref(), Some("Bearer sk-test-secret"));
    let body = &seen[0].1;
    assert_eq!(
        (body["model"].as_str(), body["temperature"].as_f64(), body["max_tokens"].as_i64()),
        (Some("test-model"), Some(0.7), Some(64))
    );
    assert_eq!(body["messages"][0]["role"], "system");
    // The key is nowhere in what fleming keeps.
    let key = c.memo_key(&memo, &calls[0]);
    let stored = String::from_utf8(memo.get(&key).unwrap()).unwrap();
    assert!(!stored.contains("sk-test-secret"));
}

#[test]
fn retries_5xx_429_broken_json_resets_and_truncation_then_succeeds() {
    let plan = FaultPlan::new()
        .add(When::Nth(0), Fault::Status(503))
        .add(When::Nth(1), Fault::TooManyRequests { retry_after: Some("1".into()) })
        .add(When::Nth(2), Fault::BrokenJson)
        .add(When::Nth(3), Fault::Reset)
        .add(When::Nth(4), Fault::Truncate { keep: 10 })
        .add(When::Nth(5), Fault::Close);
    let server = TestServer::builder().plan(plan).start(openai(|_| "<answer>A</answer>".into())).unwrap();
    let c = fast(LlmClient::from_section(&section(&server, json!({"max_retries": 6})), "v").unwrap());
    let t = Instant::now();
    let r = c.chat(&one("q")[0]);
    assert_eq!(r.map(|c| c.content).map_err(|e| e.error), Ok("<answer>A</answer>".to_string()));
    assert_eq!(server.request_count(), 7);
    // Retry-After: 1 was respected (the backoff alone is ~50 ms).
    assert!(t.elapsed() >= Duration::from_millis(950), "{:?}", t.elapsed());
}

#[test]
fn gives_up_after_max_retries_with_a_clear_report() {
    let server = TestServer::builder()
        .plan(FaultPlan::new().add(When::Always, Fault::Status(500)))
        .start(openai(|_| String::new()))
        .unwrap();
    let c = fast(LlmClient::from_section(&section(&server, json!({"max_retries": 2})), "v").unwrap());
    let r = c.run(&one("q"), &RecordMemo::in_memory("t", 1), &Progress::silent(), &CancelToken::new());
    assert_eq!(server.request_count(), 3);
    let report = failure_report(c.endpoint(), &r).unwrap().to_string();
    assert!(
        report.contains("1 of 1 calls to llm endpoint `v`")
            && report.contains("HTTP 500")
            && report.contains("gave up after 3 attempts"),
        "{report}"
    );
}

#[test]
fn client_errors_fail_at_once_and_name_the_likely_cause() {
    let server = TestServer::start(openai(|_| String::new())).unwrap();
    let mut s = section(&server, json!({}));
    s["v"]["endpoint"] = json!(server.url("/wrong"));
    let c = fast(LlmClient::from_section(&s, "v").unwrap());
    let e = c.chat(&one("q")[0]).unwrap_err();
    assert_eq!((e.attempts, server.request_count()), (1, 1));
    assert!(e.error.contains("HTTP 404") && e.error.contains("OpenAI-compatible"), "{}", e.error);
    let server = TestServer::start(|_: &Request| Response::json(401, &json!({"error": "bad key"}))).unwrap();
    let c = fast(LlmClient::from_section(&section(&server, json!({})), "v").unwrap());
    let e = c.chat(&one("q")[0]).unwrap_err();
    assert!(e.error.contains("HTTP 401") && e.error.contains("api_key_env"), "{}", e.error);
}

#[test]
fn a_prompt_beyond_the_models_context_is_an_answer_that_stopped_before_it_began() {
    // The refusals of OpenAI, vLLM and llama.cpp; any other 400 stays an error.
    let refusals = [
        json!({"error": {"message": "too long", "code": "context_length_exceeded"}}),
        json!({"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens."}}),
        json!({"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it"}}),
    ];
    for body in refusals {
        let b = body.clone();
        let server = TestServer::start(move |_: &Request| Response::json(400, &b)).unwrap();
        let c = fast(LlmClient::from_section(&section(&server, json!({})), "v").unwrap());
        let done = c.chat(&one("q")[0]).unwrap_or_else(|e| panic!("{body}: {}", e.error));
        assert!(done.truncated() && done.content.is_empty() && done.tokens == Some(0), "{body}");
        assert_eq!(server.request_count(), 1, "never retried");
    }
    let server =
        TestServer::start(|_: &Request| Response::json(400, &json!({"error": {"message": "unknown field `foo`"}})))
            .unwrap();
    let c = fast(LlmClient::from_section(&section(&server, json!({})), "v").unwrap());
    assert!(c.chat(&one("q")[0]).unwrap_err().error.contains("unknown field"));
}

#[test]
fn slow_answers_time_out_and_are_retried() {
    let plan = FaultPlan::new().add_times(When::Always, Fault::Delay(Duration::from_secs(2)), 1);
    let server = TestServer::builder().plan(plan).start(openai(|_| "<answer>C</answer>".into())).unwrap();
    let c = fast(LlmClient::from_section(&section(&server, json!({"timeout_secs": 0.4})), "v").unwrap());
    let t = Instant::now();
    assert_eq!(c.chat(&one("q")[0]).map(|c| c.content).ok().as_deref(), Some("<answer>C</answer>"));
    assert!(t.elapsed() < Duration::from_millis(1900), "{:?}", t.elapsed());
    let plan = FaultPlan::new().add(When::Always, Fault::Delay(Duration::from_secs(2)));
    let server = TestServer::builder().plan(plan).start(openai(|_| String::new())).unwrap();
    let c =
        fast(LlmClient::from_section(&section(&server, json!({"timeout_secs": 0.3, "max_retries": 1})), "v").unwrap());
    let e = c.chat(&one("q")[0]).unwrap_err();
    assert!(e.error.contains("timed out"), "{}", e.error);
}

#[test]
fn concurrency_is_capped() {
    let inflight = std::sync::Arc::new(AtomicUsize::new(0));
    let peak = std::sync::Arc::new(AtomicUsize::new(0));
    let (i2, p2) = (inflight.clone(), peak.clone());
    let inner = openai(|_| "<answer>A</answer>".into());
    let server = TestServer::start(move |r: &Request| {
        let now = i2.fetch_add(1, Ordering::SeqCst) + 1;
        p2.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        i2.fetch_sub(1, Ordering::SeqCst);
        inner(r)
    })
    .unwrap();
    let c = LlmClient::from_section(&section(&server, json!({"max_concurrency": 3})), "v").unwrap();
    let calls: Vec<Call> = (0..24).map(|i| one(&format!("q{i}")).remove(0)).collect();
    let r = c.run(&calls, &RecordMemo::in_memory("t", 1), &Progress::silent(), &CancelToken::new());
    assert!(r.iter().all(|x| x.is_ok()));
    let p = peak.load(Ordering::SeqCst);
    assert!((2..=3).contains(&p), "peak in flight {p}");
}

#[test]
fn memo_on_disk_keeps_every_committed_call_of_a_failed_run() {
    let dir = tempfile::tempdir().unwrap();
    // Calls after the 6th request fail for good (a 400), as if the run died there.
    let server = TestServer::builder()
        .plan(FaultPlan::new().rule(fleming_testkit::FaultRule::new(When::Always, Fault::Status(400)).skip(6)))
        .start(openai(|u| format!("<answer>{}</answer>", if u.len() % 2 == 0 { "A" } else { "B" })))
        .unwrap();
    let c = LlmClient::from_section(&section(&server, json!({"max_concurrency": 1})), "v").unwrap();
    let calls: Vec<Call> = (0..10).map(|i| one(&format!("question {i}")).remove(0)).collect();
    {
        let log = fleming_artifacts::MemoLog::open(dir.path()).unwrap();
        let memo = RecordMemo::on_disk(log, "validate", 1);
        let r = c.run(&calls, &memo, &Progress::silent(), &CancelToken::new());
        assert_eq!(r.iter().filter(|x| x.is_ok()).count(), 6);
        memo.flush().unwrap();
    }
    server.set_plan(FaultPlan::new());
    let before = server.request_count();
    let log = fleming_artifacts::MemoLog::open(dir.path()).unwrap();
    let memo = RecordMemo::on_disk(log, "validate", 1);
    let r = c.run(&calls, &memo, &Progress::silent(), &CancelToken::new());
    assert!(r.iter().all(|x| x.is_ok()));
    assert_eq!(server.request_count() - before, 4, "only the calls that had not succeeded");
    let again = c.run(&calls, &memo, &Progress::silent(), &CancelToken::new());
    assert_eq!(server.request_count() - before, 4, "a rerun makes no call");
    assert_eq!(
        again.iter().map(|x| x.as_ref().map(|c| c.content.clone()).ok()).collect::<Vec<_>>(),
        r.iter().map(|x| x.as_ref().map(|c| c.content.clone()).ok()).collect::<Vec<_>>()
    );
}
