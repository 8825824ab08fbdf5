//! LISTEN/NOTIFY plumbing. Writers notify inside their transaction (delivered at commit);
//! one listener per process turns notifications into an in-process broadcast that
//! WebSocket clients and `?wait=` callers subscribe to.
//!
//! A listener can go deaf without an error: sqlx's `PgListener` reconnects silently and
//! drops whatever was sent meanwhile, and a half-open socket blocks a read for ever. So the
//! listener proves it still hears: every [`KEEPALIVE_EVERY`] it sends itself a notice through
//! the pool, and when that notice does not come back within [`KEEPALIVE_DEADLINE`] the
//! listener is thrown away and rebuilt. Every (re)build broadcasts [`Notice::Resync`], so
//! subscribers re-read what they follow instead of trusting notices they may have missed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgNotification, PgPoolOptions};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::events::Envelope;
use crate::ops::rounds::Rounds;
use crate::retry;
use crate::store::structure_events;
use crate::{Error, Result};

/// Payload: the event's envelope as JSON, or only its id when the envelope is too long
/// for a notification (`structure_events::NOTIFY_INLINE_MAX`).
pub const EVENTS_CHANNEL: &str = "ws_events";
/// Payload: `<op id> <workspace id>`.
pub const OPS_CHANNEL: &str = "ws_ops";
/// Payload: the ids of workspaces that rows read (not pushed) were appended to, separated
/// by spaces; or `*` when there were too many to name.
pub const INBOX_CHANNEL: &str = "ws_inbox";
/// Past this many workspaces an append notice names none (`*`): a notification holds at
/// most 8000 bytes, and each id takes 37.
pub const INBOX_NOTICE_NAMES_MAX: usize = 200;
/// Payload: `<listener nonce> <sequence>`; each listener only answers to its own.
pub const KEEPALIVE_CHANNEL: &str = "ws_keepalive";
/// The listener's session name in `pg_stat_activity`, so operators (and tests) can find it.
pub const LISTENER_APPLICATION_NAME: &str = "workspace-server-listener";

/// How often the listener checks that it still hears.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);
/// How long its own notice may take to come back before the listener counts as deaf.
pub const KEEPALIVE_DEADLINE: Duration = Duration::from_secs(10);

/// A listener that ran this long was healthy: the next failure starts the backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub enum Notice {
    Event(Box<Envelope>),
    Op {
        op_id: Uuid,
        workspace_id: Uuid,
    },
    /// Rows that readers poll for were appended to these workspaces' logs (`None`: to too
    /// many to name, so every reader re-reads).
    Appended(Option<Arc<[Uuid]>>),
    /// The listener was (re)built: notifications may have been missed, so subscribers re-read.
    Resync,
}

impl Notice {
    pub fn workspace_id(&self) -> Option<Uuid> {
        match self {
            Notice::Event(e) => e.workspace_id,
            Notice::Op { workspace_id, .. } => Some(*workspace_id),
            Notice::Appended(_) | Notice::Resync => None,
        }
    }
}

