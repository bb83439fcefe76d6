//! Continuous batching: sequences join a running batch and leave it between decode steps,
//! so a server with many concurrent requests runs one forward per step for all of them
//! instead of one generation per request.
//!
//! The batch shares one KV cache, left-padded: a sequence that joins is prefilled on its
//! own (with the others that join at the same step), then its cache is padded on the left
//! (or the batch's is) to a common length and appended as new rows; a key mask hides the
//! padding and positions count real tokens only, so each sequence sees exactly what it
//! would alone. Finished sequences are removed before the next step, and leading columns
//! no remaining sequence attends to are trimmed. Each sequence samples from its own
//! random stream ([`crate::generate`]), so its draws do not depend on its neighbours.

use std::collections::VecDeque;

use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::generate::{Flow, SamplingParams, sample, sequence_rng};
use crate::qwen2::{KvCache, Qwen2};
use crate::{Result, invalid};

/// What happened to a sequence in a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A sampled token (a stop token too, reported before the sequence finishes).
    Token {
        /// The sequence.
        id: u64,
        /// The token.
        token: i64,
        /// Its log-probability under the model (temperature 1).
        logprob: f32,
    },
    /// The sequence is done and has left the batch.
    Finished {
        /// The sequence.
        id: u64,
        /// It reached its token limit without a stop token or a stop request.
        truncated: bool,
        /// Tokens it generated.
        tokens: usize,
    },
}

struct Waiting {
    id: u64,
    prompt: Vec<i64>,
    params: SamplingParams,
    rng: ChaCha8Rng,
}

struct Active {
    id: u64,
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// The token to feed at the next decode step.
    next: i64,
    generated: usize,
}

/// A batch of sequences decoding together, with a queue of sequences waiting to join.
pub struct Engine<'m> {
    model: &'m Qwen2,
    pad_id: i64,
    max_batch: usize,
    waiting: VecDeque<Waiting>,
    active: Vec<Active>,
    cache: KvCache,
    /// `[rows, positions]`, false at padding.
    mask: Option<Tensor>,
}

impl<'m> Engine<'m> {
    /// An engine running at most `max_batch` sequences at once.
    pub fn new(model: &'m Qwen2, pad_id: i64, max_batch: usize) -> Self {
        Engine {
            model,
            pad_id,
            max_batch: max_batch.max(1),
            waiting: VecDeque::new(),
            active: Vec::new(),
            cache: model.new_cache(),
            mask: None,
        }
    }

