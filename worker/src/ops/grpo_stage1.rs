//! `grpo-stage1`: GRPO on easy and moderate items until the reward becomes sparse
//! (declared in `fleming_operators::ops::grpo_stage1`).

use std::time::Instant;

use anyhow::{Context, bail};
use fleming_dispatch::{WorkerSession, stop_requested};
use fleming_model::chat::question_prompt;
use fleming_model::grpo::{GrpoConfig, GrpoMetrics, GrpoTrainer, LossType, Prompt, ScaleRewards};
use fleming_model::{Placement, Qwen2, TextTokenizer, TrainEnd};
use fleming_questions::Question;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::WorkerOp;
use super::common::{adopt_previous_run, device};

/// The GRPO trainer's resolved parameters; names, defaults and docs are declared once in
/// `fleming_operators::ops::grpo_stage1::trainer_params`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerParams {
    max_steps: u64,
    learning_rate: f64,
    warmup_steps: u64,
    max_grad_norm: f64,
    weight_decay: f64,
    num_generations: usize,
    prompts_per_step: usize,
    per_device_train_batch_size: usize,
    max_completion_length: usize,
    max_prompt_length: usize,
    temperature: f64,
    top_p: f64,
    num_iterations: usize,
    epsilon: f64,
    epsilon_high: f64,
    loss_type: LossType,
    scale_rewards: ScaleRewards,
    beta: f64,
    mask_truncated_completions: bool,
    dynamic_sampling: bool,
    max_resample_rounds: usize,
    reward_weights: Vec<f64>,
    seed: u64,
    checkpoint_every: u64,
    logprob_chunk: usize,
}

impl TrainerParams {
    /// The model crate's configuration.
    pub fn config(&self) -> anyhow::Result<GrpoConfig> {
        if self.reward_weights.len() != 2 {
            bail!("reward_weights takes two weights, [correctness, format]; got {:?}", self.reward_weights);
        }
        Ok(GrpoConfig {
            learning_rate: self.learning_rate,
            // A constant rate after warm-up, as TRL's default scheduler is linear to 0 over
            // a run whose end a plateau stop makes unknown in advance.
            min_lr_ratio: 1.0,
            warmup_steps: self.warmup_steps,
            max_steps: self.max_steps,
            max_grad_norm: self.max_grad_norm,
            weight_decay: self.weight_decay,
            prompts_per_step: self.prompts_per_step,
            num_generations: self.num_generations,
            per_device_train_batch_size: self.per_device_train_batch_size,
            max_completion_length: self.max_completion_length,
            max_prompt_length: self.max_prompt_length,
            temperature: self.temperature,
            top_p: self.top_p,
            num_iterations: self.num_iterations,
            epsilon: self.epsilon,
            epsilon_high: self.epsilon_high,
            loss_type: self.loss_type,
            scale_rewards: self.scale_rewards,
            beta: self.beta,
            mask_truncated_completions: self.mask_truncated_completions,
            dynamic_sampling: self.dynamic_sampling,
            max_resample_rounds: self.max_resample_rounds,
            reward_weights: self.reward_weights.clone(),
            seed: self.seed,
            logprob_chunk: self.logprob_chunk,
            checkpoint_every: self.checkpoint_every,
            // Resume is exact from the latest alone, and it is written atomically.
            keep_checkpoints: 1,
            ..GrpoConfig::default()
        })
    }
}

/// The stage's own parameters (beside the trainer's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    tiers: Vec<String>,
    plateau_threshold: f64,
    plateau_window: usize,
}

/// Splits a stage's resolved parameters into its own (`own` names) and the trainer's,
/// each refusing names it does not know (serde's `flatten` cannot).
pub fn split_params<T: serde::de::DeserializeOwned>(
    s: &WorkerSession,
    own: &[&str],
) -> anyhow::Result<(T, TrainerParams)> {
    let all: Map<String, Value> = s.params()?;
    let (mine, trainer): (Map<String, Value>, Map<String, Value>) =
        all.into_iter().partition(|(k, _)| own.contains(&k.as_str()));
    let mine = serde_json::from_value(Value::Object(mine)).context("the stage's parameters")?;
    let trainer = serde_json::from_value(Value::Object(trainer)).context("the GRPO trainer's parameters")?;
    Ok((mine, trainer))
}

