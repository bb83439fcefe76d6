//! fleming-model: a Qwen2 decoder on tch (libtorch) with Hugging Face
//! checkpoints, a tokenizer and chat format, batched generation and SFT.
//! It knows nothing of pipelines; the worker binary builds on it.

pub mod config;
pub mod error;
pub mod io;
pub mod qwen2;

pub use config::Qwen2Config;
pub use error::{ModelError, Result};
pub use qwen2::{KvCache, Placement, Qwen2};
