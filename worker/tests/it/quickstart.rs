//! The README's main job, whole: `fleming run pipelines/quickstart.yaml` with the torch
//! worker beside it, as `make quickstart` leaves things. (The core suite runs it without
//! the worker; this one adds the `sft` stage.)

use std::path::PathBuf;
use std::process::Command;

use crate::browser;
use crate::pipeline::fleming;

#[test]
fn the_whole_quickstart_runs_with_the_worker_and_reruns_cached() {
    let repo =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("..");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A copy of the pipeline and its data, to edit a parameter at the end.
    let pipelines = dir.path().join("pipelines");
    copy_dir(&repo.join("pipelines/data"), &pipelines.join("data"));
    let pipeline = pipelines.join("quickstart.yaml");
    std::fs::copy(repo.join("pipelines/quickstart.yaml"), &pipeline).unwrap();
    let run = || {
        let o = Command::new(fleming())
            .args(["run", pipeline.to_str().unwrap(), "--store", store.to_str().unwrap()])
            .env("QUICKSTART_OUT", dir.path().join("out"))
            .env("FLEMING_WORKER", env!("CARGO_BIN_EXE_fleming-worker"))
            .env("FLEMING_GPUS", "none")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        stdout
    };
    let first = run();
    assert!(first.contains(" ran, 0 cached in"), "{first}");
    assert!(first.lines().any(|l| l.starts_with("base ") && l.contains(" ran ")), "{first}");
    // The model is in the store as a Hugging Face directory, trained on the tiered questions.
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("refs/quickstart/base.json")).unwrap()).unwrap();
    let d = r["outputs"]["model"]["digest"].as_str().unwrap();
    let model = store.join("objects").join(&d[..2]).join(format!("{}.tree", &d[2..]));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(model.join(f).is_file(), "{f} missing from {}", model.display());
    }
    let run_id = r["run_id"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("runs").join(format!("{run_id}.json"))).unwrap()).unwrap();
    let m = &manifest["metrics"];
    assert!(m["final_loss"].as_f64().unwrap() < 3.0, "{m}");
    // The evaluation of the four models on the held-out items: every answer is counted
    // under one status, and the numbers add up.
    let query = |sql: &str| -> Vec<serde_json::Value> {
        let o = Command::new(fleming())
            .args(["query", pipeline.to_str().unwrap(), sql, "--format", "json"])
            .args(["--store", store.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // One JSON object per line.
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let heldout = query("select count(*) as n from heldout")[0]["n"].as_i64().unwrap();
    let trained = query("select count(*) as n from train")[0]["n"].as_i64().unwrap();
    assert!(heldout > 0 && trained > heldout, "{trained} training items, {heldout} held out");
    let overlap = query("select count(*) as n from heldout h join train t on h.id = t.id")[0]["n"].as_i64().unwrap();
    assert_eq!(overlap, 0, "no held-out item is trained on");
    let scores = query("select * from eval_scores where tier is null order by model, benchmark");
    assert_eq!(scores.len(), 8, "base, cot, rl1 and rl2, on heldout and on average: {scores:?}");
    for s in &scores {
        let statuses: i64 =
            ["ok", "no_answer", "truncated", "invalid", "several"].iter().map(|k| s[*k].as_i64().unwrap()).sum();
        assert_eq!(s["n"].as_i64(), Some(heldout), "{s}");
        assert_eq!(statuses, heldout, "every answer has one status: {s}");
        assert!(s["correct"].as_i64().unwrap() <= s["ok"].as_i64().unwrap(), "{s}");
    }
    let results = query("select model, count(*) as n from eval_results group by model order by model");
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|r| r["n"].as_i64() == Some(heldout)));
    // The cot student was trained on the kg teacher's chains of the synthetic training items.
    let distilled =
        query("select count(*) as n from chains_selected where length(explanation) > 0")[0]["n"].as_i64().unwrap();
    let synthetic = query("select count(*) as n from train where source = 'synthetic'")[0]["n"].as_i64().unwrap();
    assert!(distilled > 0 && distilled == synthetic, "{distilled} chains for {synthetic} synthetic training items");
    // RL: stage 1 took its four steps from the distilled student, every training item
    // was mined, and stage 2 trained on what stage 1's policy failed.
    let n = |sql: &str| query(sql)[0]["n"].as_i64().unwrap();
    assert_eq!(n("select count(*) as n from rl1_metrics"), 4);
    assert_eq!(n("select count(*) as n from mined_pass_rates"), trained);
    assert_eq!(n("select count(*) as n from mined_rollouts"), trained * 4);
    let hard = n("select count(*) as n from mined_hard");
    assert!(hard > 0, "a tiny 300-step student fails some training items");
    assert!(n("select count(*) as n from rl2_metrics") > 0);
    let second = run();
    assert!(second.contains("0 ran, "), "{second}");
    let base_steps = n("select count(*) as n from base_metrics");
    report_shows_the_store(&pipeline, &store, &second, base_steps);
    let ui = browser::Ui::start(&pipeline, &store, &dir.path().join("out"));
    let stages: usize = second.split(" cached in").next().and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap();
    browser::ui_shows_the_store(&ui, &store.with_file_name("report.html"), stages, heldout as usize, base_steps);
    // Editing stage 2's parameters reruns stage 2 and the evaluation, nothing else.
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains("remine_every") { l.replace("learning_rate: 1e-4", "learning_rate: 5e-5") } else { l.into() }
        })
        .collect();
    assert_ne!(edited.join("\n"), text.trim_end(), "rl2's learning_rate moved: update this test");
    std::fs::write(&pipeline, edited.join("\n")).unwrap();
    browser::ui_shows_stale(&ui, &["rl2", "eval"]);
    let third = run();
    let ran: Vec<&str> =
        third.lines().filter(|l| l.contains(" ran ")).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ran, ["rl2", "eval"], "{third}");
    // The UI, still running, shows what changed.
    browser::ui_shows_the_change(&ui, "rl2", "learning_rate");
}

