//! The api process: validates, authorises, persists and enqueues. It never calls Docker,
//! EC2 or an agent; workers do.

mod auth;
mod error;
mod extract;
mod openapi;
mod rate_limit;
mod routes;
mod state;
mod wait;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use jobs::config::Config;
use rate_limit::RateLimiter;
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
    // There is no safe default for the operators' credential, and a generated one would
    // have to be shown somewhere: refuse to start instead. `./dev/up` makes one.
    let Some(admin_token) = config.admin_token.clone() else {
        eprintln!("api: ADMIN_TOKEN is not set; set it to the bearer token operators and the canvas will use");
        return ExitCode::from(2);
    };
    jobs::telemetry::init(config.log_format);
    match run(config, admin_token).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "api stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, admin_token: String) -> jobs::Result<()> {
    let pool = jobs::db::connect(&config.database_url, config.database_max_connections).await?;
    jobs::db::migrate(&pool).await?;
    let notices = jobs::notify::spawn_listener(pool.clone());
    let registry_rate = Arc::new(RateLimiter::new(config.api.registry_burst, config.api.registry_per_second));
    let org_token_rate = Arc::new(RateLimiter::per_hour("org token mints from", config.api.org_token_mints_per_hour));
    let fleet = Arc::new(jobs::fleet::Fleet::new(pool.clone()));
    let metrics = jobs::metrics::install()?;
    tokio::spawn(jobs::metrics::keep_up(metrics.clone()));
    let creates = Arc::new(jobs::lifecycle::Creates::spawn(pool.clone()));
    let appends = Arc::new(jobs::inbox::Appends::spawn(pool.clone()));
    let inbox_readers = jobs::long_poll::Readers::spawn(&notices);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let state = AppState {
        pool,
        config: Arc::new(config.clone()),
        admin_token: Arc::new(admin_token),
        notices,
        registry_rate,
        org_token_rate,
        fleet,
        metrics,
        creates,
        appends,
        inbox_readers,
        stopping,
    };
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|e| jobs::Error::Config(format!("cannot listen on API_ADDR={}: {e}", config.api_addr)))?;
    let addr = listener.local_addr().map_err(|e| jobs::Error::Internal(format!("listening socket: {e}")))?;
    tracing::info!("api listening on http://{addr}");
    // The client's address keys the org token mint limit.
    axum::serve(listener, routes::router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            jobs::shutdown::signal().await;
            let _ = stop.send(true);
        })
        .await
        .map_err(|e| jobs::Error::Internal(format!("http server: {e}")))?;
    Ok(())
}
