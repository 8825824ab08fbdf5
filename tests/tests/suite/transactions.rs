//! A caller dropped while its transaction begins (an HTTP client that hung up, a timeout, a
//! worker apalis ended) must leave nothing behind on the pooled connection: otherwise every
//! later statement of that connection runs inside the abandoned transaction and never
//! commits.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};
use tests::{TestDb, poll_until};

/// Polls `begin` until the server has taken its BEGIN, then drops it before it sees the
/// answer. Returns false if every try finished the begin within one poll (nothing dropped).
async fn drop_midway<F>(observer: &PgPool, pid: i32, begin: impl Fn() -> F) -> bool
where
    F: Future<Output = sqlx::Result<Transaction<'static, Postgres>>>,
{
    for _ in 0..20 {
        let mut fut = pin!(begin());
        for _ in 0..50 {
            if let Poll::Ready(tx) = futures::poll!(fut.as_mut()) {
                // Answered within one poll: roll back, and try again.
                tx.expect("begin").rollback().await.expect("rollback");
                break;
            }
            // The BEGIN has reached the server once its session is in a transaction.
            let deadline = Instant::now() + Duration::from_millis(200);
            let begun = poll_until(deadline, Duration::from_millis(2), || async {
                let open: Option<bool> =
                    sqlx::query_scalar("SELECT xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = $1")
                        .bind(pid)
                        .fetch_optional(observer)
                        .await
                        .expect("pg_stat_activity");
                open.filter(|o| *o)
            })
            .await;
            if begun.is_some() {
                return true;
            }
        }
    }
    false
}

/// A pool of one connection (so the statements after the dropped begin get the same one),
/// a second session to look from, and the pooled connection's backend pid.
async fn setup() -> (TestDb, PgPool, PgPool, i32) {
    let (db, pool) = TestDb::migrated(1).await;
    let observer = PgPoolOptions::new().max_connections(1).connect(&db.url).await.expect("observer");
    sqlx::query("CREATE TABLE marks (n int)").execute(&pool).await.expect("create table");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.expect("pid");
    (db, pool, observer, pid)
}

/// Writes through the pool with no transaction of its own, and returns whether another
/// session sees the row: it must, the statement committed by itself.
async fn autocommit_write_is_visible(pool: &PgPool, observer: &PgPool, n: i32) -> bool {
    sqlx::query("INSERT INTO marks VALUES ($1)").bind(n).execute(pool).await.expect("insert");
    let seen: i64 =
        sqlx::query_scalar("SELECT count(*) FROM marks WHERE n = $1").bind(n).fetch_one(observer).await.expect("count");
    seen == 1
}

#[tokio::test]
async fn a_begin_dropped_midway_leaves_the_pooled_connection_out_of_any_transaction() {
    let (_db, pool, observer, pid) = setup().await;
    assert!(drop_midway(&observer, pid, || jobs::db::begin(&pool)).await, "never caught a begin midway");
    assert!(
        autocommit_write_is_visible(&pool, &observer, 1).await,
        "a write after the dropped begin ran inside its transaction and did not commit"
    );
    let pid_after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.expect("pid");
    assert_eq!(pid_after, pid, "the same pooled connection served the write");
}

/// Why `jobs::db::begin` exists, and the clippy rule that forbids sqlx's own: this fails
/// once sqlx rolls back a begin dropped midway by itself, and the workaround can go.
#[tokio::test]
#[allow(clippy::disallowed_methods)]
async fn sqlx_own_begin_dropped_midway_leaves_its_transaction_open_on_the_pooled_connection() {
    let (_db, pool, observer, pid) = setup().await;
    assert!(drop_midway(&observer, pid, || pool.begin()).await, "never caught a begin midway");
    assert!(
        !autocommit_write_is_visible(&pool, &observer, 1).await,
        "sqlx now ends a begin dropped midway: jobs::db::begin and the clippy rule can go"
    );
}
