//! `activity_logs` (every workspace's log and inbox) and `inbox_heads` (the per-workspace
//! row writers lock, which also holds the state of the workspace's push drain).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;
use crate::notify::INBOX_CHANNEL;
use crate::store::apalis::{NewTask, insert_task_into};

macro_rules! columns {
    () => {
        "id, workspace_id, activity_type, method, source_id, target_id, summary, request_body, \
     response_body, status, error_detail, duration_ms, created_at, delivery, delivery_attempts, delivered_at"
    };
}

/// One row. `id` comes first: agents reading the JSON with line tools rely on it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Activity {
    pub id: i64,
    pub workspace_id: Uuid,
    pub activity_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<Value>,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i32>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    pub delivery_attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A row to write.
#[derive(Debug, Clone, Default)]
pub struct NewActivity {
    pub workspace_id: Uuid,
    pub activity_type: String,
    pub method: Option<String>,
    pub source_id: Option<Uuid>,
    pub target_id: Option<Uuid>,
    pub summary: Option<String>,
    pub request_body: Option<Value>,
    pub response_body: Option<Value>,
    pub status: String,
    pub error_detail: Option<String>,
    pub duration_ms: Option<i32>,
    /// Pushed to the agent by an InboxPush task (`pending`), or not (`None`).
    pub push: bool,
}

/// Takes the workspace's head row lock (creating the row on first use) and returns the
/// drain task due, if any. Held until the caller commits.
pub async fn lock_head(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO inbox_heads (workspace_id) VALUES ($1)
         ON CONFLICT (workspace_id) DO UPDATE SET workspace_id = excluded.workspace_id
         RETURNING drain_task_id",
    )
    .bind(workspace_id)
    .fetch_one(conn)
    .await?)
}

/// Takes the workspace's head row lock as [`lock_head`] does, then writes the row, in one
/// statement: the insert reads the locked head, so the row's id is drawn under the lock and
/// ids reach readers in commit order. A row that is not pushed is announced on
/// [`INBOX_CHANNEL`] at commit, for readers waiting on the log. A pushed row comes with
/// `drain`, the task that drains the workspace if none is due yet: the same statement then
/// inserts it and names it on the head, so a push costs one statement whether or not it
/// arms a drain. Returns the row id and whether `drain` was inserted.
pub async fn insert_at_head<'e>(
    db: impl PgExecutor<'e>,
    a: &NewActivity,
    drain: Option<&NewTask>,
) -> Result<(i64, bool)> {
    Ok(sqlx::query_as(concat!(
        "WITH h AS (
             INSERT INTO inbox_heads AS cur (workspace_id, drain_task_id) VALUES ($1, $14)
             ON CONFLICT (workspace_id) DO UPDATE SET drain_task_id = coalesce(cur.drain_task_id, excluded.drain_task_id)
             RETURNING workspace_id, drain_task_id),
         i AS (
             INSERT INTO activity_logs (workspace_id, activity_type, method, source_id, target_id, summary,
                                        request_body, response_body, status, error_detail, duration_ms, delivery)
             SELECT h.workspace_id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $12 THEN 'pending' END FROM h
             RETURNING id),
         -- A row that is read rather than pushed wakes its waiting readers at commit.
         woken AS (SELECT pg_notify($13, h.workspace_id::text) FROM h, i WHERE NOT $12),
         -- The head names the new task only when no drain was due.
         armed AS (",
        insert_task_into!(),
        " SELECT $14, $15, $16, 'Pending', 0, $17, now(), 0 FROM h WHERE h.drain_task_id = $14 RETURNING id)
         SELECT i.id, EXISTS (SELECT 1 FROM armed) FROM i CROSS JOIN h LEFT JOIN woken ON true"
    ))
    .bind(a.workspace_id)
    .bind(&a.activity_type)
    .bind(&a.method)
    .bind(a.source_id)
    .bind(a.target_id)
    .bind(&a.summary)
    .bind(&a.request_body)
    .bind(&a.response_body)
    .bind(&a.status)
    .bind(&a.error_detail)
    .bind(a.duration_ms)
    .bind(a.push)
    .bind(INBOX_CHANNEL)
    .bind(drain.map(|t| t.id.as_str()))
    .bind(drain.map(|t| t.queue))
    .bind(drain.map(|t| t.body.as_slice()))
    .bind(drain.map(|t| t.max_attempts))
    .fetch_one(db)
    .await?)
}

