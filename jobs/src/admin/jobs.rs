//! Jobs as operators name and list them. Three sources, one shape:
//!
//! - a lifecycle op (`workspace_ops`), named by its UUID;
//! - a sweep run (`sweep_runs`), named `sweep:<name>@<period start, epoch ms>`;
//! - an inbox item pushed to its agent (`activity_logs` with a delivery), named
//!   `inbox:<item id>`.
//!
//! The listing is newest first, paged by a keyset cursor on (created_at, id).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::OpKind;
use crate::store::activity_logs;
use crate::store::op_attempts::{self, OpAttempt};
use crate::sweeps::SweepKind;
use crate::{Error, Result};

/// Which job a detail, retry or cancel names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    Op(Uuid),
    Sweep { name: &'static str, period_ms: i64 },
    Inbox(i64),
}

impl JobRef {
    pub fn parse(raw: &str) -> Result<JobRef> {
        let invalid = |problem: String| Error::Invalid { field: "job id", problem };
        if let Some(rest) = raw.strip_prefix("sweep:") {
            let (name, ms) = rest
                .split_once('@')
                .ok_or_else(|| invalid(format!("{raw:?} must look like sweep:<name>@<epoch ms>")))?;
            let kind = SweepKind::parse(name)
                .ok_or_else(|| invalid(format!("{raw:?} names no sweep; sweeps are {}", sweep_names().join(", "))))?;
            let period_ms = ms.parse().map_err(|_| invalid(format!("{raw:?} has no epoch ms after '@'")))?;
            return Ok(JobRef::Sweep { name: kind.name(), period_ms });
        }
        if let Some(rest) = raw.strip_prefix("inbox:") {
            return rest
                .parse()
                .map(JobRef::Inbox)
                .map_err(|_| invalid(format!("{raw:?} must look like inbox:<item id>")));
        }
        Uuid::parse_str(raw).map(JobRef::Op).map_err(|_| {
            invalid(format!("{raw:?} is neither an op id (a UUID), sweep:<name>@<epoch ms> nor inbox:<item id>"))
        })
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobRef::Op(id) => write!(f, "{id}"),
            JobRef::Sweep { name, period_ms } => write!(f, "sweep:{name}@{period_ms}"),
            JobRef::Inbox(id) => write!(f, "inbox:{id}"),
        }
    }
}

fn sweep_names() -> Vec<&'static str> {
    SweepKind::ALL.iter().map(|k| k.name()).collect()
}

/// A listing's `kind` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Op(OpKind),
    /// `sweep` (every sweep) or `sweep:<name>`.
    Sweep(Option<SweepKind>),
    InboxPush,
}

impl JobKind {
    /// Every value a `kind` filter takes.
    pub fn allowed() -> Vec<String> {
        let mut v: Vec<String> = ["provision", "stop", "restart", "sweep"].iter().map(|s| s.to_string()).collect();
        v.extend(SweepKind::ALL.iter().map(|k| format!("sweep:{}", k.name())));
        v.push("inbox_push".into());
        v
    }

    pub fn parse(raw: &str) -> Result<JobKind> {
        Ok(match raw {
            "provision" => JobKind::Op(OpKind::Provision),
            "stop" => JobKind::Op(OpKind::Stop),
            "restart" => JobKind::Op(OpKind::Restart),
            "sweep" => JobKind::Sweep(None),
            "inbox_push" => JobKind::InboxPush,
            other => match other.strip_prefix("sweep:").and_then(SweepKind::parse) {
                Some(k) => JobKind::Sweep(Some(k)),
                None => {
                    return Err(Error::Invalid {
                        field: "kind",
                        problem: format!("{raw:?} is unknown; allowed: {}", JobKind::allowed().join(", ")),
                    });
                }
            },
        })
    }
}

