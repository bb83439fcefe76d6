//! `pipelines/fleming-r1.yaml`, the recipe at the paper's scale, validates and plans with
//! its environment variables pointing at small stand-ins (it cannot run here: it needs a
//! 7B student, endpoints and GPUs), and names every variable it is missing.

use crate::support::{Project, repo};

/// The variables the file reads, each pointing at a small stand-in in `p`.
fn stand_ins(p: &Project) -> Vec<(&'static str, String)> {
    // A model directory as the `model` operator checks it (architecture, tokenizer, weights).
    p.write("student/config.json", r#"{"model_type": "qwen2"}"#);
    p.write("student/tokenizer.json", "{}");
    p.write("student/model.safetensors", "stand-in weights");
    let items = repo().join("tests/ops/fixtures/medqa-items.jsonl").display().to_string();
    let mut vars = vec![
        ("STUDENT_DIR", p.path().join("student").display().to_string()),
        ("WIKI_DUMP", repo().join("pipelines/data/wiki/wiki.xml.bz2").display().to_string()),
    ];
    for url in ["TEACHER_URL", "JUDGE_URL"] {
        vars.push((url, "http://127.0.0.1:9/v1".into()));
    }
    for model in ["TEACHER_MODEL", "JUDGE_MODEL"] {
        vars.push((model, "stand-in".into()));
    }
    for file in [
        "MEDQA_TRAIN",
        "MEDMCQA_TRAIN",
        "PUBMEDQA_TRAIN",
        "CMEXAM_TRAIN",
        "MEDQA_TEST",
        "MEDMCQA_DEV",
        "PUBMEDQA_TEST",
        "PUBMEDQA_TEST_ANSWERS",
        "MMLU_PRO_BIOLOGY",
        "MMLU_PRO_HEALTH",
    ] {
        vars.push((file, items.clone()));
    }
    vars
}

#[test]
fn the_paper_scale_pipeline_validates_and_plans_with_stand_ins() {
    let p = Project::new();
    let pipeline = repo().join("pipelines/fleming-r1.yaml").display().to_string();
    let store = p.path().join("store").display().to_string();
    let vars = stand_ins(&p);

    // Without its variables it says which are missing, where.
    let mut cmd = p.command(&["validate", &pipeline]);
    for (var, _) in &vars {
        cmd.env_remove(var);
    }
    let bare = crate::support::Ran::from(cmd.output().expect("run fleming"));
    assert_eq!(bare.code, 2, "{}", bare.stderr);
    for (var, _) in &vars {
        let message = format!(": error: environment variable `{var}` is not set");
        // `FILE:LINE:COLUMN: error: …`
        let positioned = bare.stderr.lines().any(|l| {
            l.split_once("fleming-r1.yaml:")
                .and_then(|(_, rest)| rest.split_once(&message))
                .is_some_and(|(pos, _)| pos.split(':').count() == 2 && pos.split(':').all(|n| n.parse::<u32>().is_ok()))
        });
        assert!(positioned, "{var}: {}", bare.stderr);
    }

    let with = |args: &[&str]| {
        let mut cmd = p.command(args);
        cmd.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
        crate::support::Ran::from(cmd.output().expect("run fleming"))
    };
    let valid = with(&["validate", &pipeline]);
    assert_eq!(valid.code, 0, "{}\n{}", valid.stdout, valid.stderr);
    assert!(valid.stdout.contains("ok (21 stages)"), "{}", valid.stdout);
    let plan = with(&["run", "-n", &pipeline, "--store", &store]);
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains("21 would run, 0 cached"), "{}", plan.stdout);
    // The ten operators of the recipe are all in it, and the four rows of the ablation.
    for op in [
        "[crawl]",
        "[extract]",
        "[sample]",
        "[curated]",
        "[validate]",
        "[difficulty-label]",
        "[distill]",
        "[grpo-stage1]",
        "[mine-hard]",
        "[grpo-stage2]",
        "[evaluate]",
    ] {
        assert!(plan.stdout.contains(op), "{op} missing:\n{}", plan.stdout);
    }
    let text = std::fs::read_to_string(repo().join("pipelines/fleming-r1.yaml")).expect("read");
    assert!(text.contains("models: [student, cot, rl1, rl2]"), "the ablation's rows changed");
}
