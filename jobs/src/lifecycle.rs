//! The lifecycle verbs the api offers. Each one validates against the current state, writes
//! the workspace rows and its ops (with their apalis tasks) in one transaction, and
//! returns; workers do the rest.

use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::workspace::EXTERNAL_RUNTIME;
use crate::domain::{CreateRequest, Op, OpKind, Patch, Status, Workspace};
use crate::events;
use crate::ops;
use crate::ops::rounds::{Rounds, Written};
use crate::store::{workspace_ops, workspace_tokens, workspaces};
use crate::transition;
use crate::{Error, Result};

pub enum Created {
    Provisioning {
        workspace: Box<Workspace>,
        op: Box<Op>,
    },
    /// External workspaces have no op; their agent's token is shown once, here (and again
    /// only through [`rotate_token`]).
    External {
        workspace: Box<Workspace>,
        token: String,
    },
}

pub async fn create(pool: &PgPool, req: CreateRequest, requested_by: &str) -> Result<Created> {
    let mut tx = crate::db::begin(pool).await?;
    let created = create_in(&mut tx, req, requested_by).await?;
    tx.commit().await?;
    Ok(created)
}

/// [`create`] inside the caller's transaction, for callers that decide something else in
/// the same transaction (an org import looks the name up first).
pub async fn create_in(conn: &mut PgConnection, req: CreateRequest, requested_by: &str) -> Result<Created> {
    if let Some(parent) = req.parent_id {
        lock_live_as(conn, parent, "parent workspace").await?;
    }
    if !is_external(&req) {
        let mut created = create_provisioning(conn, &[(&req, requested_by)]).await?;
        return created.pop().ok_or_else(|| Error::Internal("a create made no workspace".into()));
    }
    let status = if req.url.is_some() { Status::Online } else { Status::AwaitingAgent };
    let req = CreateRequest { external: true, runtime: EXTERNAL_RUNTIME.to_string(), ..req };
    let workspace = workspaces::insert(conn, Uuid::new_v4(), status, &req).await?;
    events::record(conn, events::for_status(status), Some(workspace.id), created_payload(&workspace)).await?;
    let token = workspace_tokens::mint(conn, workspace.id).await?;
    Ok(Created::External { workspace: Box::new(workspace), token })
}

fn is_external(req: &CreateRequest) -> bool {
    req.external || req.runtime == EXTERNAL_RUNTIME
}

fn created_payload(w: &Workspace) -> serde_json::Value {
    json!({"name": w.name, "tier": w.tier, "runtime": w.runtime, "parent_id": w.parent_id})
}

/// Workspaces that start by provisioning, each with its `requested_by`, and their first
/// ops: one statement per table however many there are. Their parents, if any, are locked
/// by the caller. Returns them in the order given.
async fn create_provisioning(conn: &mut PgConnection, reqs: &[(&CreateRequest, &str)]) -> Result<Vec<Created>> {
    let rows: Vec<(Uuid, Status, &CreateRequest)> =
        reqs.iter().map(|(req, _)| (Uuid::new_v4(), Status::Provisioning, *req)).collect();
    let workspaces = workspaces::insert_many(conn, &rows).await?;
    let payloads: Vec<serde_json::Value> = workspaces.iter().map(created_payload).collect();
    let announced: Vec<(Option<Uuid>, &serde_json::Value)> =
        workspaces.iter().zip(&payloads).map(|(w, p)| (Some(w.id), p)).collect();
    events::record_many(conn, events::WORKSPACE_PROVISIONING, &announced).await?;
    let firsts: Vec<(Uuid, &str)> = workspaces.iter().zip(reqs).map(|(w, (_, by))| (w.id, *by)).collect();
    let ops = ops::request_first(conn, &firsts, OpKind::Provision, "create").await?;
    if ops.len() != workspaces.len() {
        return Err(Error::Internal(format!("{} workspaces created but {} first ops", workspaces.len(), ops.len())));
    }
    Ok(workspaces
        .into_iter()
        .zip(ops)
        .map(|(workspace, op)| Created::Provisioning { workspace: Box::new(workspace), op: Box::new(op) })
        .collect())
}

