//! The delegations ledger (`delegations`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;
use crate::domain::DelegationStatus;

macro_rules! columns {
    () => {
        "delegation_id, caller_id, callee_id, task_preview, status, last_heartbeat, deadline, \
     result_preview, error_detail, retry_count, created_at, updated_at, idempotency_key"
    };
}

/// One row; null fields are left out of the JSON.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Delegation {
    pub delegation_id: String,
    pub caller_id: Uuid,
    pub callee_id: Uuid,
    pub task_preview: String,
    pub status: DelegationStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub deadline: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_preview: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
    pub retry_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

pub struct NewDelegation<'a> {
    pub delegation_id: &'a str,
    pub caller_id: Uuid,
    pub callee_id: Uuid,
    pub task_preview: &'a str,
    pub status: DelegationStatus,
    pub deadline_in: Duration,
    pub idempotency_key: Option<&'a str>,
}

/// Inserts the row unless its id, or its caller's idempotency key, is taken; returns
/// whether it was inserted.
pub async fn insert(conn: &mut PgConnection, d: &NewDelegation<'_>) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO delegations (delegation_id, caller_id, callee_id, task_preview, status, deadline, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 second', $7)
         ON CONFLICT DO NOTHING",
    )
    .bind(d.delegation_id)
    .bind(d.caller_id)
    .bind(d.callee_id)
    .bind(d.task_preview)
    .bind(d.status)
    .bind(d.deadline_in.as_secs_f64())
    .bind(d.idempotency_key)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

pub async fn lock(conn: &mut PgConnection, id: &str) -> Result<Option<Delegation>> {
    Ok(sqlx::query_as(concat!("SELECT ", columns!(), " FROM delegations WHERE delegation_id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

pub async fn lock_by_key(conn: &mut PgConnection, caller_id: Uuid, key: &str) -> Result<Option<Delegation>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM delegations WHERE caller_id = $1 AND idempotency_key = $2 FOR UPDATE"
    ))
    .bind(caller_id)
    .bind(key)
    .fetch_optional(conn)
    .await?)
}

pub async fn delete(conn: &mut PgConnection, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM delegations WHERE delegation_id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// Writes a status the caller has checked is a forward move.
pub async fn set_status(
    conn: &mut PgConnection,
    id: &str,
    status: DelegationStatus,
    result_preview: Option<&str>,
    error_detail: Option<&str>,
) -> Result<Delegation> {
    Ok(sqlx::query_as(concat!(
        "UPDATE delegations SET status = $2, result_preview = coalesce($3, result_preview),
                error_detail = coalesce($4, error_detail), updated_at = now()
          WHERE delegation_id = $1 RETURNING ",
        columns!(),
        ""
    ))
    .bind(id)
    .bind(status)
    .bind(result_preview)
    .bind(error_detail)
    .fetch_one(conn)
    .await?)
}

pub async fn heartbeat(conn: &mut PgConnection, id: &str) -> Result<()> {
    sqlx::query("UPDATE delegations SET last_heartbeat = now(), updated_at = now() WHERE delegation_id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A workspace's delegations, as caller or callee, newest first.
pub async fn of_workspace<'e>(db: impl PgExecutor<'e>, workspace_id: Uuid, limit: i64) -> Result<Vec<Delegation>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM delegations WHERE caller_id = $1 OR callee_id = $1
          ORDER BY created_at DESC, delegation_id LIMIT $2"
    ))
    .bind(workspace_id)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Rows in any of `statuses`, newest first.
pub async fn with_status<'e>(
    db: impl PgExecutor<'e>,
    statuses: &[DelegationStatus],
    limit: i64,
) -> Result<Vec<Delegation>> {
    let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM delegations WHERE status = ANY($1) ORDER BY created_at DESC, delegation_id LIMIT $2"
    ))
    .bind(&names)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

pub async fn counts<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as("SELECT status, count(*) FROM delegations GROUP BY status").fetch_all(db).await?)
}

/// In-flight rows the sweep must judge: past their deadline, or in progress with a
/// heartbeat older than `stuck_after` (never a NULL heartbeat). Ids only; each is then
/// judged again under its row lock.
pub async fn overdue<'e>(db: impl PgExecutor<'e>, stuck_after: Duration, limit: i64) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT delegation_id FROM delegations
          WHERE status IN ('queued', 'dispatched', 'in_progress')
            AND (deadline < now()
                 OR (status = 'in_progress' AND last_heartbeat < now() - $1 * interval '1 second'))
          ORDER BY created_at LIMIT $2",
    )
    .bind(stuck_after.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Whether the locked row is past its deadline, and how long since its heartbeat, by the
/// database's clock.
pub async fn age(conn: &mut PgConnection, id: &str) -> Result<(bool, Option<f64>)> {
    Ok(sqlx::query_as(
        "SELECT deadline < now(), extract(epoch FROM now() - last_heartbeat)::float8
           FROM delegations WHERE delegation_id = $1",
    )
    .bind(id)
    .fetch_one(conn)
    .await?)
}
