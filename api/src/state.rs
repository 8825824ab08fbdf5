use std::net::IpAddr;
use std::sync::Arc;

use jobs::config::Config;
use jobs::fleet::Fleet;
use jobs::inbox::Appends;
use jobs::lifecycle::Creates;
use jobs::long_poll::Readers;
use jobs::notify::Notice;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};

use crate::rate_limit::RateLimiter;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub admin_token: Arc<String>,
    pub notices: broadcast::Sender<Notice>,
    /// Register and heartbeat, per workspace.
    pub registry_rate: Arc<RateLimiter>,
    /// Org token mints, per client address.
    pub org_token_rate: Arc<RateLimiter<IpAddr>>,
    /// The live workers, read at most once a second while some reach a backend.
    pub fleet: Arc<Fleet>,
    /// Renders this process's metrics for `GET /metrics`.
    pub metrics: jobs::metrics::Handle,
    /// `POST /workspaces`, coalesced into rounds.
    pub creates: Arc<Creates>,
    /// Activity rows and inbox items, coalesced into rounds.
    pub appends: Arc<Appends>,
    /// The long polls waiting on inbox appends, by workspace.
    pub inbox_readers: Arc<Readers>,
    /// Becomes true when the process is asked to stop: long polls answer at once, so the
    /// graceful shutdown does not wait out their `wait`.
    pub stopping: watch::Receiver<bool>,
}