/// The one set of states every job is shown in (inbox deliveries are mapped onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub const ALL: [&'static str; 5] = ["queued", "running", "succeeded", "failed", "canceled"];

    pub fn parse(raw: &str) -> Result<JobState> {
        Ok(match raw {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "canceled" => JobState::Canceled,
            _ => {
                return Err(Error::Invalid {
                    field: "state",
                    problem: format!("{raw:?} is unknown; allowed: {}", JobState::ALL.join(", ")),
                });
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    pub last_error: Option<String>,
    /// Why it exists: an op's reason, a sweep's outcome, an inbox item's method.
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub workspace_id: Option<Uuid>,
    /// The worker process that ran (or runs) its latest attempt.
    pub claimed_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Where a page starts: strictly older than this job. Shown to clients as one opaque string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

impl Cursor {
    pub fn of(job: &Job) -> Cursor {
        Cursor { created_at: job.created_at, id: job.id.clone() }
    }

    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.timestamp_micros(), self.id)
    }

    pub fn decode(raw: &str) -> Result<Cursor> {
        let bad = || Error::Invalid {
            field: "before",
            problem: format!("{raw:?} is not a cursor: pass the next_before of the previous page"),
        };
        let (micros, id) = raw.split_once('.').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        if id.is_empty() {
            return Err(bad());
        }
        Ok(Cursor { created_at, id: id.to_string() })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kind: Option<JobKind>,
    pub state: Option<JobState>,
    pub workspace_id: Option<Uuid>,
    pub before: Option<Cursor>,
}

/// The select list of a job row from an op `o`.
macro_rules! op_job {
    () => {
        "o.id::text AS id, o.kind AS kind, o.status AS state, o.attempts, o.max_attempts, o.last_error,
         o.reason, o.requested_by, o.workspace_id, o.claimed_by, o.created_at, o.started_at, o.finished_at"
    };
}

/// A job row from a sweep run `s` and its apalis task `j` (the worker is read off the
/// apalis worker's name, `sweeps-<process id>-<generation>`).
macro_rules! sweep_job {
    () => {
        "'sweep:' || s.sweep || '@' || (extract(epoch FROM s.period_start) * 1000)::bigint AS id,
         'sweep:' || s.sweep AS kind,
         CASE WHEN s.finished_at IS NULL AND s.started_at IS NULL THEN 'queued'
              WHEN s.finished_at IS NULL THEN 'running'
              WHEN s.outcome LIKE 'error:%' THEN 'failed'
              WHEN s.outcome LIKE 'skipped%' THEN 'canceled'
              ELSE 'succeeded' END AS state,
         CASE WHEN s.started_at IS NULL THEN 0 ELSE 1 END AS attempts, 1 AS max_attempts,
         CASE WHEN s.outcome LIKE 'error:%' THEN s.outcome END AS last_error,
         s.outcome AS reason, 'scheduler' AS requested_by, NULL::uuid AS workspace_id,
         regexp_replace(j.lock_by, '^sweeps-(.*)-[0-9]+$', '\\1') AS claimed_by,
         s.claimed_at AS created_at, s.started_at, s.finished_at"
    };
}

/// A job row from a pushed inbox item `a` and the summary `t` of its push attempts.
macro_rules! inbox_job {
    () => {
        "'inbox:' || a.id AS id, 'inbox_push' AS kind,
         CASE a.delivery WHEN 'pending' THEN 'queued' WHEN 'delivered' THEN 'succeeded' ELSE 'failed' END AS state,
         a.delivery_attempts AS attempts, NULL::int AS max_attempts,
         coalesce(CASE WHEN a.delivery = 'undeliverable' THEN a.error_detail END, t.last_error) AS last_error,
         a.method AS reason,
         CASE WHEN a.source_id IS NULL THEN 'platform' ELSE 'workspace:' || a.source_id END AS requested_by,
         a.workspace_id, t.last_worker AS claimed_by, a.created_at, t.first_started AS started_at,
         CASE a.delivery WHEN 'delivered' THEN a.delivered_at WHEN 'undeliverable' THEN t.last_finished END
             AS finished_at"
    };
}

macro_rules! inbox_attempts {
    () => {
        "LEFT JOIN LATERAL (
             SELECT min(started_at) AS first_started, max(finished_at) AS last_finished,
                    (array_agg(error ORDER BY attempt DESC))[1] AS last_error,
                    (array_agg(worker ORDER BY attempt DESC))[1] AS last_worker
               FROM inbox_delivery_attempts WHERE item_id = a.id) t ON true"
    };
}

/// Binds: $1 list ops, $2 op kind, $3 list sweeps, $4 sweep name, $5 list inbox items,
/// $6 state, $7 workspace, $8/$9 cursor (created_at, id), $10 limit. Each source is read
/// newest first through its created-at index and cut at the limit before the merge. Pushed
/// items are all `a2a_receive` (`inbox::INBOX_TYPE`); the list says so, as a literal a
/// generic plan can match, because the index of pushed items does, which keeps that index
/// out of the drain's pending read.
const LIST: &str = concat!(
    "SELECT * FROM (
     (SELECT ",
    op_job!(),
    " FROM workspace_ops o
       WHERE $1 AND ($2::text IS NULL OR o.kind = $2) AND ($6::text IS NULL OR o.status = $6)
         AND ($7::uuid IS NULL OR o.workspace_id = $7)
         AND ($8::timestamptz IS NULL OR o.created_at < $8 OR (o.created_at = $8 AND o.id::text < $9))
       ORDER BY o.created_at DESC, o.id::text DESC LIMIT $10)
     UNION ALL
     (SELECT * FROM (SELECT ",
    sweep_job!(),
    " FROM sweep_runs s LEFT JOIN apalis.jobs j ON j.id = s.task_id
         WHERE $3 AND $7::uuid IS NULL AND ($4::text IS NULL OR s.sweep = $4)
           AND ($8::timestamptz IS NULL OR s.claimed_at <= $8)
         ORDER BY s.claimed_at DESC) x
       WHERE ($6::text IS NULL OR x.state = $6)
         AND ($8::timestamptz IS NULL OR x.created_at < $8 OR (x.created_at = $8 AND x.id < $9))
       ORDER BY x.created_at DESC, x.id DESC LIMIT $10)
     UNION ALL
     (SELECT * FROM (SELECT ",
    inbox_job!(),
    " FROM activity_logs a ",
    inbox_attempts!(),
    " WHERE $5 AND a.delivery IS NOT NULL AND a.activity_type = 'a2a_receive' AND ($7::uuid IS NULL OR a.workspace_id = $7)
           AND ($8::timestamptz IS NULL OR a.created_at <= $8)
         ORDER BY a.created_at DESC) x
       WHERE ($6::text IS NULL OR x.state = $6)
         AND ($8::timestamptz IS NULL OR x.created_at < $8 OR (x.created_at = $8 AND x.id < $9))
       ORDER BY x.created_at DESC, x.id DESC LIMIT $10)
     ) jobs ORDER BY created_at DESC, id DESC LIMIT $10"
);

/// Up to `limit` jobs matching `f`, newest first, and the cursor of the next page when
/// there may be one.
pub async fn list<'e>(db: impl PgExecutor<'e>, f: &Filter, limit: i64) -> Result<(Vec<Job>, Option<Cursor>)> {
    let (ops, sweeps, inbox) = match f.kind {
        None => (true, true, true),
        Some(JobKind::Op(_)) => (true, false, false),
        Some(JobKind::Sweep(_)) => (false, true, false),
        Some(JobKind::InboxPush) => (false, false, true),
    };
    let op_kind = match f.kind {
        Some(JobKind::Op(k)) => Some(k.as_str()),
        _ => None,
    };
    let sweep = match f.kind {
        Some(JobKind::Sweep(Some(k))) => Some(k.name()),
        _ => None,
    };
    let mut rows: Vec<Job> = sqlx::query_as(LIST)
        .bind(ops)
        .bind(op_kind)
        .bind(sweeps)
        .bind(sweep)
        .bind(inbox)
        .bind(f.state.map(JobState::as_str))
        .bind(f.workspace_id)
        .bind(f.before.as_ref().map(|c| c.created_at))
        .bind(f.before.as_ref().map(|c| c.id.as_str()))
        .bind(limit + 1)
        .fetch_all(db)
        .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(Cursor::of)
    } else {
        None
    };
    Ok((rows, next))
}

