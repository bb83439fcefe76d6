//! Supervised fine-tuning: loss on completion tokens only, gradient accumulation, and
//! the optimizer, schedule and checkpoints of [`crate::train`] (exact resume).

use crate::qwen2::{Qwen2, check_finite};
use crate::train::{AdamW, AdamWParams, Checkpoints, Schedule, epoch_order};
pub use crate::train::{TrainEnd, latest_checkpoint};
use crate::{Result, invalid};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// One training example: the prompt (no loss) and the completion (loss).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Prompt tokens (context only).
    pub prompt: Vec<i64>,
    /// Completion tokens (the loss is taken on these).
    pub completion: Vec<i64>,
}

/// Hyper-parameters of an SFT run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SftConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Optimizer steps in the run (the cosine ends here).
    pub total_steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (0 disables).
    pub max_grad_norm: f64,
    /// Decoupled weight decay on matrices (not on norms or biases).
    pub weight_decay: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Save a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Seed of the data order.
    pub seed: u64,
    /// Longer examples are cut to this many tokens.
    pub max_len: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 20,
            total_steps: 1000,
            batch_size: 16,
            grad_accum: 1,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            seed: 0,
            max_len: 512,
        }
    }
}

impl SftConfig {
    /// The learning-rate schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            lr: self.lr,
            min_lr_ratio: self.min_lr_ratio,
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
        }
    }

    /// Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.schedule().lr_at(step)
    }

    /// AdamW's constants.
    pub fn adamw(&self) -> AdamWParams {
        AdamWParams { beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay }
    }
}

/// One row of training metrics, emitted after every optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Optimizer steps done (1 after the first).
    pub step: u64,
    /// Mean loss per completion token over the step.
    pub loss: f64,
    /// Learning rate used for the step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed in the step (prompt + completion, no padding).
    pub tokens: u64,
    /// Throughput of the step.
    pub tokens_per_s: f64,
}

/// Where the data order stands; with the weights and moments, all a resume needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Current pass over the data.
    pub epoch: u64,
    /// Examples of the current epoch already consumed.
    pub cursor: u64,
}

/// An SFT run over a fixed set of examples, checkpointed under `dir`.
pub struct SftTrainer<'a> {
    model: &'a mut Qwen2,
    examples: &'a [Example],
    /// The run's hyper-parameters.
    pub cfg: SftConfig,
    opt: AdamW,
    /// Where the run stands.
    pub state: TrainState,
    order: Vec<usize>,
    checkpoints: Checkpoints,
    pad_id: i64,
}

impl<'a> SftTrainer<'a> {
    /// A trainer that resumes from `dir/checkpoints/latest` when one exists
    /// (weights, moments, step and data position), else starts at step 0.
    pub fn new(model: &'a mut Qwen2, examples: &'a [Example], cfg: SftConfig, dir: &Path, pad_id: i64) -> Result<Self> {
        if examples.is_empty() {
            return Err(invalid!("no training examples"));
        }
        if cfg.batch_size == 0 || cfg.grad_accum == 0 {
            return Err(invalid!("batch_size and grad_accum must be positive"));
        }
        model.set_requires_grad(true)?;
        let mut opt = AdamW::new(model, cfg.adamw())?;
        let checkpoints = Checkpoints::new(dir, cfg.keep_checkpoints);
        let state = checkpoints.restore(model, &mut opt)?.unwrap_or_default();
        let mut t = SftTrainer { model, examples, cfg, opt, state, order: vec![], checkpoints, pad_id };
        t.order = epoch_order(t.examples.len(), t.cfg.seed, t.state.epoch);
        Ok(t)
    }

    /// The model being trained.
    pub fn model(&self) -> &Qwen2 {
        self.model
    }

