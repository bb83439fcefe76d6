//! The operator contract: what every operator declares (its [`OpSpec`]) and implements
//! (the [`Operator`] trait). Specs exist for every operator, CPU or GPU, so that pipelines
//! validate and keys compute without libtorch; GPU operators run in a worker process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use fleming_artifacts::Table;
use serde_json::Value;

use crate::context::OpContext;
use crate::params::Params;

/// The type of a parameter, checked before anything runs.
#[derive(Clone, Debug)]
pub enum ParamType {
    /// Any string.
    Str,
    /// A whole number.
    Int,
    /// A number (whole numbers accepted).
    Float,
    /// `true` or `false`.
    Bool,
    /// A file or directory read by the stage, relative to the pipeline file. Its content
    /// digest (not its path) enters the stage key.
    InputPath,
    /// A path the stage writes to, relative to the pipeline file (not hashed).
    OutputPath,
    /// A Hugging Face model directory read by the stage, relative to the pipeline file: the
    /// digest of the files a model is made of (config, tokenizer, safetensors weights and
    /// index; not READMEs or other formats) enters the stage key, through the stat cache.
    ModelDir,
    /// One of a fixed set of strings.
    Enum(Vec<&'static str>),
    /// A list of values of one type.
    List(Box<ParamType>),
    /// A map from string keys to values of one type.
    Map(Box<ParamType>),
    /// An object with its own declared fields.
    Object(Vec<ParamSpec>),
    /// Free-form JSON (checked by the operator's own validation).
    Json,
    /// The name of an entry of a top-level section of the pipeline (e.g. `llm`).
    SectionRef(&'static str),
}

impl ParamType {
    /// Short name for messages and `fleming ops`.
    pub fn describe(&self) -> String {
        match self {
            ParamType::Str => "string".into(),
            ParamType::Int => "integer".into(),
            ParamType::Float => "number".into(),
            ParamType::Bool => "boolean".into(),
            ParamType::InputPath => "path (read; content-hashed)".into(),
            ParamType::OutputPath => "path (written)".into(),
            ParamType::ModelDir => "model directory (read; its model files content-hashed)".into(),
            ParamType::Enum(v) => format!("one of {}", v.join("|")),
            ParamType::List(t) => format!("list of {}", t.describe()),
            ParamType::Map(t) => format!("map of {}", t.describe()),
            ParamType::Object(fields) => {
                format!("object {{{}}}", fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", "))
            }
            ParamType::Json => "any".into(),
            ParamType::SectionRef(s) => format!("name of a `{s}` entry"),
        }
    }
}

/// Whether a parameter must be given.
#[derive(Clone, Debug)]
pub enum ParamDefault {
    /// The pipeline must set it.
    Required,
    /// May be absent; the operator sees `null`.
    Optional,
    /// This value when absent.
    Value(Value),
}

/// One declared parameter.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// Name as written in YAML.
    pub name: &'static str,
    /// Type.
    pub ty: ParamType,
    /// Default or requirement.
    pub default: ParamDefault,
    /// One line of documentation (shown by `fleming ops`).
    pub doc: &'static str,
    /// Smallest allowed value (numbers).
    pub min: Option<f64>,
    /// Largest allowed value (numbers).
    pub max: Option<f64>,
    /// Whether it enters the stage key. Only parameters that cannot change the output
    /// (concurrency, rate limits, log intervals) leave it out.
    pub in_key: bool,
    /// A larger value continues the previous run from its final checkpoint instead of
    /// starting over (a training stage's `steps`).
    pub continues: bool,
}