/// One job by its reference, in the listing's shape.
pub async fn get<'e>(db: impl PgExecutor<'e>, r: &JobRef) -> Result<Option<Job>> {
    let q = match r {
        JobRef::Op(id) => {
            sqlx::query_as(concat!("SELECT ", op_job!(), " FROM workspace_ops o WHERE o.id = $1")).bind(*id)
        }
        JobRef::Sweep { name, period_ms } => sqlx::query_as(concat!(
            "SELECT ",
            sweep_job!(),
            " FROM sweep_runs s LEFT JOIN apalis.jobs j ON j.id = s.task_id
              WHERE s.sweep = $1 AND (extract(epoch FROM s.period_start) * 1000)::bigint = $2"
        ))
        .bind(*name)
        .bind(*period_ms),
        JobRef::Inbox(id) => sqlx::query_as(concat!(
            "SELECT ",
            inbox_job!(),
            " FROM activity_logs a ",
            inbox_attempts!(),
            " WHERE a.id = $1 AND a.delivery IS NOT NULL"
        ))
        .bind(*id),
    };
    Ok(q.fetch_optional(db).await?)
}

/// The apalis task that delivers (or last delivered) a job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Task {
    pub id: String,
    pub queue: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub lock_by: Option<String>,
    pub done_at: Option<DateTime<Utc>>,
    /// apalis' record of the last run (`{"Err": ...}` when it failed).
    pub last_result: Option<Value>,
}