    fn next_batch(&mut self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.cfg.batch_size);
        while out.len() < self.cfg.batch_size {
            if self.state.cursor as usize >= self.order.len() {
                self.state.epoch += 1;
                self.state.cursor = 0;
                self.order = epoch_order(self.examples.len(), self.cfg.seed, self.state.epoch);
            }
            out.push(self.order[self.state.cursor as usize]);
            self.state.cursor += 1;
        }
        out
    }

    /// Right-padded ids and labels (-100 where no loss) for a micro-batch.
    fn collate(&self, idx: &[usize]) -> (Tensor, Tensor, u64, u64) {
        let seqs: Vec<(Vec<i64>, usize)> = idx
            .iter()
            .map(|&i| {
                let e = &self.examples[i];
                let mut s: Vec<i64> = e.prompt.iter().chain(&e.completion).copied().collect();
                s.truncate(self.cfg.max_len);
                (s, e.prompt.len())
            })
            .collect();
        let len = seqs.iter().map(|(s, _)| s.len()).max().unwrap_or(1).max(2);
        let mut ids = Vec::with_capacity(idx.len() * len);
        let mut labels = Vec::with_capacity(idx.len() * len);
        let (mut tokens, mut targets) = (0u64, 0u64);
        for (s, plen) in &seqs {
            tokens += s.len() as u64;
            for j in 0..len {
                ids.push(s.get(j).copied().unwrap_or(self.pad_id));
                // Labels are pre-shifted: position j is scored on token j + 1, so the
                // logits need no slicing (a copy of the largest tensor of the step).
                let is_target = j + 1 >= *plen && j + 1 < s.len();
                targets += is_target as u64;
                labels.push(if is_target { s[j + 1] } else { -100 });
            }
        }
        let b = idx.len() as i64;
        let dev = self.model.device();
        (
            Tensor::from_slice(&ids).view([b, len as i64]).to_device(dev),
            Tensor::from_slice(&labels).view([b, len as i64]).to_device(dev),
            tokens,
            targets,
        )
    }

    /// Runs one optimizer step (all micro-batches) and returns its metrics.
    pub fn train_step(&mut self) -> Result<MetricsRow> {
        let start = Instant::now();
        let batches: Vec<Vec<usize>> = (0..self.cfg.grad_accum).map(|_| self.next_batch()).collect();
        let collated: Vec<_> = batches.iter().map(|b| self.collate(b)).collect();
        let targets: u64 = collated.iter().map(|c| c.3).sum();
        let tokens: u64 = collated.iter().map(|c| c.2).sum();
        let mut loss_sum = 0.0;
        self.opt.zero_grad();
        for (ids, labels, _, _) in &collated {
            let logits = self.model.forward(ids, None, None, false)?;
            let v = logits.size()[2];
            let pred = logits.f_view([-1, v])?;
            let gold = labels.f_view([-1])?;
            // Sum over tokens, normalised by the whole step's target count, so every
            // completion token weighs the same whatever micro-batch it falls in.
            let loss = pred.f_cross_entropy_loss::<&Tensor>(&gold, None, tch::Reduction::Sum, -100, 0.0)?;
            loss_sum += loss.f_double_value(&[])?;
            (loss / targets.max(1) as f64).f_backward()?;
        }
        let loss = loss_sum / targets.max(1) as f64;
        if !loss.is_finite() {
            return Err(invalid!("loss is not finite at step {}", self.state.step + 1));
        }
        let grad_norm = self.opt.clip_grad_norm(self.cfg.max_grad_norm)?;
        let lr = self.cfg.lr_at(self.state.step);
        self.state.step += 1;
        self.opt.step(lr, self.state.step)?;
        self.opt.zero_grad();
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        Ok(MetricsRow { step: self.state.step, loss, lr, grad_norm, tokens, tokens_per_s: tokens as f64 / secs })
    }

    /// Trains until `total_steps`, calling `on_step` after each step and
    /// checkpointing every `checkpoint_every` steps and at the end. When `should_stop`
    /// turns true (a signal), it writes a checkpoint after the step in progress and
    /// returns [`TrainEnd::Stopped`]; a new trainer on the same directory resumes there.
    pub fn train(
        &mut self,
        should_stop: impl Fn() -> bool,
        mut on_step: impl FnMut(&MetricsRow) -> Result<()>,
    ) -> Result<TrainEnd> {
        let mut saved_at = self.state.step;
        while self.state.step < self.cfg.total_steps {
            if should_stop() {
                if saved_at != self.state.step {
                    self.checkpoint()?;
                }
                return Ok(TrainEnd::Stopped { step: self.state.step });
            }
            let row = self.train_step()?;
            on_step(&row)?;
            let every = self.cfg.checkpoint_every;
            if (every > 0 && self.state.step.is_multiple_of(every)) || self.state.step == self.cfg.total_steps {
                self.checkpoint()?;
                saved_at = self.state.step;
            }
        }
        Ok(TrainEnd::Finished)
    }

    /// Saves weights, moments and state to `dir/checkpoints/step-N` and points
    /// `latest` at it; a crash at any moment leaves the previous one usable.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        self.checkpoints.save(self.state.step, self.model, &self.opt, &self.state, "sft_config.json", &self.cfg)
    }
}

/// Mean loss per completion token of `examples` (no gradients), for evaluation.
pub fn eval_loss(model: &Qwen2, examples: &[Example], pad_id: i64) -> Result<f64> {
    let _ = pad_id;
    let mut sum = 0.0;
    let mut n = 0u64;
    tch::no_grad(|| -> Result<()> {
        for e in examples {
            let s: Vec<i64> = e.prompt.iter().chain(&e.completion).copied().collect();
            let ids = Tensor::from_slice(&s).view([1, -1]).to_device(model.device());
            let logits = model.forward(&ids, None, None, false)?;
            check_finite(&logits, "logits")?;
            let t = s.len() as i64;
            let lp = logits.f_narrow(1, 0, t - 1)?.f_log_softmax(-1, Kind::Float)?;
            for (j, &tok) in s.iter().enumerate().skip(e.prompt.len()) {
                sum -= lp.f_double_value(&[0, j as i64 - 1, tok])?;
                n += 1;
            }
        }
        Ok(())
    })?;
    Ok(sum / n.max(1) as f64)
}
