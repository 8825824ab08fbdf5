//! The worker's `GET /metrics`, on `WORKER_METRICS_ADDR` when it is set (no listener
//! otherwise, and no recorder: every metric call is then a no-op).

use std::net::SocketAddr;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use jobs::metrics::Handle;
use tokio::sync::watch;

pub const ADDR_VAR: &str = "WORKER_METRICS_ADDR";

/// The address to serve on; `None` when the variable is unset or empty.
pub fn addr_from_env() -> Result<Option<SocketAddr>, String> {
    match std::env::var(ADDR_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{ADDR_VAR} is not valid UTF-8")),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => {
            v.trim().parse().map(Some).map_err(|_| format!("{ADDR_VAR}={v:?} is not host:port (e.g. 127.0.0.1:9100)"))
        }
    }
}

/// Installs the recorder and binds the listener, so a port in use stops the worker at
/// start instead of leaving it unscraped; the returned future serves until `stop`.
pub async fn start(
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> jobs::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let handle = jobs::metrics::install()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| jobs::Error::Config(format!("cannot listen on {ADDR_VAR}={addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| jobs::Error::Internal(format!("metrics socket: {e}")))?;
    tracing::info!("metrics listening on http://{bound}");
    Ok(serve(listener, handle, stop))
}

async fn serve(listener: tokio::net::TcpListener, handle: Handle, stop: watch::Receiver<bool>) {
    let upkeep = tokio::spawn(jobs::metrics::keep_up(handle.clone()));
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()) }
        }),
    );
    let stopped = async move {
        let _ = crate::runners::stopped(stop).await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
    upkeep.abort();
}
