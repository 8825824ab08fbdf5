//! The shared library of workspace-server: the domain (workspaces and their status
//! machine), storage, the durable lifecycle queue wrapped around apalis, the job kinds and
//! the backends that run workspaces. Both the `api` and the `worker` binaries are thin
//! shells around this crate.

pub mod admin;
pub mod backend;
pub mod config;
pub mod db;
pub mod delegations;
pub mod domain;
pub mod engines;
pub mod error;
pub mod events;
pub mod fleet;
pub mod inbox;
pub mod kinds;
pub mod lifecycle;
pub mod long_poll;
pub mod memories;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod org_import;
pub mod queue;
pub mod redact;
pub mod registry;
pub mod retry;
pub mod shutdown;
pub mod store;
pub mod sweeps;
pub mod telemetry;
pub mod tokens;
pub mod transition;
pub mod uploads;

pub use error::{Error, Result};