/// The api's creates. Concurrent creates of workspaces that start by provisioning and have
/// no parent run in rounds (ADR 0014): one transaction, and one statement per table, for
/// every create that arrived while the previous round ran. Each create announces its event
/// and op (and apalis its task) with NOTIFY, and PostgreSQL lets only one transaction that
/// notified commit at a time, so one commit per create caps creates at one per WAL flush.
/// A create that locks a parent, or mints an external workspace's token, runs alone.
pub struct Creates {
    pool: PgPool,
    rounds: Rounds<(CreateRequest, String), Written<Created>>,
}

impl Creates {
    /// Starts the round runner on the current tokio runtime.
    pub fn spawn(pool: PgPool) -> Creates {
        let round_pool = pool.clone();
        let rounds = Rounds::spawn(move |reqs: Vec<(CreateRequest, String)>| {
            let pool = round_pool.clone();
            async move { create_round(&pool, reqs).await }
        });
        Creates { pool, rounds }
    }

    /// [`create`], in the next round when it can share one.
    pub async fn create(&self, req: CreateRequest, requested_by: &str) -> Result<Created> {
        if req.parent_id.is_none()
            && !is_external(&req)
            && let Some(created) = self.rounds.write((req.clone(), requested_by.to_string())).await
        {
            return created;
        }
        create(&self.pool, req, requested_by).await
    }
}

/// One round of creates in one transaction, which commits all of them or none.
async fn create_round(pool: &PgPool, reqs: Vec<(CreateRequest, String)>) -> Vec<Written<Created>> {
    let n = reqs.len();
    let borrowed: Vec<(&CreateRequest, &str)> = reqs.iter().map(|(req, by)| (req, by.as_str())).collect();
    let mut tx = match crate::db::begin(pool).await {
        Ok(tx) => tx,
        Err(e) => return Written::all_failed(n, &e.into(), false),
    };
    let created = match create_provisioning(&mut tx, &borrowed).await {
        Ok(created) if created.len() == n => created,
        Ok(_) => return Written::all_failed(n, &Error::Internal("a round made too few workspaces".into()), false),
        Err(e) => {
            tracing::warn!(error = %e, creates = n, "a round of creates failed before its commit");
            return Written::all_failed(n, &e, false);
        }
    };
    match tx.commit().await {
        Ok(()) => created.into_iter().map(Written::Done).collect(),
        Err(e) => {
            tracing::error!(error = %e, creates = n, "a round of creates failed at its commit");
            Written::all_failed(n, &e.into(), true)
        }
    }
}

/// Locks a subtree, parents first, re-reading until no member appeared meanwhile: a child
/// created under a member while we locked is caught (create locks its parent). Returns the
/// rows as locked, parents first, without members removed before we got their lock.
async fn lock_subtree(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Workspace>> {
    let mut locked: Vec<Workspace> = vec![];
    loop {
        let members = workspaces::subtree(conn, id).await?;
        let fresh: Vec<Uuid> = members.iter().map(|m| m.id).filter(|m| !locked.iter().any(|l| l.id == *m)).collect();
        if fresh.is_empty() {
            let order: Vec<Uuid> = members.iter().map(|m| m.id).collect();
            locked.retain(|w| w.status != Status::Removed);
            locked.sort_by_key(|w| order.iter().position(|id| *id == w.id));
            return Ok(locked);
        }
        for m in fresh {
            if let Some(ws) = workspaces::lock(conn, m).await? {
                locked.push(ws);
            }
        }
    }
}

async fn lock_live(conn: &mut PgConnection, id: Uuid) -> Result<Workspace> {
    lock_live_as(conn, id, "workspace").await
}

/// Locks a workspace that is not removed; `what` names it in the 404.
async fn lock_live_as(conn: &mut PgConnection, id: Uuid, what: &'static str) -> Result<Workspace> {
    match workspaces::lock(conn, id).await? {
        Some(ws) if ws.status != Status::Removed => Ok(ws),
        _ => Err(Error::NotFound { what, id }),
    }
}

async fn refuse_paused_ancestor(conn: &mut PgConnection, ws: &Workspace) -> Result<()> {
    if let Some(p) = workspaces::ancestors(conn, ws.id).await?.into_iter().find(|a| a.status == Status::Paused) {
        return Err(Error::AncestorPaused { id: p.id, name: p.name });
    }
    Ok(())
}

pub enum Restarted {
    Queued {
        op: Box<Op>,
        new: bool,
    },
    /// External workspaces are run by their owners; there is nothing to restart.
    Noop,
}

/// What a restart is asked for beyond starting the instance again. Both are recorded on the
/// op; a request joining a queued start adds its flags to that start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestartOptions {
    /// The agent starts a fresh session.
    pub reset_session: bool,
    /// The instance moves to the image configured now instead of its pinned one.
    pub upgrade_image: bool,
}

