//! LISTEN/NOTIFY plumbing. Writers notify inside their transaction (delivered at commit);
//! one listener per process turns notifications into an in-process broadcast that
//! WebSocket clients and `?wait=` callers subscribe to.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::events::Envelope;
use crate::retry;
use crate::store::structure_events;

/// Payload: the event id.
pub const EVENTS_CHANNEL: &str = "ws_events";
/// Payload: `<op id> <workspace id>`.
pub const OPS_CHANNEL: &str = "ws_ops";

#[derive(Debug, Clone)]
pub enum Notice {
    Event(Box<Envelope>),
    Op {
        op_id: Uuid,
        workspace_id: Uuid,
    },
    /// The listener reconnected: notifications may have been missed, so waiters re-read.
    Resync,
}

impl Notice {
    pub fn workspace_id(&self) -> Option<Uuid> {
        match self {
            Notice::Event(e) => e.workspace_id,
            Notice::Op { workspace_id, .. } => Some(*workspace_id),
            Notice::Resync => None,
        }
    }
}

/// Starts the process-wide listener and returns the sender that subscribers clone from.
/// The task reconnects with backoff for as long as the process lives.
pub fn spawn_listener(pool: PgPool) -> broadcast::Sender<Notice> {
    let (tx, _) = broadcast::channel(4096);
    let sender = tx.clone();
    tokio::spawn(async move {
        for delay in retry::forever(Duration::from_millis(200), Duration::from_secs(5)) {
            if let Err(e) = listen(&pool, &sender).await {
                tracing::warn!(error = %e, "event listener lost its connection; reconnecting");
            }
            let _ = sender.send(Notice::Resync);
            tokio::time::sleep(delay).await;
        }
    });
    tx
}

async fn listen(pool: &PgPool, sender: &broadcast::Sender<Notice>) -> crate::Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([EVENTS_CHANNEL, OPS_CHANNEL]).await?;
    // Anything committed while we were not listening is re-read by waiters.
    let _ = sender.send(Notice::Resync);
    loop {
        let n = listener.recv().await?;
        let notice = match n.channel() {
            EVENTS_CHANNEL => {
                let Ok(id) = n.payload().parse::<i64>() else { continue };
                match structure_events::get(pool, id).await? {
                    Some(e) => Notice::Event(Box::new(e.into())),
                    None => continue,
                }
            }
            OPS_CHANNEL => {
                let mut parts = n.payload().split(' ');
                let (Some(Ok(op_id)), Some(Ok(workspace_id))) =
                    (parts.next().map(Uuid::parse_str), parts.next().map(Uuid::parse_str))
                else {
                    continue;
                };
                Notice::Op { op_id, workspace_id }
            }
            _ => continue,
        };
        let _ = sender.send(notice);
    }
}
