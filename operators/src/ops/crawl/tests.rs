//! Tests of `crawl`: dumps (the shared real export, bz2 and multistream, seeded discovery,
//! bad pages) and the Action API against a local fault-injecting server (retries, 429 with
//! Retry-After, maxlag, truncation, resets, timeouts, pages that fail for good, rate limit
//! and concurrency cap, no page fetched twice, resuming after a kill).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array, ListArray, StringArray};
use fleming_artifacts::Table;
use fleming_runtime::Harness;
use fleming_runtime::harness::HarnessOutput;
use fleming_testkit::mediawiki::{FixtureWiki, WikiPage};
use fleming_testkit::{Fault, FaultPlan, FaultRule, Request, Response, TestServer, When};
use serde_json::{Value, json};

use super::*;

fn strings(t: &Table, col: &str) -> Vec<String> {
    let b = t.concat().unwrap();
    let c = b.column_by_name(col).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..c.len()).map(|i| if c.is_null(i) { String::new() } else { c.value(i).to_string() }).collect()
}

fn list(t: &Table, col: &str, row: usize) -> Vec<String> {
    let b = t.concat().unwrap();
    let l = b.column_by_name(col).unwrap().as_any().downcast_ref::<ListArray>().unwrap().value(row);
    let s = l.as_any().downcast_ref::<StringArray>().unwrap();
    (0..s.len()).map(|i| s.value(i).to_string()).collect()
}

fn shared_export() -> std::path::PathBuf {
    crate::ops::extract::tests::shared_data().join("wiki/enwiki-20160501-medical-3pages.xml")
}

fn run_dump(path: &std::path::Path, params: Value) -> HarnessOutput {
    Harness::new(Arc::new(Crawl)).param("dump", path.to_string_lossy().to_string()).params(params).run().unwrap()
}

// ---------------------------------------------------------------------------------------
// Dumps.

