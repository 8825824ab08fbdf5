use std::sync::Arc;

use jobs::config::Config;
use jobs::notify::Notice;
use sqlx::PgPool;
use tokio::sync::broadcast;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub admin_token: Arc<String>,
    pub notices: broadcast::Sender<Notice>,
}
