//! Chat uploads: files for a workspace's agent, staged in the database and announced in its
//! inbox; the agent fetches each one's bytes and acks it. Bytes are streamed both ways in
//! chunks, never held whole in memory.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jobs::inbox;
use jobs::store::{self, pending_uploads};
use jobs::uploads::{self, CHUNK_BYTES, FIELD, FileSummary, MAX_FILE_BYTES, MAX_FILES, Staged};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{AdminOrWorkspace, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::routes::activity::live_workspace;
use crate::state::AppState;

/// The whole upload request: room for two files at the largest, with their multipart framing.
pub const BODY_LIMIT: usize = 50 * 1024 * 1024;

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("the upload is larger than the {} MiB limit", BODY_LIMIT >> 20))
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// The upload's form. It only describes the body in `/openapi.json`: the handler streams the
/// multipart fields itself.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// One to 64 files, each at most 25 MiB.
    #[schema(value_type = Vec<String>, format = Binary)]
    files: Vec<Vec<u8>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    files: Vec<FileSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Acked {
    acked: bool,
}

/// `POST /workspaces/:id/chat/uploads`: every `files` field is staged and announced to the
/// agent by an inbox item, all in one transaction: on any refusal nothing is kept.
#[utoipa::path(post, path = "/workspaces/{id}/chat/uploads", tag = "uploads",
    params(("id" = Uuid, Path, description = "The workspace whose agent gets the files")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The files staged", body = Uploaded),
        (status = 400, description = "A bad id, a body that is not multipart, no file, too many, or another field", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such live workspace", body = ErrorBody),
        (status = 413, description = "A file over 25 MiB (the body adds `filename`, `max` and, when read whole, `size`), or a request over 50 MiB", body = ErrorBody),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<Uploaded>> {
    let ws = live_workspace(&state, who.id).await?;
    let mut multipart = multipart
        .map_err(|e| ApiError::BadRequest(format!("expected a multipart/form-data body: {}", e.body_text())))?;
    let mut tx = jobs::db::begin(&state.pool).await.map_err(jobs::Error::from)?;
    // The transaction waits on the client between chunks, however slow it sends.
    store::allow_idle(&mut tx).await?;
    let mut staged: Vec<Staged> = Vec::new();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some(FIELD) {
            let name = field.name().unwrap_or_default();
            return Err(ApiError::BadRequest(format!(
                "unexpected multipart field {name:?}: send every file in a field named {FIELD:?}"
            )));
        }
        if staged.len() == MAX_FILES {
            return Err(ApiError::BadRequest(format!("too many files: at most {MAX_FILES} per upload")));
        }
        let file = Staged {
            workspace_id: ws.id,
            file_id: Uuid::new_v4(),
            name: uploads::sanitize_filename(field.file_name().unwrap_or_default()),
            mimetype: field.content_type().unwrap_or("application/octet-stream").to_string(),
            size: 0,
        };
        match stage(&mut tx, &file, &mut field).await? {
            Ok(size) => staged.push(Staged { size, ..file }),
            Err(seen) => {
                tx.rollback().await.map_err(jobs::Error::from)?;
                let size = drain_field(field, seen).await;
                let whole = drain_rest(&mut multipart).await;
                return Err(too_large(&file.name, size.filter(|_| whole)));
            }
        }
    }
    if staged.is_empty() {
        return Err(ApiError::BadRequest(format!("no file: send one or more files in the {FIELD:?} field")));
    }
    let source = who.caller.workspace();
    for file in &staged {
        inbox::write(&mut *tx, ws.delivery_mode, file.inbox_item(source)).await?;
    }
    tx.commit().await.map_err(jobs::Error::from)?;
    for file in &staged {
        tracing::info!(workspace_id = %ws.id, file_id = %file.file_id, size = file.size, "chat upload staged");
    }
    Ok(Json(Uploaded { files: staged.iter().map(Staged::summary).collect() }))
}

/// Writes one file's row and its chunks as the field streams in. `Ok(Err(seen))` when the
/// file passed the size limit after `seen` bytes; nothing more of it is read then.
async fn stage(conn: &mut PgConnection, file: &Staged, field: &mut Field<'_>) -> ApiResult<Result<u64, u64>> {
    pending_uploads::insert(conn, file.file_id, file.workspace_id, &file.name, &file.mimetype).await?;
    let (mut size, mut seq) = (0u64, 0i32);
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
    while let Some(bytes) = field.chunk().await.map_err(multipart_error)? {
        size += bytes.len() as u64;
        if size > MAX_FILE_BYTES {
            return Ok(Err(size));
        }
        // Exactly CHUNK_BYTES a row whatever the sizes of the pieces the body arrives in.
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            let take = (CHUNK_BYTES - buf.len()).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == CHUNK_BYTES {
                pending_uploads::insert_chunk(conn, file.file_id, seq, &buf).await?;
                buf.clear();
                seq += 1;
            }
        }
    }
    if !buf.is_empty() {
        pending_uploads::insert_chunk(conn, file.file_id, seq, &buf).await?;
    }
    pending_uploads::finish(conn, file.file_id, size as i64).await?;
    Ok(Ok(size))
}

/// The rest of a refused file, read without keeping it: its full size, unless the body
/// broke off or passed the request's limit first.
async fn drain_field(mut field: Field<'_>, seen: u64) -> Option<u64> {
    let mut size = seen;
    while let Some(bytes) = field.chunk().await.ok()? {
        size += bytes.len() as u64;
    }
    Some(size)
}

