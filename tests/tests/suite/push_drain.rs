//! The push drain's statements, at the database level: a pushed item arms its workspace's
//! drain in the statement that writes it, exactly once however many writers race; a drain
//! claims under a lease, records each push fenced on it, and stands down only when nothing
//! is left (even while a writer holds the head), so the next item arms a new drain. A
//! success is recorded before a slow push of its batch ends.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use jobs::domain::DeliveryMode;
use jobs::inbox;
use jobs::store::activity_logs::{self, Delivered, DrainClaim};
use reqwest::StatusCode;
use sqlx::PgPool;
use tests::{Stack, TestDb, eventually};
use uuid::Uuid;

use super::long_poll::{item, workspaces};

const TTL: Duration = Duration::from_secs(60);

/// The head's drain task, and the inbox tasks apalis holds for the workspace.
async fn drains(pool: &PgPool, ws: Uuid) -> (Option<String>, Vec<String>) {
    let due: Option<String> = sqlx::query_scalar("SELECT drain_task_id FROM inbox_heads WHERE workspace_id = $1")
        .bind(ws)
        .fetch_optional(pool)
        .await
        .expect("head")
        .flatten();
    let tasks: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM apalis.jobs WHERE job_type = 'inbox' AND convert_from(job, 'UTF8')::jsonb ->> 'workspace_id' = $1
          ORDER BY id",
    )
    .bind(ws.to_string())
    .fetch_all(pool)
    .await
    .expect("tasks");
    (due, tasks)
}

