//! Pipeline files: loading YAML, interpolation, and validation of everything that can be
//! checked before anything runs. Every problem is reported with file, line and column.
//!
//! ```yaml
//! name: quickstart                 # optional; defaults to the file stem
//! stages:
//!   raw:   { op: load, params: { path: data/items.jsonl } }
//!   clean: { op: sql, inputs: { raw: raw }, params: { query: "select * from raw" } }
//!   out:   { op: export, inputs: { table: clean.table }, params: { path: out/clean.parquet } }
//! llm:                             # optional named endpoints
//!   judge: { endpoint: "${JUDGE_URL:-http://127.0.0.1:8000/v1}", model: m, api_key_env: JUDGE_KEY }
//! ```

pub mod interp;
pub mod positions;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::checks::{CheckKind, CheckSpec, Severity};
use crate::diagnostic::{Diagnostic, Pos, SourceText, SpecErrors, suggestion};
use crate::op::{InputPorts, Operator, PortKind, Registry, ValidateCtx, schema_problems};
use crate::params::{Params, ResolveCtx};
use positions::{Positions, Seg};

/// Largest pipeline file accepted (bounded memory on any input).
pub const MAX_FILE_BYTES: usize = 8 << 20;

/// A reference to an output of another stage: `stage` or `stage.port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRef {
    /// Upstream stage name.
    pub stage: String,
    /// Index of the upstream stage in [`Pipeline::stages`].
    pub stage_index: usize,
    /// Output port of the upstream stage.
    pub port: String,
}

impl std::fmt::Display for OutputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.stage, self.port)
    }
}

/// What a stage asks of the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// GPUs (worker operators only). Without a GPU, the worker runs on CPU.
    pub gpu: u32,
    /// Threads or data-parallel workers for the stage (default: the run's `-w`).
    pub threads: Option<u32>,
}

/// A named OpenAI-compatible endpoint (`llm:` section).
#[derive(Clone, Debug, PartialEq)]
pub struct LlmEndpoint {
    /// Base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub endpoint: String,
    /// Model name sent in requests.
    pub model: String,
    /// Name of the environment variable holding the API key (never its value).
    pub api_key_env: Option<String>,
    /// Most requests in flight at once.
    pub max_concurrency: u32,
    /// Timeout of one request, seconds.
    pub timeout_secs: f64,
    /// Retries on 429/5xx/timeouts before a record fails.
    pub max_retries: u32,
    /// Default request parameters (temperature, top_p, ...).
    pub params: Map<String, Value>,
}

impl LlmEndpoint {
    /// What of the endpoint can change answers (enters the key of stages that use it):
    /// the model and request parameters, not the URL, key, or concurrency.
    pub fn key_json(&self) -> Value {
        serde_json::json!({ "model": self.model, "params": self.params })
    }
}

/// A validated stage.
#[derive(Clone)]
pub struct Stage {
    /// Name (unique in the pipeline).
    pub name: String,
    /// The operator.
    pub op: Arc<dyn Operator>,
    /// Connected inputs: port -> upstream outputs, in the order written.
    pub inputs: BTreeMap<String, Vec<OutputRef>>,
    /// Resolved parameters.
    pub params: Params,
    /// Resources.
    pub resources: Resources,
    /// Free text.
    pub description: Option<String>,
    /// Data checks on the stage's outputs.
    pub checks: Vec<CheckSpec>,
    /// Upstream stage indices (deduplicated, sorted).
    pub upstream: Vec<usize>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("name", &self.name).field("op", &self.op.spec().name).finish()
    }
}

/// A validated pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Name (the store keeps one set of current outputs per pipeline name).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The file, as given.
    pub file: PathBuf,
    /// Absolute directory of the file; relative paths in params resolve against it.
    pub base_dir: PathBuf,
    /// Stages in file order.
    pub stages: Vec<Stage>,
    /// Named LLM endpoints.
    pub llm: BTreeMap<String, LlmEndpoint>,
    /// The source text, for positioned messages later.
    pub source: SourceText,
    /// Node positions.
    pub positions: Positions,
}

impl Pipeline {
    /// Index of a stage by name.
    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// Position of a stage's key in the file.
    pub fn stage_pos(&self, name: &str) -> Option<Pos> {
        self.positions.key(&positions::path(&["stages", name]))
    }

    /// Stage indices downstream of `index` (excluding it).
    pub fn downstream(&self, index: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut seen = vec![false; self.stages.len()];
        let mut stack = vec![index];
        while let Some(i) = stack.pop() {
            for (j, s) in self.stages.iter().enumerate() {
                if s.upstream.contains(&i) && !seen[j] {
                    seen[j] = true;
                    out.push(j);
                    stack.push(j);
                }
            }
        }
        out.sort();
        out
    }

    /// Stage indices upstream of `index` (transitively, excluding it).
    pub fn ancestors(&self, index: usize) -> Vec<usize> {
        let mut seen = vec![false; self.stages.len()];
        let mut stack = vec![index];
        while let Some(i) = stack.pop() {
            for &u in &self.stages[i].upstream {
                if !seen[u] {
                    seen[u] = true;
                    stack.push(u);
                }
            }
        }
        (0..self.stages.len()).filter(|&i| seen[i]).collect()
    }

    /// Stage indices in an order where every stage comes after its inputs.
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.stages.len();
        let mut indeg: Vec<usize> = self.stages.iter().map(|s| s.upstream.len()).collect();
        let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut out = Vec::with_capacity(n);
        let downstream: Vec<Vec<usize>> = {
            let mut d = vec![Vec::new(); n];
            for (j, s) in self.stages.iter().enumerate() {
                for &u in &s.upstream {
                    d[u].push(j);
                }
            }
            d
        };
        while let Some(i) = ready.pop_first() {
            out.push(i);
            for &j in &downstream[i] {
                indeg[j] -= 1;
                if indeg[j] == 0 {
                    ready.insert(j);
                }
            }
        }
        out
    }
}

