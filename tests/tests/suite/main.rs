//! Every test of the project that needs more than one crate's unit tests, in one binary
//! (linking is most of a warm run on two cores, so one link instead of many):
//!
//! - `core`: the queue's invariants at the database level (sequencing, coalescing,
//!   supersession, lease fencing, redelivery, sweeps), with no process and no Docker;
//! - `docker_backend`, `ec2_backend`: each backend against the real Docker engine and the
//!   EC2 emulator;
//! - `transactions`: what a caller dropped mid-BEGIN leaves on a pooled connection;
//! - the rest: end to end, with real `api` and `worker` processes.
//!
//! Run them with `./dev/test`, which starts what they need.

mod admin;
mod admin_ui;
mod agents;
mod api_input;
mod core;
mod credentials;
mod docker_backend;
mod ec2;
mod ec2_backend;
mod engines;
mod faults;
mod hardening;
mod leaks;
mod lifecycle;
mod long_poll;
mod memories;
mod metrics;
mod openapi;
mod org_import;
mod org_tokens;
mod platform;
mod purge;
mod push_drain;
mod restart_options;
mod rounds;
mod transactions;
mod uploads;
mod wait_and_events;
