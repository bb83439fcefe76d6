//! Running a plan: the stages whose key is known start as soon as a slot is free (a CPU
//! slot of `-j`, or the GPUs they declare), the others once the stages they wait for have
//! run; a failure stops what has not started (unless `--keep-going`), and Ctrl-C stops
//! everything.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use anyhow::anyhow;

use super::plan::{Plan, Step};
use super::{Executor, Launch, Outcome, Pending, RunOptions, RunReport, StageReport};
use crate::diagnostic::panic_message;

impl Executor<'_> {
    /// Runs the pipeline: plans it, then (unless `dry_run`, which returns the plan) runs
    /// the plan's stages.
    pub fn run(&self, opts: &RunOptions) -> anyhow::Result<RunReport> {
        let _store_lock = self.store.lock_store(false)?;
        let plan = self.plan(opts)?;
        let report = if opts.dry_run { plan.report(&self.pipeline.stages) } else { self.run_plan(plan, opts)? };
        self.close_memos();
        if opts.read_only && opts.dry_run {
            // Nothing to save.
        } else if let Err(e) = self.stat.save() {
            self.log(&format!("warning: cannot save the stat cache: {e}"));
        }
        self.progress.finish();
        Ok(report)
    }

    /// Runs the stages a plan has to run, in dependency order, independent ones at once.
    fn run_plan(&self, plan: Plan, opts: &RunOptions) -> anyhow::Result<RunReport> {
        let Plan { steps, selected, relevant } = plan;
        let stages = &self.pipeline.stages;
        let n = stages.len();
        let order = self.pipeline.topo_order();
        let mut reports: Vec<Option<StageReport>> = vec![None; n];
        let mut pending: Vec<Option<Pending>> = vec![None; n];
        let mut stopped: Option<String> = None;
        let stop_on = |report: &StageReport, stopped: &mut Option<String>| {
            if matches!(report.outcome, Outcome::Failed | Outcome::Cancelled) && !opts.keep_going && stopped.is_none() {
                *stopped = Some(if report.outcome == Outcome::Cancelled {
                    "cancelled".into()
                } else {
                    format!("stage `{}` failed (use --keep-going to run independent stages)", report.stage)
                });
            }
        };
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Done(r) => {
                    stop_on(&r, &mut stopped);
                    reports[i] = Some(r);
                }
                Step::Run(p) => pending[i] = Some(p),
                Step::AfterUpstream(_) => {}
            }
        }
        let mut started = vec![false; n];
        let mut running = 0usize;
        let mut cpu_running = 0usize;
        let mut on_cpu = vec![false; n];
        let jobs = opts.jobs.max(1);
        let (tx, rx) = mpsc::channel::<(usize, StageReport)>();
        let total_relevant = relevant.iter().filter(|r| **r).count();

        std::thread::scope(|scope| -> anyhow::Result<()> {
            loop {
                if self.cancel.is_cancelled() && stopped.is_none() {
                    stopped = Some("cancelled".into());
                }
                let mut progressed = true;
                while progressed {
                    progressed = false;
                    for &i in &order {
                        if reports[i].is_some() || started[i] {
                            continue;
                        }
                        let stage = &stages[i];
                        if stage.upstream.iter().any(|&u| reports[u].is_none()) {
                            continue;
                        }
                        if pending[i].is_none() {
                            // Planned to wait for its upstream, which has now run.
                            match self.step(i, &reports, &selected, &relevant, opts) {
                                Step::Run(p) => pending[i] = Some(p),
                                Step::Done(r) | Step::AfterUpstream(r) => {
                                    stop_on(&r, &mut stopped);
                                    reports[i] = Some(r);
                                    progressed = true;
                                    continue;
                                }
                            }
                        }
                        let Some(p) = pending[i].clone() else { continue };
                        if let Some(why) = &stopped {
                            let mut r = StageReport::new(stage, Outcome::Skipped, format!("not started: {why}"));
                            r.key = Some(p.key);
                            r.warnings = p.warnings.clone();
                            reports[i] = Some(r);
                            progressed = true;
                            continue;
                        }
                        // Every process of a cluster run takes up its dataflow stages one at
                        // a time, in the same order, so that they meet in each.
                        if self.cluster_of(stage).is_some()
                            && order
                                .iter()
                                .take_while(|&&j| j != i)
                                .any(|&j| relevant[j] && reports[j].is_none() && self.cluster_of(&stages[j]).is_some())
                        {
                            continue;
                        }
                        // A stage holding GPUs waits for its devices, not for a CPU slot.
                        let on_gpus = stage.resources.gpu > 0 && self.gpus().total() > 0;
                        if on_gpus || cpu_running < jobs {
                            let gpus = match self.gpus().try_acquire(stage.resources.gpu as usize) {
                                Ok(Some(gpus)) => gpus,
                                Ok(None) => continue,
                                Err(e) => {
                                    let mut r = StageReport::new(stage, Outcome::Failed, "cannot be scheduled");
                                    r.key = Some(p.key);
                                    r.error = Some(format!("{e:#}"));
                                    reports[i] = Some(r);
                                    if !opts.keep_going && stopped.is_none() {
                                        stopped = Some(format!("stage `{}` failed", stage.name));
                                    }
                                    progressed = true;
                                    continue;
                                }
                            };
                            started[i] = true;
                            running += 1;
                            on_cpu[i] = !on_gpus;
                            cpu_running += usize::from(!on_gpus);
                            let tx = tx.clone();
                            let launch = Launch {
                                upstream: stage.upstream.iter().map(|&u| reports[u].clone()).collect(),
                                threads: stage.resources.threads.map(|t| t as usize).unwrap_or(opts.workers).max(1),
                                gpus,
                            };
                            let this = &*self;
                            let skip_checks = opts.skip_checks;
                            scope.spawn(move || {
                                // The operator's own panics are caught where it runs; this
                                // catches the rest (a bug in the runtime), which would
                                // otherwise leave the loop below waiting for the report.
                                let run = || this.execute(i, p, &launch, skip_checks);
                                let report = catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
                                    let mut r = StageReport::new(&stages[i], Outcome::Failed, "internal error");
                                    r.error = Some(format!(
                                        "fleming panicked running the stage: {}",
                                        panic_message(panic.as_ref())
                                    ));
                                    r
                                });
                                this.gpus().release(launch.gpus);
                                let _ = tx.send((i, report));
                            });
                        }
                    }
                }
                let done = reports.iter().zip(&relevant).filter(|(r, rel)| **rel && r.is_some()).count();
                self.progress.overall(done, total_relevant);
                if running == 0 {
                    break;
                }
                let (i, report) = rx.recv().map_err(|_| anyhow!("a stage thread vanished"))?;
                running -= 1;
                cpu_running -= usize::from(on_cpu[i]);
                stop_on(&report, &mut stopped);
                reports[i] = Some(report);
            }
            Ok(())
        })?;
        let stages = reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| StageReport::new(&stages[i], Outcome::Skipped, "not started")))
            .collect();
        Ok(RunReport { stages, cancelled: self.cancel.is_cancelled() })
    }
}