#[test]
fn the_shared_real_export_crawls_correctly() {
    let out = run_dump(&shared_export(), json!({}));
    let t = out.table("pages").unwrap();
    assert_eq!(strings(t, "title"), vec!["Abortion", "Anatomy", "Autism"]);
    let b = t.concat().unwrap();
    let ids = b.column_by_name("page_id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!((0..3).map(|i| ids.value(i)).collect::<Vec<_>>(), vec![765, 674, 25]);
    let revs = b.column_by_name("revision_id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(revs.value(2), 717042201);
    assert_eq!(strings(t, "timestamp")[2], "2016-04-25T11:26:03Z");
    assert_eq!(strings(t, "url")[2], "https://en.wikipedia.org/wiki/Autism");
    assert_eq!(strings(t, "id")[2], page_row_id("Autism"));
    let autism = &strings(t, "wikitext")[2];
    assert!(autism.starts_with("{{Hatnote|This article is about the classic autistic disorder"));
    assert!(autism.contains("<ref name=Caronna/>"), "XML entities are decoded");
    assert_eq!(strings(t, "digest")[2], text_digest("Autism", autism));
    assert_eq!(list(t, "categories", 1), vec!["Anatomical terminology", "Anatomy", "Morphology"]);
    let links = list(t, "links", 2);
    assert!(links.contains(&"Asperger syndrome".to_string()) && links.contains(&"Risperidone".to_string()));
    assert!(links.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    assert_eq!(out.table("rejects").unwrap().num_rows(), 0);
    assert_eq!(out.metrics["pages"], json!(3));
}

fn bz2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn bz2_and_multistream_dumps_read_the_same() {
    let xml = std::fs::read(shared_export()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("a.xml.bz2");
    std::fs::write(&single, bz2(&xml)).unwrap();
    // Multistream: several bz2 streams back to back, split inside a page.
    let multi = dir.path().join("b-multistream.xml.bz2");
    let cut = xml.len() / 3;
    let mut m = bz2(&xml[..cut]);
    m.extend(bz2(&xml[cut..2 * cut]));
    m.extend(bz2(&xml[2 * cut..]));
    std::fs::write(&multi, m).unwrap();
    // As Wikipedia writes them: the header, then a page per stream here.
    let wiki = dir.path().join("c-multistream.xml.bz2");
    dump::write_bz2_multistream(&xml, 1, std::fs::File::create(&wiki).unwrap()).unwrap();
    let plain = run_dump(&shared_export(), json!({}));
    // With two threads the multistream files' streams are decompressed on both.
    for (p, threads) in [(&single, 1), (&multi, 1), (&wiki, 1), (&single, 2), (&multi, 2), (&wiki, 2)] {
        let out = Harness::new(Arc::new(Crawl))
            .param("dump", p.to_string_lossy().to_string())
            .threads(threads)
            .run()
            .unwrap();
        assert_eq!(out.digest("pages").unwrap(), plain.digest("pages").unwrap(), "{} -w {threads}", p.display());
    }
}

/// A small MediaWiki export of fixture pages.
fn export(pages: &[(i64, &str, &str)]) -> String {
    let mut x = String::from(
        "<mediawiki xmlns=\"http://www.mediawiki.org/xml/export-0.10/\" version=\"0.10\">\n<siteinfo><sitename>Fixture</sitename><dbname>fixturewiki</dbname><base>https://fixture.wiki/wiki/Main_Page</base></siteinfo>\n",
    );
    for (id, title, text) in pages {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let ns = if title.starts_with("Category:") {
            14
        } else if title.starts_with("Talk:") {
            1
        } else {
            0
        };
        let redirect = crate::ops::extract::wikitext::parse_redirect(text)
            .map(|t| format!("<redirect title=\"{}\" />", esc(&t)))
            .unwrap_or_default();
        x.push_str(&format!(
            "<page><title>{}</title><ns>{ns}</ns><id>{id}</id>{redirect}<revision><id>{}</id><timestamp>2024-01-01T00:00:00Z</timestamp><model>wikitext</model><format>text/x-wiki</format><text xml:space=\"preserve\">{}</text></revision></page>\n",
            esc(title),
            id + 1000,
            esc(text)
        ));
    }
    x.push_str("</mediawiki>\n");
    x
}

/// A fixture wiki: a chain of diseases with symptoms, drugs, redirects, a category, noise.
fn fixture_pages() -> Vec<(i64, String, String)> {
    let mut v: Vec<(i64, String, String)> = Vec::new();
    let mut id = 1;
    let mut add = |title: String, text: String, v: &mut Vec<(i64, String, String)>| {
        v.push((id, title, text));
        id += 1;
    };
    for i in 0..12 {
        let next = (i + 1) % 12;
        add(
            format!("Disease {i}"),
            format!(
                "{{{{Infobox medical condition\n| name = Disease {i}\n| symptoms = [[Symptom {i}]]\n}}}}\n'''Disease {i}''' is a disease.\n== Signs and symptoms ==\n[[Symptom {i}]], [[Symptom {next}]].\n== Treatment ==\n[[Drug {i}]].\n== Differential diagnosis ==\n[[Disease {next}]] and [[Syndrome {i}]].\n== History ==\n[[Some city]].\n[[Category:Rare diseases]]"
            ),
            &mut v,
        );
        add(format!("Symptom {i}"), format!("'''Symptom {i}''' is a symptom of [[Disease {i}]]."), &mut v);
        add(format!("Drug {i}"), format!("{{{{Infobox drug}}}}\n'''Drug {i}''' treats [[Disease {i}]]."), &mut v);
        add(format!("Syndrome {i}"), format!("#REDIRECT [[Disease {next}]]"), &mut v);
    }
    add("Some city".into(), "'''Some city''' is a city.".into(), &mut v);
    add("Talk:Disease 0".into(), "Talk page [[Disease 1]].".into(), &mut v);
    add("Category:Rare diseases".into(), "Rare diseases.".into(), &mut v);
    v
}

#[test]
fn seeded_dump_crawl_follows_links_within_depth_and_budget() {
    let pages = fixture_pages();
    let refs: Vec<(i64, &str, &str)> = pages.iter().map(|(i, t, x)| (*i, t.as_str(), x.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.xml");
    std::fs::write(&path, export(&refs)).unwrap();
    // Depth 1 from Disease 0, breadth-first.
    let out = run_dump(&path, json!({"seeds": ["disease 0"], "max_depth": 1, "strategy": "bfs"}));
    let t = out.table("pages").unwrap();
    let titles = strings(t, "title");
    let redirects = strings(t, "redirect_to");
    let articles: Vec<&str> =
        titles.iter().zip(&redirects).filter(|(_, r)| r.is_empty()).map(|(t, _)| t.as_str()).collect();
    assert_eq!(articles, vec!["Disease 0", "Disease 1", "Drug 0", "Some city", "Symptom 0", "Symptom 1"]);
    // Redirects to kept pages are kept as aliases (Syndrome 0 -> Disease 1, Syndrome 11 -> Disease 0).
    let aliases: Vec<(&str, &str)> =
        titles.iter().zip(&redirects).filter(|(_, r)| !r.is_empty()).map(|(t, r)| (t.as_str(), r.as_str())).collect();
    assert_eq!(aliases, vec![("Syndrome 0", "Disease 1"), ("Syndrome 11", "Disease 0")]);
    let depth = t.concat().unwrap();
    let depth = depth.column_by_name("depth").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(depth.value(titles.iter().position(|x| x == "Disease 0").unwrap()), 0);
    assert_eq!(depth.value(titles.iter().position(|x| x == "Drug 0").unwrap()), 1);
    // A budget, by medical relevance: the city (not medical) is left out first.
    let out = run_dump(&path, json!({"seeds": ["Disease 0"], "max_depth": 3, "max_pages": 5, "strategy": "priority"}));
    let titles = strings(out.table("pages").unwrap(), "title");
    assert!(!titles.contains(&"Some city".to_string()), "{titles:?}");
    assert_eq!(out.metrics["pages"], json!(5));
    // Category seeds.
    let out = run_dump(&path, json!({"categories": ["Category:Rare diseases"], "max_depth": 0}));
    assert_eq!(out.metrics["pages"], json!(12));
    // Non-article namespaces are skipped without seeds too.
    let out = run_dump(&path, json!({}));
    let titles = strings(out.table("pages").unwrap(), "title");
    assert!(!titles.iter().any(|t| t.starts_with("Talk:") || t.starts_with("Category:")));
    assert_eq!(titles.len(), 12 * 4 + 1);
}

#[test]
fn bad_dump_pages_are_rejected_and_broken_files_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.xml");
    let xml = export(&[(1, "Good", "fine"), (2, "Bad id", "x")]).replace("<id>2</id>", "<id>two</id>");
    std::fs::write(&path, xml).unwrap();
    let out = run_dump(&path, json!({}));
    assert_eq!(strings(out.table("pages").unwrap(), "title"), vec!["Good"]);
    let r = out.table("rejects").unwrap();
    assert_eq!(strings(r, "title"), vec!["Bad id"]);
    assert!(strings(r, "reason")[0].contains("page id `two` is not a number"));
    // A truncated file is an error, not a silent partial result.
    let full = export(&[(1, "Good", "fine"), (2, "Other", "x")]);
    std::fs::write(&path, &full[..full.len() - 40]).unwrap();
    let err = Harness::new(Arc::new(Crawl)).param("dump", path.to_string_lossy().to_string()).run().unwrap_err();
    assert!(format!("{err:#}").contains("reading"), "{err:#}");
}

#[test]
fn unchanged_pages_reuse_the_previous_rows() {
    let pages = fixture_pages();
    let refs: Vec<(i64, &str, &str)> = pages.iter().map(|(i, t, x)| (*i, t.as_str(), x.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.xml");
    std::fs::write(&path, export(&refs)).unwrap();
    let first = run_dump(&path, json!({}));
    let mut edited = refs.clone();
    edited[0].2 = "'''Disease 0''' changed. [[Drug 5]]";
    std::fs::write(&path, export(&edited)).unwrap();
    let mut outputs = std::collections::BTreeMap::new();
    outputs.insert("pages".to_string(), first.table("pages").unwrap().clone());
    let again = Harness::new(Arc::new(Crawl))
        .param("dump", path.to_string_lossy().to_string())
        .previous(json!({}), Default::default(), outputs)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(again.metrics["reparsed"], json!(1));
    assert_eq!(again.metrics["changed"], json!(1));
    let fresh = run_dump(&path, json!({}));
    assert_eq!(again.digest("pages").unwrap(), fresh.digest("pages").unwrap());
}

// ---------------------------------------------------------------------------------------
// The Action API.

fn fixture_wiki() -> Arc<FixtureWiki> {
    let pages = fixture_pages().into_iter().map(|(id, t, x)| WikiPage::new(id, &t, &x)).collect();
    Arc::new(FixtureWiki::new(pages).with_limit(3))
}

fn serve(wiki: &Arc<FixtureWiki>, plan: FaultPlan) -> TestServer {
    let w = wiki.clone();
    TestServer::builder().plan(plan).start(move |r: &Request| w.handle(r)).unwrap()
}

fn api_params(server: &TestServer, extra: Value) -> Value {
    let mut p = json!({
        "api": server.url("/w/api.php"),
        "seeds": ["Disease 0"],
        "max_depth": 2,
        "max_pages": 100,
        "wave": 4,
        "rate_limit": 0.0,
        "backoff": 0.005,
        "backoff_max": 0.05,
        "timeout": 2.0,
        "maxlag": 5,
    });
    if let (Some(m), Value::Object(e)) = (p.as_object_mut(), extra) {
        m.extend(e);
    }
    p
}

fn same_pages(a: &HarnessOutput, b: &HarnessOutput) {
    if a.digest("pages").unwrap() != b.digest("pages").unwrap() {
        let show = |o: &HarnessOutput| {
            let t = o.table("pages").unwrap().concat().unwrap();
            let t = t.project(&[2, 4, 7, 8, 9, 12]).unwrap();
            arrow::util::pretty::pretty_format_batches(&[t]).unwrap().to_string()
        };
        panic!(
            "pages differ:\n{}\nexpected:\n{}\nrejects: {:?}",
            show(a),
            show(b),
            strings(a.table("rejects").unwrap(), "reason")
        );
    }
}

fn run_api(server: &TestServer, extra: Value) -> anyhow::Result<HarnessOutput> {
    Harness::new(Arc::new(Crawl)).params(api_params(server, extra)).run()
}

#[test]
fn api_crawl_follows_links_resolves_redirects_and_never_fetches_twice() {
    let wiki = fixture_wiki();
    let server = serve(&wiki, FaultPlan::new());
    let out = run_api(&server, json!({"strategy": "bfs", "max_depth": 1})).unwrap();
    let t = out.table("pages").unwrap();
    let titles = strings(t, "title");
    let redirects = strings(t, "redirect_to");
    let articles: Vec<&str> =
        titles.iter().zip(&redirects).filter(|(_, r)| r.is_empty()).map(|(t, _)| t.as_str()).collect();
    assert_eq!(articles, vec!["Disease 0", "Disease 1", "Drug 0", "Some city", "Symptom 0", "Symptom 1"]);
    let aliases: Vec<(&str, &str)> =
        titles.iter().zip(&redirects).filter(|(_, r)| !r.is_empty()).map(|(t, r)| (t.as_str(), r.as_str())).collect();
    assert_eq!(aliases, vec![("Syndrome 0", "Disease 1"), ("Syndrome 11", "Disease 0")]);
    let i = titles.iter().position(|x| x == "Disease 0").unwrap();
    assert_eq!(list(t, "categories", i), vec!["Rare diseases"]);
    assert_eq!(list(t, "links", i), vec!["Disease 1", "Drug 0", "Some city", "Symptom 0", "Symptom 1", "Syndrome 0"]);
    assert!(strings(t, "wikitext")[i].contains("Infobox medical condition"));
    assert_eq!(strings(t, "url")[i], "https://fixture.wiki/wiki/Disease_0");
    assert!(wiki.served_twice().is_empty(), "fetched twice: {:?}", wiki.served_twice());
    // Every request named us and carried maxlag; links continuation was followed (limit 3).
    let log = server.requests();
    assert!(log.iter().all(|r| r.user_agent.as_deref() == Some(DEFAULT_USER_AGENT)));
    assert!(log.iter().all(|r| r.param("maxlag") == Some("5")));
    assert!(log.iter().any(|r| r.param("plcontinue").is_some()));
    assert_eq!(out.table("rejects").unwrap().num_rows(), 0);
}

#[test]
fn api_crawl_survives_faults_with_the_same_result() {
    let wiki = fixture_wiki();
    let clean = serve(&wiki, FaultPlan::new());
    let expected = run_api(&clean, json!({})).unwrap();
    let wiki = fixture_wiki();
    let plan = FaultPlan::new()
        .add_times(When::Nth(0), Fault::Status(503), 1)
        .add_times(When::Nth(1), Fault::TooManyRequests { retry_after: Some("1".into()) }, 1)
        .add_times(When::Nth(3), Fault::Truncate { keep: 20 }, 1)
        .add_times(When::Nth(5), Fault::BrokenJson, 1)
        .add_times(When::Nth(7), Fault::Reset, 1)
        .add_times(When::Nth(9), Fault::Close, 1)
        .add_times(When::Nth(11), Fault::Delay(Duration::from_millis(2500)), 1)
        .add_times(When::Nth(13), Fault::Status(502), 1)
        .random(7, 0.15, vec![Fault::Status(500), Fault::Reset, Fault::Truncate { keep: 5 }, Fault::BrokenJson]);
    let server = serve(&wiki, plan);
    let t = Instant::now();
    let out = run_api(&server, json!({})).unwrap();
    same_pages(&out, &expected);
    assert_eq!(out.table("rejects").unwrap().num_rows(), 0);
    // The 429's Retry-After (1 s) was honoured.
    let log = server.requests();
    let (i429, _) =
        log.iter().enumerate().find(|(_, r)| matches!(r.fault, Some(Fault::TooManyRequests { .. }))).unwrap();
    assert!(log[i429 + 1].at_ms - log[i429].at_ms >= 950, "retried after {} ms", log[i429 + 1].at_ms - log[i429].at_ms);
    assert!(out.metrics["http_retries"].as_u64().unwrap() >= 8, "{:?}", out.metrics);
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn maxlag_is_waited_out() {
    let wiki = fixture_wiki();
    wiki.set_lag(30);
    let server = serve(&wiki, FaultPlan::new());
    let w2 = wiki.clone();
    // The lag clears after a moment.
    let clear = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        w2.set_lag(0);
    });
    let out = run_api(&server, json!({"max_depth": 0})).unwrap();
    clear.join().unwrap();
    assert_eq!(out.metrics["pages"], json!(1));
    assert!(out.metrics["maxlag_waits"].as_u64().unwrap() >= 1);
}

#[test]
fn pages_that_fail_for_good_are_reported() {
    let wiki = fixture_wiki();
    // Requests about Drug pages always fail.
    let plan = FaultPlan::new()
        .add(When::predicate(|r: &Request| r.param("titles").is_some_and(|t| t.contains("Drug"))), Fault::Status(500));
    let server = serve(&wiki, plan);
    let out = run_api(&server, json!({"max_retries": 2, "wave": 1, "max_depth": 1})).unwrap();
    let r = out.table("rejects").unwrap();
    assert_eq!(strings(r, "title"), vec!["Drug 0"]);
    assert!(strings(r, "reason")[0].contains("HTTP 500 (gave up after 3 attempts)"), "{:?}", strings(r, "reason"));
    let b = r.concat().unwrap();
    assert_eq!(b.column_by_name("attempts").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().value(0), 3);
    // The rest of the crawl went on.
    assert!(strings(out.table("pages").unwrap(), "title").contains(&"Symptom 1".to_string()));
    // A 4xx is not retried.
    let wiki = fixture_wiki();
    let plan = FaultPlan::new().add(When::Always, Fault::Status(403));
    let server = serve(&wiki, plan);
    let err = run_api(&server, json!({})).unwrap_err();
    assert!(format!("{err:#}").contains("HTTP 403"), "{err:#}");
    assert_eq!(server.request_count(), 1);
}

#[test]
fn rate_limit_and_concurrency_cap_hold() {
    let wiki = fixture_wiki();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (w, f, m) = (wiki.clone(), in_flight.clone(), max_seen.clone());
    let server = TestServer::start(move |r: &Request| {
        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        let resp = w.handle(r);
        f.fetch_sub(1, Ordering::SeqCst);
        resp
    })
    .unwrap();
    let t = Instant::now();
    let out = run_api(&server, json!({"rate_limit": 20.0, "concurrency": 2, "wave": 2, "max_depth": 2})).unwrap();
    let n = server.request_count();
    assert!(n >= 6, "{n} requests");
    assert!(t.elapsed().as_secs_f64() >= (n - 1) as f64 / 20.0 * 0.9, "{n} requests in {:?}", t.elapsed());
    assert!(max_seen.load(Ordering::SeqCst) <= 2);
    let log = server.requests();
    for w in log.windows(2) {
        assert!(w[1].at_ms + 5 >= w[0].at_ms + 45, "requests {} ms apart", w[1].at_ms - w[0].at_ms);
    }
    assert!(out.metrics["pages"].as_u64().unwrap() > 3);
}

#[test]
fn category_seeds_follow_continuation() {
    let wiki = fixture_wiki();
    let server = serve(&wiki, FaultPlan::new());
    let out = run_api(&server, json!({"seeds": [], "categories": ["Rare diseases"], "max_depth": 0})).unwrap();
    assert_eq!(out.metrics["pages"], json!(12));
    assert!(server.requests().iter().any(|r| r.param("cmcontinue").is_some()));
}

#[test]
fn a_killed_crawl_resumes_without_refetching() {
    let expected = {
        let wiki = fixture_wiki();
        let server = serve(&wiki, FaultPlan::new());
        run_api(&server, json!({})).unwrap()
    };
    let wiki = fixture_wiki();
    let op = Arc::new(Crawl);
    let memo = Harness::new_memo(op.as_ref());
    // First run: cancelled (Ctrl-C) after a few requests.
    let first = Harness::new(op.clone()).memo(memo.clone());
    let token = first.cancel_token();
    let count = Arc::new(AtomicU64::new(0));
    let (w, c) = (wiki.clone(), count.clone());
    let server = TestServer::start(move |r: &Request| {
        if c.fetch_add(1, Ordering::SeqCst) == 4 {
            token.cancel();
        }
        w.handle(r)
    })
    .unwrap();
    let err = first.params(api_params(&server, json!({}))).run().unwrap_err();
    assert!(format!("{err:#}").to_lowercase().contains("cancel"), "{err:#}");
    let served_before: u64 = wiki.served().values().sum();
    assert!(served_before > 0);
    // Second run, same memo: continues, fetches nothing twice, same result.
    let again = Harness::new(op).memo(memo).params(api_params(&server, json!({}))).run().unwrap();
    same_pages(&again, &expected);
    assert!(wiki.served_twice().is_empty(), "refetched: {:?}", wiki.served_twice());
    assert!(again.metrics["memo_hits"].as_u64().unwrap() >= served_before, "{:?}", again.metrics);
}

#[test]
fn validation_errors() {
    let err = Harness::new(Arc::new(Crawl)).run().unwrap_err();
    assert!(format!("{err:#}").contains("set `dump` (a file) or `api` (a URL)"), "{err:#}");
    let err = Harness::new(Arc::new(Crawl)).param("api", "ftp://x").param("seeds", json!(["A"])).run().unwrap_err();
    assert!(format!("{err:#}").contains("not an http(s) URL"), "{err:#}");
    let err = Harness::new(Arc::new(Crawl)).param("api", "http://127.0.0.1:1/w/api.php").run().unwrap_err();
    assert!(format!("{err:#}").contains("needs `seeds` or `categories`"), "{err:#}");
    let _ = FaultRule::new(When::Always, Fault::Close);
    let _ = Response::status(200);
}

/// The `pages` table is cut into batches by bytes of text (one `Utf8` array holds at most
/// 2 GiB): the rows, their order and the digest are those of one batch.
#[test]
fn pages_table_batches_by_text_bytes() {
    let row = |title: &str, text: &str, links: &[&str]| PageRow {
        id: page_row_id(title),
        page_id: 1,
        title: title.to_string(),
        ns: 0,
        revision_id: None,
        timestamp: None,
        wikitext: text.to_string(),
        categories: vec!["C".to_string()],
        links: links.iter().map(|l| l.to_string()).collect(),
        redirect_to: None,
        url: String::new(),
        digest: text_digest(title, text),
        depth: None,
    };
    let rows = vec![
        row("Delta", "dddd", &[]),
        row("Alpha", "aaaaaaaaaa", &["Beta"]),
        row("Gamma", &"g".repeat(40), &[]),
        row("Beta", "bb", &["Alpha", "Gamma"]),
    ];
    let one = pages_table_in_batches(rows.clone(), usize::MAX).unwrap();
    let cut = pages_table_in_batches(rows, 20).unwrap();
    assert_eq!(one.batches.len(), 1);
    // Alpha (15 bytes) | Beta (2 + 10 + 1) | Delta (4 + 1) | Gamma (41, over the budget: alone).
    let sizes: Vec<usize> = cut.batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(sizes, vec![1, 2, 1]);
    assert_eq!(strings(&cut, "title"), vec!["Alpha", "Beta", "Delta", "Gamma"]);
    assert_eq!(cut.digest().unwrap(), one.digest().unwrap());
    assert_eq!(pages_table_in_batches(Vec::new(), 20).unwrap().num_rows(), 0);
}
