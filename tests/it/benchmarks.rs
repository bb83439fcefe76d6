//! The benchmark pipelines train for half an hour and more, so CI does not run them; their
//! data half takes seconds, and it is what their figures rest on. Here: the ablation's
//! held-out split (`pipelines/ablation.yaml`) has at least 1,000 items, one per
//! (symptom, drug) pair, none shared with training (its checks pass), and the rest of the
//! pipeline plans.

use crate::support::{Project, repo};

#[test]
fn the_ablation_holds_out_a_thousand_items_disjoint_from_training() {
    let p = Project::new();
    let pipeline = repo().join("pipelines/ablation.yaml").display().to_string();
    let store = p.path().join("store").display().to_string();
    let data = p.fleming(&["run", &pipeline, "--store", &store, "--until", "split"]);
    assert_eq!(data.code, 0, "{}\n{}", data.stdout, data.stderr);
    for check in ["no_shared_pair", "no_near_duplicate"] {
        assert!(data.stdout.contains(&format!("✓ check `{check}` passed")), "{}", data.stdout);
    }

    let counts = p.fleming(&[
        "query",
        &pipeline,
        "--store",
        &store,
        "--format",
        "json",
        "select count(*) as n, count(distinct concat(kg_path[1], '/', kg_path[5])) as pairs, \
         (select count(*) from train) as train from heldout",
    ]);
    assert_eq!(counts.code, 0, "{}", counts.stderr);
    let row: serde_json::Value = serde_json::from_str(counts.stdout.trim()).expect("one json row");
    let n = row["n"].as_i64().expect("n");
    assert!(n >= 1000, "{row}");
    assert_eq!(row["pairs"].as_i64(), Some(n), "one held-out item per pair: {row}");
    assert!(row["train"].as_i64().is_some_and(|t| t > n), "{row}");

    // The training half plans: the four rows of Table 2 and the stages between them.
    let plan = p.fleming(&["run", "-n", &pipeline, "--store", &store]);
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    for stage in ["base", "cot", "rl1", "mined", "rl2", "eval"] {
        assert!(
            plan.stdout.lines().any(|l| l.starts_with(&format!("{stage} ")) && l.contains("would run")),
            "{stage}:\n{}",
            plan.stdout
        );
    }
    let text = std::fs::read_to_string(repo().join("pipelines/ablation.yaml")).expect("read");
    assert!(text.contains("models: [base, cot, rl1, rl2]"), "the ablation's rows changed");
}
