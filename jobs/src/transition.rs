//! The one way a workspace changes status: the write (which refuses what the status
//! machine forbids) and the event that announces it, in the caller's transaction.

use serde_json::Value;
use sqlx::PgConnection;

use crate::Result;
use crate::domain::{Status, Workspace};
use crate::events;
use crate::store::workspaces;

/// `ws` must come from `workspaces::lock` in this transaction. `reason` is required for
/// `failed` and becomes the workspace's `last_sample_error`; the event payload gets the
/// reason (as `error`), the name and the previous status added.
pub async fn set_status(
    conn: &mut PgConnection,
    ws: &Workspace,
    to: Status,
    reason: Option<&str>,
    payload: Value,
) -> Result<Workspace> {
    let mut updated = set_status_many(conn, vec![(ws, reason, payload)], to).await?;
    updated.pop().ok_or_else(|| crate::Error::workspace_not_found(ws.id))
}

/// [`set_status`] for several workspaces, each with its reason and payload, in one statement
/// per table. Returns the updated rows, in no particular order.
pub async fn set_status_many(
    conn: &mut PgConnection,
    changes: Vec<(&Workspace, Option<&str>, Value)>,
    to: Status,
) -> Result<Vec<Workspace>> {
    let mut writes = Vec::with_capacity(changes.len());
    let mut announced = Vec::with_capacity(changes.len());
    for (ws, reason, mut payload) in changes {
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if let Value::Object(map) = &mut payload {
            if let Some(r) = reason {
                map.entry("error").or_insert_with(|| Value::String(r.to_string()));
            }
            map.entry("name").or_insert_with(|| Value::String(ws.name.clone()));
            map.insert("from".into(), Value::String(ws.status.as_str().into()));
        }
        writes.push((ws, reason));
        announced.push((Some(ws.id), payload));
    }
    let updated = workspaces::set_status_many(conn, &writes, to).await?;
    let events: Vec<_> = announced.iter().map(|(id, payload)| (*id, payload)).collect();
    events::record_many(conn, events::for_status(to), &events).await?;
    Ok(updated)
}
