use std::sync::Arc;

use super::*;
use crate::ops::sample::{Sample, fixture};
use crate::questions::{Choice, from_table, to_table};
use fleming_runtime::Harness;

#[test]
fn parses_judge_answers() {
    assert_eq!(
        parse_tier("Needs knowledge of a rare syndrome. <tier>difficult</tier>"),
        Some(("difficult".into(), "Needs knowledge of a rare syndrome.".into()))
    );
    assert_eq!(parse_tier("basic fact <tier> Easy </tier>").map(|x| x.0), Some("easy".into()));
    assert_eq!(parse_tier("I'd call this moderate.").map(|x| x.0), Some("moderate".into()));
    assert_eq!(parse_tier("<tier>hard</tier>").map(|x| x.0), Some("difficult".into()));
    assert_eq!(parse_tier("no idea"), None);
    // Characters whose lowercase is longer in UTF-8 (İ: 2 bytes, i̇: 3) before the tag.
    assert_eq!(
        parse_tier("İİİ rare İstanbul syndrome <TIER>difficult</TIER>"),
        Some(("difficult".into(), "İİİ rare İstanbul syndrome".into()))
    );
}

proptest::proptest! {
    #[test]
    fn judge_replies_never_panic(parts in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::prelude::any::<String>(),
            proptest::strategy::Just("<tier>".to_string()),
            proptest::strategy::Just("</tier>".to_string()),
            proptest::strategy::Just("İ".to_string()),
            proptest::strategy::Just("ẞ".to_string()),
            proptest::strategy::Just("easy".to_string()),
        ],
        0..10,
    )) {
        let text = parts.concat();
        if let Some((tier, why)) = parse_tier(&text) {
            proptest::prop_assert!(["easy", "moderate", "difficult"].contains(&tier.as_str()));
            proptest::prop_assert!(why.len() <= text.len());
        }
    }
}

#[test]
fn heuristic_labels_every_item_with_evidence() {
    let q = |stem: &str, n: usize| Question {
        id: stem.chars().take(8).collect(),
        question: stem.into(),
        options: (0..n).map(|i| Choice::new(crate::questions::label(i), format!("o{i}"))).collect(),
        answer: "A".into(),
        ..Default::default()
    };
    let long = "word ".repeat(150);
    let t = to_table(&[q("What is the capital?", 4), q(&long, 10)]).unwrap();
    let out = Harness::new(Arc::new(DifficultyLabel)).input("questions", t).param("method", "heuristic").run().unwrap();
    let qs = from_table(out.table("questions").unwrap(), "?").unwrap();
    assert_eq!(qs[0].difficulty.as_deref(), Some("easy"));
    assert_eq!(qs[1].difficulty.as_deref(), Some("difficult"));
    assert!(qs[1].difficulty_evidence.as_deref().unwrap().contains("\"method\":\"heuristic\""));
}

#[test]
fn kg_pass_rate_gives_three_tiers_and_falls_back_for_curated_items() {
    let (ents, rels) = fixture::graph(3000, 8).unwrap();
    let syn = Harness::new(Arc::new(Sample))
        .input("entities", ents.clone())
        .input("relations", rels.clone())
        .params(json!({"questions": 300, "hops": [1, 3], "seed": 5}))
        .run()
        .unwrap();
    let mut items = from_table(syn.table("questions").unwrap(), "?").unwrap();
    items.push(Question {
        id: "cur".into(),
        question: "Which vitamin deficiency causes scurvy?".into(),
        options: vec![Choice::new("A", "C"), Choice::new("B", "D")],
        answer: "A".into(),
        ..Default::default()
    });
    let out = Harness::new(Arc::new(DifficultyLabel))
        .input("questions", to_table(&items).unwrap())
        .input("entities", ents)
        .input("relations", rels)
        .params(json!({"method": "pass_rate", "kg": true, "samples": 8, "knowledge": 0.8}))
        .run()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let qs = from_table(out.table("questions").unwrap(), "?").unwrap();
    let labels = &out.metrics["labels"];
    for t in ["easy", "moderate", "difficult"] {
        assert!(labels[t].as_u64().unwrap_or(0) >= 5, "{labels}");
    }
    assert_eq!(out.metrics["labelled_by_fallback"], json!(1));
    let cur = qs.iter().find(|q| q.id == "cur").unwrap();
    assert!(cur.difficulty_evidence.as_deref().unwrap().contains("\"fallback_from\":\"pass_rate\""));
    let ev: Value = serde_json::from_str(qs[0].difficulty_evidence.as_deref().unwrap()).unwrap();
    assert_eq!(ev["reference"], "kg");
    // Longer paths are harder on average.
    let rate = |h: usize| {
        let v: Vec<f64> = qs
            .iter()
            .filter(|q| q.kg_path.len() / 2 == h)
            .map(|q| {
                serde_json::from_str::<Value>(q.difficulty_evidence.as_deref().unwrap()).unwrap()["pass_rate"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    assert!(rate(1) > rate(3), "1 hop {} vs 3 hops {}", rate(1), rate(3));
}

#[test]
fn parameter_checks() {
    let t = to_table(&[Question {
        id: "a".into(),
        question: "q?".into(),
        options: vec![Choice::new("A", "x")],
        answer: "A".into(),
        ..Default::default()
    }])
    .unwrap();
    let err = Harness::new(Arc::new(DifficultyLabel)).input("questions", t.clone()).run().unwrap_err().to_string();
    assert!(err.contains("needs `llm: <endpoint>`"), "{err}");
    let err = Harness::new(Arc::new(DifficultyLabel))
        .input("questions", t)
        .params(json!({"method": "pass_rate", "kg": true}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs the `entities` and `relations`"), "{err}");
}
