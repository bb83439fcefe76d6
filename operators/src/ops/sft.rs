//! `sft`: supervised fine-tuning in the torch worker (a smoke operator for the dispatch
//! protocol, and the base the distillation stage builds on). Declared here so that
//! pipelines validate and keys compute without libtorch; `fleming-worker` runs it.

use std::sync::LazyLock;

use fleming_runtime::op::{Execution, InputPorts, OpSpec, Operator, ParamSpec, ParamType, PortSpec};
use serde_json::json;

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "sft",
    // 2: questions are rendered with the shared prompt (context included) and completion
    // format; a `metrics` output.
    version: 2,
    summary: "Fine-tune a Qwen2-style model on prompt/completion pairs (loss on completions only)",
    doc: "Trains `base` (a Hugging Face safetensors directory) or, without one, a small model from scratch \
          with its own byte-level BPE tokenizer. Examples come from `prompt`/`completion` columns, or from a \
          questions table (question, options, answer, explanation). AdamW with warmup and cosine decay, \
          gradient clipping and accumulation; checkpoints in the stage's durable directory, so a killed \
          run resumes where it stopped with the same loss curve, and SIGTERM (Ctrl-C) saves one first. \
          Raising only `steps` continues the previous run from its final checkpoint (the cosine \
          schedule is stretched to the new end). `steps: 0` writes the initial model (the untrained \
          baseline). Runs on a GPU when one is assigned.",
    params: vec![
        ParamSpec::with_default(
            "steps",
            ParamType::Int,
            json!(200),
            "Optimizer steps (0: the initial model); raising it continues the previous run",
        )
        .range(Some(0.0), None)
        .continues(),
        ParamSpec::with_default("batch_size", ParamType::Int, json!(16), "Examples per micro-batch")
            .range(Some(1.0), None),
        ParamSpec::with_default("grad_accum", ParamType::Int, json!(1), "Micro-batches per optimizer step")
            .range(Some(1.0), None),
        ParamSpec::with_default("lr", ParamType::Float, json!(3e-3), "Peak learning rate").range(Some(0.0), None),
        ParamSpec::with_default("warmup_steps", ParamType::Int, json!(20), "Linear warmup steps before cosine decay")
            .range(Some(0.0), None),
        ParamSpec::with_default("weight_decay", ParamType::Float, json!(0.01), "AdamW weight decay")
            .range(Some(0.0), None),
        ParamSpec::with_default(
            "max_grad_norm",
            ParamType::Float,
            json!(1.0),
            "Clip the global gradient norm to this (0: no clipping)",
        )
        .range(Some(0.0), None),
        ParamSpec::with_default(
            "max_len",
            ParamType::Int,
            json!(512),
            "Longest prompt+completion in tokens (longer are cut)",
        )
        .range(Some(8.0), None),
        ParamSpec::with_default("seed", ParamType::Int, json!(0), "Seed of initialisation, data order and dropout"),
        ParamSpec::with_default(
            "checkpoint_every",
            ParamType::Int,
            json!(50),
            "Steps between checkpoints (resume is exact, so this does not change the result)",
        )
        .range(Some(1.0), None)
        .not_in_key(),
        ParamSpec::with_default("vocab_size", ParamType::Int, json!(512), "From scratch: tokenizer vocabulary size")
            .range(Some(260.0), None),
        ParamSpec::with_default("hidden_size", ParamType::Int, json!(64), "From scratch: hidden size")
            .range(Some(8.0), None),
        ParamSpec::with_default("layers", ParamType::Int, json!(2), "From scratch: decoder layers")
            .range(Some(1.0), None),
        ParamSpec::with_default("heads", ParamType::Int, json!(4), "From scratch: attention heads")
            .range(Some(1.0), None),
        ParamSpec::with_default(
            "kv_heads",
            ParamType::Int,
            json!(2),
            "From scratch: key/value heads (grouped-query attention)",
        )
        .range(Some(1.0), None),
    ],
    inputs: InputPorts::Fixed(vec![
        PortSpec::table("examples", "prompt/completion pairs, or questions with answers"),
        PortSpec::model("base", "model to fine-tune (default: train a small one from scratch)").optional(),
    ]),
    outputs: vec![
        PortSpec::model("model", "the fine-tuned model (safetensors, config, tokenizer)"),
        PortSpec::table("metrics", "one row per optimizer step: step, loss, lr, grad_norm, tokens, tokens_per_s"),
    ],
    execution: Execution::Worker,
    fingerprint: crate::fingerprints::sft.to_string(),
});

/// The `sft` operator (executed by `fleming-worker`).
#[derive(Default)]
pub struct Sft;

impl Sft {
    /// The operator.
    pub fn new() -> Self {
        Sft
    }
}

impl Operator for Sft {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }
}
