//! GRPO (group relative policy optimisation, Fleming-R1 §3.3): for each prompt the
//! policy samples `num_generations` completions, a caller-given reward scores each, the
//! advantage is the reward against its group's mean, and a PPO-style clipped loss moves
//! the policy toward the better completions. No value model, no length term.
//!
//! Parameters carry Hugging Face TRL's `GRPOConfig` names. The optimizer, schedule and
//! checkpoints (exact resume: weights, moments, data position; the sampling seeds are a
//! function of the step) are [`crate::train`]'s, shared with SFT. The trainer knows no
//! question format: rewards come from a closure over the completion's tokens.

pub mod loss;

use crate::generate::{SamplingParams, generate};
use crate::qwen2::Qwen2;
use crate::train::{AdamW, AdamWParams, Checkpoints, Schedule, TrainEnd, epoch_order};
use crate::{Result, invalid};
use loss::{LossParams, LossSums, StepTotals};
pub use loss::{LossType, ScaleRewards};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Hyper-parameters of a GRPO run (TRL's `GRPOConfig` names where one exists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpoConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Final learning rate of the cosine as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Linear warm-up, in optimizer steps.
    pub warmup_steps: u64,
    /// Optimizer steps of the run.
    pub max_steps: u64,
    /// Clip the global gradient norm to this (0 disables).
    pub max_grad_norm: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Adam β1.
    pub adam_beta1: f64,
    /// Adam β2.
    pub adam_beta2: f64,
    /// Adam ε.
    pub adam_epsilon: f64,
    /// Prompts per generation batch (TRL: the generation batch over `num_generations`).
    pub prompts_per_step: usize,
    /// Completions sampled per prompt (the group, k).
    pub num_generations: usize,
    /// Sequences per forward/backward pass (TRL's `per_device_train_batch_size`).
    pub per_device_train_batch_size: usize,
    /// Tokens generated at most per completion.
    pub max_completion_length: usize,
    /// Longer prompts are refused (they would not fit with their completion).
    pub max_prompt_length: usize,
    /// Sampling temperature of the rollouts.
    pub temperature: f64,
    /// Nucleus mass of the rollouts.
    pub top_p: f64,
    /// Optimizer updates per generated batch (PPO-style reuse; 1: on-policy).
    pub num_iterations: usize,
    /// Lower clip of the ratio.
    pub epsilon: f64,
    /// Upper clip of the ratio (clip-higher; equal to `epsilon` for symmetric clipping).
    pub epsilon_high: f64,
    /// How token losses are averaged.
    pub loss_type: LossType,
    /// How advantages are scaled.
    pub scale_rewards: ScaleRewards,
    /// KL coefficient to the frozen reference (0: no reference is kept).
    pub beta: f64,
    /// Completions that hit `max_completion_length` without a stop token get no loss.
    pub mask_truncated_completions: bool,
    /// Drop groups whose rewards are all equal (no signal) and draw more prompts.
    pub dynamic_sampling: bool,
    /// Extra generation rounds a step may draw to fill its batch under dynamic sampling.
    pub max_resample_rounds: usize,
    /// Weight of each reward component (the reward is their weighted sum); the first
    /// component is correctness (the all-correct and all-wrong shares read it).
    pub reward_weights: Vec<f64>,
    /// Seed of the prompt order and of the rollouts.
    pub seed: u64,
    /// Positions projected onto the vocabulary at once when computing log-probabilities.
    pub logprob_chunk: usize,
    /// Save a checkpoint every N optimizer steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            learning_rate: 1e-6,
            min_lr_ratio: 1.0,
            warmup_steps: 0,
            max_steps: 100,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            prompts_per_step: 8,
            num_generations: 8,
            per_device_train_batch_size: 8,
            max_completion_length: 256,
            max_prompt_length: 512,
            temperature: 1.0,
            top_p: 1.0,
            num_iterations: 1,
            epsilon: 0.2,
            epsilon_high: 0.2,
            loss_type: LossType::Grpo,
            scale_rewards: ScaleRewards::None,
            beta: 0.0,
            mask_truncated_completions: false,
            dynamic_sampling: false,
            max_resample_rounds: 2,
            reward_weights: vec![1.0, 1.0],
            seed: 0,
            logprob_chunk: 64,
            checkpoint_every: 50,
            keep_checkpoints: 2,
        }
    }
}

