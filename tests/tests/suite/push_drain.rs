//! The push drain's statements, at the database level: a pushed item arms its workspace's
//! drain in the statement that writes it, exactly once however many writers race; a drain
//! claims under a lease, records each push fenced on it, and stands down only when nothing
//! is left, so the next item arms a new drain.

use std::time::Duration;

use chrono::Utc;
use jobs::domain::DeliveryMode;
use jobs::inbox;
use jobs::store::activity_logs::{self, Delivered, DrainClaim};
use sqlx::PgPool;
use tests::TestDb;
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

fn delivered(item_id: i64) -> Delivered<'static> {
    Delivered { item_id, attempt: 1, started_at: Utc::now(), http_status: 200, answer: None, worker: "test-worker" }
}

#[tokio::test]
async fn racing_pushed_items_arm_exactly_one_drain_and_a_polled_item_none() {
    let (_db, pool) = TestDb::migrated(24).await;
    let pushed = workspaces(&pool, 1, DeliveryMode::Push).await[0];
    let polled = workspaces(&pool, 1, DeliveryMode::Poll).await[0];

    let writes = (0..20).map(|n| {
        let pool = pool.clone();
        async move { inbox::append(&pool, DeliveryMode::Push, item(pushed, &format!("m{n}"))).await.expect("append") }
    });
    let ids = futures::future::join_all(writes).await;
    let (due, tasks) = drains(&pool, pushed).await;
    assert_eq!(tasks.len(), 1, "one drain armed by 20 racing writers: {tasks:?}");
    assert_eq!(due.as_ref(), Some(&tasks[0]), "the head names the task that was inserted");
    for id in ids {
        assert_eq!(delivery(&pool, id).await, (Some("pending".into()), 0));
    }

    inbox::append(&pool, DeliveryMode::Poll, item(polled, "read, not pushed")).await.expect("append");
    assert_eq!(drains(&pool, polled).await, (None, vec![]), "a polled item arms nothing");
}

#[tokio::test]
async fn a_drain_records_under_its_lease_and_stands_down_only_when_nothing_is_left() {
    let (_db, pool) = TestDb::migrated(10).await;
    let ws = workspaces(&pool, 1, DeliveryMode::Push).await[0];
    let mut ids = vec![];
    for n in 0..10 {
        ids.push(inbox::append(&pool, DeliveryMode::Push, item(ws, &format!("m{n}"))).await.expect("append"));
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

    let batch = activity_logs::pending(&pool, ws, 8).await.expect("pending");
    assert_eq!(batch.iter().map(|i| i.id).collect::<Vec<_>>(), ids[..8], "the oldest 8, oldest first");

    // A push recorded under a lease that is no longer the drain's writes nothing.
    assert!(!activity_logs::record_delivered(&pool, ws, lease - 1, TTL, &delivered(ids[0])).await.expect("record"));
    assert_eq!(delivery(&pool, ids[0]).await, (Some("pending".into()), 0));
    for id in &ids[..9] {
        assert!(activity_logs::record_delivered(&pool, ws, lease, TTL, &delivered(*id)).await.expect("record"));
    }
    assert_eq!(delivery(&pool, ids[0]).await, (Some("delivered".into()), 1));

    // One item is left: the drain reads it and stays due.
    let mut tx = pool.begin().await.expect("begin");
    assert!(activity_logs::renew_drain(&mut tx, ws, lease, TTL).await.expect("renew"));
    let left = activity_logs::pending_or_stand_down(&mut tx, ws, lease, 8).await.expect("read");
    tx.commit().await.expect("commit");
    assert_eq!(left.iter().map(|i| i.id).collect::<Vec<_>>(), [ids[9]]);
    assert_eq!(drains(&pool, ws).await.0.as_ref(), Some(&task), "still due while an item waits");

    assert!(activity_logs::record_delivered(&pool, ws, lease, TTL, &delivered(ids[9])).await.expect("record"));
    let mut tx = pool.begin().await.expect("begin");
    assert!(activity_logs::renew_drain(&mut tx, ws, lease, TTL).await.expect("renew"));
    assert!(activity_logs::pending_or_stand_down(&mut tx, ws, lease, 8).await.expect("read").is_empty());
    tx.commit().await.expect("commit");
    let (due, tasks) = drains(&pool, ws).await;
    assert_eq!(due, None, "nothing left: the drain stood down");

    // So the next item arms a new drain, in its own statement.
    inbox::append(&pool, DeliveryMode::Push, item(ws, "later")).await.expect("append");
    let (due, after) = drains(&pool, ws).await;
    assert_eq!(after.len(), tasks.len() + 1, "{after:?}");
    assert!(due.is_some_and(|d| d != task && after.contains(&d)), "the head names the new task");
}
