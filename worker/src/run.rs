//! `fleming-worker run JOB.json`: executes one stage dispatched by the runtime
//! (protocol in `fleming_runtime::dispatch`). Events go to stdout, logs to stderr.

use anyhow::{Context, bail};
use arrow::array::{Array, ListArray, RecordBatch, StringArray, StructArray};
use fleming_model::chat::{completion, mcq_prompt};
use fleming_model::sft::{Example, SftConfig, SftTrainer};
use fleming_model::{Placement, Qwen2, Qwen2Config, TextTokenizer};
use fleming_runtime::dispatch::worker::WorkerSession;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::Instant;

/// Runs the job and returns the process exit code (0 after `done`).
pub fn run(job_path: &Path) -> i32 {
    let session = match WorkerSession::start(job_path, "fleming-worker", env!("CARGO_PKG_VERSION")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleming-worker: {e:#}");
            return 2;
        }
    };
    fleming_model::set_threads(session.job.threads);
    let result = match session.job.op.as_str() {
        "sft" => sft(&session),
        other => Err(anyhow::anyhow!("fleming-worker does not run the operator `{other}`")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fleming-worker: {e:#}");
            session.fail(&format!("{e:#}"));
            1
        }
    }
}

/// The device the runtime assigned (GPUs are renumbered from 0 by CUDA_VISIBLE_DEVICES).
fn device(s: &WorkerSession) -> tch::Device {
    if s.job.device.kind == "cuda" && tch::Cuda::is_available() { tch::Device::Cuda(0) } else { tch::Device::Cpu }
}

/// Parameters of the `sft` smoke operator; every one has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct SftParams {
    steps: u64,
    batch_size: usize,
    grad_accum: usize,
    lr: f64,
    warmup_steps: u64,
    weight_decay: f64,
    max_len: usize,
    seed: u64,
    checkpoint_every: u64,
    /// From-scratch model shape (ignored when a `base` model is connected).
    vocab_size: usize,
    hidden_size: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
}

impl Default for SftParams {
    fn default() -> Self {
        SftParams {
            steps: 200,
            batch_size: 16,
            grad_accum: 1,
            lr: 3e-3,
            warmup_steps: 20,
            weight_decay: 0.01,
            max_len: 512,
            seed: 0,
            checkpoint_every: 50,
            vocab_size: 512,
            hidden_size: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
        }
    }
}

fn string_col<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>())
}

/// (prompt, completion) texts: from `prompt`/`completion` columns, or built from a
/// `questions` table (question, options[{label,text}], answer, explanation).
fn training_texts(batch: &RecordBatch) -> anyhow::Result<Vec<(String, String)>> {
    if let (Some(p), Some(c)) = (string_col(batch, "prompt"), string_col(batch, "completion")) {
        return Ok((0..batch.num_rows()).map(|i| (p.value(i).to_string(), c.value(i).to_string())).collect());
    }
    let (Some(q), Some(a)) = (string_col(batch, "question"), string_col(batch, "answer")) else {
        bail!("the examples table needs prompt+completion columns, or question+options+answer");
    };
    let options = batch
        .column_by_name("options")
        .and_then(|c| c.as_any().downcast_ref::<ListArray>())
        .context("the `options` column must be a list of {label, text}")?;
    let explanation = string_col(batch, "explanation");
    let mut out = vec![];
    for i in 0..batch.num_rows() {
        let opts = options.value(i);
        let st = opts.as_any().downcast_ref::<StructArray>().context("options must be structs")?;
        let labels = st.column_by_name("label").and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let texts = st.column_by_name("text").and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let (Some(labels), Some(texts)) = (labels, texts) else {
            bail!("options need string `label` and `text` fields")
        };
        let pairs: Vec<(String, String)> =
            (0..st.len()).map(|j| (labels.value(j).to_string(), texts.value(j).to_string())).collect();
        let reasoning = explanation.filter(|e| !e.is_null(i)).map(|e| e.value(i).to_string()).unwrap_or_default();
        out.push((mcq_prompt(q.value(i), &pairs), completion(&reasoning, a.value(i))));
    }
    Ok(out)
}

