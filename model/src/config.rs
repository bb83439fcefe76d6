//! The Qwen2 configuration, field for field a Hugging Face `config.json`.

use crate::{ModelError, Result, invalid};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_init_range() -> f64 {
    0.02
}
fn default_act() -> String {
    "silu".into()
}
fn default_model_type() -> String {
    "qwen2".into()
}
fn default_architectures() -> Vec<String> {
    vec!["Qwen2ForCausalLM".into()]
}

/// A Qwen2 `config.json`. Unknown keys are kept in `extra` so a load/save round
/// trip does not lose what transformers wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Qwen2Config {
    /// Always `["Qwen2ForCausalLM"]` for what we write.
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    /// `"qwen2"`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Longest position the model was trained for.
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// RoPE base as transformers 4 writes it; transformers 5 writes
    /// `rope_parameters.rope_theta` instead (kept in `extra`). Use [`Qwen2Config::rope_theta`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// MLP activation; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Std of the normal initialisation used when training from scratch.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Beginning-of-sequence id, if any.
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// dtype the checkpoint was saved in (informational).
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Every other key, kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Qwen2Config {
    /// A small config for tests and from-scratch models.
    pub fn small(vocab_size: usize, hidden: usize, layers: usize, heads: usize, kv_heads: usize) -> Self {
        Qwen2Config {
            architectures: default_architectures(),
            model_type: default_model_type(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: hidden * 3,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            max_position_embeddings: Some(2048),
            rope_theta: Some(default_rope_theta()),
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            hidden_act: default_act(),
            initializer_range: default_init_range(),
            bos_token_id: None,
            eos_token_id: None,
            torch_dtype: Some("float32".into()),
            extra: Default::default(),
        }
    }

    /// The RoPE base, from either config generation.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.extra.get("rope_parameters").and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64()))
            .unwrap_or_else(default_rope_theta)
    }

    /// Key/value heads, resolving the default.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.extra
            .get("head_dim")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// End-of-sequence ids listed in the config.
    pub fn eos_ids(&self) -> Vec<i64> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_i64()).collect(),
            _ => vec![],
        }
    }

    /// Checks the invariants the implementation relies on.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_act != "silu" {
            return Err(invalid!("unsupported hidden_act {:?} (only silu)", self.hidden_act));
        }
        if self.num_attention_heads == 0 || self.kv_heads() == 0 {
            return Err(invalid!("attention heads must be positive"));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(invalid!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(invalid!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        if let Some(kind) = self.extra.get("rope_parameters").and_then(|p| p.get("rope_type"))
            && kind.as_str() != Some("default")
        {
            return Err(invalid!("rope_parameters.rope_type {kind} is not supported (only default)"));
        }
        if self.extra.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true) {
            return Err(invalid!("use_sliding_window=true is not supported"));
        }
        if let Some(rs) = self.extra.get("rope_scaling")
            && !rs.is_null()
        {
            return Err(invalid!("rope_scaling is not supported: {rs}"));
        }
        Ok(())
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let cfg: Qwen2Config =
            serde_json::from_str(&text).map_err(|e| ModelError::json(path.display().to_string(), e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes `config.json` (pretty, as transformers does).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(self).map_err(|e| ModelError::json("config", e))?;
        crate::io::write_atomic(path, text.as_bytes())
    }
}
