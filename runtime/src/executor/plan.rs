//! Deciding what a stage needs: its key, whether a cached run can be reused, why it must
//! run, and whether it continues its previous run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use fleming_artifacts::manifest::FileRecord;
use fleming_artifacts::{ArtifactKind, Digest};
use serde_json::Value;

use super::{Decision, Executor, Outcome, Pending, StageReport, continuation_checkpoint};
use crate::keys::{KeyParts, json_diff};
use crate::op::{EffectsCtx, OpSpec, ParamType};
use crate::params::{InputPathKind, input_paths_with_kind};
use crate::spec::Stage;
use crate::state::{CacheEntry, StageRef};

impl Executor<'_> {
    /// Computes the key of stage `i` (its upstream must be usable) and decides whether it is
    /// cached.
    pub(super) fn decide(
        &self,
        i: usize,
        reports: &[Option<StageReport>],
        force: bool,
        dry_run: bool,
    ) -> anyhow::Result<Decision> {
        let stage = &self.pipeline.stages[i];
        let spec = stage.op.spec();
        let (parts, files) = self.key_parts(stage, reports)?;
        let key = parts.key();
        let previous = StageRef::load(self.store, &self.pipeline.name, &stage.name)?;
        let mut warnings = Vec::new();
        if force {
            return Ok(Decision::Run(Pending {
                forced: true,
                parts,
                key,
                files,
                reason: "forced (--force)".into(),
                warnings,
                resume_from: None,
            }));
        }
        let mut missing_reason = None;
        if let Some(entry) = CacheEntry::load(self.store, &key)? {
            if entry.op_version == spec.version && entry.op_fingerprint != spec.fingerprint {
                warnings.push(format!(
                    "operator `{}` changed since stage `{}` was computed, but its version is still {}: the cached outputs are reused. Bump the operator's version (or run with --force) to recompute.",
                    spec.name, stage.name, spec.version
                ));
            }
            if let Some(why) = self.unusable(stage, &entry)? {
                missing_reason = Some(why);
            } else {
                let note = match &previous {
                    Some(p) if p.key == key => "cached".to_string(),
                    Some(_) => "cached (same inputs and params as an earlier run)".to_string(),
                    None => "cached (computed earlier under another pipeline or stage name)".to_string(),
                };
                if !dry_run && previous.as_ref().is_none_or(|p| p.key != key) {
                    self.set_ref(stage, &parts, key, &entry.outputs, &entry.run_id)?;
                }
                let mut r = StageReport::new(stage, Outcome::Cached, note);
                r.key = Some(key);
                r.outputs = entry.outputs.clone();
                r.warnings = warnings;
                r.run_id = Some(entry.run_id);
                return Ok(Decision::Cached(r));
            }
        }
        let mut reason = match (&previous, missing_reason) {
            (_, Some(m)) => m,
            (None, None) => "new: never ran".to_string(),
            (Some(p), None) => why_changed(&p.parts, &parts),
        };
        let mut resume_from = None;
        if let Some(p) = &previous
            && let Some((dir, note)) = self.continuation(spec, p, &parts)
        {
            reason = format!("{note} ({reason})");
            resume_from = Some(dir);
        }
        Ok(Decision::Run(Pending { forced: false, parts, key, files, reason, warnings, resume_from }))
    }

    /// Whether a run with `parts` continues the stage's previous run: only parameters
    /// marked [`crate::op::ParamSpec::continues`] changed, each to a larger integer, and
    /// that run's final checkpoint is still in the store. Returns the checkpoint and what
    /// `run -n` says ("continues from step 400 of the previous run").
    fn continuation(
        &self,
        spec: &OpSpec,
        previous: &StageRef,
        parts: &KeyParts,
    ) -> Option<(std::path::PathBuf, String)> {
        let old = &previous.parts;
        if old.op != parts.op || old.version != parts.version || old.inputs != parts.inputs || old.files != parts.files
        {
            return None;
        }
        let (Value::Object(a), Value::Object(b)) = (&old.params, &parts.params) else { return None };
        if a.len() != b.len() {
            return None;
        }
        let mut grown = Vec::new();
        for (name, new) in b {
            let was = a.get(name)?;
            if was == new {
                continue;
            }
            let declared = spec.param(name)?;
            match (was.as_u64(), new.as_u64()) {
                (Some(x), Some(y)) if declared.continues && y > x => grown.push((name.clone(), x)),
                _ => return None,
            }
        }
        let (_, from) = grown.first()?.clone();
        let dir = continuation_checkpoint(self.store, &previous.key);
        dir.is_dir().then(|| (dir, format!("continues from step {from} of the previous run")))
    }

    /// Why a cache entry cannot be reused (objects gone, effects gone), or `None` if it can.
    pub(super) fn unusable(&self, stage: &Stage, entry: &CacheEntry) -> anyhow::Result<Option<String>> {
        if !entry.outputs.values().all(|o| self.store.has(o)) {
            return Ok(Some(
                "its cached outputs are missing from the store (deleted, or quarantined by `fleming verify`)".into(),
            ));
        }
        if !self.effects_hold(stage, entry)? {
            return Ok(Some("its effects outside the store are gone or changed (e.g. an exported file)".into()));
        }
        Ok(None)
    }

    fn effects_hold(&self, stage: &Stage, entry: &CacheEntry) -> anyhow::Result<bool> {
        let read = |port: &str| -> anyhow::Result<Option<fleming_artifacts::Table>> {
            match entry.outputs.get(port) {
                Some(r) if r.kind == ArtifactKind::Table => Ok(Some(self.store.read_table(r)?)),
                _ => Ok(None),
            }
        };
        let digest = |p: &Path| -> anyhow::Result<Digest> { Ok(self.stat.digest(p)?.0) };
        stage.op.effects_hold(&EffectsCtx { params: &stage.params, read_output: &read, digest: &digest })
    }

    /// The key parts of a stage whose upstream outputs are known.
    fn key_parts(
        &self,
        stage: &Stage,
        reports: &[Option<StageReport>],
    ) -> anyhow::Result<(KeyParts, BTreeMap<String, FileRecord>)> {
        let spec = stage.op.spec();
        let mut inputs = BTreeMap::new();
        for (port, refs) in &stage.inputs {
            let mut ds = Vec::new();
            for r in refs {
                let up =
                    reports[r.stage_index].as_ref().ok_or_else(|| anyhow!("upstream `{}` not evaluated", r.stage))?;
                let a = up
                    .outputs
                    .get(&r.port)
                    .ok_or_else(|| anyhow!("upstream `{}` has no output `{}`", r.stage, r.port))?;
                ds.push(a.digest);
            }
            inputs.insert(port.clone(), ds);
        }
        let mut files = BTreeMap::new();
        let mut file_digests = BTreeMap::new();
        for (segs, path, kind) in input_paths_with_kind(&spec.params, stage.params.values()) {
            let name = crate::params::display_path(&segs);
            let abs = stage.params.resolve_path(&path);
            let digest = match kind {
                InputPathKind::Any => self.stat.digest(&abs),
                InputPathKind::ModelDir => self.stat.digest_model_dir(&abs),
            };
            let (digest, bytes) = digest
                .with_context(|| format!("stage `{}`: parameter `{name}` names {}", stage.name, abs.display()))?;
            file_digests.insert(name.clone(), digest);
            files.insert(name, FileRecord { path, digest, bytes });
        }
        let mut params = stage.params.key_json(&spec.params);
        self.substitute_section_refs(spec, &mut params);
        Ok((KeyParts { op: spec.name.to_string(), version: spec.version, params, inputs, files: file_digests }, files))
    }

    /// Replaces `llm:` entry names in key params by what of the entry can change outputs,
    /// so that editing an endpoint's model reruns the stages that use it.
    fn substitute_section_refs(&self, spec: &OpSpec, params: &mut Value) {
        fn walk(specs: &[crate::op::ParamSpec], v: &mut Value, llm: &BTreeMap<String, crate::spec::LlmEndpoint>) {
            let Value::Object(m) = v else { return };
            for s in specs {
                let Some(x) = m.get_mut(s.name) else { continue };
                let substitute = |x: &mut Value| {
                    if let Some(e) = x.as_str().and_then(|n| llm.get(n)) {
                        *x = serde_json::json!({ "llm": x.clone(), "endpoint": e.key_json() });
                    }
                };
                match &s.ty {
                    ParamType::SectionRef("llm") => substitute(x),
                    ParamType::List(t) if matches!(**t, ParamType::SectionRef("llm")) => {
                        if let Value::Array(items) = x {
                            items.iter_mut().for_each(substitute);
                        }
                    }
                    ParamType::Object(fields) => walk(fields, x, llm),
                    _ => {}
                }
            }
        }
        walk(&spec.params, params, &self.pipeline.llm);
    }
}

