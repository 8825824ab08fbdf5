//! Creates and appends coalesced into rounds (ADR 0014), at the database level: a round is
//! one transaction whose every create (or append) gets its own answer, a round that fails
//! leaves nothing and each of its requests is then done alone with its own outcome, and
//! round writers keep the inbox's `since_id` order.
//!
//! A round is made deterministic by blocking the first one on a table lock held by the
//! test: the requests submitted while it waits are queued behind it and form the next.

use std::future::Future;
use std::time::{Duration, Instant};

use jobs::domain::{CreateRequest, DeliveryMode, OpStatus, Status};
use jobs::inbox::{self, Appends};
use jobs::lifecycle::{Created, Creates};
use jobs::store::activity_logs::{self, NewActivity};
use sqlx::PgPool;
use tests::TestDb;
use uuid::Uuid;

async fn database() -> (TestDb, PgPool) {
    TestDb::migrated(10).await
}

/// `n` workspaces that start by provisioning, made one after another.
async fn provisioned(pool: &PgPool, n: usize) -> Vec<Uuid> {
    let creates = Creates::spawn(pool.clone());
    let mut ids = vec![];
    for i in 0..n {
        ids.push(provisioning(creates.create(request(&format!("w{i}")), "admin").await).0.id);
    }
    ids
}

fn request(name: &str) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        role: Some(format!("role of {name}")),
        runtime: "langgraph".into(),
        tier: 2,
        model: "m".into(),
        parent_id: None,
        external: false,
        url: None,
        delivery_mode: DeliveryMode::Poll,
        max_concurrent_tasks: 3,
        canvas: Some((1.5, -2.0)),
    }
}

fn item(workspace_id: Uuid, text: &str) -> NewActivity {
    NewActivity {
        workspace_id,
        activity_type: inbox::INBOX_TYPE.into(),
        method: Some("message/send".into()),
        summary: Some(text.into()),
        request_body: Some(inbox::message_send(text, text, serde_json::json!({}))),
        status: "ok".into(),
        ..Default::default()
    }
}

/// Holds `table` in EXCLUSIVE mode in a transaction of its own until the returned
/// transaction ends: writers of the table wait, readers do not.
async fn hold(pool: &PgPool, table: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = jobs::db::begin(pool).await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!("LOCK TABLE {table} IN EXCLUSIVE MODE")))
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

