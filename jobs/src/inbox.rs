//! The activity log as an inbox. An inbox item is an `a2a_receive` row: for a poll-mode agent
//! the row is the delivery (its poller reads it with `since_id`); for a push-mode agent the
//! row is also marked `pending` and the workspace's InboxPush drain POSTs it to the agent
//! (`crate::kinds::inbox_push`). Either way the row is written in the caller's transaction,
//! so whatever caused it and its delivery commit together.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::Result;
use crate::config::Env;
use crate::domain::DeliveryMode;
use crate::notify::Announcer;
use crate::ops::rounds::{Rounds, Written};
use crate::queue::{self, INBOX_QUEUE, InboxTask};
use crate::retry::RetryPolicy;
use crate::store::activity_logs::{self, NewActivity};
use crate::store::apalis::NewTask;

/// The activity type of every inbox item.
pub const INBOX_TYPE: &str = "a2a_receive";

/// Types an agent may write to its own log (`POST /workspaces/:id/activity`); inbox items
/// are written only by the platform.
pub const AGENT_TYPES: [&str; 6] = ["a2a_send", "task_update", "agent_log", "skill_promotion", "memory_write", "error"];

/// How pushes are made and retried.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// `INBOX_PUSH_CONNECT_TIMEOUT_SECONDS`.
    pub connect_timeout: Duration,
    /// `INBOX_PUSH_TIMEOUT_SECONDS`: the whole request, answer included.
    pub timeout: Duration,
    /// `INBOX_RETRY_MAX_ATTEMPTS`, `INBOX_RETRY_MIN_DELAY_SECONDS`,
    /// `INBOX_RETRY_MAX_DELAY_SECONDS`: about 20 attempts over hours by default.
    pub retry: RetryPolicy,
}

impl PushSettings {
    pub fn from_env(env: &Env) -> Result<PushSettings> {
        let max_attempts: i32 = env.num("INBOX_RETRY_MAX_ATTEMPTS", 20)?;
        if !(1..=1000).contains(&max_attempts) {
            return Err(crate::Error::Config("INBOX_RETRY_MAX_ATTEMPTS must be between 1 and 1000".into()));
        }
        Ok(PushSettings {
            connect_timeout: env.secs("INBOX_PUSH_CONNECT_TIMEOUT_SECONDS", 5)?,
            timeout: env.secs("INBOX_PUSH_TIMEOUT_SECONDS", 30)?,
            retry: RetryPolicy {
                max_attempts,
                min_delay: env.secs("INBOX_RETRY_MIN_DELAY_SECONDS", 2)?,
                max_delay: env.secs("INBOX_RETRY_MAX_DELAY_SECONDS", 600)?,
            },
        })
    }
}

/// Writes `a` to its workspace's log in one statement: in the caller's transaction, or
/// committing by itself when `db` is the pool. An inbox item for a push-mode agent is
/// marked for push, and a drain is made due unless one already is. Returns the row id.
pub async fn write<'e>(db: impl PgExecutor<'e>, mode: DeliveryMode, mut a: NewActivity) -> Result<i64> {
    a.push = pushed(&a, mode);
    let drain = a.push.then(|| NewTask::new(INBOX_QUEUE, &InboxTask::new(a.workspace_id))).transpose()?;
    let (id, armed) = activity_logs::insert_at_head(db, &a, drain.as_ref()).await?;
    if armed {
        crate::metrics::enqueued(crate::metrics::JobKind::InboxPush);
    }
    Ok(id)
}

fn pushed(a: &NewActivity, mode: DeliveryMode) -> bool {
    a.activity_type == INBOX_TYPE && mode == DeliveryMode::Push
}

/// The api's appends. Concurrent appends that arm no drain (every row but a push-mode
/// agent's inbox item) run in rounds (ADR 0014): one statement, and one commit, for every
/// append that arrived while the previous round ran. A round does not wait for a
/// workspace's inbox head that another writer holds: that row is appended alone, waiting
/// its turn, while the round goes on. A pushed item, which may enqueue a drain, is
/// appended alone. Waiting readers learn of a round's rows from the [`Announcer`], once the
/// round committed (ADR 0015).
pub struct Appends {
    pool: PgPool,
    rounds: Rounds<NewActivity, Written<i64>>,
}

impl Appends {
    /// Starts the round runner on the current tokio runtime.
    pub fn spawn(pool: PgPool) -> Appends {
        let round_pool = pool.clone();
        let announcer = Arc::new(Announcer::spawn(pool.clone()));
        let rounds = Rounds::spawn(move |rows: Vec<NewActivity>| {
            let (pool, announcer) = (round_pool.clone(), announcer.clone());
            async move {
                match activity_logs::insert_at_free_heads(&pool, &rows).await {
                    Ok(written) => {
                        let ids = rows.iter().zip(&written).filter(|(_, w)| w.is_some()).map(|(a, _)| a.workspace_id);
                        announcer.announce(ids.collect());
                        // A row whose head another writer held waits for it alone.
                        written.into_iter().map(|w| w.map_or(Written::Alone, Written::Done)).collect()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, rows = rows.len(), "a round of appends failed");
                        // The statement commits itself.
                        Written::all_failed(rows.len(), &e, true)
                    }
                }
            }
        });
        Appends { pool, rounds }
    }

    /// [`write`], in the next round when it can share one.
    pub async fn append(&self, mode: DeliveryMode, mut a: NewActivity) -> Result<i64> {
        if !pushed(&a, mode) {
            a.push = false;
            if let Some(id) = self.rounds.write(a.clone()).await {
                return id;
            }
        }
        write(&self.pool, mode, a).await
    }
}

