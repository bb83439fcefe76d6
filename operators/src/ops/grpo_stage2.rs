//! `grpo-stage2`: the second RL stage (paper §3.3) — GRPO on the hard items mined after
//! stage 1, with more rollouts per prompt, re-mining the set with the current policy as it
//! improves (an iterative curriculum). Declared here; `fleming-worker` runs it. The
//! trainer's parameters are stage 1's ([`super::grpo_stage1::trainer_params`]).

use std::sync::LazyLock;

use fleming_runtime::op::{Execution, InputPorts, OpSpec, Operator, ParamSpec, ParamType, PortSpec};
use serde_json::json;

use super::grpo_stage1::trainer_params;

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| {
    let mut params: Vec<ParamSpec> = trainer_params()
        .into_iter()
        .map(|p| {
            // Hard items need more samples for a group to hold a success (the paper's
            // larger rollout budget in stage 2).
            if p.name == "num_generations" {
                ParamSpec::with_default(
                    "num_generations",
                    ParamType::Int,
                    json!(16),
                    "Completions sampled per prompt (the group, k)",
                )
                .range(Some(2.0), None)
            } else {
                p
            }
        })
        .collect();
    params.extend([
        ParamSpec::with_default(
            "remine_every",
            ParamType::Int,
            json!(0),
            "Re-mine the hard set with the current policy every N steps (0: train on the given set only)",
        )
        .range(Some(0.0), None),
        ParamSpec::with_default(
            "replay",
            ParamType::Float,
            json!(0.0),
            "Share of the draws taken from `questions` items outside the hard set, so the policy keeps \
             rehearsing what it already answers (needs the `questions` input)",
        )
        .range(Some(0.0), Some(0.9)),
    ]);
    params.extend(super::mine_hard::mining_params());
    OpSpec {
        name: "grpo-stage2",
        version: 1,
        summary: "RL stage 2: GRPO on the mined hard items with more rollouts, re-mining as the policy improves (paper §3.3)",
        doc: "Trains the `policy` (stage 1's model) with GRPO on the `hard` items (mine-hard's output; its `weight` \
              column makes an item drawn that many times as often). Every `remine_every` steps the current \
              policy rolls out `rollouts` completions of every item of the mining pool — the `questions` input \
              when connected, else the hard set — and the items at or below `max_pass_rate` become the new \
              set: solved items leave, new failures enter (set size and churn on the next metrics row; \
              totals in the manifest). Stops at `max_steps`, or when no item is hard any more \
              (`stop_reason: solved`). With `replay` > 0 that share of the draws comes from the pool's \
              items outside the current hard set (a fresh selection at each re-mining), against forgetting \
              what the policy already answers. Same metrics, checkpoints and exact resume as stage 1; the \
              active set is saved with each checkpoint.",
        params,
        inputs: InputPorts::Fixed(vec![
            PortSpec::model("policy", "the starting policy (stage 1's model)"),
            PortSpec::table("hard", "the hard items (mine-hard's `hard`, with `weight`)"),
            PortSpec::table("questions", "the pool re-mining draws from (default: the hard set)").optional(),
        ]),
        outputs: vec![
            PortSpec::model("model", "the trained policy (safetensors, config, tokenizer)"),
            PortSpec::table("metrics", "one row per optimizer step, with hard_set, hard_entered, hard_left"),
        ],
        execution: Execution::Worker,
        fingerprint: crate::fingerprints::grpo_stage2.to_string(),
    }
});

/// The `grpo-stage2` operator (executed by `fleming-worker`).
#[derive(Default)]
pub struct GrpoStage2;

impl Operator for GrpoStage2 {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }
}
