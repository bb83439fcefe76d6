//! `grpo-stage2`: GRPO on the mined hard items with more rollouts per prompt, re-mining
//! the set with the current policy every `remine_every` steps (declared in
//! `fleming_operators::ops::grpo_stage2`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::{Array, Float64Array};
use fleming_dispatch::{WorkerSession, stop_requested};
use fleming_model::chat::question_prompt;
use fleming_model::grpo::Prompt;
use fleming_model::{Qwen2, SamplingParams, TextTokenizer, TrainEnd, generate};
use fleming_questions::Question;
use fleming_questions::mining::{HardRule, ItemRate, churn};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::WorkerOp;
use super::common::adopt_previous_run;
use super::grpo_stage1::{
    Policy, TrainerParams, grpo_trainer, load_policy, metrics_row, note_resume, reward, save_policy, split_params,
};

/// The stage's own parameters (beside the trainer's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    remine_every: u64,
    replay: f64,
    rollouts: u32,
    max_pass_rate: f64,
    tier_weights: HashMap<String, f64>,
}

/// The `grpo-stage2` operator.
pub struct GrpoStage2;

/// The replayed draws beside `hard_draws` entries of the hard set: `replay` of all draws,
/// taken from `others` (pool items outside the hard set), a different selection at each
/// `step` it is called at and without repeats while there are enough of them.
fn replay_draws(hard_draws: usize, others: &[usize], replay: f64, seed: u64, step: u64) -> Vec<usize> {
    if replay <= 0.0 || others.is_empty() {
        return vec![];
    }
    let want = (hard_draws as f64 * replay / (1.0 - replay)).round() as usize;
    let order = fleming_model::train::epoch_order(others.len(), seed ^ 0x7265_706c_6179, step);
    order.iter().cycle().take(want).map(|&i| others[i]).collect()
}

/// The pool items (indices into the run's items) that are not in the hard set `hard`.
fn outside(pool: &[usize], items: &[Question], hard: &HashSet<String>) -> Vec<usize> {
    pool.iter().copied().filter(|&i| !hard.contains(&items[i].id)).collect()
}

/// What one re-mining found.
struct Mined {
    active: Vec<usize>,
    ids: HashSet<String>,
}

/// Rolls the policy out `rollouts` times on each pool item and keeps the hard ones, each
/// listed as many times as its weight (rounded, at least once).
#[allow(clippy::too_many_arguments)]
fn mine(
    policy: &Qwen2,
    prompts: &[Prompt],
    items: &[Question],
    pool: &[usize],
    tokenizer: &TextTokenizer,
    rule: &HardRule,
    rollouts: u32,
    sampling: &SamplingParams,
    pad_id: i64,
) -> anyhow::Result<Mined> {
    let mut active = Vec::new();
    let mut ids = HashSet::new();
    // A few items at a time: one batch holds `rollouts` sequences per item.
    let per_batch = (64 / rollouts.max(1) as usize).max(1);
    for chunk in pool.chunks(per_batch) {
        let seqs: Vec<Vec<i64>> =
            chunk.iter().flat_map(|&i| std::iter::repeat_n(prompts[i].tokens.clone(), rollouts as usize)).collect();
        let mut params = sampling.clone();
        params.seed ^= chunk[0] as u64;
        let generated = generate(policy, &seqs, &params, pad_id)?;
        for (&i, group) in chunk.iter().zip(generated.chunks(rollouts as usize)) {
            let correct =
                group.iter().filter(|g| reward(tokenizer, &items[i], &g.tokens, g.truncated)[0] >= 1.0).count();
            let rate = ItemRate { rollouts, correct: correct as u32, difficulty: items[i].difficulty.clone() };
            if let Some(w) = rule.weight(&rate) {
                active.extend(std::iter::repeat_n(i, (w.round() as usize).max(1)));
                ids.insert(items[i].id.clone());
            }
        }
    }
    Ok(Mined { active, ids })
}

