//! The inbox long poll (ADR 0015): a reader waits for rows after its cursor, woken when an
//! append names its workspace. The process's waiting readers are kept by workspace, so a
//! notice wakes only the readers of the workspaces it names, however many agents wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::Result;
use crate::notify::Notice;
use crate::store::activity_logs::{self, Activity};

/// How often a waiting reader re-reads the log whatever the notices say: a round's
/// announcement can fail, and rows that stop being pushed (the agent switched to polling)
/// are not announced. (A listener rebuild wakes every reader by itself.) Long, because each
/// idle agent pays it: a 30 s wait costs 3 reads.
pub const REREAD_EVERY: Duration = Duration::from_secs(10);

/// The process's waiting readers, by workspace.
#[derive(Default)]
pub struct Readers {
    waiting: Mutex<HashMap<Uuid, Waiting>>,
}

struct Waiting {
    readers: usize,
    wake: Arc<Notify>,
}

impl Readers {
    /// Starts dispatching the process's notices to its waiting readers: a notice naming
    /// workspaces wakes their readers; `*`, a listener rebuild or a lag wakes every reader.
    pub fn spawn(notices: &broadcast::Sender<Notice>) -> Arc<Readers> {
        let readers = Arc::new(Readers::default());
        let weak = Arc::downgrade(&readers);
        tokio::spawn(dispatch(notices.subscribe(), weak));
        readers
    }

    fn register(self: &Arc<Self>, workspace_id: Uuid) -> Registered {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let w = waiting.entry(workspace_id).or_insert_with(|| Waiting { readers: 0, wake: Arc::default() });
        w.readers += 1;
        Registered { readers: self.clone(), workspace_id, wake: w.wake.clone() }
    }

    fn wake(&self, ids: Option<&[Uuid]>) {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match ids {
            Some(ids) => ids.iter().filter_map(|id| waiting.get(id)).for_each(|w| w.wake.notify_waiters()),
            None => waiting.values().for_each(|w| w.wake.notify_waiters()),
        }
    }

    /// How many reads are waiting, over all workspaces.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).values().map(|w| w.readers).sum()
    }

    /// How many workspaces have a reader waiting.
    #[cfg(test)]
    fn workspaces_waited_on(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A reader's place among the waiting; it leaves when dropped.
struct Registered {
    readers: Arc<Readers>,
    workspace_id: Uuid,
    wake: Arc<Notify>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut waiting = self.readers.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = waiting.get_mut(&self.workspace_id) {
            w.readers -= 1;
            if w.readers == 0 {
                waiting.remove(&self.workspace_id);
            }
        }
    }
}

async fn dispatch(mut rx: broadcast::Receiver<Notice>, readers: Weak<Readers>) {
    loop {
        let received = rx.recv().await;
        let Some(readers) = readers.upgrade() else { return };
        match received {
            Ok(Notice::Appended(Some(ids))) => readers.wake(Some(&ids)),
            Ok(Notice::Appended(None) | Notice::Resync) | Err(RecvError::Lagged(_)) => readers.wake(None),
            Ok(Notice::Event(_) | Notice::Op { .. }) => {}
            Err(RecvError::Closed) => {
                // No more notices: readers fall back on their re-read.
                readers.wake(None);
                return;
            }
        }
    }
}

/// What wakes a waiting read besides its time running out.
pub struct Wakes<'a> {
    /// The process's waiting readers, woken by the append notices.
    pub readers: &'a Arc<Readers>,
    /// True (or its sender gone) once the process is stopping: the read answers at once
    /// with what there is, so a graceful shutdown does not wait out every long poll.
    pub stopping: watch::Receiver<bool>,
}

/// The long poll: workspace `workspace_id`'s rows after `after`, oldest first, as
/// [`activity_logs::list`] reads them; when there are none yet, waits up to `timeout` for
/// some. Empty when none came.
pub async fn read_waiting(
    pool: &PgPool,
    wakes: Wakes<'_>,
    workspace_id: Uuid,
    activity_type: Option<&str>,
    after: i64,
    limit: i64,
    timeout: Duration,
) -> Result<Vec<Activity>> {
    let registered = wakes.readers.register(workspace_id);
    let mut stopping = wakes.stopping;
    let deadline = Instant::now() + timeout;
    loop {
        // Listening before the read, so no append can slip between the two.
        let woken = registered.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let rows = activity_logs::list(pool, workspace_id, activity_type, Some(after), limit).await?;
        if !rows.is_empty() || Instant::now() >= deadline || *stopping.borrow() {
            return Ok(rows);
        }
        let reread_at = (Instant::now() + REREAD_EVERY).min(deadline);
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep_until(reread_at) => {}
            // Stopping, or no one left to say so: one last read is the answer.
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                return activity_logs::list(pool, workspace_id, activity_type, Some(after), limit).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f).await.unwrap_or_else(|_| panic!("{what} never came"))
    }

    #[tokio::test]
    async fn a_notice_wakes_the_readers_of_the_workspaces_it_names_and_a_star_wakes_all() {
        let (notices, _keep) = broadcast::channel(16);
        let readers = Readers::spawn(&notices);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (ra, ra2, rb) = (readers.register(a), readers.register(a), readers.register(b));
        assert_eq!(readers.workspaces_waited_on(), 2);
        {
            let (wa, wa2, wb) = (ra.wake.notified(), ra2.wake.notified(), rb.wake.notified());
            tokio::pin!(wa, wa2, wb);
            for w in [wa.as_mut(), wa2.as_mut(), wb.as_mut()] {
                w.enable();
            }

            notices.send(Notice::Appended(Some(Arc::from(vec![a])))).unwrap();
            within("a's wake", &mut wa).await;
            within("the second reader of a's wake", &mut wa2).await;
            // One notice is dispatched in one pass: had it woken b, b would be woken by now.
            assert!(wb.as_mut().now_or_never().is_none(), "b was not named");

            notices.send(Notice::Op { op_id: a, workspace_id: b }).unwrap();
            notices.send(Notice::Appended(None)).unwrap();
            within("b's wake on *", &mut wb).await;
        }

        drop((ra, ra2));
        assert_eq!(readers.workspaces_waited_on(), 1, "a's readers left");
        drop(rb);
        assert_eq!(readers.workspaces_waited_on(), 0);
    }
}
