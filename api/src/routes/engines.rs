//! Docker engines, for operators: retiring one that is gone for good.

use axum::Json;
use axum::extract::{Path, State};
use jobs::engines::{self, Retired};

use crate::auth::Admin;
use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;

#[utoipa::path(post, path = "/admin/engines/{engine_id}/retire", tag = "admin",
    params(("engine_id" = String, Path, description = "The engine's `DOCKER_ENGINE_ID`")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "What retiring it settled (also on a repeat)", body = Retired),
        (status = 400, description = "The engine id is empty, too long or holds control characters", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
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
