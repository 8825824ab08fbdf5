//! Coalescing concurrent database work into rounds (group commit): one task runs rounds
//! one after another, and every request that arrived while a round ran goes into the next.
//! No request waits for company: a lone request is a round of one, started at once; under
//! load the rounds grow by themselves, and one statement and one commit serve a whole round.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// A round never takes more than this many requests, so one round's statements stay small
/// and the requests after it do not wait on an ever larger round.
pub const ROUND_MAX: usize = 256;

/// How one request of a round of writes ended.
#[derive(Debug)]
pub enum Written<T> {
    /// Written with its round.
    Done(T),
    /// A statement of the round failed, so nothing of it committed: the request is to be
    /// done alone, where a failure is its own.
    Alone,
    /// The round failed where it may have committed (at COMMIT, or with the connection
    /// gone mid-statement), or the database is unreachable: doing the request again could
    /// write it twice, so its caller gets the error.
    Failed(crate::Error),
}

impl<T> Written<T> {
    /// The outcome of each of a round's `n` requests when the round failed with `e`.
    /// `committing` says whether `e` came from a step that commits (the COMMIT, or a
    /// statement that commits itself) rather than from a statement of an open transaction.
    pub fn all_failed(n: usize, e: &crate::Error, committing: bool) -> Vec<Written<T>> {
        (0..n)
            .map(|_| match e {
                // The server answered with an error: that statement, or that COMMIT, rolled back.
                crate::Error::Db(sqlx::Error::Database(_)) => Written::Alone,
                // No answer (the connection), or no connection at all: maybe committed, or
                // the database is out of reach for every request alike.
                crate::Error::Db(db) => Written::Failed(crate::Error::Db(copy(db))),
                // Ours (a row count, a payload), raised while nothing had committed.
                _ if !committing => Written::Alone,
                other => Written::Failed(crate::Error::Internal(format!("a round of writes failed: {other}"))),
            })
            .collect()
    }
}

/// An error of the round for each of its callers: sqlx errors cannot be cloned. Pool
/// errors stay what they are; anything else says the database could not be reached, since
/// whether the round committed is unknown.
fn copy(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Io(std::io::Error::other(format!("a round of writes failed: {other}"))),
    }
}

type Pending<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// The sending side of a round runner. Dropping it ends the runner once its round is done.
pub struct Rounds<Req, Resp> {
    tx: mpsc::UnboundedSender<Pending<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Rounds<Req, Resp> {
    /// Spawns the runner on the current tokio runtime. `run` gets a round's requests in
    /// arrival order and returns one response per request, in the same order.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Resp>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending<Req, Resp>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut round = vec![first];
                while round.len() < ROUND_MAX {
                    match rx.try_recv() {
                        Ok(next) => round.push(next),
                        Err(_) => break,
                    }
                }
                let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) = round.into_iter().unzip();
                let resps = run(reqs).await;
                // A caller that went away (its task was dropped) no longer needs its answer.
                for (reply, resp) in replies.into_iter().zip(resps) {
                    let _ = reply.send(resp);
                }
            }
        });
        Rounds { tx }
    }

    /// Submits a request without waiting for its round: for work whose caller needs no
    /// answer. Dropped if the runner is gone.
    pub fn send(&self, req: Req) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.send((req, reply));
    }

    /// Submits a request and waits for its round's answer. `None` when the runner is gone
    /// or answered fewer responses than requests: the caller then does the work alone.
    pub async fn submit(&self, req: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((req, reply)).ok()?;
        answer.await.ok()
    }
}

impl<Req: Send + 'static, T: Send + 'static> Rounds<Req, Written<T>> {
    /// Submits a write and waits for its round: `Some` with what the round made of it,
    /// `None` when the caller is to do it alone (the round could not have written it, or
    /// the runner is gone).
    pub async fn write(&self, req: Req) -> Option<crate::Result<T>> {
        match self.submit(req).await? {
            Written::Done(t) => Some(Ok(t)),
            Written::Failed(e) => Some(Err(e)),
            Written::Alone => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn requests_that_arrive_during_a_round_share_the_next_one_and_each_gets_its_own_answer() {
        let rounds_run = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let counted = rounds_run.clone();
        let rounds = Arc::new(Rounds::spawn(move |reqs: Vec<u32>| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let mut gate = gate_rx.clone();
            async move {
                // The first round holds until every other request is queued behind it.
                if n == 0 {
                    let _ = gate.wait_for(|open| *open).await;
                }
                reqs.into_iter().map(|r| (r * 10, n)).collect::<Vec<_>>()
            }
        }));
        let first = tokio::spawn({
            let rounds = rounds.clone();
            async move { rounds.submit(1).await }
        });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while rounds_run.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the first round never started");
            tokio::task::yield_now().await;
        }
        // join! polls the submissions first: all four are queued before the gate opens.
        let later = futures::future::join_all((2..=5).map(|i| rounds.submit(i)));
        let (answers, opened) = tokio::join!(later, async { gate_tx.send(true) });
        opened.unwrap();
        assert_eq!(first.await.unwrap(), Some((10, 0)));
        assert_eq!(answers, vec![Some((20, 1)), Some((30, 1)), Some((40, 1)), Some((50, 1))]);
        assert_eq!(rounds_run.load(Ordering::SeqCst), 2, "the four later requests ran as one round");
    }

    #[test]
    fn a_failed_round_is_redone_alone_only_where_nothing_can_have_committed() {
        let alone = |w: &Written<()>| matches!(w, Written::Alone);
        let failed = |w: &Written<()>| matches!(w, Written::Failed(_));
        // Ours, raised before any commit: nothing was written.
        let ours = crate::Error::Internal("a row count".into());
        assert!(Written::all_failed(3, &ours, false).iter().all(alone));
        // The same after a statement that commits itself: it may have written.
        assert!(Written::all_failed(3, &ours, true).iter().all(failed));
        // No answer from the server, or no connection: every caller gets the error.
        let gone = crate::Error::Db(sqlx::Error::Io(std::io::Error::other("connection reset")));
        assert!(Written::all_failed(2, &gone, false).iter().all(failed));
        let no_pool = crate::Error::Db(sqlx::Error::PoolTimedOut);
        let outcomes = Written::<()>::all_failed(2, &no_pool, false);
        assert!(outcomes.iter().all(|w| matches!(w, Written::Failed(crate::Error::Db(sqlx::Error::PoolTimedOut)))));
        assert_eq!(Written::<()>::all_failed(4, &gone, true).len(), 4, "one outcome per request");
    }
}
