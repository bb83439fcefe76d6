//! The figures `scripts/gpu-check` prints: generation tokens/s and the time of one GRPO
//! step, on a device and dtype of your choice (random weights):
//!
//! ```text
//! cargo run --release -p fleming-model --example device_bench -- --device cuda --dtype bf16 --shape 0.5b
//! cargo run --release -p fleming-model --example device_bench -- --device cpu             # the CPU fallback
//! ```
//! `--shape small` (default) is the 22 M-parameter benchmark model of the other examples;
//! `--shape 0.5b` is Qwen2.5-0.5B's shape. Generation: 8 prompts of 64 tokens, 128 new
//! tokens each, greedy with the KV cache, median of 3 runs after a warm-up. GRPO: 4 prompts
//! × 8 completions of 64 tokens, one update per batch, median of the steps after the
//! first. The last line is one JSON object with both figures.

use anyhow::{Context, bail};
use fleming_model::grpo::{GrpoConfig, GrpoTrainer, Prompt};
use fleming_model::{Placement, Qwen2, Qwen2Config, SamplingParams, generate};
use std::time::Instant;

mod common;
use common::{arg, bench_config, median, text_arg};

/// Waits for the device's queued kernels, so wall times measure work done.
fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> anyhow::Result<()> {
    fleming_model::set_threads(arg("--threads", 2));
    let device_name = text_arg("--device", "cpu");
    let device = Placement::parse_device(&device_name)?.unwrap_or(tch::Device::Cpu);
    if matches!(device, tch::Device::Cuda(_)) && !tch::Cuda::is_available() {
        bail!("--device {device_name}: libtorch sees no CUDA device");
    }
    let kind = match text_arg("--dtype", "f32").as_str() {
        "f32" => tch::Kind::Float,
        "bf16" => tch::Kind::BFloat16,
        other => bail!("--dtype {other}: expected f32 or bf16"),
    };
    let cfg = match text_arg("--shape", "small").as_str() {
        "small" => bench_config(),
        "0.5b" => {
            let mut cfg = Qwen2Config::small(151_936, 896, 24, 14, 2);
            cfg.intermediate_size = 4864;
            cfg
        }
        other => bail!("--shape {other}: expected small or 0.5b"),
    };
    let vocab = cfg.vocab_size as i64;
    let mut model = Qwen2::new_random(cfg, Placement { device: Some(device), kind: Some(kind) }, 0)
        .context("building the model on the device")?;
    println!("model: {} parameters on {device:?} in {kind:?}", model.num_parameters());

    // Generation. Token ids from 2 (0 pads); nothing stops early.
    let (batch, prompt_len, new_tokens) = (8i64, 64i64, 128usize);
    let prompts: Vec<Vec<i64>> =
        (0..batch).map(|b| (0..prompt_len).map(|t| 2 + (b * 7919 + t * 104_729) % (vocab - 2)).collect()).collect();
    let params = SamplingParams { temperature: 0.0, max_new_tokens: new_tokens, ..Default::default() };
    let mut gen_s = Vec::new();
    for run in 0..4 {
        sync(device);
        let start = Instant::now();
        let out = generate(&model, &prompts, &params, 0)?;
        sync(device);
        if run > 0 {
            gen_s.push(start.elapsed().as_secs_f64());
        }
        anyhow::ensure!(out.iter().all(|g| g.tokens.len() == new_tokens), "a generation stopped early");
    }
    let tokens_per_s = (batch as usize * new_tokens) as f64 / median(gen_s);

    // One GRPO step: rollouts, log-probabilities, backward, AdamW.
    let grpo_prompts: Vec<Prompt> = prompts.iter().take(4).map(|p| Prompt { tokens: p.clone() }).collect();
    let steps = 3;
    let grpo = GrpoConfig {
        learning_rate: 1e-6,
        max_steps: steps,
        prompts_per_step: 4,
        num_generations: 8,
        per_device_train_batch_size: 32,
        max_completion_length: 64,
        reward_weights: vec![1.0],
        checkpoint_every: 0,
        ..Default::default()
    };
    let ck = tempfile::tempdir()?;
    let mut trainer = GrpoTrainer::new(&mut model, None, &grpo_prompts, grpo, ck.path(), 0, vec![])?;
    let half = vocab / 2;
    let mut reward = |_: usize, tokens: &[i64], _: bool| {
        vec![tokens.iter().filter(|&&t| t < half).count() as f64 / tokens.len().max(1) as f64]
    };
    let mut step_s = Vec::new();
    for step in 0..steps {
        sync(device);
        let start = Instant::now();
        let rows = trainer.train_batch(&mut reward)?;
        sync(device);
        anyhow::ensure!(rows.iter().all(|r| r.loss.is_finite()), "a GRPO step gave a non-finite loss");
        if step > 0 {
            step_s.push(start.elapsed().as_secs_f64());
        }
    }
    let step = median(step_s);
    println!("generation: {tokens_per_s:.0} tokens/s (batch {batch}, {new_tokens} new tokens, greedy)");
    println!("GRPO step: {step:.3} s (4 prompts x 8 completions of 64 tokens)");
    println!(
        "{}",
        serde_json::json!({"device": device_name, "dtype": text_arg("--dtype", "f32"),
                           "generation_tokens_per_s": tokens_per_s, "grpo_step_s": step})
    );
    Ok(())
}
