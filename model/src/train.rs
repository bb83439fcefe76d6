//! What every trainer shares: AdamW with its moments as plain tensors (tch does not
//! expose optimizer state, and exact resume needs it), the warm-up + cosine schedule,
//! gradient clipping, and checkpoints that a crash at any moment leaves usable.
//!
//! [`crate::sft`] and [`crate::grpo`] both build on these; neither has its own copy.

use crate::io::{SafetensorsFile, write_atomic, write_safetensors};
use crate::qwen2::Qwen2;
use crate::{ModelError, Result, invalid};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// AdamW's constants (the learning rate comes from the [`Schedule`] per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay on matrices (not on norms or biases).
    pub weight_decay: f64,
}

/// Warm-up then cosine decay of the learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Optimizer steps of the run (the cosine ends here).
    pub total_steps: u64,
}

impl Schedule {
    /// Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// AdamW with its moments as plain tensors (saved with checkpoints).
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    decay: Vec<bool>,
    hp: AdamWParams,
}

impl AdamW {
    /// Moments start at zero for every parameter of `model`.
    pub fn new(model: &Qwen2, hp: AdamWParams) -> Result<Self> {
        let params = model.named_parameters();
        let mut m = vec![];
        let mut v = vec![];
        let mut decay = vec![];
        for (name, p) in &params {
            // Moments stay f32 even for bf16 weights (CUDA): bf16 cannot hold v's range.
            m.push(p.f_zeros_like()?.f_to_kind(Kind::Float)?);
            v.push(p.f_zeros_like()?.f_to_kind(Kind::Float)?);
            decay.push(p.dim() >= 2 && !name.contains("norm"));
        }
        Ok(AdamW { params, m, v, decay, hp })
    }

    /// One update with learning rate `lr` and bias correction for step `t` (1-based).
    pub fn step(&mut self, lr: f64, t: u64) -> Result<()> {
        let hp = self.hp;
        let bc1 = 1.0 - hp.beta1.powi(t as i32);
        let bc2 = 1.0 - hp.beta2.powi(t as i32);
        tch::no_grad(|| -> Result<()> {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let g = if g.kind() == Kind::Float { g } else { g.f_to_kind(Kind::Float)? };
                let m = &mut self.m[i];
                let v = &mut self.v[i];
                // In-place forms keep this to three temporaries per parameter.
                let _ = m.f_lerp_(&g, 1.0 - hp.beta1)?;
                let _ = v.f_lerp_(&(&g * &g), 1.0 - hp.beta2)?;
                if self.decay[i] && hp.weight_decay > 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - lr * hp.weight_decay)?;
                }
                let mut denom = v.f_sqrt()?;
                let _ = denom.f_mul_scalar_(1.0 / bc2.sqrt())?.f_add_scalar_(hp.eps)?;
                if p.kind() == Kind::Float {
                    let _ = p.f_addcdiv_(&m.f_mul_scalar(-lr / bc1)?, &denom)?;
                } else {
                    let update = m.f_div(&denom)?.f_mul_scalar(-lr / bc1)?.f_to_kind(p.kind())?;
                    let _ = p.f_add_(&update)?;
                }
            }
            Ok(())
        })
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self) -> Result<f64> {
        let mut total = 0.0;
        for (_, p) in &self.params {
            let g = p.grad();
            if g.defined() {
                let n = g.f_norm()?.f_double_value(&[])?;
                total += n * n;
            }
        }
        Ok(total.sqrt())
    }

    /// Multiplies every gradient by `s`.
    pub fn scale_grads(&mut self, s: f64) -> Result<()> {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_mul_scalar_(s)?;
            }
        }
        Ok(())
    }

    /// Clips the global gradient norm to `max_norm` (0 disables) and returns the norm
    /// before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.grad_norm()?;
        if max_norm > 0.0 && norm > max_norm {
            self.scale_grads(max_norm / (norm + 1e-6))?;
        }
        Ok(norm)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = vec![];
        for (i, (name, _)) in self.params.iter().enumerate() {
            tensors.push((format!("m.{name}"), self.m[i].shallow_clone()));
            tensors.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        write_safetensors(path, &tensors, &BTreeMap::new())
    }

    fn load(&mut self, path: &Path) -> Result<()> {
        let mut f = SafetensorsFile::open(path)?;
        for (i, (name, _)) in self.params.iter().enumerate() {
            let m = f.read(&format!("m.{name}"))?;
            let v = f.read(&format!("v.{name}"))?;
            self.m[i] = m.f_to_device(self.m[i].device())?.f_to_kind(self.m[i].kind())?;
            self.v[i] = v.f_to_device(self.v[i].device())?.f_to_kind(self.v[i].kind())?;
        }
        Ok(())
    }
}

