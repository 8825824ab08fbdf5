//! The operators' dashboard at `/admin/ui`: server-rendered HTML (maud) over the same
//! library functions the admin REST routes use, with a cookie session and CSRF-checked
//! form posts ([`session`]). Pages reload themselves every few seconds unless the operator
//! is typing into a form.

pub(crate) mod delegations;
pub(crate) mod jobs;
mod layout;
pub(crate) mod overview;
pub(crate) mod session;
pub(crate) mod workspaces;

use std::collections::HashMap;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::ApiError;
use crate::state::AppState;

pub const OVERVIEW: &str = "/admin/ui";
pub const LOGIN: &str = "/admin/ui/login";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(OVERVIEW, get(overview::page))
        .route(LOGIN, get(session::login_page).post(session::login))
        .route("/admin/ui/logout", post(session::logout))
        .route("/admin/ui/jobs", get(jobs::list))
        .route("/admin/ui/jobs/{id}", get(jobs::detail))
        .route("/admin/ui/jobs/{id}/retry", post(jobs::retry))
        .route("/admin/ui/jobs/{id}/cancel", post(jobs::cancel))
        .route("/admin/ui/queues/{kind}/pause", post(overview::pause))
        .route("/admin/ui/queues/{kind}/resume", post(overview::resume))
        .route("/admin/ui/workspaces", get(workspaces::list))
        .route("/admin/ui/workspaces/{id}", get(workspaces::detail))
        .route("/admin/ui/delegations", get(delegations::list))
        // The pages carry the session's CSRF token and operators' data: no other site may
        // frame them (clickjacking the buttons), and no cache may keep them.
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("same-origin")))
}

/// An [`ApiError`] shown as an HTML page. Status, headers and logging are the JSON
/// error's (`error.rs` decides them once); only the body is a page.
#[derive(Debug)]
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<::jobs::Error> for PageError {
    fn from(e: ::jobs::Error) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let message = match &self.0 {
            ApiError::Internal(_) => "internal error; see the server log".to_string(),
            e => e.to_string(),
        };
        let (mut parts, _) = self.0.into_response().into_parts();
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        let status = parts.status;
        (parts, layout::error(status, &message)).into_response()
    }
}

/// A list page's filter: the parsed value, or (400) its problem, named above an empty list
/// so the operator fixes it in the form rather than on an error page.
pub fn shown<T>(parsed: Result<T, ApiError>) -> (StatusCode, Option<String>, Option<T>) {
    match parsed {
        Ok(v) => (StatusCode::OK, None, Some(v)),
        Err(e) => (StatusCode::BAD_REQUEST, Some(e.to_string()), None),
    }
}

/// The fields of a urlencoded form or query string; a repeated field keeps its last value.
pub fn form_pairs(raw: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

/// A query string's fields, empty ones left out (an untouched filter is no filter).
pub fn query_pairs(raw: Option<&str>) -> HashMap<String, String> {
    form_pairs(raw.unwrap_or_default().as_bytes()).into_iter().filter(|(_, v)| !v.trim().is_empty()).collect()
}