/// Enqueues a drain task for the workspace (after `delay`) and names it the due one. The
/// caller holds the head lock.
pub async fn arm_drain(conn: &mut PgConnection, workspace_id: Uuid, delay: Option<Duration>) -> Result<String> {
    let task = queue::enqueue(conn, INBOX_QUEUE, &InboxTask::new(workspace_id), delay).await?;
    crate::metrics::enqueued(crate::metrics::JobKind::InboxPush);
    activity_logs::set_drain_task(conn, workspace_id, &task).await?;
    Ok(task)
}

/// A JSON-RPC `message/send` envelope carrying `text`, with `metadata`.
pub fn message_send(id: &str, text: &str, metadata: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "message/send",
        "params": {"message": {
            "role": "user",
            "messageId": id,
            "parts": [{"kind": "text", "text": text}],
            "metadata": metadata,
        }}
    })
}

/// What is POSTed to a push-mode agent for item `id`: always a JSON-RPC `message/send` whose
/// `messageId` is the item id, which the agent deduplicates on (delivery is at least once).
/// A message keeps its envelope; any other item (a delegation result) becomes a message
/// whose metadata names the item's method.
pub fn push_payload(id: i64, method: Option<&str>, request: Option<&Value>, response: Option<&Value>) -> Value {
    let message_id = id.to_string();
    if method == Some("message/send")
        && let Some(mut envelope) = request.cloned()
        && envelope.pointer("/params/message").is_some_and(Value::is_object)
    {
        envelope["params"]["message"]["messageId"] = json!(message_id);
        if envelope.get("id").is_none_or(Value::is_null) {
            envelope["id"] = json!(message_id);
        }
        return envelope;
    }
    let mut text = response.and_then(|r| r.get("text")).and_then(Value::as_str).unwrap_or_default();
    let mut metadata = json!({"method": method.unwrap_or("notify")});
    for key in ["delegation_id", "status", "error"] {
        if let Some(v) = response.and_then(|r| r.get(key)) {
            metadata[key] = v.clone();
        }
    }
    // A pushed chat upload must tell the agent which file to fetch, as a poller reads it
    // from the item's request body.
    if method == Some(crate::uploads::METHOD)
        && let Some(file) = request
    {
        metadata["file"] = file.clone();
        text = file.get("uri").and_then(Value::as_str).unwrap_or_default();
    }
    message_send(&message_id, text, metadata)
}

/// The delegation an inbox message carries, if any.
pub fn delegation_of(request: Option<&Value>) -> Option<String> {
    request?.pointer("/params/message/metadata/delegation_id")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_keeps_its_envelope_and_takes_the_item_id_as_message_id() {
        let envelope = message_send("caller-chosen", "hi", json!({"delegation_id": "d1"}));
        let p = push_payload(42, Some("message/send"), Some(&envelope), None);
        assert_eq!(p["params"]["message"]["messageId"], "42");
        assert_eq!(p["id"], "caller-chosen");
        assert_eq!(delegation_of(Some(&p)).as_deref(), Some("d1"));
    }

    #[test]
    fn a_chat_upload_is_pushed_with_the_file_to_fetch() {
        let file = json!({"file_id": "f1", "name": "a.txt", "mimeType": "text/plain", "size": 3,
                          "uri": "platform-pending:w1/f1"});
        let p = push_payload(9, Some("chat_upload_receive"), Some(&file), None);
        assert_eq!(p["method"], "message/send");
        assert_eq!(p["params"]["message"]["messageId"], "9");
        assert_eq!(p["params"]["message"]["parts"][0]["text"], "platform-pending:w1/f1");
        assert_eq!(p["params"]["message"]["metadata"]["method"], "chat_upload_receive");
        assert_eq!(p["params"]["message"]["metadata"]["file"], file);
    }

    #[test]
    fn a_delegation_result_becomes_a_message_naming_its_method() {
        let response = json!({"text": "done", "delegation_id": "d1", "status": "completed"});
        let p = push_payload(7, Some("delegate_result"), Some(&json!({"delegation_id": "d1"})), Some(&response));
        assert_eq!(p["method"], "message/send");
        assert_eq!(p["params"]["message"]["messageId"], "7");
        assert_eq!(p["params"]["message"]["parts"][0]["text"], "done");
        assert_eq!(p["params"]["message"]["metadata"]["method"], "delegate_result");
        assert_eq!(p["params"]["message"]["metadata"]["delegation_id"], "d1");
    }
}
