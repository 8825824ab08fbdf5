use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::backend::BackendKind;
use crate::domain::workspace::ListCursor;
use crate::domain::{AgentUrl, CreateRequest, DeliveryMode, Heartbeat, Patch, Status, Workspace};
use crate::{Error, Result};

/// The columns of [`Workspace`], unqualified (every query below reads them from
/// `workspaces` alone, or through `JOIN ... USING (id)`).
macro_rules! columns {
    () => {
        "id, name, role, runtime, tier, model, parent_id, status, last_sample_error, url, delivery_mode, external, \
         max_concurrent_tasks, collapsed, backend, instance_ref, runtime_image, last_heartbeat_at, active_tasks, \
         current_task, uptime_seconds, last_error_rate, status_changed_at, created_at, updated_at, docker_engine"
    };
}

/// The columns of [`Workspace`], of the table aliased `w`: for statements that join it.
macro_rules! qualified_columns {
    () => {
        "w.id, w.name, w.role, w.runtime, w.tier, w.model, w.parent_id, w.status, w.last_sample_error, w.url, \
         w.delivery_mode, w.external, w.max_concurrent_tasks, w.collapsed, w.backend, w.instance_ref, w.runtime_image, \
         w.last_heartbeat_at, w.active_tasks, w.current_task, w.uptime_seconds, w.last_error_rate, w.status_changed_at, \
         w.created_at, w.updated_at, w.docker_engine"
    };
}

/// Locks the workspaces that exist among `ids`, in id order (so two transactions locking
/// several never deadlock), and returns them.
pub async fn lock_many(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "SELECT ",
        columns!(),
        " FROM workspaces WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// Inserts a workspace as `req` describes it, with the status it starts in.
pub async fn insert(conn: &mut PgConnection, id: Uuid, status: Status, w: &CreateRequest) -> Result<Workspace> {
    insert_many(conn, &[(id, status, w)])
        .await?
        .pop()
        .ok_or_else(|| Error::Internal(format!("inserting workspace {id} returned no row")))
}

/// [`insert`] for several workspaces in one statement; returns them in the order given.
pub async fn insert_many(conn: &mut PgConnection, rows: &[(Uuid, Status, &CreateRequest)]) -> Result<Vec<Workspace>> {
    let ids: Vec<Uuid> = rows.iter().map(|(id, _, _)| *id).collect();
    let statuses: Vec<&str> = rows.iter().map(|(_, s, _)| s.as_str()).collect();
    let field = |f: fn(&CreateRequest) -> Option<String>| rows.iter().map(|(_, _, w)| f(w)).collect::<Vec<_>>();
    let names = field(|w| Some(w.name.clone()));
    let roles = field(|w| w.role.clone());
    let runtimes = field(|w| Some(w.runtime.clone()));
    let models = field(|w| Some(w.model.clone()));
    let urls = field(|w| w.url.as_ref().map(|u| u.as_str().to_string()));
    let modes: Vec<&str> = rows.iter().map(|(_, _, w)| w.delivery_mode.as_str()).collect();
    let tiers: Vec<i32> = rows.iter().map(|(_, _, w)| w.tier).collect();
    let parents: Vec<Option<Uuid>> = rows.iter().map(|(_, _, w)| w.parent_id).collect();
    let externals: Vec<bool> = rows.iter().map(|(_, _, w)| w.external).collect();
    let max_tasks: Vec<i32> = rows.iter().map(|(_, _, w)| w.max_concurrent_tasks).collect();
    let xs: Vec<Option<f64>> = rows.iter().map(|(_, _, w)| w.canvas.map(|c| c.0)).collect();
    let ys: Vec<Option<f64>> = rows.iter().map(|(_, _, w)| w.canvas.map(|c| c.1)).collect();
    let mut inserted = sqlx::query_as::<_, Workspace>(concat!(
        "INSERT INTO workspaces (id, name, role, runtime, tier, model, parent_id, status, url, delivery_mode,
                                 external, max_concurrent_tasks, canvas_x, canvas_y)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::uuid[],
                              $8::text[], $9::text[], $10::text[], $11::bool[], $12::int[], $13::float8[], $14::float8[])
         RETURNING ",
        columns!()
    ))
    .bind(&ids)
    .bind(&names)
    .bind(&roles)
    .bind(&runtimes)
    .bind(&tiers)
    .bind(&models)
    .bind(&parents)
    .bind(&statuses)
    .bind(&urls)
    .bind(&modes)
    .bind(&externals)
    .bind(&max_tasks)
    .bind(&xs)
    .bind(&ys)
    .fetch_all(conn)
    .await?;
    // RETURNING promises no order; callers pair rows with their requests by position.
    inserted.sort_by_key(|w| ids.iter().position(|id| *id == w.id));
    Ok(inserted)
}

pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(concat!("SELECT ", columns!(), " FROM workspaces WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?)
}

/// Locks the row: every lifecycle decision about a workspace is serialised on this lock.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(concat!("SELECT ", columns!(), " FROM workspaces WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

pub async fn lock_existing(conn: &mut PgConnection, id: Uuid) -> Result<Workspace> {
    lock(conn, id).await?.ok_or_else(|| Error::workspace_not_found(id))
}

/// Every workspace that is not removed, filtered, in creation order.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    status: Option<Status>,
    parent_id: Option<Uuid>,
) -> Result<Vec<Workspace>> {
    list_page(db, status, parent_id, None, i64::MAX).await
}

/// One page of [`list`]: the rows after `after` in the same order, at most `limit` of them.
/// The order is total (`created_at`, then `id`), so a page boundary never skips or repeats
/// a row, however many rows share a timestamp.
pub async fn list_page<'e>(
    db: impl PgExecutor<'e>,
    status: Option<Status>,
    parent_id: Option<Uuid>,
    after: Option<&ListCursor>,
    limit: i64,
) -> Result<Vec<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "SELECT ",
        columns!(),
        " FROM workspaces
          WHERE status <> 'removed' AND ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR parent_id = $2)
            AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))
          ORDER BY created_at, id
          LIMIT $5"
    ))
    .bind(status)
    .bind(parent_id)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id))
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// The workspace that is not removed named `name` under `parent` (`None`: a root), the
/// oldest when there are several (`POST /workspaces` does not refuse a repeated name).
pub async fn find_live_child(conn: &mut PgConnection, parent: Option<Uuid>, name: &str) -> Result<Option<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "SELECT ",
        columns!(),
        " FROM workspaces
          WHERE name = $1 AND parent_id IS NOT DISTINCT FROM $2 AND status <> 'removed'
          ORDER BY created_at, id
          LIMIT 1"
    ))
    .bind(name)
    .bind(parent)
    .fetch_optional(conn)
    .await?)
}

/// Serialises, until the caller's transaction ends, everyone who takes this lock for the
/// same (`parent`, `name`): a look-up for that name followed by an insert is then atomic
/// against another one. A hash collision only makes two unrelated names wait for each other.
pub async fn lock_child_name(conn: &mut PgConnection, parent: Option<Uuid>, name: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('workspace-name:' || coalesce($1::text, 'root') || '/' || $2, 0))")
        .bind(parent)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// Self and every non-removed descendant, parents before children, however deep. The
/// `CYCLE` clause ends a walk that comes back to a workspace it has seen, so a cycle in
/// the rows cannot make the query run for ever.
pub async fn subtree(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "WITH RECURSIVE t (id, depth) AS (
             SELECT id, 0 FROM workspaces WHERE id = $1
             UNION ALL
             SELECT w.id, t.depth + 1 FROM workspaces w JOIN t ON w.parent_id = t.id
              WHERE w.status <> 'removed'
         ) CYCLE id SET is_cycle USING walk
         SELECT ",
        columns!(),
        " FROM workspaces JOIN t USING (id) WHERE NOT t.is_cycle ORDER BY t.depth, created_at"
    ))
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// Self and every descendant whatever its status (removed ones included), parents first,
/// each locked. Purge needs the whole family: a removed child still holds its parent's key.
pub async fn lock_family(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "WITH RECURSIVE t (id, depth) AS (
             SELECT id, 0 FROM workspaces WHERE id = $1
             UNION ALL
             SELECT w.id, t.depth + 1 FROM workspaces w JOIN t ON w.parent_id = t.id
         ) CYCLE id SET is_cycle USING walk
         SELECT ",
        columns!(),
        " FROM workspaces JOIN t USING (id) WHERE NOT t.is_cycle ORDER BY t.depth, created_at
          FOR UPDATE OF workspaces"
    ))
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// Deletes the workspaces and every row keyed on them (the `purge_workspaces` function
/// finds those tables in the catalog). Returns how many workspaces went.
pub async fn purge(conn: &mut PgConnection, ids: &[Uuid]) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT purge_workspaces($1)").bind(ids).fetch_one(conn).await?)
}

