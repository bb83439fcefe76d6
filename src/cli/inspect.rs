//! `fleming status`, `dag`, `show` and `ops`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use fleming_artifacts::ArtifactKind;
use fleming_runtime::CancelToken;
use fleming_runtime::executor::{Executor, Outcome, RunOptions};
use fleming_runtime::op::{Execution, InputPorts, ParamDefault, PortKind, Registry};
use fleming_runtime::progress::SilentSink;
use fleming_runtime::state::StageRef;

use super::{Cli, EXIT_INVALID, load_pipeline, open_store};

/// Arguments of `fleming status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
}

/// `fleming status`: each stage cached or stale, and why.
pub fn status(cli: &Cli, args: &StatusArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let pipeline = match load_pipeline(&args.pipeline, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store = open_store(cli, &pipeline)?;
    let executor = Executor::new(&pipeline, &store, std::sync::Arc::new(SilentSink), CancelToken::new());
    let report = executor.run(&RunOptions { dry_run: true, ..RunOptions::default() })?;
    let cache =
        if store.remote().is_some() { format!(" (cached in {})", store.root().display()) } else { String::new() };
    println!("{} ({}), store {}{cache}", pipeline.name, args.pipeline.display(), store.location());
    let w_stage = report.stages.iter().map(|s| s.stage.len()).max().unwrap_or(5).max(5);
    let w_op = report.stages.iter().map(|s| s.op.len() + 2).max().unwrap_or(4).max(4);
    let mut stale = 0;
    for s in &report.stages {
        let state = match s.outcome {
            Outcome::Cached => "cached",
            Outcome::WouldRun => {
                stale += 1;
                "stale"
            }
            Outcome::Skipped => "blocked",
            _ => s.outcome.label(),
        };
        let reason = if s.outcome == Outcome::Cached { String::new() } else { s.reason.clone() };
        println!("  {:<w_stage$}  {:<w_op$}  {:<7}  {reason}", s.stage, format!("[{}]", s.op), state);
        for c in s.checks.iter().filter(|c| c.status != fleming_runtime::checks::CheckStatus::Passed) {
            println!("  {:<w_stage$}    {}", "", super::checks::check_line(c));
        }
    }
    for s in &report.stages {
        for w in &s.warnings {
            println!("warning: {w}");
        }
    }
    println!("{} stages: {} cached, {stale} stale", report.stages.len(), report.with(Outcome::Cached).len());
    Ok(0)
}

/// Output format of `fleming dag`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DagFormat {
    /// Indented text.
    Text,
    /// Graphviz.
    Dot,
    /// Mermaid (renders on GitHub).
    Mermaid,
}

/// Arguments of `fleming dag`.
#[derive(Args, Debug)]
pub struct DagArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DagFormat::Text)]
    pub format: DagFormat,
}

/// `fleming dag`.
pub fn dag(args: &DagArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let p = match load_pipeline(&args.pipeline, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let edges: Vec<(String, String, String)> = p
        .stages
        .iter()
        .flat_map(|s| {
            s.inputs.iter().flat_map(move |(port, refs)| {
                refs.iter().map(move |r| (r.stage.clone(), s.name.clone(), format!("{}→{port}", r.port)))
            })
        })
        .collect();
    match args.format {
        DagFormat::Text => {
            for i in p.topo_order() {
                let s = &p.stages[i];
                let from: Vec<String> = s
                    .inputs
                    .iter()
                    .flat_map(|(port, refs)| refs.iter().map(move |r| format!("{port} ← {r}")))
                    .collect();
                let gpu = if s.resources.gpu > 0 { format!(" gpu:{}", s.resources.gpu) } else { String::new() };
                if from.is_empty() {
                    println!("{} [{}]{gpu}", s.name, s.op.spec().name);
                } else {
                    println!("{} [{}]{gpu}  ({})", s.name, s.op.spec().name, from.join(", "));
                }
            }
        }
        DagFormat::Dot => {
            println!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];", p.name);
            for s in &p.stages {
                let shape = if matches!(s.op.spec().execution, Execution::Worker | Execution::CpuWithWorkers) {
                    ", style=filled, fillcolor=\"#ffe0b0\""
                } else {
                    ""
                };
                println!("  \"{}\" [label=\"{}\\n[{}]\"{shape}];", s.name, s.name, s.op.spec().name);
            }
            for (a, b, label) in &edges {
                println!("  \"{a}\" -> \"{b}\" [label=\"{label}\"];");
            }
            println!("}}");
        }
        DagFormat::Mermaid => {
            println!("flowchart LR");
            for s in &p.stages {
                println!("  {}[\"{}<br/>[{}]\"]", mermaid_id(&s.name), s.name, s.op.spec().name);
            }
            for (a, b, label) in &edges {
                println!("  {} -->|{label}| {}", mermaid_id(a), mermaid_id(b));
            }
        }
    }
    Ok(0)
}

