use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{Op, OpKind, OpStatus};
use crate::{Error, Result};

/// The select-list item that announces the op row in scope on channel `$n` at commit,
/// in the payload `ops::announce` sends (`<op id> <workspace id>`).
macro_rules! announced {
    ($n:literal) => {
        concat!("pg_notify($", $n, ", id::text || ' ' || workspace_id::text)::text AS notified")
    };
}

/// The columns of [`Op`], unqualified.
macro_rules! columns {
    () => {
        "id, seq, workspace_id, kind, reason, status, attempts, max_attempts, last_error, result, requested_by, \
         reset_session, upgrade_image, lease, lease_until, claimed_by, task_id, next_attempt_at, created_at, started_at, finished_at, updated_at"
    };
}

/// The statement that records the attempt a claim begins, for the op row `u` it returns.
macro_rules! opened_attempt {
    () => {
        "INSERT INTO op_attempts (op_id, attempt, worker) SELECT id, attempts, claimed_by FROM u"
    };
}

/// The statement that ends the open attempt of the op row `u` it returns, if any (a queued
/// op has none), with an outcome and an error (SQL expressions).
macro_rules! closed_attempt {
    ($outcome:literal, $error:literal) => {
        concat!(
            "UPDATE op_attempts SET finished_at = now(), outcome = ",
            $outcome,
            ", error = ",
            $error,
            " FROM u WHERE op_attempts.op_id = u.id AND op_attempts.finished_at IS NULL"
        )
    };
}

pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Op>> {
    Ok(sqlx::query_as::<_, Op>(concat!("SELECT ", columns!(), " FROM workspace_ops WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?)
}

pub async fn list_for_workspace<'e>(db: impl PgExecutor<'e>, workspace_id: Uuid, limit: i64) -> Result<Vec<Op>> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "SELECT ",
        columns!(),
        " FROM workspace_ops WHERE workspace_id = $1 ORDER BY seq DESC LIMIT $2"
    ))
    .bind(workspace_id)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Whether any op of the workspace is still queued or running.
pub async fn has_unfinished<'e>(db: impl PgExecutor<'e>, workspace_id: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM workspace_ops WHERE workspace_id = $1 AND status IN ('queued', 'running'))",
    )
    .bind(workspace_id)
    .fetch_one(db)
    .await?)
}

/// The workspace's oldest unfinished op: the only one allowed a task.
pub async fn head(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Option<Op>> {
    Ok(heads(conn, &[workspace_id]).await?.pop())
}

/// [`head`] of each of the workspaces, in one statement; a workspace with no unfinished op
/// has none.
pub async fn heads(conn: &mut PgConnection, workspace_ids: &[Uuid]) -> Result<Vec<Op>> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "SELECT h.* FROM unnest($1::uuid[]) AS w(ws_id),
                LATERAL (SELECT ",
        columns!(),
        " FROM workspace_ops WHERE workspace_id = w.ws_id AND status IN ('queued', 'running')
                          ORDER BY seq LIMIT 1) h"
    ))
    .bind(workspace_ids)
    .fetch_all(conn)
    .await?)
}

/// The newest queued provision or restart of the workspace, which a restart request joins.
pub async fn queued_start(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Option<Op>> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "SELECT ",
        columns!(),
        " FROM workspace_ops
          WHERE workspace_id = $1 AND status = 'queued' AND kind IN ('provision', 'restart')
          ORDER BY seq DESC LIMIT 1"
    ))
    .bind(workspace_id)
    .fetch_optional(conn)
    .await?)
}

/// ORs a restart request's flags into an op that has not started yet (a joining request
/// must not lose its ask).
pub async fn add_flags(conn: &mut PgConnection, id: Uuid, reset_session: bool, upgrade_image: bool) -> Result<Op> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "UPDATE workspace_ops SET reset_session = reset_session OR $2, upgrade_image = upgrade_image OR $3,
                updated_at = now()
          WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(reset_session)
    .bind(upgrade_image)
    .fetch_one(conn)
    .await?)
}

