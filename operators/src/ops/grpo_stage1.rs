//! `grpo-stage1`: the first RL stage of the recipe (paper §3.3) — GRPO on easy and
//! moderate items until the reward becomes sparse. Declared here (so pipelines validate
//! and keys compute without libtorch); `fleming-worker` runs it on the model crate's
//! GRPO trainer. The trainer's parameters carry Hugging Face TRL's `GRPOConfig` names and
//! are declared once, in [`trainer_params`], for every GRPO stage.

use std::sync::LazyLock;

use fleming_runtime::op::{Execution, InputPorts, OpSpec, Operator, ParamSpec, ParamType, PortSpec};
use serde_json::json;

/// The GRPO trainer's parameters (TRL's `GRPOConfig` names), shared by the GRPO stages.
pub(crate) fn trainer_params() -> Vec<ParamSpec> {
    let float = |name: &'static str, default: f64, doc: &'static str| {
        ParamSpec::with_default(name, ParamType::Float, json!(default), doc).range(Some(0.0), None)
    };
    let int = |name: &'static str, default: u64, min: f64, doc: &'static str| {
        ParamSpec::with_default(name, ParamType::Int, json!(default), doc).range(Some(min), None)
    };
    vec![
        int("max_steps", 100, 0.0, "Optimizer steps at most; raising it continues the previous run").continues(),
        float("learning_rate", 1e-6, "Peak learning rate (AdamW)"),
        int("warmup_steps", 0, 0.0, "Linear warm-up steps"),
        float("max_grad_norm", 1.0, "Clip the global gradient norm to this (0: no clipping)"),
        float("weight_decay", 0.0, "AdamW weight decay"),
        int("num_generations", 8, 2.0, "Completions sampled per prompt (the group, k)"),
        int("prompts_per_step", 8, 1.0, "Prompts per generated batch (TRL: generation batch / num_generations)"),
        int("per_device_train_batch_size", 16, 1.0, "Sequences per forward/backward pass (memory, not the result)")
            .not_in_key(),
        int("max_completion_length", 256, 1.0, "Tokens generated at most per completion"),
        int("max_prompt_length", 1024, 1.0, "Items whose prompt is longer are skipped (counted)"),
        float("temperature", 1.0, "Sampling temperature of the rollouts"),
        ParamSpec::with_default("top_p", ParamType::Float, json!(1.0), "Nucleus mass of the rollouts")
            .range(Some(0.0), Some(1.0)),
        int("num_iterations", 1, 1.0, "Optimizer updates per generated batch (PPO-style reuse; 1: on-policy)"),
        float("epsilon", 0.2, "Lower clip of the probability ratio (kept above 1 − epsilon)"),
        float("epsilon_high", 0.2, "Upper clip of the ratio (clip-higher: DAPO uses 0.28)"),
        ParamSpec::with_default(
            "loss_type",
            ParamType::Enum(vec!["grpo", "dr_grpo", "dapo"]),
            json!("grpo"),
            "Token-loss normalisation: grpo (per-sequence mean), dr_grpo (constant), dapo (token mean over the batch)",
        ),
        ParamSpec::with_default(
            "scale_rewards",
            ParamType::Enum(vec!["none", "group", "batch"]),
            json!("none"),
            "Advantage scaling after subtracting the group mean: none (the paper's eq. 2), group or batch std",
        ),
        float("beta", 0.0, "KL coefficient to the frozen starting policy (k3 estimator; 0: no reference kept)"),
        ParamSpec::with_default(
            "mask_truncated_completions",
            ParamType::Bool,
            json!(false),
            "Completions that hit max_completion_length get no loss",
        ),
        ParamSpec::with_default(
            "dynamic_sampling",
            ParamType::Bool,
            json!(false),
            "Drop groups whose rewards are all equal and draw more prompts (DAPO)",
        ),
        int("max_resample_rounds", 2, 0.0, "Extra generation rounds per batch under dynamic sampling"),
        ParamSpec::with_default(
            "reward_weights",
            ParamType::List(Box::new(ParamType::Float)),
            json!([1.0, 1.0]),
            "Weights of [correctness, format] (the shared strict extractor gives both; no length term)",
        ),
        ParamSpec::with_default("seed", ParamType::Int, json!(0), "Seed of the prompt order and the rollouts"),
        int("checkpoint_every", 20, 1.0, "Steps between checkpoints (resume is exact, so not in the key)").not_in_key(),
        int("logprob_chunk", 64, 1.0, "Positions projected onto the vocabulary at once (memory, not the result)")
            .not_in_key(),
    ]
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| {
    let mut params = trainer_params();
    params.extend([
        ParamSpec::with_default(
            "tiers",
            ParamType::List(Box::new(ParamType::Str)),
            json!(["easy", "moderate"]),
            "Difficulty tiers trained on (empty: every item; items without a tier count as moderate)",
        ),
        ParamSpec::with_default(
            "plateau_threshold",
            ParamType::Float,
            json!(0.9),
            "Stop when frac_reward_zero_std averages at least this over plateau_window steps",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::with_default(
            "plateau_window",
            ParamType::Int,
            json!(10),
            "Steps the plateau is averaged over (0: never stop early)",
        )
        .range(Some(0.0), None),
    ]);
    OpSpec {
        name: "grpo-stage1",
        version: 1,
        summary: "RL stage 1: GRPO on easy and moderate items until the reward becomes sparse (paper §3.3)",
        doc: "For each prompt the policy samples `num_generations` completions; the reward is correctness plus \
              format from the shared strict extractor (no length term); the advantage is the reward against \
              its group's mean; a clipped policy-gradient loss updates the policy (TRL's GRPOConfig names). \
              Stops at `max_steps` or when the reward has become sparse: `frac_reward_zero_std` (groups whose \
              completions all score the same) averaging `plateau_threshold` over `plateau_window` steps; the \
              manifest says which (`stop_reason`). Checkpoints give exact resume after a kill; SIGTERM saves \
              one first. One metrics row per step: reward and its components, frac_reward_zero_std, \
              all-correct and all-wrong shares, kl, entropy, clip ratios, completion lengths, truncated share, \
              grad norm, lr, step time, generation tokens/s.",
        params,
        inputs: InputPorts::Fixed(vec![
            PortSpec::model("policy", "the starting policy (usually the distilled model)"),
            PortSpec::table("questions", "training questions (difficulty-labelled: `tiers` selects)"),
        ]),
        outputs: vec![
            PortSpec::model("model", "the trained policy (safetensors, config, tokenizer)"),
            PortSpec::table("metrics", "one row per optimizer step (see the doc)"),
        ],
        execution: Execution::Worker,
        fingerprint: crate::fingerprints::grpo_stage1.to_string(),
    }
});

/// The `grpo-stage1` operator (executed by `fleming-worker`).
#[derive(Default)]
pub struct GrpoStage1;

impl Operator for GrpoStage1 {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }
}
