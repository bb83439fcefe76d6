//! Logit parity with Hugging Face transformers, in both directions.

use crate::common::{device, logits_tol, max_abs_diff, placement, run_py};
use fleming_model::Qwen2;
use fleming_model::io::{SafetensorsFile, write_safetensors};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Logits against transformers' (f32, CPU): within 1e-4 in f32, [`logits_tol`] in bf16.
fn tol() -> f64 {
    logits_tol(1e-4)
}

fn check_python_model(tied: bool, shard: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run_py("parity.py", &["make", d, if tied { "1" } else { "0" }, if shard { "1" } else { "0" }]);
    if shard {
        assert!(dir.path().join("model.safetensors.index.json").exists(), "expected a sharded checkpoint");
    }
    let mut r = SafetensorsFile::open(dir.path().join("ref.safetensors")).unwrap();
    let ids = r.read("ids").unwrap().to_device(device());
    let want = r.read("logits").unwrap();
    let model = Qwen2::load(dir.path(), placement()).unwrap();
    assert_eq!(model.config.tie_word_embeddings, tied);

    // Whole sequence in one pass.
    let got = model.forward(&ids, None, None, false).unwrap();
    let d_full = max_abs_diff(&got, &want);
    assert!(d_full < tol(), "full-sequence logits differ by {d_full}");

    // Token by token through the KV cache (prefill 5, then one at a time).
    let mut cache = model.new_cache();
    let t = ids.size()[1];
    let mut parts = vec![model.forward(&ids.narrow(1, 0, 5), None, Some(&mut cache), false).unwrap()];
    for i in 5..t {
        parts.push(model.forward(&ids.narrow(1, i, 1), None, Some(&mut cache), false).unwrap());
    }
    let got = Tensor::cat(&parts, 1);
    let d_cache = max_abs_diff(&got, &want);
    assert!(d_cache < tol(), "KV-cache logits differ by {d_cache}");
    eprintln!("parity (tied={tied}, sharded={shard}): full {d_full:.2e}, cached {d_cache:.2e}");
}

#[test]
fn python_model_loads_with_same_logits_untied() {
    check_python_model(false, false);
}

#[test]
fn python_sharded_tied_model_loads_with_same_logits() {
    check_python_model(true, true);
}

#[test]
fn rust_model_loads_in_transformers_with_same_logits() {
    for (tied, shard) in [(false, None), (true, Some(40_000u64))] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = fleming_model::Qwen2Config::small(300, 64, 2, 4, 2);
        cfg.tie_word_embeddings = tied;
        cfg.rope_theta = Some(77_000.0);
        let model = Qwen2::new_random(cfg, placement(), 3).unwrap();
        model.save(dir.path(), shard).unwrap();
        let ids = Tensor::randint(300, [3, 11], (Kind::Int64, Device::Cpu));
        let on_device = ids.to_device(device());
        let meta = BTreeMap::new();
        write_safetensors(&dir.path().join("ids.safetensors"), &[("ids".into(), ids.shallow_clone())], &meta).unwrap();
        run_py("parity.py", &["logits", dir.path().to_str().unwrap()]);
        let want = SafetensorsFile::open(dir.path().join("py_logits.safetensors")).unwrap().read("logits").unwrap();
        let got = model.forward(&on_device, None, None, false).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < tol(), "transformers' logits of our checkpoint differ by {d} (tied={tied})");
        // And our own reload is exact.
        let back = Qwen2::load(dir.path(), placement()).unwrap();
        let again = back.forward(&on_device, None, None, false).unwrap();
        assert_eq!(max_abs_diff(&got, &again), 0.0);
    }
}

#[test]
fn left_padding_gives_the_same_last_logits() {
    let model = Qwen2::new_random(fleming_model::Qwen2Config::small(100, 32, 2, 4, 2), placement(), 5).unwrap();
    let ids = Tensor::from_slice(&[5i64, 6, 7, 8]).view([1, 4]).to_device(device());
    let plain = model.forward(&ids, None, None, true).unwrap();
    let padded = Tensor::from_slice(&[0i64, 0, 5, 6, 7, 8]).view([1, 6]).to_device(device());
    let mask = Tensor::from_slice(&[false, false, true, true, true, true]).view([1, 6]).to_device(device());
    let got = model.forward(&padded, Some(&mask), None, true).unwrap();
    let d = max_abs_diff(&plain, &got);
    assert!(d < 1e-5, "left padding changed the logits by {d}");
}
