//! `fleming lineage`: where a stage's outputs (or one record) came from, or went.

use std::path::PathBuf;

use clap::Args;
use fleming_runtime::lineage::{
    downstream, record_downstream, record_upstream, render_records, render_tree, stage_of_artifact, upstream,
};
use fleming_runtime::op::Registry;

use super::{Cli, EXIT_INVALID, load_pipeline, open_store};

/// Arguments of `fleming lineage`.
#[derive(Args, Debug)]
pub struct LineageArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// A stage, `stage.port`, or an artifact digest (a hex prefix of at least 6).
    pub target: String,
    /// Downstream instead of upstream.
    #[arg(long)]
    pub down: bool,
    /// Follow one record (by id) through the `parents` columns.
    #[arg(long, value_name = "ID")]
    pub record: Option<String>,
    /// JSON instead of a tree.
    #[arg(long)]
    pub json: bool,
}

/// `fleming lineage`.
pub fn lineage(cli: &Cli, args: &LineageArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let p = match load_pipeline(&args.pipeline, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store = open_store(cli, &p)?;
    let (stage_name, port) = match args.target.split_once('.') {
        Some((s, port)) => (s.to_string(), Some(port.to_string())),
        None => (args.target.clone(), None),
    };
    let (index, port) = match p.stage_index(&stage_name) {
        Some(i) => (i, port),
        None => match stage_of_artifact(&p, &store, &args.target)? {
            Some((i, port)) => (i, Some(port)),
            None => {
                eprintln!(
                    "error: `{}` is neither a stage nor the digest of a current output ({})",
                    args.target,
                    fleming_runtime::diagnostic::suggestion(&stage_name, p.stages.iter().map(|s| s.name.as_str()))
                );
                return Ok(EXIT_INVALID);
            }
        },
    };
    if let Some(id) = &args.record {
        let chain = if args.down {
            record_downstream(&p, &store, index, port.as_deref(), id)?
        } else {
            record_upstream(&p, &store, index, port.as_deref(), id)?
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&chain)?);
        } else {
            print!("{}", render_records(&chain, args.down));
        }
        return Ok(0);
    }
    let tree = if args.down { downstream(&p, &store, index)? } else { upstream(&p, &store, index)? };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tree)?);
    } else {
        print!("{}", render_tree(&tree, args.down));
    }
    Ok(0)
}