/// Reads the rest of a refused upload without keeping it, so that the client, still
/// sending, gets the answer instead of a reset connection. `false` when the body broke off
/// or passed the request's limit first.
async fn drain_rest(multipart: &mut Multipart) -> bool {
    loop {
        match multipart.next_field().await {
            Ok(Some(mut field)) => loop {
                match field.chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return false,
                }
            },
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fn too_large(filename: &str, size: Option<u64>) -> ApiError {
    let mut extra = json!({"filename": filename, "max": MAX_FILE_BYTES});
    if let Some(size) = size {
        extra["size"] = json!(size);
    }
    ApiError::PayloadTooLargeWith {
        message: format!("file {filename:?} is larger than the {} MiB limit", MAX_FILE_BYTES >> 20),
        extra,
    }
}

/// The workspace and file a pending-upload path names, for a caller allowed to see them.
/// Another workspace's token is told the file does not exist: whether it does is none of
/// its business.
fn pending_file(caller: Caller, params: &HashMap<String, String>) -> ApiResult<(Uuid, Uuid)> {
    let parse = |key: &str, what: &str| {
        let raw = params.get(key).map(String::as_str).unwrap_or_default();
        Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest(format!("{what} {raw:?} is not a valid UUID")))
    };
    let (workspace_id, file_id) = (parse("id", "workspace id")?, parse("file_id", "file id")?);
    match caller {
        Caller::Workspace(own) if own != workspace_id => Err(not_found(file_id)),
        _ => Ok((workspace_id, file_id)),
    }
}

fn not_found(file_id: Uuid) -> ApiError {
    ApiError::NotFound(format!("pending upload {file_id} not found (unknown, acked or expired)"))
}

/// `filename*` of RFC 6266: every byte outside RFC 5987's attr-char set percent-encoded.
fn percent_encoded(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'!'
            | b'#'
            | b'$'
            | b'&'
            | b'+'
            | b'-'
            | b'.'
            | b'^'
            | b'_'
            | b'`'
            | b'|'
            | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /workspaces/:id/pending-uploads/:file_id/content`: the bytes of a live file, one
/// stored chunk at a time; stamps it fetched.
#[utoipa::path(get, path = "/workspaces/{id}/pending-uploads/{file_id}/content", tag = "uploads",
    params(("id" = Uuid, Path, description = "The workspace"), ("file_id" = Uuid, Path, description = "The file")),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The file's bytes, with the type it was uploaded with", content_type = "*/*", body = Vec<u8>,
            headers(("content-disposition" = String, description = "`attachment` with the file's name"))),
        (status = 400, description = "An id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such live file (unknown, acked or expired), or another workspace's", body = ErrorBody),
    ))]
pub async fn content(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (workspace_id, file_id) = pending_file(caller, &params)?;
    let file = pending_uploads::fetch(&state.pool, workspace_id, file_id).await?.ok_or_else(|| not_found(file_id))?;
    let pool = state.pool.clone();
    let chunks = futures::stream::try_unfold(0i32, move |seq| {
        let pool = pool.clone();
        async move {
            match pending_uploads::chunk(&pool, file_id, seq).await {
                Ok(Some(data)) => Ok(Some((data, seq + 1))),
                Ok(None) => Ok(None),
                Err(e) => {
                    tracing::warn!(%file_id, seq, error = %e, "reading a pending upload failed");
                    Err(std::io::Error::other(e.to_string()))
                }
            }
        }
    });
    let mimetype = if file.mimetype.is_empty() { "application/octet-stream" } else { &file.mimetype };
    let disposition =
        format!("attachment; filename=\"{}\"; filename*=UTF-8''{}", file.filename, percent_encoded(&file.filename));
    let header = |v: &str| {
        HeaderValue::from_str(v).map_err(|e| ApiError::Internal(jobs::Error::Internal(format!("header value: {e}"))))
    };
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header(mimetype)?);
    headers.insert(header::CONTENT_DISPOSITION, header(&disposition)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.size_bytes));
    Ok(response)
}

/// `POST /workspaces/:id/pending-uploads/:file_id/ack`: the agent has the file; it is no
/// longer served, and the pending-uploads sweep deletes it.
#[utoipa::path(post, path = "/workspaces/{id}/pending-uploads/{file_id}/ack", tag = "uploads",
    params(("id" = Uuid, Path, description = "The workspace"), ("file_id" = Uuid, Path, description = "The file")),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "No longer served", body = Acked),
        (status = 400, description = "An id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such live file (unknown, acked or expired), or another workspace's", body = ErrorBody),
    ))]
pub async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<Acked>> {
    let (workspace_id, file_id) = pending_file(caller, &params)?;
    if !pending_uploads::ack(&state.pool, workspace_id, file_id).await? {
        return Err(not_found(file_id));
    }
    Ok(Json(Acked { acked: true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filename_star_encodes_all_but_attr_chars() {
        assert_eq!(percent_encoded("a-b_c.txt"), "a-b_c.txt");
        assert_eq!(percent_encoded("r\u{e9}sum\u{e9} 1;\"x\".pdf"), "r%C3%A9sum%C3%A9%201%3B%22x%22.pdf");
    }

    #[test]
    fn another_workspaces_token_is_told_not_found() {
        let (ws, file) = (Uuid::new_v4(), Uuid::new_v4());
        let params: HashMap<String, String> =
            [("id".to_string(), ws.to_string()), ("file_id".to_string(), file.to_string())].into();
        assert!(pending_file(Caller::Admin, &params).is_ok());
        assert!(pending_file(Caller::Workspace(ws), &params).is_ok());
        assert!(matches!(pending_file(Caller::Workspace(Uuid::new_v4()), &params), Err(ApiError::NotFound(_))));
        let bad: HashMap<String, String> =
            [("id".to_string(), ws.to_string()), ("file_id".to_string(), "nope".to_string())].into();
        assert!(matches!(pending_file(Caller::Admin, &bad), Err(ApiError::BadRequest(_))));
    }
}
