//! `grpo-stage1` through `fleming run`: a policy trained by `sft`, then GRPO on it in the
//! worker — metrics per step, the stop reason, caching, continuing on more steps, and the
//! plateau stop.

use std::path::Path;
use std::process::Command;

use crate::pipeline::{fleming, stage_metrics};

/// Ten four-option items whose answer is the option named in the stem.
fn write_items(dir: &Path) {
    let mut rows = String::new();
    for i in 0..10 {
        let gold = ["A", "B", "C", "D"][i % 4];
        rows.push_str(&format!(
            "{{\"id\": \"q{i}\", \"question\": \"Item {i}: which option is {gold}?\", \"options\": [{{\"label\": \"A\", \"text\": \"alpha\"}}, {{\"label\": \"B\", \"text\": \"beta\"}}, {{\"label\": \"C\", \"text\": \"gamma\"}}, {{\"label\": \"D\", \"text\": \"delta\"}}], \"answer\": \"{gold}\", \"explanation\": \"The stem names {gold}.\"}}\n"
        ));
    }
    std::fs::write(dir.join("items.jsonl"), rows).unwrap();
}

fn pipeline(rl_params: &str) -> String {
    format!(
        "name: rl\nstages:\n  items: {{ op: load, params: {{ path: items.jsonl }} }}\n  policy:\n    op: sft\n    inputs: {{ examples: items }}\n    params: {{ steps: 20, batch_size: 8, warmup_steps: 2, vocab_size: 300, hidden_size: 32 }}\n  rl:\n    op: grpo-stage1\n    inputs: {{ policy: policy, questions: items }}\n    resources: {{ gpu: 1 }}\n    params: {{ num_generations: 4, prompts_per_step: 2, max_completion_length: 16, learning_rate: 1e-3, {rl_params} }}\n"
    )
}

fn run(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(fleming())
        .current_dir(dir)
        .args(args)
        .env("FLEMING_WORKER", env!("CARGO_BIN_EXE_fleming-worker"))
        .env("FLEMING_GPUS", "none")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}: {log}");
    log
}

#[test]
fn grpo_stage1_trains_reports_every_step_and_continues_on_more_steps() {
    let dir = tempfile::tempdir().unwrap();
    write_items(dir.path());
    std::fs::write(dir.path().join("p.yaml"), pipeline("max_steps: 3, plateau_window: 0")).unwrap();
    run(dir.path(), &["run", "p.yaml"]);
    let m = stage_metrics(dir.path(), "rl", "rl");
    assert_eq!(m["stop_reason"], "max_steps", "{m}");
    assert_eq!(m["steps"], 3, "{m}");
    assert_eq!(m["items_in_tiers"], 10, "items without a tier count as moderate: {m}");
    let q = run(
        dir.path(),
        &[
            "query",
            "p.yaml",
            "select count(*) n, min(reward) >= 0 and max(reward) <= 2 ok, sum(groups) g, max(completion_length_max) l from rl_metrics",
            "--format",
            "json",
        ],
    );
    let row: serde_json::Value = serde_json::from_str(q.lines().next().unwrap()).unwrap();
    assert_eq!(row["n"], 3, "{row}");
    assert_eq!(row["ok"], true, "{row}");
    assert_eq!(row["g"].as_f64(), Some(6.0), "two groups per step: {row}");
    assert!(row["l"].as_f64().is_some_and(|l| l <= 16.0), "{row}");
    let cols = run(dir.path(), &["query", "p.yaml", "select * from rl_metrics limit 1", "--format", "json"]);
    for c in [
        "frac_reward_zero_std",
        "all_correct",
        "all_wrong",
        "entropy",
        "clip_ratio_region",
        "truncated",
        "grad_norm",
        "generation_tokens_per_s",
        "reward_correctness",
        "reward_format",
    ] {
        assert!(cols.contains(&format!("\"{c}\"")), "{c} missing: {cols}");
    }
    // Cached; more steps continue the run.
    assert!(run(dir.path(), &["run", "p.yaml"]).contains("0 ran, 3 cached"));
    std::fs::write(dir.path().join("p.yaml"), pipeline("max_steps: 5, plateau_window: 0")).unwrap();
    let log = run(dir.path(), &["run", "p.yaml"]);
    assert!(log.contains("continuing the previous run at step 3 of 5"), "{log}");
    let q = run(dir.path(), &["query", "p.yaml", "select count(*) n, max(step) s from rl_metrics", "--format", "json"]);
    assert!(q.contains("\"n\":5") && q.contains("\"s\":5"), "{q}");
}

