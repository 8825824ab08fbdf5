//! Agent memories: writing, searching, editing and deleting them. Every write is one
//! transaction that holds the writing workspace's row in share mode, so "only a root writes
//! GLOBAL" is checked against the parent the workspace has when the row commits, and every
//! change to GLOBAL knowledge leaves its audit row in that same transaction.

use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::Status;
use crate::domain::memory::{self, Scope};
use crate::store::memories::{self, Memory, Search, Visible, Writer};
use crate::store::memory_audit::{self, NewAudit};
use crate::{Error, Result};

/// Longest search text accepted, in characters.
pub const QUERY_MAX: usize = 1000;
pub const LIMIT_MAX: i64 = 50;

/// A write the rules refuse because the workspace is not a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRoot;

pub const NOT_ROOT: &str = "only a root workspace (one without a parent) may write GLOBAL memories";

#[derive(Debug, Clone)]
pub struct Edited {
    pub memory: Memory,
    /// False when the edit came to what was stored already: nothing was written.
    pub changed: bool,
}

/// What a workspace (or the admin for it) asks to remember.
pub struct NewMemory<'a> {
    pub workspace_id: Uuid,
    pub scope: Scope,
    pub namespace: Option<&'a str>,
    pub content: &'a str,
    /// Who asks: "admin" or "workspace:<id>", for the audit trail.
    pub actor: &'a str,
}

async fn live_writer(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Writer> {
    match memories::lock_writer(conn, workspace_id).await? {
        Some(w) if w.status != Status::Removed => Ok(w),
        _ => Err(Error::workspace_not_found(workspace_id)),
    }
}

fn memory_not_found(id: Uuid, workspace_id: Uuid) -> Error {
    Error::Missing(format!("memory {id} not found for workspace {workspace_id}"))
}

async fn audit(
    conn: &mut PgConnection,
    m: &Memory,
    action: &'static str,
    reason: Option<&str>,
    actor: &str,
) -> Result<()> {
    memory_audit::insert(
        conn,
        NewAudit {
            workspace_id: m.workspace_id,
            memory_id: m.id,
            action,
            namespace: &m.namespace,
            content_sha256: &memory::content_sha256(&m.content),
            reason,
            actor,
        },
    )
    .await?;
    Ok(())
}

/// Stores a memory with its content redacted (and escaped when GLOBAL).
pub async fn commit(pool: &PgPool, m: NewMemory<'_>) -> Result<Result<Memory, NotRoot>> {
    let span = tracing::info_span!("memory_commit", workspace_id = %m.workspace_id, scope = %m.scope);
    async move {
        let namespace = match m.namespace {
            Some(ns) => memory::namespace(ns)?,
            None => memory::DEFAULT_NAMESPACE.to_string(),
        };
        let content = memory::stored_content(m.content, m.scope)?;
        let mut tx = crate::db::begin(pool).await?;
        let writer = live_writer(&mut tx, m.workspace_id).await?;
        if m.scope == Scope::Global && writer.parent_id.is_some() {
            return Ok(Err(NotRoot));
        }
        let stored = memories::insert(&mut tx, m.workspace_id, m.scope, &namespace, &content).await?;
        if stored.scope == Scope::Global {
            audit(&mut tx, &stored, memory_audit::WRITE_GLOBAL, None, m.actor).await?;
        }
        tx.commit().await?;
        tracing::info!(memory_id = %stored.id, "memory stored");
        Ok(Ok(stored))
    }
    .instrument(span)
    .await
}

/// What a search asks for; `scope` absent means the workspace's own rows of any scope.
pub struct Query<'a> {
    pub workspace_id: Uuid,
    pub scope: Option<Scope>,
    pub namespace: Option<&'a str>,
    pub text: Option<&'a str>,
    pub limit: i64,
}