/// Where environment variables come from (the process environment, or a map in tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads and validates a pipeline file.
pub fn load(path: &Path, registry: &dyn Registry) -> Result<Pipeline, SpecErrors> {
    load_with_env(path, registry, &|k| std::env::var(k).ok())
}

/// Reads and validates a pipeline file with a given environment.
pub fn load_with_env(path: &Path, registry: &dyn Registry, env: EnvLookup<'_>) -> Result<Pipeline, SpecErrors> {
    let source_err = |msg: String| {
        SpecErrors::new(SourceText { path: path.to_path_buf(), text: Arc::from("") }, vec![Diagnostic::at(None, msg)])
    };
    let meta = std::fs::metadata(path).map_err(|e| source_err(format!("cannot read the pipeline file: {e}")))?;
    if meta.len() as usize > MAX_FILE_BYTES {
        return Err(source_err(format!(
            "the pipeline file is {} bytes; at most {MAX_FILE_BYTES} are accepted",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| source_err(format!("cannot read the pipeline file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        source_err(format!("the pipeline file is not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })?;
    let base_dir = path
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .unwrap_or(Path::new("."))
        .canonicalize()
        .map_err(|e| source_err(format!("cannot resolve the pipeline's directory: {e}")))?;
    let default_name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "pipeline".into());
    parse(&text, path, &base_dir, &default_name, registry, env)
}

/// Validates pipeline text (the file is used for messages and relative paths).
pub fn parse(
    text: &str,
    file: &Path,
    base_dir: &Path,
    default_name: &str,
    registry: &dyn Registry,
    env: EnvLookup<'_>,
) -> Result<Pipeline, SpecErrors> {
    // Editors on Windows save a byte-order mark; YAML allows one, the parser does not.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let source = SourceText { path: file.to_path_buf(), text: Arc::from(text) };
    let fail = |d: Vec<Diagnostic>| SpecErrors::new(source.clone(), d);
    if text.len() > MAX_FILE_BYTES {
        return Err(fail(vec![Diagnostic::at(None, "the pipeline file is too large")]));
    }
    let positions = positions::scan(text).map_err(fail)?;
    let yaml: serde_norway::Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() });
            return Err(fail(vec![Diagnostic::at(pos, format!("YAML error: {e}"))]));
        }
    };
    let mut v = Validator { positions: &positions, errors: Vec::new(), interpolated: HashSet::new() };
    let mut yaml = yaml;
    if let Err(e) = yaml.apply_merge() {
        v.errors.push(Diagnostic::at(None, format!("YAML merge key error: {e}")));
    }
    // Top-level `x-…` keys hold what users share through anchors (docker compose's
    // convention); the aliases below have already copied them, so they are dropped here.
    if let serde_norway::Value::Mapping(top) = &mut yaml {
        top.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
    }
    let doc = v.convert(&yaml, &mut Vec::new(), env);
    let pipeline = v.pipeline(doc, file, base_dir, default_name, registry, &source);
    if v.errors.is_empty() {
        pipeline
            .map(|mut p| {
                p.positions = positions.clone();
                p
            })
            .ok_or_else(|| fail(vec![Diagnostic::at(None, "invalid pipeline")]))
    } else {
        Err(fail(v.errors))
    }
}

struct Validator<'a> {
    positions: &'a Positions,
    errors: Vec<Diagnostic>,
    /// Paths whose string value came (wholly) from `${...}`.
    interpolated: HashSet<Vec<Seg>>,
}

fn key(path: &[Seg], k: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Key(k.to_string()));
    p
}

