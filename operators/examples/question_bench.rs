//! Benchmarks of issue 7 (release build, both cores):
//!
//! ```sh
//! cargo run --release -p fleming-operators --example question_bench -- validate 1000000
//! cargo run --release -p fleming-operators --example question_bench -- validate-near 1000000
//! cargo run --release -p fleming-operators --example question_bench -- sample 100000 200000
//! cargo run --release -p fleming-operators --example question_bench -- anonymise
//! cargo run --release -p fleming-operators --example question_bench -- corpus 1000000 /tmp/corpus.parquet
//! ```
//!
//! The validation corpus is built by perturbing the shared MedQA items (ages, numbers,
//! words swapped, sentences added, options shuffled, some PII planted, ~3 % exact and
//! ~3 % near duplicates); the shared data comes from `FLEMING_SHARED_DATA` (default
//! `../shared/data`). Peak memory is the process's VmHWM.

use std::time::Instant;

use anyhow::{Context, bail};
use fleming_operators::ops::curated;
use fleming_operators::ops::sample::{self, Graph, fixture};
use fleming_operators::ops::validate::{self, Settings, anonymise, format};
use fleming_operators::questions::{self, Question, shared_data_dir};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// The allocator of the `fleming` binary, so that figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

const EXTRA: [&str; 8] = [
    "Her temperature is 37.8°C (100.0°F), pulse is 96/min, and blood pressure is 128/84 mm Hg.",
    "He has a 20-pack-year smoking history and drinks two beers daily.",
    "Physical examination shows mild tenderness in the right upper quadrant.",
    "Laboratory studies show a leukocyte count of 11,200/mm3 and a platelet count of 245,000/mm3.",
    "She was seen by Dr. Alvarez on March 3, 2019 and can be reached at (617) 555-0143.",
    "The patient's MRN is 00482913; his e-mail is j.doe@example.com.",
    "There is no family history of serious illness.",
    "Current medications include lisinopril and atorvastatin.",
];
const SWAPS: [(&str, &str); 6] = [
    ("patient", "individual"),
    ("shows", "reveals"),
    ("most likely", "most probable"),
    ("woman", "female"),
    ("man", "male"),
    ("history", "record"),
];