#[test]
fn grpo_stage1_stops_on_a_plateau_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write_items(dir.path());
    // Any share of flat groups, over one step, is a plateau here.
    std::fs::write(dir.path().join("p.yaml"), pipeline("max_steps: 50, plateau_window: 1, plateau_threshold: 0.0"))
        .unwrap();
    run(dir.path(), &["run", "p.yaml"]);
    let m = stage_metrics(dir.path(), "rl", "rl");
    assert_eq!(m["stop_reason"], "plateau", "{m}");
    assert_eq!(m["steps"], 1, "{m}");
}

#[test]
fn mine_hard_keeps_what_the_policy_fails_and_memoises_its_rollouts() {
    let dir = tempfile::tempdir().unwrap();
    write_items(dir.path());
    // A policy trained to answer A to these very prompts: the items whose answer is A
    // (q0, q4, q8) pass, the others fail.
    let items = std::fs::read_to_string(dir.path().join("items.jsonl")).unwrap();
    let rows: String = items
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["answer"] = "A".into();
            v["explanation"] = "It is A.".into();
            format!("{v}\n")
        })
        .collect();
    std::fs::write(dir.path().join("constant.jsonl"), rows).unwrap();
    let yaml = |max_pass_rate: f64| {
        format!(
            "name: mine\nstages:\n  items: {{ op: load, params: {{ path: items.jsonl }} }}\n  examples: {{ op: load, params: {{ path: constant.jsonl }} }}\n  policy:\n    op: sft\n    inputs: {{ examples: examples }}\n    params: {{ steps: 80, batch_size: 10, warmup_steps: 2, vocab_size: 300, hidden_size: 32 }}\n  hard:\n    op: mine-hard\n    inputs: {{ policy: policy, questions: items }}\n    params: {{ rollouts: 2, temperature: 0.0, max_new_tokens: 24, max_pass_rate: {max_pass_rate} }}\n  rl2:\n    op: grpo-stage2\n    inputs: {{ policy: policy, hard: hard.hard, questions: items }}\n    params: {{ max_steps: 2, remine_every: 1, rollouts: 2, max_pass_rate: 0.25, temperature: 0.0, num_generations: 2, prompts_per_step: 2, max_completion_length: 24 }}\n"
        )
    };
    std::fs::write(dir.path().join("p.yaml"), yaml(0.25)).unwrap();
    run(dir.path(), &["run", "p.yaml"]);
    let m = stage_metrics(dir.path(), "mine", "hard");
    assert_eq!(m["correct_2"], 3, "q0, q4 and q8 answered A twice: {m}");
    assert_eq!(m["correct_0"], 7, "{m}");
    assert_eq!(m["hard"], 7, "{m}");
    assert_eq!(m["memo_misses"], 20, "10 items x 2 rollouts: {m}");
    let q = run(dir.path(), &["query", "p.yaml", "select id from hard_hard order by id", "--format", "csv"]);
    assert_eq!(q.lines().skip(1).collect::<Vec<_>>(), ["q1", "q2", "q3", "q5", "q6", "q7", "q9"], "{q}");
    let q = run(
        dir.path(),
        &[
            "query",
            "p.yaml",
            "select count(*) n from hard_rollouts where parents[1] = item and id like item || '#%'",
            "--format",
            "csv",
        ],
    );
    assert!(q.contains("\n20"), "every rollout names its item: {q}");
    // The threshold is not part of any call: re-mining asks the policy nothing.
    std::fs::write(dir.path().join("p.yaml"), yaml(1.0)).unwrap();
    run(dir.path(), &["run", "p.yaml"]);
    let m = stage_metrics(dir.path(), "mine", "hard");
    assert_eq!((m["memo_misses"].clone(), m["hard"].clone()), (serde_json::json!(0), serde_json::json!(10)), "{m}");
    // Stage 2 starts on all ten and re-mines after its first step at its own bound: the
    // three items the policy answers leave, nothing enters.
    let m = stage_metrics(dir.path(), "mine", "rl2");
    assert_eq!(m["remine_rounds"], 1, "{m}");
    assert_eq!(
        (m["hard_left"].clone(), m["hard_entered"].clone(), m["final_hard_set"].clone()),
        (serde_json::json!(3), serde_json::json!(0), serde_json::json!(7)),
        "{m}"
    );
    let q = run(
        dir.path(),
        &["query", "p.yaml", "select step, hard_set, hard_left from rl2_metrics order by step", "--format", "csv"],
    );
    assert!(q.contains("\n2,7.0,3.0"), "the churn is on the step after the re-mining: {q}");
    // Replay: half the draws from the items outside the hard set (the three solved ones,
    // cycled); the hard set and its churn are the same.
    let with_replay = yaml(1.0).replace("remine_every: 1,", "remine_every: 1, replay: 0.5,");
    std::fs::write(dir.path().join("p.yaml"), &with_replay).unwrap();
    run(dir.path(), &["run", "p.yaml"]);
    let m = stage_metrics(dir.path(), "mine", "rl2");
    assert_eq!(
        (m["replay_draws"].clone(), m["final_hard_set"].clone()),
        (serde_json::json!(7), serde_json::json!(7)),
        "{m}"
    );
    // Replay needs items to replay.
    std::fs::write(
        dir.path().join("p.yaml"),
        with_replay.replace("hard: hard.hard, questions: items }", "hard: hard.hard }"),
    )
    .unwrap();
    let out = Command::new(fleming())
        .current_dir(dir.path())
        .args(["run", "p.yaml"])
        .env("FLEMING_WORKER", env!("CARGO_BIN_EXE_fleming-worker"))
        .env("FLEMING_GPUS", "none")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && log.contains("replay: 0.5 needs the `questions` input"), "{log}");
}