/// Waits until a statement of this test's database waits on a lock, i.e. the round is
/// blocked (other tests' databases on the same server do not count).
async fn until_a_writer_waits(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the first round never blocked on the held lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `later` after the first round is blocked behind the held lock, and releases the
/// lock once `later`'s submissions are queued (they are polled before the release).
async fn behind_a_blocked_round<T>(
    pool: &PgPool,
    held: sqlx::Transaction<'static, sqlx::Postgres>,
    later: impl Future<Output = T>,
) -> T {
    until_a_writer_waits(pool).await;
    let release = async move {
        // Let `later` submit first: its futures run up to their first await, which queues them.
        tokio::task::yield_now().await;
        held.rollback().await.expect("release the lock");
    };
    let (out, ()) = tokio::join!(later, release);
    out
}

/// The transaction id that wrote each row of `table` (`xmin`), in the order of `ids`.
async fn writers(pool: &PgPool, table: &str, ids: &[Uuid]) -> Vec<String> {
    let mut out = vec![];
    for id in ids {
        out.push(
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT xmin::text FROM {table} WHERE id = $1")))
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("xmin"),
        );
    }
    out
}

fn provisioning(c: jobs::Result<Created>) -> (jobs::domain::Workspace, jobs::domain::Op) {
    match c.expect("create") {
        Created::Provisioning { workspace, op } => (*workspace, *op),
        Created::External { .. } => panic!("a langgraph workspace is not external"),
    }
}

#[tokio::test]
async fn creates_that_arrive_together_commit_in_one_transaction_and_each_gets_its_own_workspace_op_event_and_task() {
    let (_db, pool) = database().await;
    let creates = std::sync::Arc::new(Creates::spawn(pool.clone()));
    let held = hold(&pool, "workspaces").await;
    let first = creates.create(request("first"), "admin");
    let later = behind_a_blocked_round(
        &pool,
        held,
        futures::future::join_all(["a", "b", "c"].map(|n| {
            let creates = creates.clone();
            async move { creates.create(request(n), &format!("org-token:{n}")).await }
        })),
    );
    let (first, rest) = tokio::join!(first, later);
    let (first_ws, _) = provisioning(first);
    let rest: Vec<_> = rest.into_iter().map(provisioning).collect();

    for ((ws, op), name) in rest.iter().zip(["a", "b", "c"]) {
        assert_eq!(ws.name, name, "each create got its own workspace, in the order asked");
        assert_eq!((ws.status, ws.tier, ws.max_concurrent_tasks), (Status::Provisioning, 2, 3));
        assert_eq!(ws.role.as_deref(), Some(format!("role of {name}").as_str()));
        assert_eq!(ws.delivery_mode, DeliveryMode::Poll);
        assert_eq!((op.workspace_id, op.status), (ws.id, OpStatus::Queued));
        assert_eq!(op.requested_by, format!("org-token:{name}"), "each op names its own requester");
        let task = op.task_id.as_deref().expect("the first op is delivered at once");
        let (job_ws, job_op): (i64, String) = sqlx::query_as(
            "SELECT count(*), min(convert_from(job, 'UTF8')) FROM apalis.jobs WHERE id = $1 AND status = 'Pending'",
        )
        .bind(task)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(job_ws, 1, "the op's task is pending");
        assert!(job_op.contains(&op.id.to_string()), "the task delivers its own op: {job_op}");
        let events: Vec<(String, serde_json::Value)> =
            sqlx::query_as("SELECT event_type, payload FROM structure_events WHERE workspace_id = $1")
                .bind(ws.id)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "WORKSPACE_PROVISIONING");
        assert_eq!(events[0].1["name"], name);
    }
    let ids: Vec<Uuid> = rest.iter().map(|(ws, _)| ws.id).collect();
    let xmins = writers(&pool, "workspaces", &ids).await;
    assert!(xmins.iter().all(|x| *x == xmins[0]), "the three later creates shared one transaction: {xmins:?}");
    let op_ids: Vec<Uuid> = rest.iter().map(|(_, op)| op.id).collect();
    assert_eq!(writers(&pool, "workspace_ops", &op_ids).await, xmins, "their ops committed with them");
    let first_xmin = writers(&pool, "workspaces", &[first_ws.id]).await;
    assert_ne!(first_xmin[0], xmins[0], "the blocked first create was a round of its own");
}

#[tokio::test]
async fn a_round_of_creates_that_fails_leaves_nothing_and_each_create_then_runs_alone_with_its_own_outcome() {
    let (_db, pool) = database().await;
    let creates = std::sync::Arc::new(Creates::spawn(pool.clone()));
    let held = hold(&pool, "workspaces").await;
    // The api refuses tier 9; sent straight to `Creates`, it reaches the database, whose
    // CHECK fails the round.
    let bad = CreateRequest { tier: 9, ..request("bad") };
    let first = creates.create(request("first"), "admin");
    let later = behind_a_blocked_round(
        &pool,
        held,
        futures::future::join_all([request("a"), bad, request("c")].into_iter().map(|r| {
            let creates = creates.clone();
            async move { creates.create(r, "admin").await }
        })),
    );
    let (first, later) = tokio::join!(first, later);
    provisioning(first);
    let mut later = later.into_iter();
    let a = provisioning(later.next().unwrap());
    let bad = later.next().unwrap();
    let c = provisioning(later.next().unwrap());
    assert!(bad.is_err(), "the bad create fails on its own");
    let xmins = writers(&pool, "workspaces", &[a.0.id, c.0.id]).await;
    assert_ne!(xmins[0], xmins[1], "after the round failed, each good create committed alone");
    let (workspaces, ops, tasks): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM workspaces), (SELECT count(*) FROM workspace_ops),
                (SELECT count(*) FROM apalis.jobs)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((workspaces, ops, tasks), (3, 3, 3), "nothing of the failed round or of the bad create is left");
}