impl GrpoConfig {
    /// Refuses settings no run can use.
    pub fn validate(&self) -> Result<()> {
        if self.num_generations < 2 {
            return Err(invalid!("num_generations must be at least 2 (a group needs a mean to compare with)"));
        }
        if self.prompts_per_step == 0 || self.per_device_train_batch_size == 0 || self.num_iterations == 0 {
            return Err(invalid!("prompts_per_step, per_device_train_batch_size and num_iterations must be positive"));
        }
        if self.max_completion_length == 0 {
            return Err(invalid!("max_completion_length must be positive"));
        }
        if !(self.epsilon >= 0.0 && self.epsilon_high >= 0.0 && self.beta >= 0.0) {
            return Err(invalid!("epsilon, epsilon_high and beta must be >= 0"));
        }
        if self.reward_weights.is_empty() {
            return Err(invalid!("reward_weights is empty"));
        }
        Ok(())
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            lr: self.learning_rate,
            min_lr_ratio: self.min_lr_ratio,
            warmup_steps: self.warmup_steps,
            total_steps: self.max_steps,
        }
    }

    fn adamw(&self) -> AdamWParams {
        AdamWParams {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
        }
    }
}

/// One prompt of the training set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Its tokens (the chat prompt ending with the open assistant turn).
    pub tokens: Vec<i64>,
}

/// One completion and its reward, as the reward closure and the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Index of the prompt in the training set.
    pub prompt: usize,
    /// Sampled tokens (with the stop token when one ended it).
    pub tokens: Vec<i64>,
    /// It hit `max_completion_length` without a stop token.
    pub truncated: bool,
    /// The reward's components, in `reward_weights` order.
    pub components: Vec<f64>,
    /// The weighted sum.
    pub reward: f64,
}

/// Where a run stands; with the weights and moments, all an exact resume needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrpoState {
    /// Optimizer steps done.
    pub step: u64,
    /// Current pass over the prompts.
    pub epoch: u64,
    /// Prompts of the current pass already drawn.
    pub cursor: u64,
    /// Generation batches done (seeds the next batch's sampling).
    pub batches: u64,
    /// The prompts drawn from, as indices into the training set (an index listed twice is
    /// drawn twice as often); `None`: every prompt once. Set by [`GrpoTrainer::set_active`]
    /// (stage 2's re-mining) and saved with checkpoints.
    #[serde(default)]
    pub active: Option<Vec<usize>>,
    /// The step at which `active` was last set.
    #[serde(default)]
    pub active_since: u64,
    /// How many entries at the end of `active` are rehearsal draws beside the set itself
    /// (see [`GrpoTrainer::set_active_with_replay`]).
    #[serde(default)]
    pub replayed: usize,
}

impl GrpoState {
    /// The active set without its rehearsal draws (`None`: every prompt).
    pub fn active_set(&self) -> Option<&[usize]> {
        self.active.as_deref().map(|a| &a[..a.len().saturating_sub(self.replayed)])
    }
}

/// The metrics of one optimizer step (TRL's names where it logs the same thing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GrpoMetrics {
    /// Optimizer steps done.
    pub step: u64,
    /// The loss of the step.
    pub loss: f64,
    /// Mean reward of the batch's completions.
    pub reward: f64,
    /// Standard deviation of the batch's rewards.
    pub reward_std: f64,
    /// Mean of each reward component.
    pub rewards: Vec<f64>,
    /// Share of groups whose rewards are all equal (no learning signal).
    pub frac_reward_zero_std: f64,
    /// Share of groups whose completions are all correct (first reward component 1).
    pub all_correct: f64,
    /// Share of groups whose completions are all wrong (first reward component 0).
    pub all_wrong: f64,
    /// Mean KL to the reference (k3), when `beta > 0`.
    pub kl: Option<f64>,
    /// Mean per-token entropy of the policy on the completions.
    pub entropy: f64,
    /// Share of tokens clipped below / above / either.
    pub clip_ratio_low: f64,
    /// Share of tokens clipped above.
    pub clip_ratio_high: f64,
    /// Share of tokens clipped either way.
    pub clip_ratio_region: f64,
    /// Completion length in tokens: mean, min, max.
    pub completion_length: f64,
    /// Shortest completion.
    pub completion_length_min: u64,
    /// Longest completion.
    pub completion_length_max: u64,
    /// Share of completions that hit `max_completion_length`.
    pub truncated: f64,
    /// Groups dropped for zero reward spread (dynamic sampling).
    pub groups_dropped: u64,
    /// Groups trained on.
    pub groups: u64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Seconds of the step (generation included).
    pub step_time: f64,
    /// Generated tokens per second of the rollouts.
    pub generation_tokens_per_s: f64,
}