/// Ancestors, nearest first, however many; a cycle ends the walk (see [`subtree`]).
pub async fn ancestors(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "WITH RECURSIVE a (id, depth) AS (
             SELECT parent_id, 1 FROM workspaces WHERE id = $1
             UNION ALL
             SELECT w.parent_id, a.depth + 1 FROM workspaces w JOIN a ON w.id = a.id
              WHERE w.parent_id IS NOT NULL
         ) CYCLE id SET is_cycle USING walk
         SELECT ",
        columns!(),
        " FROM workspaces JOIN a USING (id) WHERE NOT a.is_cycle ORDER BY a.depth"
    ))
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// The one place a workspace's status is written (besides insert). Refuses transitions the
/// status machine forbids and a `failed` without a reason. The caller holds the row lock
/// (`ws` came from [`lock`]) and records the matching event (see `crate::events`).
pub async fn set_status(
    conn: &mut PgConnection,
    ws: &Workspace,
    to: Status,
    reason: Option<&str>,
) -> Result<Workspace> {
    set_status_many(conn, &[(ws, reason)], to).await?.pop().ok_or_else(|| Error::workspace_not_found(ws.id))
}

/// [`set_status`] for several workspaces in one statement, each with its own reason; all
/// are checked before any is written. Returns the updated rows, in no particular order.
pub async fn set_status_many(
    conn: &mut PgConnection,
    changes: &[(&Workspace, Option<&str>)],
    to: Status,
) -> Result<Vec<Workspace>> {
    for (ws, reason) in changes {
        let from = ws.status;
        if !from.can_become(to) {
            return Err(Error::Transition { id: ws.id, from, to });
        }
        if to == Status::Failed && reason.is_none() {
            return Err(Error::Internal(format!("workspace {} was to be marked failed without a reason", ws.id)));
        }
    }
    let ids: Vec<Uuid> = changes.iter().map(|(ws, _)| ws.id).collect();
    let reasons: Vec<Option<&str>> = changes.iter().map(|(_, r)| *r).collect();
    // A fresh start or an agent coming online supersedes an earlier failure reason; other
    // transitions keep whatever the agent last reported.
    let clear_error = matches!(to, Status::Provisioning | Status::Online);
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "UPDATE workspaces w
            SET status = $2,
                last_sample_error = CASE WHEN r.reason IS NOT NULL THEN r.reason WHEN $4 THEN NULL ELSE w.last_sample_error END,
                url = CASE WHEN $2 IN ('provisioning', 'paused', 'removed', 'offline') THEN NULL ELSE w.url END,
                status_changed_at = CASE WHEN w.status <> $2 OR $2 = 'provisioning' THEN now() ELSE w.status_changed_at END,
                updated_at = now()
           FROM unnest($1::uuid[], $3::text[]) AS r(ws_id, reason)
          WHERE w.id = ANY($1) AND w.id = r.ws_id RETURNING ",
        qualified_columns!()
    ))
    .bind(&ids)
    .bind(to)
    .bind(&reasons)
    .bind(clear_error)
    .fetch_all(conn)
    .await?)
}