#[tokio::test]
async fn appends_that_arrive_together_share_one_statement_and_each_gets_the_id_of_its_own_row() {
    let (_db, pool) = database().await;
    let spaces = provisioned(&pool, 3).await;
    let appends = std::sync::Arc::new(Appends::spawn(pool.clone()));
    let held = hold(&pool, "activity_logs").await;
    let first = appends.append(DeliveryMode::Poll, item(spaces[0], "first"));
    // Two rows of one workspace and one each of the others, out of workspace order.
    let texts = ["x0", "y2", "z1", "w0"];
    let targets = [spaces[0], spaces[2], spaces[1], spaces[0]];
    let later = behind_a_blocked_round(
        &pool,
        held,
        futures::future::join_all(texts.iter().zip(targets).map(|(t, w)| {
            let appends = appends.clone();
            async move { appends.append(DeliveryMode::Poll, item(w, t)).await }
        })),
    );
    let (first, later) = tokio::join!(first, later);
    let first = first.expect("first append");
    let ids: Vec<i64> = later.into_iter().map(|r| r.expect("append")).collect();
    assert!(!ids.contains(&first));
    let mut xmins = vec![];
    for ((id, text), ws) in ids.iter().zip(texts).zip(targets) {
        let row = activity_logs::get(&pool, *id).await.unwrap().expect("row");
        assert_eq!((row.summary.as_deref(), row.workspace_id), (Some(text), ws), "id {id} is its own row");
        assert_eq!(row.delivery, None, "a poll-mode item is not pushed");
        let xmin: String = sqlx::query_scalar("SELECT xmin::text FROM activity_logs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        xmins.push(xmin);
    }
    assert!(xmins.iter().all(|x| *x == xmins[0]), "the four appends were one round: {xmins:?}");

    // A round with a row the database refuses (no such workspace) fails whole; each row is
    // then appended alone, and only the bad one fails.
    let held = hold(&pool, "activity_logs").await;
    let first = appends.append(DeliveryMode::Poll, item(spaces[1], "again"));
    let later = behind_a_blocked_round(
        &pool,
        held,
        futures::future::join_all([spaces[0], Uuid::new_v4(), spaces[2]].into_iter().map(|w| {
            let appends = appends.clone();
            async move { appends.append(DeliveryMode::Poll, item(w, "mixed")).await }
        })),
    );
    let (first, later) = tokio::join!(first, later);
    first.expect("first append");
    assert!(later[0].is_ok() && later[1].is_err() && later[2].is_ok(), "only the bad row failed: {later:?}");
    let mixed: i64 = sqlx::query_scalar("SELECT count(*) FROM activity_logs WHERE summary = 'mixed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mixed, 2);
}

#[tokio::test]
async fn a_since_id_reader_misses_no_item_of_concurrent_round_writers_in_several_processes() {
    let (_db, pool) = database().await;
    let creates = Creates::spawn(pool.clone());
    let mut spaces = vec![];
    for n in 0..2 {
        let external = CreateRequest { external: true, ..request(&format!("poller-{n}")) };
        match creates.create(external, "test").await.expect("create") {
            Created::External { workspace, .. } => spaces.push(workspace.id),
            Created::Provisioning { .. } => panic!("an external workspace is not provisioned"),
        }
    }
    // Two round runners stand for two api processes; writers of both hit both workspaces.
    let runners =
        [std::sync::Arc::new(Appends::spawn(pool.clone())), std::sync::Arc::new(Appends::spawn(pool.clone()))];
    const WRITERS: usize = 8;
    const EACH: usize = 60;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (appends, spaces) = (runners[w % 2].clone(), spaces.clone());
            tokio::spawn(async move {
                let mut ids = vec![];
                for n in 0..EACH {
                    let ws = spaces[(w + n) % 2];
                    ids.push((
                        ws,
                        appends.append(DeliveryMode::Poll, item(ws, &format!("{w}-{n}"))).await.expect("append"),
                    ));
                }
                ids
            })
        })
        .collect();
    let mut seen: Vec<Vec<i64>> = vec![vec![], vec![]];
    let mut cursors = [0i64, 0];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "only {} items were read", seen.iter().map(Vec::len).sum::<usize>());
        let done = writers.iter().all(|w| w.is_finished());
        let mut read_any = false;
        for (k, ws) in spaces.iter().enumerate() {
            let rows = activity_logs::list(&pool, *ws, Some(inbox::INBOX_TYPE), Some(cursors[k]), 500).await.unwrap();
            if let Some(last) = rows.last() {
                cursors[k] = last.id;
                read_any = true;
            }
            seen[k].extend(rows.iter().map(|r| r.id));
        }
        if done && !read_any {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut written: Vec<Vec<i64>> = vec![vec![], vec![]];
    for w in writers {
        for (ws, id) in w.await.unwrap() {
            written[spaces.iter().position(|s| *s == ws).unwrap()].push(id);
        }
    }
    for k in 0..2 {
        written[k].sort_unstable();
        assert_eq!(written[k].len(), WRITERS * EACH / 2);
        assert_eq!(seen[k], written[k], "the reader of workspace {k} saw every item, once, in id order");
    }
}