pub async fn insert(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    kind: OpKind,
    reason: &str,
    max_attempts: i32,
    requested_by: &str,
) -> Result<Op> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "INSERT INTO workspace_ops (id, workspace_id, kind, reason, status, max_attempts, requested_by)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6) RETURNING ",
        columns!()
    ))
    .bind(Uuid::new_v4())
    .bind(workspace_id)
    .bind(kind)
    .bind(reason)
    .bind(max_attempts)
    .bind(requested_by)
    .fetch_one(conn)
    .await?)
}

/// A queued op to insert already delivered by its task: the first op of a workspace, which
/// is its head from the start.
pub struct Delivered<'a> {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub requested_by: &'a str,
    pub task_id: &'a str,
}

/// Inserts queued ops of one kind already delivered by their tasks, in one statement, and
/// announces each on `channel` at commit; returns them in the order given.
pub async fn insert_delivered(
    conn: &mut PgConnection,
    ops: &[Delivered<'_>],
    kind: OpKind,
    reason: &str,
    max_attempts: i32,
    channel: &str,
) -> Result<Vec<Op>> {
    let ids: Vec<Uuid> = ops.iter().map(|o| o.id).collect();
    let workspaces: Vec<Uuid> = ops.iter().map(|o| o.workspace_id).collect();
    let requested_by: Vec<&str> = ops.iter().map(|o| o.requested_by).collect();
    let tasks: Vec<&str> = ops.iter().map(|o| o.task_id).collect();
    let mut inserted = sqlx::query_as::<_, Op>(concat!(
        "WITH i AS (
             INSERT INTO workspace_ops (id, workspace_id, kind, reason, status, max_attempts, requested_by, task_id)
             SELECT r.id, r.workspace_id, $5, $6, 'queued', $7, r.requested_by, r.task_id
               FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])
                    WITH ORDINALITY AS r(id, workspace_id, requested_by, task_id, n)
              ORDER BY r.n
             RETURNING ",
        columns!(),
        ") SELECT ",
        columns!(),
        ", ",
        announced!(8),
        " FROM i"
    ))
    .bind(&ids)
    .bind(&workspaces)
    .bind(&requested_by)
    .bind(&tasks)
    .bind(kind)
    .bind(reason)
    .bind(max_attempts)
    .bind(channel)
    .fetch_all(conn)
    .await?;
    // RETURNING promises no order; callers pair ops with their requests by position.
    inserted.sort_by_key(|o| ids.iter().position(|id| *id == o.id));
    Ok(inserted)
}

/// Cancels the workspace's queued provisions and restarts, returning them.
pub async fn cancel_queued_starts(conn: &mut PgConnection, workspace_id: Uuid, why: &str) -> Result<Vec<Op>> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "UPDATE workspace_ops SET status = 'canceled', last_error = $2, finished_at = now(), updated_at = now()
          WHERE workspace_id = $1 AND status = 'queued' AND kind IN ('provision', 'restart')
          RETURNING ",
        columns!()
    ))
    .bind(workspace_id)
    .bind(why)
    .fetch_all(conn)
    .await?)
}

/// An operator's cancel of a queued or running op: final at once, its lease bumped so a
/// running holder is fenced, its open attempt closed with `why`; announced on `channel`.
pub async fn cancel_by_operator(conn: &mut PgConnection, id: Uuid, why: &str, channel: &str) -> Result<Op> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "WITH u AS (
             UPDATE workspace_ops
                SET status = 'canceled', lease = lease + 1, lease_until = NULL, last_error = $2,
                    finished_at = now(), updated_at = now()
              WHERE id = $1 AND status IN ('queued', 'running') RETURNING ",
        columns!(),
        "),
         a AS (",
        closed_attempt!("'canceled'", "$2"),
        ")
         SELECT ",
        columns!(),
        ", ",
        announced!(3),
        " FROM u"
    ))
    .bind(id)
    .bind(why)
    .bind(channel)
    .fetch_one(conn)
    .await?)
}

