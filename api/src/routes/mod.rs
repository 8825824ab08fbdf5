pub mod activity;
pub mod delegations;
pub mod engines;
pub mod events;
pub mod external;
pub mod health;
pub mod memories;
pub mod ops;
pub mod org;
pub mod org_tokens;
pub mod registry;
pub mod workspaces;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;

/// Bodies beyond this are refused with 413 before they are read.
const BODY_LIMIT: usize = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/workspaces", post(workspaces::create).get(workspaces::list))
        .route("/workspaces/{id}", get(workspaces::get).patch(workspaces::patch).delete(workspaces::delete))
        .route("/workspaces/{id}/restart", post(workspaces::restart))
        .route("/workspaces/{id}/pause", post(workspaces::pause))
        .route("/workspaces/{id}/resume", post(workspaces::resume))
        .route("/workspaces/{id}/collapse", post(workspaces::collapse))
        .route("/workspaces/{id}/token", post(external::rotate))
        .route("/workspaces/{id}/external/rotate", post(external::rotate))
        .route("/workspaces/{id}/external/connection", get(external::connection))
        .route("/workspaces/{id}/ops", get(ops::list_for_workspace))
        .route("/ops/{id}", get(ops::get))
        .route("/workspaces/{id}/activity", get(activity::list).post(activity::record))
        .route("/workspaces/{id}/a2a", post(activity::send))
        .route("/workspaces/{id}/delegate", post(delegations::delegate))
        .route("/workspaces/{id}/delegations", get(delegations::list))
        .route("/workspaces/{id}/delegations/record", post(delegations::record))
        .route("/workspaces/{id}/delegations/{delegation_id}/update", post(delegations::update))
        .route("/workspaces/{id}/delegations/{delegation_id}/heartbeat", post(delegations::heartbeat))
        .route("/workspaces/{id}/memories", post(memories::commit).get(memories::search))
        .route("/workspaces/{id}/memories/{memory_id}", axum::routing::patch(memories::edit).delete(memories::delete))
        .route("/admin/delegations", get(delegations::admin_list))
        .route("/admin/delegations/stats", get(delegations::admin_stats))
        .route("/admin/engines/{engine_id}/retire", post(engines::retire))
        .route("/registry/register", post(registry::register))
        .route("/registry/heartbeat", post(registry::heartbeat))
        .route("/org/import", post(org::import))
        .route("/org/tokens", post(org_tokens::mint).get(org_tokens::list))
        .route("/org/tokens/{id}", axum::routing::delete(org_tokens::revoke))
        .route("/events", get(events::list))
        .route("/ws", get(events::websocket))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({"error": "method not allowed"})))
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &axum::extract::Request| {
            // The path without the query: a query can carry a credential (`/ws?token=`),
            // and spans end up in the logs.
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state)
}