/// Starts the process-wide listener and returns the sender that subscribers clone from.
/// The task rebuilds the listener with backoff for as long as the process lives.
pub fn spawn_listener(pool: PgPool) -> broadcast::Sender<Notice> {
    let (tx, _) = broadcast::channel(4096);
    let sender = tx.clone();
    tokio::spawn(async move {
        let backoff = || retry::forever(Duration::from_millis(200), Duration::from_secs(5));
        let mut delays = backoff();
        loop {
            let started = Instant::now();
            let Err(e) = listen(&pool, &sender).await;
            tracing::warn!(error = %e, "event listener lost; rebuilding it");
            // Waiters re-read now rather than on their own slow timer.
            let _ = sender.send(Notice::Resync);
            if started.elapsed() >= HEALTHY_RUN {
                delays = backoff();
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
        }
    });
    tx
}

/// Aborts the task when dropped, so a rebuilt listener never leaves its reader behind.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Received = std::result::Result<Option<PgNotification>, sqlx::Error>;

/// Runs one listener until it fails or goes deaf; it never returns otherwise.
async fn listen(pool: &PgPool, sender: &broadcast::Sender<Notice>) -> Result<Infallible> {
    let listener = tokio::time::timeout(KEEPALIVE_DEADLINE, subscribe(pool))
        .await
        .map_err(|_| Error::Internal(format!("the event listener did not connect within {KEEPALIVE_DEADLINE:?}")))??;
    // Anything committed while we were not listening is re-read by subscribers.
    let _ = sender.send(Notice::Resync);

    // The reader owns the listener, so the keepalive's timer never interrupts a read.
    let (tx, mut rx) = mpsc::channel::<Received>(256);
    let _reader = AbortOnDrop(tokio::spawn(read(listener, tx)));

    let nonce = Uuid::new_v4();
    let mut sequence: u64 = 0;
    // The keepalive payload in flight, and when it must have come back.
    let mut awaited: Option<(String, Instant)> = None;
    let mut next_ping = Instant::now() + KEEPALIVE_EVERY;
    loop {
        let wake = awaited.as_ref().map_or(next_ping, |(_, by)| *by);
        tokio::select! {
            received = rx.recv() => {
                let n = match received {
                    Some(Ok(Some(n))) => n,
                    Some(Ok(None)) | None => return Err(Error::Internal("the event listener's connection was lost".into())),
                    Some(Err(e)) => return Err(e.into()),
                };
                if n.channel() == KEEPALIVE_CHANNEL {
                    if awaited.as_ref().is_some_and(|(payload, _)| payload == n.payload()) {
                        awaited = None;
                        next_ping = Instant::now() + KEEPALIVE_EVERY;
                    }
                    continue;
                }
                if let Some(notice) = decode(pool, &n).await? {
                    let _ = sender.send(notice);
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if awaited.is_some() {
                    return Err(Error::Internal(format!(
                        "the event listener did not hear its own keepalive within {KEEPALIVE_DEADLINE:?}"
                    )));
                }
                sequence += 1;
                let payload = format!("{nonce} {sequence}");
                let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(KEEPALIVE_CHANNEL).bind(&payload).execute(pool);
                tokio::time::timeout(KEEPALIVE_DEADLINE, sent)
                    .await
                    .map_err(|_| Error::Internal("the keepalive notice could not be sent in time".into()))??;
                awaited = Some((payload, Instant::now() + KEEPALIVE_DEADLINE));
            }
        }
    }
}

/// A listener on a session of its own: named, so it can be found in `pg_stat_activity`;
/// never lent to a request; and thrown away whole, pool and all, when it goes deaf.
async fn subscribe(pool: &PgPool) -> Result<PgListener> {
    let options = pool.connect_options().as_ref().clone().application_name(LISTENER_APPLICATION_NAME);
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(KEEPALIVE_DEADLINE)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&own).await?;
    // A lost connection must end this listener (and be announced as a resync), not be
    // replaced behind our back with the notices sent meanwhile gone.
    listener.eager_reconnect(false);
    listener.listen_all([EVENTS_CHANNEL, OPS_CHANNEL, INBOX_CHANNEL, KEEPALIVE_CHANNEL]).await?;
    Ok(listener)
}

async fn read(mut listener: PgListener, tx: mpsc::Sender<Received>) {
    loop {
        let received = listener.try_recv().await;
        let last = !matches!(received, Ok(Some(_)));
        if tx.send(received).await.is_err() || last {
            return;
        }
    }
}

async fn decode(pool: &PgPool, n: &PgNotification) -> Result<Option<Notice>> {
    Ok(match n.channel() {
        EVENTS_CHANNEL => {
            let payload = n.payload();
            if payload.starts_with('{') {
                match serde_json::from_str::<Envelope>(payload) {
                    Ok(e) => Some(Notice::Event(Box::new(e))),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable event notification; ignored");
                        None
                    }
                }
            } else {
                let Ok(id) = payload.parse::<i64>() else { return Ok(None) };
                structure_events::get(pool, id).await?.map(|e| Notice::Event(Box::new(e.into())))
            }
        }
        OPS_CHANNEL => {
            let mut parts = n.payload().split(' ');
            match (parts.next().map(Uuid::parse_str), parts.next().map(Uuid::parse_str)) {
                (Some(Ok(op_id)), Some(Ok(workspace_id))) => Some(Notice::Op { op_id, workspace_id }),
                _ => None,
            }
        }
        INBOX_CHANNEL => Some(Notice::Appended(appended_to(n.payload()))),
        _ => None,
    })
}

