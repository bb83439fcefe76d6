//! Batched generation with a KV cache and left padding.

use crate::qwen2::Qwen2;
use crate::{Result, invalid};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// How to pick tokens.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus mass; 1.0 disables.
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Tokens to generate at most per sequence.
    pub max_new_tokens: usize,
    /// Generation of a sequence ends after it samples one of these.
    pub stop_token_ids: Vec<i64>,
    /// Sequence `i` draws from its own RNG seeded with `(seed, i)`, so output
    /// does not depend on thread timing.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 128, stop_token_ids: vec![], seed: 0 }
    }
}

impl SamplingParams {
    /// Rejects values outside their domain (so a server can answer 400).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(invalid!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Sampled tokens, including the stop token when one ended the sequence.
    pub tokens: Vec<i64>,
    /// Log-probability of each sampled token under the model (temperature 1,
    /// before top-k/top-p), aligned with `tokens`.
    pub logprobs: Vec<f32>,
    /// True when the sequence hit `max_new_tokens` (or the caller's stop
    /// request never came) without a stop token.
    pub truncated: bool,
    /// The stop token that ended it, if any.
    pub stop_token: Option<i64>,
}

/// What a per-token callback wants next for its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep generating.
    Continue,
    /// End this sequence here (e.g. a stop string matched); not truncated.
    Stop,
}

/// Generates for every prompt; see [`generate_with`].
pub fn generate(model: &Qwen2, prompts: &[Vec<i64>], params: &SamplingParams, pad_id: i64) -> Result<Vec<Generated>> {
    generate_with(model, prompts, params, pad_id, |_, _, _| Flow::Continue)
}

/// Generates for every prompt in one batch. `on_token(seq, token, logprob)`
/// sees each token as it is sampled (for streaming and stop strings).
pub fn generate_with(
    model: &Qwen2,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    pad_id: i64,
    mut on_token: impl FnMut(usize, i64, f32) -> Flow,
) -> Result<Vec<Generated>> {
    params.validate()?;
    let b = prompts.len();
    if b == 0 {
        return Ok(vec![]);
    }
    let vocab = model.config.vocab_size as i64;
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(invalid!("empty prompt"));
    }
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t < 0 || t >= vocab) {
        return Err(invalid!("token id {bad} outside the vocabulary (0..{vocab})"));
    }
    let device = model.device();
    let padded = prompts.iter().any(|p| p.len() != longest);
    let mut ids = Vec::with_capacity(b * longest);
    let mut mask = Vec::with_capacity(b * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(pad_id, pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, p.len())));
    }
    let ids = Tensor::from_slice(&ids).view([b as i64, longest as i64]).to_device(device);
    let mut key_mask =
        if padded { Some(Tensor::from_slice(&mask).view([b as i64, longest as i64]).to_device(device)) } else { None };
    let mut rngs: Vec<ChaCha8Rng> = (0..b).map(|i| sequence_rng(params.seed, i as u64)).collect();
    let mut out: Vec<Generated> =
        (0..b).map(|_| Generated { tokens: vec![], logprobs: vec![], truncated: false, stop_token: None }).collect();
    let mut done = vec![false; b];
    let mut cache = model.new_cache();
    tch::no_grad(|| -> Result<()> {
        let mut logits = model.forward(&ids, key_mask.as_ref(), Some(&mut cache), true)?;
        for step in 0..params.max_new_tokens {
            let (next, lps) = sample(&logits.squeeze_dim(1), params, &mut rngs, &done)?;
            for i in 0..b {
                if done[i] {
                    continue;
                }
                let (tok, lp) = (next[i], lps[i]);
                out[i].tokens.push(tok);
                out[i].logprobs.push(lp);
                if params.stop_token_ids.contains(&tok) {
                    out[i].stop_token = Some(tok);
                    done[i] = true;
                }
                if on_token(i, tok, lp) == Flow::Stop {
                    done[i] = true;
                }
            }
            if done.iter().all(|d| *d) || step + 1 == params.max_new_tokens {
                break;
            }
            let feed: Vec<i64> = next.iter().zip(&done).map(|(&t, &d)| if d { pad_id } else { t }).collect();
            let feed = Tensor::from_slice(&feed).view([b as i64, 1]).to_device(device);
            if let Some(m) = key_mask.as_mut() {
                let ones = Tensor::ones([b as i64, 1], (Kind::Bool, device));
                *m = Tensor::cat(&[&*m, &ones], 1);
            }
            logits = model.forward(&feed, key_mask.as_ref(), Some(&mut cache), true)?;
        }
        Ok(())
    })?;
    for (g, d) in out.iter_mut().zip(&done) {
        g.truncated = !d;
    }
    Ok(out)
}

/// The random stream of sequence `index` of a request seeded with `seed`: its draws do
/// not depend on which other sequences share the batch.
pub(crate) fn sequence_rng(seed: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Picks one token per row of `logits` (`[B, V]`); rows marked done are skipped
/// (their RNG does not advance, so a sequence's draws do not depend on others).
pub(crate) fn sample(
    logits: &Tensor,
    p: &SamplingParams,
    rngs: &mut [ChaCha8Rng],
    done: &[bool],
) -> Result<(Vec<i64>, Vec<f32>)> {
    let b = logits.size()[0] as usize;
    let logp = logits.f_log_softmax(-1, Kind::Float)?;
    let tokens: Vec<i64> = if p.temperature == 0.0 {
        Vec::<i64>::try_from(logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?)?
    } else {
        let scaled = logits / p.temperature;
        let vocab = scaled.size()[1];
        let (vals, idx) = if p.top_k > 0 && (p.top_k as i64) < vocab {
            let (v, i) = scaled.f_topk(p.top_k as i64, -1, true, true)?;
            (v, Some(i))
        } else if p.top_p < 1.0 {
            let (v, i) = scaled.f_sort(-1, true)?;
            (v, Some(i))
        } else {
            (scaled, None)
        };
        let mut probs = vals.f_softmax(-1, Kind::Float)?;
        if p.top_p < 1.0 {
            // Drop a token when the mass before it already reaches top_p (keeps at least one).
            let before = probs.f_cumsum(-1, Kind::Float)? - &probs;
            probs = probs.f_masked_fill(&before.f_gt(p.top_p)?, 0.0)?;
        }
        let k = probs.size()[1] as usize;
        let probs = Vec::<f32>::try_from(probs.f_to_device(tch::Device::Cpu)?.f_contiguous()?.f_view(-1)?)?;
        let idx = match idx {
            Some(i) => Some(Vec::<i64>::try_from(i.f_to_device(tch::Device::Cpu)?.f_contiguous()?.f_view(-1)?)?),
            None => None,
        };
        let mut toks = vec![0i64; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let row = &probs[r * k..(r + 1) * k];
            let total: f64 = row.iter().map(|&x| x as f64).sum();
            let mut u = rngs[r].random::<f64>() * total;
            let mut j = 0;
            // Last index with positive mass, so rounding cannot pick a zeroed tail.
            let last = row.iter().rposition(|&x| x > 0.0).unwrap_or(0);
            while j < last {
                u -= row[j] as f64;
                if u < 0.0 {
                    break;
                }
                j += 1;
            }
            toks[r] = match &idx {
                Some(idx) => idx[r * k + j],
                None => j as i64,
            };
        }
        toks
    };
    let t = Tensor::from_slice(&tokens).to_device(logits.device()).view([b as i64, 1]);
    let lps = Vec::<f32>::try_from(logp.f_gather(1, &t, false)?.f_to_device(tch::Device::Cpu)?.f_view(-1)?)?;
    Ok((tokens, lps))
}
