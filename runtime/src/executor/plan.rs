//! Planning a run: which stages are selected, and for each its key, whether a cached run
//! can be reused, why it must run, and whether it continues its previous run. The plan is
//! computed once, before anything runs ([`Executor::plan`]); `run -n` and `status` print
//! it, and the scheduler ([`super::schedule`]) runs its nodes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use fleming_artifacts::manifest::FileRecord;
use fleming_artifacts::{ArtifactKind, Digest};
use serde_json::Value;

use super::{
    Decision, Executor, Outcome, Pending, RunOptions, RunReport, Selection, StageReport, continuation_checkpoint,
};
use crate::keys::{KeyParts, json_diff};
use crate::op::{EffectsCtx, OpSpec, ParamType};
use crate::params::{InputPathKind, input_paths_with_kind};
use crate::spec::Stage;
use crate::state::{CacheEntry, StageRef};

/// What a run will do, decided before anything runs.
pub struct Plan {
    /// Per stage, in pipeline order.
    pub(super) steps: Vec<Step>,
    /// Stages the run may execute.
    pub(super) selected: Vec<bool>,
    /// Stages the run looks at: the selected ones and what they need.
    pub(super) relevant: Vec<bool>,
}

/// One stage of a plan.
pub(super) enum Step {
    /// Settled now: cached, not selected, stale, blocked, or its key could not be computed.
    Done(StageReport),
    /// Runs; its key is known now.
    Run(Pending),
    /// Runs once the stages it waits for have: its key depends on their outputs (which may
    /// not change, and then it is cached after all). The report says which.
    AfterUpstream(StageReport),
}

impl Step {
    /// The report a dry run gives for this step, which is also what the stages downstream
    /// of it are planned against.
    fn expected(&self, stage: &Stage) -> StageReport {
        match self {
            Step::Done(r) | Step::AfterUpstream(r) => r.clone(),
            Step::Run(p) => {
                let mut r = StageReport::new(stage, Outcome::WouldRun, p.reason.clone());
                r.key = Some(p.key);
                r.warnings = p.warnings.clone();
                r
            }
        }
    }
}

impl Plan {
    /// The plan as `run -n` and `status` show it.
    pub fn report(&self, stages: &[Stage]) -> RunReport {
        let stages = self.steps.iter().zip(stages).map(|(step, stage)| step.expected(stage)).collect();
        RunReport { stages, cancelled: false }
    }
}

