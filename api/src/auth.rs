//! Who is calling, as axum extractors: handlers name the caller they need in their
//! signature instead of reading headers. Rejections are our JSON 401/403.
//!
//! - [`Admin`]: the admin token (operators, the canvas), or an org API token.
//! - [`AdminOrWorkspace`]: the admin, or the token of the workspace named in the path.
//! - [`Caller`]: any valid token; the handler decides what it may see.
//! - [`Agent`]: register and heartbeat, which name their workspace in the body; a register
//!   may instead present the instance's single-use bootstrap secret.
//!
//! An org API token opens everything the admin token opens, except minting org tokens
//! ([`Admin::require_admin_token`]).

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use jobs::registry::Credential;
use jobs::store::org_api_tokens::{self, OrgTokenRef};
use jobs::store::workspace_tokens;
use jobs::tokens::constant_time_eq;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::{PathId, WorkspaceIdKind};
use crate::state::AppState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Workspace(Uuid),
    /// A live org API token: the admin's reach, under its own name.
    OrgToken(OrgTokenRef),
}

impl Caller {
    /// Written on the ops a caller requests (`requested_by`).
    pub fn label(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Workspace(id) => format!("workspace:{id}"),
            Caller::OrgToken(t) => format!("org-token:{}", t.prefix),
        }
    }

    /// The workspace a workspace token speaks for; `None` for the admin and org tokens (the
    /// canvas or automation), which inbox rows record as no source.
    pub fn workspace(&self) -> Option<Uuid> {
        match self {
            Caller::Workspace(w) => Some(*w),
            Caller::Admin | Caller::OrgToken(_) => None,
        }
    }

    /// The admin token or an org token: whatever the admin may do.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin | Caller::OrgToken(_))
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?.trim();
    (!t.is_empty()).then_some(t)
}

/// Resolves a presented token: the admin token, a live workspace token, or a live org token.
pub async fn identify(state: &AppState, token: &str) -> ApiResult<Option<Caller>> {
    if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) {
        return Ok(Some(Caller::Admin));
    }
    if let Some(id) = workspace_tokens::validate(&state.pool, token).await? {
        return Ok(Some(Caller::Workspace(id)));
    }
    Ok(org_api_tokens::validate(&state.pool, token).await?.map(Caller::OrgToken))
}

fn invalid_token() -> ApiError {
    ApiError::Unauthorized("invalid token".into())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        identify(state, token).await?.ok_or_else(invalid_token)
    }
}

/// The admin token, or an org token.
pub struct Admin(Caller);

impl Admin {
    pub fn label(&self) -> String {
        self.0.label()
    }

    /// Refuses org tokens, for what only the admin token itself may do: one leaked org
    /// token must not be able to mint the others that would outlive its revocation.
    pub fn require_admin_token(&self) -> ApiResult<()> {
        match self.0 {
            Caller::Admin => Ok(()),
            _ => Err(ApiError::Forbidden("this route needs the admin token itself; an org token is not enough".into())),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            caller if caller.is_admin() => Ok(Admin(caller)),
            _ => Err(ApiError::Forbidden("this route needs the admin token".into())),
        }
    }
}

/// The workspace named by the path's `{id}`, opened by the admin or by its own token;
/// another workspace's token is refused.
pub struct AdminOrWorkspace {
    pub id: Uuid,
    pub caller: Caller,
}

impl FromRequestParts<AppState> for AdminOrWorkspace {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let PathId(id, _) = PathId::<WorkspaceIdKind>::from_request_parts(parts, state).await?;
        match Caller::from_request_parts(parts, state).await? {
            Caller::Workspace(own) if own != id => {
                Err(ApiError::Forbidden("this token belongs to another workspace".into()))
            }
            caller => Ok(AdminOrWorkspace { id, caller }),
        }
    }
}

/// An agent's credential, resolved but not yet checked: the workspace it must match is in
/// the request body, which is read after every other extractor.
pub struct Agent {
    /// The bearer token sent, and whom it identifies (`None`: no admin or live workspace
    /// token; for a register it may still be a bootstrap secret).
    presented: Option<(String, Option<Caller>)>,
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = match bearer(&parts.headers) {
            Some(token) => Some((token.to_string(), identify(state, token).await?)),
            None => None,
        };
        Ok(Agent { presented })
    }
}

impl Agent {
    /// Heartbeats: the admin or `workspace_id`'s own token.
    pub fn authorize(&self, workspace_id: Uuid) -> ApiResult<()> {
        match self.register_credential(workspace_id)? {
            Credential::Verified => Ok(()),
            Credential::Secret(_) => Err(invalid_token()),
        }
    }

    /// Registers: the admin or `workspace_id`'s own token, or a secret the registry checks
    /// against the workspace's bootstrap secret. Nothing at all is refused here.
    pub fn register_credential(&self, workspace_id: Uuid) -> ApiResult<Credential> {
        match &self.presented {
            Some((_, Some(Caller::Admin | Caller::OrgToken(_)))) => Ok(Credential::Verified),
            Some((_, Some(Caller::Workspace(id)))) if *id == workspace_id => Ok(Credential::Verified),
            Some((_, Some(Caller::Workspace(_)))) => {
                Err(ApiError::Forbidden("this token belongs to another workspace".into()))
            }
            Some((secret, None)) => Ok(Credential::Secret(secret.clone())),
            None => Err(ApiError::Unauthorized(
                "missing bearer token: send the workspace token, or the bootstrap secret delivered to the instance"
                    .into(),
            )),
        }
    }
}
