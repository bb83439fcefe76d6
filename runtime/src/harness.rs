//! The operator test harness: run one operator on in-memory tables with given parameters,
//! without a pipeline file or a store, and get its outputs and metrics.
//!
//! ```no_run
//! # use fleming_runtime::harness::Harness;
//! # fn demo(op: std::sync::Arc<dyn fleming_runtime::op::Operator>, table: fleming_artifacts::Table) -> anyhow::Result<()> {
//! let out = Harness::new(op)
//!     .param("query", "select id from t where x > 1")
//!     .input("t", table)
//!     .run()?;
//! assert_eq!(out.table("table")?.num_rows(), 3);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use fleming_artifacts::{ArtifactKind, ArtifactRef, Digest, MemoStats, Table};
use serde_json::{Map, Value};

use crate::cancel::CancelToken;
use crate::context::{Input, InputValue, OpContext, PreviousRun, RecordMemo};
use crate::dispatch::launcher::{find_worker, run_job};
use crate::dispatch::{Device, Job, JobInput, PROTOCOL_VERSION};
use crate::op::{Execution, InputPorts, OpSpec, Operator, OutputValue, PortKind, ValidateCtx, check_outputs};
use crate::params::{Params, ResolveCtx, display_path};
use crate::progress::Progress;

/// The operator runs in the torch worker, which is not built here: the run did not happen
/// (as opposed to failing). `fleming test` reports such cases as not run.
#[derive(Debug, thiserror::Error)]
#[error("{what} runs in the torch worker, which is not built ({why}); build it with `make worker`")]
pub struct WorkerNotBuilt {
    /// What needed the worker (`operator `sft``, `the model server`).
    pub what: String,
    /// Why it was not found.
    pub why: String,
}

/// Builder for one operator run.
pub struct Harness {
    op: Arc<dyn Operator>,
    params: Map<String, Value>,
    inputs: BTreeMap<String, Vec<Input>>,
    memo: Option<RecordMemo>,
    previous: Option<PreviousRun>,
    base_dir: PathBuf,
    threads: usize,
    llm: Map<String, Value>,
    cancel: CancelToken,
}

/// What a harness run produced.
#[derive(Debug)]
pub struct HarnessOutput {
    /// Outputs by port.
    pub outputs: BTreeMap<String, OutputValue>,
    /// Metrics the operator recorded.
    pub metrics: Map<String, Value>,
    /// Memo counters of the run.
    pub memo: MemoStats,
}

impl HarnessOutput {
    /// An output table.
    pub fn table(&self, port: &str) -> anyhow::Result<&Table> {
        match self.outputs.get(port) {
            Some(OutputValue::Table(t)) => Ok(t),
            Some(OutputValue::Model(_)) => bail!("output `{port}` is a model"),
            None => bail!("no output `{port}`"),
        }
    }

    /// The canonical digest of an output table (what the store would record).
    pub fn digest(&self, port: &str) -> anyhow::Result<Digest> {
        Ok(self.table(port)?.digest()?)
    }
}

impl Harness {
    /// A run of `op` with no parameters or inputs yet.
    pub fn new(op: Arc<dyn Operator>) -> Self {
        Harness {
            op,
            params: Map::new(),
            inputs: BTreeMap::new(),
            memo: None,
            previous: None,
            base_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            threads: 1,
            llm: Map::new(),
            cancel: CancelToken::new(),
        }
    }

    /// Sets a parameter.
    pub fn param(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.params.insert(name.to_string(), value.into());
        self
    }

    /// Sets parameters from a JSON object (merged with earlier ones).
    pub fn params(mut self, params: Value) -> Self {
        if let Value::Object(m) = params {
            self.params.extend(m);
        }
        self
    }

    /// Connects a table to a port (call again to connect several to a list port).
    pub fn input(mut self, port: &str, table: Table) -> Self {
        let digest = table.digest().unwrap_or(Digest([0; 32]));
        self.inputs.entry(port.to_string()).or_default().push(Input {
            from: format!("harness.{port}"),
            digest,
            value: InputValue::Table(table),
        });
        self
    }

    /// Connects a table as if it came from `from` (`stage.port`): operators that name
    /// their inputs by stage (evaluate's benchmarks) see that name.
    pub fn input_from(mut self, port: &str, from: &str, table: Table) -> Self {
        let digest = table.digest().unwrap_or(Digest([0; 32]));
        self.inputs.entry(port.to_string()).or_default().push(Input {
            from: from.to_string(),
            digest,
            value: InputValue::Table(table),
        });
        self
    }

    /// Connects a model directory to a port.
    pub fn model_input(self, port: &str, dir: &Path) -> Self {
        let from = format!("harness.{port}");
        self.model_input_from(port, &from, dir)
    }

