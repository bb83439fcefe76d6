//! The README's main job, whole: `fleming run pipelines/quickstart.yaml` with the torch
//! worker beside it, as `make quickstart` leaves things. (The core suite runs it without
//! the worker; this one adds the `sft` stage.)

use std::path::PathBuf;
use std::process::Command;

use crate::pipeline::fleming;

#[test]
fn the_whole_quickstart_runs_with_the_worker_and_reruns_cached() {
    let repo =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("..");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let run = || {
        let o = Command::new(fleming())
            .args(["run", repo.join("pipelines/quickstart.yaml").to_str().unwrap(), "--store", store.to_str().unwrap()])
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
    assert!(first.lines().any(|l| l.starts_with("tutor ") && l.contains(" ran ")), "{first}");
    // The model is in the store as a Hugging Face directory, trained on the tiered questions.
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("refs/quickstart/tutor.json")).unwrap()).unwrap();
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
    let second = run();
    assert!(second.contains("0 ran, "), "{second}");
}
