//! The Qwen2 decoder in tch. Parameter names are the Hugging Face names
//! (`model.layers.0.self_attn.q_proj.weight`, …) so checkpoints load and save
//! without a name table.

use crate::config::Qwen2Config;
use crate::io;
use crate::{ModelError, Result, invalid};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Where and in what precision to put a model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement {
    /// `None`: CUDA when available, else CPU.
    pub device: Option<Device>,
    /// `None`: bf16 on CUDA, f32 on CPU.
    pub kind: Option<Kind>,
}

impl Placement {
    /// Resolves the automatic choices.
    pub fn resolve(&self) -> (Device, Kind) {
        let device = self.device.unwrap_or_else(Device::cuda_if_available);
        let kind = self.kind.unwrap_or(if device.is_cuda() { Kind::BFloat16 } else { Kind::Float });
        (device, kind)
    }

    /// Parses a device name: `auto`, `cpu`, `cuda`, `cuda:N`.
    pub fn parse_device(s: &str) -> Result<Option<Device>> {
        Ok(match s {
            "auto" | "" => None,
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            s => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => Some(Device::Cuda(n)),
                None => return Err(invalid!("unknown device {s:?} (auto, cpu, cuda, cuda:N)")),
            },
        })
    }
}

struct Layer {
    q_w: Tensor,
    q_b: Tensor,
    k_w: Tensor,
    k_b: Tensor,
    v_w: Tensor,
    v_b: Tensor,
    o_w: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    ln1: Tensor,
    ln2: Tensor,
}

/// Keys and values of the positions seen so far, per layer.
pub struct KvCache {
    /// Per layer, key and value buffers `[B, kv_heads, capacity, head_dim]`: positions
    /// `0..len` are held, the rest is room to append without copying.
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
}