async fn delivery(pool: &PgPool, id: i64) -> (Option<String>, i64) {
    sqlx::query_as(
        "SELECT delivery, (SELECT count(*) FROM inbox_delivery_attempts WHERE item_id = $1) FROM activity_logs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("item")
}

fn delivered(item_id: i64) -> Delivered {
    let answer = Some(serde_json::json!({"ack": item_id}));
    Delivered { item_id, attempt: 1, started_at: Utc::now(), finished_at: Utc::now(), http_status: 200, answer }
}

/// The item's recorded answer, and the worker of its attempts.
async fn recorded(pool: &PgPool, id: i64) -> (Option<serde_json::Value>, Vec<String>) {
    let answer = sqlx::query_scalar("SELECT response_body FROM activity_logs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("item");
    let workers = sqlx::query_scalar("SELECT worker FROM inbox_delivery_attempts WHERE item_id = $1")
        .bind(id)
        .fetch_all(pool)
        .await
        .expect("attempts");
    (answer, workers)
}

#[tokio::test]
async fn racing_pushed_items_arm_exactly_one_drain_and_a_polled_item_none() {
    let (_db, pool) = TestDb::migrated(24).await;
    let pushed = workspaces(&pool, 1, DeliveryMode::Push).await[0];
    let polled = workspaces(&pool, 1, DeliveryMode::Poll).await[0];

    let writes = (0..20).map(|n| {
        let pool = pool.clone();
        async move { inbox::write(&pool, DeliveryMode::Push, item(pushed, &format!("m{n}"))).await.expect("append") }
    });
    let ids = futures::future::join_all(writes).await;
    let (due, tasks) = drains(&pool, pushed).await;
    assert_eq!(tasks.len(), 1, "one drain armed by 20 racing writers: {tasks:?}");
    assert_eq!(due.as_ref(), Some(&tasks[0]), "the head names the task that was inserted");
    for id in ids {
        assert_eq!(delivery(&pool, id).await, (Some("pending".into()), 0));
    }

    inbox::write(&pool, DeliveryMode::Poll, item(polled, "read, not pushed")).await.expect("append");
    assert_eq!(drains(&pool, polled).await, (None, vec![]), "a polled item arms nothing");
}

#[tokio::test]
async fn a_drain_records_under_its_lease_and_stands_down_only_when_nothing_is_left() {
    let (_db, pool) = TestDb::migrated(10).await;
    let ws = workspaces(&pool, 1, DeliveryMode::Push).await[0];
    let mut ids = vec![];
    for n in 0..10 {
        ids.push(inbox::write(&pool, DeliveryMode::Push, item(ws, &format!("m{n}"))).await.expect("append"));
    }
    let task = drains(&pool, ws).await.0.expect("a drain is due");

    assert!(matches!(
        activity_logs::claim_drain(&pool, ws, "another-task", "w", TTL).await.expect("claim"),
        DrainClaim::NotDue
    ));
    let DrainClaim::Claimed(lease) = activity_logs::claim_drain(&pool, ws, &task, "w", TTL).await.expect("claim")
    else {
        panic!("the due task claims the drain");
    };
    match activity_logs::claim_drain(&pool, ws, &task, "w", TTL).await.expect("claim") {
        DrainClaim::Held(left) => assert!(left > Duration::from_secs(50) && left <= TTL, "{left:?}"),
        _ => panic!("a redelivery of the running task finds it held"),
    }

    let batch = activity_logs::pending(&pool, ws).await.expect("pending");
    assert_eq!(batch.iter().map(|i| i.id).collect::<Vec<_>>(), ids[..8], "the oldest 8, oldest first");

    // Pushes recorded under a lease that is no longer the drain's write nothing.
    let stale = [delivered(ids[0]), delivered(ids[1])];
    assert!(!activity_logs::record_delivered(&pool, ws, lease - 1, TTL, "w", &stale).await.expect("record"));
    assert_eq!(delivery(&pool, ids[0]).await, (Some("pending".into()), 0));
    // One statement records several pushes, each with its own answer and attempt.
    let pushes: Vec<Delivered> = ids[..9].iter().map(|id| delivered(*id)).collect();
    assert!(activity_logs::record_delivered(&pool, ws, lease, TTL, "w", &pushes).await.expect("record"));
    for id in &ids[..9] {
        assert_eq!(delivery(&pool, *id).await, (Some("delivered".into()), 1));
        assert_eq!(recorded(&pool, *id).await, (Some(serde_json::json!({"ack": id})), vec!["w".to_string()]));
    }
    assert_eq!(delivery(&pool, ids[9]).await, (Some("pending".into()), 0), "only the pushes given");

    // One item is left: the drain reads it and stays due.
    let mut tx = jobs::db::begin(&pool).await.expect("begin");
    assert!(activity_logs::renew_drain(&mut tx, ws, lease, TTL).await.expect("renew"));
    let left = activity_logs::pending_or_stand_down(&mut tx, ws, lease).await.expect("read");
    tx.commit().await.expect("commit");
    assert_eq!(left.iter().map(|i| i.id).collect::<Vec<_>>(), [ids[9]]);
    assert_eq!(drains(&pool, ws).await.0.as_ref(), Some(&task), "still due while an item waits");

    assert!(activity_logs::record_delivered(&pool, ws, lease, TTL, "w", &[delivered(ids[9])]).await.expect("record"));
    let mut tx = jobs::db::begin(&pool).await.expect("begin");
    assert!(activity_logs::renew_drain(&mut tx, ws, lease, TTL).await.expect("renew"));
    assert!(activity_logs::pending_or_stand_down(&mut tx, ws, lease).await.expect("read").is_empty());
    tx.commit().await.expect("commit");
    let (due, tasks) = drains(&pool, ws).await;
    assert_eq!(due, None, "nothing left: the drain stood down");

    // So the next item arms a new drain, in its own statement.
    inbox::write(&pool, DeliveryMode::Push, item(ws, "later")).await.expect("append");
    let (due, after) = drains(&pool, ws).await;
    assert_eq!(after.len(), tasks.len() + 1, "{after:?}");
    assert!(due.is_some_and(|d| d != task && after.contains(&d)), "the head names the new task");
}

/// A push-mode agent whose answers the test paces: each push is reported (by item id) as
/// it arrives, and answered once the test sends its go-ahead.
struct PacedAgent {
    url: String,
    arrived: tokio::sync::mpsc::UnboundedReceiver<i64>,
    answer: tokio::sync::mpsc::UnboundedSender<()>,
}

type Paced =
    (tokio::sync::mpsc::UnboundedSender<i64>, Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<()>>>);

async fn paced_agent() -> PacedAgent {
    async fn receive(
        State((arrived, answer)): State<Paced>,
        Json(body): Json<serde_json::Value>,
    ) -> Json<serde_json::Value> {
        let id = body.pointer("/params/message/messageId").and_then(|v| v.as_str()?.parse().ok()).expect("messageId");
        arrived.send(id).expect("the test listens");
        answer.lock().await.recv().await.expect("the test answers");
        Json(
            serde_json::json!({"jsonrpc": "2.0", "id": body.get("id"), "result": {"kind": "message", "role": "agent"}}),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let (answer, answer_rx) = tokio::sync::mpsc::unbounded_channel();
    let state: Paced = (arrived_tx, Arc::new(tokio::sync::Mutex::new(answer_rx)));
    let app = axum::Router::new().route("/a2a", axum::routing::post(receive)).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    PacedAgent { url: format!("http://{addr}/a2a"), arrived, answer }
}

impl PacedAgent {
    async fn next_arrival(&mut self) -> i64 {
        tokio::time::timeout(Duration::from_secs(60), self.arrived.recv())
            .await
            .expect("no push arrived within 60 s")
            .expect("the agent stopped")
    }
}

#[tokio::test]
async fn a_success_is_recorded_before_a_slow_push_of_its_batch_ends() {
    let mut agent = paced_agent().await;
    let mut stack =
        Stack::builder().env("DOCKER_ENABLED", "false").env("AGENT_URL_ALLOW_PRIVATE", "true").workers(0).start().await;
    let body = serde_json::json!({"name": "paced", "external": true, "url": agent.url, "delivery_mode": "push"});
    let r = stack.post("/workspaces", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ws = r.body["id"].as_str().expect("id").to_string();
    // Four items wait before any worker runs, so one drain reads them in one batch.
    let mut ids = vec![];
    for n in 0..4 {
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": n, "method": "message/send",
            "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": format!("m{n}")}]}}});
        let r = stack.post(&format!("/workspaces/{ws}/a2a"), msg).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        ids.push(r.body["id"].as_i64().expect("item id"));
    }
    stack.add_worker(&[]);
    let pending = (Some("pending".to_string()), 0);
    let delivered = (Some("delivered".to_string()), 1);

    // A push that took longer than RECORD_WITHIN (20 ms; the agent answers after 100 ms) is
    // recorded before the next push starts: by the time that push arrives.
    assert_eq!(agent.next_arrival().await, ids[0]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    agent.answer.send(()).expect("answer");
    assert_eq!(agent.next_arrival().await, ids[1]);
    assert_eq!(delivery(&stack.pool, ids[0]).await, delivered, "recorded before the next push");
    assert_eq!(delivery(&stack.pool, ids[1]).await, pending);

    // A quick success followed by a push that hangs is recorded while that push hangs.
    agent.answer.send(()).expect("answer");
    assert_eq!(agent.next_arrival().await, ids[2]);
    eventually(Duration::from_secs(20), "the quick success recorded while the next push hangs", || async {
        (delivery(&stack.pool, ids[1]).await == delivered).then_some(())
    })
    .await;
    assert_eq!(delivery(&stack.pool, ids[2]).await, pending, "the hanging push is not answered yet");

    agent.answer.send(()).expect("answer");
    assert_eq!(agent.next_arrival().await, ids[3]);
    agent.answer.send(()).expect("answer");
    eventually(Duration::from_secs(30), "every item recorded", || async {
        let mut all = true;
        for id in &ids {
            all &= delivery(&stack.pool, *id).await == delivered;
        }
        all.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stand_down_that_waits_for_a_writer_reads_its_item_and_the_drain_stays_due() {
    let (_db, pool) = TestDb::migrated(10).await;
    let ws = workspaces(&pool, 1, DeliveryMode::Push).await[0];
    let first = inbox::write(&pool, DeliveryMode::Push, item(ws, "first")).await.expect("append");
    let task = drains(&pool, ws).await.0.expect("a drain is due");
    let DrainClaim::Claimed(lease) = activity_logs::claim_drain(&pool, ws, &task, "w", TTL).await.expect("claim")
    else {
        panic!("the due task claims the drain");
    };
    assert!(activity_logs::record_delivered(&pool, ws, lease, TTL, "w", &[delivered(first)]).await.expect("record"));

    // A writer holds the head: it finds the drain due, so it arms none.
    let mut writer = jobs::db::begin(&pool).await.expect("begin");
    let later = inbox::write(&mut *writer, DeliveryMode::Push, item(ws, "later")).await.expect("write");
    // Meanwhile the drain, with nothing left that it can see, stands down: its renewal waits
    // for the writer's lock.
    let standing_down = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut tx = jobs::db::begin(&pool).await.expect("begin");
            assert!(activity_logs::renew_drain(&mut tx, ws, lease, TTL).await.expect("renew"));
            let next = activity_logs::pending_or_stand_down(&mut tx, ws, lease).await.expect("read");
            tx.commit().await.expect("commit");
            next.into_iter().map(|i| i.id).collect::<Vec<_>>()
        }
    });
    eventually(Duration::from_secs(20), "the stand-down to wait for the writer's lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .expect("activity");
        (waiting > 0).then_some(())
    })
    .await;
    writer.commit().await.expect("commit");
    assert_eq!(standing_down.await.expect("stand-down"), [later], "the item written meanwhile is read");
    let (due, tasks) = drains(&pool, ws).await;
    assert_eq!(due.as_ref(), Some(&task), "the drain stays due");
    assert_eq!(tasks, std::slice::from_ref(&task), "and the writer armed no other");

    // A redelivery that finds the drain held defers to a copy only while it is the due task.
    assert!(
        activity_logs::defer_drain(&mut pool.acquire().await.expect("conn"), ws, &task, "copy").await.expect("defer")
    );
    assert_eq!(drains(&pool, ws).await.0.as_deref(), Some("copy"));
    assert!(
        !activity_logs::defer_drain(&mut pool.acquire().await.expect("conn"), ws, &task, "other").await.expect("defer")
    );
    assert_eq!(drains(&pool, ws).await.0.as_deref(), Some("copy"), "a stale task replaces nothing");
}