fn valid_stage_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_env_name(name: &str) -> bool {
    let mut c = name.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

impl Validator<'_> {
    fn at(&self, path: &[Seg]) -> Option<Pos> {
        self.positions.value(path)
    }

    fn at_key(&self, path: &[Seg]) -> Option<Pos> {
        self.positions.key(path)
    }

    fn error(&mut self, pos: Option<Pos>, msg: impl Into<String>) {
        self.errors.push(Diagnostic::at(pos, msg));
    }

    fn error_help(&mut self, pos: Option<Pos>, msg: impl Into<String>, help: impl Into<String>) {
        self.errors.push(Diagnostic::at(pos, msg).help(help));
    }

    /// YAML value -> JSON value, interpolating strings.
    fn convert(&mut self, y: &serde_norway::Value, path: &mut Vec<Seg>, env: EnvLookup<'_>) -> Value {
        use serde_norway::Value as Y;
        match y {
            Y::Null => Value::Null,
            Y::Bool(b) => Value::Bool(*b),
            Y::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::from(i)
                } else if let Some(u) = n.as_u64() {
                    Value::from(u)
                } else {
                    match n.as_f64().and_then(serde_json::Number::from_f64) {
                        Some(f) => Value::Number(f),
                        None => {
                            let pos = self.at(path);
                            self.error(pos, format!("`{n}` is not a finite number"));
                            Value::Null
                        }
                    }
                }
            }
            Y::String(s) => match interp::interpolate(s, env) {
                Ok(r) => {
                    if r.replaced
                        && s.trim_start().starts_with("${")
                        && s.trim_end().ends_with('}')
                        && s.matches("${").count() == 1
                    {
                        self.interpolated.insert(path.clone());
                    }
                    Value::String(r.text)
                }
                Err(msg) => {
                    let pos = self.at(path);
                    self.error(pos, msg);
                    Value::String(s.clone())
                }
            },
            Y::Sequence(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        path.push(Seg::Index(i));
                        let v = self.convert(item, path, env);
                        path.pop();
                        v
                    })
                    .collect(),
            ),
            Y::Mapping(m) => {
                let mut out = Map::new();
                for (k, item) in m {
                    let k = match k {
                        Y::String(s) => s.clone(),
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        _ => {
                            let pos = self.at(path);
                            self.error(pos, "mapping keys must be strings");
                            continue;
                        }
                    };
                    path.push(Seg::Key(k.clone()));
                    let v = self.convert(item, path, env);
                    path.pop();
                    out.insert(k, v);
                }
                Value::Object(out)
            }
            Y::Tagged(t) => {
                let pos = self.at(path);
                self.error(pos, format!("YAML tags (`{}`) are not supported in pipeline files", t.tag));
                Value::Null
            }
        }
    }

    fn expect_object<'v>(&mut self, v: &'v Value, path: &[Seg], what: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            _ => {
                let pos = self.at(path);
                self.error(pos, format!("{what} must be a mapping"));
                None
            }
        }
    }

    fn check_keys(&mut self, m: &Map<String, Value>, path: &[Seg], allowed: &[&str], what: &str) {
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                let pos = self.at_key(&key(path, k));
                self.error_help(pos, format!("unknown {what} field `{k}`"), suggestion(k, allowed.iter().copied()));
            }
        }
    }

    fn pipeline(
        &mut self,
        doc: Value,
        file: &Path,
        base_dir: &Path,
        default_name: &str,
        registry: &dyn Registry,
        source: &SourceText,
    ) -> Option<Pipeline> {
        let root: Vec<Seg> = Vec::new();
        if doc.is_null() {
            self.error(None, "the pipeline file is empty; it needs at least `stages:`");
            return None;
        }
        let top = self.expect_object(&doc, &root, "the pipeline file")?.clone();
        let before = self.errors.len();
        self.check_keys(&top, &root, &["name", "description", "stages", "llm"], "top-level");
        for e in &mut self.errors[before..] {
            e.help = Some(match e.help.take() {
                Some(h) => format!("{h}; keys starting with `x-` are ignored (a place for anchors to share)"),
                None => "keys starting with `x-` are ignored (a place for anchors to share)".into(),
            });
        }
        let name = match top.get("name") {
            None => default_name.to_string(),
            Some(Value::String(s)) if valid_stage_name(s) => s.clone(),
            Some(_) => {
                let pos = self.at(&key(&root, "name"));
                self.error(pos, "`name` must be a string of ASCII letters, digits, `_` and `-`");
                default_name.to_string()
            }
        };
        let description = top.get("description").and_then(|d| d.as_str()).map(str::to_string);
        let llm = self.llm_section(top.get("llm"));
        let stages_path = key(&root, "stages");
        let Some(stages_v) = top.get("stages") else {
            self.error(None, "the pipeline has no `stages:` section");
            return None;
        };
        let stages_map = self.expect_object(stages_v, &stages_path, "`stages`")?.clone();
        if stages_map.is_empty() {
            let pos = self.at(&stages_path);
            self.error(pos, "`stages` is empty");
        }
        let names: Vec<String> = stages_map.keys().cloned().collect();
        let index_of: std::collections::HashMap<&str, usize> =
            names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut sections: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        sections.insert("llm", llm.keys().map(|s| s.as_str()).collect());

        // First pass: each stage on its own.
        /// An input port as written: its name, its references with their positions, and
        /// the port's own path.
        type RawInput = (String, Vec<(String, Vec<Seg>)>, Vec<Seg>);
        struct Raw {
            op: Option<Arc<dyn Operator>>,
            inputs: Vec<RawInput>,
        }
        let mut raws = Vec::new();
        let mut stages = Vec::new();
        for sname in &names {
            let spath = key(&stages_path, sname);
            if !valid_stage_name(sname) {
                let pos = self.at_key(&spath);
                self.error(pos, format!("stage name `{sname}` may only contain ASCII letters, digits, `_` and `-`"));
            }
            let Some(sm) = self.expect_object(&stages_map[sname], &spath, &format!("stage `{sname}`")).cloned() else {
                continue;
            };
            self.check_keys(&sm, &spath, &["op", "inputs", "params", "resources", "description", "checks"], "stage");
            let op = match sm.get("op") {
                Some(Value::String(op_name)) => match registry.get(op_name) {
                    Some(op) => Some(op),
                    None => {
                        let pos = self.at(&key(&spath, "op"));
                        self.error_help(
                            pos,
                            format!("unknown operator `{op_name}`"),
                            suggestion(op_name, registry.names()),
                        );
                        None
                    }
                },
                Some(_) => {
                    let pos = self.at(&key(&spath, "op"));
                    self.error(pos, "`op` must be an operator name");
                    None
                }
                None => {
                    let pos = self.at_key(&spath);
                    self.error_help(
                        pos,
                        format!("stage `{sname}` has no `op`"),
                        "add `op: <operator>`; `fleming ops` lists them",
                    );
                    None
                }
            };
            // Inputs: port -> "stage[.port]" or a list of them.
            let ipath = key(&spath, "inputs");
            let mut inputs = Vec::new();
            if let Some(iv) = sm.get("inputs")
                && let Some(im) = self.expect_object(iv, &ipath, "`inputs`").cloned()
            {
                for (port, refs) in &im {
                    let ppath = key(&ipath, port);
                    let list: Vec<(String, Vec<Seg>)> = match refs {
                        Value::String(s) => vec![(s.clone(), ppath.clone())],
                        Value::Array(items) => items
                            .iter()
                            .enumerate()
                            .filter_map(|(i, it)| {
                                let mut p = ppath.clone();
                                p.push(Seg::Index(i));
                                match it {
                                    Value::String(s) => Some((s.clone(), p)),
                                    _ => {
                                        let pos = self.at(&p);
                                        self.error(pos, "an input is written `stage` or `stage.port`");
                                        None
                                    }
                                }
                            })
                            .collect(),
                        _ => {
                            let pos = self.at(&ppath);
                            self.error(pos, "an input is written `stage`, `stage.port`, or a list of them");
                            Vec::new()
                        }
                    };
                    if matches!(refs, Value::Array(_)) && list.is_empty() {
                        let pos = self.at(&ppath);
                        self.error(pos, format!("input `{port}` is an empty list"));
                    }
                    inputs.push((port.clone(), list, ppath));
                }
            }
            let resources = self.resources(sm.get("resources"), &key(&spath, "resources"), op.as_deref());
            let description = sm.get("description").and_then(|d| d.as_str()).map(str::to_string);
            let checks = self.checks(sm.get("checks"), &key(&spath, "checks"), op.as_deref());
            let params = match &op {
                Some(op) => {
                    let ppath = key(&spath, "params");
                    let given = match sm.get("params") {
                        None | Some(Value::Null) => Map::new(),
                        Some(Value::Object(m)) => m.clone(),
                        Some(_) => {
                            let pos = self.at(&ppath);
                            self.error(pos, "`params` must be a mapping");
                            Map::new()
                        }
                    };
                    let interpolated = self
                        .interpolated
                        .iter()
                        .filter(|p| p.starts_with(&ppath))
                        .map(|p| p[ppath.len()..].to_vec())
                        .collect();
                    let ctx = ResolveCtx { sections: sections.clone(), interpolated };
                    match Params::resolve(&op.spec().params, &given, base_dir, &ctx) {
                        Ok(p) => Some(p),
                        Err(errs) => {
                            for e in errs {
                                let mut full = ppath.clone();
                                full.extend(e.path.iter().cloned());
                                let pos = if e.at_key {
                                    if e.path.is_empty() {
                                        self.at_key(&ppath).or_else(|| self.at_key(&key(&spath, "op")))
                                    } else {
                                        self.at_key(&full)
                                    }
                                } else {
                                    self.at(&full)
                                };
                                let mut d = Diagnostic::at(pos, format!("stage `{sname}`: {}", e.message));
                                d.help = e.help;
                                self.errors.push(d);
                            }
                            None
                        }
                    }
                }
                None => None,
            };
            raws.push(Raw { op: op.clone(), inputs });
            stages.push((sname.clone(), op, params, resources, description, checks));
        }

        // Second pass: connect inputs.
        let mut built = Vec::new();
        for (i, (sname, op, params, resources, description, checks)) in stages.into_iter().enumerate() {
            let spath = key(&stages_path, &sname);
            let raw = &raws[i];
            let mut inputs: BTreeMap<String, Vec<OutputRef>> = BTreeMap::new();
            for (port, refs, ppath) in &raw.inputs {
                let port_spec = match op.as_deref().map(|o| &o.spec().inputs) {
                    Some(InputPorts::Fixed(ports)) => match ports.iter().find(|p| p.name == port) {
                        Some(p) => Some(p.clone()),
                        None => {
                            let pos = self.at_key(ppath);
                            let names: Vec<&str> = ports.iter().map(|p| p.name).collect();
                            let opname = op.as_deref().map(|o| o.spec().name).unwrap_or("?");
                            self.error_help(
                                pos,
                                format!("operator `{opname}` has no input `{port}`"),
                                suggestion(port, names.iter().copied()),
                            );
                            continue;
                        }
                    },
                    Some(InputPorts::Named { .. }) => {
                        if !valid_stage_name(port) {
                            let pos = self.at_key(ppath);
                            self.error(
                                pos,
                                format!("input name `{port}` may only contain ASCII letters, digits, `_` and `-`"),
                            );
                        }
                        if refs.len() != 1 {
                            let pos = self.at(ppath);
                            self.error(pos, format!("named input `{port}` takes exactly one table"));
                        }
                        None
                    }
                    None => None,
                };
                if let Some(ps) = &port_spec
                    && !ps.many
                    && refs.len() > 1
                {
                    let pos = self.at(ppath);
                    self.error(pos, format!("input `{port}` takes one upstream output, not a list of {}", refs.len()));
                }
                let mut resolved = Vec::new();
                for (text, rpath) in refs {
                    let (up, up_port) = match text.split_once('.') {
                        Some((s, p)) => (s.to_string(), Some(p.to_string())),
                        None => (text.clone(), None),
                    };
                    let Some(&ui) = index_of.get(up.as_str()) else {
                        let pos = self.at(rpath);
                        let others: Vec<&str> = names.iter().filter(|n| **n != sname).map(|s| s.as_str()).collect();
                        self.error_help(
                            pos,
                            format!("stage `{sname}` reads from `{up}`, which is not a stage"),
                            suggestion(&up, others.iter().copied()),
                        );
                        continue;
                    };
                    let Some(up_op) = raws[ui].op.clone() else { continue };
                    let up_spec = up_op.spec();
                    let out_port = match &up_port {
                        Some(p) => match up_spec.output(p) {
                            Some(o) => o.clone(),
                            None => {
                                let pos = self.at(rpath);
                                let outs: Vec<&str> = up_spec.outputs.iter().map(|o| o.name).collect();
                                self.error_help(
                                    pos,
                                    format!("stage `{up}` (operator `{}`) has no output `{p}`", up_spec.name),
                                    suggestion(p, outs.iter().copied()),
                                );
                                continue;
                            }
                        },
                        None => match up_spec.default_output() {
                            Some(o) => o.clone(),
                            None => {
                                let pos = self.at(rpath);
                                self.error(pos, format!("stage `{up}` (operator `{}`) has no outputs", up_spec.name));
                                continue;
                            }
                        },
                    };
                    let in_kind = port_spec.as_ref().map(|p| &p.kind);
                    match (in_kind, &out_port.kind) {
                        (Some(a), b) if kind_name(Some(a)) != kind_name(Some(b)) => {
                            let pos = self.at(rpath);
                            self.error(
                                pos,
                                format!(
                                    "input `{port}` takes a {} but `{up}.{}` is a {}",
                                    kind_name(in_kind),
                                    out_port.name,
                                    kind_name(Some(&out_port.kind))
                                ),
                            );
                        }
                        (None, PortKind::Model | PortKind::Dir) if port_spec.is_none() && op.is_some() => {
                            let pos = self.at(rpath);
                            self.error(
                                pos,
                                format!(
                                    "named input `{port}` takes a table but `{up}.{}` is a {}",
                                    out_port.name,
                                    kind_name(Some(&out_port.kind))
                                ),
                            );
                        }
                        (Some(PortKind::Table(Some(need))), PortKind::Table(Some(have))) => {
                            let have_schema = arrow::datatypes::Schema::new(
                                have.iter()
                                    .map(|c| arrow::datatypes::Field::new(c.name, c.data_type.clone(), c.nullable))
                                    .collect::<Vec<_>>(),
                            );
                            let problems = schema_problems(need, &have_schema);
                            if !problems.is_empty() {
                                let pos = self.at(rpath);
                                self.error(
                                    pos,
                                    format!(
                                        "input `{port}` of stage `{sname}` cannot read `{up}.{}`: {}",
                                        out_port.name,
                                        problems.join("; ")
                                    ),
                                );
                            }
                        }
                        _ => {}
                    }
                    resolved.push(OutputRef { stage: up, stage_index: ui, port: out_port.name.to_string() });
                }
                inputs.insert(port.clone(), resolved);
            }
            // Required inputs.
            if let Some(InputPorts::Fixed(ports)) = op.as_deref().map(|o| &o.spec().inputs) {
                for p in ports.iter().filter(|p| !p.optional) {
                    if !raw.inputs.iter().any(|(n, _, _)| n == p.name) {
                        let pos = self.at_key(&key(&spath, "inputs")).or_else(|| self.at_key(&spath));
                        self.error_help(
                            pos,
                            format!("stage `{sname}` does not connect required input `{}`", p.name),
                            format!("`{}`: {}", p.name, p.doc),
                        );
                    }
                }
            }
            // Operator-specific checks.
            if let (Some(op), Some(params)) = (&op, &params) {
                let names: Vec<String> = inputs.keys().cloned().collect();
                for issue in op.validate(&ValidateCtx { params, inputs: &names }) {
                    let mut p = key(&spath, "params");
                    p.extend(issue.param.iter().map(|k| Seg::Key(k.clone())));
                    let pos = self.at(&p);
                    self.error(pos, format!("stage `{sname}`: {}", issue.message));
                }
            }
            let mut upstream: Vec<usize> = inputs.values().flatten().map(|r| r.stage_index).collect();
            upstream.sort();
            upstream.dedup();
            if let (Some(op), Some(params)) = (op, params) {
                built.push(Stage { name: sname, op, inputs, params, resources, description, checks, upstream });
            }
        }
        if !self.errors.is_empty() {
            return None;
        }
        self.check_cycles(&built, &stages_path);
        if !self.errors.is_empty() {
            return None;
        }
        Some(Pipeline {
            name,
            description,
            file: file.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            stages: built,
            llm,
            source: source.clone(),
            positions: Positions::default(),
        })
    }

    fn string_list(&mut self, v: &Value, path: &[Seg], what: &str) -> Option<Vec<String>> {
        match v {
            Value::String(s) if !s.is_empty() => Some(vec![s.clone()]),
            Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
            {
                Some(items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
            }
            _ => {
                let pos = self.at(path);
                self.error(pos, format!("{what} must be a column name or a list of column names"));
                None
            }
        }
    }

    fn checks(&mut self, v: Option<&Value>, path: &[Seg], op: Option<&dyn Operator>) -> Vec<CheckSpec> {
        const KINDS: &[&str] = &["sql", "row_count", "not_null", "unique", "accepted_values", "range"];
        let mut out: Vec<CheckSpec> = Vec::new();
        let Some(v) = v else { return out };
        let Value::Array(items) = v else {
            let pos = self.at(path);
            self.error_help(pos, "`checks` must be a list", "e.g. `checks: [{ name: ids_unique, unique: id }]`");
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let mut cpath = path.to_vec();
            cpath.push(Seg::Index(i));
            let Some(m) = self.expect_object(item, &cpath, "a check").cloned() else { continue };
            let mut allowed = vec!["name", "severity", "port", "description"];
            allowed.extend_from_slice(KINDS);
            self.check_keys(&m, &cpath, &allowed, "check");
            let name = match m.get("name") {
                Some(Value::String(n)) if !n.is_empty() => n.clone(),
                _ => {
                    let pos = self.at(&cpath);
                    self.error(pos, "a check needs a `name`");
                    continue;
                }
            };
            if out.iter().any(|c| c.name == name) {
                let pos = self.at(&key(&cpath, "name"));
                self.error(pos, format!("two checks are named `{name}`"));
            }
            let severity = match m.get("severity").map(|s| s.as_str()) {
                None | Some(Some("error")) => Severity::Error,
                Some(Some("warn")) => Severity::Warn,
                _ => {
                    let pos = self.at(&key(&cpath, "severity"));
                    self.error(pos, "`severity` is `error` (blocks downstream stages) or `warn`");
                    Severity::Error
                }
            };
            let spec = op.map(|o| o.spec());
            let port = match m.get("port") {
                None => None,
                Some(Value::String(p)) => {
                    if let Some(spec) = spec
                        && spec.output(p).is_none()
                    {
                        let pos = self.at(&key(&cpath, "port"));
                        self.error_help(
                            pos,
                            format!("operator `{}` has no output `{p}`", spec.name),
                            suggestion(p, spec.outputs.iter().map(|o| o.name)),
                        );
                    }
                    Some(p.clone())
                }
                Some(_) => {
                    let pos = self.at(&key(&cpath, "port"));
                    self.error(pos, "`port` must be an output name");
                    None
                }
            };
            let kinds: Vec<&str> = KINDS.iter().copied().filter(|k| m.contains_key(*k)).collect();
            if kinds.len() != 1 {
                let pos = self.at_key(&cpath).or_else(|| self.at(&cpath));
                self.error_help(
                    pos,
                    format!("check `{name}` must have exactly one of {}", KINDS.join(", ")),
                    if kinds.is_empty() {
                        "e.g. `not_null: [question, answer]`".to_string()
                    } else {
                        format!("found {}", kinds.join(" and "))
                    },
                );
                continue;
            }
            let kpath = key(&cpath, kinds[0]);
            let kv = &m[kinds[0]];
            let num = |this: &mut Self, obj: &Map<String, Value>, f: &str, whole: bool| -> Option<f64> {
                let x = obj.get(f)?;
                match x.as_f64() {
                    Some(n) if !whole || (n >= 0.0 && n.fract() == 0.0) => Some(n),
                    _ => {
                        let pos = this.at(&key(&kpath, f));
                        this.error(
                            pos,
                            format!("`{f}` must be {}", if whole { "a whole number ≥ 0" } else { "a number" }),
                        );
                        None
                    }
                }
            };
            let kind = match kinds[0] {
                "sql" => match kv.as_str() {
                    Some(q) if !q.trim().is_empty() => {
                        let outputs: Vec<String> =
                            spec.map(|s| s.outputs.iter().map(|o| o.name.to_string()).collect()).unwrap_or_default();
                        match fleming_artifacts::sql::referenced_tables(q) {
                            Err(e) => {
                                let pos = self.at(&kpath);
                                self.error(pos, format!("check `{name}`: SQL error: {e}"));
                            }
                            Ok(tables) => {
                                for t in tables.iter().filter(|t| *t != "table" && !outputs.contains(t)) {
                                    let pos = self.at(&kpath);
                                    self.error_help(
                                        pos,
                                        format!("check `{name}` reads `{t}`, which is not an output of the stage"),
                                        format!("the checked output is `table`; every output is also a table of its name ({})", outputs.join(", ")),
                                    );
                                }
                            }
                        }
                        Some(CheckKind::Sql(q.to_string()))
                    }
                    _ => {
                        let pos = self.at(&kpath);
                        self.error(pos, "`sql` must be a query returning the failing rows");
                        None
                    }
                },
                "not_null" => self.string_list(kv, &kpath, "`not_null`").map(CheckKind::NotNull),
                "unique" => self.string_list(kv, &kpath, "`unique`").map(CheckKind::Unique),
                "row_count" => match kv.as_object() {
                    Some(o) => {
                        self.check_keys(o, &kpath, &["min", "max"], "row_count");
                        let (min, max) = (num(self, o, "min", true), num(self, o, "max", true));
                        if min.is_none() && max.is_none() {
                            let pos = self.at(&kpath);
                            self.error(pos, "`row_count` needs `min`, `max` or both");
                        }
                        Some(CheckKind::RowCount { min: min.map(|x| x as u64), max: max.map(|x| x as u64) })
                    }
                    None => {
                        let pos = self.at(&kpath);
                        self.error(pos, "`row_count` is `{ min: N, max: M }`");
                        None
                    }
                },
                "range" => match kv.as_object() {
                    Some(o) => {
                        self.check_keys(o, &kpath, &["column", "min", "max"], "range");
                        let column = o.get("column").and_then(|c| c.as_str()).map(str::to_string);
                        let (min, max) = (num(self, o, "min", false), num(self, o, "max", false));
                        if column.is_none() || (min.is_none() && max.is_none()) {
                            let pos = self.at(&kpath);
                            self.error(pos, "`range` is `{ column: c, min: x, max: y }` (min, max or both)");
                        }
                        column.map(|column| CheckKind::Range { column, min, max })
                    }
                    None => {
                        let pos = self.at(&kpath);
                        self.error(pos, "`range` is `{ column: c, min: x, max: y }`");
                        None
                    }
                },
                _ => match kv.as_object() {
                    Some(o) => {
                        self.check_keys(o, &kpath, &["column", "values"], "accepted_values");
                        let column = o.get("column").and_then(|c| c.as_str()).map(str::to_string);
                        let values = o.get("values").and_then(|v| v.as_array()).filter(|v| !v.is_empty()).cloned();
                        if column.is_none() || values.is_none() {
                            let pos = self.at(&kpath);
                            self.error(pos, "`accepted_values` is `{ column: c, values: [a, b] }`");
                        }
                        column.zip(values).map(|(column, values)| CheckKind::AcceptedValues { column, values })
                    }
                    None => {
                        let pos = self.at(&kpath);
                        self.error(pos, "`accepted_values` is `{ column: c, values: [a, b] }`");
                        None
                    }
                },
            };
            // Columns of outputs that declare them are checked now.
            if let (Some(kind), Some(spec)) = (&kind, spec) {
                let port_name = port.clone().or_else(|| spec.default_output().map(|o| o.name.to_string()));
                let declared = port_name.as_deref().and_then(|p| spec.output(p)).and_then(|p| p.schema());
                if let Some(schema) = declared {
                    let cols: Vec<&String> = match kind {
                        CheckKind::NotNull(c) | CheckKind::Unique(c) => c.iter().collect(),
                        CheckKind::AcceptedValues { column, .. } | CheckKind::Range { column, .. } => vec![column],
                        _ => Vec::new(),
                    };
                    for c in cols {
                        if schema.field_with_name(c).is_err() {
                            let pos = self.at(&kpath);
                            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                            self.error_help(
                                pos,
                                format!("check `{name}`: the output has no column `{c}`"),
                                suggestion(c, names.iter().copied()),
                            );
                        }
                    }
                }
            }
            if let Some(kind) = kind {
                out.push(CheckSpec { name, kind, severity, port });
            }
        }
        out
    }

    fn resources(&mut self, v: Option<&Value>, path: &[Seg], op: Option<&dyn Operator>) -> Resources {
        let mut r = Resources::default();
        let Some(v) = v else { return r };
        let Some(m) = self.expect_object(v, path, "`resources`").cloned() else { return r };
        self.check_keys(&m, path, &["gpu", "threads"], "resources");
        for (field, slot) in [("gpu", 0usize), ("threads", 1)] {
            if let Some(x) = m.get(field) {
                match x.as_u64() {
                    Some(n) if n <= 1024 && (slot == 0 || n >= 1) => {
                        if slot == 0 {
                            r.gpu = n as u32
                        } else {
                            r.threads = Some(n as u32)
                        }
                    }
                    _ => {
                        let pos = self.at(&key(path, field));
                        self.error(
                            pos,
                            format!(
                                "`resources.{field}` must be a whole number{}",
                                if slot == 1 { " ≥ 1" } else { "" }
                            ),
                        );
                    }
                }
            }
        }
        if r.gpu > 0
            && let Some(op) = op
            && matches!(op.spec().execution, crate::op::Execution::Cpu | crate::op::Execution::Dataflow)
        {
            let pos = self.at(&key(path, "gpu"));
            self.error(
                pos,
                format!("operator `{}` runs on the CPU; `resources.gpu` applies to GPU operators only", op.spec().name),
            );
        }
        r
    }

    fn llm_section(&mut self, v: Option<&Value>) -> BTreeMap<String, LlmEndpoint> {
        let mut out = BTreeMap::new();
        let path = vec![Seg::Key("llm".into())];
        let Some(v) = v else { return out };
        let Some(m) = self.expect_object(v, &path, "`llm`").cloned() else { return out };
        for (name, ev) in &m {
            let epath = key(&path, name);
            let Some(e) = self.expect_object(ev, &epath, &format!("llm endpoint `{name}`")).cloned() else { continue };
            self.check_keys(
                &e,
                &epath,
                &["endpoint", "model", "api_key_env", "max_concurrency", "timeout_secs", "max_retries", "params"],
                "llm endpoint",
            );
            let string = |this: &mut Self, f: &str, required: bool| -> Option<String> {
                match e.get(f) {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    None if !required => None,
                    None => {
                        let pos = this.at_key(&epath);
                        this.error(pos, format!("llm endpoint `{name}` needs `{f}`"));
                        None
                    }
                    Some(_) => {
                        let pos = this.at(&key(&epath, f));
                        this.error(pos, format!("`{f}` must be a non-empty string"));
                        None
                    }
                }
            };
            let endpoint = string(self, "endpoint", true);
            let model = string(self, "model", true);
            let api_key_env = string(self, "api_key_env", false);
            if let Some(k) = &api_key_env
                && !valid_env_name(k)
            {
                let pos = self.at(&key(&epath, "api_key_env"));
                self.error_help(
                    pos,
                    format!("`api_key_env` names an environment variable; `{k}` is not a variable name"),
                    "write the variable's name (e.g. OPENAI_API_KEY), never the key itself",
                );
            }
            let number = |this: &mut Self, f: &str, default: f64, min: f64| -> f64 {
                match e.get(f) {
                    None => default,
                    Some(x) => match x.as_f64() {
                        Some(n) if n >= min => n,
                        _ => {
                            let pos = this.at(&key(&epath, f));
                            this.error(pos, format!("`{f}` must be a number ≥ {min}"));
                            default
                        }
                    },
                }
            };
            let max_concurrency = number(self, "max_concurrency", 8.0, 1.0) as u32;
            let timeout_secs = number(self, "timeout_secs", 120.0, 0.001);
            let max_retries = number(self, "max_retries", 5.0, 0.0) as u32;
            let params = match e.get("params") {
                None => Map::new(),
                Some(Value::Object(p)) => p.clone(),
                Some(_) => {
                    let pos = self.at(&key(&epath, "params"));
                    self.error(pos, "`params` must be a mapping of request parameters");
                    Map::new()
                }
            };
            if let (Some(endpoint), Some(model)) = (endpoint, model) {
                out.insert(
                    name.clone(),
                    LlmEndpoint { endpoint, model, api_key_env, max_concurrency, timeout_secs, max_retries, params },
                );
            }
        }
        out
    }

    fn check_cycles(&mut self, stages: &[Stage], stages_path: &[Seg]) {
        // Iterative DFS with colours; report each cycle once.
        let n = stages.len();
        let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            colour[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if *next < stages[node].upstream.len() {
                    let up = stages[node].upstream[*next];
                    *next += 1;
                    match colour[up] {
                        0 => {
                            colour[up] = 1;
                            stack.push((up, 0));
                        }
                        1 => {
                            // `up` feeds `node`, and each stack entry feeds the one below it:
                            // in data-flow order the cycle is up -> node -> ... -> up.
                            let from = stack.iter().position(|(s, _)| *s == up).unwrap_or(0);
                            let mut flow = vec![stages[up].name.as_str()];
                            flow.extend(stack[from..].iter().rev().map(|(s, _)| stages[*s].name.as_str()));
                            let spath = key(stages_path, &stages[node].name);
                            let pos = self.at(&key(&spath, "inputs")).or_else(|| self.at_key(&spath));
                            self.error(pos, format!("the stages form a cycle: {}", flow.join(" -> ")));
                        }
                        _ => {}
                    }
                } else {
                    colour[node] = 2;
                    stack.pop();
                }
            }
        }
    }
}