    /// Connects a model directory as if it came from `from` (`stage.port`). Its digest is
    /// that of its files, as the store would give it.
    pub fn model_input_from(mut self, port: &str, from: &str, dir: &Path) -> Self {
        let digest = fleming_artifacts::store::digest_tree(dir).map(|d| d.0).unwrap_or(Digest([0; 32]));
        self.inputs.entry(port.to_string()).or_default().push(Input {
            from: from.to_string(),
            digest,
            value: InputValue::Model(dir.to_path_buf()),
        });
        self
    }

    /// Directory that relative path parameters resolve against (default: the current one).
    pub fn base_dir(mut self, dir: &Path) -> Self {
        self.base_dir = dir.to_path_buf();
        self
    }

    /// Threads the operator may use.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Shares a memo between runs (to test memoisation); default: a fresh one per run.
    pub fn memo(mut self, memo: RecordMemo) -> Self {
        self.memo = Some(memo);
        self
    }

    /// A fresh in-memory memo for this operator, to pass to several runs.
    pub fn new_memo(op: &dyn Operator) -> RecordMemo {
        RecordMemo::in_memory(op.spec().name, op.spec().version)
    }

    /// Declares the previous run of the stage (for incremental operators): its outputs and
    /// inputs as tables.
    pub fn previous(
        mut self,
        params: Value,
        inputs: BTreeMap<String, Vec<Table>>,
        outputs: BTreeMap<String, Table>,
    ) -> anyhow::Result<Self> {
        let mut tables: BTreeMap<Digest, Table> = BTreeMap::new();
        let mut input_digests = BTreeMap::new();
        for (port, ts) in inputs {
            let mut ds = Vec::new();
            for t in ts {
                let d = t.digest()?;
                tables.insert(d, t);
                ds.push(d);
            }
            input_digests.insert(port, ds);
        }
        let mut out_refs = BTreeMap::new();
        for (port, t) in outputs {
            let d = t.digest()?;
            out_refs.insert(
                port,
                ArtifactRef {
                    kind: ArtifactKind::Table,
                    digest: d,
                    rows: Some(t.num_rows() as u64),
                    bytes: 0,
                    schema: Some(t.schema_summary()),
                },
            );
            tables.insert(d, t);
        }
        let tables = Arc::new(tables);
        self.previous = Some(PreviousRun {
            key: Digest([0; 32]),
            params,
            input_digests,
            outputs: out_refs,
            reader: Arc::new(move |d, columns| match (tables.get(d), columns) {
                (Some(t), Some(columns)) => Ok(Some(t.project(columns)?)),
                (t, _) => Ok(t.cloned()),
            }),
        });
        Ok(self)
    }

    /// Sets the `llm:` section the operator sees.
    pub fn llm(mut self, section: Value) -> Self {
        if let Value::Object(m) = section {
            self.llm = m;
        }
        self
    }

