//! The `fleming` command line: wires the operator registry into the runtime.
//!
//! `fleming` never links libtorch; GPU stages run in the `fleming-worker` process.

pub mod cli;
pub mod report;
pub mod ui;
