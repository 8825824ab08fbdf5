use crate::backend::BackendError;

/// The one error type of the `jobs` crate. The api maps it to HTTP in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A client asked for something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but the current state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// The request itself is invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A required capability (a backend) is not configured.
    #[error("{0}")]
    Unavailable(String),
    /// A configuration variable is missing or malformed.
    #[error("configuration: {0}")]
    Config(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("apalis: {0}")]
    Apalis(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
