//! What the model crate's benchmark examples share: the benchmark model, the Python
//! they compare against, argument and timing helpers.

#![allow(dead_code)] // each example uses its part

use fleming_model::{Placement, Qwen2Config};
use std::path::PathBuf;

/// CPU, f32: where the benchmarks run.
pub fn cpu() -> Placement {
    Placement { device: Some(tch::Device::Cpu), kind: Some(tch::Kind::Float) }
}

/// The Qwen2 shape the generation, SFT and GRPO benchmarks share (~22 M parameters:
/// big enough that kernels dominate).
pub fn bench_config() -> Qwen2Config {
    let mut cfg = Qwen2Config::small(16384, 384, 6, 6, 2);
    cfg.intermediate_size = 1024;
    cfg.tie_word_embeddings = false;
    cfg
}

/// The middle value (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The Python of the torch venv (`FLEMING_PYTHON`, as `scripts/ensure-torch --env` sets it).
pub fn python() -> PathBuf {
    std::env::var_os("FLEMING_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/fleming/py/bin/python")
    })
}

/// The text after `--name` on the command line, or `default`.
pub fn text_arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

/// The number after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    text_arg(name, "").parse().unwrap_or(default)
}

/// Sets `threads`, then makes the benchmark model (random weights, seed 0) and saves it
/// in a temporary directory, for the Python side to load the same weights.
pub fn saved_bench_model(threads: usize) -> anyhow::Result<(tempfile::TempDir, fleming_model::Qwen2)> {
    fleming_model::set_threads(threads);
    let dir = tempfile::tempdir()?;
    let model = fleming_model::Qwen2::new_random(bench_config(), cpu(), 0)?;
    model.save(dir.path(), None)?;
    Ok((dir, model))
}