/// Writes several rows that are not pushed (no drain to arm), of one workspace or several,
/// in one statement, but only those whose workspace's head no other writer holds: it takes
/// those heads (locked in workspace id order, creating the ones not yet there), and only
/// then draws the rows' ids, so ids still reach readers in commit order. It never waits
/// for a held head, so one busy workspace does not hold up the others' rows. Returns, per
/// row in the order given, its id, or `None` for a row not written because its head was
/// held (the caller writes it with [`insert_at_head`], which waits its turn). Announcing
/// the rows to waiting readers is the caller's ([`crate::notify::Announcer`]).
pub async fn insert_at_free_heads<'e>(db: impl PgExecutor<'e>, rows: &[NewActivity]) -> Result<Vec<Option<i64>>> {
    let text = |f: fn(&NewActivity) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
    let workspaces: Vec<Uuid> = rows.iter().map(|a| a.workspace_id).collect();
    let sources: Vec<Option<Uuid>> = rows.iter().map(|a| a.source_id).collect();
    let targets: Vec<Option<Uuid>> = rows.iter().map(|a| a.target_id).collect();
    let requests: Vec<Option<&Value>> = rows.iter().map(|a| a.request_body.as_ref()).collect();
    let responses: Vec<Option<&Value>> = rows.iter().map(|a| a.response_body.as_ref()).collect();
    let durations: Vec<Option<i32>> = rows.iter().map(|a| a.duration_ms).collect();
    let written: Vec<(i64, i64)> = sqlx::query_as(
        "WITH r AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::text[], $7::jsonb[],
                                  $8::jsonb[], $9::text[], $10::text[], $11::int[])
                    WITH ORDINALITY AS r(workspace_id, activity_type, method, source_id, target_id, summary,
                                         request_body, response_body, status, error_detail, duration_ms, n)),
         -- Heads not there yet: ours once inserted. Heads there: ours unless someone holds
         -- them. (A head inserted here is not seen by the second, so none is taken twice;
         -- and an existing head is not inserted, since that would wait for its holder.)
         fresh AS (
             INSERT INTO inbox_heads (workspace_id)
             SELECT DISTINCT workspace_id FROM r
              WHERE NOT EXISTS (SELECT 1 FROM inbox_heads x WHERE x.workspace_id = r.workspace_id)
              ORDER BY workspace_id
             ON CONFLICT (workspace_id) DO NOTHING
             RETURNING workspace_id),
         free AS (
             SELECT workspace_id FROM inbox_heads
              WHERE workspace_id = ANY($1) ORDER BY workspace_id FOR UPDATE SKIP LOCKED),
         h AS (SELECT * FROM fresh UNION ALL SELECT * FROM free),
         -- The ids, each tied to its row. The init plan (count) reads all of h first, so
         -- every head is taken before the first id is drawn.
         k AS MATERIALIZED (
             SELECT r.n, nextval(pg_get_serial_sequence('activity_logs', 'id')) AS id
               FROM r WHERE (SELECT count(*) FROM h) > 0 AND r.workspace_id IN (SELECT workspace_id FROM h)
              ORDER BY r.n),
         i AS (
             INSERT INTO activity_logs (id, workspace_id, activity_type, method, source_id, target_id, summary,
                                        request_body, response_body, status, error_detail, duration_ms)
             SELECT k.id, r.workspace_id, r.activity_type, r.method, r.source_id, r.target_id, r.summary,
                    r.request_body, r.response_body, r.status, r.error_detail, r.duration_ms
               FROM k JOIN r USING (n)
             RETURNING id)
         SELECT k.n, i.id FROM i JOIN k USING (id)",
    )
    .bind(&workspaces)
    .bind(text(|a| Some(a.activity_type.as_str())))
    .bind(text(|a| a.method.as_deref()))
    .bind(&sources)
    .bind(&targets)
    .bind(text(|a| a.summary.as_deref()))
    .bind(&requests)
    .bind(&responses)
    .bind(text(|a| Some(a.status.as_str())))
    .bind(text(|a| a.error_detail.as_deref()))
    .bind(&durations)
    .fetch_all(db)
    .await?;
    let mut out: Vec<Option<i64>> = rows.iter().map(|_| None).collect();
    for (n, id) in written {
        match usize::try_from(n - 1).ok().and_then(|at| out.get_mut(at)) {
            Some(slot @ None) => *slot = Some(id),
            _ => return Err(crate::Error::Internal(format!("an activity round returned row {n} of {}", rows.len()))),
        }
    }
    Ok(out)
}

