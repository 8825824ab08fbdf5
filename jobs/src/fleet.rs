//! Which workers are alive and what they reach, as this process last read it. Claims and
//! starts consult the fleet on every op; reading `worker_processes` each time put a
//! statement per op on a table every worker heartbeats into, so the view is read at most
//! once per [`FRESH_FOR`] and shared. A stale answer only steers an op to the wrong worker
//! for that long, and the claim's exact path re-checks the database before it gives an op
//! away (`ops::claim`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::Result;
use crate::store::worker_processes;

/// How long one read of the fleet is trusted.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The live workers and the backends each advertises.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub workers: Vec<(String, Vec<String>)>,
    /// The Docker engines each live worker serves.
    pub engines: Vec<(String, Vec<String>)>,
}

impl Snapshot {
    /// `None` when no worker is alive; otherwise whether any live worker reaches a backend.
    pub fn any_live_backend(&self) -> Option<bool> {
        if self.workers.is_empty() { None } else { Some(self.workers.iter().any(|(_, b)| !b.is_empty())) }
    }

    /// Whether a live worker other than `me` serves a Docker engine other than `mine`: only
    /// then can a new workspace go elsewhere to spread the load.
    pub fn other_engines_live(&self, me: &str, mine: &str) -> bool {
        self.engines.iter().any(|(id, e)| id != me && e.iter().any(|e| e != mine))
    }

    /// Reads the live workers from the table.
    pub async fn read(pool: &PgPool) -> Result<Snapshot> {
        let rows = worker_processes::live_with_engines(pool).await?;
        let (workers, engines) = rows.into_iter().map(|(id, b, e)| ((id.clone(), b), (id, e))).unzip();
        Ok(Snapshot { workers, engines })
    }

    /// The backends advertised by live workers other than `me`.
    pub fn others_backends(&self, me: &str) -> Vec<String> {
        let mut out: Vec<String> =
            self.workers.iter().filter(|(id, _)| id != me).flat_map(|(_, b)| b.iter().cloned()).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A cached [`Snapshot`], refreshed on demand when older than [`FRESH_FOR`].
pub struct Fleet {
    pool: PgPool,
    cached: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl Fleet {
    pub fn new(pool: PgPool) -> Fleet {
        Fleet { pool, cached: Mutex::new(None) }
    }

    pub async fn snapshot(&self) -> Result<Arc<Snapshot>> {
        // Held across the read, so concurrent ops wait for one read instead of each making one.
        let mut cached = self.cached.lock().await;
        if let Some((at, snap)) = cached.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(snap.clone());
        }
        let snap = Arc::new(Snapshot::read(&self.pool).await?);
        *cached = Some((Instant::now(), snap.clone()));
        Ok(snap)
    }
}
