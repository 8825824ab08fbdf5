//! How engine calls are made and how their failures become the retry decisions lifecycle
//! jobs act on. Kept in one place so every call site bounds and classifies the same way.

use std::future::Future;
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::query_parameters::{RemoveContainerOptions, RemoveContainerOptionsBuilder};

use super::DockerBackend;
use crate::backend::BackendError;

impl DockerBackend {
    pub(super) async fn call<T>(
        &self,
        action: &str,
        fut: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<Result<T, EngineError>, BackendError> {
        bounded(self.settings.call_timeout, action, fut).await
    }
}

pub(super) fn force_remove() -> RemoveContainerOptions {
    RemoveContainerOptionsBuilder::new().force(true).v(true).build()
}

pub(super) async fn bounded<T>(
    timeout: Duration,
    action: &str,
    fut: impl Future<Output = Result<T, EngineError>>,
) -> Result<Result<T, EngineError>, BackendError> {
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        BackendError::Transient(format!("Docker engine did not answer within {timeout:?} while trying to {action}"))
    })
}

pub(super) fn status_of(err: &EngineError) -> Option<u16> {
    match err {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Some engines report a missing image with a 5xx rather than a 404, so the message decides.
pub(super) fn is_no_such_image(err: &EngineError) -> bool {
    match err {
        EngineError::DockerResponseServerError { message, .. } => {
            let message = message.to_ascii_lowercase();
            message.contains("no such image") || message.contains("image not known")
        }
        _ => false,
    }
}

pub(super) fn vanished(id: &str) -> BackendError {
    BackendError::Transient(format!("container {} was removed while it was being started", short_id(id)))
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Maps an engine error to the retry decision lifecycle jobs act on. Conflicts are
/// transient because they describe a state (removal in progress, name in use) that passes.
pub(super) fn engine_error(action: &str, err: EngineError) -> BackendError {
    match err {
        EngineError::DockerResponseServerError { status_code, message } => {
            // Proxies and non-Docker endpoints answer with empty bodies; the status is
            // then all there is to show.
            let detail = match message.trim() {
                "" => format!("HTTP {status_code}"),
                message => message.to_owned(),
            };
            if status_code >= 500 || status_code == 409 || status_code == 429 {
                BackendError::Transient(format!("Docker engine could not {action}: {detail}"))
            } else {
                BackendError::Permanent(format!("Docker engine refused to {action}: {detail}"))
            }
        }
        EngineError::RequestTimeoutError => {
            BackendError::Transient(format!("Docker engine timed out trying to {action}"))
        }
        err @ (EngineError::IOError { .. }
        | EngineError::HyperResponseError { .. }
        | EngineError::HyperLegacyError { .. }
        | EngineError::SocketNotFoundError(_)
        | EngineError::DockerStreamError { .. }) => {
            BackendError::Transient(format!("cannot reach the Docker engine to {action}: {}", root_cause(&err)))
        }
        err => BackendError::Permanent(format!("Docker engine error trying to {action}: {err}")),
    }
}

/// Client errors wrap the useful part ("Connection refused") several layers down.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_are_classified() {
        let server = |status_code: u16, message: &str| EngineError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        };
        assert!(engine_error("x", server(500, "boom")).is_transient());
        assert!(engine_error("x", server(409, "removal in progress")).is_transient());
        assert!(!engine_error("x", server(400, "bad memory")).is_transient());
        assert_eq!(
            engine_error("ping the Docker engine", server(404, " ")).to_string(),
            "Docker engine refused to ping the Docker engine: HTTP 404"
        );
        assert!(engine_error("x", EngineError::RequestTimeoutError).is_transient());
        let io = EngineError::IOError { err: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused") };
        let err = engine_error("list containers", io);
        assert!(err.is_transient());
        assert_eq!(err.to_string(), "cannot reach the Docker engine to list containers: refused");
        assert!(is_no_such_image(&server(404, "No such image: foo:1")));
        assert!(is_no_such_image(&server(500, "no such image: foo:1")));
        assert!(!is_no_such_image(&server(404, "No such container: ws-1")));
    }
}