/// How a trainer's `train` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainEnd {
    /// The run's steps were done.
    Finished,
    /// Asked to stop; a checkpoint at `step` was written.
    Stopped {
        /// Optimizer steps done (and saved).
        step: u64,
    },
}

/// A run's checkpoints under `dir/checkpoints`: `step-N` directories and a `latest`
/// file naming the newest complete one.
pub struct Checkpoints {
    root: PathBuf,
    keep: usize,
}

impl Checkpoints {
    /// Checkpoints of the run in `dir`, keeping the newest `keep` (at least one).
    pub fn new(dir: &Path, keep: usize) -> Self {
        Checkpoints { root: dir.join("checkpoints"), keep: keep.max(1) }
    }

    /// Saves weights, moments, the trainer's state and config (`config_name`) to
    /// `step-N` and points `latest` at it; a crash at any moment leaves the previous
    /// checkpoint usable.
    pub fn save(
        &self,
        step: u64,
        model: &Qwen2,
        opt: &AdamW,
        state: &impl Serialize,
        config_name: &str,
        config: &impl Serialize,
    ) -> Result<PathBuf> {
        let root = &self.root;
        let name = format!("step-{step:08}");
        let tmp = root.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        model.save(&tmp, None)?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        let state = serde_json::to_vec_pretty(state).map_err(|e| ModelError::json("state", e))?;
        write_atomic(&tmp.join("trainer_state.json"), &state)?;
        let cfg = serde_json::to_vec_pretty(config).map_err(|e| ModelError::json("config", e))?;
        write_atomic(&tmp.join(config_name), &cfg)?;
        let dst = root.join(&name);
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::rename(&tmp, &dst).map_err(|e| ModelError::io(&dst, e))?;
        sync_dir(root);
        write_atomic(&root.join("latest"), name.as_bytes())?;
        // Prune old checkpoints only after `latest` points at the new one.
        let mut all: Vec<_> = std::fs::read_dir(root)
            .map_err(|e| ModelError::io(root, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("step-"))
            .collect();
        all.sort();
        for old in all.iter().take(all.len().saturating_sub(self.keep)) {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
        Ok(dst)
    }

    /// Loads the checkpoint `latest` names, if any, into `model` and `opt`, and returns
    /// the trainer state saved with it.
    pub fn restore<S: DeserializeOwned>(&self, model: &Qwen2, opt: &mut AdamW) -> Result<Option<S>> {
        let Some(ck) = latest_in(&self.root)? else { return Ok(None) };
        let text = std::fs::read_to_string(ck.join("trainer_state.json")).map_err(|e| ModelError::io(&ck, e))?;
        let state: S = serde_json::from_str(&text).map_err(|e| ModelError::json("trainer_state.json", e))?;
        let mut weights = vec![];
        crate::io::read_checkpoint(&ck, model.kind(), model.device(), |n, t| {
            weights.push((n.to_string(), t));
            Ok(())
        })?;
        model.copy_from(&weights)?;
        opt.load(&ck.join("optimizer.safetensors"))?;
        Ok(Some(state))
    }
}

/// The checkpoint `dir/checkpoints/latest` names, if any.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    latest_in(&dir.join("checkpoints"))
}

fn latest_in(root: &Path) -> Result<Option<PathBuf>> {
    let latest = root.join("latest");
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(|e| ModelError::io(&latest, e))?;
    let ck = root.join(name.trim());
    if !ck.join("trainer_state.json").exists() {
        return Err(invalid!("{} names {}, which is incomplete", latest.display(), ck.display()));
    }
    Ok(Some(ck))
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable on filesystems that need it.
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// The order of `n` items in `epoch`: a permutation seeded by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ epoch);
    order.shuffle(&mut rng);
    order
}