#[test]
fn stage1_mine_hard_stage2_cache_rerun_what_changed_and_trace_a_rollout_to_its_question() {
    let dir = tempfile::tempdir().unwrap();
    write_items(dir.path());
    let yaml = |rl2_lr: &str| {
        format!(
            "name: rl\nstages:\n  items: {{ op: load, params: {{ path: items.jsonl }} }}\n  policy:\n    op: sft\n    inputs: {{ examples: items }}\n    params: {{ steps: 20, batch_size: 8, warmup_steps: 2, vocab_size: 300, hidden_size: 32 }}\n  rl1:\n    op: grpo-stage1\n    inputs: {{ policy: policy, questions: items }}\n    params: {{ max_steps: 2, num_generations: 4, prompts_per_step: 2, max_completion_length: 16, learning_rate: 1e-3, plateau_window: 0 }}\n  mined:\n    op: mine-hard\n    inputs: {{ policy: rl1, questions: items }}\n    params: {{ rollouts: 2, max_new_tokens: 16, max_pass_rate: 1.0 }}\n  rl2:\n    op: grpo-stage2\n    inputs: {{ policy: rl1, hard: mined.hard, questions: items }}\n    params: {{ max_steps: 4, remine_every: 2, rollouts: 2, max_pass_rate: 1.0, num_generations: 4, prompts_per_step: 2, max_completion_length: 16, learning_rate: {rl2_lr} }}\n"
        )
    };
    std::fs::write(dir.path().join("p.yaml"), yaml("1e-3")).unwrap();
    run(dir.path(), &["run", "p.yaml"]);
    let m = stage_metrics(dir.path(), "rl", "rl2");
    // Every item is hard at a pass-rate bound of 1: re-mined once (at step 2 of 4), no churn.
    assert_eq!(m["steps"], 4, "{m}");
    assert_eq!(m["remine_rounds"], 1, "{m}");
    assert_eq!(m["final_hard_set"], 10, "{m}");
    assert_eq!(
        (m["hard_entered"].clone(), m["hard_left"].clone()),
        (serde_json::json!(0), serde_json::json!(0)),
        "{m}"
    );
    let q = run(
        dir.path(),
        &["query", "p.yaml", "select step, hard_set from rl2_metrics order by step", "--format", "csv"],
    );
    assert_eq!(q.lines().count(), 5, "a row per step: {q}");
    // Cached; a stage-2 param reruns stage 2 only.
    assert!(run(dir.path(), &["run", "p.yaml"]).contains("0 ran, 5 cached"));
    std::fs::write(dir.path().join("p.yaml"), yaml("2e-3")).unwrap();
    let plan = run(dir.path(), &["run", "p.yaml", "-n"]);
    let would: Vec<&str> = plan.lines().filter(|l| l.contains("] ") && l.contains("would run")).collect();
    assert!(would.len() == 1 && would[0].starts_with("rl2 "), "{plan}");
    // A rollout of the mining leads back to its question.
    let lineage = run(dir.path(), &["lineage", "p.yaml", "mined.rollouts", "--record", "q3#1"]);
    assert!(lineage.contains("q3") && lineage.contains("items"), "{lineage}");
}

