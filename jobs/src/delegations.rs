//! Delegations between agents: the ledger row, the callee's inbox item and, when the
//! delegation ends, the caller's `delegate_result`, each written in the transaction of the
//! change that causes it. Statuses only move forward (`DelegationStatus::to`).

use std::time::Duration;

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::delegation::truncate;
use crate::domain::{DelegationStatus, DeliveryMode, Move, Status};
use crate::store::activity_logs::NewActivity;
use crate::store::delegations::{self, Delegation, NewDelegation};
use crate::store::workspaces;
use crate::{Error, Result, events, inbox};

pub const DELEGATION_SENT: &str = "DELEGATION_SENT";
pub const DELEGATION_STATUS: &str = "DELEGATION_STATUS";
pub const DELEGATION_COMPLETE: &str = "DELEGATION_COMPLETE";
pub const DELEGATION_FAILED: &str = "DELEGATION_FAILED";

/// Previews are cut to this many bytes when written.
pub const PREVIEW_MAX: usize = 4096;
/// The preview an event carries, in characters.
const EVENT_PREVIEW_CHARS: usize = 200;
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(6 * 3600);

pub struct DelegateRequest {
    pub caller_id: Uuid,
    pub target_id: Uuid,
    pub task: String,
    pub idempotency_key: Option<String>,
    pub deadline_in: Duration,
}

pub enum Delegated {
    New(Delegation),
    /// The caller's idempotency key named this delegation already.
    Hit(Delegation),
}

fn missing(id: &str) -> Error {
    Error::Missing(format!("delegation {id:?} not found for this workspace"))
}

/// A live (not removed) workspace's delivery mode, or `None`.
async fn live_mode(conn: &mut PgConnection, id: Uuid) -> Result<Option<DeliveryMode>> {
    Ok(workspaces::get(&mut *conn, id).await?.filter(|w| w.status != Status::Removed).map(|w| w.delivery_mode))
}

/// Writes the ledger row and the callee's inbox item. A key the caller used before answers
/// with that delegation, unless it failed: then it is replaced and runs again.
pub async fn delegate(pool: &PgPool, r: DelegateRequest) -> Result<Delegated> {
    if r.caller_id == r.target_id {
        return Err(Error::Invalid {
            field: "target_id",
            problem: "is the calling workspace: a workspace cannot delegate to itself".into(),
        });
    }
    let mut tx = crate::db::begin(pool).await?;
    if live_mode(&mut tx, r.caller_id).await?.is_none() {
        return Err(Error::workspace_not_found(r.caller_id));
    }
    let Some(mode) = live_mode(&mut tx, r.target_id).await? else {
        return Err(Error::NotFound { what: "target workspace", id: r.target_id });
    };
    let key = r.idempotency_key.as_deref();
    if let Some(key) = key
        && let Some(prior) = delegations::lock_by_key(&mut tx, r.caller_id, key).await?
    {
        if prior.status != DelegationStatus::Failed {
            return Ok(Delegated::Hit(prior));
        }
        delegations::delete(&mut tx, &prior.delegation_id).await?;
    }
    let id = Uuid::new_v4().to_string();
    // A poll-mode callee has it once the row commits; a push-mode one once the push lands.
    let status = if mode == DeliveryMode::Poll { DelegationStatus::Dispatched } else { DelegationStatus::Queued };
    let preview = truncate(&r.task, PREVIEW_MAX);
    let row = NewDelegation {
        delegation_id: &id,
        caller_id: r.caller_id,
        callee_id: r.target_id,
        task_preview: preview,
        status,
        deadline_in: r.deadline_in,
        idempotency_key: key,
    };
    if !delegations::insert(&mut tx, &row).await? {
        // A concurrent request with the same key won; answer with its row.
        let key = key.ok_or_else(|| Error::Internal("a fresh delegation id collided".into()))?;
        let prior = delegations::lock_by_key(&mut tx, r.caller_id, key)
            .await?
            .ok_or_else(|| Error::Internal("idempotency key conflict without a row".into()))?;
        return Ok(Delegated::Hit(prior));
    }
    let envelope = inbox::message_send(&id, &r.task, json!({"delegation_id": id, "caller_id": r.caller_id}));
    inbox::write(
        &mut *tx,
        mode,
        NewActivity {
            workspace_id: r.target_id,
            activity_type: inbox::INBOX_TYPE.into(),
            method: Some("message/send".into()),
            source_id: Some(r.caller_id),
            target_id: Some(r.target_id),
            summary: Some(format!("Delegation {id} from {}", r.caller_id)),
            request_body: Some(envelope),
            status: "ok".into(),
            ..Default::default()
        },
    )
    .await?;
    events::record(
        &mut tx,
        DELEGATION_SENT,
        Some(r.caller_id),
        json!({"delegation_id": id, "caller_id": r.caller_id, "callee_id": r.target_id, "status": status}),
    )
    .await?;
    let d = delegations::lock(&mut tx, &id).await?.ok_or_else(|| missing(&id))?;
    tx.commit().await?;
    Ok(Delegated::New(d))
}

