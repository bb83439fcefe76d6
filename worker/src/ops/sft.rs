//! `sft`: supervised fine-tuning (declared in `fleming_operators::ops::sft`).

use std::time::Instant;

use anyhow::{Context, bail};
use fleming_dispatch::{WorkerSession, stop_requested};
use fleming_model::sft::{Example, SftConfig, SftTrainer, TrainEnd};
use fleming_model::{Placement, Qwen2, Qwen2Config, TextTokenizer};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::WorkerOp;
use super::common::{adopt_previous_run, device, training_texts};

/// The resolved parameters of `sft`; names, defaults and docs are in its declaration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    steps: u64,
    batch_size: usize,
    grad_accum: usize,
    lr: f64,
    warmup_steps: u64,
    weight_decay: f64,
    max_grad_norm: f64,
    max_len: usize,
    seed: u64,
    checkpoint_every: u64,
    vocab_size: usize,
    hidden_size: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
}

/// The `sft` operator.
pub struct Sft;

impl WorkerOp for Sft {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn run(&self, s: &WorkerSession) -> anyhow::Result<Map<String, Value>> {
        let params: Params = s.params()?;
        s.catch_stop_signals();
        let batch = s.input_table("examples", 0)?.concat()?;
        let texts = training_texts(&batch)?;
        let continued = adopt_previous_run(s)?;
        let dev = device(s)?;
        let placement = Placement { device: Some(dev), kind: None };
        let ck_dir = s.job.checkpoint_dir.clone();
        let (mut model, tokenizer) = if s.has_input("base") {
            let dir = s.input_model("base")?;
            (Qwen2::load(&dir, placement)?, TextTokenizer::from_dir(&dir)?)
        } else {
            if texts.is_empty() {
                bail!("the examples table is empty: there is nothing to train a tokenizer on");
            }
            // The tokenizer is kept with the checkpoints so a resumed run uses the very same ids.
            let tk_dir = ck_dir.join("tokenizer");
            let tk = if tk_dir.join("tokenizer.json").exists() {
                TextTokenizer::from_dir(&tk_dir)?
            } else {
                let tk = TextTokenizer::train_bpe(texts.iter().map(|(p, c)| format!("{p}{c}")), params.vocab_size)?;
                tk.save(&tk_dir)?;
                tk
            };
            let mut cfg =
                Qwen2Config::small(tk.vocab_size(), params.hidden_size, params.layers, params.heads, params.kv_heads);
            cfg.eos_token_id = tk.token_id("<|im_end|>").map(Value::from);
            (Qwen2::new_random(cfg, placement, params.seed)?, tk)
        };
        let mut summary = Map::new();
        let start = Instant::now();
        if params.steps > 0 {
            if texts.is_empty() {
                bail!("the examples table is empty");
            }
            let examples: Vec<Example> = texts
                .iter()
                .map(|(p, c)| Ok(Example { prompt: tokenizer.encode(p)?, completion: tokenizer.encode(c)? }))
                .collect::<fleming_model::Result<_>>()?;
            // Examples longer than max_len are cut at the end: one whose prompt alone fills it
            // would teach nothing, silently.
            let cut = examples.iter().filter(|e| e.prompt.len() + e.completion.len() > params.max_len).count();
            let empty = examples.iter().filter(|e| e.prompt.len() + 1 >= params.max_len).count();
            if empty == examples.len() {
                let shortest = examples.iter().map(|e| e.prompt.len()).min().unwrap_or(0);
                bail!(
                    "max_len {} leaves no completion token to learn from: the shortest prompt is {shortest} tokens; \
                     raise max_len",
                    params.max_len
                );
            }
            if cut > 0 {
                s.log(
                    "warn",
                    &format!(
                        "sft: {cut} of {} examples are longer than max_len {} and are cut at the end ({empty} of them \
                         keep no completion token)",
                        examples.len(),
                        params.max_len
                    ),
                );
            }
            summary.insert("examples_cut".into(), json!(cut));
            summary.insert("examples_without_target".into(), json!(empty));
            s.log(
                "info",
                &format!("sft: {} examples, {} parameters on {dev:?}", examples.len(), model.num_parameters()),
            );
            let cfg = SftConfig {
                lr: params.lr,
                warmup_steps: params.warmup_steps,
                total_steps: params.steps,
                batch_size: params.batch_size,
                grad_accum: params.grad_accum,
                weight_decay: params.weight_decay,
                max_grad_norm: params.max_grad_norm,
                max_len: params.max_len,
                seed: params.seed,
                checkpoint_every: params.checkpoint_every,
                // Resume is exact from the latest alone, and it is written atomically.
                keep_checkpoints: 1,
                ..Default::default()
            };
            let mut trainer = SftTrainer::new(&mut model, &examples, cfg, &ck_dir, tokenizer.pad_id())?;
            let resumed_at = trainer.state.step;
            if resumed_at > 0 {
                let how = if continued { "continuing the previous run" } else { "resuming" };
                s.log("info", &format!("sft: {how} at step {resumed_at} of {}", params.steps));
                summary.insert("resumed_at_step".into(), json!(resumed_at));
            }
            s.resume_metrics_at(resumed_at)?;
            let mut last_loss = f64::NAN;
            let end = trainer.train(stop_requested, |row| {
                last_loss = row.loss;
                let mut m = Map::new();
                m.insert("loss".into(), json!(row.loss));
                m.insert("lr".into(), json!(row.lr));
                m.insert("grad_norm".into(), json!(row.grad_norm));
                m.insert("tokens".into(), json!(row.tokens));
                m.insert("tokens_per_s".into(), json!(row.tokens_per_s));
                s.metrics(Some(row.step), m).map_err(|e| fleming_model::ModelError::Invalid(format!("{e:#}")))?;
                s.progress(row.step, Some(params.steps), "steps");
                Ok(())
            })?;
            if let TrainEnd::Stopped { step } = end {
                bail!("stopped by a signal; the checkpoint at step {step} is saved and the next run resumes from it");
            }
            summary.insert("final_loss".into(), json!(last_loss));
            summary.insert("examples".into(), json!(examples.len()));
        }
        let out = s.model_dir("model")?;
        model.save(&out, None).context("saving the model")?;
        tokenizer.save(&out)?;
        let rows = s.write_metrics_table("metrics")?;
        summary.insert("steps".into(), json!(params.steps));
        summary.insert("metric_rows".into(), json!(rows));
        summary.insert("train_seconds".into(), json!(start.elapsed().as_secs_f64()));
        Ok(summary)
    }
}
