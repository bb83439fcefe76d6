//! The arithmetic of GRPO: group-relative advantages, per-token log-probabilities
//! computed a few positions at a time, and the clipped policy loss in its three
//! normalisations. Hugging Face TRL's `GRPOTrainer` names and semantics throughout.

use crate::qwen2::Qwen2;
use crate::{Result, invalid};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How token losses are averaged (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over each sequence's tokens, then over sequences (the GRPO paper): a long
    /// completion's tokens weigh less than a short one's.
    Grpo,
    /// Sum over tokens divided by a constant, sequences × `max_completion_length`
    /// (Dr. GRPO): no length bias.
    DrGrpo,
    /// Mean over every completion token of the batch (DAPO's token-level loss).
    Dapo,
}

/// How advantages are scaled after the group mean is subtracted (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// `r − mean(group)` (the Fleming-R1 paper's eq. 2).
    None,
    /// Divided by the group's standard deviation (the original GRPO).
    Group,
    /// Divided by the standard deviation over the whole batch.
    Batch,
}

/// Added to a standard deviation before dividing by it (TRL's 1e-4).
pub const STD_EPS: f64 = 1e-4;

/// Sample standard deviation (n − 1, as `torch.std`); 0 for fewer than two values.
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// Advantages of `rewards` laid out group after group (`group` completions per prompt).
pub fn advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> Result<Vec<f64>> {
    if group == 0 || !rewards.len().is_multiple_of(group) {
        return Err(invalid!("{} rewards do not make groups of {group}", rewards.len()));
    }
    let batch_std = std_dev(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let div = match scale {
            ScaleRewards::None => 1.0,
            ScaleRewards::Group => std_dev(g) + STD_EPS,
            ScaleRewards::Batch => batch_std + STD_EPS,
        };
        out.extend(g.iter().map(|r| (r - mean) / div));
    }
    Ok(out)
}

/// Per-token log-probabilities of `ids[:, 1..]` under `model` (`[B, T − 1]`, f32), and
/// when `entropy` the per-token entropy of the predicted distribution. The vocabulary
/// projection is done `chunk` positions at a time, so without gradients no more than
/// `[B, chunk, V]` float logits exist at once.
pub fn token_logprobs(model: &Qwen2, ids: &Tensor, chunk: i64, entropy: bool) -> Result<(Tensor, Option<Tensor>)> {
    let size = ids.size();
    let (b, t) = match size.as_slice() {
        [b, t] if *t >= 2 => (*b, *t),
        _ => return Err(invalid!("ids must be [batch, seq >= 2], got {size:?}")),
    };
    let hidden = model.hidden(ids, None, None, false)?;
    let chunk = chunk.max(1);
    let (mut lps, mut ents) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < t - 1 {
        let n = chunk.min(t - 1 - start);
        let logits = model.logits(&hidden.f_narrow(1, start, n)?)?;
        let logp = logits.f_log_softmax(-1, Kind::Float)?;
        let target = ids.f_narrow(1, start + 1, n)?.f_unsqueeze(-1)?;
        lps.push(logp.f_gather(-1, &target, false)?.f_squeeze_dim(-1)?);
        if entropy {
            // No gradient flows through the entropy: it is a metric.
            let e = tch::no_grad(|| -> Result<Tensor> {
                Ok(logp.f_exp()?.f_mul(&logp)?.f_sum_dim_intlist(-1, false, Kind::Float)?.f_neg()?)
            })?;
            ents.push(e);
        }
        start += n;
    }
    let lp = Tensor::f_cat(&lps, 1)?;
    debug_assert_eq!(lp.size(), vec![b, t - 1]);
    Ok((lp, if entropy { Some(Tensor::f_cat(&ents, 1)?) } else { None }))
}