/// The workspace's unfinished op with exactly this reason (an operator's pending retry).
pub async fn unfinished_with_reason(conn: &mut PgConnection, workspace_id: Uuid, reason: &str) -> Result<Option<Op>> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "SELECT ",
        columns!(),
        " FROM workspace_ops
          WHERE workspace_id = $1 AND status IN ('queued', 'running') AND reason = $2 ORDER BY seq LIMIT 1"
    ))
    .bind(workspace_id)
    .bind(reason)
    .fetch_optional(conn)
    .await?)
}

/// Names the apalis task that delivers the op (`None`: no task delivers it).
pub async fn set_task(conn: &mut PgConnection, id: Uuid, task_id: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE workspace_ops SET task_id = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(task_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn workspace_of<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar("SELECT workspace_id FROM workspace_ops WHERE id = $1").bind(id).fetch_optional(db).await?)
}

pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Op>> {
    Ok(sqlx::query_as::<_, Op>(concat!("SELECT ", columns!(), " FROM workspace_ops WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// A claim: the op runs, with one more attempt and a new lease owned by `claimed_by` for `ttl`.
pub async fn mark_running(conn: &mut PgConnection, id: Uuid, ttl: Duration, claimed_by: &str) -> Result<Op> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "WITH lost AS (
             UPDATE op_attempts SET finished_at = now(), outcome = 'lost',
                    error = 'the lease lapsed before the attempt ended; another claim took the op over'
              WHERE op_id = $1 AND finished_at IS NULL),
         u AS (
             UPDATE workspace_ops
                SET status = 'running', attempts = attempts + 1, lease = lease + 1,
                    lease_until = clock_timestamp() + $2 * interval '1 millisecond', claimed_by = $3,
                    started_at = coalesce(started_at, now()), next_attempt_at = NULL, updated_at = now()
              WHERE id = $1 RETURNING ",
        columns!(),
        "),
         a AS (",
        opened_attempt!(),
        ") SELECT ",
        columns!(),
        " FROM u"
    ))
    .bind(id)
    .bind(ttl.as_millis() as f64)
    .bind(claimed_by)
    .fetch_one(conn)
    .await?)
}

/// `ops::claim`'s one-statement path, for any number of deliveries at once. Binds: op ids
/// (uuid[]) and the task ids delivering them (text[], in the same order), lease ms, worker, the backends
/// the worker reaches (text[]), whether it starts instances, the backends other live
/// workers advertise (text[]; any at all means another worker starts instances), the
/// notification channel, the Docker engines the worker serves (text[]), whether a fresh
/// start must first be weighed against other engines' load. Returns the
/// columns of each op claimed and its workspace's as `ws_*`; an op not returned is left to
/// the exact path. A paused kind is not claimed
/// here (the exact path re-delivers it later); the claim opens its `op_attempts` row.
///
/// An op of a workspace recorded on a Docker engine the worker does not serve is never
/// taken here, nor a fresh start another engine might take instead: the exact path decides.
///
/// The workspace rows are locked first, as everywhere, in id order (so two rounds locking
/// several never deadlock), and re-read by the lock; the op's
/// conditions are re-checked on its newest version by the update. Only "no earlier op is
/// unfinished" is read from the statement's snapshot, which can only err towards refusing.
pub const CLAIM_DIRECTLY: &str = concat!(
    "WITH r AS (SELECT * FROM unnest($1::uuid[], $2::text[]) AS r(op_id, task_id)),
     t AS (
         SELECT id AS ws_id, status AS ws_status, backend AS ws_backend, instance_ref AS ws_instance_ref,
                external AS ws_external, docker_engine AS ws_docker_engine
           FROM workspaces WHERE id IN (SELECT workspace_id FROM workspace_ops WHERE id = ANY($1))
          ORDER BY id
            FOR UPDATE),
     u AS (
         UPDATE workspace_ops o
            SET status = 'running', attempts = o.attempts + 1, lease = o.lease + 1,
                lease_until = clock_timestamp() + $3 * interval '1 millisecond', claimed_by = $4,
                started_at = coalesce(o.started_at, now()), next_attempt_at = NULL, updated_at = now()
           FROM t, r
          WHERE o.id = ANY($1) AND o.id = r.op_id AND o.workspace_id = t.ws_id AND o.task_id = r.task_id AND o.status = 'queued'
            AND NOT EXISTS (SELECT 1 FROM workspace_ops p
                             WHERE p.workspace_id = o.workspace_id AND p.seq < o.seq AND p.status IN ('queued', 'running'))
            AND NOT (o.kind IN ('stop', 'restart') AND t.ws_backend IS NOT NULL
                     AND NOT (t.ws_backend = ANY($5)) AND t.ws_backend = ANY($7))
            AND NOT (o.kind IN ('provision', 'restart') AND NOT t.ws_external AND NOT $6 AND cardinality($7::text[]) > 0)
            AND NOT (t.ws_docker_engine IS NOT NULL AND NOT (t.ws_docker_engine = ANY($9::text[])))
            AND NOT ($10 AND o.kind IN ('provision', 'restart') AND NOT t.ws_external AND t.ws_docker_engine IS NULL)
            AND NOT EXISTS (SELECT 1 FROM paused_queues q WHERE q.kind = o.kind)
      RETURNING o.*),
     a AS (",
    opened_attempt!(),
    ")
     SELECT ",
    columns!(),
    ", ws_status, ws_backend, ws_instance_ref, ws_external, ws_docker_engine, ",
    announced!(8),
    " FROM u JOIN t ON t.ws_id = u.workspace_id"
);

/// Shows why a queued op is not being run (`last_error`), without using up an attempt.
/// Returns how long the op has existed, by the database's clock.
pub async fn set_waiting(conn: &mut PgConnection, id: Uuid, why: &str) -> Result<Duration> {
    let secs: Option<f64> = sqlx::query_scalar(
        "UPDATE workspace_ops SET last_error = $2, updated_at = now() WHERE id = $1 AND status = 'queued'
         RETURNING extract(epoch FROM now() - created_at)::float8",
    )
    .bind(id)
    .bind(why)
    .fetch_optional(conn)
    .await?;
    Ok(Duration::from_secs_f64(secs.unwrap_or(0.0).max(0.0)))
}

/// How long the running op's current lease still has, by the database's clock; `None` when
/// the op is not running or its lease has expired.
pub async fn lease_left(conn: &mut PgConnection, id: Uuid) -> Result<Option<Duration>> {
    let ms: Option<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM lease_until - clock_timestamp()) * 1000)::float8 FROM workspace_ops
          WHERE id = $1 AND status = 'running' AND lease_until > clock_timestamp()",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64)))
}