pub async fn get<'e>(db: impl PgExecutor<'e>, id: i64) -> Result<Option<Activity>> {
    Ok(sqlx::query_as(concat!("SELECT ", columns!(), " FROM activity_logs WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?)
}

/// The workspace of row `id`, if the row still exists.
pub async fn owner<'e>(db: impl PgExecutor<'e>, id: i64) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar("SELECT workspace_id FROM activity_logs WHERE id = $1").bind(id).fetch_optional(db).await?)
}

/// Rows after `after` in ascending order (the poller's read), or the newest first.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    workspace_id: Uuid,
    activity_type: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Activity>> {
    // Two statements rather than a dynamic ORDER BY: both stay static SQL.
    let q = if after.is_some() {
        sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM activity_logs WHERE workspace_id = $1 AND ($2::text IS NULL OR activity_type = $2)
               AND id > $3 ORDER BY id ASC LIMIT $4"
        ))
    } else {
        sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM activity_logs WHERE workspace_id = $1 AND ($2::text IS NULL OR activity_type = $2)
               AND $3::bigint IS NULL ORDER BY id DESC LIMIT $4"
        ))
    };
    Ok(q.bind(workspace_id).bind(activity_type).bind(after).bind(limit).fetch_all(db).await?)
}

/// How many pending items a drain reads at once ([`pending`]), each held in memory with its
/// request body until pushed.
pub const PENDING_BATCH: usize = 8;

/// The workspace's oldest items still waiting for push delivery, oldest first, at most
/// `$2`. Only `activity_logs_pending_idx` can serve it (migration `20261207000002`).
macro_rules! pending_items {
    () => {
        "SELECT id, method, request_body, response_body, status, error_detail, delivery_attempts,
                greatest(extract(epoch FROM next_attempt_at - clock_timestamp()), 0)::float8 AS wait_secs
           FROM activity_logs WHERE workspace_id = $1 AND delivery = 'pending' ORDER BY id LIMIT $2"
    };
}

/// [`pending`]'s statement; binds $1, the workspace, and $2, [`PENDING_BATCH`].
pub const PENDING_ITEMS: &str = pending_items!();

/// The workspace's oldest items waiting for push delivery, at most [`PENDING_BATCH`],
/// oldest first.
pub async fn pending<'e>(db: impl PgExecutor<'e>, workspace_id: Uuid) -> Result<Vec<PendingItem>> {
    Ok(sqlx::query_as(PENDING_ITEMS).bind(workspace_id).bind(PENDING_BATCH as i64).fetch_all(db).await?)
}

/// [`pending`], and when there are none, the drain holding lease `lease` stands down: the
/// head names no drain task any more, so the next pushed item arms one. The caller must
/// have taken the head lock in an earlier statement of its transaction ([`renew_drain`]):
/// writers of pushed items hold it, so this statement's snapshot, taken after the lock,
/// sees every item whose writer found the drain still due and so armed none.
pub async fn pending_or_stand_down(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    lease: i64,
) -> Result<Vec<PendingItem>> {
    Ok(sqlx::query_as(concat!(
        "WITH p AS (",
        pending_items!(),
        "), down AS (
             UPDATE inbox_heads SET drain_task_id = NULL, drain_lease_until = NULL, drain_claimed_by = NULL
              WHERE workspace_id = $1 AND drain_lease = $3 AND NOT EXISTS (SELECT 1 FROM p))
         SELECT * FROM p ORDER BY id"
    ))
    .bind(workspace_id)
    .bind(PENDING_BATCH as i64)
    .bind(lease)
    .fetch_all(conn)
    .await?)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingItem {
    pub id: i64,
    pub method: Option<String>,
    pub request_body: Option<Value>,
    pub response_body: Option<Value>,
    pub status: String,
    pub error_detail: Option<String>,
    pub delivery_attempts: i32,
    /// Until its next attempt is due (0 when due now).
    pub wait_secs: Option<f64>,
}

/// A successful push to record.
pub struct Delivered {
    pub item_id: i64,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub http_status: i32,
    /// The agent's answer, kept as the row's response unless the row has one of its own (a
    /// delegation result carries its text there).
    pub answer: Option<Value>,
}

