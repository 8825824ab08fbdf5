//! Who is looking at the dashboard: a session opened by presenting the admin token (or an
//! org token) once, carried by an HttpOnly, SameSite=Strict cookie, and a per-session CSRF
//! token that every form sends back. See docs/adr/0012.
//!
//! - A page (GET) without a live session redirects to the login page; anything else is a
//!   JSON 401.
//! - A form post whose CSRF token is missing or wrong is a JSON 403, before any action.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use jobs::store::admin_ui_sessions::{self, OpenedWith};
use jobs::tokens::{self, constant_time_eq};

use super::layout;
use super::{LOGIN, OVERVIEW, PageError, form_pairs};
use crate::auth::{Caller, identify};
use crate::error::ApiError;
use crate::state::AppState;

pub const COOKIE: &str = "ws_admin";

/// The login form's one field. Read from the raw body, so a missing or repeated field is the
/// form again with a message rather than an extractor's rejection.
#[derive(Debug, utoipa::ToSchema)]
pub struct LoginForm {
    /// The admin token, or a live org API token.
    pub token: String,
}

impl LoginForm {
    fn from_body(body: &[u8]) -> LoginForm {
        LoginForm { token: form_pairs(body).remove("token").unwrap_or_default() }
    }
}

/// What every dashboard action posts: the session's CSRF token (other fields are ignored).
#[derive(Debug, utoipa::ToSchema)]
pub struct ActionForm {
    /// The token the dashboard's own forms carry for this session.
    pub csrf: String,
}

impl ActionForm {
    fn from_body(body: &[u8]) -> ActionForm {
        ActionForm { csrf: form_pairs(body).remove("csrf").unwrap_or_default() }
    }
}
/// A working day: an operator logs in again the next morning, and a stolen cookie is not
/// good for long.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A live dashboard session.
#[derive(Debug, Clone)]
pub struct UiSession {
    /// Written as the operator on retries, cancels and pauses made through the dashboard.
    pub operator: String,
    /// Embedded in every form as the hidden field `csrf`.
    pub csrf: String,
    id_hash: Vec<u8>,
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

async fn session_of(state: &AppState, headers: &HeaderMap) -> Result<Option<UiSession>, ApiError> {
    let Some(id) = cookie_value(headers, COOKIE) else {
        return Ok(None);
    };
    let id_hash = tokens::hash(id);
    let admin_token_hash = tokens::hash(&state.admin_token);
    Ok(admin_ui_sessions::live(&state.pool, &id_hash, &admin_token_hash).await?.map(|s| UiSession {
        operator: s.operator,
        csrf: s.csrf_token,
        id_hash,
    }))
}

impl FromRequestParts<AppState> for UiSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match session_of(state, &parts.headers).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) if parts.method == Method::GET || parts.method == Method::HEAD => {
                Err(Redirect::to(LOGIN).into_response())
            }
            Ok(None) => Err(ApiError::Unauthorized(
                "no dashboard session: log in at /admin/ui/login (the ws_admin cookie is missing or expired)".into(),
            )
            .into_response()),
            Err(e) => Err(PageError::from(e).into_response()),
        }
    }
}

/// A form post from the dashboard: a live session whose CSRF token the form carried.
pub struct Protected {
    pub session: UiSession,
}

impl FromRequest<AppState> for Protected {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = UiSession::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        // Read whatever the content type says: a missing token must be a 403, not a 415.
        let body = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        let form = ActionForm::from_body(&body);
        check_csrf(&session, Some(&form.csrf)).map_err(IntoResponse::into_response)?;
        Ok(Protected { session })
    }
}

fn check_csrf(session: &UiSession, sent: Option<&str>) -> Result<(), ApiError> {
    match sent {
        None | Some("") => Err(ApiError::Forbidden(
            "missing CSRF token: dashboard actions must be posted from the dashboard's own forms".into(),
        )),
        Some(t) if constant_time_eq(t.as_bytes(), session.csrf.as_bytes()) => Ok(()),
        Some(_) => {
            Err(ApiError::Forbidden("CSRF token does not match this session: reload the page and submit again".into()))
        }
    }
}

/// `Secure` when the browser reached us over https: the api speaks plain HTTP, so that is
/// what a TLS-terminating proxy in front of it says in `X-Forwarded-Proto`.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.split(',').next().is_some_and(|first| first.trim().eq_ignore_ascii_case("https")))
}

fn set_cookie(value: &str, max_age: Duration, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path={OVERVIEW}; Max-Age={}{secure}", max_age.as_secs());
    // The value is base64url from `tokens::generate`, always a valid header value.
    HeaderValue::from_str(&cookie)
        .map_err(|e| ApiError::Internal(jobs::Error::Invalid { field: "cookie", problem: e.to_string() }))
}

