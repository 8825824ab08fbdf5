use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;
use crate::events::Event;

/// Most that Postgres allows in a notification's payload is 8000 bytes; an event whose
/// envelope is larger is announced by its id, and listeners read it.
pub const NOTIFY_INLINE_MAX: i32 = 7900;

/// Inserts the event and announces it on `channel` at commit, in one statement: the payload
/// is the wire envelope itself when it fits, so listeners need not read the row back.
pub async fn insert_announced(
    conn: &mut PgConnection,
    event_type: &str,
    workspace_id: Option<Uuid>,
    payload: &Value,
    channel: &str,
) -> Result<i64> {
    let ids = insert_announced_many(conn, event_type, &[(workspace_id, payload)], channel).await?;
    ids.first().copied().ok_or_else(|| crate::Error::Internal("an event insert returned no id".into()))
}

/// [`insert_announced`] for several events of one type in one statement. They get their
/// ids, and are announced, in the order given.
pub async fn insert_announced_many(
    conn: &mut PgConnection,
    event_type: &str,
    events: &[(Option<Uuid>, &Value)],
    channel: &str,
) -> Result<Vec<i64>> {
    let workspaces: Vec<Option<Uuid>> = events.iter().map(|(w, _)| *w).collect();
    let payloads: Vec<&Value> = events.iter().map(|(_, p)| *p).collect();
    Ok(sqlx::query_scalar(
        "WITH e AS (
             INSERT INTO structure_events (event_type, workspace_id, payload)
             SELECT $1, r.workspace_id, r.payload
               FROM unnest($2::uuid[], $3::jsonb[]) WITH ORDINALITY AS r(workspace_id, payload, n)
              ORDER BY r.n
             RETURNING id, event_type, workspace_id, payload, created_at),
         j AS (
             SELECT id, jsonb_build_object('id', id, 'event', event_type, 'workspace_id', workspace_id,
                                           'timestamp', created_at, 'payload', payload)::text AS envelope
               FROM e ORDER BY id)
         SELECT id FROM j,
                LATERAL (SELECT pg_notify($4, CASE WHEN octet_length(envelope) <= $5 THEN envelope ELSE id::text END)) n",
    )
    .bind(event_type)
    .bind(&workspaces)
    .bind(&payloads)
    .bind(channel)
    .bind(NOTIFY_INLINE_MAX)
    .fetch_all(conn)
    .await?)
}

pub async fn get<'e>(db: impl PgExecutor<'e>, id: i64) -> Result<Option<Event>> {
    Ok(sqlx::query_as::<_, Event>(
        "SELECT id, event_type, workspace_id, payload, created_at FROM structure_events WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Newest first.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    workspace_id: Option<Uuid>,
    event_type: Option<&str>,
    limit: i64,
) -> Result<Vec<Event>> {
    Ok(sqlx::query_as::<_, Event>(
        "SELECT id, event_type, workspace_id, payload, created_at FROM structure_events
          WHERE ($1::uuid IS NULL OR workspace_id = $1) AND ($2::text IS NULL OR event_type = $2)
          ORDER BY id DESC LIMIT $3",
    )
    .bind(workspace_id)
    .bind(event_type)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Deletes up to `batch` events older than `older_than`; returns how many.
pub async fn purge_older<'e>(db: impl PgExecutor<'e>, older_than: Duration, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM structure_events WHERE id IN (
             SELECT id FROM structure_events WHERE created_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
    )
    .bind(older_than.as_millis() as f64)
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
