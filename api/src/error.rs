use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sqlx::postgres::{PgDatabaseError, PgSeverity};

/// What a client is told to wait before retrying while the database is unreachable.
const DATABASE_RETRY_AFTER: Duration = Duration::from_secs(2);
const DATABASE_UNAVAILABLE: &str = "the database is unavailable; retry shortly";

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
    /// A 400 with extra fields beside `error`.
    #[error("{message}")]
    BadRequestWith { message: String, extra: Value },
    #[error("{0}")]
    NotFound(String),
    /// 410: what the request points at existed for it once and is gone (a purged cursor).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Conflict(String),
    /// A 409 with extra fields beside `error`.
    #[error("{message}")]
    ConflictWith { message: String, extra: Value },
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A 413 with extra fields beside `error`.
    #[error("{message}")]
    PayloadTooLargeWith { message: String, extra: Value },
    #[error("{0}")]
    Unavailable(String),
    /// The database cannot be reached for now: a 503 with `Retry-After`, not a 500, since
    /// the request itself is fine and will succeed once the database is back.
    #[error("{}", DATABASE_UNAVAILABLE)]
    DatabaseUnavailable(#[source] jobs::Error),
    /// A 429 with `Retry-After`.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: Duration },
    #[error(transparent)]
    Internal(jobs::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The body of every error answer. Some errors add fields beside `error` (a 409's
/// `children`, a 400's `allowed`): the routes that can give them say so.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What is wrong, for a person to read.
    pub error: String,
}

fn plain(message: String) -> Value {
    json!(ErrorBody { error: message })
}

impl From<jobs::Error> for ApiError {
    fn from(e: jobs::Error) -> Self {
        use jobs::Error as E;
        match e {
            E::NotFound { .. } => ApiError::NotFound(e.to_string()),
            E::Missing(m) => ApiError::NotFound(m),
            E::Conflict(m) => ApiError::Conflict(m),
            E::Unauthorized(m) => ApiError::Unauthorized(m),
            E::Invalid { .. } => ApiError::BadRequest(e.to_string()),
            E::NotExternal { id, ref runtime } => ApiError::BadRequestWith {
                extra: json!({"runtime": runtime,
                    "hint": format!("restart it (POST /workspaces/{id}/restart) for new credentials")}),
                message: e.to_string(),
            },
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
            jobs::Error::Db(ref db) if database_unavailable(db) => ApiError::DatabaseUnavailable(e),
            other => ApiError::Internal(other),
        }
    }
}

/// Errors that say the database cannot be reached now, rather than that the request or the
/// server is wrong: no connection to be had in time, a broken or refused session, a server
/// shutting down, starting up or full. FATAL is the severity of every error that ends (or
/// refuses) a session, whatever its code, such as a database not accepting connections.
fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
                || db
                    .try_downcast_ref::<PgDatabaseError>()
                    .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic))
        }
        _ => false,
    }
}

fn with_extra(message: String, extra: Value) -> Value {
    let mut body = plain(message);
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    body
}

/// `Retry-After` takes whole seconds: rounded up, and at least one.
fn with_retry_after(status: StatusCode, body: Value, wait: Duration) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64));
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, plain(m)),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, plain(m)),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, plain(m)),
            ApiError::BadRequestWith { message, extra } => (StatusCode::BAD_REQUEST, with_extra(message, extra)),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, plain(m)),
            ApiError::Gone(m) => (StatusCode::GONE, plain(m)),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, plain(m)),
            ApiError::ConflictWith { message, extra } => (StatusCode::CONFLICT, with_extra(message, extra)),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, plain(m)),
            ApiError::PayloadTooLargeWith { message, extra } => {
                (StatusCode::PAYLOAD_TOO_LARGE, with_extra(message, extra))
            }
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, plain(m)),
            ApiError::DatabaseUnavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                let body = plain(DATABASE_UNAVAILABLE.into());
                return with_retry_after(StatusCode::SERVICE_UNAVAILABLE, body, DATABASE_RETRY_AFTER);
            }
            ApiError::TooManyRequests { message, retry_after } => {
                return with_retry_after(StatusCode::TOO_MANY_REQUESTS, plain(message), retry_after);
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, plain("internal error; see the server log".into()))
            }
        };
        (status, Json(body)).into_response()
    }
}