fn kind_name(k: Option<&PortKind>) -> &'static str {
    match k {
        Some(PortKind::Model) => "model",
        Some(PortKind::Dir) => "directory",
        Some(PortKind::Table(_)) => "table",
        None => "table",
    }
}

/// Input files named by path parameters that do not exist, as positioned errors (checked
/// before anything runs).
pub fn check_input_files(p: &Pipeline) -> SpecErrors {
    let mut out = Vec::new();
    for stage in &p.stages {
        for (segs, path) in crate::params::input_paths(&stage.op.spec().params, stage.params.values()) {
            let abs = stage.params.resolve_path(&path);
            if !abs.exists() {
                let mut full = positions::path(&["stages", &stage.name, "params"]);
                full.extend(segs.iter().cloned());
                out.push(
                    Diagnostic::at(
                        p.positions.value(&full),
                        format!(
                            "stage `{}`: `{}` names {}, which does not exist",
                            stage.name,
                            crate::params::display_path(&segs),
                            abs.display()
                        ),
                    )
                    .help("paths are relative to the pipeline file's directory"),
                );
            }
        }
    }
    SpecErrors::new(p.source.clone(), out)
}

#[cfg(test)]
mod fuzz {
    //! The loader must never panic, hang, or use unbounded memory, whatever the input.
    use super::*;
    use crate::op::{Execution, OpRegistry, OpSpec, ParamSpec, ParamType, PortSpec};
    use proptest::prelude::*;
    use std::sync::LazyLock;