impl ParamSpec {
    /// A required parameter.
    pub fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: ParamDefault::Required,
            doc,
            min: None,
            max: None,
            in_key: true,
            continues: false,
        }
    }

    /// A parameter with a default.
    pub fn with_default(name: &'static str, ty: ParamType, default: Value, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: ParamDefault::Value(default),
            doc,
            min: None,
            max: None,
            in_key: true,
            continues: false,
        }
    }

    /// A parameter that may be absent (null).
    pub fn optional(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: ParamDefault::Optional,
            doc,
            min: None,
            max: None,
            in_key: true,
            continues: false,
        }
    }

    /// Sets bounds for a number.
    pub fn range(mut self, min: Option<f64>, max: Option<f64>) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// Marks the parameter as not affecting the output (left out of the stage key).
    pub fn not_in_key(mut self) -> Self {
        self.in_key = false;
        self
    }

    /// Marks an integer parameter whose increase continues the previous run of the stage
    /// from its final checkpoint (e.g. `steps` of a trainer): when nothing else changed,
    /// the worker is handed that checkpoint (`Job::resume_from`) and `run -n` says so.
    pub fn continues(mut self) -> Self {
        self.continues = true;
        self
    }
}

/// A column an input port needs, or an output port guarantees.
#[derive(Clone, Debug)]
pub struct ColumnSpec {
    /// Column name.
    pub name: &'static str,
    /// Arrow type.
    pub data_type: DataType,
    /// Whether nulls may appear.
    pub nullable: bool,
}

impl ColumnSpec {
    /// A column.
    pub fn new(name: &'static str, data_type: DataType, nullable: bool) -> Self {
        ColumnSpec { name, data_type, nullable }
    }
}

/// What flows through a port.
#[derive(Clone, Debug)]
pub enum PortKind {
    /// A table; `Some(columns)` when the columns are declared (outputs: guaranteed; inputs:
    /// required), `None` when they depend on the data (like `load` and `sql`).
    Table(Option<Vec<ColumnSpec>>),
    /// A model directory (Hugging Face layout).
    Model,
    /// A directory of files that is not a model (a report: Markdown, HTML).
    Dir,
}

/// One input or output port.
#[derive(Clone, Debug)]
pub struct PortSpec {
    /// Port name.
    pub name: &'static str,
    /// Kind.
    pub kind: PortKind,
    /// Input ports: accepts a list of upstream outputs.
    pub many: bool,
    /// Input ports: may be left unconnected.
    pub optional: bool,
    /// One line of documentation.
    pub doc: &'static str,
}

impl PortSpec {
    /// A table port with data-dependent columns.
    pub fn table(name: &'static str, doc: &'static str) -> Self {
        PortSpec { name, kind: PortKind::Table(None), many: false, optional: false, doc }
    }

    /// A table port with declared columns.
    pub fn table_with(name: &'static str, columns: Vec<ColumnSpec>, doc: &'static str) -> Self {
        PortSpec { name, kind: PortKind::Table(Some(columns)), many: false, optional: false, doc }
    }

    /// A model port.
    pub fn model(name: &'static str, doc: &'static str) -> Self {
        PortSpec { name, kind: PortKind::Model, many: false, optional: false, doc }
    }

    /// A port of a directory of files (not a model).
    pub fn dir(name: &'static str, doc: &'static str) -> Self {
        PortSpec { name, kind: PortKind::Dir, many: false, optional: false, doc }
    }

    /// Accepts a list of upstream outputs.
    pub fn many(mut self) -> Self {
        self.many = true;
        self
    }

    /// May be left unconnected.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// The declared Arrow schema, for table ports with declared columns.
    pub fn schema(&self) -> Option<SchemaRef> {
        match &self.kind {
            PortKind::Table(Some(cols)) => Some(Arc::new(Schema::new(
                cols.iter().map(|c| Field::new(c.name, c.data_type.clone(), c.nullable)).collect::<Vec<_>>(),
            ))),
            _ => None,
        }
    }
}

/// The input ports of an operator.
#[derive(Clone, Debug)]
pub enum InputPorts {
    /// Declared ports.
    Fixed(Vec<PortSpec>),
    /// Any names the pipeline chooses, each bound to one table (e.g. the tables of `sql`).
    Named {
        /// What each named input is.
        doc: &'static str,
    },
}

/// Where an operator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// In the `fleming` process.
    Cpu,
    /// In a worker process (libtorch; GPU when available).
    Worker,
    /// In the `fleming` process, starting worker processes of its own (the model server
    /// of `evaluate`) on the GPUs the stage is given (`resources.gpu`).
    CpuWithWorkers,
    /// In the `fleming` process, as a timely dataflow; in a cluster run it spans every
    /// process ([`crate::cluster`]): each feeds its share and process 0 returns the
    /// outputs (the others return none).
    Dataflow,
}