impl Executor<'_> {
    /// Plans a run: walks the stages in dependency order, each against what the plan
    /// expects of the stages upstream. Cached stages get their refs and checks (unless
    /// `dry_run`); nothing runs.
    pub fn plan(&self, opts: &RunOptions) -> anyhow::Result<Plan> {
        let (selected, relevant) = self.resolve_selection(&opts.selection)?;
        let stages = &self.pipeline.stages;
        let mut expected: Vec<Option<StageReport>> = vec![None; stages.len()];
        let mut steps: Vec<Option<Step>> = (0..stages.len()).map(|_| None).collect();
        for i in self.pipeline.topo_order() {
            let step = self.step(i, &expected, &selected, &relevant, opts);
            expected[i] = Some(step.expected(&stages[i]));
            steps[i] = Some(step);
        }
        let steps = steps
            .into_iter()
            .zip(stages)
            .map(|(s, stage)| s.unwrap_or_else(|| Step::Done(StageReport::new(stage, Outcome::Skipped, "not planned"))))
            .collect();
        Ok(Plan { steps, selected, relevant })
    }

    /// Where stage `i` stands given the reports of the stages upstream: as the plan expects
    /// them, or, once they have run, as they ran.
    pub(super) fn step(
        &self,
        i: usize,
        upstream: &[Option<StageReport>],
        selected: &[bool],
        relevant: &[bool],
        opts: &RunOptions,
    ) -> Step {
        let stage = &self.pipeline.stages[i];
        if !relevant[i] {
            return Step::Done(StageReport::new(stage, Outcome::NotSelected, "not selected"));
        }
        if let Some(r) = self.blocked_by_upstream(i, upstream, selected, opts.dry_run) {
            return if r.outcome == Outcome::WouldRun { Step::AfterUpstream(r) } else { Step::Done(r) };
        }
        match self.decide(i, upstream, opts.force && selected[i], opts.dry_run) {
            Ok(Decision::Cached(mut r)) => {
                if !opts.skip_checks {
                    r.checks = self.run_checks(stage, &r, false, !opts.dry_run);
                }
                Step::Done(r)
            }
            Ok(Decision::Run(p)) if !selected[i] => {
                let mut r = StageReport::new(stage, Outcome::Stale, p.reason.clone());
                r.key = Some(p.key);
                r.warnings = p.warnings;
                Step::Done(r)
            }
            Ok(Decision::Run(p)) => Step::Run(p),
            Err(e) => {
                let mut r = StageReport::new(stage, Outcome::Failed, "could not compute its key");
                r.error = Some(format!("{e:#}"));
                Step::Done(r)
            }
        }
    }

    /// Which stages a selection runs, and which it looks at.
    fn resolve_selection(&self, sel: &Selection) -> anyhow::Result<(Vec<bool>, Vec<bool>)> {
        let n = self.pipeline.stages.len();
        let index = |name: &str| {
            self.pipeline.stage_index(name).ok_or_else(|| {
                anyhow!(
                    "no stage `{name}` in {} ({})",
                    self.pipeline.file.display(),
                    crate::diagnostic::suggestion(name, self.pipeline.stages.iter().map(|s| s.name.as_str()))
                )
            })
        };
        Ok(match sel {
            Selection::All => (vec![true; n], vec![true; n]),
            Selection::Only(names) => {
                let mut selected = vec![false; n];
                let mut relevant = vec![false; n];
                for name in names {
                    let i = index(name)?;
                    selected[i] = true;
                    relevant[i] = true;
                    for a in self.pipeline.ancestors(i) {
                        relevant[a] = true;
                    }
                }
                (selected, relevant)
            }
            Selection::Until(names) => {
                let mut selected = vec![false; n];
                for name in names {
                    let i = index(name)?;
                    selected[i] = true;
                    for a in self.pipeline.ancestors(i) {
                        selected[a] = true;
                    }
                }
                (selected.clone(), selected)
            }
        })
    }

    /// A report for a stage that cannot be evaluated because of its upstream, or `None`.
    fn blocked_by_upstream(
        &self,
        i: usize,
        reports: &[Option<StageReport>],
        selected: &[bool],
        dry_run: bool,
    ) -> Option<StageReport> {
        let stage = &self.pipeline.stages[i];
        for &u in &stage.upstream {
            let up = reports[u].as_ref()?;
            let name = &up.stage;
            if let Some(c) = up.blocking_check() {
                return Some(StageReport::new(
                    stage,
                    Outcome::Skipped,
                    format!(
                        "blocked: check `{}` of `{name}` {}",
                        c.name,
                        if c.status == crate::checks::CheckStatus::Error { "could not run" } else { "failed" }
                    ),
                ));
            }
            let (outcome, reason) = match up.outcome {
                Outcome::Cached | Outcome::Ran => continue,
                Outcome::Failed => (Outcome::Skipped, format!("upstream `{name}` failed")),
                Outcome::Cancelled => (Outcome::Skipped, format!("upstream `{name}` was cancelled")),
                Outcome::Skipped | Outcome::NotSelected => (Outcome::Skipped, format!("upstream `{name}` did not run")),
                Outcome::WouldRun => (
                    Outcome::WouldRun,
                    format!(
                        "upstream `{name}` will run (this stage may still be cached if its output does not change)"
                    ),
                ),
                Outcome::Stale if selected[i] && !dry_run => (
                    Outcome::Skipped,
                    format!("upstream `{name}` is stale and not selected (use --until {} to run it too)", stage.name),
                ),
                Outcome::Stale if selected[i] => (Outcome::WouldRun, format!("upstream `{name}` is stale")),
                Outcome::Stale => (Outcome::Stale, format!("upstream `{name}` is stale")),
            };
            return Some(StageReport::new(stage, outcome, reason));
        }
        None
    }

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
