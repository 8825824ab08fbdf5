pub mod activity;
pub mod admin;
pub mod delegations;
pub mod engines;
pub mod events;
pub mod external;
pub mod health;
pub mod memories;
pub mod metrics;
pub mod ops;
pub mod org;
pub mod org_tokens;
pub mod registry;
pub mod ui;
pub mod uploads;
pub mod workspaces;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::routing::{get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::error::ApiError;
use crate::state::AppState;

/// Ties a request's log lines to the caller's view of it.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Bodies beyond this are refused with 413 before they are read.
const BODY_LIMIT: usize = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/workspaces", post(workspaces::create).get(workspaces::list))
        .route("/workspaces/{id}", get(workspaces::get).patch(workspaces::patch).delete(workspaces::delete))
        .route("/workspaces/{id}/restart", post(workspaces::restart))
        .route("/workspaces/{id}/pause", post(workspaces::pause))
        .route("/workspaces/{id}/resume", post(workspaces::resume))
        .route("/workspaces/{id}/collapse", post(workspaces::collapse))
        .route("/workspaces/{id}/token", post(external::rotate_token))
        .route("/workspaces/{id}/external/rotate", post(external::rotate))
        .route("/workspaces/{id}/external/connection", get(external::connection))
        .route("/workspaces/{id}/ops", get(ops::list_for_workspace))
        .route("/ops/{id}", get(ops::get))
        .route("/workspaces/{id}/activity", get(activity::list).post(activity::record))
        .route("/workspaces/{id}/a2a", post(activity::send))
        .route("/workspaces/{id}/chat/uploads", post(uploads::upload).layer(DefaultBodyLimit::max(uploads::BODY_LIMIT)))
        .route("/workspaces/{id}/pending-uploads/{file_id}/content", get(uploads::content))
        .route("/workspaces/{id}/pending-uploads/{file_id}/ack", post(uploads::ack))
        .route("/workspaces/{id}/delegate", post(delegations::delegate))
        .route("/workspaces/{id}/delegations", get(delegations::list))
        .route("/workspaces/{id}/delegations/record", post(delegations::record))
        .route("/workspaces/{id}/delegations/{delegation_id}/update", post(delegations::update))
        .route("/workspaces/{id}/delegations/{delegation_id}/heartbeat", post(delegations::heartbeat))
        .route("/workspaces/{id}/memories", post(memories::commit).get(memories::search))
        .route("/workspaces/{id}/memories/{memory_id}", axum::routing::patch(memories::edit).delete(memories::delete))
        .route("/admin/delegations", get(delegations::admin_list))
        .route("/admin/delegations/stats", get(delegations::admin_stats))
        .route("/admin/jobs", get(admin::list))
        .route("/admin/jobs/{id}", get(admin::get))
        .route("/admin/jobs/{id}/retry", post(admin::retry))
        .route("/admin/jobs/{id}/cancel", post(admin::cancel))
        .route("/admin/queues", get(admin::queues))
        .route("/admin/queues/{kind}/pause", post(admin::pause))
        .route("/admin/queues/{kind}/resume", post(admin::resume))
        .route("/admin/workers", get(admin::workers))
        .route("/admin/engines/{engine_id}/retire", post(engines::retire))
        .route("/registry/register", post(registry::register))
        .route("/registry/heartbeat", post(registry::heartbeat))
        .route("/org/import", post(org::import))
        .route("/org/tokens", post(org_tokens::mint).get(org_tokens::list))
        .route("/org/tokens/{id}", axum::routing::delete(org_tokens::revoke))
        .route("/events", get(events::list))
        .route("/ws", get(events::websocket))
        .merge(ui::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({"error": "method not allowed"})))
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &axum::extract::Request| {
            // The path without the query: a query can carry a credential (`/ws?token=`),
            // and spans end up in the logs. At INFO, so every line a handler logs carries
            // the route and the request id.
            let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str());
            let request_id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), route, path = %req.uri().path(), request_id)
        }))
        // Outermost: a request gets its id (unless the caller sent one) before it is
        // traced, and the response carries it back.
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
