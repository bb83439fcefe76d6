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
use crate::op::{InputPorts, Operator, OutputValue, ValidateCtx, check_outputs};
use crate::params::{Params, ResolveCtx, display_path};
use crate::progress::Progress;

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

    /// Connects a model directory to a port.
    pub fn model_input(mut self, port: &str, dir: &Path) -> Self {
        self.inputs.entry(port.to_string()).or_default().push(Input {
            from: format!("harness.{port}"),
            digest: Digest([0; 32]),
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
        // Model outputs live in the temporary work dir; move them somewhere that outlives it.
        for v in out.values_mut() {
            if let OutputValue::Model(p) = v
                && p.starts_with(work.path())
            {
                let keep = tempfile::Builder::new().prefix("fleming-harness-model-").tempdir()?.keep();
                std::fs::remove_dir(&keep)?;
                std::fs::rename(&*p, &keep)?;
                *p = keep;
            }
        }
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
