//! `fleming checks`: the latest result of every data check of a pipeline.

use std::path::PathBuf;

use clap::Args;
use fleming_runtime::checks::{CheckResult, CheckStatus, Severity};
use fleming_runtime::keys::canonical_json;
use fleming_runtime::op::Registry;
use fleming_runtime::state::StageRef;

use super::{Cli, EXIT_FAILED, EXIT_INVALID, load_pipeline, open_store};

/// Arguments of `fleming checks`.
#[derive(Args, Debug)]
pub struct ChecksArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Only this stage.
    pub stage: Option<String>,
}

/// One line describing a check result.
pub fn check_line(c: &CheckResult) -> String {
    let sev = match c.severity {
        Severity::Error => "error",
        Severity::Warn => "warn",
    };
    match c.status {
        CheckStatus::Passed => format!("✓ check `{}` passed", c.name),
        CheckStatus::Failed => format!(
            "✗ check `{}` ({sev}) FAILED: {} failing row(s){}",
            c.name,
            c.failing_rows,
            c.sample.first().map(|r| format!(", e.g. {}", canonical_json(r))).unwrap_or_default()
        ),
        CheckStatus::Error => {
            format!("✗ check `{}` ({sev}) could not run: {}", c.name, c.message.as_deref().unwrap_or("unknown error"))
        }
    }
}

/// Runs `fleming checks`: exit 1 if an `error` check is failing.
pub fn run(cli: &Cli, args: &ChecksArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let pipeline = match load_pipeline(&args.pipeline, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if let Some(s) = &args.stage
        && pipeline.stage_index(s).is_none()
    {
        eprintln!("error: no stage `{s}` in {}", args.pipeline.display());
        return Ok(EXIT_INVALID);
    }
    let store = open_store(cli, &pipeline)?;
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut details = Vec::new();
    let mut blocking = false;
    for stage in &pipeline.stages {
        if args.stage.as_ref().is_some_and(|s| s != &stage.name) {
            continue;
        }
        let current = StageRef::load(&store, &pipeline.name, &stage.name)?;
        for check in &stage.checks {
            let sev = match check.severity {
                Severity::Error => "error",
                Severity::Warn => "warn",
            };
            let result = match &current {
                Some(r) => CheckResult::load(&store, &r.key, check)?,
                None => None,
            };
            match result {
                Some(r) => {
                    let status = match r.status {
                        CheckStatus::Passed => "passed",
                        CheckStatus::Failed => "FAILED",
                        CheckStatus::Error => "ERROR",
                    };
                    blocking |= r.blocks();
                    rows.push([
                        stage.name.clone(),
                        check.name.clone(),
                        sev.into(),
                        status.into(),
                        r.failing_rows.to_string(),
                        r.evaluated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]);
                    if r.status != CheckStatus::Passed {
                        details.push(format!("{}.{}: {}", stage.name, check.name, check_line(&r)));
                        for row in &r.sample {
                            details.push(format!("    {}", canonical_json(row)));
                        }
                    }
                }
                None => rows.push([
                    stage.name.clone(),
                    check.name.clone(),
                    sev.into(),
                    "not evaluated".into(),
                    "-".into(),
                    "-".into(),
                ]),
            }
        }
    }
    if rows.is_empty() {
        println!("no checks declared");
        return Ok(0);
    }
    let header = ["stage", "check", "severity", "status", "failing", "evaluated"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: [&str; 6]| {
        cols.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    println!("{}", line(header));
    for r in &rows {
        println!("{}", line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    for d in details {
        println!("{d}");
    }
    Ok(if blocking { EXIT_FAILED } else { 0 })
}
