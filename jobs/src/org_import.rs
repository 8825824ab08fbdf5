//! Org import: a tree of workspaces created depth-first through the same create verb as a
//! single workspace, idempotent on (parent, name) so an import can be repeated, or resumed
//! after it stopped part way.

use serde::Serialize;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{AgentUrlPolicy, CreateRequest};
use crate::lifecycle::{self, Created};
use crate::store::workspaces;
use crate::{Error, Result};

/// At most this many workspaces in one template.
pub const MAX_NODES: usize = 1000;
/// At most this many levels, the roots being level 1. A JSON tree cannot loop back on
/// itself, so depth and size are the only bounds a template needs.
pub const MAX_DEPTH: usize = 32;

/// A template node, already validated: what to create (its `parent_id` is set during the
/// walk, to the workspace its parent node became) and its children.
#[derive(Debug, Clone)]
pub struct OrgNode {
    pub req: CreateRequest,
    pub children: Vec<OrgNode>,
}

/// One workspace of the import, created now or found from an earlier import.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Imported {
    pub id: Uuid,
    pub name: String,
    pub tier: i32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// The node the walk stopped at, and why it was refused.
#[derive(Debug)]
pub struct Failed {
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub error: Error,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub workspaces: Vec<Imported>,
    pub failed: Option<Failed>,
}

/// Walks the trees depth-first, each node in its own transaction. A node refused by the
/// current state (its parent removed meanwhile, its agent URL refused by `agent_urls`)
/// stops the walk: what was created stays, and repeating the import carries on from there.
/// A database error is returned as such, never taken for a missing workspace.
pub async fn import(
    pool: &PgPool,
    roots: Vec<OrgNode>,
    agent_urls: &AgentUrlPolicy,
    requested_by: &str,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    // Popped from the end: children are pushed in reverse so they come out in order.
    let mut pending: Vec<(OrgNode, Option<Uuid>)> = roots.into_iter().rev().map(|n| (n, None)).collect();
    while let Some((OrgNode { mut req, children }, parent_id)) = pending.pop() {
        req.parent_id = parent_id;
        let name = req.name.clone();
        let span = tracing::info_span!("org_import_node", name = %name, parent_id = ?parent_id);
        match import_node(pool, req, agent_urls, requested_by).instrument(span).await {
            Ok(entry) => {
                let id = entry.id;
                out.workspaces.push(entry);
                pending.extend(children.into_iter().rev().map(|c| (c, Some(id))));
            }
            Err(error) if refused(&error) => {
                out.failed = Some(Failed { name, parent_id, error });
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn import_node(
    pool: &PgPool,
    req: CreateRequest,
    agent_urls: &AgentUrlPolicy,
    requested_by: &str,
) -> Result<Imported> {
    let mut tx = crate::db::begin(pool).await?;
    // Two imports of the same template at once must not both miss the look-up and both
    // insert: the name's lock makes look-up and insert one step.
    workspaces::lock_child_name(&mut tx, req.parent_id, &req.name).await?;
    if let Some(found) = workspaces::find_live_child(&mut tx, req.parent_id, &req.name).await? {
        return Ok(Imported { id: found.id, name: found.name, tier: found.tier, skipped: true });
    }
    if let Some(url) = &req.url {
        url.check(agent_urls)?;
    }
    let created = lifecycle::create_in(&mut tx, req, requested_by).await?;
    tx.commit().await?;
    let ws = match created {
        Created::Provisioning { workspace, .. } | Created::External { workspace, .. } => workspace,
    };
    Ok(Imported { id: ws.id, name: ws.name, tier: ws.tier, skipped: false })
}

/// Errors that say the request met a state or a rule that refuses it, as opposed to the
/// server's own trouble.
fn refused(e: &Error) -> bool {
    matches!(
        e,
        Error::NotFound { .. }
            | Error::Invalid { .. }
            | Error::Transition { .. }
            | Error::Paused { .. }
            | Error::AlreadyPaused { .. }
            | Error::NotPaused { .. }
            | Error::AncestorPaused { .. }
            | Error::Missing(_)
            | Error::Conflict(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_stops_at_refusals_and_gives_up_on_the_servers_own_trouble() {
        assert!(refused(&Error::NotFound { what: "parent workspace", id: Uuid::nil() }));
        assert!(refused(&Error::Invalid { field: "url", problem: "is not allowed".into() }));
        assert!(refused(&Error::AncestorPaused { id: Uuid::nil(), name: "hq".into() }));
        assert!(!refused(&Error::Db(sqlx::Error::PoolTimedOut)), "a database error is never a refusal");
        assert!(!refused(&Error::Internal("broken".into())));
    }
}