pub async fn record_instance(
    conn: &mut PgConnection,
    id: Uuid,
    backend: BackendKind,
    instance_ref: &str,
    image: Option<&str>,
    docker_engine: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE workspaces SET backend = $2, instance_ref = $3, runtime_image = coalesce($4, runtime_image),
                docker_engine = $5, updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(backend)
    .bind(instance_ref)
    .bind(image)
    .bind(docker_engine)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records where a start is about to run, and when it began: the provision timeout counts
/// from here, never from time spent in the queue. `clock_timestamp()`, not `now()`: the
/// transaction may have begun before the one that made the workspace `provisioning`.
/// `docker_engine` names the engine a Docker start runs on (`None` for other backends).
pub async fn mark_starting(
    conn: &mut PgConnection,
    id: Uuid,
    backend: BackendKind,
    instance_ref: &str,
    docker_engine: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE workspaces SET backend = $2, instance_ref = $3, instance_started_at = clock_timestamp(),
                docker_engine = $4, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(backend)
    .bind(instance_ref)
    .bind(docker_engine)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn clear_instance(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE workspaces SET instance_ref = NULL, updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn patch(conn: &mut PgConnection, id: Uuid, p: Patch) -> Result<Workspace> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "UPDATE workspaces SET
            name = coalesce($2, name),
            role = CASE WHEN $3 THEN $4 ELSE role END,
            tier = coalesce($5, tier),
            parent_id = CASE WHEN $6 THEN $7 ELSE parent_id END,
            collapsed = coalesce($8, collapsed),
            updated_at = now()
          WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(p.name)
    .bind(p.role.is_some())
    .bind(p.role.flatten())
    .bind(p.tier)
    .bind(p.parent_id.is_some())
    .bind(p.parent_id.flatten())
    .bind(p.collapsed)
    .fetch_one(conn)
    .await?)
}

/// Register's bookkeeping: the agent card, delivery mode and heartbeat clock.
pub async fn record_registration(
    conn: &mut PgConnection,
    id: Uuid,
    agent_card: Option<&Value>,
    delivery_mode: Option<DeliveryMode>,
) -> Result<Workspace> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "UPDATE workspaces SET agent_card = coalesce($2, agent_card), delivery_mode = coalesce($3, delivery_mode),
                last_heartbeat_at = now(), updated_at = now()
          WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(agent_card)
    .bind(delivery_mode)
    .fetch_one(conn)
    .await?)
}

pub async fn set_url(conn: &mut PgConnection, id: Uuid, url: Option<&AgentUrl>) -> Result<()> {
    sqlx::query("UPDATE workspaces SET url = $2 WHERE id = $1")
        .bind(id)
        .bind(url.map(AgentUrl::as_str))
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a heartbeat. `sample_error` replaces the stored one only when `reports_health`:
/// while a workspace is failed, the failure reason belongs to the platform.
pub async fn record_heartbeat(
    conn: &mut PgConnection,
    id: Uuid,
    h: &Heartbeat,
    reports_health: bool,
) -> Result<Workspace> {
    Ok(sqlx::query_as::<_, Workspace>(concat!(
        "UPDATE workspaces SET last_heartbeat_at = now(),
                last_error_rate = coalesce($2, last_error_rate),
                last_sample_error = CASE WHEN $7 THEN $3 ELSE last_sample_error END,
                active_tasks = coalesce($4, active_tasks),
                uptime_seconds = coalesce($5, uptime_seconds),
                current_task = coalesce($6, current_task),
                updated_at = now()
          WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(h.error_rate)
    .bind(&h.sample_error)
    .bind(h.active_tasks)
    .bind(h.uptime_seconds)
    .bind(&h.current_task)
    .bind(reports_health && h.sample_error.is_some())
    .fetch_one(conn)
    .await?)
}

/// `(id, runtime, status_changed_at, running for)` of every workspace in `provisioning`
/// whose instance was started since it became so, with how long ago that start was by
/// the database's clock. A workspace still waiting for its start is not listed.
pub async fn provisioning<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(Uuid, String, DateTime<Utc>, Duration)>> {
    let rows: Vec<(Uuid, String, DateTime<Utc>, f64)> = sqlx::query_as(
        "SELECT id, runtime, status_changed_at,
                (extract(epoch FROM clock_timestamp() - instance_started_at) * 1000)::float8
           FROM workspaces
          WHERE status = 'provisioning' AND instance_started_at >= status_changed_at",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id, rt, since, ms)| (id, rt, since, Duration::from_millis(ms.max(0.0) as u64))).collect())
}

/// How long since the workspace's last sign of life, by the database's clock.
pub async fn silent_for(conn: &mut PgConnection, id: Uuid) -> Result<Duration> {
    let ms: f64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM clock_timestamp() - coalesce(last_heartbeat_at, status_changed_at)) * 1000)::float8
           FROM workspaces WHERE id = $1",
    )
    .bind(id)
    .fetch_one(conn)
    .await?;
    Ok(Duration::from_millis(ms.max(0.0) as u64))
}

/// Online or degraded workspaces whose last sign of life is older than `stale_after`.
pub async fn silent_since<'e>(db: impl PgExecutor<'e>, stale_after: Duration) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM workspaces WHERE status IN ('online', 'degraded')
            AND coalesce(last_heartbeat_at, status_changed_at) < now() - $1 * interval '1 millisecond'",
    )
    .bind(stale_after.as_millis() as f64)
    .fetch_all(db)
    .await?)
}