/// A GRPO run over a fixed set of prompts, checkpointed under `dir`.
pub struct GrpoTrainer<'a> {
    policy: &'a mut Qwen2,
    reference: Option<&'a Qwen2>,
    prompts: &'a [Prompt],
    /// The run's hyper-parameters.
    pub cfg: GrpoConfig,
    opt: AdamW,
    /// Where the run stands.
    pub state: GrpoState,
    order: Vec<usize>,
    checkpoints: Checkpoints,
    pad_id: i64,
    stop_token_ids: Vec<i64>,
}

/// A generated batch ready for the loss: groups of rollouts with their advantages.
struct Batch {
    rollouts: Vec<Rollout>,
    advantages: Vec<f64>,
    groups_dropped: u64,
    zero_std_groups: u64,
    all_correct: u64,
    all_wrong: u64,
    groups_seen: u64,
    generated_tokens: u64,
    generation_secs: f64,
}

impl<'a> GrpoTrainer<'a> {
    /// A trainer that resumes from `dir/checkpoints/latest` when one exists. `reference`
    /// is required when `beta > 0` (load it once; it is never updated). Completions end
    /// at any of `stop_token_ids`.
    pub fn new(
        policy: &'a mut Qwen2,
        reference: Option<&'a Qwen2>,
        prompts: &'a [Prompt],
        cfg: GrpoConfig,
        dir: &Path,
        pad_id: i64,
        stop_token_ids: Vec<i64>,
    ) -> Result<Self> {
        cfg.validate()?;
        if prompts.is_empty() {
            return Err(invalid!("no training prompts"));
        }
        if cfg.beta > 0.0 && reference.is_none() {
            return Err(invalid!("beta > 0 needs a reference model"));
        }
        if let Some(p) = prompts.iter().position(|p| p.tokens.is_empty() || p.tokens.len() > cfg.max_prompt_length) {
            return Err(invalid!(
                "prompt {p} has {} tokens (allowed: 1 to max_prompt_length = {})",
                prompts[p].tokens.len(),
                cfg.max_prompt_length
            ));
        }
        policy.set_requires_grad(true)?;
        let mut opt = AdamW::new(policy, cfg.adamw())?;
        let checkpoints = Checkpoints::new(dir, cfg.keep_checkpoints);
        let state: GrpoState = checkpoints.restore(policy, &mut opt)?.unwrap_or_default();
        let mut t = GrpoTrainer {
            policy,
            reference,
            prompts,
            cfg,
            opt,
            state,
            order: vec![],
            checkpoints,
            pad_id,
            stop_token_ids,
        };
        t.order = t.pool_order();
        Ok(t)
    }

    /// Draws from `active` (indices into the training set, repeats weigh more) from now
    /// on, starting a new pass over it.
    pub fn set_active(&mut self, active: Vec<usize>) -> Result<()> {
        self.set_active_with_replay(active, vec![])
    }

    /// Like [`GrpoTrainer::set_active`], with `replay` (indices outside the set) drawn
    /// beside it; [`GrpoState::active_set`] tells the set from them after a resume.
    pub fn set_active_with_replay(&mut self, mut active: Vec<usize>, replay: Vec<usize>) -> Result<()> {
        let replayed = replay.len();
        active.extend(replay);
        if active.is_empty() {
            return Err(invalid!("the active set is empty"));
        }
        if let Some(bad) = active.iter().find(|&&i| i >= self.prompts.len()) {
            return Err(invalid!("active prompt {bad} is outside the {} prompts", self.prompts.len()));
        }
        self.state.active = Some(active);
        self.state.replayed = replayed;
        self.state.active_since = self.state.step;
        self.state.epoch += 1;
        self.state.cursor = 0;
        self.order = self.pool_order();
        Ok(())
    }

    /// The current pass's order of prompt indices.
    fn pool_order(&self) -> Vec<usize> {
        match &self.state.active {
            Some(pool) => {
                epoch_order(pool.len(), self.cfg.seed, self.state.epoch).into_iter().map(|i| pool[i]).collect()
            }
            None => epoch_order(self.prompts.len(), self.cfg.seed, self.state.epoch),
        }
    }

    /// The policy being trained.
    pub fn policy(&self) -> &Qwen2 {
        self.policy
    }