/// Records successful pushes of one drain in one statement, fenced on the drain's lease,
/// which it renews for `ttl`: each attempt and each item's delivery. False (and nothing
/// written) when the drain was taken over.
pub async fn record_delivered<'e>(
    db: impl PgExecutor<'e>,
    workspace_id: Uuid,
    lease: i64,
    ttl: Duration,
    worker: &str,
    pushes: &[Delivered],
) -> Result<bool> {
    let column = |f: fn(&Delivered) -> DateTime<Utc>| pushes.iter().map(f).collect::<Vec<_>>();
    Ok(sqlx::query_scalar(
        "WITH r AS (
             UPDATE inbox_heads SET drain_lease_until = clock_timestamp() + $3 * interval '1 millisecond'
              WHERE workspace_id = $1 AND drain_lease = $2 RETURNING workspace_id),
         p AS (
             SELECT * FROM unnest($5::int8[], $6::int4[], $7::timestamptz[], $8::timestamptz[], $9::int4[], $10::jsonb[])
                        AS p(item_id, attempt, started_at, finished_at, http_status, answer)
              WHERE EXISTS (SELECT 1 FROM r)),
         a AS (
             INSERT INTO inbox_delivery_attempts (item_id, attempt, started_at, finished_at, http_status, error, worker)
             SELECT item_id, attempt, started_at, finished_at, http_status, NULL, $4 FROM p ON CONFLICT DO NOTHING),
         d AS (
             UPDATE activity_logs l SET delivery = 'delivered', delivered_at = now(),
                    delivery_attempts = l.delivery_attempts + 1, next_attempt_at = NULL,
                    response_body = coalesce(l.response_body, p.answer)
               FROM p WHERE l.id = p.item_id AND l.workspace_id = $1)
         SELECT EXISTS (SELECT 1 FROM r)",
    )
    .bind(workspace_id)
    .bind(lease)
    .bind(ttl.as_millis() as f64)
    .bind(worker)
    .bind(pushes.iter().map(|p| p.item_id).collect::<Vec<_>>())
    .bind(pushes.iter().map(|p| p.attempt).collect::<Vec<_>>())
    .bind(column(|p| p.started_at))
    .bind(column(|p| p.finished_at))
    .bind(pushes.iter().map(|p| p.http_status).collect::<Vec<_>>())
    .bind(pushes.iter().map(|p| p.answer.clone()).collect::<Vec<_>>())
    .fetch_one(db)
    .await?)
}

/// Records a failed push: either the next attempt's time, or (`retry_in` = None) the end.
pub async fn mark_failed(conn: &mut PgConnection, id: i64, error: &str, retry_in: Option<Duration>) -> Result<()> {
    sqlx::query(
        "UPDATE activity_logs
            SET delivery_attempts = delivery_attempts + 1,
                delivery = CASE WHEN $3::float8 IS NULL THEN 'undeliverable' ELSE 'pending' END,
                next_attempt_at = clock_timestamp() + $3::float8 * interval '1 second',
                error_detail = CASE WHEN $3::float8 IS NULL THEN $2 ELSE error_detail END
          WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_in.map(|d| d.as_secs_f64()))
    .execute(conn)
    .await?;
    Ok(())
}

/// The workspace's agent polls now: its pending items are no longer pushed, its poller
/// reads them.
pub async fn stop_pushing(conn: &mut PgConnection, workspace_id: Uuid) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE activity_logs SET delivery = NULL, next_attempt_at = NULL
          WHERE workspace_id = $1 AND delivery = 'pending'",
    )
    .bind(workspace_id)
    .execute(conn)
    .await?
    .rows_affected())
}

pub async fn record_attempt(
    conn: &mut PgConnection,
    item_id: i64,
    attempt: i32,
    started_at: DateTime<Utc>,
    http_status: Option<i32>,
    error: Option<&str>,
    worker: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO inbox_delivery_attempts (item_id, attempt, started_at, http_status, error, worker)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(item_id)
    .bind(attempt)
    .bind(started_at)
    .bind(http_status)
    .bind(error)
    .bind(worker)
    .execute(conn)
    .await?;
    Ok(())
}

/// The push attempts of an item, in order.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Attempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub worker: Option<String>,
}

pub async fn attempts<'e>(db: impl PgExecutor<'e>, item_id: i64) -> Result<Vec<Attempt>> {
    Ok(sqlx::query_as(
        "SELECT attempt, started_at, finished_at, http_status, error, worker
           FROM inbox_delivery_attempts WHERE item_id = $1 ORDER BY attempt",
    )
    .bind(item_id)
    .fetch_all(db)
    .await?)
}

// --- the push drain's state on the head row ---------------------------------------------

