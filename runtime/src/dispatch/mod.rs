//! Running stages in a worker process. The protocol and the worker's side of it live in
//! [`fleming_dispatch`] (re-exported here, so the torch worker builds without the
//! runtime); this module adds fleming's side: finding the worker, assigning devices,
//! running a job and streaming its events ([`launcher`]).

pub use fleming_dispatch::*;

pub mod launcher;