/// A drain reads its pending items through their own index even while the table's
/// statistics predate every pushed item, as they do after a stretch of poll-mode traffic:
/// the partial indexes then look empty, and the planner once read the batch through the
/// operators' index of pushed items, scanning and sorting every one of them per batch.
#[tokio::test]
async fn the_pending_read_uses_its_index_while_statistics_predate_every_pushed_item() {
    let (_db, pool) = TestDb::migrated(4).await;
    let polled = workspaces(&pool, 50, DeliveryMode::Poll).await;
    let pushed = workspaces(&pool, 20, DeliveryMode::Push).await;
    sqlx::query(
        "INSERT INTO activity_logs (workspace_id, activity_type, status)
         SELECT w, 'a2a_receive', 'ok' FROM unnest($1::uuid[]) AS w, generate_series(1, 40)",
    )
    .bind(&polled)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE activity_logs").execute(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO activity_logs (workspace_id, activity_type, status, delivery)
         SELECT w, 'a2a_receive', 'ok', 'pending' FROM unnest($1::uuid[]) AS w, generate_series(1, 100)",
    )
    .bind(&pushed)
    .execute(&pool)
    .await
    .unwrap();

    let plan: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {}", activity_logs::PENDING_ITEMS)))
            .bind(pushed[0])
            .bind(activity_logs::PENDING_BATCH as i64)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(plan.iter().any(|l| l.contains("activity_logs_pending_idx")), "{plan:#?}");
    assert!(!plan.iter().any(|l| l.contains("Sort")), "the pending index gives the order: {plan:#?}");
    let batch = activity_logs::pending(&pool, pushed[0]).await.unwrap();
    assert_eq!(batch.len(), activity_logs::PENDING_BATCH);
    assert!(batch.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
}
