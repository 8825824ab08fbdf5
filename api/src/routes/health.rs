use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::state::AppState;

pub async fn health(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    jobs::store::ping(&state.pool).await?;
    Ok(Json(json!({"status": "ok"})))
}
