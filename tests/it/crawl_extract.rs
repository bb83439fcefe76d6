//! `crawl` and `extract` end to end, from YAML: the shared real export, a generated
//! fixture (relation precision and recall per predicate against the generator's truth; an
//! incremental rerun equal to a fresh run), and a crawl of a local MediaWiki API with
//! faults.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleming_testkit::mediawiki::{FixtureWiki, WikiPage};
use fleming_testkit::{Fault, FaultPlan, Request, TestServer, When};

use crate::support::{Project, jsonl_rows, shared_data, wiki_fixture};

fn triples(path: &std::path::Path) -> BTreeSet<(String, String, String)> {
    jsonl_rows(path)
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (s("subject_name"), s("predicate"), s("object_name"))
        })
        .collect()
}

#[test]
fn the_shared_real_export_from_yaml() {
    let shared = shared_data();
    let p = Project::new();
    p.pipeline(&format!(
        r#"
stages:
  pages:
    op: crawl
    params: {{ dump: {export} }}
  kg:
    op: extract
    inputs: {{ pages: pages }}
    params: {{ lexicon: {kg} }}
  entities:
    op: export
    inputs: {{ table: kg.entities }}
    params: {{ path: out/entities.jsonl }}
  relations:
    op: export
    inputs: {{ table: kg.relations }}
    params: {{ path: out/relations.jsonl }}
"#,
        export = shared.join("wiki/enwiki-20160501-medical-3pages.xml").display(),
        kg = shared.join("kg").display(),
    ));
    let r = p.run_ok(&["-w", "2"]);
    assert!(r.stdout.contains("4 ran"), "{}", r.stdout);
    let rels = triples(&p.path().join("out/relations.jsonl"));
    // Autism's "Management / Medication" section names two antipsychotics.
    for want in [
        ("Autism", "treated_by", "Risperidone"),
        ("Autism", "treated_by", "Aripiprazole"),
        ("Autism", "specialty", "Psychiatry"),
    ] {
        let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
        assert!(rels.contains(&want), "missing {want:?} in {rels:#?}");
    }
    let ents = jsonl_rows(&p.path().join("out/entities.jsonl"));
    let by_name: BTreeMap<&str, &serde_json::Value> =
        ents.iter().map(|e| (e["name"].as_str().unwrap_or(""), e)).collect();
    assert_eq!(by_name["Autism"]["type"], "disease");
    assert_eq!(by_name["Risperidone"]["type"], "drug");
    assert!(
        by_name["Autism"]["description"].as_str().unwrap_or("").starts_with("Autism is a neurodevelopmental disorder")
    );
    // Three long articles link to hundreds of entities (880 with the shared lexicon).
    assert!(ents.len() > 500, "{} entities", ents.len());
    // Cached on a second run.
    let again = p.run_ok(&[]);
    assert!(again.stdout.contains("0 ran"), "{}", again.stdout);
}

/// Precision and recall per predicate on a generated fixture, and an incremental rerun
/// after one page changed that equals a fresh run.
#[test]
fn generated_fixture_precision_recall_and_incremental_rerun() {
    let p = Project::new();
    let fx = wiki_fixture(&p, "fx", 3000);
    let yaml = r#"
stages:
  pages:
    op: crawl
    params: { dump: fx/wiki.xml.bz2 }
  kg:
    op: extract
    inputs: { pages: pages }
    params: { lexicon: fx/lexicon.tsv }
  relations:
    op: export
    inputs: { table: kg.relations }
    params: { path: out/relations.jsonl }
"#;
    p.pipeline(yaml);
    p.run_ok(&["-w", "2"]);
    let truth: BTreeSet<(String, String, String)> = std::fs::read_to_string(fx.join("truth.tsv"))
        .expect("truth")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect();
    let got = triples(&p.path().join("out/relations.jsonl"));
    let preds: BTreeSet<&str> = truth.iter().map(|t| t.1.as_str()).collect();
    assert!(preds.len() >= 8, "{preds:?}");
    println!("predicate                 true  extracted  precision  recall");
    for pred in preds {
        let t: BTreeSet<_> = truth.iter().filter(|x| x.1 == pred).collect();
        let e: BTreeSet<_> = got.iter().filter(|x| x.1 == pred).collect();
        let tp = t.intersection(&e).count() as f64;
        let (precision, recall) = (tp / e.len().max(1) as f64, tp / t.len().max(1) as f64);
        println!("{pred:<24} {:>5} {:>10} {precision:>10.3} {recall:>7.3}", t.len(), e.len());
        assert!(precision >= 0.95 && recall >= 0.95, "{pred}: precision {precision:.3}, recall {recall:.3}");
    }
    // Edit one page of the dump: crawl reruns (reusing unchanged rows), extract updates its
    // previous output, and the result is the bytes a fresh store computes.
    let xml = std::fs::read_to_string(fx.join("wiki.xml")).expect("xml");
    let at = xml.find("== Signs and symptoms ==\n").expect("a symptoms section");
    let edited =
        format!("{}== Signs and symptoms ==\nPatients also report [[Fatigue]].\n{}", &xml[..at], &xml[at + 25..]);
    let mut bz = Vec::new();
    fleming_operators::ops::crawl::dump::write_bz2(edited.as_bytes(), &mut bz).expect("compress");
    std::fs::write(fx.join("wiki.xml.bz2"), &bz).expect("write");
    let r = p.run_ok(&["-w", "2"]);
    assert!(r.line("kg").contains("ran"), "{}", r.stdout);
    let kg = p.manifests_of("kg");
    let last = kg.last().expect("manifest");
    assert_eq!(last["metrics"]["mode"], "incremental", "{last:#}");
    assert_eq!(last["metrics"]["parsed_pages"], 1, "{last:#}");
    let crawl = p.manifests_of("pages");
    assert_eq!(crawl.last().expect("manifest")["metrics"]["reparsed"], 1);
    let incremental = p.output_digest("pipeline", "kg", "entities");
    let incremental_rel = p.output_digest("pipeline", "kg", "relations");
    let fresh = Project::new();
    std::fs::create_dir_all(fresh.path().join("fx")).expect("mkdir");
    std::fs::copy(fx.join("wiki.xml.bz2"), fresh.path().join("fx/wiki.xml.bz2")).expect("copy");
    std::fs::copy(fx.join("lexicon.tsv"), fresh.path().join("fx/lexicon.tsv")).expect("copy");
    fresh.pipeline(yaml);
    fresh.run_ok(&[]);
    assert_eq!(fresh.output_digest("pipeline", "kg", "entities"), incremental);
    assert_eq!(fresh.output_digest("pipeline", "kg", "relations"), incremental_rel);
}

