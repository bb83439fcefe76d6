//! What the worker's operators share: the device, training texts from a table, and
//! starting a training run where the last one stopped.

use std::path::Path;

use anyhow::{Context, bail};
use arrow::array::{Array, RecordBatch, StringArray};
use fleming_dispatch::WorkerSession;
use fleming_model::chat::{question_prompt, training_completion};

/// The device the runtime assigned (GPUs are renumbered from 0 by `CUDA_VISIBLE_DEVICES`).
/// A GPU that libtorch cannot see is an error, not a silent run on the CPU: training a
/// large model there would take days before anyone noticed.
pub fn device(s: &WorkerSession) -> anyhow::Result<tch::Device> {
    if s.job.device.kind != "cuda" {
        return Ok(tch::Device::Cpu);
    }
    if !tch::Cuda::is_available() {
        bail!(
            "the stage was given GPU(s) {:?}, but libtorch sees no CUDA device (a CPU-only torch, or a driver \
             problem); set FLEMING_GPUS=none to run GPU stages on the CPU",
            s.job.device.gpus
        );
    }
    Ok(tch::Device::Cuda(0))
}

fn string_col<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>())
}

/// (prompt, completion) texts of a training table: its `prompt`/`completion` columns, or
/// for a `questions` table the shared prompt (context, stem, options) and the shared
/// completion format with the item's explanation as the reasoning.
pub fn training_texts(batch: &RecordBatch) -> anyhow::Result<Vec<(String, String)>> {
    if let (Some(p), Some(c)) = (string_col(batch, "prompt"), string_col(batch, "completion")) {
        return Ok((0..batch.num_rows())
            .filter(|&i| p.is_valid(i) && c.is_valid(i))
            .map(|i| (p.value(i).to_string(), c.value(i).to_string()))
            .collect());
    }
    if batch.column_by_name("question").is_none() || batch.column_by_name("answer").is_none() {
        bail!("the examples table needs prompt+completion columns, or question+options+answer");
    }
    let items = fleming_questions::table::from_batches([batch], "unknown").context("reading the questions")?;
    Ok(items
        .iter()
        .map(|q| (question_prompt(q), training_completion(q.explanation.as_deref().unwrap_or(""), &q.answer)))
        .collect())
}

/// Copies `from` into `to`, recursively. Files of 1 MiB and more (weights, optimizer
/// moments: never modified in place, only replaced) are hard-linked where the filesystem
/// allows; smaller ones (the metrics log, which is appended to) are copied.
pub fn link_or_copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            link_or_copy_dir(&e.path(), &dest)?;
            continue;
        }
        let big = e.metadata().map(|m| m.len() >= 1 << 20).unwrap_or(false);
        if !(big && std::fs::hard_link(e.path(), &dest).is_ok()) {
            std::fs::copy(e.path(), &dest).with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Prepares the job's checkpoint directory: when it holds no checkpoint yet and the job
/// continues a previous run (`resume_from`), that run's final checkpoint, tokenizer and
/// metrics are brought in, so the trainer resumes from them. Returns whether it did.
pub fn adopt_previous_run(s: &WorkerSession) -> anyhow::Result<bool> {
    let ck = &s.job.checkpoint_dir;
    std::fs::create_dir_all(ck).with_context(|| format!("creating {}", ck.display()))?;
    let Some(prev) = &s.job.resume_from else { return Ok(false) };
    if ck.join("checkpoints").join("latest").exists() {
        return Ok(false);
    }
    if !prev.join("checkpoints").join("latest").exists() {
        s.log("warn", &format!("the previous run's checkpoint {} is gone; training from the start", prev.display()));
        return Ok(false);
    }
    // Into a temporary directory first, so a crash midway leaves no half checkpoint.
    let tmp = ck.join(".adopting");
    let _ = std::fs::remove_dir_all(&tmp);
    link_or_copy_dir(prev, &tmp)?;
    for e in std::fs::read_dir(&tmp)? {
        let e = e?;
        let dest = ck.join(e.file_name());
        let _ = std::fs::remove_dir_all(&dest);
        let _ = std::fs::remove_file(&dest);
        std::fs::rename(e.path(), &dest).with_context(|| format!("moving into {}", dest.display()))?;
    }
    let _ = std::fs::remove_dir(&tmp);
    Ok(true)
}
