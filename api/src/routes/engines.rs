//! Docker engines, for operators: retiring one that is gone for good.

use axum::Json;
use axum::extract::{Path, State};
use jobs::engines::{self, Retired};

use crate::auth::Admin;
use crate::error::ApiResult;
use crate::state::AppState;

/// `POST /admin/engines/:engine_id/retire`: settles every op and workspace waiting for the
/// engine (see `jobs::engines::retire`). Repeating it is harmless.
pub async fn retire(
    State(state): State<AppState>,
    admin: Admin,
    Path(engine_id): Path<String>,
) -> ApiResult<Json<Retired>> {
    let engine_id = engines::parse_engine_id(&engine_id)?;
    Ok(Json(engines::retire(&state.pool, &engine_id, &admin.label()).await?))
}