    /// A token that cancels the run when triggered.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Runs the operator: checks parameters and inputs as a pipeline would, runs it in a
    /// temporary work directory, checks its outputs against its declaration.
    pub fn run(self) -> anyhow::Result<HarnessOutput> {
        let spec = self.op.spec();
        let mut sections = BTreeMap::new();
        let llm_names: Vec<&str> = self.llm.keys().map(|s| s.as_str()).collect();
        sections.insert("llm", llm_names);
        let ctx = ResolveCtx { sections, ..Default::default() };
        let params = Params::resolve(&spec.params, &self.params, &self.base_dir, &ctx).map_err(|errs| {
            anyhow!(
                "invalid parameters for `{}`:\n{}",
                spec.name,
                errs.iter()
                    .map(|e| format!(
                        "  - {}{}",
                        e.message,
                        e.help.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        if let InputPorts::Fixed(ports) = &spec.inputs {
            for p in ports {
                if !p.optional && !self.inputs.contains_key(p.name) {
                    bail!("required input `{}` of `{}` is not connected", p.name, spec.name);
                }
            }
            for name in self.inputs.keys() {
                if !ports.iter().any(|p| p.name == name) {
                    bail!("`{}` has no input `{name}`", spec.name);
                }
            }
        }
        let names: Vec<String> = self.inputs.keys().cloned().collect();
        let issues = self.op.validate(&ValidateCtx { params: &params, inputs: &names });
        if !issues.is_empty() {
            bail!(
                "invalid parameters for `{}`:\n{}",
                spec.name,
                issues
                    .iter()
                    .map(|i| format!(
                        "  - {}: {}",
                        display_path(
                            &i.param.iter().map(|k| crate::spec::positions::Seg::Key(k.clone())).collect::<Vec<_>>()
                        ),
                        i.message
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let work = tempfile::tempdir().context("creating a work directory")?;
        if spec.execution == Execution::Worker {
            return run_in_worker(
                spec,
                &params,
                self.inputs,
                &self.base_dir,
                self.threads,
                self.llm,
                work,
                &self.cancel,
            );
        }
        let memo = self.memo.unwrap_or_else(|| RecordMemo::in_memory(spec.name, spec.version));
        let mut ctx = OpContext::new(
            "harness".into(),
            params,
            self.inputs,
            Progress::silent(),
            memo.clone(),
            self.previous,
            work.path().to_path_buf(),
            self.cancel,
            self.threads,
            self.llm,
        );
        let before = memo.stats();
        let outputs = self.op.run(&mut ctx)?;
        check_outputs(spec, &outputs)?;
        let after = memo.stats();
        let mut out = outputs.0;
        keep_directories(&mut out, work.path())?;
        Ok(HarnessOutput {
            outputs: out,
            metrics: ctx.take_metrics(),
            memo: MemoStats {
                hits: after.hits - before.hits,
                misses: after.misses - before.misses,
                puts: after.puts - before.puts,
                corrupt: after.corrupt - before.corrupt,
            },
        })
    }
}

/// Directory outputs live in the temporary work dir; moves them somewhere that outlives it.
fn keep_directories(out: &mut BTreeMap<String, OutputValue>, work: &Path) -> anyhow::Result<()> {
    for v in out.values_mut() {
        if let OutputValue::Model(p) = v
            && p.starts_with(work)
        {
            let keep = tempfile::Builder::new().prefix("fleming-harness-model-").tempdir()?.keep();
            std::fs::remove_dir(&keep)?;
            std::fs::rename(&*p, &keep)?;
            *p = keep;
        }
    }
    Ok(())
}

/// Runs a worker operator as a pipeline would: inputs written as Parquet files, a job for
/// the worker found beside fleming (`FLEMING_WORKER`, or `PATH`), outputs read back and
/// checked. [`WorkerNotBuilt`] when there is no worker.
#[allow(clippy::too_many_arguments)]
fn run_in_worker(
    spec: &OpSpec,
    params: &Params,
    inputs: BTreeMap<String, Vec<Input>>,
    base_dir: &Path,
    threads: usize,
    llm: Map<String, Value>,
    work: tempfile::TempDir,
    cancel: &CancelToken,
) -> anyhow::Result<HarnessOutput> {
    let worker = find_worker()
        .map_err(|e| WorkerNotBuilt { what: format!("operator `{}`", spec.name), why: format!("{e:#}") })?;
    let dir = work.path();
    let in_dir = dir.join("inputs");
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&in_dir)?;
    std::fs::create_dir_all(&out_dir)?;
    let mut job_inputs: BTreeMap<String, Vec<JobInput>> = BTreeMap::new();
    for (port, list) in inputs {
        for (i, input) in list.into_iter().enumerate() {
            let (kind, path) = match &input.value {
                InputValue::Model(p) => ("model", p.clone()),
                _ => {
                    let path = in_dir.join(format!("{port}-{i}.parquet"));
                    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                    input.table()?.write_parquet(f)?;
                    ("table", path)
                }
            };
            job_inputs.entry(port.clone()).or_default().push(JobInput {
                kind: kind.into(),
                path,
                digest: input.digest.hex(),
                from: input.from.clone(),
            });
        }
    }
    let job = Job {
        protocol: PROTOCOL_VERSION,
        pipeline: "harness".into(),
        stage: "harness".into(),
        op: spec.name.to_string(),
        op_version: spec.version,
        key: "0".repeat(64),
        params: params.values().clone(),
        base_dir: base_dir.to_path_buf(),
        inputs: job_inputs,
        output_dir: out_dir.clone(),
        checkpoint_dir: dir.join("checkpoint"),
        device: Device::for_gpus(&[]),
        threads,
        llm,
        resume_from: None,
    };
    std::fs::create_dir_all(&job.checkpoint_dir)?;
    let report = run_job(&worker, &job, dir, &Progress::silent(), cancel, &|_| {})?;
    let mut outputs = crate::op::Outputs::new();
    for port in &spec.outputs {
        outputs = match port.kind {
            PortKind::Table(_) => {
                let f = out_dir.join(format!("{}.parquet", port.name));
                outputs.table(
                    port.name,
                    Table::read_parquet(&f).with_context(|| format!("reading output `{}`", port.name))?,
                )
            }
            PortKind::Model | PortKind::Dir => outputs.model(port.name, out_dir.join(port.name)),
        };
    }
    check_outputs(spec, &outputs)?;
    let mut out = outputs.0;
    keep_directories(&mut out, dir)?;
    Ok(HarnessOutput { outputs: out, metrics: report.metrics, memo: MemoStats::default() })
}
