//! Staged chat uploads that are done: acked by their agent, or expired unfetched or unacked.
//! Deleted in bounded batches (their chunks go with them), so a large backlog never holds
//! locks for long.

use std::time::Duration;

use sqlx::PgPool;

use super::Report;
use crate::Result;
use crate::config::Env;
use crate::store::pending_uploads;

/// Files per delete statement; each may take up to 25 chunk rows with it.
const BATCH: i64 = 500;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `SWEEP_PENDING_UPLOADS_SECONDS`.
    pub every: Duration,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings> {
        Ok(Settings { every: env.secs("SWEEP_PENDING_UPLOADS_SECONDS", 3600)? })
    }
}

pub async fn run(pool: &PgPool) -> Result<Report> {
    let (files, batches) = super::retention::in_batches(BATCH, || pending_uploads::purge_done(pool, BATCH)).await?;
    Ok(Report::new(format!("deleted {files} staged upload(s) in {batches} batch(es)"), files > 0))
}