impl WorkerOp for GrpoStage2 {
    fn name(&self) -> &'static str {
        "grpo-stage2"
    }

    fn run(&self, s: &WorkerSession) -> anyhow::Result<Map<String, Value>> {
        let (params, trainer_params): (Params, TrainerParams) =
            split_params(s, &["remine_every", "replay", "rollouts", "max_pass_rate", "tier_weights"])?;
        let cfg = trainer_params.config()?;
        s.catch_stop_signals();
        let hard_batch = s.input_table("hard", 0)?.concat()?;
        let hard = fleming_questions::table::from_batches([&hard_batch], "unknown").context("reading `hard`")?;
        let weights: Vec<f64> =
            match hard_batch.column_by_name("weight").and_then(|c| c.as_any().downcast_ref::<Float64Array>()) {
                Some(w) => (0..w.len()).map(|i| if w.is_valid(i) { w.value(i) } else { 1.0 }).collect(),
                None => vec![1.0; hard.len()],
            };
        // Every item the run may train on: the hard set, then the mining pool's others.
        let mut items: Vec<Question> = hard.clone();
        let mut seen: HashSet<String> = hard.iter().map(|q| q.id.clone()).collect();
        let remine_pool_given = s.has_input("questions");
        if remine_pool_given {
            let batch = s.input_table("questions", 0)?.concat()?;
            for q in fleming_questions::table::from_batches([&batch], "unknown").context("reading `questions`")? {
                if seen.insert(q.id.clone()) {
                    items.push(q);
                }
            }
        }
        if hard.is_empty() {
            bail!("the hard set is empty: stage 1's policy solves every item it was mined on; nothing to train on");
        }
        if params.replay > 0.0 && !remine_pool_given {
            bail!("replay: {} needs the `questions` input (the items to replay)", params.replay);
        }
        let continued = adopt_previous_run(s)?;
        let Policy { model: mut policy, reference, tokenizer } = load_policy(s, cfg.beta)?;
        let prompts: Vec<Prompt> = items
            .iter()
            .map(|q| Ok(Prompt { tokens: tokenizer.encode(&question_prompt(q))? }))
            .collect::<fleming_model::Result<_>>()?;
        if let Some(i) = prompts.iter().position(|p| p.tokens.len() > cfg.max_prompt_length) {
            bail!(
                "item `{}` has a {}-token prompt, over max_prompt_length {}",
                items[i].id,
                prompts[i].tokens.len(),
                cfg.max_prompt_length
            );
        }
        // The mining pool: the `questions` input when connected, else the hard set.
        let pool: Vec<usize> = if remine_pool_given { (0..items.len()).collect() } else { (0..hard.len()).collect() };
        let rule = HardRule {
            max_pass_rate: params.max_pass_rate,
            tier_weights: params.tier_weights.clone().into_iter().collect(),
        };
        let sampling = SamplingParams {
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            top_k: 0,
            max_new_tokens: cfg.max_completion_length,
            stop_token_ids: tokenizer.stop_ids(),
            seed: cfg.seed,
        };
        let (max_steps, every) = (cfg.max_steps, params.remine_every);
        let mut trainer = grpo_trainer(s, &mut policy, reference.as_ref(), &tokenizer, &prompts, cfg)?;
        let mut current: HashSet<String> = hard.iter().map(|q| q.id.clone()).collect();
        let seed = trainer.cfg.seed;
        if trainer.state.active.is_none() {
            let initial: Vec<usize> = (0..hard.len())
                .flat_map(|i| std::iter::repeat_n(i, (weights.get(i).copied().unwrap_or(1.0).round() as usize).max(1)))
                .collect();
            let replay = replay_draws(initial.len(), &outside(&pool, &items, &current), params.replay, seed, 0);
            trainer.set_active_with_replay(initial, replay)?;
        } else if let Some(a) = trainer.state.active_set() {
            current = a.iter().map(|&i| items[i].id.clone()).collect();
        }
        let mut summary = Map::new();
        summary.insert("hard_items".into(), json!(hard.len()));
        summary.insert("mining_pool".into(), json!(pool.len()));
        note_resume(s, "grpo-stage2", trainer.state.step, max_steps, continued, &mut summary)?;
        let dev = trainer.policy().device();
        s.log("info", &format!("grpo-stage2: {} hard items, pool of {}, on {dev:?}", hard.len(), pool.len()));
        let start = Instant::now();
        let mut score = |i: usize, tokens: &[i64], truncated: bool| reward(&tokenizer, &items[i], tokens, truncated);
        let (mut rounds, mut entered_total, mut left_total) = (0u64, 0usize, 0usize);
        // The churn of the last re-mining goes on the next step's metrics row.
        let mut pending: Option<(usize, usize, usize)> = None;
        let mut stop_reason = "max_steps";
        loop {
            let step = trainer.state.step;
            let due = every > 0 && step > 0 && step.is_multiple_of(every) && trainer.state.active_since < step;
            if due && step < max_steps {
                let mut sampling = sampling.clone();
                sampling.seed ^= step << 24;
                let mined = mine(
                    trainer.policy(),
                    &prompts,
                    &items,
                    &pool,
                    &tokenizer,
                    &rule,
                    params.rollouts,
                    &sampling,
                    tokenizer.pad_id(),
                )?;
                let (entered, left) = churn(&current, &mined.ids);
                rounds += 1;
                entered_total += entered;
                left_total += left;
                s.log(
                    "info",
                    &format!(
                        "grpo-stage2: re-mined at step {step}: {} hard ({entered} entered, {left} left)",
                        mined.ids.len()
                    ),
                );
                pending = Some((mined.ids.len(), entered, left));
                current = mined.ids;
                if mined.active.is_empty() {
                    stop_reason = "solved";
                    break;
                }
                let others = outside(&pool, &items, &current);
                // Seeded by the step, so a resumed run replays the same items.
                let replay = replay_draws(mined.active.len(), &others, params.replay, seed, step);
                trainer.set_active_with_replay(mined.active, replay)?;
                trainer.checkpoint()?;
            }
            if trainer.state.step >= max_steps {
                break;
            }
            let end = trainer.train(&mut score, stop_requested, |m| {
                let mut row = metrics_row(m);
                let (size, entered, left) = pending.take().unwrap_or((current.len(), 0, 0));
                row.insert("hard_set".into(), json!(size));
                row.insert("hard_entered".into(), json!(entered));
                row.insert("hard_left".into(), json!(left));
                s.metrics(Some(m.step), row).map_err(|e| fleming_model::ModelError::Invalid(format!("{e:#}")))?;
                s.progress(m.step, Some(max_steps), "steps");
                Ok(!(every > 0 && m.step.is_multiple_of(every)))
            })?;
            if let TrainEnd::Stopped { step } = end {
                bail!("stopped by a signal; the checkpoint at step {step} is saved and the next run resumes from it");
            }
        }
        let steps = trainer.state.step;
        summary.insert("replay_draws".into(), json!(trainer.state.replayed));
        drop(trainer);
        summary.insert("stop_reason".into(), json!(stop_reason));
        summary.insert("steps".into(), json!(steps));
        summary.insert("remine_rounds".into(), json!(rounds));
        summary.insert("hard_entered".into(), json!(entered_total));
        summary.insert("hard_left".into(), json!(left_total));
        summary.insert("final_hard_set".into(), json!(current.len()));
        save_policy(s, &policy, &tokenizer, start, &mut summary)?;
        Ok(summary)
    }
}