pub async fn restart(
    pool: &PgPool,
    id: Uuid,
    reason: &str,
    requested_by: &str,
    options: RestartOptions,
) -> Result<Restarted> {
    let mut tx = crate::db::begin(pool).await?;
    let ws = lock_live(&mut tx, id).await?;
    if ws.external {
        return Ok(Restarted::Noop);
    }
    if ws.status == Status::Paused {
        return Err(Error::Paused { id });
    }
    refuse_paused_ancestor(&mut tx, &ws).await?;
    let restarted = match request_restart(&mut tx, &ws, reason, requested_by).await? {
        Restarted::Queued { op, new } if options != RestartOptions::default() => {
            let op = workspace_ops::add_flags(&mut tx, op.id, options.reset_session, options.upgrade_image).await?;
            Restarted::Queued { op: Box::new(op), new }
        }
        other => other,
    };
    tx.commit().await?;
    Ok(restarted)
}

/// Shared by the restart verb and the liveness sweep. The caller holds the row lock.
pub async fn request_restart(
    conn: &mut PgConnection,
    ws: &Workspace,
    reason: &str,
    requested_by: &str,
) -> Result<Restarted> {
    let (op, new) = ops::request(conn, ws, OpKind::Restart, reason, requested_by).await?;
    if new {
        transition::set_status(conn, ws, Status::Provisioning, None, json!({"op_id": op.id, "reason": reason})).await?;
    }
    Ok(Restarted::Queued { op: Box::new(op), new })
}

#[derive(Debug, Serialize)]
pub struct Paused {
    pub paused: Vec<Uuid>,
    pub op_ids: Vec<Uuid>,
}

