//! The operators this worker runs, one file each.
//!
//! An operator's parameters are declared once, in `fleming_operators` (names, types,
//! defaults, docs: what `fleming ops` prints and validation checks). The runtime hands the
//! worker the *resolved* parameters — every declared name, defaults filled in — and each
//! operator here deserialises them into its own `Params` type with
//! [`WorkerSession::params`]. That type has no defaults and refuses unknown names, so a
//! declaration and its worker cannot drift apart silently. Adding an operator: a file
//! with a type implementing [`WorkerOp`], and a line in [`ALL`].

pub mod common;
pub mod grpo_stage1;
pub mod grpo_stage2;
pub mod sft;

use fleming_dispatch::WorkerSession;
use serde_json::{Map, Value};

/// One operator the worker can run.
pub trait WorkerOp: Sync {
    /// Its name, as declared in `fleming_operators`.
    fn name(&self) -> &'static str;

    /// Runs the job: reads the inputs, writes every declared output into the job's output
    /// directory, reports progress and metrics. Returns the summary metrics for the run
    /// manifest; the caller sends `done`.
    fn run(&self, session: &WorkerSession) -> anyhow::Result<Map<String, Value>>;
}

/// Every operator of the worker.
pub const ALL: &[&dyn WorkerOp] = &[&sft::Sft, &grpo_stage1::GrpoStage1, &grpo_stage2::GrpoStage2];

/// The operator called `name`.
pub fn find(name: &str) -> Option<&'static dyn WorkerOp> {
    ALL.iter().copied().find(|op| op.name() == name)
}