/// The [`INBOX_CHANNEL`] payload naming `ids` (each once), or `*` past
/// [`INBOX_NOTICE_NAMES_MAX`].
pub fn inbox_payload(ids: &[Uuid]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > INBOX_NOTICE_NAMES_MAX {
        return "*".into();
    }
    ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(" ")
}

/// Announces rows written by rounds (ADR 0015) on [`INBOX_CHANNEL`] after they committed,
/// off the rounds' path: a notice in a round's own transaction made its commit a notifying
/// one, which costs the api a fifth of its appends. One notice is in flight at a time, and
/// it names every workspace announced while the previous one was sent. A notice that cannot
/// be sent is logged and dropped: waiting readers re-read every few seconds regardless
/// (`long_poll::REREAD_EVERY`), so it costs them latency, and never a row.
pub struct Announcer {
    rounds: Rounds<Vec<Uuid>, ()>,
}

impl Announcer {
    /// Starts the sender on the current tokio runtime; it ends with the last `Announcer`.
    pub fn spawn(pool: PgPool) -> Announcer {
        // A round is every announcement queued while the previous notice was sent.
        let rounds = Rounds::spawn(move |batches: Vec<Vec<Uuid>>| {
            let pool = pool.clone();
            async move {
                let n = batches.len();
                let payload = inbox_payload(&batches.concat());
                // The notice's transaction commits without waiting for its WAL flush: it
                // carries no row (those committed durably in their round), and a crash
                // that loses it loses only a wake-up. Waiting would put one more flush
                // beside every round's.
                let sent = sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
                    .bind(INBOX_CHANNEL)
                    .bind(&payload)
                    .execute(&pool);
                if let Err(e) = sent.await {
                    tracing::warn!(error = %e, "could not announce appended rows; waiting readers find them on their re-read");
                }
                vec![(); n]
            }
        });
        Announcer { rounds }
    }

    /// Queues a notice naming `ids`; returns at once.
    pub fn announce(&self, ids: Vec<Uuid>) {
        if !ids.is_empty() {
            self.rounds.send(ids);
        }
    }
}

/// The workspaces an [`INBOX_CHANNEL`] payload names; `None` (everyone re-reads) for `*`,
/// or for a payload that does not parse.
fn appended_to(payload: &str) -> Option<Arc<[Uuid]>> {
    payload.split(' ').map(Uuid::parse_str).collect::<std::result::Result<Vec<_>, _>>().ok().map(Arc::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbox_notice_names_its_workspaces_or_none_for_everyone() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(appended_to(&format!("{a} {b}")).map(|ids| ids.to_vec()), Some(vec![a, b]));
        for everyone in ["*", "not an id", ""] {
            assert_eq!(appended_to(everyone), None, "{everyone:?}");
        }
    }

    #[test]
    fn an_inbox_payload_names_each_workspace_once_and_past_the_limit_none() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut named = appended_to(&inbox_payload(&[a, b, a])).expect("named").to_vec();
        named.sort();
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(named, both);
        let many: Vec<Uuid> = (0..=INBOX_NOTICE_NAMES_MAX).map(|_| Uuid::new_v4()).collect();
        assert_eq!(inbox_payload(&many), "*");
        let most = &many[..INBOX_NOTICE_NAMES_MAX];
        let payload = inbox_payload(most);
        assert!(payload.len() < 8000, "a notification holds at most 8000 bytes: {}", payload.len());
        assert_eq!(appended_to(&payload).map(|ids| ids.len()), Some(INBOX_NOTICE_NAMES_MAX));
    }
}