#[tokio::test]
async fn a_round_writes_past_a_held_head_and_that_row_waits_alone_and_draws_its_id_under_the_lock() {
    let (_db, pool) = database().await;
    let spaces = provisioned(&pool, 4).await;
    let (a, b, c, d) = (spaces[0], spaces[1], spaces[2], spaces[3]);
    activity_logs::insert_at_head(&pool, &item(b, "earlier"), None).await.expect("b's earlier row");
    let appends = std::sync::Arc::new(Appends::spawn(pool.clone()));
    // A first round is held up on the table, so that a and b's appends queue as one round.
    let held_table = hold(&pool, "activity_logs").await;
    let first = appends.append(DeliveryMode::Poll, item(d, "first"));
    // Another writer holds b's head (which b's earlier row made; a has none yet).
    let mut holder = jobs::db::begin(&pool).await.unwrap();
    activity_logs::lock_head(&mut holder, b).await.unwrap();
    let round = futures::future::join_all([a, b].map(|w| {
        let appends = appends.clone();
        async move { appends.append(DeliveryMode::Poll, item(w, "round")).await }
    }));
    let steps = async {
        until_a_writer_waits(&pool).await;
        // Let the round's submissions queue (join! polled them first), then let it run.
        tokio::task::yield_now().await;
        held_table.rollback().await.expect("release the table");
        // a's row commits while b's head is still held: the round did not wait for it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let written: i64 =
                sqlx::query_scalar("SELECT count(*) FROM activity_logs WHERE workspace_id = $1 AND summary = 'round'")
                    .bind(a)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if written == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the round waited for b's held head instead of writing a's row");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // b's row, written alone, waits for the head; a row of c written meanwhile gets an
        // id first, and b's id is drawn only under b's head, so a reader of b misses nothing.
        until_a_writer_waits(&pool).await;
        let (meanwhile, _) = activity_logs::insert_at_head(&pool, &item(c, "meanwhile"), None).await.expect("write c");
        holder.rollback().await.expect("release b's head");
        meanwhile
    };
    let (first, round, meanwhile) = tokio::join!(first, round, steps);
    first.expect("first append");
    let ids: Vec<i64> = round.into_iter().map(|r| r.expect("append")).collect();
    assert!(ids[0] < meanwhile, "a's row was written before c's");
    assert!(ids[1] > meanwhile, "b's id {} was drawn before b's head was free (c's: {meanwhile})", ids[1]);
    for (id, ws) in ids.iter().zip([a, b]) {
        let row = activity_logs::get(&pool, *id).await.unwrap().expect("row");
        assert_eq!((row.workspace_id, row.summary.as_deref()), (ws, Some("round")));
    }
}