/// One metrics row of the stage's `metrics` table.
pub fn metrics_row(m: &GrpoMetrics) -> Map<String, Value> {
    let mut row = Map::new();
    let mut put = |k: &str, v: Value| {
        row.insert(k.to_string(), v);
    };
    put("loss", json!(m.loss));
    put("reward", json!(m.reward));
    put("reward_std", json!(m.reward_std));
    put("reward_correctness", json!(m.rewards.first().copied().unwrap_or(0.0)));
    put("reward_format", json!(m.rewards.get(1).copied().unwrap_or(0.0)));
    put("frac_reward_zero_std", json!(m.frac_reward_zero_std));
    put("all_correct", json!(m.all_correct));
    put("all_wrong", json!(m.all_wrong));
    put("kl", json!(m.kl));
    put("entropy", json!(m.entropy));
    put("clip_ratio_low", json!(m.clip_ratio_low));
    put("clip_ratio_high", json!(m.clip_ratio_high));
    put("clip_ratio_region", json!(m.clip_ratio_region));
    put("completion_length", json!(m.completion_length));
    put("completion_length_min", json!(m.completion_length_min));
    put("completion_length_max", json!(m.completion_length_max));
    put("truncated", json!(m.truncated));
    put("groups", json!(m.groups));
    put("groups_dropped", json!(m.groups_dropped));
    put("grad_norm", json!(m.grad_norm));
    put("lr", json!(m.lr));
    put("step_time", json!(m.step_time));
    put("generation_tokens_per_s", json!(m.generation_tokens_per_s));
    row
}

/// The reward of a completion of `q`: [correct, format] by the shared strict extractor.
pub fn reward(tokenizer: &TextTokenizer, q: &Question, tokens: &[i64], truncated: bool) -> Vec<f64> {
    let text = tokenizer.decode(tokens, true).unwrap_or_default();
    let v = fleming_questions::score(q, &text, truncated);
    vec![v.correct as u8 as f64, v.format_ok as u8 as f64]
}

/// The starting policy of a GRPO stage, its tokenizer, and the frozen reference when the
/// KL term is on (the same weights, loaded once more and never updated).
pub struct Policy {
    /// The model being trained.
    pub model: Qwen2,
    /// The frozen reference (`beta > 0`).
    pub reference: Option<Qwen2>,
    /// The policy's tokenizer.
    pub tokenizer: TextTokenizer,
}

/// Loads the `policy` input on the assigned device.
pub fn load_policy(s: &WorkerSession, beta: f64) -> anyhow::Result<Policy> {
    let placement = Placement { device: Some(device(s)?), kind: None };
    let dir = s.input_model("policy")?;
    Ok(Policy {
        model: Qwen2::load(&dir, placement)?,
        reference: if beta > 0.0 { Some(Qwen2::load(&dir, placement)?) } else { None },
        tokenizer: TextTokenizer::from_dir(&dir)?,
    })
}

/// The stage's GRPO trainer over `prompts`, resuming from the stage's checkpoint
/// directory when it holds one; completions end at the tokenizer's stop tokens.
pub fn grpo_trainer<'a>(
    s: &WorkerSession,
    policy: &'a mut Qwen2,
    reference: Option<&'a Qwen2>,
    tokenizer: &TextTokenizer,
    prompts: &'a [Prompt],
    cfg: GrpoConfig,
) -> fleming_model::Result<GrpoTrainer<'a>> {
    GrpoTrainer::new(policy, reference, prompts, cfg, &s.job.checkpoint_dir, tokenizer.pad_id(), tokenizer.stop_ids())
}

/// Says where a trainer starts when it does not start at 0, and truncates the metrics
/// rows after that step (they are redone).
pub fn note_resume(
    s: &WorkerSession,
    stage: &str,
    step: u64,
    max_steps: u64,
    continued: bool,
    summary: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    if step > 0 {
        let how = if continued { "continuing the previous run" } else { "resuming" };
        s.log("info", &format!("{stage}: {how} at step {step} of {max_steps}"));
        summary.insert("resumed_at_step".into(), json!(step));
    }
    s.resume_metrics_at(step)
}