fn sft(s: &WorkerSession) -> anyhow::Result<()> {
    let params: SftParams = serde_json::from_value(Value::Object(s.job.params.clone())).context("sft parameters")?;
    let table = s.input_table("examples", 0)?;
    let batch = table.concat()?;
    let texts = training_texts(&batch)?;
    if texts.is_empty() {
        bail!("the examples table is empty");
    }
    let dev = device(s);
    let placement = Placement { device: Some(dev), kind: None };
    let ck_dir = s.job.checkpoint_dir.clone();
    std::fs::create_dir_all(&ck_dir).with_context(|| format!("creating {}", ck_dir.display()))?;
    let (mut model, tokenizer) = match s.job.inputs.get("base").and_then(|v| v.first()) {
        Some(_) => {
            let dir = s.input_model("base")?;
            (Qwen2::load(&dir, placement)?, TextTokenizer::from_dir(&dir)?)
        }
        None => {
            // The tokenizer is kept with the checkpoints so a resumed run uses the very same ids.
            let tk_dir = ck_dir.join("tokenizer");
            let tk = if tk_dir.join("tokenizer.json").exists() {
                TextTokenizer::from_dir(&tk_dir)?
            } else {
                let tk = TextTokenizer::train_bpe(texts.iter().map(|(p, c)| format!("{p}{c}")), params.vocab_size)?;
                tk.save(&tk_dir)?;
                tk
            };
            let mut cfg =
                Qwen2Config::small(tk.vocab_size(), params.hidden_size, params.layers, params.heads, params.kv_heads);
            cfg.eos_token_id = tk.token_id("<|im_end|>").map(Value::from);
            (Qwen2::new_random(cfg, placement, params.seed)?, tk)
        }
    };
    let examples: Vec<Example> = texts
        .iter()
        .map(|(p, c)| Ok(Example { prompt: tokenizer.encode(p)?, completion: tokenizer.encode(c)? }))
        .collect::<fleming_model::Result<_>>()?;
    s.log("info", &format!("sft: {} examples, {} parameters on {dev:?}", examples.len(), model.num_parameters()));
    let cfg = SftConfig {
        lr: params.lr,
        warmup_steps: params.warmup_steps,
        total_steps: params.steps,
        batch_size: params.batch_size,
        grad_accum: params.grad_accum,
        weight_decay: params.weight_decay,
        max_len: params.max_len,
        seed: params.seed,
        checkpoint_every: params.checkpoint_every,
        ..Default::default()
    };
    let start = Instant::now();
    let mut last_loss = f64::NAN;
    {
        let mut trainer = SftTrainer::new(&mut model, &examples, cfg, &ck_dir, tokenizer.pad_id())?;
        if trainer.state.step > 0 {
            s.log("info", &format!("sft: resuming at step {}", trainer.state.step));
        }
        let total = params.steps;
        trainer.train(|row| {
            last_loss = row.loss;
            let mut m = Map::new();
            m.insert("loss".into(), json!(row.loss));
            m.insert("lr".into(), json!(row.lr));
            m.insert("grad_norm".into(), json!(row.grad_norm));
            m.insert("tokens_per_s".into(), json!(row.tokens_per_s));
            s.metrics(Some(row.step), m);
            s.progress(row.step, Some(total), "steps");
            Ok(())
        })?;
    }
    let out = s.model_dir("model")?;
    model.save(&out, None)?;
    tokenizer.save(&out)?;
    let mut m = Map::new();
    m.insert("final_loss".into(), json!(last_loss));
    m.insert("steps".into(), json!(params.steps));
    m.insert("examples".into(), json!(examples.len()));
    m.insert("train_seconds".into(), json!(start.elapsed().as_secs_f64()));
    s.done(m);
    Ok(())
}
