//! The fleming runtime: pipeline files (spec, validation with positioned errors), the
//! operator contract ([`op::Operator`], [`op::OpSpec`], [`context::OpContext`]), stage keys,
//! the executor (caching, early cutoff, locking, parallel stages, cancellation), dispatch
//! of GPU stages to a worker process, runs spread over several processes ([`cluster`]),
//! and the operator test harness.
//!
//! The runtime knows no specific operator: an operators crate provides a
//! [`op::Registry`].

pub mod cancel;
pub mod checks;
pub mod cluster;
pub mod context;
pub mod diagnostic;
pub mod dispatch;
pub mod executor;
pub mod harness;
pub mod keys;
pub mod lineage;
pub mod live;
pub mod maintenance;
pub mod op;
pub mod optest;
pub mod params;
pub mod progress;
pub mod spec;
pub mod state;

pub use cancel::CancelToken;
pub use context::OpContext;
pub use diagnostic::SpecErrors;
pub use harness::Harness;
pub use op::{OpSpec, Operator, Outputs, ParamSpec, ParamType, PortSpec, Registry};
pub use spec::Pipeline;

/// Version of fleming recorded in manifests.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