/// Positions of room a cache buffer grows by beyond what it must hold: one copy of the
/// cache per this many decode steps, instead of one per step.
const CACHE_GROWTH: i64 = 256;

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }
    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows (sequences) held; 0 before the first forward.
    pub fn rows(&self) -> i64 {
        self.layers.iter().flatten().next().map_or(0, |(k, _)| k.size()[0])
    }

    /// The held positions of every layer, without the room after them.
    fn held(&mut self) -> Result<()> {
        let len = self.len;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.f_narrow(2, 0, len)?;
            *v = v.f_narrow(2, 0, len)?;
        }
        Ok(())
    }

    /// Adds `n` empty positions before the held ones (masked out by the caller's key
    /// mask), so that sequences of different lengths can share the cache.
    pub fn pad_left(&mut self, n: i64) -> Result<()> {
        if n <= 0 {
            return Ok(());
        }
        self.held()?;
        for (k, v) in self.layers.iter_mut().flatten() {
            let s = k.size();
            let z = Tensor::f_zeros([s[0], s[1], n, s[3]], (k.kind(), k.device()))?;
            *k = Tensor::f_cat(&[&z, &*k], 2)?;
            *v = Tensor::f_cat(&[&z, &*v], 2)?;
        }
        self.len += n;
        Ok(())
    }

    /// Drops the first `n` positions (when no remaining sequence attends to them).
    pub fn trim_left(&mut self, n: i64) -> Result<()> {
        if n <= 0 {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let room = k.size()[2] - n;
            *k = k.f_narrow(2, n, room)?;
            *v = v.f_narrow(2, n, room)?;
        }
        self.len -= n;
        Ok(())
    }

    /// Appends the sequences of `other` (of the same length) after this cache's rows.
    pub fn append_rows(&mut self, mut other: KvCache) -> Result<()> {
        if self.rows() == 0 {
            *self = other;
            return Ok(());
        }
        if other.len != self.len || other.layers.len() != self.layers.len() {
            return Err(invalid!("caches of {} and {} positions cannot be joined", self.len, other.len));
        }
        self.held()?;
        other.held()?;
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            if let (Some((k, v)), Some((k2, v2))) = (mine.as_mut(), theirs) {
                *k = Tensor::f_cat(&[&*k, &k2], 0)?;
                *v = Tensor::f_cat(&[&*v, &v2], 0)?;
            }
        }
        Ok(())
    }

    /// Keeps the rows listed in `rows`, in that order.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        self.held()?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.f_index_select(0, rows)?;
            *v = v.f_index_select(0, rows)?;
        }
        Ok(())
    }

    /// Appends one layer's new keys and values `[B, kv_heads, T, head_dim]` after the
    /// `past` held positions and returns all `past + T` of them. Without gradients the
    /// new ones are written into the buffer's room (grown by [`CACHE_GROWTH`] when full);
    /// with gradients (training through a cache) they are concatenated, which autograd
    /// can follow.
    fn append(&mut self, layer: usize, past: i64, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2];
        let slot = self.layers.get_mut(layer).ok_or_else(|| invalid!("no cache for layer {layer}"))?;
        let (bk, bv) = match slot.take() {
            Some((pk, pv)) if k.requires_grad() || v.requires_grad() => {
                let (k, v) = (
                    Tensor::f_cat(&[&pk.f_narrow(2, 0, past)?, &k], 2)?,
                    Tensor::f_cat(&[&pv.f_narrow(2, 0, past)?, &v], 2)?,
                );
                *slot = Some((k.shallow_clone(), v.shallow_clone()));
                return Ok((k, v));
            }
            None if k.requires_grad() || v.requires_grad() => {
                *slot = Some((k.shallow_clone(), v.shallow_clone()));
                return Ok((k, v));
            }
            Some((pk, pv)) if pk.size()[2] >= past + t => (pk, pv),
            held => {
                let s = k.size();
                let capacity = past + t + CACHE_GROWTH;
                let bk = Tensor::f_empty([s[0], s[1], capacity, s[3]], (k.kind(), k.device()))?;
                let bv = Tensor::f_empty([s[0], s[1], capacity, s[3]], (v.kind(), v.device()))?;
                if let Some((pk, pv)) = held {
                    bk.f_narrow(2, 0, past)?.f_copy_(&pk.f_narrow(2, 0, past)?)?;
                    bv.f_narrow(2, 0, past)?.f_copy_(&pv.f_narrow(2, 0, past)?)?;
                }
                (bk, bv)
            }
        };
        bk.f_narrow(2, past, t)?.f_copy_(&k)?;
        bv.f_narrow(2, past, t)?.f_copy_(&v)?;
        let out = (bk.f_narrow(2, 0, past + t)?, bv.f_narrow(2, 0, past + t)?);
        *slot = Some((bk, bv));
        Ok(out)
    }
}

/// A Qwen2 causal language model.
pub struct Qwen2 {
    /// The configuration it was built from.
    pub config: Qwen2Config,
    device: Device,
    kind: Kind,
    /// Parameters by HF name, in a stable order (lm_head absent when tied).
    params: BTreeMap<String, Tensor>,
    layers: Vec<Layer>,
    embed: Tensor,
    norm: Tensor,
    lm_head: Tensor,
    inv_freq: Tensor,
}

/// The HF names and shapes a config implies, in checkpoint order.
pub fn param_shapes(c: &Qwen2Config) -> Vec<(String, Vec<i64>)> {
    let h = c.hidden_size as i64;
    let i = c.intermediate_size as i64;
    let hd = c.head_dim() as i64;
    let nq = c.num_attention_heads as i64 * hd;
    let nkv = c.kv_heads() as i64 * hd;
    let v = c.vocab_size as i64;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![nq, h]),
            (format!("{p}.self_attn.q_proj.bias"), vec![nq]),
            (format!("{p}.self_attn.k_proj.weight"), vec![nkv, h]),
            (format!("{p}.self_attn.k_proj.bias"), vec![nkv]),
            (format!("{p}.self_attn.v_proj.weight"), vec![nkv, h]),
            (format!("{p}.self_attn.v_proj.bias"), vec![nkv]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, nq]),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        ]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}

fn is_norm(name: &str) -> bool {
    name.ends_with("layernorm.weight") || name == "model.norm.weight"
}