/// Extends the lease of claim `lease` by `ttl` from now; false when the claim no longer
/// owns the op (it finished, or another worker took it over).
pub async fn renew_lease<'e>(db: impl PgExecutor<'e>, id: Uuid, lease: i64, ttl: Duration) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE workspace_ops SET lease_until = clock_timestamp() + $3 * interval '1 millisecond'
          WHERE id = $1 AND lease = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(lease)
    .bind(ttl.as_millis() as f64)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// How long until the op's next attempt is due, by the database's clock.
pub async fn due_in(conn: &mut PgConnection, id: Uuid) -> Result<Option<Duration>> {
    let ms: Option<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM next_attempt_at - clock_timestamp()) * 1000)::float8 FROM workspace_ops
          WHERE id = $1 AND next_attempt_at > clock_timestamp()",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64)))
}

/// Locks the op if `lease` still owns it: running, and not claimed again since.
pub async fn lock_owned(conn: &mut PgConnection, id: Uuid, lease: i64) -> Result<bool> {
    let owned: Option<i64> = sqlx::query_scalar(
        "SELECT lease FROM workspace_ops WHERE id = $1 AND lease = $2 AND status = 'running' FOR UPDATE",
    )
    .bind(id)
    .bind(lease)
    .fetch_optional(conn)
    .await?;
    Ok(owned.is_some())
}

/// Ends the attempt of claim `lease` with a final `status` (`succeeded` stores `text` as
/// the result; `failed` and `canceled` as the error) and announces it on `channel` at
/// commit. `None` when the claim no longer owns the op.
pub async fn mark_final(
    conn: &mut PgConnection,
    id: Uuid,
    lease: i64,
    status: OpStatus,
    text: &str,
    channel: &str,
) -> Result<Option<Op>> {
    Ok(mark_final_many(conn, &[(id, lease, status, text)], channel).await?.pop())
}

