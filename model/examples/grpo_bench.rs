//! One GRPO step against Hugging Face TRL's `GRPOTrainer`, both sides in the same run on
//! the same weights, prompts, group size and lengths (2 threads, f32, CPU):
//!
//! ```text
//! make grpo-bench      # installs `trl` into the torch venv, then runs the line below
//! cargo run --release -p fleming-model --example grpo_bench [-- --steps 4 --completion 64]
//! ```
//! Prints the median step time after the first (generation, log-probabilities, backward,
//! update) and the median time of the rollout generation inside it, with the ratios.
//! Settings shared by both sides: 4 prompts of 64 tokens × `num_generations` 8, completions
//! of exactly `--completion` tokens (no stop token; TRL gets `min_new_tokens`), temperature
//! 1, top_p 1, `loss_type` dapo, `scale_rewards` group, beta 0, one update per batch, one
//! forward/backward over the 32 sequences.

use fleming_model::grpo::{GrpoConfig, GrpoTrainer, LossType, Prompt, ScaleRewards};
use fleming_model::io::write_safetensors;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind, Tensor};

mod common;
use common::{arg, median, python, saved_bench_model};

const THREADS: usize = 2;

fn main() -> anyhow::Result<()> {
    let steps = arg("--steps", 4).max(2);
    let completion = arg("--completion", 64);
    let (n_prompts, k, prompt_len) = (4usize, 8usize, 64i64);
    // The same Qwen2 as the generation/SFT bench.
    let (tmp, mut model) = saved_bench_model(THREADS)?;
    let dir = tmp.path();
    let vocab = model.config.vocab_size as i64;
    tch::manual_seed(1);
    // Ids from 2: 0 pads and 1 is the Python side's (never emitted) end-of-sequence.
    let prompt_ids = Tensor::randint_low(2, vocab, [n_prompts as i64, prompt_len], (Kind::Int64, Device::Cpu));
    let inputs = vec![
        ("prompts".to_string(), prompt_ids.shallow_clone()),
        ("num_generations".to_string(), Tensor::from_slice(&[k as i64])),
        ("completion_tokens".to_string(), Tensor::from_slice(&[completion as i64])),
    ];
    write_safetensors(&dir.join("grpo_inputs.safetensors"), &inputs, &BTreeMap::new())?;
    println!(
        "model: {} parameters, {THREADS} threads; {n_prompts} prompts of {prompt_len} tokens x {k} completions \
         of {completion} tokens",
        model.num_parameters()
    );

    // Python side first, so both sides see the same machine state.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/grpo_bench.py");
    let out = Command::new(python())
        .arg(&script)
        .args([dir.to_str().unwrap_or("."), &THREADS.to_string(), &steps.to_string()])
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "TRL side failed (run `make grpo-bench`, which installs trl):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let py: serde_json::Value = serde_json::from_str(&last)?;
    let pyf = |key: &str| py.get(key).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);

    let prompts: Vec<Prompt> = (0..n_prompts as i64)
        .map(|i| Ok(Prompt { tokens: Vec::<i64>::try_from(prompt_ids.get(i))? }))
        .collect::<anyhow::Result<_>>()?;
    let grpo = GrpoConfig {
        learning_rate: 1e-5,
        max_steps: steps as u64,
        prompts_per_step: n_prompts,
        num_generations: k,
        per_device_train_batch_size: n_prompts * k,
        max_completion_length: completion,
        loss_type: LossType::Dapo,
        scale_rewards: ScaleRewards::Group,
        reward_weights: vec![1.0],
        checkpoint_every: 0,
        ..Default::default()
    };
    let ck = tempfile::tempdir()?;
    let mut trainer = GrpoTrainer::new(&mut model, None, &prompts, grpo, ck.path(), 0, vec![])?;
    let half = vocab / 2;
    let mut reward = |_: usize, tokens: &[i64], _: bool| {
        vec![tokens.iter().filter(|&&t| t < half).count() as f64 / tokens.len().max(1) as f64]
    };
    let (mut step_s, mut gen_s) = (vec![], vec![]);
    for _ in 0..steps {
        for m in trainer.train_batch(&mut reward)? {
            anyhow::ensure!(m.completion_length_min as usize == completion, "a completion stopped early");
            step_s.push(m.step_time);
            gen_s.push(m.completion_length * (n_prompts * k) as f64 / m.generation_tokens_per_s);
        }
    }
    let (rs, rg) = (median(step_s[1..].to_vec()), median(gen_s[1..].to_vec()));
    let (ps, pg) = (pyf("step_s"), pyf("generate_s"));
    let tokens = (n_prompts * k * completion) as f64;
    println!("GRPO step, seconds (median of {} after the first): lower is better", steps - 1);
    println!("  fleming {rs:.3}  TRL {ps:.3}  ratio {:.2}x of TRL's time", rs / ps);
    println!("rollout generation inside the step, tokens/s: higher is better");
    println!("  fleming {:.1}  TRL (transformers.generate) {:.1}  ratio {:.2}x", tokens / rg, tokens / pg, pg / rg);
    Ok(())
}
