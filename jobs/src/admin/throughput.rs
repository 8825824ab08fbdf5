//! Lifecycle ops finished per minute over the last hour, for the dashboard's chart.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use crate::Result;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Minute {
    pub minute: DateTime<Utc>,
    pub succeeded: i64,
    pub failed: i64,
}

/// Sixty minutes, oldest first, the current one last and zero-filled: a minute with no
/// finished op is a bar of height zero, not a gap that shifts the others.
pub async fn last_hour<'e>(db: impl PgExecutor<'e>) -> Result<Vec<Minute>> {
    Ok(sqlx::query_as(
        "SELECT m.minute,
                count(o.id) FILTER (WHERE o.status = 'succeeded') AS succeeded,
                count(o.id) FILTER (WHERE o.status = 'failed') AS failed
           FROM generate_series(date_trunc('minute', now()) - interval '59 minutes', date_trunc('minute', now()),
                                interval '1 minute') AS m(minute)
           LEFT JOIN workspace_ops o
             ON o.finished_at >= m.minute AND o.finished_at < m.minute + interval '1 minute'
            AND o.status IN ('succeeded', 'failed')
          GROUP BY m.minute ORDER BY m.minute",
    )
    .fetch_all(db)
    .await?)
}
