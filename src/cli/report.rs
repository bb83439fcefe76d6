//! `fleming report`: the pipeline as one self-contained HTML file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use fleming_runtime::op::Registry;

use super::{Cli, load_pipeline, open_store};

/// Arguments of `fleming report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Where to write the page.
    #[arg(short, long, default_value = "report.html")]
    pub output: PathBuf,
}

/// `fleming report`: writes the page (atomically: a reader never sees half of it).
pub fn report(cli: &Cli, args: &ReportArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let pipeline = match load_pipeline(&args.pipeline, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store = open_store(cli, &pipeline)?;
    let view = crate::report::collect(&pipeline, &store)?;
    let page = crate::report::render(&view);
    let dir = match args.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name =
        args.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "report.html".into());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, page.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.output).with_context(|| format!("writing {}", args.output.display()))?;
    if !cli.quiet {
        println!(
            "{}: {} stages, {} curve sets, {} evaluations ({} bytes)",
            args.output.display(),
            view.stages.len(),
            view.curves.len(),
            view.evaluations.len(),
            page.len()
        );
    }
    Ok(0)
}
