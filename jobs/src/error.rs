use uuid::Uuid;

use crate::backend::BackendError;
use crate::domain::Status;

/// The one error type of the `jobs` crate; the api maps it to HTTP in one place.
///
/// Domain variants say what about the request or the current state forbids it, and map to
/// 4xx. Infrastructure variants are the server's own trouble and map to 500; in particular a
/// database error is never reported as "not found".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `what` is the kind of thing looked for: "workspace", "parent workspace", "op".
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: Uuid },
    /// A field of the request is invalid; `problem` completes a sentence about `field`.
    #[error("{field} {problem}")]
    Invalid { field: &'static str, problem: String },
    /// The status machine forbids the change.
    #[error("workspace {id} is {from} and cannot become {to}")]
    Transition { id: Uuid, from: Status, to: Status },
    #[error("workspace {id} is paused; resume it instead")]
    Paused { id: Uuid },
    #[error("workspace {id} is already paused")]
    AlreadyPaused { id: Uuid },
    #[error("workspace {id} is {status}, not paused")]
    NotPaused { id: Uuid, status: Status },
    #[error("ancestor workspace {name:?} ({id}) is paused; resume it first")]
    AncestorPaused { id: Uuid, name: String },

    /// Only external workspaces have connection details and rotatable credentials.
    #[error(
        "workspace {id} has runtime {runtime:?}, not external: the platform runs it and hands its instance \
             credentials at start"
    )]
    NotExternal { id: Uuid, runtime: String },

    /// Something named by a text id (a delegation, an activity cursor) is not there for
    /// the caller; the text says what.
    #[error("{0}")]
    Missing(String),
    /// The request contradicts the current state of what it names; the text says how.
    #[error("{0}")]
    Conflict(String),
    /// A credential was missing, wrong, used up or expired; the text says which.
    #[error("{0}")]
    Unauthorized(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A configuration variable (or command-line argument) is missing or malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// apalis could not set up its storage.
    #[error("apalis: {0}")]
    Apalis(String),
    /// A broken invariant or a failed runtime facility (a listener, a socket, a task).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn workspace_not_found(id: Uuid) -> Error {
        Error::NotFound { what: "workspace", id }
    }

    pub fn op_not_found(id: Uuid) -> Error {
        Error::NotFound { what: "op", id }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
