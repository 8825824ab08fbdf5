//! Per-kind queue statistics, and which kinds are paused. Only lifecycle ops can be paused:
//! sweeps run once per period anyway, and an inbox drain is per workspace.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::Result;
use crate::domain::OpKind;
use crate::store::paused_queues;
use crate::sweeps::SweepKind;

/// The kinds an operator may pause.
pub const PAUSABLE: [OpKind; 3] = [OpKind::Provision, OpKind::Stop, OpKind::Restart];

pub fn pausable(kind: &str) -> Option<OpKind> {
    PAUSABLE.into_iter().find(|k| k.as_str() == kind)
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Window {
    pub succeeded: i64,
    pub failed: i64,
    pub canceled: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub kind: String,
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
    pub queued: i64,
    pub running: i64,
    /// How long the oldest queued job has waited since it was created.
    pub oldest_waiting_seconds: Option<f64>,
    pub last_minute: Window,
    pub last_hour: Window,
}

#[derive(sqlx::FromRow)]
struct Row {
    kind: String,
    queued: i64,
    running: i64,
    oldest_waiting_seconds: Option<f64>,
    s1m: i64,
    f1m: i64,
    c1m: i64,
    s1h: i64,
    f1h: i64,
    c1h: i64,
}

/// The windowed counts of rows with a final `state` and a `done` time, as select items.
macro_rules! windows {
    ($state:literal, $done:literal) => {
        concat!(
            "count(*) FILTER (WHERE ",
            $state,
            " = 'succeeded' AND ",
            $done,
            " > now() - interval '1 minute') AS s1m,
             count(*) FILTER (WHERE ",
            $state,
            " = 'failed' AND ",
            $done,
            " > now() - interval '1 minute') AS f1m,
             count(*) FILTER (WHERE ",
            $state,
            " = 'canceled' AND ",
            $done,
            " > now() - interval '1 minute') AS c1m,
             count(*) FILTER (WHERE ",
            $state,
            " = 'succeeded' AND ",
            $done,
            " > now() - interval '1 hour') AS s1h,
             count(*) FILTER (WHERE ",
            $state,
            " = 'failed' AND ",
            $done,
            " > now() - interval '1 hour') AS f1h,
             count(*) FILTER (WHERE ",
            $state,
            " = 'canceled' AND ",
            $done,
            " > now() - interval '1 hour') AS c1h"
        )
    };
}

/// Unfinished ops (partial index) and those finished within the hour (finished-at index).
const OPS: &str = concat!(
    "SELECT kind, count(*) FILTER (WHERE status = 'queued') AS queued,
            count(*) FILTER (WHERE status = 'running') AS running,
            extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued'))::float8
                AS oldest_waiting_seconds, ",
    windows!("status", "finished_at"),
    " FROM workspace_ops
      WHERE status IN ('queued', 'running') OR finished_at > now() - interval '1 hour'
      GROUP BY kind"
);

const SWEEPS: &str = concat!(
    "SELECT 'sweep:' || sweep AS kind, count(*) FILTER (WHERE finished_at IS NULL AND started_at IS NULL) AS queued,
            count(*) FILTER (WHERE finished_at IS NULL AND started_at IS NOT NULL) AS running,
            extract(epoch FROM now() - min(claimed_at) FILTER (WHERE started_at IS NULL AND finished_at IS NULL))::float8
                AS oldest_waiting_seconds, ",
    windows!("st", "finished_at"),
    " FROM (SELECT *, CASE WHEN outcome LIKE 'error:%' THEN 'failed' WHEN outcome LIKE 'skipped%' THEN 'canceled'
                           ELSE 'succeeded' END AS st
              FROM sweep_runs WHERE claimed_at > now() - interval '1 hour' OR finished_at IS NULL) s
      GROUP BY sweep"
);

/// Pending items (partial index); delivered and given-up ones by when that happened.
const INBOX: &str = concat!(
    "SELECT 'inbox_push' AS kind, count(*) FILTER (WHERE st = 'queued') AS queued, 0::bigint AS running,
            extract(epoch FROM now() - min(created_at) FILTER (WHERE st = 'queued'))::float8 AS oldest_waiting_seconds, ",
    windows!("st", "done"),
    " FROM (SELECT 'queued' AS st, created_at, NULL::timestamptz AS done FROM activity_logs WHERE delivery = 'pending'
            UNION ALL
            SELECT 'succeeded', created_at, delivered_at FROM activity_logs
             WHERE delivered_at > now() - interval '1 hour' AND delivery = 'delivered'
            UNION ALL
            SELECT 'failed', a.created_at, d.finished_at FROM activity_logs a
              JOIN inbox_delivery_attempts d ON d.item_id = a.id AND d.attempt = a.delivery_attempts
             WHERE a.delivery = 'undeliverable' AND d.finished_at > now() - interval '1 hour') i"
);

/// Every kind, in a fixed order, zero-filled.
pub async fn stats(pool: &PgPool) -> Result<Vec<QueueStats>> {
    let mut rows: HashMap<String, Row> = HashMap::new();
    for sql in [OPS, SWEEPS, INBOX] {
        for r in sqlx::query_as::<_, Row>(sql).fetch_all(pool).await? {
            rows.insert(r.kind.clone(), r);
        }
    }
    let paused: HashMap<String, paused_queues::PausedQueue> =
        paused_queues::list(pool).await?.into_iter().map(|p| (p.kind.clone(), p)).collect();
    let mut kinds: Vec<String> = PAUSABLE.iter().map(|k| k.as_str().to_string()).collect();
    kinds.extend(SweepKind::ALL.iter().map(|k| format!("sweep:{}", k.name())));
    kinds.push("inbox_push".into());
    Ok(kinds
        .into_iter()
        .map(|kind| {
            let p = paused.get(&kind);
            let r = rows.remove(&kind);
            QueueStats {
                paused: p.is_some(),
                paused_at: p.map(|p| p.paused_at),
                paused_by: p.map(|p| p.paused_by.clone()),
                queued: r.as_ref().map_or(0, |r| r.queued),
                running: r.as_ref().map_or(0, |r| r.running),
                oldest_waiting_seconds: r.as_ref().and_then(|r| r.oldest_waiting_seconds),
                last_minute: r.as_ref().map_or_else(Window::default, |r| Window {
                    succeeded: r.s1m,
                    failed: r.f1m,
                    canceled: r.c1m,
                }),
                last_hour: r.as_ref().map_or_else(Window::default, |r| Window {
                    succeeded: r.s1h,
                    failed: r.f1h,
                    canceled: r.c1h,
                }),
                kind,
            }
        })
        .collect())
}
