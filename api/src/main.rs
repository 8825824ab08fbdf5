//! The api process: validates, authorises, persists and enqueues. It never calls Docker,
//! EC2 or an agent; workers do.

mod auth;
mod error;
mod extract;
mod routes;
mod state;
mod wait;

use std::process::ExitCode;
use std::sync::Arc;

use jobs::config::Config;
use state::AppState;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("api: {e}");
            return ExitCode::from(2);
        }
    };
    jobs::telemetry::init(config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "api stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> jobs::Result<()> {
    let admin_token = match &config.admin_token {
        Some(t) => t.clone(),
        None => {
            let t = jobs::tokens::generate().plaintext;
            // There is no safe default for the admin credential: make one and say so once.
            tracing::warn!(admin_token = %t, "ADMIN_TOKEN is not set; generated one for this run");
            t
        }
    };
    let pool = jobs::db::connect(&config.database_url, config.database_max_connections).await?;
    jobs::db::migrate(&pool).await?;
    let notices = jobs::notify::spawn_listener(pool.clone());
    let state = AppState { pool, config: Arc::new(config.clone()), admin_token: Arc::new(admin_token), notices };
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|e| jobs::Error::Config(format!("cannot listen on API_ADDR={}: {e}", config.api_addr)))?;
    let addr = listener.local_addr().map_err(|e| jobs::Error::Internal(format!("listening socket: {e}")))?;
    tracing::info!("api listening on http://{addr}");
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(jobs::shutdown::signal())
        .await
        .map_err(|e| jobs::Error::Internal(format!("http server: {e}")))?;
    Ok(())
}