/// [`mark_final`] for several claims in one statement: (op id, lease, status, text) each.
/// Returns the ops it ended, in no particular order; a claim missing from them is fenced.
pub async fn mark_final_many(
    conn: &mut PgConnection,
    endings: &[(Uuid, i64, OpStatus, &str)],
    channel: &str,
) -> Result<Vec<Op>> {
    if let Some((id, _, status, _)) = endings.iter().find(|(_, _, status, _)| !status.is_final()) {
        return Err(Error::Internal(format!("op {id} cannot end as {status}")));
    }
    let ids: Vec<Uuid> = endings.iter().map(|e| e.0).collect();
    let leases: Vec<i64> = endings.iter().map(|e| e.1).collect();
    let statuses: Vec<&str> = endings.iter().map(|e| e.2.as_str()).collect();
    let texts: Vec<&str> = endings.iter().map(|e| e.3).collect();
    Ok(sqlx::query_as::<_, Op>(concat!(
        "WITH r AS (SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[]) AS r(op_id, op_lease, ending, text)),
         u AS (
             UPDATE workspace_ops o
                SET status = r.ending,
                    result = CASE WHEN r.ending = 'succeeded' THEN r.text ELSE o.result END,
                    last_error = CASE WHEN r.ending = 'succeeded' THEN o.last_error ELSE r.text END,
                    finished_at = now(), updated_at = now()
               FROM r
              WHERE o.id = ANY($1) AND o.id = r.op_id AND o.lease = r.op_lease AND o.status = 'running' RETURNING ",
        columns!(),
        "),
         a AS (",
        closed_attempt!("u.status", "CASE WHEN u.status = 'succeeded' THEN NULL ELSE u.last_error END"),
        " AND op_attempts.op_id = ANY($1)) SELECT ",
        columns!(),
        ", ",
        announced!(5),
        " FROM u"
    ))
    .bind(&ids)
    .bind(&leases)
    .bind(&statuses)
    .bind(&texts)
    .bind(channel)
    .fetch_all(conn)
    .await?)
}

/// Back to `queued` after claim `lease`'s attempt failed, to run again after `delay`,
/// delivered by the (delayed) task `task_id`; announced on `channel` at commit. `None` when
/// the claim no longer owns the op.
pub async fn mark_retrying(
    conn: &mut PgConnection,
    id: Uuid,
    lease: i64,
    error: &str,
    delay: Duration,
    task_id: &str,
    channel: &str,
) -> Result<Option<Op>> {
    Ok(sqlx::query_as::<_, Op>(concat!(
        "WITH u AS (
             UPDATE workspace_ops
                SET status = 'queued', last_error = $3, task_id = $5,
                    next_attempt_at = now() + $4 * interval '1 millisecond', updated_at = now()
              WHERE id = $1 AND lease = $2 AND status = 'running' RETURNING ",
        columns!(),
        "),
         a AS (",
        closed_attempt!("'retrying'", "$3"),
        ") SELECT ",
        columns!(),
        ", ",
        announced!(6),
        " FROM u"
    ))
    .bind(id)
    .bind(lease)
    .bind(error)
    .bind(delay.as_millis() as f64)
    .bind(task_id)
    .bind(channel)
    .fetch_optional(conn)
    .await?)
}

/// The error of the workspace's newest unfinished start that has failed an attempt.
pub async fn last_start_error(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT last_error FROM workspace_ops WHERE workspace_id = $1 AND status IN ('queued', 'running')
            AND kind IN ('provision', 'restart') AND last_error IS NOT NULL ORDER BY seq DESC LIMIT 1",
    )
    .bind(workspace_id)
    .fetch_optional(conn)
    .await?)
}

/// Deletes up to `batch` ops finished more than `older_than` ago; returns how many.
pub async fn purge_finished<'e>(db: impl PgExecutor<'e>, older_than: Duration, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM workspace_ops WHERE id IN (
             SELECT id FROM workspace_ops WHERE finished_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
    )
    .bind(older_than.as_millis() as f64)
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
