//! What operators see and do to the queue: every job (lifecycle ops, sweep runs, pushed
//! inbox items) in one listing, each job's attempts and apalis task, retry and cancel,
//! per-kind queue statistics and pauses, and the worker processes.

pub mod control;
pub mod jobs;
pub mod queues;
pub mod throughput;
pub mod workers;

pub use jobs::{JobKind, JobRef, JobState};
