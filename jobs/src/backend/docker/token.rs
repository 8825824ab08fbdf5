//! Delivering the workspace token into a container before its agent starts. The token is
//! written owned by the image's user, which only the image itself can tell us.

use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use futures::TryStreamExt;
use tracing::warn;

use super::DockerBackend;
use super::archive::{MAX_ACCOUNT_FILE, find_account, find_group, first_regular_file};
use super::engine::{engine_error, status_of, vanished};
use crate::backend::BackendError;

/// Where the agent finds its configuration; the token lands here before the agent starts.
pub(super) const CONFIG_DIR: &str = "/configs";
pub(super) const TOKEN_FILE: &str = ".auth_token";

impl DockerBackend {
    /// The uid/gid the image runs as, so a 0600 token stays readable by a non-root agent.
    /// Resolves names the way the engine does, through the image's own passwd/group files.
    pub(super) async fn token_owner(&self, id: &str) -> Result<(u64, u64), BackendError> {
        let inspected = self.call("inspect the container", self.docker.inspect_container(id, None)).await?;
        let info = match inspected {
            Ok(info) => info,
            Err(err) if status_of(&err) == Some(404) => return Err(vanished(id)),
            Err(err) => return Err(engine_error("inspect the container", err)),
        };
        let user = info.config.and_then(|c| c.user).unwrap_or_default();
        let user = user.trim();
        if user.is_empty() {
            return Ok((0, 0));
        }
        let (user_part, group_part) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let numeric_uid = user_part.parse::<u64>().ok();

        let account = if numeric_uid.is_none() || group_part.is_none() {
            self.read_file(id, "/etc/passwd").await?.and_then(|passwd| find_account(&passwd, user_part))
        } else {
            None
        };
        let uid = match (numeric_uid, account) {
            (Some(uid), _) => uid,
            (None, Some((uid, _))) => uid,
            (None, None) => {
                // Starting will fail on the same lookup and say so; who owns the token
                // no longer matters.
                warn!(id, user, "image user unknown; token left root-owned");
                return Ok((0, 0));
            }
        };
        let gid = match group_part {
            None => account.map(|(_, gid)| gid).unwrap_or(0),
            Some(group) => match group.parse::<u64>() {
                Ok(gid) => gid,
                Err(_) => {
                    let found = self.read_file(id, "/etc/group").await?.and_then(|groups| find_group(&groups, group));
                    found.unwrap_or_else(|| {
                        warn!(id, user, "image group not found in /etc/group; using gid 0");
                        0
                    })
                }
            },
        };
        Ok((uid, gid))
    }

    /// Reads one small text file from the container's filesystem; `None` when absent or
    /// not a regular file.
    pub(super) async fn read_file(&self, id: &str, path: &str) -> Result<Option<String>, BackendError> {
        let options = DownloadFromContainerOptionsBuilder::new().path(path).build();
        let stream = self.docker.download_from_container(id, Some(options));
        let collect = async move {
            let mut stream = std::pin::pin!(stream);
            let mut archive = Vec::new();
            while let Some(chunk) = stream.try_next().await? {
                archive.extend_from_slice(&chunk);
                if archive.len() > MAX_ACCOUNT_FILE {
                    break;
                }
            }
            Ok(archive)
        };
        let archive = match self.call("read the image's account files", collect).await? {
            Ok(archive) => archive,
            Err(err) if status_of(&err) == Some(404) => return Ok(None),
            Err(err) => return Err(engine_error("read the image's account files", err)),
        };
        Ok(first_regular_file(&archive))
    }
}