pub async fn pause(pool: &PgPool, id: Uuid, requested_by: &str) -> Result<Paused> {
    let mut tx = crate::db::begin(pool).await?;
    let root = lock_live(&mut tx, id).await?;
    if root.status == Status::Paused {
        return Err(Error::AlreadyPaused { id });
    }
    let mut out = Paused { paused: vec![], op_ids: vec![] };
    for ws in lock_subtree(&mut tx, id).await? {
        if ws.status == Status::Paused {
            continue;
        }
        ops::cancel_queued_starts(&mut tx, ws.id, "superseded by pause").await?;
        transition::set_status(&mut tx, &ws, Status::Paused, None, json!({})).await?;
        let (op, _) = ops::request(&mut tx, &ws, OpKind::Stop, "pause", requested_by).await?;
        out.paused.push(ws.id);
        out.op_ids.push(op.id);
    }
    tx.commit().await?;
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct Resumed {
    pub resumed: Vec<Uuid>,
    pub op_ids: Vec<Uuid>,
    /// The provision op of the workspace resume was asked of; none when it is external.
    pub root_op: Option<Uuid>,
}

pub async fn resume(pool: &PgPool, id: Uuid, requested_by: &str) -> Result<Resumed> {
    let mut tx = crate::db::begin(pool).await?;
    let root = lock_live(&mut tx, id).await?;
    if root.status != Status::Paused {
        return Err(Error::NotPaused { id, status: root.status });
    }
    refuse_paused_ancestor(&mut tx, &root).await?;
    let mut out = Resumed { resumed: vec![], op_ids: vec![], root_op: None };
    for ws in lock_subtree(&mut tx, id).await? {
        if ws.status != Status::Paused {
            continue;
        }
        if ws.external {
            // Its owner runs the agent: nothing to start, it waits for the agent again.
            transition::set_status(&mut tx, &ws, Status::AwaitingAgent, None, json!({"reason": "resume"})).await?;
            out.resumed.push(ws.id);
            continue;
        }
        let (op, _) = ops::request(&mut tx, &ws, OpKind::Provision, "resume", requested_by).await?;
        if ws.id == id {
            out.root_op = Some(op.id);
        }
        transition::set_status(&mut tx, &ws, Status::Provisioning, None, json!({"op_id": op.id, "reason": "resume"}))
            .await?;
        out.resumed.push(ws.id);
        out.op_ids.push(op.id);
    }
    tx.commit().await?;
    Ok(out)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChildRef {
    pub id: Uuid,
    pub name: String,
}

pub enum Deleted {
    ConfirmationRequired { children: Vec<ChildRef> },
    Removed { removed: Vec<Workspace>, op_ids: Vec<Uuid> },
}

pub async fn delete(pool: &PgPool, id: Uuid, confirm: bool, requested_by: &str) -> Result<Deleted> {
    let mut tx = crate::db::begin(pool).await?;
    lock_live(&mut tx, id).await?;
    let children: Vec<ChildRef> = workspaces::list(&mut *tx, None, Some(id))
        .await?
        .into_iter()
        .map(|c| ChildRef { id: c.id, name: c.name })
        .collect();
    if !children.is_empty() && !confirm {
        return Ok(Deleted::ConfirmationRequired { children });
    }
    let (removed, op_ids) = remove_subtree(&mut tx, id, "delete", requested_by).await?;
    tx.commit().await?;
    Ok(Deleted::Removed { removed, op_ids })
}

/// Tombstones first (status `removed`, tokens revoked, queued starts canceled), then the
/// stop ops: a late register, heartbeat or restart can never bring the rows back.
async fn remove_subtree(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
    requested_by: &str,
) -> Result<(Vec<Workspace>, Vec<Uuid>)> {
    let mut removed = vec![];
    let mut op_ids = vec![];
    for ws in lock_subtree(conn, id).await? {
        ops::cancel_queued_starts(conn, ws.id, &format!("superseded by {reason}")).await?;
        let ws = transition::set_status(conn, &ws, Status::Removed, None, json!({"reason": reason})).await?;
        workspace_tokens::revoke_all(conn, ws.id).await?;
        let (op, _) = ops::request(conn, &ws, OpKind::Stop, reason, requested_by).await?;
        op_ids.push(op.id);
        removed.push(ws);
    }
    Ok((removed, op_ids))
}

/// Deletes a removed workspace, its removed descendants and every row keyed on them, once
/// their stops have finished (until then the rows are what stop and the orphan sweep use to
/// find the instances). Returns how many workspaces went.
pub async fn purge(pool: &PgPool, id: Uuid) -> Result<i64> {
    let mut tx = crate::db::begin(pool).await?;
    let family = workspaces::lock_family(&mut tx, id).await?;
    if family.is_empty() {
        return Err(Error::workspace_not_found(id));
    }
    for ws in &family {
        if ws.status != Status::Removed {
            return Err(Error::Conflict(if ws.id == id {
                format!("workspace {id} is {}: delete it first, then purge it once its stop has finished", ws.status)
            } else {
                format!(
                    "workspace {id} has a descendant {} ({}) that is {}; delete it first",
                    ws.id, ws.name, ws.status
                )
            }));
        }
        if workspace_ops::has_unfinished(&mut *tx, ws.id).await? {
            return Err(Error::Conflict(format!(
                "workspace {} still has an op in progress (its stop); purge once it has finished (see \
                 /workspaces/{}/ops)",
                ws.id, ws.id
            )));
        }
    }
    let ids: Vec<Uuid> = family.iter().map(|w| w.id).collect();
    let purged = workspaces::purge(&mut tx, &ids).await?;
    events::record(&mut tx, events::WORKSPACE_PURGED, None, json!({"workspace_id": id, "purged": ids})).await?;
    tx.commit().await?;
    Ok(purged)
}

#[derive(Debug, Serialize)]
pub struct Collapsed {
    pub removed: Vec<String>,
    pub op_ids: Vec<Uuid>,
}

/// Removes the direct children, each with its own subtree so nothing keeps running under a
/// removed parent.
pub async fn collapse(pool: &PgPool, id: Uuid, requested_by: &str) -> Result<Collapsed> {
    let mut tx = crate::db::begin(pool).await?;
    let parent = lock_live(&mut tx, id).await?;
    let mut out = Collapsed { removed: vec![], op_ids: vec![] };
    for child in workspaces::list(&mut *tx, None, Some(id)).await? {
        let (_, ops) = remove_subtree(&mut tx, child.id, "collapse", requested_by).await?;
        out.removed.push(child.name);
        out.op_ids.extend(ops);
    }
    events::record(&mut tx, events::WORKSPACE_COLLAPSED, Some(parent.id), json!({"removed_children": out.removed}))
        .await?;
    tx.commit().await?;
    Ok(out)
}

pub async fn patch(pool: &PgPool, id: Uuid, p: Patch) -> Result<Workspace> {
    let mut tx = crate::db::begin(pool).await?;
    // Ancestors are locked before descendants everywhere, so the new parent goes first.
    if let Some(Some(parent)) = p.parent_id {
        if parent == id {
            return Err(Error::Invalid { field: "parent_id", problem: "cannot be the workspace itself".into() });
        }
        lock_live_as(&mut tx, parent, "parent workspace").await?;
    }
    let ws = lock_live(&mut tx, id).await?;
    if let Some(Some(parent)) = p.parent_id {
        let ancestors = workspaces::ancestors(&mut tx, parent).await?;
        if ancestors.iter().any(|a| a.id == id) {
            return Err(Error::Invalid { field: "parent_id", problem: "would create a cycle".into() });
        }
    }
    let updated = workspaces::patch(&mut tx, ws.id, p).await?;
    tx.commit().await?;
    Ok(updated)
}

/// An external workspace, for its connection details.
pub async fn external(pool: &PgPool, id: Uuid) -> Result<Workspace> {
    match workspaces::get(pool, id).await? {
        Some(ws) if ws.status != Status::Removed && ws.external => Ok(ws),
        Some(ws) if ws.status != Status::Removed => Err(Error::NotExternal { id, runtime: ws.runtime }),
        _ => Err(Error::workspace_not_found(id)),
    }
}

/// Replaces an external workspace's token in one transaction: every live one is revoked and
/// the new one is returned, once. Workspaces the platform runs get theirs from their instance.
pub async fn rotate_token(pool: &PgPool, id: Uuid) -> Result<(Workspace, String)> {
    let mut tx = crate::db::begin(pool).await?;
    let ws = lock_live(&mut tx, id).await?;
    if !ws.external {
        return Err(Error::NotExternal { id, runtime: ws.runtime });
    }
    let revoked = workspace_tokens::revoke_all(&mut tx, id).await?;
    let token = workspace_tokens::mint(&mut tx, id).await?;
    events::record(
        &mut tx,
        events::EXTERNAL_CREDENTIALS_ROTATED,
        Some(id),
        json!({"workspace_id": id, "revoked": revoked}),
    )
    .await?;
    tx.commit().await?;
    Ok((ws, token))
}
