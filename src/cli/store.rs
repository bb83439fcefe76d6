//! `fleming gc` and `fleming verify`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use fleming_artifacts::Store;
use fleming_runtime::maintenance::{GcOptions, gc, verify};
use fleming_runtime::op::Registry;

use super::{Cli, EXIT_FAILED, load_pipeline, open_store, store_at};

/// Arguments of `fleming gc` and `fleming verify`.
#[derive(Args, Debug)]
pub struct StoreArgs {
    /// A pipeline file (its store is the one beside it), unless --store is given.
    pub pipeline: Option<PathBuf>,
    /// gc: runs kept per stage besides the current one.
    #[arg(long, default_value_t = 3)]
    pub keep_runs: usize,
    /// gc: keep memo entries younger than this many hours even if no current stage used
    /// them (the finished records of an interrupted run).
    #[arg(long, default_value_t = 24)]
    pub memo_grace_hours: u64,
    /// gc: only show what would be freed.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// gc on a remote store: keep unreferenced objects younger than this many minutes (a
    /// run on another machine uploads its outputs before the entry that refers to them).
    #[arg(long, default_value_t = 60)]
    pub remote_grace_minutes: u64,
}

fn the_store(cli: &Cli, args: &StoreArgs, registry: &dyn Registry) -> anyhow::Result<Result<Store, i32>> {
    match &args.pipeline {
        Some(p) => match load_pipeline(p, registry) {
            Ok(p) => Ok(Ok(open_store(cli, &p)?)),
            Err(code) => Ok(Err(code)),
        },
        None => Ok(Ok(store_at(cli.store.as_deref(), &PathBuf::from(".fleming"))?)),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// `fleming gc`.
pub fn run_gc(cli: &Cli, args: &StoreArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let store = match the_store(cli, args, registry)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let opts = GcOptions {
        keep_runs: args.keep_runs,
        dry_run: args.dry_run,
        memo_grace: Duration::from_secs(args.memo_grace_hours * 3600),
        remote_grace: Duration::from_secs(args.remote_grace_minutes * 60),
    };
    let r = gc(&store, &opts)?;
    let verb = if args.dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} objects ({}), {} cache entries, {} manifests, {} check results, {} work dirs, {} final checkpoints ({}), {} memo entries ({}); kept {} objects and {} memo entries",
        r.objects,
        mib(r.object_bytes),
        r.cache_entries,
        r.manifests,
        r.check_results,
        r.work_dirs,
        r.checkpoints,
        mib(r.checkpoint_bytes),
        r.memo_entries,
        mib(r.memo_bytes),
        r.objects_kept,
        r.memo_entries_kept
    );
    if store.remote().is_some() {
        println!("{verb} {} objects ({}) from {}", r.remote_objects, mib(r.remote_object_bytes), store.location());
    }
    Ok(0)
}

/// `fleming verify`: exit 1 if anything was corrupt.
pub fn run_verify(cli: &Cli, args: &StoreArgs, registry: &dyn Registry) -> anyhow::Result<i32> {
    let store = match the_store(cli, args, registry)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let r = verify(&store)?;
    for (what, why) in &r.corrupt {
        println!("CORRUPT {what}: {why}");
    }
    println!(
        "checked {} objects and {} memo entries: {} corrupt{}",
        r.objects,
        r.memo_entries,
        r.corrupt.len(),
        if r.torn_tails > 0 {
            format!(" ({} memo segments end in a torn write from a crash; harmless)", r.torn_tails)
        } else {
            String::new()
        }
    );
    if !r.corrupt.is_empty() {
        println!("quarantined objects will be recomputed by the next run");
    }
    Ok(if r.corrupt.is_empty() { 0 } else { EXIT_FAILED })
}
