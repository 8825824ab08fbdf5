use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;
use crate::domain::Status;
use crate::domain::memory::Scope;

macro_rules! columns {
    () => {
        "m.id, m.workspace_id, m.content, m.scope, m.namespace, m.created_at, m.updated_at"
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Memory {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub content: String,
    pub scope: Scope,
    pub namespace: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The workspace a memory is written for, as the write sees it.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Writer {
    pub parent_id: Option<Uuid>,
    pub status: Status,
}

/// The writing workspace, share-locked until the caller's transaction ends: it cannot be
/// removed or moved under a parent between the check that it is a root and a GLOBAL write.
/// A share lock leaves other memory writes (and readers) free.
pub async fn lock_writer(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Option<Writer>> {
    Ok(sqlx::query_as::<_, Writer>("SELECT parent_id, status FROM workspaces WHERE id = $1 FOR SHARE")
        .bind(workspace_id)
        .fetch_optional(conn)
        .await?)
}

pub async fn insert(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    scope: Scope,
    namespace: &str,
    content: &str,
) -> Result<Memory> {
    Ok(sqlx::query_as::<_, Memory>(concat!(
        "INSERT INTO agent_memories AS m (id, workspace_id, scope, namespace, content) VALUES ($1, $2, $3, $4, $5)
         RETURNING ",
        columns!()
    ))
    .bind(Uuid::new_v4())
    .bind(workspace_id)
    .bind(scope)
    .bind(namespace)
    .bind(content)
    .fetch_one(conn)
    .await?)
}

/// The memory, locked, if `workspace_id` owns it.
pub async fn lock_owned(conn: &mut PgConnection, id: Uuid, workspace_id: Uuid) -> Result<Option<Memory>> {
    Ok(sqlx::query_as::<_, Memory>(concat!(
        "SELECT ",
        columns!(),
        " FROM agent_memories m WHERE m.id = $1 AND m.workspace_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(workspace_id)
    .fetch_optional(conn)
    .await?)
}

pub async fn update(conn: &mut PgConnection, id: Uuid, namespace: &str, content: &str) -> Result<Memory> {
    Ok(sqlx::query_as::<_, Memory>(concat!(
        "UPDATE agent_memories AS m SET namespace = $2, content = $3, updated_at = now() WHERE m.id = $1
         RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(namespace)
    .bind(content)
    .fetch_one(conn)
    .await?)
}

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM agent_memories WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// Which rows a search reads, seen from the searching workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visible {
    /// The workspace's own rows, of any scope.
    Own,
    /// The workspace's own LOCAL rows.
    Local,
    /// The TEAM rows of the workspace's team.
    Team,
    /// Every GLOBAL row.
    Global,
}

pub struct Search<'a> {
    pub workspace_id: Uuid,
    pub visible: Visible,
    pub namespace: Option<&'a str>,
    /// Words to find, in web-search syntax (`"a phrase"`, `or`, `-not`), stemmed.
    pub query: Option<&'a str>,
    pub limit: i64,
}

/// The rows each `Visible` reads. Removed workspaces' rows are never read. A team is the
/// workspace's team root (its parent, or itself for a root) and the root's direct children.
macro_rules! visible {
    (own) => {
        "m.workspace_id = $1"
    };
    (local) => {
        "m.workspace_id = $1 AND m.scope = 'LOCAL'"
    };
    (team) => {
        "m.scope = 'TEAM' AND m.workspace_id IN (
             SELECT t.id FROM workspaces me
               JOIN workspaces t ON t.id = coalesce(me.parent_id, me.id) OR t.parent_id = coalesce(me.parent_id, me.id)
              WHERE me.id = $1)"
    };
    (global) => {
        "m.scope = 'GLOBAL'"
    };
}

/// One static statement per kind of search, so each gets a plan of its own: a search by
/// words goes through the full-text index; a listing reads newest first.
macro_rules! search {
    ($visible:tt, listing) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM agent_memories m JOIN workspaces w ON w.id = m.workspace_id AND w.status <> 'removed'
             WHERE ",
            visible!($visible),
            " AND ($2::text IS NULL OR m.namespace = $2)
             ORDER BY m.created_at DESC, m.id LIMIT $3"
        )
    };
    ($visible:tt, words) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM agent_memories m JOIN workspaces w ON w.id = m.workspace_id AND w.status <> 'removed',
                   websearch_to_tsquery('english', $4) AS q
             WHERE ",
            visible!($visible),
            " AND ($2::text IS NULL OR m.namespace = $2) AND m.content_tsv @@ q
             ORDER BY ts_rank(m.content_tsv, q) DESC, m.created_at DESC, m.id LIMIT $3"
        )
    };
}

/// Best match first when searching by words, else newest first.
pub async fn search<'e>(db: impl PgExecutor<'e>, s: Search<'_>) -> Result<Vec<Memory>> {
    let sql = match (s.visible, s.query.is_some()) {
        (Visible::Own, false) => search!(own, listing),
        (Visible::Own, true) => search!(own, words),
        (Visible::Local, false) => search!(local, listing),
        (Visible::Local, true) => search!(local, words),
        (Visible::Team, false) => search!(team, listing),
        (Visible::Team, true) => search!(team, words),
        (Visible::Global, false) => search!(global, listing),
        (Visible::Global, true) => search!(global, words),
    };
    let mut query = sqlx::query_as::<_, Memory>(sql).bind(s.workspace_id).bind(s.namespace).bind(s.limit);
    if let Some(words) = s.query {
        query = query.bind(words);
    }
    Ok(query.fetch_all(db).await?)
}