/// Why a stage must run, from the parts of its last run and of now.
pub fn why_changed(old: &KeyParts, new: &KeyParts) -> String {
    let mut why = Vec::new();
    if old.op != new.op {
        why.push(format!("operator changed: {} -> {}", old.op, new.op));
    } else if old.version != new.version {
        why.push(format!("operator version changed: {} -> {}", old.version, new.version));
    }
    let diff = json_diff(&old.params, &new.params);
    if !diff.is_empty() {
        why.push(format!("params changed: {}", diff.join("; ")));
    }
    let ports: std::collections::BTreeSet<&String> = old.inputs.keys().chain(new.inputs.keys()).collect();
    for port in ports {
        let (a, b) = (old.inputs.get(port), new.inputs.get(port));
        if a != b {
            let show = |d: Option<&Vec<Digest>>| {
                d.map(|v| v.iter().map(|x| x.short(8)).collect::<Vec<_>>().join(",")).unwrap_or_else(|| "none".into())
            };
            why.push(format!("input `{port}` changed ({} -> {})", show(a), show(b)));
        }
    }
    let names: std::collections::BTreeSet<&String> = old.files.keys().chain(new.files.keys()).collect();
    for name in names {
        if old.files.get(name) != new.files.get(name) {
            why.push(format!("file of `{name}` changed"));
        }
    }
    if why.is_empty() { "not in the cache".to_string() } else { why.join("; ") }
}