#[test]
fn api_crawl_from_yaml_with_faults() {
    let mut pages = Vec::new();
    for i in 0..6 {
        pages.push(WikiPage::new(
            10 + i,
            &format!("Condition {i}"),
            &format!(
                "{{{{Infobox medical condition\n| name = Condition {i}\n| symptoms = [[Sign {i}]]\n}}}}\n'''Condition {i}''' is a disease.\n== Treatment ==\n[[Remedy {i}]]\n== Differential diagnosis ==\n[[Condition {}]]\n[[Category:Fixture conditions]]",
                (i + 1) % 6
            ),
        ));
        pages.push(WikiPage::new(100 + i, &format!("Sign {i}"), &format!("'''Sign {i}''' is a sign.")));
        pages.push(WikiPage::new(
            200 + i,
            &format!("Remedy {i}"),
            &format!("{{{{Infobox drug}}}}\n'''Remedy {i}''' is a drug."),
        ));
    }
    let wiki = Arc::new(FixtureWiki::new(pages).with_limit(2));
    let w = wiki.clone();
    let plan = FaultPlan::new()
        .add_times(When::Nth(0), Fault::Status(503), 1)
        .add_times(When::Nth(2), Fault::TooManyRequests { retry_after: Some("0".into()) }, 1)
        .add_times(When::Nth(4), Fault::Reset, 1)
        .add_times(When::Nth(6), Fault::Truncate { keep: 10 }, 1);
    let server = TestServer::builder().plan(plan).start(move |r: &Request| w.handle(r)).expect("server");
    let p = Project::new();
    p.write(
        "lexicon.tsv",
        &(0..6)
            .map(|i| format!("Sign {i}\tsymptom\nRemedy {i}\tdrug\nCondition {i}\tdisease\n"))
            .fold("name\ttype\n".to_string(), |a, b| a + &b),
    );
    p.pipeline(&format!(
        r#"
stages:
  pages:
    op: crawl
    params:
      api: {url}
      categories: [Fixture conditions]
      max_depth: 1
      max_pages: 50
      rate_limit: 50
      backoff: 0.01
      user_agent: "fleming-tests/0.1 (https://github.com/fleming-rs/fleming; tests@example.org)"
  kg:
    op: extract
    inputs: {{ pages: pages }}
    params: {{ lexicon: lexicon.tsv }}
  relations:
    op: export
    inputs: {{ table: kg.relations }}
    params: {{ path: out/relations.jsonl }}
"#,
        url = server.url("/w/api.php")
    ));
    p.run_ok(&[]);
    let rels = triples(&p.path().join("out/relations.jsonl"));
    for i in 0..6 {
        for (pr, o) in [
            ("has_symptom", format!("Sign {i}")),
            ("treated_by", format!("Remedy {i}")),
            ("differential_diagnosis", format!("Condition {}", (i + 1) % 6)),
        ] {
            let want = (format!("Condition {i}"), pr.to_string(), o);
            assert!(rels.contains(&want), "missing {want:?} in {rels:#?}");
        }
    }
    // Never fetched twice, except the pages of the response the server truncated (its
    // handler ran, the client got 10 bytes and retried).
    let truncated: BTreeSet<String> = server
        .requests()
        .iter()
        .filter(|r| matches!(r.fault, Some(Fault::Truncate { .. })))
        .flat_map(|r| r.params.iter().filter(|(k, _)| k == "titles").flat_map(|(_, v)| v.split('|')))
        .map(str::to_string)
        .collect();
    assert!(!truncated.is_empty(), "the truncate fault hit no page fetch");
    for (title, n) in wiki.served() {
        let allowed = if truncated.contains(&title) { 2 } else { 1 };
        assert!(n <= allowed, "{title} served {n} times");
    }
    assert!(
        server.requests().iter().all(|r| r.user_agent.as_deref().is_some_and(|u| u.starts_with("fleming-tests/0.1")))
    );
    // The crawl is cached: no request on a second run.
    let before = server.request_count();
    p.run_ok(&[]);
    assert_eq!(server.request_count(), before);
}