    /// Queues a sequence. `index` picks its random stream among the sequences of one
    /// request seeded with `params.seed` (the `n` choices of a chat request).
    pub fn add(&mut self, id: u64, prompt: Vec<i64>, params: SamplingParams, index: u64) -> Result<()> {
        params.validate()?;
        let vocab = self.model.config.vocab_size as i64;
        if prompt.is_empty() {
            return Err(invalid!("empty prompt"));
        }
        if let Some(bad) = prompt.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(invalid!("token id {bad} outside the vocabulary (0..{vocab})"));
        }
        if params.max_new_tokens == 0 {
            return Err(invalid!("max_new_tokens must be at least 1"));
        }
        let rng = sequence_rng(params.seed, index);
        self.waiting.push_back(Waiting { id, prompt, params, rng });
        Ok(())
    }

    /// Sequences decoding now.
    pub fn running(&self) -> usize {
        self.active.len()
    }

    /// Sequences queued to join.
    pub fn queued(&self) -> usize {
        self.waiting.len()
    }

    /// Whether a step would do anything.
    pub fn has_work(&self) -> bool {
        !self.active.is_empty() || !self.waiting.is_empty()
    }

    /// Drops every sequence, running or queued, without events (after an error).
    pub fn clear(&mut self) -> Vec<u64> {
        let ids = self.active.iter().map(|a| a.id).chain(self.waiting.iter().map(|w| w.id)).collect();
        self.active.clear();
        self.waiting.clear();
        self.cache = self.model.new_cache();
        self.mask = None;
        ids
    }

    /// One step: admits waiting sequences (prefill, first token), then one decode step for
    /// every running sequence. `on_event` sees every token and every finish; returning
    /// [`Flow::Stop`] for a token ends that sequence (not truncated).
    pub fn step(&mut self, mut on_event: impl FnMut(&Event) -> Flow) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            self.admit(&mut on_event)?;
            if !self.active.is_empty() {
                self.decode(&mut on_event)?;
            }
            Ok(())
        })
    }

    /// Prefills the sequences that fit into the batch and samples their first token.
    fn admit(&mut self, on_event: &mut impl FnMut(&Event) -> Flow) -> Result<()> {
        let room = self.max_batch.saturating_sub(self.active.len());
        if room == 0 || self.waiting.is_empty() {
            return Ok(());
        }
        let joining: Vec<Waiting> =
            (0..room.min(self.waiting.len())).filter_map(|_| self.waiting.pop_front()).collect();
        let device = self.model.device();
        let k = joining.len() as i64;
        let longest = joining.iter().map(|w| w.prompt.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(joining.len() * longest);
        let mut mask = Vec::with_capacity(joining.len() * longest);
        for w in &joining {
            let pad = longest - w.prompt.len();
            ids.extend(std::iter::repeat_n(self.pad_id, pad).chain(w.prompt.iter().copied()));
            mask.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, w.prompt.len())));
        }
        let ids = Tensor::from_slice(&ids).view([k, longest as i64]).to_device(device);
        let mask = Tensor::from_slice(&mask).view([k, longest as i64]).to_device(device);
        let mut cache = self.model.new_cache();
        let logits = self.model.forward(&ids, Some(&mask), Some(&mut cache), true)?.squeeze_dim(1);
        // Join the batch: pad whichever side is shorter on the left.
        let (mut cache, mut mask) = (cache, mask);
        match &self.mask {
            None => {}
            Some(batch_mask) => {
                let have = self.cache.len();
                let new = longest as i64;
                if new < have {
                    cache.pad_left(have - new)?;
                    let pad = Tensor::zeros([k, have - new], (Kind::Bool, device));
                    mask = Tensor::cat(&[&pad, &mask], 1);
                } else if new > have {
                    self.cache.pad_left(new - have)?;
                    let rows = batch_mask.size()[0];
                    let pad = Tensor::zeros([rows, new - have], (Kind::Bool, device));
                    self.mask = Some(Tensor::cat(&[&pad, batch_mask], 1));
                }
            }
        }
        self.cache.append_rows(cache)?;
        self.mask = Some(match self.mask.take() {
            Some(m) => Tensor::cat(&[&m, &mask], 0),
            None => mask,
        });
        let first = self.active.len();
        self.active.extend(joining.into_iter().map(|w| Active {
            id: w.id,
            params: w.params,
            rng: w.rng,
            next: self.pad_id,
            generated: 0,
        }));
        let rows: Vec<usize> = (first..self.active.len()).collect();
        self.sample_rows(&logits, &rows, on_event)?;
        self.retire(on_event)
    }

    /// One decode step for every running sequence.
    fn decode(&mut self, on_event: &mut impl FnMut(&Event) -> Flow) -> Result<()> {
        let device = self.model.device();
        let b = self.active.len() as i64;
        let feed: Vec<i64> = self.active.iter().map(|a| a.next).collect();
        let feed = Tensor::from_slice(&feed).view([b, 1]).to_device(device);
        let ones = Tensor::ones([b, 1], (Kind::Bool, device));
        let mask = match self.mask.take() {
            Some(m) => Tensor::cat(&[&m, &ones], 1),
            None => return Err(invalid!("a running batch has no key mask")),
        };
        let logits = self.model.forward(&feed, Some(&mask), Some(&mut self.cache), true)?.squeeze_dim(1);
        self.mask = Some(mask);
        let rows: Vec<usize> = (0..self.active.len()).collect();
        self.sample_rows(&logits, &rows, on_event)?;
        self.retire(on_event)
    }

    /// Samples the next token of `rows` (indices into `active`) from `logits`, whose rows
    /// are theirs in order; rows with the same sampling parameters are sampled together.
    fn sample_rows(
        &mut self,
        logits: &Tensor,
        rows: &[usize],
        on_event: &mut impl FnMut(&Event) -> Flow,
    ) -> Result<()> {
        let device = logits.device();
        let mut done: Vec<bool> = vec![false; rows.len()];
        let mut todo: Vec<usize> = (0..rows.len()).collect();
        while let Some(&lead) = todo.first() {
            let p = self.active[rows[lead]].params.clone();
            let (group, rest): (Vec<usize>, Vec<usize>) =
                todo.iter().partition(|&&j| same_sampling(&self.active[rows[j]].params, &p));
            todo = rest;
            let index = Tensor::from_slice(&group.iter().map(|&j| j as i64).collect::<Vec<_>>()).to_device(device);
            let sub = logits.f_index_select(0, &index)?;
            let mut rngs: Vec<ChaCha8Rng> = group.iter().map(|&j| self.active[rows[j]].rng.clone()).collect();
            let (tokens, logprobs) = sample(&sub, &p, &mut rngs, &vec![false; group.len()])?;
            for (((&j, tok), lp), rng) in group.iter().zip(tokens).zip(logprobs).zip(rngs) {
                let a = &mut self.active[rows[j]];
                a.rng = rng;
                a.next = tok;
                a.generated += 1;
                let stop = on_event(&Event::Token { id: a.id, token: tok, logprob: lp }) == Flow::Stop;
                done[j] = stop || a.params.stop_token_ids.contains(&tok);
                if done[j] {
                    // Finished without reaching the limit: mark by pushing generated past it.
                    a.params.max_new_tokens = 0;
                }
            }
        }
        Ok(())
    }

    /// Removes finished sequences (stopped, or at their token limit) and trims the cache.
    fn retire(&mut self, on_event: &mut impl FnMut(&Event) -> Flow) -> Result<()> {
        let mut keep = Vec::with_capacity(self.active.len());
        let mut finished = Vec::new();
        for (i, a) in self.active.iter().enumerate() {
            let stopped = a.params.max_new_tokens == 0;
            if stopped || a.generated >= a.params.max_new_tokens {
                finished.push(Event::Finished { id: a.id, truncated: !stopped, tokens: a.generated });
            } else {
                keep.push(i);
            }
        }
        if finished.is_empty() {
            return Ok(());
        }
        for ev in &finished {
            on_event(ev);
        }
        if keep.is_empty() {
            self.active.clear();
            self.cache = self.model.new_cache();
            self.mask = None;
            return Ok(());
        }
        let device = self.model.device();
        let index = Tensor::from_slice(&keep.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device);
        self.cache.select_rows(&index)?;
        let mask = match self.mask.take() {
            Some(m) => m.f_index_select(0, &index)?,
            None => return Err(invalid!("a running batch has no key mask")),
        };
        // Columns no remaining sequence attends to.
        let used = mask.f_any_dim(0, false)?;
        let lead =
            Vec::<bool>::try_from(used.f_to_device(tch::Device::Cpu)?)?.iter().take_while(|u| !**u).count() as i64;
        let mask = if lead > 0 {
            self.cache.trim_left(lead)?;
            mask.f_narrow(1, lead, mask.size()[1] - lead)?
        } else {
            mask
        };
        self.mask = Some(mask);
        let mut i = 0;
        self.active.retain(|_| {
            let k = keep.contains(&i);
            i += 1;
            k
        });
        Ok(())
    }
}

fn same_sampling(a: &SamplingParams, b: &SamplingParams) -> bool {
    a.temperature == b.temperature && a.top_p == b.top_p && a.top_k == b.top_k
}