/// Names a new drain task due for the workspace, ending any claim (the caller holds the
/// head lock). A drain stands down in [`pending_or_stand_down`].
pub async fn set_drain_task(conn: &mut PgConnection, workspace_id: Uuid, task_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE inbox_heads SET drain_task_id = $2, drain_lease_until = NULL, drain_claimed_by = NULL
          WHERE workspace_id = $1",
    )
    .bind(workspace_id)
    .bind(task_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Names task `next` the due one in place of `due`, without touching the running claim's
/// lease; false (nothing written) when `due` is no longer the due task.
pub async fn defer_drain(conn: &mut PgConnection, workspace_id: Uuid, due: &str, next: &str) -> Result<bool> {
    Ok(sqlx::query("UPDATE inbox_heads SET drain_task_id = $3 WHERE workspace_id = $1 AND drain_task_id = $2")
        .bind(workspace_id)
        .bind(due)
        .bind(next)
        .execute(conn)
        .await?
        .rows_affected()
        == 1)
}

pub enum DrainClaim {
    /// This task drains; writes are fenced on the lease number.
    Claimed(i64),
    /// Another task is the due one: this one is stale and ends.
    NotDue,
    /// The due task is held by a live claim (a redelivery of a running task); retry after
    /// the given time.
    Held(Duration),
}

/// Claims the workspace's drain for task `task_id` under a lease of `ttl`, in one statement.
pub async fn claim_drain<'e>(
    db: impl PgExecutor<'e>,
    workspace_id: Uuid,
    task_id: &str,
    worker: &str,
    ttl: Duration,
) -> Result<DrainClaim> {
    let row: Option<(Option<String>, Option<f64>, Option<i64>)> = sqlx::query_as(
        "WITH h AS (
             SELECT workspace_id, drain_task_id, drain_lease_until FROM inbox_heads WHERE workspace_id = $1 FOR UPDATE),
         c AS (
             UPDATE inbox_heads i SET drain_lease = i.drain_lease + 1, drain_claimed_by = $3,
                    drain_lease_until = clock_timestamp() + $4 * interval '1 millisecond'
               FROM h
              WHERE i.workspace_id = h.workspace_id AND h.drain_task_id = $2
                AND (h.drain_lease_until IS NULL OR h.drain_lease_until <= clock_timestamp())
              RETURNING i.drain_lease)
         SELECT h.drain_task_id, extract(epoch FROM h.drain_lease_until - clock_timestamp())::float8,
                (SELECT drain_lease FROM c)
           FROM h",
    )
    .bind(workspace_id)
    .bind(task_id)
    .bind(worker)
    .bind(ttl.as_millis() as f64)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some((_, _, Some(lease))) => DrainClaim::Claimed(lease),
        // Due but not claimed: a live lease holds it.
        Some((Some(due), left, None)) if due == task_id => {
            DrainClaim::Held(Duration::from_secs_f64(left.unwrap_or(0.0).max(0.0)))
        }
        _ => DrainClaim::NotDue,
    })
}

/// Locks the head and checks the claim still holds it, renewing its lease; false when the
/// drain was taken over (every write of the attempt is then dropped with the transaction).
pub async fn renew_drain(conn: &mut PgConnection, workspace_id: Uuid, lease: i64, ttl: Duration) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE inbox_heads SET drain_lease_until = clock_timestamp() + $3 * interval '1 millisecond'
          WHERE workspace_id = $1 AND drain_lease = $2",
    )
    .bind(workspace_id)
    .bind(lease)
    .bind(ttl.as_millis() as f64)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Heads whose items wait for a push but whose drain task is gone (finished, failed or
/// killed in apalis, or purged): the sweep re-arms them.
pub async fn stranded_drains<'e>(db: impl PgExecutor<'e>) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT h.workspace_id FROM inbox_heads h
          WHERE EXISTS (SELECT 1 FROM activity_logs a WHERE a.workspace_id = h.workspace_id AND a.delivery = 'pending')
            AND (h.drain_task_id IS NULL
                 OR NOT EXISTS (SELECT 1 FROM apalis.jobs j
                                 WHERE j.id = h.drain_task_id AND j.status IN ('Pending', 'Queued', 'Running')))
            AND (h.drain_lease_until IS NULL OR h.drain_lease_until < clock_timestamp())",
    )
    .fetch_all(db)
    .await?)
}

/// Deletes rows older than `older_than` in one batch, never an item still to be pushed.
pub async fn purge_older<'e>(db: impl PgExecutor<'e>, older_than: Duration, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM activity_logs WHERE id IN (
             SELECT id FROM activity_logs
              WHERE created_at < now() - $1 * interval '1 second' AND delivery IS DISTINCT FROM 'pending'
              LIMIT $2)",
    )
    .bind(older_than.as_secs_f64())
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