/// `fleming report` on the quickstart's store: a box per stage, all cached; the curves of
/// the training stages, a point per metrics row; the evaluation's own report inside.
fn report_shows_the_store(pipeline: &std::path::Path, store: &std::path::Path, cached_run: &str, base_steps: i64) {
    let page_path = store.with_file_name("report.html");
    let o = Command::new(fleming())
        .args(["report", pipeline.to_str().unwrap(), "-o", page_path.to_str().unwrap()])
        .args(["--store", store.to_str().unwrap()])
        .env("QUICKSTART_OUT", store.with_file_name("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(&page_path).unwrap();
    let stages = cached_run.split(" cached in").next().and_then(|l| l.rsplit(' ').next()).unwrap();
    let boxes = page.matches("<g class=\"stage\"").count();
    assert_eq!(boxes.to_string(), stages, "one box per stage");
    let not_cached: Vec<&str> =
        page.split("<tr id=\"stage-").skip(1).filter(|r| !r.contains("data-status=\"cached\"")).collect();
    assert!(not_cached.is_empty(), "every stage cached: {not_cached:?}");
    for stage in ["base", "cot", "rl1", "rl2"] {
        assert!(page.contains(&format!("id=\"curves-{stage}\"")), "curves of {stage}");
    }
    let base_loss =
        page.split("id=\"curves-base\"").nth(1).and_then(|r| r.split("data-metric=\"loss\" data-points=\"").nth(1));
    assert_eq!(base_loss.and_then(|r| r.split('"').next()), Some(base_steps.to_string().as_str()));
    assert!(page.contains("<iframe title=\"evaluation eval\""), "the evaluation report");
    assert!(!page.contains("<script") && !page.contains("https://"), "the page opens offline");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