/// What the policy loss of one micro-batch needs; every `[N, L]` tensor is aligned with
/// the targets (`ids[:, 1..]`).
pub struct LossInputs<'a> {
    /// Log-probabilities under the policy being trained (with gradient).
    pub logp: &'a Tensor,
    /// Log-probabilities under the policy that generated the completions (no gradient).
    pub old_logp: &'a Tensor,
    /// Log-probabilities under the frozen reference, when `beta > 0`.
    pub ref_logp: Option<&'a Tensor>,
    /// One advantage per sequence, `[N]`.
    pub advantages: &'a Tensor,
    /// 1.0 on completion tokens that count, 0.0 elsewhere (prompt, padding, masked
    /// truncated completions), f32.
    pub mask: &'a Tensor,
    /// Counted tokens of each whole sequence (`[N]`), when `logp` covers only some of its
    /// positions; `None`: the row sums of `mask`.
    pub seq_tokens: Option<&'a Tensor>,
}

/// The clipping and normalisation of the loss.
#[derive(Debug, Clone, Copy)]
pub struct LossParams {
    /// Lower clip: the ratio is kept above `1 − epsilon`.
    pub epsilon: f64,
    /// Upper clip: the ratio is kept below `1 + epsilon_high` (clip-higher).
    pub epsilon_high: f64,
    /// KL coefficient (0: no KL term).
    pub beta: f64,
    /// The normalisation.
    pub loss_type: LossType,
}

/// How the step's token losses are normalised, counted over the whole step (all
/// micro-batches), so micro-batches add up to the loss of the full batch.
#[derive(Debug, Clone, Copy)]
pub struct StepTotals {
    /// Sequences in the step.
    pub sequences: usize,
    /// Counted completion tokens in the step.
    pub tokens: f64,
    /// `max_completion_length` (Dr. GRPO's constant).
    pub max_completion_length: usize,
}

/// Sums of the micro-batch's loss statistics over its counted tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSums {
    /// Tokens whose ratio was clipped below (`ratio < 1 − ε` with a negative advantage).
    pub clipped_low: f64,
    /// Tokens clipped above (`ratio > 1 + ε_high` with a positive advantage).
    pub clipped_high: f64,
    /// Sum of the per-token KL (k3 estimator) to the reference.
    pub kl: f64,
    /// Counted tokens.
    pub tokens: f64,
}

/// The micro-batch's share of the step's loss (a scalar with gradient), and its sums.
pub fn policy_loss(x: &LossInputs, p: &LossParams, totals: &StepTotals) -> Result<(Tensor, LossSums)> {
    let adv = x.advantages.f_unsqueeze(-1)?;
    let ratio = (x.logp - x.old_logp).f_exp()?;
    let clipped = ratio.f_clamp(1.0 - p.epsilon, 1.0 + p.epsilon_high)?;
    let surrogate = (&ratio * &adv).f_minimum(&(&clipped * &adv))?;
    let mut per_token = surrogate.f_neg()?;
    let mut kl_sum = 0.0;
    if p.beta > 0.0 {
        let r = x.ref_logp.ok_or_else(|| invalid!("beta > 0 needs the reference log-probabilities"))?;
        // k3: exp(ref − logp) − (ref − logp) − 1, unbiased and never negative.
        let d = r - x.logp;
        let kl = d.f_exp()? - &d - 1.0;
        kl_sum = tch::no_grad(|| (&kl * x.mask).f_sum(Kind::Float)?.f_double_value(&[]))?;
        per_token += kl * p.beta;
    }
    let masked = &per_token * x.mask;
    let loss = match p.loss_type {
        LossType::Grpo => {
            let counts = match x.seq_tokens {
                Some(c) => c.shallow_clone(),
                None => x.mask.f_sum_dim_intlist(-1, false, Kind::Float)?,
            };
            let per_seq = masked.f_sum_dim_intlist(-1, false, Kind::Float)? / counts.f_clamp_min(1.0)?;
            per_seq.f_sum(Kind::Float)? / totals.sequences.max(1) as f64
        }
        LossType::DrGrpo => {
            masked.f_sum(Kind::Float)? / (totals.sequences.max(1) * totals.max_completion_length.max(1)) as f64
        }
        LossType::Dapo => masked.f_sum(Kind::Float)? / totals.tokens.max(1.0),
    };
    let sums = tch::no_grad(|| -> Result<LossSums> {
        let low = ratio.f_lt(1.0 - p.epsilon)?.f_logical_and(&adv.f_lt(0.0)?)?.f_to_kind(Kind::Float)?;
        let high = ratio.f_gt(1.0 + p.epsilon_high)?.f_logical_and(&adv.f_gt(0.0)?)?.f_to_kind(Kind::Float)?;
        Ok(LossSums {
            clipped_low: (low * x.mask).f_sum(Kind::Float)?.f_double_value(&[])?,
            clipped_high: (high * x.mask).f_sum(Kind::Float)?.f_double_value(&[])?,
            kl: kl_sum,
            tokens: x.mask.f_sum(Kind::Float)?.f_double_value(&[])?,
        })
    })?;
    Ok((loss, sums))
}

