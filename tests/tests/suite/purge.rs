//! Purge: a removed workspace's rows, and those of every table keyed on it, are deleted once
//! its stop has finished; a live one, or one still stopping, is refused.
//!
//! What "keyed on it" covers is checked from the catalog, not from a list: every uuid column
//! of every table is searched for the purged ids. Only the columns that record history
//! between workspaces (who delegated to whom, who wrote into whose inbox) may still name
//! them, on rows owned by workspaces that still exist.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tests::{ADMIN, Stack};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(30);

/// Columns allowed to keep naming a purged workspace, on rows of surviving workspaces.
const HISTORY_COLUMNS: [(&str, &str); 4] = [
    ("delegations", "caller_id"),
    ("delegations", "callee_id"),
    ("activity_logs", "source_id"),
    ("activity_logs", "target_id"),
];

/// `(table.column) → rows naming one of ids`, for every uuid column of every base table.
async fn rows_naming(pool: &PgPool, ids: &[Uuid]) -> BTreeMap<String, i64> {
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.table_schema::text, c.table_name::text, c.column_name::text
           FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
          WHERE t.table_type = 'BASE TABLE' AND c.data_type = 'uuid'
            AND c.table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(columns.len() > 10, "the catalog lists the uuid columns: {columns:?}");
    let mut found = BTreeMap::new();
    for (schema, table, column) in columns {
        let sql = format!("SELECT count(*) FROM \"{schema}\".\"{table}\" WHERE \"{column}\" = ANY ($1)");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_one(pool).await.unwrap();
        if n > 0 {
            found.insert(format!("{table}.{column}"), n);
        }
    }
    found
}

async fn external(stack: &Stack, body: serde_json::Value) -> (String, String) {
    let r = stack.post("/workspaces", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    (r.body["id"].as_str().unwrap().to_string(), r.body["connection"]["auth_token"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn purge_deletes_every_row_keyed_on_a_removed_workspace_once_its_stop_has_finished() {
    // No worker at first: the delete's stop ops stay queued.
    let mut stack = Stack::builder().workers(0).start().await;
    let (team, team_token) = external(&stack, json!({"name": "team", "external": true})).await;
    let (member, member_token) = external(&stack, json!({"name": "member", "external": true, "parent_id": team})).await;
    let (keeper, keeper_token) = external(&stack, json!({"name": "keeper", "external": true})).await;

    // Rows keyed on the team and its member, in as many tables as the api writes.
    for (id, token) in [(&team, &team_token), (&member, &member_token)] {
        let r = stack
            .raw(
                "POST",
                &format!("/workspaces/{id}/activity"),
                Some(token),
                Some(&json!({"activity_type": "agent_log", "summary": "working"}).to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let message = json!({"jsonrpc": "2.0", "id": 1, "method": "message/send",
        "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": "hello"}]}}});
    for (from_token, to) in [(&keeper_token, &member), (&member_token, &keeper)] {
        let r = stack.raw("POST", &format!("/workspaces/{to}/a2a"), Some(from_token), Some(&message.to_string())).await;
        assert!(r.status.is_success(), "{}", r.body);
    }
    let r = stack.post(&format!("/workspaces/{team}/delegate"), json!({"target_id": keeper, "task": "review"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    for (id, scope) in [(&team, "GLOBAL"), (&member, "LOCAL")] {
        let r = stack
            .post(&format!("/workspaces/{id}/memories"), json!({"content": "the build runs on Fridays", "scope": scope}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = stack.post(&format!("/workspaces/{member}/external/rotate"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let ids: Vec<Uuid> = [&team, &member].iter().map(|s| s.parse().unwrap()).collect();
    let r = stack.raw("DELETE", &format!("/workspaces/{team}?purge=true"), Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "a live workspace is not purged: {}", r.body);
    assert!(r.error().contains("delete it first"), "{}", r.body);

    let r = stack.delete(&format!("/workspaces/{team}?confirm=true")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = stack.delete(&format!("/workspaces/{team}?purge=true")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "its stop is still queued: {}", r.body);
    assert!(r.error().contains("op in progress"), "{}", r.body);

    stack.add_worker(&[]);
    for id in [&team, &member] {
        stack.ops_settled(id, SETTLE).await;
    }
    let before = rows_naming(&stack.pool, &ids).await;
    let tables: Vec<&str> = before.keys().filter_map(|k| k.split('.').next()).collect();
    for expected in [
        "workspaces",
        "workspace_tokens",
        "workspace_ops",
        "activity_logs",
        "structure_events",
        "agent_memories",
        "memory_audit",
    ] {
        assert!(tables.contains(&expected), "the test wrote rows into {expected}: {before:?}");
    }

    let r = stack.delete(&format!("/workspaces/{team}?purge=true")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"status": "purged", "cascade_deleted": 1}));

    let after = rows_naming(&stack.pool, &ids).await;
    let left: BTreeMap<&String, &i64> =
        after.iter().filter(|(col, _)| !HISTORY_COLUMNS.iter().any(|(t, c)| **col == format!("{t}.{c}"))).collect();
    assert!(left.is_empty(), "rows still keyed on the purged workspaces: {left:?} (before: {before:?})");
    // What survives is history held by the workspace that remains, and it is still readable.
    assert!(after.contains_key("delegations.caller_id"), "{after:?}");
    let r = stack.get(&format!("/workspaces/{keeper}/delegations")).await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(1), "{}", r.body);

    let r = stack.get(&format!("/workspaces/{team}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = stack.delete(&format!("/workspaces/{team}?purge=true")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let purged_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM structure_events WHERE event_type = 'WORKSPACE_PURGED' AND payload->>'workspace_id' = $1",
    )
    .bind(&team)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(purged_events, 1);
}