/// `n` items of MedQA length built by perturbing the shared MedQA test items.
fn corpus(n: usize, seed: u64) -> anyhow::Result<Vec<Question>> {
    let path = shared_data_dir()?.join("benchmarks/medqa-us/phrases_no_exclude_test.jsonl");
    let (base, _) = curated::load("medqa", &path, None, None, None, None, None)?;
    if base.is_empty() {
        bail!("no MedQA items in {}", path.display());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<Question> = Vec::with_capacity(n);
    for i in 0..n {
        let r: f64 = rng.random();
        if r < 0.03 && !out.is_empty() {
            // Exact duplicate (another id).
            let mut q = out[rng.random_range(0..out.len())].clone();
            q.id = format!("bench-{i}");
            out.push(q);
            continue;
        }
        if r < 0.06 && !out.is_empty() {
            // Near duplicate: one word changed.
            let mut q = out[rng.random_range(0..out.len())].clone();
            q.id = format!("bench-{i}");
            q.question = q.question.replacen(" the ", " this ", 1);
            out.push(q);
            continue;
        }
        let bi = rng.random_range(0..base.len());
        let mut q = base[bi].clone();
        q.id = format!("bench-{i}");
        // Ages and numbers.
        let age = rng.random_range(18..90);
        q.question = q.question.replacen("-year-old", &format!("-year-old ({age}y)"), 1);
        for (a, b) in SWAPS {
            if rng.random_bool(0.3) {
                q.question = q.question.replacen(a, b, 1);
            }
        }
        // A sentence or two added, a random number marker for uniqueness.
        let k = rng.random_range(0..3);
        for _ in 0..k {
            let s = EXTRA[rng.random_range(0..EXTRA.len())];
            q.question = format!("{s} {}", q.question);
        }
        q.question = format!("{} (Case {}.)", q.question, rng.random_range(0..1_000_000_000u64));
        q.options.shuffle(&mut rng);
        for (j, c) in q.options.iter_mut().enumerate() {
            c.label = questions::label(j);
        }
        // Keep the answer pointing at the right text after the shuffle.
        if let Some(t) = base[bi].option_text(&base[bi].answer)
            && let Some(c) = q.options.iter().find(|c| c.text == t)
        {
            q.answer = c.label.clone();
        }
        if rng.random_bool(0.01) {
            q.options[0].text = q.options[1].text.clone(); // a format reject
        }
        out.push(q);
    }
    Ok(out)
}

fn mean_chars(items: &[Question]) -> f64 {
    items
        .iter()
        .map(|q| q.question.chars().count() + q.options.iter().map(|c| c.text.chars().count() + 3).sum::<usize>())
        .sum::<usize>() as f64
        / items.len().max(1) as f64
}

fn bench_validate(n: usize, near: bool) -> anyhow::Result<()> {
    let t = Instant::now();
    let items = corpus(n, 1)?;
    let build = t.elapsed();
    let mc = mean_chars(&items);
    let s = Settings {
        limits: format::Limits { min_options: 2, max_options: 10, min_question_chars: 10 },
        kinds: anonymise::Kind::ALL.to_vec(),
        dedup: if near { "near".into() } else { "exact".into() },
        near_threshold: 0.8,
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let t = Instant::now();
    let out = validate::clean(items, &s, threads)?;
    let secs = t.elapsed().as_secs_f64();
    let mut by_step = std::collections::BTreeMap::<&str, usize>::new();
    for (_, step, _) in &out.rejected {
        *by_step.entry(step).or_default() += 1;
    }
    println!(
        "{}",
        json!({
            "bench": if near { "validate: format + exact + near dedup (MinHash/LSH) + anonymise" } else { "validate: format + exact dedup + anonymise" },
            "items": n, "mean_chars": mc.round(), "threads": threads,
            "seconds": (secs * 1000.0).round() / 1000.0, "items_per_s": (n as f64 / secs).round(),
            "kept": out.kept.len(), "rejected_by_step": by_step, "anonymised": out.anonymised,
            "corpus_build_s": build.as_secs_f64().round(), "peak_rss_mib": peak_mib().round(),
        })
    );
    Ok(())
}

fn bench_sample(entities: usize, n: usize) -> anyhow::Result<()> {
    let (ents, rels) = fixture::graph(entities, 1)?;
    let t = Instant::now();
    let (g, _) = Graph::build(&ents, &rels, 0.0)?;
    let index_s = t.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    for (name, params) in [
        ("walks of 2-3 hops", json!({"questions": n, "seed": 1, "hops": [2, 3], "long_tail": 0.7})),
        (
            "pattern symptom-disease-test",
            json!({"questions": n, "seed": 1, "long_tail": 0.7, "patterns": [{"name": "dx", "path": ["symptom", "disease", "test"], "predicates": ["presents_symptom", "diagnosed_by"], "mask": 1}]}),
        ),
    ] {
        let t = Instant::now();
        let (qs, m) = sample::generate(&g, &params, threads)?;
        let secs = t.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let table = questions::to_table(&qs)?;
        let to_table_s = t2.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({
                "bench": format!("sample: {name}"), "entities": g.ids.len(), "relations": g.rel_ids.len(), "threads": threads,
                "questions": qs.len(), "seconds": (secs * 1000.0).round() / 1000.0, "questions_per_s": (qs.len() as f64 / secs).round(),
                "table_build_s": (to_table_s * 1000.0).round() / 1000.0, "rows": table.num_rows(), "index_s": (index_s * 1000.0).round() / 1000.0,
                "distractor_tiers": m["distractor_tiers"], "peak_rss_mib": peak_mib().round(),
            })
        );
    }
    Ok(())
}

fn bench_anonymise() {
    let set = anonymise::planted(20_000, 7);
    let s = anonymise::score(&set);
    println!(
        "{}",
        json!({"bench": "anonymisation on a planted set", "sentences": set.len(), "planted": s.planted, "recall": (s.recall * 10000.0).round() / 10000.0, "precision": (s.precision * 10000.0).round() / 10000.0, "false_positives": s.false_positives})
    );
}

fn write_corpus(n: usize, path: &str) -> anyhow::Result<()> {
    let items = corpus(n, 1)?;
    let t = questions::to_table(&items)?;
    let f = std::fs::File::create(path).with_context(|| format!("creating {path}"))?;
    t.write_parquet(f)?;
    println!("{}", json!({"wrote": path, "items": n, "mean_chars": mean_chars(&items).round()}));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("validate") => bench_validate(num(1, 1_000_000), false),
        Some("validate-near") => bench_validate(num(1, 1_000_000), true),
        Some("sample") => bench_sample(num(1, 100_000), num(2, 200_000)),
        Some("anonymise") => {
            bench_anonymise();
            Ok(())
        }
        Some("corpus") => write_corpus(num(1, 1_000_000), args.get(2).map(String::as_str).unwrap_or("corpus.parquet")),
        _ => bail!(
            "usage: question_bench validate|validate-near [N] | sample [ENTITIES] [QUESTIONS] | anonymise | corpus N PATH"
        ),
    }
}