/// Records a delegation the caller's agent sent itself: the row starts `dispatched`.
/// Recording the same id again is a no-op; an id another caller holds is a conflict.
pub async fn record(pool: &PgPool, caller_id: Uuid, target_id: Uuid, task: &str, id: &str) -> Result<Delegation> {
    if caller_id == target_id {
        return Err(Error::Invalid {
            field: "target_id",
            problem: "is the calling workspace: a workspace cannot delegate to itself".into(),
        });
    }
    let mut tx = crate::db::begin(pool).await?;
    if live_mode(&mut tx, target_id).await?.is_none() {
        return Err(Error::NotFound { what: "target workspace", id: target_id });
    }
    let row = NewDelegation {
        delegation_id: id,
        caller_id,
        callee_id: target_id,
        task_preview: truncate(task, PREVIEW_MAX),
        status: DelegationStatus::Dispatched,
        deadline_in: DEFAULT_DEADLINE,
        idempotency_key: None,
    };
    let inserted = delegations::insert(&mut tx, &row).await?;
    let d = delegations::lock(&mut tx, id).await?.ok_or_else(|| missing(id))?;
    if d.caller_id != caller_id || d.callee_id != target_id {
        return Err(Error::Conflict(format!("delegation id {id:?} is taken by another delegation")));
    }
    if inserted {
        events::record(
            &mut tx,
            DELEGATION_SENT,
            Some(caller_id),
            json!({"delegation_id": id, "caller_id": caller_id, "callee_id": target_id, "status": d.status, "recorded": true}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(d)
}

/// A party's (caller's or callee's) report of a status. Returns the row and whether it
/// changed.
pub async fn update(
    pool: &PgPool,
    party: Uuid,
    id: &str,
    to: DelegationStatus,
    preview: Option<&str>,
    error: Option<&str>,
) -> Result<(Delegation, bool)> {
    let mut tx = crate::db::begin(pool).await?;
    let d = lock_for(&mut tx, party, id).await?;
    let out = match d.status.to(to) {
        Move::Same => (d, false),
        Move::Refused => {
            return Err(Error::Conflict(format!(
                "delegation {id} is {}; it cannot become {to} (statuses only move forward, and a terminal one never changes)",
                d.status
            )));
        }
        Move::Forward => (advance(&mut tx, &d, to, preview, error).await?, true),
    };
    tx.commit().await?;
    Ok(out)
}

/// A party's heartbeat: recorded on an in-flight row, ignored on a finished one.
pub async fn heartbeat(pool: &PgPool, party: Uuid, id: &str) -> Result<Delegation> {
    let mut tx = crate::db::begin(pool).await?;
    let d = lock_for(&mut tx, party, id).await?;
    if !d.status.is_terminal() {
        delegations::heartbeat(&mut tx, id).await?;
    }
    let d = delegations::lock(&mut tx, id).await?.ok_or_else(|| missing(id))?;
    tx.commit().await?;
    Ok(d)
}

/// The row, locked, if `party` is its caller or callee; another workspace learns nothing.
async fn lock_for(conn: &mut PgConnection, party: Uuid, id: &str) -> Result<Delegation> {
    match delegations::lock(conn, id).await? {
        Some(d) if d.caller_id == party || d.callee_id == party => Ok(d),
        _ => Err(missing(id)),
    }
}

/// Moves a locked row forward (the caller checked the move) with its events; an ending
/// writes the caller's `delegate_result` inbox item.
pub async fn advance(
    conn: &mut PgConnection,
    d: &Delegation,
    to: DelegationStatus,
    preview: Option<&str>,
    error: Option<&str>,
) -> Result<Delegation> {
    let preview = preview.map(|p| truncate(p, PREVIEW_MAX));
    let error = error.map(|e| truncate(e, PREVIEW_MAX));
    let d = delegations::set_status(conn, &d.delegation_id, to, preview, error).await?;
    let id = &d.delegation_id;
    if !to.is_terminal() {
        events::record(conn, DELEGATION_STATUS, Some(d.caller_id), json!({"delegation_id": id, "status": to})).await?;
        return Ok(d);
    }
    let ok = to == DelegationStatus::Completed;
    let text = if ok {
        d.result_preview.clone().unwrap_or_default()
    } else {
        d.error_detail.clone().unwrap_or_else(|| format!("delegation {to}"))
    };
    if ok {
        let short: String = text.chars().take(EVENT_PREVIEW_CHARS).collect();
        events::record(
            conn,
            DELEGATION_COMPLETE,
            Some(d.caller_id),
            json!({"delegation_id": id, "response_preview": short}),
        )
        .await?;
    } else {
        events::record(
            conn,
            DELEGATION_FAILED,
            Some(d.caller_id),
            json!({"delegation_id": id, "status": to, "error": text}),
        )
        .await?;
    }
    // The caller's history survives its workspace (no foreign key); its inbox does not.
    if let Some(mode) = live_mode(conn, d.caller_id).await? {
        let mut response = json!({"text": text, "delegation_id": id, "status": to});
        if !ok {
            response["error"] = json!(text);
        }
        inbox::write(
            &mut *conn,
            mode,
            NewActivity {
                workspace_id: d.caller_id,
                activity_type: inbox::INBOX_TYPE.into(),
                method: Some("delegate_result".into()),
                source_id: Some(d.callee_id),
                target_id: Some(d.caller_id),
                summary: Some(if ok { "Delegation result delivered" } else { "Delegation failed" }.into()),
                request_body: Some(json!({"delegation_id": id})),
                response_body: Some(response),
                status: if ok { "ok" } else { "error" }.into(),
                error_detail: (!ok).then(|| text.clone()),
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(d)
}

/// Called when an inbox item carrying delegation `id` reached its callee (push landed) or
/// could not (`Err`). Only an in-flight delegation is affected.
pub async fn on_delivery(conn: &mut PgConnection, id: &str, outcome: std::result::Result<(), &str>) -> Result<()> {
    let Some(d) = delegations::lock(conn, id).await? else { return Ok(()) };
    let (to, error) = match outcome {
        Ok(()) => (DelegationStatus::Dispatched, None),
        Err(e) => (DelegationStatus::Failed, Some(format!("could not deliver the delegation to its callee: {e}"))),
    };
    if d.status.to(to) == Move::Forward {
        advance(conn, &d, to, None, error.as_deref()).await?;
    }
    Ok(())
}
