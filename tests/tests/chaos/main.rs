//! The chaos suites, one test binary apart from `suite` (they take minutes, and each runs its
//! own PostgreSQL cluster, which it restarts mid-run):
//!
//! - `docker`: the api and three workers on the real Docker engine; workspaces receive random
//!   lifecycle verbs while workers are SIGKILLed or SIGSTOPped and PostgreSQL restarts; then
//!   every op must be final, every workspace must have the containers its status says, and
//!   the engine's event stream must show no op creating more containers than its attempts;
//! - `ec2`: the same against the EC2 emulator on a smaller scale, with provisions paused
//!   between starting an instance and recording it, so rescues happen mid-provision: every
//!   op must own at most one instance.
//!
//! The harness is `tests::chaos`. Knobs (`CHAOS_SECONDS`, `CHAOS_WORKSPACES`, `CHAOS_VERBS`,
//! `CHAOS_EC2_*`, `CHAOS_SEED`, ...) are listed in `docs/chaos.md`. Run with
//! `./dev/test --test chaos -- --nocapture` to see the figures.

mod docker;
mod ec2;