fn mermaid_id(name: &str) -> String {
    format!("s_{}", name.replace('-', "_"))
}

/// Arguments of `fleming show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// `stage` or `stage.port`.
    pub target: String,
    /// Rows to print.
    #[arg(long, default_value_t = 10)]
    pub rows: usize,
    /// Print the schema instead of rows.
    #[arg(long)]
    pub schema: bool,
}

/// `fleming show`.
pub fn show(cli: &Cli, args: &ShowArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let p = match load_pipeline(&args.pipeline, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let (stage_name, port) = match args.target.split_once('.') {
        Some((s, port)) => (s.to_string(), Some(port.to_string())),
        None => (args.target.clone(), None),
    };
    let Some(i) = p.stage_index(&stage_name) else {
        eprintln!(
            "error: no stage `{stage_name}` ({})",
            fleming_runtime::diagnostic::suggestion(&stage_name, p.stages.iter().map(|s| s.name.as_str()))
        );
        return Ok(EXIT_INVALID);
    };
    let spec = p.stages[i].op.spec();
    let port = port.or_else(|| spec.default_output().map(|o| o.name.to_string())).unwrap_or_default();
    if spec.output(&port).is_none() {
        eprintln!(
            "error: stage `{stage_name}` has no output `{port}` (outputs: {})",
            spec.outputs.iter().map(|o| o.name).collect::<Vec<_>>().join(", ")
        );
        return Ok(EXIT_INVALID);
    }
    let store = open_store(cli, &p)?;
    let Some(r) = StageRef::load(&store, &p.name, &stage_name)? else {
        eprintln!("error: stage `{stage_name}` has not run yet (`fleming run {}`)", args.pipeline.display());
        return Ok(super::EXIT_FAILED);
    };
    let Some(a) = r.outputs.get(&port) else {
        eprintln!("error: stage `{stage_name}` has no stored output `{port}`");
        return Ok(super::EXIT_FAILED);
    };
    let path = store.fetch(a.kind, &a.digest)?;
    let what = match spec.output(&port).map(|o| &o.kind) {
        _ if a.kind == ArtifactKind::Table => "table",
        Some(PortKind::Dir) => "directory",
        _ => "model",
    };
    println!("{stage_name}.{port}: {what} {} ({} bytes)", a.digest, a.bytes);
    println!("  {}", path.display());
    if a.kind == ArtifactKind::Tree {
        for f in fleming_artifacts::store::walk_files(&path)? {
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            println!("  {:>12}  {}", size, f.strip_prefix(&path).unwrap_or(&f).display());
        }
        // A report directory: its Markdown is what the user wants to read.
        if let Ok(text) = std::fs::read_to_string(path.join("report.md")) {
            println!("\n{text}");
        }
        return Ok(0);
    }
    let table = store.read_table(a)?;
    if args.schema {
        for f in table.schema.fields() {
            println!("  {:<24} {}{}", f.name(), f.data_type(), if f.is_nullable() { "" } else { " not null" });
        }
        return Ok(0);
    }
    println!("  {} rows", table.num_rows());
    let mut shown = Vec::new();
    let mut left = args.rows;
    for b in &table.batches {
        if left == 0 {
            break;
        }
        let take = left.min(b.num_rows());
        shown.push(b.slice(0, take));
        left -= take;
    }
    println!("{}", super::query::render_table(&table.schema, &shown)?);
    Ok(0)
}

/// Arguments of `fleming ops`.
#[derive(Args, Debug)]
pub struct OpsArgs {
    /// One operator (default: all, one line each).
    pub name: Option<String>,
}

/// `fleming ops`: the operator catalogue.
pub fn ops(args: &OpsArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let Some(name) = &args.name else {
        let w = registry.names().iter().map(|n| n.len()).max().unwrap_or(4);
        for n in registry.names() {
            if let Some(op) = registry.get(n) {
                let s = op.spec();
                let gpu = match s.execution {
                    Execution::Worker => " (GPU worker)",
                    Execution::CpuWithWorkers => " (starts GPU workers)",
                    Execution::Dataflow => " (dataflow: spans a cluster run's processes)",
                    Execution::Cpu => "",
                };
                println!("{n:<w$}  v{}  {}{gpu}", s.version, s.summary);
            }
        }
        return Ok(0);
    };
    let Some(op) = registry.get(name) else {
        eprintln!("error: no operator `{name}` ({})", fleming_runtime::diagnostic::suggestion(name, registry.names()));
        return Ok(EXIT_INVALID);
    };
    let s = op.spec();
    println!("{} v{} — {}", s.name, s.version, s.summary);
    match s.execution {
        Execution::Worker => println!("runs in the torch worker (fleming-worker); GPU when available"),
        Execution::CpuWithWorkers => {
            println!("runs in fleming and starts the torch worker for model artifacts; GPU when one is assigned")
        }
        Execution::Dataflow => println!(
            "runs as a timely dataflow on -w threads; in a cluster run (`fleming run --hosts`) on every process"
        ),
        Execution::Cpu => {}
    }
    if !s.doc.is_empty() {
        println!("\n{}", textwrap(s.doc, 88));
    }
    println!("\nparameters:");
    if s.params.is_empty() {
        println!("  (none)");
    }
    for p in &s.params {
        print_param(p, 1);
    }
    println!("\ninputs:");
    match &s.inputs {
        InputPorts::Fixed(ports) if ports.is_empty() => println!("  (none)"),
        InputPorts::Fixed(ports) => {
            for port in ports {
                let flags = [port.many.then_some("list"), port.optional.then_some("optional")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>();
                let flags = if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) };
                println!("  {}{flags}: {}  {}", port.name, port_kind(&port.kind), port.doc);
            }
        }
        InputPorts::Named { doc } => println!("  any names: {doc}"),
    }
    println!("\noutputs:");
    for port in &s.outputs {
        println!("  {}: {}  {}", port.name, port_kind(&port.kind), port.doc);
    }
    Ok(0)
}

