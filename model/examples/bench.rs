//! Benchmarks against Python transformers, both sides in the same run.
//!
//! ```text
//! eval "$(scripts/ensure-torch --env)"
//! cargo run --release -p fleming-model --example bench            # all figures
//! cargo run --release -p fleming-model --example bench -- --quick # smaller, faster
//! ```
//! Prints tokens/s of generation (greedy and sampled; batch 8, 64-token
//! prompts, 128 new tokens, KV cache) and the time of one SFT step (batch
//! 16 × 256), each with the Rust/Python ratio, and the peak memory of loading
//! the checkpoint relative to the weights' size. Both sides use 2 threads, f32.

use fleming_model::io::write_safetensors;
use fleming_model::sft::{Example, SftConfig, SftTrainer};
use fleming_model::{Qwen2, SamplingParams, generate};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;
use common::{cpu, median, python, saved_bench_model};
use tch::{Device, Kind, Tensor};

const THREADS: usize = 2;

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `bench load DIR`: load once and report the peak resident memory it added.
fn load_mem(dir: &Path) -> anyhow::Result<()> {
    let _warm = Tensor::zeros([1], (Kind::Float, Device::Cpu)) + 1.0;
    let before = status_kb("VmRSS:");
    let model = Qwen2::load(dir, cpu())?;
    let peak = status_kb("VmHWM:");
    println!("{} {} {}", before, peak, model.weight_bytes());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("load") {
        return load_mem(Path::new(args.get(2).map(String::as_str).unwrap_or(".")));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 3 };
    // `--part gen|sft|load` runs one part only (default: all).
    let part =
        args.iter().position(|a| a == "--part").and_then(|i| args.get(i + 1)).map(String::as_str).unwrap_or("all");
    let want = |p: &str| part == "all" || part == p;
    let (tmp, mut model) = saved_bench_model(THREADS)?;
    let dir = tmp.path();
    let cfg = model.config.clone();
    println!(
        "model: {} parameters, {:.1} MB f32, {THREADS} threads",
        model.num_parameters(),
        model.weight_bytes() as f64 / 1e6
    );

    let (batch, prompt_len, new_tokens) = (8i64, 64i64, if quick { 32 } else { 128 });
    let (sft_b, sft_t) = if quick { (4i64, 128i64) } else { (16, 256) };
    tch::manual_seed(1);
    let prompts = Tensor::randint_low(1, cfg.vocab_size as i64, [batch, prompt_len], (Kind::Int64, Device::Cpu));
    let sft_ids = Tensor::randint_low(1, cfg.vocab_size as i64, [sft_b, sft_t], (Kind::Int64, Device::Cpu));
    let inputs = vec![
        ("prompts".to_string(), prompts.shallow_clone()),
        ("sft_ids".to_string(), sft_ids.shallow_clone()),
        ("new_tokens".to_string(), Tensor::from_slice(&[new_tokens])),
    ];
    write_safetensors(&dir.join("bench_inputs.safetensors"), &inputs, &BTreeMap::new())?;

    // Python side first, so both sides see the same machine state.
    let script =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("tests/py/bench.py");
    let out = Command::new(python())
        .arg(&script)
        .args([dir.to_str().unwrap_or("."), &THREADS.to_string(), &reps.to_string(), part])
        .env_remove("OPENBLAS_CORETYPE")
        .output()?;
    if !out.status.success() {
        anyhow::bail!("python bench failed (run scripts/ensure-torch?):\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let py: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii())?;
    let pyf = |k: &str| py.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);

    // Rust generation.
    let rows: Vec<Vec<i64>> = (0..batch).map(|i| Vec::<i64>::try_from(prompts.get(i)).unwrap_or_default()).collect();
    let run = |sample: bool| -> anyhow::Result<f64> {
        let p = SamplingParams {
            temperature: if sample { 1.0 } else { 0.0 },
            top_p: if sample { 0.9 } else { 1.0 },
            max_new_tokens: new_tokens as usize,
            seed: 0,
            ..Default::default()
        };
        let t = Instant::now();
        let out = generate(&model, &rows, &p, 0)?;
        let dt = t.elapsed().as_secs_f64();
        anyhow::ensure!(out.iter().all(|g| g.tokens.len() == new_tokens as usize));
        Ok(dt)
    };
    if want("gen") {
        run(false)?;
        let greedy = median((0..reps).map(|_| run(false)).collect::<anyhow::Result<Vec<_>>>()?);
        let sampled = median((0..reps).map(|_| run(true)).collect::<anyhow::Result<Vec<_>>>()?);
        let toks = (batch * new_tokens) as f64;
        println!(
            "generation (batch {batch}, prompt {prompt_len}, {new_tokens} new tokens), tokens/s: higher is better"
        );
        for (name, r, p) in [("greedy", greedy, pyf("greedy_s")), ("sampled", sampled, pyf("sampled_s"))] {
            println!("  {name:8} rust {:8.1}  python {:8.1}  ratio {:.2}x", toks / r, toks / p, p / r);
        }
    }

    if want("sft") {
        // Rust SFT step: loss on every token but the first, as labels=ids does in HF.
        let examples: Vec<Example> = (0..sft_b)
            .map(|i| {
                let ids = Vec::<i64>::try_from(sft_ids.get(i)).unwrap_or_default();
                Example { prompt: ids[..1].to_vec(), completion: ids[1..].to_vec() }
            })
            .collect();
        let sft_cfg = SftConfig {
            lr: 1e-4,
            warmup_steps: 0,
            total_steps: 100,
            batch_size: sft_b as usize,
            checkpoint_every: 0,
            max_len: sft_t as usize,
            ..Default::default()
        };
        let ck = tempfile::tempdir()?;
        let mut trainer = SftTrainer::new(&mut model, &examples, sft_cfg, ck.path(), 0)?;
        trainer.train_step()?;
        let mut times = vec![];
        for _ in 0..reps {
            let t = Instant::now();
            trainer.train_step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        let step = median(times);
        println!("SFT step (batch {sft_b} x {sft_t}), seconds: lower is better");
        println!(
            "  rust {step:.3}  python {:.3}  ratio {:.2}x of PyTorch's time",
            pyf("sft_step_s"),
            step / pyf("sft_step_s")
        );
    }
    if !want("load") {
        return Ok(());
    }

    // Peak memory of a load, in a fresh process.
    let me = std::env::current_exe()?;
    let out = Command::new(me).args(["load", dir.to_str().unwrap_or(".")]).output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if let [before, peak, bytes] = v.as_slice() {
        let added = (peak - before) * 1024.0;
        println!(
            "load: peak RSS added {:.1} MB for {:.1} MB of weights: {:.2}x",
            added / 1e6,
            bytes / 1e6,
            added / bytes
        );
    } else {
        println!("load: could not measure ({s})");
    }
    Ok(())
}