/// Everything the runtime knows about an operator without running it.
#[derive(Clone, Debug)]
pub struct OpSpec {
    /// Name used in pipelines (`op: name`).
    pub name: &'static str,
    /// Declared version; bump it when outputs change for the same inputs and params.
    pub version: u32,
    /// One line of documentation.
    pub summary: &'static str,
    /// Longer documentation (markdown).
    pub doc: &'static str,
    /// Parameters.
    pub params: Vec<ParamSpec>,
    /// Input ports.
    pub inputs: InputPorts,
    /// Output ports; the first is the default when a pipeline names only the stage.
    pub outputs: Vec<PortSpec>,
    /// CPU in-process, or a worker.
    pub execution: Execution,
    /// Fingerprint of the operator's source, to warn when it changed without a version bump.
    pub fingerprint: String,
}

impl OpSpec {
    /// A declared parameter by name.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// A declared output port by name.
    pub fn output(&self, name: &str) -> Option<&PortSpec> {
        self.outputs.iter().find(|p| p.name == name)
    }

    /// A declared input port by name (`None` for named inputs).
    pub fn input(&self, name: &str) -> Option<&PortSpec> {
        match &self.inputs {
            InputPorts::Fixed(ports) => ports.iter().find(|p| p.name == name),
            InputPorts::Named { .. } => None,
        }
    }

    /// The default output port.
    pub fn default_output(&self) -> Option<&PortSpec> {
        self.outputs.first()
    }
}

/// A problem an operator finds in its parameters before running, positioned by the
/// parameter path (e.g. `["query"]`).
#[derive(Clone, Debug)]
pub struct ParamIssue {
    /// Path of the parameter inside `params`.
    pub param: Vec<String>,
    /// What is wrong.
    pub message: String,
}

/// What `validate` sees.
pub struct ValidateCtx<'a> {
    /// Resolved parameters.
    pub params: &'a Params,
    /// Names of the connected inputs.
    pub inputs: &'a [String],
}

/// One output of a run.
#[derive(Debug)]
pub enum OutputValue {
    /// A table.
    Table(Table),
    /// A directory the operator wrote (a model, or the files of a directory port),
    /// typically under its work dir; the runtime moves it into the store.
    Model(PathBuf),
}

/// The outputs of a run, by port.
#[derive(Debug, Default)]
pub struct Outputs(pub BTreeMap<String, OutputValue>);

impl Outputs {
    /// No outputs yet.
    pub fn new() -> Self {
        Outputs::default()
    }

    /// Adds a table output.
    pub fn table(mut self, port: &str, table: Table) -> Self {
        self.0.insert(port.to_string(), OutputValue::Table(table));
        self
    }

    /// Adds a model output.
    pub fn model(mut self, port: &str, dir: PathBuf) -> Self {
        self.0.insert(port.to_string(), OutputValue::Model(dir));
        self
    }

    /// A table output, if present.
    pub fn get_table(&self, port: &str) -> Option<&Table> {
        match self.0.get(port) {
            Some(OutputValue::Table(t)) => Some(t),
            _ => None,
        }
    }
}

/// What `effects_hold` sees: the stage's parameters and the tables it produced last time.
pub struct EffectsCtx<'a> {
    /// Resolved parameters.
    pub params: &'a Params,
    /// Reads an output table of the cached run.
    pub read_output: &'a dyn Fn(&str) -> anyhow::Result<Option<Table>>,
    /// Content digest of a file, through the store's stat cache (no rehash if unchanged).
    pub digest: &'a dyn Fn(&std::path::Path) -> anyhow::Result<fleming_artifacts::Digest>,
}

/// An operator implementation.
pub trait Operator: Send + Sync {
    /// The declaration.
    fn spec(&self) -> &OpSpec;

    /// Checks beyond parameter types (e.g. SQL syntax), before anything runs.
    fn validate(&self, _ctx: &ValidateCtx<'_>) -> Vec<ParamIssue> {
        Vec::new()
    }

