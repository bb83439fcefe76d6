//! `model`: a user's own Hugging Face checkpoint (say a local Qwen2.5-7B directory) as a
//! model artifact, for every model port (`sft`'s `base`, `evaluate`'s `models`, …).
//!
//! The stage key holds the content digest of the files a model is made of — config,
//! tokenizer, safetensors shards and their index — through the store's stat cache, so an
//! unchanged 15 GB directory is not rehashed on every run, and a README edit changes
//! nothing. The files are brought into the store without a second full copy where the
//! filesystem allows: a reflink (copy-on-write clone), else a hard link for the weights,
//! else a copy. Validation at plan time checks that the directory is a model the torch
//! worker can run (a supported architecture, a tokenizer, weights).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use anyhow::{Context, bail};
use fleming_artifacts::store::model_files;
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    Execution, InputPorts, OpSpec, Operator, Outputs, ParamIssue, ParamSpec, ParamType, PortSpec, ValidateCtx,
};
use serde_json::{Value, json};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "model",
    version: 1,
    summary: "A local Hugging Face model directory as a model artifact (key: the digest of its model files)",
    doc: "Brings a checkpoint directory (config.json, tokenizer, *.safetensors and the index) into the store \
          for model ports. Other files (READMEs, other weight formats) are left out and do not change the key. \
          The directory's files are reflinked or hard-linked where the filesystem allows, else copied; links \
          of the Hugging Face cache are followed. Supported architectures: Qwen2 (Qwen2 and Qwen2.5).",
    params: vec![ParamSpec::required(
        "path",
        ParamType::ModelDir,
        "The model directory (relative to the pipeline file; `${VAR}` to take it from the environment)",
    )],
    inputs: InputPorts::Fixed(vec![]),
    outputs: vec![PortSpec::model("model", "the model's files, in the store")],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::model.to_string(),
});

/// The architectures the torch worker runs (`model_type` in `config.json`).
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["qwen2"];

/// The `model` operator.
#[derive(Default)]
pub struct Model;

impl Model {
    /// The operator.
    pub fn new() -> Self {
        Model
    }
}

/// What is wrong with a model directory for the torch worker, if anything.
pub fn check_model_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        format!("{} has no readable config.json ({e}); is it a Hugging Face model directory?", dir.display())
    })?;
    let config: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: config.json is not JSON ({e})", dir.display()))?;
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    if !SUPPORTED_MODEL_TYPES.contains(&model_type) {
        let archs = config.get("architectures").map(|a| a.to_string()).unwrap_or_else(|| "none given".into());
        return Err(format!(
            "{}: model_type {model_type:?} (architectures {archs}) is not supported by the torch worker; supported: {}",
            dir.display(),
            SUPPORTED_MODEL_TYPES.join(", ")
        ));
    }
    if !dir.join("tokenizer.json").is_file() {
        return Err(format!(
            "{} has no tokenizer.json (the fast tokenizer file); save the tokenizer with transformers' \
             `tokenizer.save_pretrained(dir)` next to the model",
            dir.display()
        ));
    }
    let files = model_files(dir).map_err(|e| e.to_string())?;
    if !files.iter().any(|f| f.to_string_lossy().ends_with(".safetensors")) {
        return Err(format!(
            "{} has no *.safetensors weights (other formats such as pytorch_model.bin are not read; convert with \
             `model.save_pretrained(dir, safe_serialization=True)`)",
            dir.display()
        ));
    }
    Ok(())
}

/// Brings `from` into `to` without a copy where possible: a reflink, else a hard link
/// (weights only: small files are copied so that editing them in place cannot reach the
/// store), else a copy. Returns how.
fn bring(from: &Path, to: &Path) -> anyhow::Result<&'static str> {
    if reflink(from, to).is_ok() {
        return Ok("reflink");
    }
    let big = std::fs::metadata(from).map(|m| m.len() >= 64 << 20).unwrap_or(false);
    if big && std::fs::hard_link(from, to).is_ok() {
        return Ok("hard link");
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok("copy")
}

