//! fleming-model: a Qwen2 decoder on tch (libtorch) with Hugging Face
//! checkpoints, a tokenizer and chat format, batched generation and SFT.
//! It knows nothing of pipelines; the worker binary builds on it.

#![deny(missing_docs)]

pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod grpo;
pub mod io;
pub mod qwen2;
pub mod sft;
pub mod tokenizer;
pub mod toy;
pub mod train;

pub use config::Qwen2Config;
pub use engine::Engine;
pub use error::{ModelError, Result};
pub use generate::{Flow, Generated, SamplingParams, generate, generate_with};
pub use qwen2::{KvCache, Placement, Qwen2};
pub use sft::{Example, MetricsRow, SftConfig, SftTrainer};
pub use tokenizer::TextTokenizer;
pub use train::TrainEnd;

/// Sets libtorch's intra-op thread count (benchmarks pin it; 0 leaves the default).
pub fn set_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}
