use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`: the database answered.
    status: &'static str,
}

/// Open, for load balancers: 200 when the database answers.
#[utoipa::path(get, path = "/health", tag = "meta", security(()),
    responses((status = 200, description = "The api and its database are up", body = Health)))]
pub async fn health(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    jobs::store::ping(&state.pool).await?;
    Ok(Json(Health { status: "ok" }))
}