impl Qwen2 {
    /// A freshly initialised model (normal(0, initializer_range) weights, unit
    /// norms, zero biases), seeded so the same seed gives the same weights.
    pub fn new_random(config: Qwen2Config, placement: Placement, seed: u64) -> Result<Self> {
        config.validate()?;
        let (device, kind) = placement.resolve();
        // libtorch's generator is global: two models initialised at once on two threads
        // would interleave their draws. Seeding and drawing under one lock keeps the
        // "same seed, same weights" promise.
        static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed as i64);
        let mut params = BTreeMap::new();
        for (name, shape) in param_shapes(&config) {
            let t = if is_norm(&name) {
                Tensor::f_ones(&shape, (Kind::Float, Device::Cpu))?
            } else if name.ends_with(".bias") {
                Tensor::f_zeros(&shape, (Kind::Float, Device::Cpu))?
            } else {
                (Tensor::f_randn(&shape, (Kind::Float, Device::Cpu))? * config.initializer_range).f_contiguous()?
            };
            params.insert(name, t.f_to_device(device)?.f_to_kind(kind)?);
        }
        Self::from_params(config, params, device, kind)
    }

    /// Loads a HF checkpoint directory (`config.json` + safetensors, sharded or not).
    pub fn load(dir: impl AsRef<Path>, placement: Placement) -> Result<Self> {
        let dir = dir.as_ref();
        let config = Qwen2Config::from_file(dir.join("config.json"))?;
        let (device, kind) = placement.resolve();
        let expected: BTreeMap<String, Vec<i64>> = param_shapes(&config).into_iter().collect();
        let mut params = BTreeMap::new();
        let mut unexpected = vec![];
        io::read_checkpoint(dir, kind, device, |name, t| {
            match expected.get(name) {
                Some(shape) if t.size() == *shape => {
                    params.insert(name.to_string(), t);
                }
                Some(shape) => {
                    return Err(invalid!("{name}: shape {:?} in the checkpoint, config implies {shape:?}", t.size()));
                }
                // Tied checkpoints sometimes still carry lm_head; old ones carry inv_freq buffers.
                None if name == "lm_head.weight" || name.ends_with("rotary_emb.inv_freq") => {}
                None => unexpected.push(name.to_string()),
            }
            Ok(())
        })?;
        if !unexpected.is_empty() {
            return Err(invalid!("{}: tensors a Qwen2 model does not have: {unexpected:?}", dir.display()));
        }
        let missing: Vec<_> = expected.keys().filter(|k| !params.contains_key(*k)).collect();
        if !missing.is_empty() {
            return Err(invalid!("{}: missing tensors {missing:?}", dir.display()));
        }
        Self::from_params(config, params, device, kind)
    }

    fn from_params(config: Qwen2Config, params: BTreeMap<String, Tensor>, device: Device, kind: Kind) -> Result<Self> {
        let get = |n: &str| -> Result<Tensor> {
            params.get(n).map(|t| t.shallow_clone()).ok_or_else(|| invalid!("missing parameter {n}"))
        };
        let mut layers = vec![];
        for l in 0..config.num_hidden_layers {
            let p = |s: &str| get(&format!("model.layers.{l}.{s}"));
            layers.push(Layer {
                q_w: p("self_attn.q_proj.weight")?,
                q_b: p("self_attn.q_proj.bias")?,
                k_w: p("self_attn.k_proj.weight")?,
                k_b: p("self_attn.k_proj.bias")?,
                v_w: p("self_attn.v_proj.weight")?,
                v_b: p("self_attn.v_proj.bias")?,
                o_w: p("self_attn.o_proj.weight")?,
                gate: p("mlp.gate_proj.weight")?,
                up: p("mlp.up_proj.weight")?,
                down: p("mlp.down_proj.weight")?,
                ln1: p("input_layernorm.weight")?,
                ln2: p("post_attention_layernorm.weight")?,
            });
        }
        let embed = get("model.embed_tokens.weight")?;
        let lm_head = if config.tie_word_embeddings { embed.shallow_clone() } else { get("lm_head.weight")? };
        let hd = config.head_dim() as i64;
        let inv_freq = (Tensor::f_arange_start_step(0, hd, 2, (Kind::Float, Device::Cpu))? / hd as f64)
            .f_mul_scalar(config.rope_theta().ln())?
            .f_exp()?
            .f_reciprocal()?
            .f_to_device(device)?;
        Ok(Qwen2 { norm: get("model.norm.weight")?, config, device, kind, params, layers, embed, lm_head, inv_freq })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The weights' kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Parameters by HF name (lm_head omitted when tied).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect()
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> i64 {
        self.params.values().map(|t| t.numel() as i64).sum()
    }

    /// Bytes the weights take in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.params.values().map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum()
    }

    /// Turns gradient tracking on or off for every parameter.
    pub fn set_requires_grad(&mut self, on: bool) -> Result<()> {
        for t in self.params.values_mut() {
            // requires_grad_ on a shallow clone flips the flag on the shared tensor.
            let _ = t.f_requires_grad_(on)?;
        }
        Ok(())
    }

    /// Overwrites parameters in place from `(name, tensor)` pairs (no graph).
    pub fn copy_from(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, src) in tensors {
                let dst = self.params.get(name).ok_or_else(|| invalid!("no parameter {name}"))?;
                let mut dst = dst.shallow_clone();
                dst.f_copy_(&src.f_to_device(self.device)?.f_to_kind(self.kind)?)?;
            }
            Ok(())
        })
    }

    /// Saves `config.json` and `model.safetensors` (sharded above `max_shard_bytes`).
    pub fn save(&self, dir: impl AsRef<Path>, max_shard_bytes: Option<u64>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut config = self.config.clone();
        config.torch_dtype = Some(
            match self.kind {
                Kind::BFloat16 => "bfloat16",
                Kind::Half => "float16",
                _ => "float32",
            }
            .into(),
        );
        // Save in HF's order (embed, layers, norm, head) rather than alphabetical.
        let tensors: Vec<(String, Tensor)> = param_shapes(&config)
            .into_iter()
            .filter_map(|(n, _)| self.params.get(&n).map(|t| (n, t.shallow_clone())))
            .collect();
        io::write_checkpoint(dir, &tensors, max_shard_bytes)?;
        config.save(dir.join("config.json"))
    }

    /// An empty cache for [`Qwen2::forward`].
    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: (0..self.config.num_hidden_layers).map(|_| None).collect(), len: 0 }
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf.f_pow_tensor_scalar(2)?.f_mean_dim(-1, true, Kind::Float)?;
        let normed = (xf * (var + self.config.rms_norm_eps).f_rsqrt()?).f_to_kind(x.kind())?;
        Ok(normed * w)
    }

    /// Runs the decoder.
    ///
    /// * `ids`: `[B, T]` int64 token ids.
    /// * `key_mask`: `[B, past + T]` bool, false at padding; `None` means no padding.
    /// * `cache`: extended in place with this call's keys and values.
    /// * `last_only`: return logits of the last position only (`[B, 1, V]`).
    ///
    /// Returns `[B, T, V]` logits in f32.
    pub fn forward(
        &self,
        ids: &Tensor,
        key_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Tensor> {
        self.logits(&self.hidden(ids, key_mask, cache, last_only)?)
    }

    /// The f32 logits of final hidden states (`[.., H]` to `[.., V]`): with
    /// [`Qwen2::hidden`], lets a caller project a few positions at a time instead of
    /// holding `[B, T, V]` logits at once.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.f_linear::<&Tensor>(&self.lm_head, None)?.f_to_kind(Kind::Float)?)
    }

    /// Runs the decoder like [`Qwen2::forward`] and returns the final normalised hidden
    /// states (`[B, T, H]`, or `[B, 1, H]` with `last_only`) in the model's dtype.
    pub fn hidden(
        &self,
        ids: &Tensor,
        key_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Tensor> {
        let size = ids.size();
        let (b, t) = match size.as_slice() {
            [b, t] => (*b, *t),
            _ => return Err(invalid!("ids must be [batch, seq], got {size:?}")),
        };
        let past = cache.as_ref().map_or(0, |c| c.len);
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads as i64, c.kv_heads() as i64, c.head_dim() as i64);

        // Positions count real tokens only, so left padding does not shift RoPE.
        let positions = match key_mask {
            Some(m) => {
                let pos = m.f_to_kind(Kind::Int64)?.f_cumsum(1, Kind::Int64)?.f_sub_scalar(1)?.f_clamp_min(0)?;
                pos.f_narrow(1, past, t)?
            }
            None => Tensor::f_arange_start(past, past + t, (Kind::Int64, self.device))?
                .f_unsqueeze(0)?
                .f_expand([b, t], false)?,
        };
        let freqs = positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)? * self.inv_freq.f_view([1, 1, -1])?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let cos = emb.f_cos()?.f_to_kind(self.kind)?.f_unsqueeze(1)?;
        let sin = emb.f_sin()?.f_to_kind(self.kind)?.f_unsqueeze(1)?;

        // Attention mask: None lets SDPA use its causal fast path.
        let total = past + t;
        let mask = match key_mask {
            None => None,
            Some(m) => {
                let q_pos = Tensor::f_arange_start(past, total, (Kind::Int64, self.device))?.f_view([t, 1])?;
                let k_pos = Tensor::f_arange(total, (Kind::Int64, self.device))?.f_view([1, total])?;
                let causal = k_pos.f_le_tensor(&q_pos)?;
                let allowed = causal.f_unsqueeze(0)?.f_logical_and(&m.f_view([b, 1, total])?)?;
                // Let every query see itself so padded rows never become all -inf (NaN).
                let diag = k_pos.f_eq_tensor(&q_pos)?.f_unsqueeze(0)?;
                Some(allowed.f_logical_or(&diag)?.f_unsqueeze(1)?)
            }
        };
        let is_causal = mask.is_none() && t > 1 && past == 0;
        if mask.is_none() && t > 1 && past > 0 {
            return Err(invalid!("a multi-token step after the cache has content needs a key_mask"));
        }

        let mut x = Tensor::f_embedding(&self.embed, ids, -1, false, false)?;
        for (li, l) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &l.ln1)?;
            let q = h.f_linear(&l.q_w, Some(&l.q_b))?.f_view([b, t, nh, hd])?.f_transpose(1, 2)?;
            let k = h.f_linear(&l.k_w, Some(&l.k_b))?.f_view([b, t, nkv, hd])?.f_transpose(1, 2)?;
            let v = h.f_linear(&l.v_w, Some(&l.v_b))?.f_view([b, t, nkv, hd])?.f_transpose(1, 2)?;
            let q = rope(&q, &cos, &sin)?;
            let k = rope(&k, &cos, &sin)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(cache) => cache.append(li, past, k, v)?,
                None => (k, v),
            };
            let a = Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), 0.0, is_causal, None, nkv != nh)?;
            let a = a.f_transpose(1, 2)?.f_reshape([b, t, nh * hd])?.f_linear::<&Tensor>(&l.o_w, None)?;
            // Out of place: autograd saved x for the norm's backward.
            x = x.f_add(&a)?;
            let h = self.rms_norm(&x, &l.ln2)?;
            let g = h.f_linear::<&Tensor>(&l.gate, None)?.f_silu()?;
            let u = h.f_linear::<&Tensor>(&l.up, None)?;
            x = x.f_add(&(g * u).f_linear::<&Tensor>(&l.down, None)?)?;
        }
        if let Some(cache) = cache {
            cache.len = total;
        }
        let x = if last_only { x.f_narrow(1, t - 1, 1)? } else { x };
        self.rms_norm(&x, &self.norm)
    }
}

/// Rotary embedding, HF's rotate-half convention.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let x1 = x.f_narrow(3, 0, half)?;
    let x2 = x.f_narrow(3, half, half)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], 3)?;
    Ok(x * cos + rotated * sin)
}

impl Qwen2 {
    /// Reorders or selects cache rows (e.g. to drop finished sequences).
    pub fn select_cache_rows(cache: &mut KvCache, rows: &Tensor) -> Result<()> {
        cache.select_rows(rows)
    }
}

impl std::fmt::Debug for Qwen2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen2")
            .field("device", &self.device)
            .field("kind", &self.kind)
            .field("params", &self.num_parameters())
            .finish()
    }
}

/// Error if `t` is not finite (a diverged run should stop loudly).
pub fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let ok = t.f_isfinite()?.f_all()?.f_int64_value(&[])? == 1;
    if ok { Ok(()) } else { Err(ModelError::Invalid(format!("{what} is not finite"))) }
}
