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
    mut payload: Value,
) -> Result<Workspace> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    let updated = workspaces::set_status(conn, ws, to, reason).await?;
    if let Value::Object(map) = &mut payload {
        if let Some(r) = reason {
            map.entry("error").or_insert_with(|| Value::String(r.to_string()));
        }
        map.entry("name").or_insert_with(|| Value::String(ws.name.clone()));
        map.insert("from".into(), Value::String(ws.status.as_str().into()));
    }
    events::record(conn, events::for_status(to), Some(ws.id), payload).await?;
    Ok(updated)
}
