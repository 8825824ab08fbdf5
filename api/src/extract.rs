//! Extractors whose rejections are our JSON errors instead of axum's plain text.

use std::marker::PhantomData;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::BadRequest("expected a JSON body with Content-Type: application/json".into()))
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::BadRequest(format!("malformed JSON: {}", e.body_text())))
            }
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::BadRequest(e.body_text())),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge("request body is larger than the 1 MiB limit".into()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// A JSON body that may be left out: an empty body is `T::default()`, anything else must
/// be JSON for `T`.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let empty = req.headers().get(axum::http::header::CONTENT_LENGTH).is_some_and(|l| l == "0")
            || (!req.headers().contains_key(axum::http::header::CONTENT_TYPE)
                && !req.headers().contains_key(axum::http::header::TRANSFER_ENCODING)
                && !req.headers().contains_key(axum::http::header::CONTENT_LENGTH));
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        let ApiJson(v) = ApiJson::<T>::from_request(req, state).await?;
        Ok(OptionalJson(v))
    }
}

pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => Err(ApiError::BadRequest(e.body_text())),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// What a path's `{id}` names, for the message when it is not a UUID.
pub trait IdKind: Send + Sync {
    const NAME: &'static str;
}

pub struct WorkspaceIdKind;
impl IdKind for WorkspaceIdKind {
    const NAME: &'static str = "workspace id";
}

pub struct OpIdKind;
impl IdKind for OpIdKind {
    const NAME: &'static str = "op id";
}

/// The path's `{id}` as a UUID, or a 400 naming what it should have been.
pub struct PathId<K>(pub Uuid, pub PhantomData<K>);

pub type WorkspaceId = PathId<WorkspaceIdKind>;
pub type OpId = PathId<OpIdKind>;

impl<S: Send + Sync, K: IdKind> FromRequestParts<S> for PathId<K> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Read by name, so a route with more parameters (`/workspaces/{id}/delegations/{did}`)
        // shares this extractor.
        let Path(params) = Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let raw = params.get("id").cloned().unwrap_or_default();
        let id = Uuid::parse_str(&raw)
            .map_err(|_| ApiError::BadRequest(format!("{} {raw:?} is not a valid UUID", K::NAME)))?;
        Ok(PathId(id, PhantomData))
    }
}

/// A list's `limit`: 1 to 1000 (or a route's own maximum), 100 when absent.
#[derive(Debug, Clone, Copy)]
pub struct Limit(pub i64);

impl Limit {
    pub fn parse(raw: Option<i64>) -> Result<Limit, ApiError> {
        Limit::parse_up_to(raw, 1000)
    }

    pub fn parse_up_to(raw: Option<i64>, max: i64) -> Result<Limit, ApiError> {
        match raw.unwrap_or(100) {
            n if (1..=max).contains(&n) => Ok(Limit(n)),
            _ => Err(ApiError::BadRequest(format!("limit must be between 1 and {max}"))),
        }
    }
}

/// Tells a field that is absent (`None`) from one set to null (`Some(None)`), for PATCH.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}