    /// Computes the outputs. Must be deterministic: same inputs and params, same output
    /// rows in the same order, whatever the thread count.
    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let _ = ctx;
        anyhow::bail!("operator `{}` runs in a worker process, not in fleming itself", self.spec().name)
    }

    /// For operators with effects outside the store (e.g. `export` writing a user's file):
    /// whether those effects still hold, so that a cached stage whose file was deleted
    /// runs again. Pure operators keep the default.
    fn effects_hold(&self, _ctx: &EffectsCtx<'_>) -> anyhow::Result<bool> {
        Ok(true)
    }
}

/// Where the runtime finds operators.
pub trait Registry: Send + Sync {
    /// The operator of this name.
    fn get(&self, name: &str) -> Option<Arc<dyn Operator>>;
    /// All operator names, sorted.
    fn names(&self) -> Vec<&'static str>;
}

/// A registry backed by a map; operators crates build one.
#[derive(Default, Clone)]
pub struct OpRegistry {
    ops: BTreeMap<&'static str, Arc<dyn Operator>>,
}

impl OpRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        OpRegistry::default()
    }

    /// Adds an operator (replacing one of the same name).
    pub fn register(&mut self, op: Arc<dyn Operator>) {
        self.ops.insert(op.spec().name, op);
    }
}

impl Registry for OpRegistry {
    fn get(&self, name: &str) -> Option<Arc<dyn Operator>> {
        self.ops.get(name).cloned()
    }
    fn names(&self) -> Vec<&'static str> {
        self.ops.keys().copied().collect()
    }
}

/// Whether two Arrow types are interchangeable for port compatibility (string and list
/// encodings are treated as one).
pub fn types_compatible(a: &DataType, b: &DataType) -> bool {
    use DataType::*;
    match (a, b) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (List(x) | LargeList(x) | ListView(x), List(y) | LargeList(y) | ListView(y)) => {
            types_compatible(x.data_type(), y.data_type())
        }
        (Struct(xs), Struct(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .zip(ys.iter())
                    .all(|(x, y)| x.name() == y.name() && types_compatible(x.data_type(), y.data_type()))
        }
        _ => a == b,
    }
}

/// Columns of `required` missing from `schema` or of another type, as messages.
pub fn schema_problems(required: &[ColumnSpec], schema: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for c in required {
        match schema.field_with_name(c.name) {
            Ok(f) if types_compatible(f.data_type(), &c.data_type) => {}
            Ok(f) => out.push(format!("column `{}` is {} but {} is needed", c.name, f.data_type(), c.data_type)),
            Err(_) => out.push(format!("column `{}` ({}) is missing", c.name, c.data_type)),
        }
    }
    out
}

/// Checks that a run produced exactly the declared outputs, with the declared columns.
pub fn check_outputs(spec: &OpSpec, outputs: &Outputs) -> anyhow::Result<()> {
    for port in &spec.outputs {
        match (outputs.0.get(port.name), &port.kind) {
            (None, _) => anyhow::bail!("operator `{}` did not produce its output `{}`", spec.name, port.name),
            (Some(OutputValue::Table(t)), PortKind::Table(Some(cols))) => {
                let problems = schema_problems(cols, &t.schema);
                if !problems.is_empty() {
                    anyhow::bail!(
                        "operator `{}` output `{}` does not match its declared schema: {}",
                        spec.name,
                        port.name,
                        problems.join("; ")
                    );
                }
            }
            (Some(OutputValue::Table(_)), PortKind::Table(None)) => {}
            (Some(OutputValue::Model(p)), PortKind::Model | PortKind::Dir) => {
                if !p.is_dir() {
                    anyhow::bail!(
                        "operator `{}` output `{}`: {} is not a directory",
                        spec.name,
                        port.name,
                        p.display()
                    );
                }
            }
            (Some(_), _) => anyhow::bail!("operator `{}` output `{}` is of the wrong kind", spec.name, port.name),
        }
    }
    for name in outputs.0.keys() {
        if spec.output(name).is_none() {
            anyhow::bail!("operator `{}` produced an undeclared output `{name}`", spec.name);
        }
    }
    Ok(())
}