#[test]
fn kill_9_of_fleming_run_mid_grpo_resumes_on_the_same_curve() {
    let params = "max_steps: 30, plateau_window: 0, checkpoint_every: 2";
    // The curve of an uninterrupted run.
    let whole = tempfile::tempdir().unwrap();
    write_items(whole.path());
    std::fs::write(whole.path().join("p.yaml"), pipeline(params)).unwrap();
    run(whole.path(), &["run", "p.yaml"]);

    let dir = tempfile::tempdir().unwrap();
    write_items(dir.path());
    std::fs::write(dir.path().join("p.yaml"), pipeline(params)).unwrap();
    let mut child = Command::new(fleming())
        .current_dir(dir.path())
        .args(["run", "p.yaml"])
        .env("FLEMING_WORKER", env!("CARGO_BIN_EXE_fleming-worker"))
        .env("FLEMING_GPUS", "none")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a checkpoint past step 4 of the GRPO stage, then SIGKILL fleming (its
    // worker dies with it: parent-death signal).
    let work = dir.path().join(".fleming/work");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while grpo_checkpoint_step(&work) < 4 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(std::time::Instant::now() < deadline, "no GRPO checkpoint within the deadline");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let log = run(dir.path(), &["run", "p.yaml"]);
    assert!(log.contains("grpo-stage1: resuming at step"), "{log}");
    let m = stage_metrics(dir.path(), "rl", "rl");
    assert!(m["resumed_at_step"].as_u64().is_some_and(|s| (4..30).contains(&s)), "{m}");
    let curve = |d: &Path| {
        run(
            d,
            &[
                "query",
                "p.yaml",
                "select step, loss, reward, grad_norm from rl_metrics order by step",
                "--format",
                "csv",
            ],
        )
    };
    let (resumed, reference) = (curve(dir.path()), curve(whole.path()));
    assert_eq!(resumed.lines().count(), 31, "each step once: {resumed}");
    assert_eq!(resumed, reference, "the resumed run follows the uninterrupted curve");
}

/// The step of the latest checkpoint of the GRPO stage working under `work` (the work
/// directory whose durable curve has rollout metrics; sft checkpoints too), or 0.
fn grpo_checkpoint_step(work: &Path) -> u64 {
    std::fs::read_dir(work)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("checkpoint"))
        .filter(|ck| {
            std::fs::read_to_string(ck.join("metrics.jsonl")).is_ok_and(|t| t.contains("frac_reward_zero_std"))
        })
        .filter_map(|ck| std::fs::read_to_string(ck.join("checkpoints/latest")).ok())
        .filter_map(|s| s.trim().trim_start_matches("step-").parse().ok())
        .max()
        .unwrap_or(0)
}