/// A copy-on-write clone of a file (Linux FICLONE: btrfs, XFS, bcachefs, overlayfs on them).
fn reflink(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    let src = std::fs::File::open(from)?;
    let dst = std::fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    // SAFETY: both descriptors are open for the duration of the call.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    drop(dst);
    let _ = std::fs::remove_file(to);
    Err(err)
}

impl Operator for Model {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        let Ok(dir) = ctx.params.path("path") else { return Vec::new() };
        // A missing directory is reported by the path check, with its position.
        if !dir.exists() {
            return Vec::new();
        }
        match check_model_dir(&dir) {
            Ok(()) => Vec::new(),
            Err(message) => vec![ParamIssue { param: vec!["path".into()], message }],
        }
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let dir: PathBuf = ctx.params.path("path")?;
        if let Err(e) = check_model_dir(&dir) {
            bail!(e);
        }
        let files = model_files(&dir)?;
        let out = ctx.work_dir.join("model");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        ctx.progress.set_unit("files");
        ctx.progress.set_total(files.len() as u64);
        let mut how = std::collections::BTreeMap::<&str, u64>::new();
        let mut bytes = 0u64;
        for f in &files {
            ctx.cancel.check()?;
            let name = f.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            // Follow the Hugging Face cache's links to the blobs themselves.
            let real = std::fs::canonicalize(f).with_context(|| format!("resolving {}", f.display()))?;
            *how.entry(bring(&real, &out.join(&name))?).or_default() += 1;
            bytes += std::fs::metadata(&real).map(|m| m.len()).unwrap_or(0);
            ctx.progress.inc(1);
        }
        ctx.metric("files", files.len() as u64);
        ctx.metric("bytes", bytes);
        ctx.metric("brought_by", json!(how));
        Ok(Outputs::new().model("model", out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleming_runtime::Harness;
    use std::sync::Arc;

    fn fake_model(dir: &Path, model_type: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), format!("{{\"model_type\": \"{model_type}\"}}")).unwrap();
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), vec![7u8; 1000]).unwrap();
        std::fs::write(dir.join("README.md"), "# a model").unwrap();
        std::fs::write(dir.join("pytorch_model.bin"), "old format").unwrap();
    }

    #[test]
    fn brings_only_the_model_files() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("m");
        fake_model(&src, "qwen2");
        let out = Harness::new(Arc::new(Model)).param("path", src.to_str().unwrap()).run().unwrap();
        let Some(fleming_runtime::op::OutputValue::Model(dir)) = out.outputs.get("model") else { panic!("no model") };
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        names.sort();
        assert_eq!(names, ["config.json", "model.safetensors", "tokenizer.json"]);
        assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), vec![7u8; 1000]);
        assert_eq!(out.metrics["files"], json!(3));
    }

    #[test]
    fn refuses_what_the_worker_cannot_run() {
        let tmp = tempfile::tempdir().unwrap();
        let llama = tmp.path().join("llama");
        fake_model(&llama, "llama");
        let e = check_model_dir(&llama).unwrap_err();
        assert!(e.contains("\"llama\"") && e.contains("supported: qwen2"), "{e}");
        let no_tok = tmp.path().join("no-tok");
        fake_model(&no_tok, "qwen2");
        std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
        assert!(check_model_dir(&no_tok).unwrap_err().contains("no tokenizer.json"));
        let bin = tmp.path().join("bin");
        fake_model(&bin, "qwen2");
        std::fs::remove_file(bin.join("model.safetensors")).unwrap();
        assert!(check_model_dir(&bin).unwrap_err().contains("no *.safetensors"));
        assert!(check_model_dir(&tmp.path().join("nowhere")).unwrap_err().contains("not a directory"));
        let e =
            format!("{:#}", Harness::new(Arc::new(Model)).param("path", llama.to_str().unwrap()).run().err().unwrap());
        assert!(e.contains("not supported"), "{e}");
    }
}
