//! Peak memory and time of one GRPO step on a Qwen2-0.5B-shaped model (random weights),
//! on CPU in f32, with the chunked loss. The figure the README quotes:
//!
//! ```sh
//! cargo run --release -p fleming-model --example grpo_memory -- [--chunk 64] [--threads 2]
//! ```
//!
//! Prints the resident-set peak after loading (weights), after the AdamW moments exist,
//! and after one step (generation, log-probabilities, backward, update), from
//! `/proc/self/status`.

use fleming_model::grpo::{GrpoConfig, GrpoTrainer, Prompt};
use fleming_model::{Placement, Qwen2, Qwen2Config};
use std::time::Instant;

mod common;
use common::arg;

fn peak_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / (1024.0 * 1024.0)
}

fn main() -> fleming_model::Result<()> {
    fleming_model::set_threads(arg("--threads", 2));
    let chunk = arg("--chunk", 64);
    // Qwen2.5-0.5B's shape.
    let mut cfg = Qwen2Config::small(151_936, 896, 24, 14, 2);
    cfg.intermediate_size = 4864;
    let placement = Placement { device: Some(tch::Device::Cpu), kind: Some(tch::Kind::Float) };
    let mut policy = Qwen2::new_random(cfg, placement, 1)?;
    println!("parameters: {:.0} M; peak after loading: {:.2} GiB", policy.num_parameters() as f64 / 1e6, peak_gib());
    let prompts: Vec<Prompt> =
        (0..2).map(|i| Prompt { tokens: (0..128).map(|t| (t * 7 + i) % 151_936).collect() }).collect();
    let grpo = GrpoConfig {
        learning_rate: 1e-6,
        max_steps: 1,
        prompts_per_step: 2,
        num_generations: 4,
        per_device_train_batch_size: 4,
        max_completion_length: 64,
        logprob_chunk: chunk,
        reward_weights: vec![1.0],
        checkpoint_every: 0,
        ..Default::default()
    };
    let dir = tempfile::tempdir().map_err(|e| fleming_model::ModelError::io(std::path::Path::new("tmp"), e))?;
    let mut t = GrpoTrainer::new(&mut policy, None, &prompts, grpo, dir.path(), 0, vec![])?;
    println!("peak with AdamW moments: {:.2} GiB", peak_gib());
    let start = Instant::now();
    let mut reward = |_: usize, tokens: &[i64], _: bool| vec![(tokens.first().copied().unwrap_or(0) % 2) as f64];
    let rows = t.train_batch(&mut reward)?;
    let r = &rows[0];
    println!(
        "one step (2 prompts x 4 completions of 64 tokens, 128-token prompts, chunk {chunk}): {:.1} s \
         (generation {:.1} tokens/s); peak {:.2} GiB",
        start.elapsed().as_secs_f64(),
        r.generation_tokens_per_s,
        peak_gib()
    );
    Ok(())
}
