use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The api's one error type, mapped to HTTP here and nowhere else. Client mistakes are 4xx
/// with a message naming the problem; internal failures are logged and answered with a
/// generic 500 that leaks nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A 409 with extra fields beside `error`.
    #[error("{message}")]
    ConflictWith { message: String, extra: Value },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(jobs::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<jobs::Error> for ApiError {
    fn from(e: jobs::Error) -> Self {
        use jobs::Error as E;
        match e {
            E::NotFound { .. } => ApiError::NotFound(e.to_string()),
            E::Invalid { .. } => ApiError::BadRequest(e.to_string()),
            E::Transition { .. }
            | E::Paused { .. }
            | E::AlreadyPaused { .. }
            | E::NotPaused { .. }
            | E::AncestorPaused { .. } => ApiError::Conflict(e.to_string()),
            jobs::Error::Db(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("40P01" | "40001")) => {
                ApiError::Conflict(
                    "the request collided with a concurrent change to the same workspaces; retry it".into(),
                )
            }
            // Text Postgres cannot store (a NUL character, a bad escape) came from the client.
            jobs::Error::Db(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("22021" | "22P05")) => {
                ApiError::BadRequest(format!("the request holds text that cannot be stored: {}", db.message()))
            }
            other => ApiError::Internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error": m})),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, json!({"error": m})),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, json!({"error": m})),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, json!({"error": m})),
            ApiError::ConflictWith { message, extra } => {
                let mut body = json!({"error": message});
                if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
                    b.extend(extra);
                }
                (StatusCode::CONFLICT, body)
            }
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, json!({"error": m})),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, json!({"error": m})),
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "internal error; see the server log"}))
            }
        };
        (status, Json(body)).into_response()
    }
}
