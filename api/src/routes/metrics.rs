//! `GET /metrics`, open like `/health` so a scraper needs no token: it exposes counts,
//! route templates and durations, never an id, a name or a credential.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

#[utoipa::path(get, path = "/metrics", tag = "meta", security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
/// The gauges are sampled now, with two aggregate queries, so every scrape sees the
/// database as it is and an idle api does no periodic work. A database outage is when the
/// counters matter most: they are served anyway, beside the gauges' last samples.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Err(e) = jobs::metrics::sample(&state.pool).await {
        tracing::warn!(error = %e, "could not sample the queue and workspace gauges; serving their last values");
    }
    jobs::metrics::long_polls_sample(state.inbox_readers.waiting());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// Counts and times every request under its route template; requests no route matched
/// share one label, so a scan of random paths cannot create series.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    let route = route.as_deref().unwrap_or("unmatched");
    jobs::metrics::http_request(route, resp.status().as_u16(), started.elapsed());
    resp
}