    fn next_prompts(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.state.cursor as usize >= self.order.len() {
                self.state.epoch += 1;
                self.state.cursor = 0;
                self.order = self.pool_order();
            }
            out.push(self.order[self.state.cursor as usize]);
            self.state.cursor += 1;
        }
        out
    }

    /// Samples groups for the next prompts and scores them with `reward`; under dynamic
    /// sampling, groups without reward spread are dropped and more prompts drawn, up to
    /// `max_resample_rounds` extra rounds.
    fn generate_batch(&mut self, reward: &mut impl FnMut(usize, &[i64], bool) -> Vec<f64>) -> Result<Batch> {
        let k = self.cfg.num_generations;
        let weights = self.cfg.reward_weights.clone();
        let mut b = Batch {
            rollouts: vec![],
            advantages: vec![],
            groups_dropped: 0,
            zero_std_groups: 0,
            all_correct: 0,
            all_wrong: 0,
            groups_seen: 0,
            generated_tokens: 0,
            generation_secs: 0.0,
        };
        let mut round = 0;
        while b.rollouts.len() < self.cfg.prompts_per_step * k {
            let want = self.cfg.prompts_per_step - b.rollouts.len() / k;
            let idx = self.next_prompts(want);
            let seqs: Vec<Vec<i64>> =
                idx.iter().flat_map(|&i| std::iter::repeat_n(self.prompts[i].tokens.clone(), k)).collect();
            let params = SamplingParams {
                temperature: self.cfg.temperature,
                top_p: self.cfg.top_p,
                top_k: 0,
                max_new_tokens: self.cfg.max_completion_length,
                stop_token_ids: self.stop_token_ids.clone(),
                // A function of the run and its position: a resumed run samples the same.
                seed: self.cfg.seed ^ (self.state.batches << 20) ^ round as u64,
            };
            let start = Instant::now();
            let generated = generate(self.policy, &seqs, &params, self.pad_id)?;
            b.generation_secs += start.elapsed().as_secs_f64();
            for (g, &p) in generated.chunks(k).zip(&idx) {
                let group: Vec<Rollout> = g
                    .iter()
                    .map(|c| {
                        let components = reward(p, &c.tokens, c.truncated);
                        let r = components.iter().zip(&weights).map(|(c, w)| c * w).sum();
                        Rollout { prompt: p, tokens: c.tokens.clone(), truncated: c.truncated, components, reward: r }
                    })
                    .collect();
                b.generated_tokens += group.iter().map(|r| r.tokens.len() as u64).sum::<u64>();
                b.groups_seen += 1;
                let first = group[0].reward;
                let flat = group.iter().all(|r| r.reward == first);
                if flat {
                    b.zero_std_groups += 1;
                }
                let correctness = |r: &Rollout| r.components.first().copied().unwrap_or(0.0);
                b.all_correct += group.iter().all(|r| correctness(r) >= 1.0) as u64;
                b.all_wrong += group.iter().all(|r| correctness(r) <= 0.0) as u64;
                let last_round = round >= self.cfg.max_resample_rounds;
                if flat && self.cfg.dynamic_sampling && !last_round {
                    b.groups_dropped += 1;
                    continue;
                }
                b.rollouts.extend(group);
            }
            round += 1;
            if !self.cfg.dynamic_sampling {
                break;
            }
        }
        self.state.batches += 1;
        let rewards: Vec<f64> = b.rollouts.iter().map(|r| r.reward).collect();
        b.advantages = loss::advantages(&rewards, k, self.cfg.scale_rewards)?;
        Ok(b)
    }

    /// Right-padded `prompt + completion` ids and the loss mask over targets.
    fn collate(&self, rollouts: &[&Rollout]) -> Result<(Tensor, Tensor)> {
        let seqs: Vec<(Vec<i64>, usize, bool)> = rollouts
            .iter()
            .map(|r| {
                let p = &self.prompts[r.prompt].tokens;
                let s: Vec<i64> = p.iter().chain(&r.tokens).copied().collect();
                let counts = !(r.truncated && self.cfg.mask_truncated_completions);
                (s, p.len(), counts)
            })
            .collect();
        let len = seqs.iter().map(|(s, _, _)| s.len()).max().unwrap_or(2).max(2);
        let mut ids = Vec::with_capacity(seqs.len() * len);
        let mut mask = Vec::with_capacity(seqs.len() * (len - 1));
        for (s, plen, counts) in &seqs {
            ids.extend(s.iter().copied().chain(std::iter::repeat_n(self.pad_id, len - s.len())));
            // Target j is token j + 1: completion tokens are targets plen − 1 .. s.len() − 2.
            mask.extend((0..len - 1).map(|j| (*counts && j + 1 >= *plen && j + 1 < s.len()) as u8 as f32));
        }
        let n = seqs.len() as i64;
        let dev = self.policy.device();
        Ok((
            Tensor::from_slice(&ids).view([n, len as i64]).to_device(dev),
            Tensor::from_slice(&mask).view([n, len as i64 - 1]).to_device(dev),
        ))
    }

    /// Log-probabilities of `ids` under `model` without gradient, micro-batch by micro-batch.
    fn frozen_logprobs(&self, model: &Qwen2, ids: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| -> Result<Tensor> {
            let n = ids.size()[0];
            let mb = self.cfg.per_device_train_batch_size as i64;
            let mut parts = vec![];
            let mut s = 0;
            while s < n {
                let m = mb.min(n - s);
                parts.push(
                    loss::token_logprobs(model, &ids.f_narrow(0, s, m)?, self.cfg.logprob_chunk as i64, false)?.0,
                );
                s += m;
            }
            Ok(Tensor::f_cat(&parts, 0)?)
        })
    }

    /// Generates one batch and runs `num_iterations` optimizer steps on it; returns
    /// each step's metrics.
    pub fn train_batch(
        &mut self,
        reward: &mut impl FnMut(usize, &[i64], bool) -> Vec<f64>,
    ) -> Result<Vec<GrpoMetrics>> {
        let start = Instant::now();
        let batch = self.generate_batch(reward)?;
        let mut out = Vec::new();
        let groups = (batch.rollouts.len() / self.cfg.num_generations) as u64;
        let lengths: Vec<u64> = batch.rollouts.iter().map(|r| r.tokens.len() as u64).collect();
        let n_roll = batch.rollouts.len().max(1) as f64;
        let mut common = GrpoMetrics {
            reward: batch.rollouts.iter().map(|r| r.reward).sum::<f64>() / n_roll,
            reward_std: loss::std_dev(&batch.rollouts.iter().map(|r| r.reward).collect::<Vec<_>>()),
            rewards: (0..self.cfg.reward_weights.len())
                .map(|c| {
                    batch.rollouts.iter().map(|r| r.components.get(c).copied().unwrap_or(0.0)).sum::<f64>() / n_roll
                })
                .collect(),
            frac_reward_zero_std: batch.zero_std_groups as f64 / batch.groups_seen.max(1) as f64,
            all_correct: batch.all_correct as f64 / batch.groups_seen.max(1) as f64,
            all_wrong: batch.all_wrong as f64 / batch.groups_seen.max(1) as f64,
            completion_length: lengths.iter().sum::<u64>() as f64 / n_roll,
            completion_length_min: lengths.iter().copied().min().unwrap_or(0),
            completion_length_max: lengths.iter().copied().max().unwrap_or(0),
            truncated: batch.rollouts.iter().filter(|r| r.truncated).count() as f64 / n_roll,
            groups_dropped: batch.groups_dropped,
            groups,
            generation_tokens_per_s: batch.generated_tokens as f64 / batch.generation_secs.max(1e-9),
            ..Default::default()
        };
        if batch.rollouts.is_empty() {
            // Every group was flat even after resampling: nothing to learn from this batch.
            common.step = self.state.step;
            common.step_time = start.elapsed().as_secs_f64();
            return Ok(vec![common]);
        }
        let refs: Vec<&Rollout> = batch.rollouts.iter().collect();
        let (ids, mask) = self.collate(&refs)?;
        let adv = Tensor::from_slice(&batch.advantages.iter().map(|&a| a as f32).collect::<Vec<_>>())
            .to_device(self.policy.device());
        // The policy that generated the batch: its log-probabilities are only needed when
        // the batch is reused (with one iteration the ratio is exactly 1, and its
        // gradient is the policy gradient).
        let old = if self.cfg.num_iterations > 1 { Some(self.frozen_logprobs(self.policy, &ids)?) } else { None };
        let reference = match self.reference {
            Some(r) if self.cfg.beta > 0.0 => Some(self.frozen_logprobs(r, &ids)?),
            _ => None,
        };
        let totals = StepTotals {
            sequences: batch.rollouts.len(),
            tokens: mask.f_sum(Kind::Float)?.f_double_value(&[])?,
            max_completion_length: self.cfg.max_completion_length,
        };
        let params = LossParams {
            epsilon: self.cfg.epsilon,
            epsilon_high: self.cfg.epsilon_high,
            beta: self.cfg.beta,
            loss_type: self.cfg.loss_type,
        };
        let n = ids.size()[0];
        let mb = self.cfg.per_device_train_batch_size as i64;
        for _ in 0..self.cfg.num_iterations {
            if self.state.step >= self.cfg.max_steps {
                break;
            }
            let step_start = Instant::now();
            self.opt.zero_grad();
            let (mut loss_sum, mut sums, mut entropy_sum) = (0.0, LossSums::default(), 0.0);
            let mut s = 0;
            while s < n {
                let m = mb.min(n - s);
                let ids_mb = ids.f_narrow(0, s, m)?;
                let mask_mb = mask.f_narrow(0, s, m)?;
                let old_mb = old.as_ref().map(|o| o.f_narrow(0, s, m)).transpose()?;
                let ref_mb = reference.as_ref().map(|r| r.f_narrow(0, s, m)).transpose()?;
                let adv_mb = adv.f_narrow(0, s, m)?;
                let (l, st, ent) = loss::backward_in_chunks(
                    self.policy,
                    &ids_mb,
                    &mask_mb,
                    &adv_mb,
                    old_mb.as_ref(),
                    ref_mb.as_ref(),
                    &params,
                    &totals,
                    self.cfg.logprob_chunk as i64,
                )?;
                loss_sum += l;
                entropy_sum += ent;
                sums.clipped_low += st.clipped_low;
                sums.clipped_high += st.clipped_high;
                sums.kl += st.kl;
                sums.tokens += st.tokens;
                s += m;
            }
            if !loss_sum.is_finite() {
                return Err(invalid!("loss is not finite at step {}", self.state.step + 1));
            }
            let grad_norm = self.opt.clip_grad_norm(self.cfg.max_grad_norm)?;
            let lr = self.cfg.schedule().lr_at(self.state.step);
            self.state.step += 1;
            self.opt.step(lr, self.state.step)?;
            self.opt.zero_grad();
            let tokens = sums.tokens.max(1.0);
            let mut row = common.clone();
            row.step = self.state.step;
            row.loss = loss_sum;
            row.entropy = entropy_sum / tokens;
            row.kl = (self.cfg.beta > 0.0).then_some(sums.kl / tokens);
            row.clip_ratio_low = sums.clipped_low / tokens;
            row.clip_ratio_high = sums.clipped_high / tokens;
            row.clip_ratio_region = (sums.clipped_low + sums.clipped_high) / tokens;
            row.grad_norm = grad_norm;
            row.lr = lr;
            // The first update of a batch carries its generation time.
            row.step_time =
                if out.is_empty() { start.elapsed().as_secs_f64() } else { step_start.elapsed().as_secs_f64() };
            out.push(row);
        }
        Ok(out)
    }

    /// Trains until `max_steps`, or until `on_step` (given each step's metrics) returns
    /// false (a plateau), calling it after each step and checkpointing every `checkpoint_every`
    /// steps and at the end. A checkpoint is only taken between generated batches, so a
    /// resumed run continues the same curve.
    pub fn train(
        &mut self,
        reward: &mut impl FnMut(usize, &[i64], bool) -> Vec<f64>,
        should_stop: impl Fn() -> bool,
        mut on_step: impl FnMut(&GrpoMetrics) -> Result<bool>,
    ) -> Result<TrainEnd> {
        let mut saved_at = self.state.step;
        while self.state.step < self.cfg.max_steps {
            if should_stop() {
                if saved_at != self.state.step {
                    self.checkpoint()?;
                }
                return Ok(TrainEnd::Stopped { step: self.state.step });
            }
            let before = self.state.step;
            let rows = self.train_batch(reward)?;
            let mut go_on = true;
            for r in &rows {
                go_on &= on_step(r)?;
            }
            let every = self.cfg.checkpoint_every;
            let crossed = every > 0 && (before / every) != (self.state.step / every);
            if crossed || self.state.step >= self.cfg.max_steps || !go_on {
                self.checkpoint()?;
                saved_at = self.state.step;
            }
            if !go_on {
                return Ok(TrainEnd::Finished);
            }
        }
        Ok(TrainEnd::Finished)
    }

    /// Saves weights, moments and state (see [`Checkpoints::save`]).
    pub fn checkpoint(&self) -> Result<PathBuf> {
        self.checkpoints.save(self.state.step, self.policy, &self.opt, &self.state, "grpo_config.json", &self.cfg)
    }
}