/// Writes the trained policy (weights and tokenizer) and the metrics table, and completes
/// the summary.
pub fn save_policy(
    s: &WorkerSession,
    model: &Qwen2,
    tokenizer: &TextTokenizer,
    start: Instant,
    summary: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let out = s.model_dir("model")?;
    model.save(&out, None).context("saving the model")?;
    tokenizer.save(&out)?;
    let rows = s.write_metrics_table("metrics")?;
    summary.insert("metric_rows".into(), json!(rows));
    summary.insert("train_seconds".into(), json!(start.elapsed().as_secs_f64()));
    Ok(())
}

/// The `grpo-stage1` operator.
pub struct GrpoStage1;

impl WorkerOp for GrpoStage1 {
    fn name(&self) -> &'static str {
        "grpo-stage1"
    }

    fn run(&self, s: &WorkerSession) -> anyhow::Result<Map<String, Value>> {
        let (params, trainer_params): (Params, TrainerParams) =
            split_params(s, &["tiers", "plateau_threshold", "plateau_window"])?;
        let cfg = trainer_params.config()?;
        s.catch_stop_signals();
        let batch = s.input_table("questions", 0)?.concat()?;
        let all = fleming_questions::table::from_batches([&batch], "unknown").context("reading the questions")?;
        let in_tier = |q: &Question| {
            params.tiers.is_empty() || params.tiers.iter().any(|t| t == q.difficulty.as_deref().unwrap_or("moderate"))
        };
        let items: Vec<Question> = all.iter().filter(|q| in_tier(q)).cloned().collect();
        let continued = adopt_previous_run(s)?;
        let Policy { model: mut policy, reference, tokenizer } = load_policy(s, cfg.beta)?;
        let mut prompts = Vec::new();
        let mut kept = Vec::new();
        for q in &items {
            let tokens = tokenizer.encode(&question_prompt(q))?;
            if tokens.len() <= cfg.max_prompt_length {
                prompts.push(Prompt { tokens });
                kept.push(q.clone());
            }
        }
        let mut summary = Map::new();
        summary.insert("items".into(), json!(all.len()));
        summary.insert("items_in_tiers".into(), json!(items.len()));
        summary.insert("items_prompt_too_long".into(), json!(items.len() - kept.len()));
        if kept.is_empty() {
            bail!(
                "no item to train on: {} questions, {} in tiers {:?}, none with a prompt of at most {} tokens",
                all.len(),
                items.len(),
                params.tiers,
                cfg.max_prompt_length
            );
        }
        s.log(
            "info",
            &format!(
                "grpo-stage1: {} prompts, {} parameters on {:?}",
                kept.len(),
                policy.num_parameters(),
                policy.device()
            ),
        );
        let start = Instant::now();
        let max_steps = cfg.max_steps;
        let mut trainer = grpo_trainer(s, &mut policy, reference.as_ref(), &tokenizer, &prompts, cfg)?;
        note_resume(s, "grpo-stage1", trainer.state.step, max_steps, continued, &mut summary)?;
        // The plateau window continues across a resume: it is read back from the rows kept.
        let mut zero_std: Vec<f64> =
            s.metrics_rows()?.iter().filter_map(|r| r.get("frac_reward_zero_std").and_then(Value::as_f64)).collect();
        let mut plateau = false;
        let mut score = |i: usize, tokens: &[i64], truncated: bool| reward(&tokenizer, &kept[i], tokens, truncated);
        let end = trainer.train(&mut score, stop_requested, |m| {
            s.metrics(Some(m.step), metrics_row(m))
                .map_err(|e| fleming_model::ModelError::Invalid(format!("{e:#}")))?;
            s.progress(m.step, Some(max_steps), "steps");
            zero_std.push(m.frac_reward_zero_std);
            let w = params.plateau_window;
            if w > 0 && zero_std.len() >= w {
                let mean = zero_std[zero_std.len() - w..].iter().sum::<f64>() / w as f64;
                plateau = mean >= params.plateau_threshold;
            }
            Ok(!plateau)
        })?;
        if let TrainEnd::Stopped { step } = end {
            bail!("stopped by a signal; the checkpoint at step {step} is saved and the next run resumes from it");
        }
        let steps = trainer.state.step;
        drop(trainer);
        summary.insert("stop_reason".into(), json!(if plateau { "plateau" } else { "max_steps" }));
        summary.insert("steps".into(), json!(steps));
        save_policy(s, &policy, &tokenizer, start, &mut summary)?;
        Ok(summary)
    }
}