fn print_param(p: &fleming_runtime::ParamSpec, depth: usize) {
    let indent = "  ".repeat(depth);
    let default = match &p.default {
        ParamDefault::Required => "required".to_string(),
        ParamDefault::Optional => "optional".to_string(),
        ParamDefault::Value(v) => format!("default {v}"),
    };
    let bounds = match (p.min, p.max) {
        (Some(a), Some(b)) => format!(", {a}..={b}"),
        (Some(a), None) => format!(", ≥ {a}"),
        (None, Some(b)) => format!(", ≤ {b}"),
        _ => String::new(),
    };
    let key = if p.in_key { "" } else { ", not in the key" };
    println!("{indent}{} ({}, {default}{bounds}{key})", p.name, p.ty.describe());
    println!("{indent}    {}", p.doc);
    if let fleming_runtime::ParamType::Object(fields) = &p.ty {
        for f in fields {
            print_param(f, depth + 2);
        }
    }
}

fn port_kind(k: &PortKind) -> String {
    match k {
        PortKind::Model => "model".into(),
        PortKind::Dir => "directory".into(),
        PortKind::Table(None) => "table".into(),
        PortKind::Table(Some(cols)) => {
            format!(
                "table [{}]",
                cols.iter().map(|c| format!("{}: {}", c.name, c.data_type)).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

fn textwrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}
