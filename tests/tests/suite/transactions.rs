//! A caller dropped while its transaction begins (an HTTP client that hung up, a timeout, a
//! worker apalis ended) must leave nothing behind on the pooled connection: otherwise every
//! later statement of that connection runs inside the abandoned transaction and never
//! commits.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use tests::{TestDb, poll_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to the database whose server-to-client direction can be held shut: what the
/// client sends still reaches the server, but the answers wait until the gate opens. That
/// holds a begin between "the server took BEGIN" and "the client saw the answer" for as long
/// as the test needs, whatever the scheduler does.
async fn gated_proxy(target: (String, u16)) -> (u16, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let port = listener.local_addr().expect("proxy address").port();
    let (gate, open) = watch::channel(true);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect((target.0.as_str(), target.1)).await.expect("connect to the database");
            let (mut client_r, mut client_w) = client.into_split();
            let (mut server_r, mut server_w) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut client_r, &mut server_w).await });
            let mut open = open.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if open.wait_for(|o| *o).await.is_err() || client_w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, gate)
}

/// The database through the proxy: a pool of one connection (so the statements after the
/// dropped begin get the same one) that does no I/O to hand out an idle connection, a
/// second session straight to the server to look from, the pooled connection's backend pid,
/// and the proxy's gate.
async fn setup() -> (TestDb, PgPool, PgPool, i32, watch::Sender<bool>) {
    let db = TestDb::create().await;
    let direct: PgConnectOptions = db.url.parse().expect("database url");
    let (port, gate) = gated_proxy((direct.get_host().to_string(), direct.get_port())).await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(direct.clone().host("127.0.0.1").port(port))
        .await
        .expect("connect through the proxy");
    let observer = PgPoolOptions::new().max_connections(1).connect_with(direct).await.expect("observer");
    sqlx::query("CREATE TABLE marks (n int)").execute(&pool).await.expect("create table");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.expect("pid");
    (db, pool, observer, pid, gate)
}

/// Starts `begin` with the answers held back, waits until the server has taken its BEGIN,
/// drops it, and lets the answers through again.
async fn drop_midway<F>(pool: &PgPool, observer: &PgPool, pid: i32, gate: &watch::Sender<bool>, begin: F)
where
    F: Future<Output = sqlx::Result<Transaction<'static, Postgres>>>,
{
    // The connection is back in the pool (its release is done), so nothing is in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    let idle = poll_until(deadline, Duration::from_millis(2), || async { (pool.num_idle() == 1).then_some(()) }).await;
    assert!(idle.is_some(), "the pooled connection never came back idle");
    gate.send_replace(false);
    let mut begin = Box::pin(begin);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(futures::poll!(begin.as_mut()).is_pending(), "the begin finished while its answer was held back");
        let open: Option<bool> =
            sqlx::query_scalar("SELECT xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_optional(observer)
                .await
                .expect("pg_stat_activity");
        if open == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "the server never took the BEGIN");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(begin);
    gate.send_replace(true);
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
    let (_db, pool, observer, pid, gate) = setup().await;
    drop_midway(&pool, &observer, pid, &gate, jobs::db::begin(&pool)).await;
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
    let (_db, pool, observer, pid, gate) = setup().await;
    drop_midway(&pool, &observer, pid, &gate, pool.begin()).await;
    assert!(
        !autocommit_write_is_visible(&pool, &observer, 1).await,
        "sqlx now ends a begin dropped midway: jobs::db::begin and the clippy rule can go"
    );
}