    struct Echo;
    static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
        name: "echo",
        version: 1,
        summary: "",
        doc: "",
        params: vec![
            ParamSpec::optional("n", ParamType::Int, ""),
            ParamSpec::optional("s", ParamType::Str, ""),
            ParamSpec::optional("l", ParamType::List(Box::new(ParamType::Float)), ""),
        ],
        inputs: InputPorts::Fixed(vec![PortSpec::table("in", "").optional().many()]),
        outputs: vec![PortSpec::table("out", "")],
        execution: Execution::Cpu,
        fingerprint: String::new(),
    });
    impl Operator for Echo {
        fn spec(&self) -> &OpSpec {
            &SPEC
        }
    }

    fn registry() -> OpRegistry {
        let mut r = OpRegistry::new();
        r.register(Arc::new(Echo));
        r
    }

    fn parse_text(text: &str) -> Result<Pipeline, SpecErrors> {
        parse(text, Path::new("f.yaml"), Path::new("/"), "f", &registry(), &|_| None)
    }

    /// YAML-ish fragments that exercise the grammar more than random bytes do.
    fn yamlish() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "stages:",
            "\n",
            "  ",
            "a:",
            "b:",
            "op: echo",
            "op:",
            "inputs:",
            "params:",
            "{",
            "}",
            "[",
            "]",
            ",",
            "- ",
            "in: a",
            "in: [a, b]",
            "n: 3",
            "n: x",
            "l: [1, 2.5]",
            "s: \"${X:-y}\"",
            "&a ",
            "*a",
            "<<: *a",
            "!tag ",
            "'",
            "\"",
            "#",
            "---",
            "...",
            "? ",
            ": ",
            "${",
            "\t",
            "a.out",
            "resources: {gpu: 1}",
            "name: p",
            "|",
            ">",
        ]);
        prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse_text(&text);
        }

        #[test]
        fn yamlish_text_never_panics(text in yamlish()) {
            let _ = parse_text(&text);
        }
    }

    #[test]
    fn a_valid_file_parses_and_errors_have_positions() {
        let ok = "stages:\n  a: { op: echo, params: { n: 3 } }\n  b: { op: echo, inputs: { in: [a, a.out] } }\n";
        let p = parse_text(ok).unwrap();
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stages[1].upstream, vec![0]);
        let bad = "stages:\n  a: { op: echo, params: { n: x } }\n";
        let e = parse_text(bad).unwrap_err();
        assert_eq!(e.diagnostics[0].pos, Some(Pos { line: 2, col: 31 }));
    }

    #[test]
    fn billion_laughs_is_refused_fast() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", ")));
        }
        text.push_str("stages: *a11\n");
        let start = std::time::Instant::now();
        assert!(parse_text(&text).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