pub async fn task<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<Option<Task>> {
    Ok(sqlx::query_as(
        "SELECT id, job_type AS queue, status, attempts, max_attempts, run_at, lock_by, done_at,
                last_result::jsonb AS last_result
           FROM apalis.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Each attempt of a job, in order, in one shape for every source.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub worker: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
}

impl From<OpAttempt> for Attempt {
    fn from(a: OpAttempt) -> Self {
        Attempt {
            attempt: a.attempt,
            worker: a.worker,
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome,
            error: a.error,
            http_status: None,
        }
    }
}

pub async fn attempts(pool: &sqlx::PgPool, job: &Job, r: &JobRef) -> Result<Vec<Attempt>> {
    Ok(match r {
        JobRef::Op(id) => op_attempts::of_op(pool, *id).await?.into_iter().map(Attempt::from).collect(),
        JobRef::Sweep { .. } => match job.started_at {
            // A sweep has no retries: its run is its one attempt.
            Some(started_at) => vec![Attempt {
                attempt: 1,
                worker: job.claimed_by.clone(),
                started_at,
                finished_at: job.finished_at,
                outcome: job.finished_at.map(|_| job.state.clone()),
                error: job.last_error.clone(),
                http_status: None,
            }],
            None => vec![],
        },
        JobRef::Inbox(id) => activity_logs::attempts(pool, *id)
            .await?
            .into_iter()
            .map(|a| Attempt {
                attempt: a.attempt,
                worker: a.worker,
                started_at: a.started_at,
                finished_at: Some(a.finished_at),
                outcome: Some(if a.error.is_none() { "succeeded".into() } else { "failed".into() }),
                error: a.error,
                http_status: a.http_status,
            })
            .collect(),
    })
}

/// The apalis task id a job names: an op's current task, a sweep's, an inbox item's
/// workspace drain.
pub async fn task_id_of<'e>(db: impl PgExecutor<'e>, r: &JobRef) -> Result<Option<String>> {
    Ok(match r {
        JobRef::Op(id) => {
            sqlx::query_scalar("SELECT task_id FROM workspace_ops WHERE id = $1").bind(*id).fetch_optional(db).await?
        }
        JobRef::Sweep { name, period_ms } => sqlx::query_scalar(
            "SELECT task_id FROM sweep_runs WHERE sweep = $1 AND (extract(epoch FROM period_start) * 1000)::bigint = $2",
        )
        .bind(*name)
        .bind(*period_ms)
        .fetch_optional(db)
        .await?,
        JobRef::Inbox(id) => sqlx::query_scalar(
            "SELECT h.drain_task_id FROM activity_logs a JOIN inbox_heads h ON h.workspace_id = a.workspace_id
              WHERE a.id = $1",
        )
        .bind(*id)
        .fetch_optional(db)
        .await?,
    }
    .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_round_trip_and_bad_ones_name_the_shapes() {
        let op = Uuid::new_v4();
        for r in [JobRef::Op(op), JobRef::Sweep { name: "liveness", period_ms: 1_700_000_000_000 }, JobRef::Inbox(42)] {
            assert_eq!(JobRef::parse(&r.to_string()).unwrap(), r);
        }
        for bad in ["", "nope", "sweep:liveness", "sweep:nothing@1", "sweep:liveness@x", "inbox:", "inbox:1.5"] {
            let e = JobRef::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("job id "), "{bad}: {e}");
        }
    }

    #[test]
    fn kinds_and_states_parse_and_unknown_ones_list_what_is_allowed() {
        assert_eq!(JobKind::parse("stop").unwrap(), JobKind::Op(OpKind::Stop));
        assert_eq!(JobKind::parse("sweep").unwrap(), JobKind::Sweep(None));
        assert_eq!(JobKind::parse("sweep:orphans").unwrap(), JobKind::Sweep(Some(SweepKind::Orphans)));
        assert_eq!(JobKind::parse("inbox_push").unwrap(), JobKind::InboxPush);
        let e = JobKind::parse("sweep:nothing").unwrap_err().to_string();
        assert!(e.contains("sweep:retention") && e.contains("inbox_push"), "{e}");
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s).unwrap().as_str(), s);
        }
        assert!(JobState::parse("pending").unwrap_err().to_string().contains("canceled"));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_795_330_397_123_456).unwrap(),
            id: "sweep:liveness@5".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for bad in ["", "x.y", "123", "123.", "99999999999999999999.a"] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
