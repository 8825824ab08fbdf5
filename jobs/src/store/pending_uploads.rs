//! `pending_uploads` and `pending_upload_chunks`: staged chat uploads and their bytes. A
//! file is live while it is neither acked nor expired; only live files are served or acked,
//! and only to their own workspace.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;

/// What is needed to serve a live file.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Served {
    pub filename: String,
    pub mimetype: String,
    pub size_bytes: i64,
}

/// Starts a file; its size is written by [`finish`] once its chunks are in.
pub async fn insert(
    conn: &mut PgConnection,
    file_id: Uuid,
    workspace_id: Uuid,
    filename: &str,
    mimetype: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO pending_uploads (file_id, workspace_id, filename, mimetype) VALUES ($1, $2, $3, $4)")
        .bind(file_id)
        .bind(workspace_id)
        .bind(filename)
        .bind(mimetype)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_chunk(conn: &mut PgConnection, file_id: Uuid, seq: i32, data: &[u8]) -> Result<()> {
    sqlx::query("INSERT INTO pending_upload_chunks (file_id, seq, data) VALUES ($1, $2, $3)")
        .bind(file_id)
        .bind(seq)
        .bind(data)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn finish(conn: &mut PgConnection, file_id: Uuid, size_bytes: i64) -> Result<()> {
    sqlx::query("UPDATE pending_uploads SET size_bytes = $2 WHERE file_id = $1")
        .bind(file_id)
        .bind(size_bytes)
        .execute(conn)
        .await?;
    Ok(())
}

/// The live file `file_id` of `workspace_id`, stamped as fetched now; `None` when there is
/// no such live file for that workspace (whether or not another workspace has it).
pub async fn fetch<'e>(db: impl PgExecutor<'e>, workspace_id: Uuid, file_id: Uuid) -> Result<Option<Served>> {
    Ok(sqlx::query_as(
        "UPDATE pending_uploads SET fetched_at = now()
          WHERE file_id = $1 AND workspace_id = $2 AND acked_at IS NULL AND expires_at > now()
          RETURNING filename, mimetype, size_bytes",
    )
    .bind(file_id)
    .bind(workspace_id)
    .fetch_optional(db)
    .await?)
}

/// Chunk `seq` of a file, `None` past its last one.
pub async fn chunk<'e>(db: impl PgExecutor<'e>, file_id: Uuid, seq: i32) -> Result<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar("SELECT data FROM pending_upload_chunks WHERE file_id = $1 AND seq = $2")
        .bind(file_id)
        .bind(seq)
        .fetch_optional(db)
        .await?)
}

/// Acks the live file `file_id` of `workspace_id`; `false` when there is no such live file.
pub async fn ack<'e>(db: impl PgExecutor<'e>, workspace_id: Uuid, file_id: Uuid) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE pending_uploads SET acked_at = now()
          WHERE file_id = $1 AND workspace_id = $2 AND acked_at IS NULL AND expires_at > now()",
    )
    .bind(file_id)
    .bind(workspace_id)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Deletes up to `batch` files that are done (acked, or expired), chunks with them; returns
/// how many.
pub async fn purge_done<'e>(db: impl PgExecutor<'e>, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM pending_uploads WHERE file_id IN (
             (SELECT file_id FROM pending_uploads WHERE acked_at IS NOT NULL LIMIT $1)
             UNION ALL
             (SELECT file_id FROM pending_uploads WHERE acked_at IS NULL AND expires_at <= now() LIMIT $1)
             LIMIT $1)",
    )
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