/// The memories the workspace may read that match, GLOBAL ones wrapped with their origin.
pub async fn search(pool: &PgPool, q: Query<'_>) -> Result<Vec<Memory>> {
    if !(1..=LIMIT_MAX).contains(&q.limit) {
        return Err(Error::Invalid { field: "limit", problem: format!("must be between 1 and {LIMIT_MAX}") });
    }
    let namespace = q.namespace.map(memory::namespace).transpose()?;
    let text = q.text.map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.chars().count() > QUERY_MAX) {
        return Err(Error::Invalid { field: "q", problem: format!("is longer than {QUERY_MAX} characters") });
    }
    match crate::store::workspaces::get(pool, q.workspace_id).await? {
        Some(w) if w.status != Status::Removed => {}
        _ => return Err(Error::workspace_not_found(q.workspace_id)),
    }
    let visible = match q.scope {
        None => Visible::Own,
        Some(Scope::Local) => Visible::Local,
        Some(Scope::Team) => Visible::Team,
        Some(Scope::Global) => Visible::Global,
    };
    let rows = memories::search(
        pool,
        Search { workspace_id: q.workspace_id, visible, namespace: namespace.as_deref(), query: text, limit: q.limit },
    )
    .await?;
    Ok(rows.into_iter().map(shown).collect())
}

fn shown(mut m: Memory) -> Memory {
    if m.scope == Scope::Global {
        m.content = memory::wrap_global(m.id, m.workspace_id, &m.content);
    }
    m
}

/// A change to a memory's content or namespace; its scope never changes.
pub struct Edit<'a> {
    pub workspace_id: Uuid,
    pub memory_id: Uuid,
    pub content: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub actor: &'a str,
}

/// Applies the edit unless it comes to what is stored already. Editing a GLOBAL memory
/// needs a root workspace, as writing one does.
pub async fn edit(pool: &PgPool, e: Edit<'_>) -> Result<Result<Edited, NotRoot>> {
    if e.content.is_none() && e.namespace.is_none() {
        return Err(Error::Invalid { field: "body", problem: "must set content, namespace or both".into() });
    }
    let namespace = e.namespace.map(memory::namespace).transpose()?;
    if let Some(c) = e.content {
        memory::check_content(c)?;
    }
    let span = tracing::info_span!("memory_edit", workspace_id = %e.workspace_id, memory_id = %e.memory_id);
    async move {
        let mut tx = crate::db::begin(pool).await?;
        let writer = live_writer(&mut tx, e.workspace_id).await?;
        let Some(current) = memories::lock_owned(&mut tx, e.memory_id, e.workspace_id).await? else {
            return Err(memory_not_found(e.memory_id, e.workspace_id));
        };
        let content = match e.content {
            Some(c) => memory::stored_content(c, current.scope)?,
            None => current.content.clone(),
        };
        let namespace = namespace.unwrap_or_else(|| current.namespace.clone());
        if content == current.content && namespace == current.namespace {
            return Ok(Ok(Edited { memory: current, changed: false }));
        }
        if current.scope == Scope::Global && writer.parent_id.is_some() {
            return Ok(Err(NotRoot));
        }
        let updated = memories::update(&mut tx, current.id, &namespace, &content).await?;
        if updated.scope == Scope::Global {
            audit(&mut tx, &updated, memory_audit::EDIT_GLOBAL, Some("edited"), e.actor).await?;
        }
        tx.commit().await?;
        Ok(Ok(Edited { memory: updated, changed: true }))
    }
    .instrument(span)
    .await
}

/// Deletes a memory the workspace owns; deleting GLOBAL knowledge is audited.
pub async fn delete(pool: &PgPool, workspace_id: Uuid, memory_id: Uuid, actor: &str) -> Result<Memory> {
    let mut tx = crate::db::begin(pool).await?;
    live_writer(&mut tx, workspace_id).await?;
    let Some(current) = memories::lock_owned(&mut tx, memory_id, workspace_id).await? else {
        return Err(memory_not_found(memory_id, workspace_id));
    };
    memories::delete(&mut tx, current.id).await?;
    if current.scope == Scope::Global {
        audit(&mut tx, &current, memory_audit::DELETE_GLOBAL, Some("deleted"), actor).await?;
    }
    tx.commit().await?;
    Ok(current)
}