#[utoipa::path(get, path = "/admin/ui/login", tag = "dashboard",
    security(()),
    responses((status = 200, description = "The login form", content_type = "text/html", body = String)))]
/// `GET /admin/ui/login`.
pub async fn login_page() -> Response {
    layout::login(None).into_response()
}

#[utoipa::path(post, path = "/admin/ui/login", tag = "dashboard",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    security(()),
    responses(
        (status = 303, description = "Logged in: the session cookie is set, on to the overview"),
        (status = 400, description = "No token entered: the form again, saying so"),
        (status = 401, description = "Not the admin token nor a live org token: the form again, saying so"),
    ))]
/// `POST /admin/ui/login` (form field `token`). No CSRF token here: there is no session yet
/// to tie one to, and a forged login could only log the victim in as the one admin.
pub async fn login(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, PageError> {
    let form = LoginForm::from_body(&body);
    let token = form.token.trim();
    if token.is_empty() {
        return Ok((StatusCode::BAD_REQUEST, layout::login(Some("enter the admin token"))).into_response());
    }
    let admin_token_hash = tokens::hash(&state.admin_token);
    let (operator, opened_with) = match identify(&state, token).await? {
        Some(Caller::Admin) => ("admin-ui".to_string(), OpenedWith::AdminToken(&admin_token_hash)),
        Some(Caller::OrgToken(t)) => (format!("admin-ui:org-token:{}", t.prefix), OpenedWith::OrgToken(t.id)),
        Some(Caller::Workspace(_)) | None => {
            let message = "that token is not the admin token (nor a live org token)";
            return Ok((StatusCode::UNAUTHORIZED, layout::login(Some(message))).into_response());
        }
    };
    admin_ui_sessions::purge_expired(&state.pool).await?;
    let id = tokens::generate();
    let csrf = tokens::generate();
    admin_ui_sessions::insert(&state.pool, &id.hash, &csrf.plaintext, &operator, opened_with, LIFETIME).await?;
    tracing::info!(operator, "dashboard login");
    let mut r = Redirect::to(OVERVIEW).into_response();
    r.headers_mut().insert(header::SET_COOKIE, set_cookie(&id.plaintext, LIFETIME, over_https(&headers))?);
    Ok(r)
}

#[utoipa::path(post, path = "/admin/ui/logout", tag = "dashboard",
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    security(("dashboard_session" = [])),
    responses(
        (status = 303, description = "Logged out: the cookie is cleared, on to the login page"),
        (status = 401, description = "No live dashboard session"),
        (status = 403, description = "The form's CSRF token is missing or not this session's"),
    ))]
/// `POST /admin/ui/logout`: the session is deleted, so the cookie is dead even if kept.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap, form: Protected) -> Result<Response, PageError> {
    admin_ui_sessions::delete(&state.pool, &form.session.id_hash).await?;
    let mut r = Redirect::to(LOGIN).into_response();
    r.headers_mut().insert(header::SET_COOKIE, set_cookie("", Duration::ZERO, over_https(&headers))?);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> UiSession {
        UiSession { operator: "admin-ui".into(), csrf: "right".into(), id_hash: vec![] }
    }

    #[test]
    fn the_cookie_is_found_among_others_and_an_empty_one_is_none() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; ws_admin=abc ; b=2"));
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("other=1"));
        h.append(header::COOKIE, HeaderValue::from_static("ws_admin="));
        assert_eq!(cookie_value(&h, COOKIE), None);
        assert_eq!(cookie_value(&HeaderMap::new(), COOKIE), None);
    }

    #[test]
    fn csrf_tokens_must_be_present_and_equal() {
        let s = session();
        assert!(check_csrf(&s, Some("right")).is_ok());
        for bad in [None, Some(""), Some("wrong"), Some("righ"), Some("right ")] {
            let e = check_csrf(&s, bad).unwrap_err();
            assert!(matches!(e, ApiError::Forbidden(ref m) if m.contains("CSRF")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cookies_are_http_only_strict_and_scoped_and_secure_only_behind_https() {
        let c = set_cookie("v", LIFETIME, false).unwrap();
        let c = c.to_str().unwrap();
        assert!(c.starts_with("ws_admin=v;"), "{c}");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/admin/ui", "Max-Age=43200"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!c.contains("Secure"), "{c}");
        assert!(set_cookie("v", LIFETIME, true).unwrap().to_str().unwrap().ends_with("; Secure"));
        let mut h = HeaderMap::new();
        assert!(!over_https(&h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        assert!(over_https(&h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        assert!(!over_https(&h));
    }
}