/// Computes one micro-batch's share of the loss and accumulates its gradient, projecting
/// onto the vocabulary `chunk` positions at a time: the decoder runs once, its output is
/// cut from the graph, each chunk's loss is back-propagated through the LM head alone
/// (so at most `[N, chunk, V]` logits and their saved activations exist at any time), and
/// the gathered gradient of the hidden states is back-propagated through the decoder
/// once. Returns the loss value, its sums and the summed entropy of counted tokens.
#[allow(clippy::too_many_arguments)]
pub fn backward_in_chunks(
    model: &Qwen2,
    ids: &Tensor,
    mask: &Tensor,
    advantages: &Tensor,
    old_logp: Option<&Tensor>,
    ref_logp: Option<&Tensor>,
    p: &LossParams,
    totals: &StepTotals,
    chunk: i64,
) -> Result<(f64, LossSums, f64)> {
    let t = ids.size().get(1).copied().unwrap_or(0);
    if t < 2 {
        return Err(invalid!("sequences need at least 2 tokens"));
    }
    let hidden = model.hidden(ids, None, None, false)?;
    let cut = hidden.f_detach()?.set_requires_grad(true);
    let seq_tokens = mask.f_sum_dim_intlist(-1, false, Kind::Float)?;
    let chunk = chunk.max(1);
    let (mut loss, mut sums, mut entropy) = (0.0, LossSums::default(), 0.0);
    let mut start = 0;
    while start < t - 1 {
        let n = chunk.min(t - 1 - start);
        let logp_all = model.logits(&cut.f_narrow(1, start, n)?)?.f_log_softmax(-1, Kind::Float)?;
        let target = ids.f_narrow(1, start + 1, n)?.f_unsqueeze(-1)?;
        let logp = logp_all.f_gather(-1, &target, false)?.f_squeeze_dim(-1)?;
        let m = mask.f_narrow(1, start, n)?;
        entropy += tch::no_grad(|| -> Result<f64> {
            let e = logp_all.f_exp()?.f_mul(&logp_all)?.f_sum_dim_intlist(-1, false, Kind::Float)?.f_neg()?;
            Ok((e * &m).f_sum(Kind::Float)?.f_double_value(&[])?)
        })?;
        let old = match old_logp {
            Some(o) => o.f_narrow(1, start, n)?,
            None => logp.f_detach()?,
        };
        let reference = ref_logp.map(|r| r.f_narrow(1, start, n)).transpose()?;
        let x = LossInputs {
            logp: &logp,
            old_logp: &old,
            ref_logp: reference.as_ref(),
            advantages,
            mask: &m,
            seq_tokens: Some(&seq_tokens),
        };
        let (l, st) = policy_loss(&x, p, totals)?;
        loss += l.f_double_value(&[])?;
        sums.clipped_low += st.clipped_low;
        sums.clipped_high += st.clipped_high;
        sums.kl += st.kl;
        sums.tokens += st.tokens;
        l.f_backward()?;
        start += n;
    }
    // d(loss)/d(hidden) is now in cut.grad: one pass back through the decoder.
    let g = cut.grad();
    if g.defined() {
        (hidden * g).f_sum(Kind::Float)?.f_backward()?;
    }
    Ok((loss, sums, entropy))
}
