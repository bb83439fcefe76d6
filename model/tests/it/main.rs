//! Integration tests for fleming-model, in one binary.
//!
//! Tests that need the Python reference (transformers) fail with a message
//! pointing at `scripts/ensure-torch` when it is missing; they never skip.

mod common;
mod generation;
mod grpo;
mod learn;
mod parity;
mod sft;
mod tokenizer;
