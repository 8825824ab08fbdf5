//! The inbox long poll (ADR 0015), at the database level: appends of rows a reader polls for
//! announce the workspaces written to (a row written alone in its own statement, rounds
//! once they committed); a pushed row wakes no reader; and a waiting read answers with what
//! was appended meanwhile, with nothing once its time is up, or at once when the process
//! stops.

use std::time::{Duration, Instant};

use jobs::domain::{CreateRequest, DeliveryMode, Status};
use jobs::inbox::{self, Appends};
use jobs::long_poll::{self, Readers, Wakes};
use jobs::notify::{self, Announcer, INBOX_NOTICE_NAMES_MAX, Notice};
use jobs::store::activity_logs::NewActivity;
use sqlx::PgPool;
use tests::TestDb;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// `n` external workspaces of `mode`, online.
pub(crate) async fn workspaces(pool: &PgPool, n: usize, mode: DeliveryMode) -> Vec<Uuid> {
    let mut tx = jobs::db::begin(pool).await.expect("begin");
    let mut ids = vec![];
    for i in 0..n {
        let id = Uuid::new_v4();
        let req = CreateRequest::external(format!("lp-{i}"), mode, None);
        jobs::store::workspaces::insert(&mut tx, id, Status::Online, &req).await.expect("workspace");
        ids.push(id);
    }
    tx.commit().await.expect("commit");
    ids
}

pub(crate) fn item(workspace_id: Uuid, text: &str) -> NewActivity {
    NewActivity {
        workspace_id,
        activity_type: inbox::INBOX_TYPE.into(),
        method: Some("message/send".into()),
        request_body: Some(inbox::message_send(text, text, serde_json::json!({}))),
        status: "ok".into(),
        ..Default::default()
    }
}

/// The process listener, once it hears: it announces each (re)build with a resync.
async fn listening(pool: &PgPool) -> (broadcast::Sender<Notice>, broadcast::Receiver<Notice>) {
    let notices = notify::spawn_listener(pool.clone());
    let mut rx = notices.subscribe();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await.expect("the listener never connected") {
            Ok(Notice::Resync) => return (notices, rx),
            Ok(_) => continue,
            Err(e) => panic!("listener: {e}"),
        }
    }
}

/// The next append notice, within 20 s.
async fn next_appended(rx: &mut broadcast::Receiver<Notice>) -> Option<Vec<Uuid>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await.expect("no append notice came") {
            Ok(Notice::Appended(named)) => return named.map(|ids| ids.to_vec()),
            Ok(_) => continue,
            Err(e) => panic!("listener: {e}"),
        }
    }
}

#[tokio::test]
async fn appends_wake_the_readers_of_their_workspaces_and_a_pushed_row_wakes_none() {
    let (_db, pool) = TestDb::migrated(10).await;
    let polled = workspaces(&pool, 3, DeliveryMode::Poll).await;
    let pushed = workspaces(&pool, 1, DeliveryMode::Push).await[0];
    let (_notices, mut rx) = listening(&pool).await;

    // A row written alone announces itself in its own statement, so notices come in commit
    // order: the pushed row's would come first, if it sent one.
    inbox::write(&pool, DeliveryMode::Push, item(pushed, "pushed")).await.expect("pushed item");
    inbox::write(&pool, DeliveryMode::Poll, item(polled[0], "alone")).await.expect("single-row append");
    assert_eq!(next_appended(&mut rx).await, Some(vec![polled[0]]), "the single-row append, and not the pushed row");

    // Rows written by rounds are announced once their round committed, coalesced: every
    // workspace written to is named, by one notice or a few.
    let appends = Appends::spawn(pool.clone());
    let (r1, r2, r3) = tokio::join!(
        appends.append(DeliveryMode::Poll, item(polled[1], "r1")),
        appends.append(DeliveryMode::Poll, item(polled[2], "r2")),
        appends.append(DeliveryMode::Poll, item(polled[1], "r3")),
    );
    for r in [r1, r2, r3] {
        r.expect("round append");
    }
    let mut named = std::collections::HashSet::new();
    while !(named.contains(&polled[1]) && named.contains(&polled[2])) {
        let ids = next_appended(&mut rx).await.expect("a few workspaces are named");
        assert!(ids.iter().all(|w| polled[1..].contains(w)), "only the workspaces written to: {ids:?}");
        named.extend(ids);
    }
}

#[tokio::test]
async fn an_announcement_of_more_workspaces_than_a_notice_can_name_wakes_every_reader() {
    let (_db, pool) = TestDb::migrated(10).await;
    let (_notices, mut rx) = listening(&pool).await;
    let many: Vec<Uuid> = (0..=INBOX_NOTICE_NAMES_MAX).map(|_| Uuid::new_v4()).collect();
    Announcer::spawn(pool.clone()).announce(many.clone());
    assert_eq!(next_appended(&mut rx).await, None, "too many to name: everyone re-reads");
}

#[tokio::test]
async fn a_waiting_read_answers_with_the_row_appended_meanwhile_or_with_nothing_when_its_time_is_up() {
    let (_db, pool) = TestDb::migrated(10).await;
    let ws = workspaces(&pool, 2, DeliveryMode::Poll).await;
    let (notices, _rx) = listening(&pool).await;
    let readers = Readers::spawn(&notices);
    let (_running, not_stopping) = watch::channel(false);
    let wakes = || Wakes { readers: &readers, stopping: not_stopping.clone() };
    let first = inbox::write(&pool, DeliveryMode::Poll, item(ws[0], "before")).await.expect("append");

    // Rows after the cursor are there: no waiting.
    let rows =
        long_poll::read_waiting(&pool, wakes(), ws[0], None, 0, 100, Duration::from_secs(60)).await.expect("read");
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![first]);

    // Nothing comes: empty, once the time is up (another workspace's row does not count).
    let started = Instant::now();
    let other = inbox::write(&pool, DeliveryMode::Poll, item(ws[1], "elsewhere")).await.expect("append");
    let rows = long_poll::read_waiting(&pool, wakes(), ws[0], None, first, 100, Duration::from_millis(500))
        .await
        .expect("read");
    assert!(rows.is_empty(), "{rows:?}");
    assert!(started.elapsed() >= Duration::from_millis(500), "answered before its time was up");
    assert!(other > first);

    // A row appended while the reader waits is its answer, brought by the notice: the
    // reader's own re-read would come only after REREAD_EVERY.
    let started = Instant::now();
    let reader = tokio::spawn({
        let (pool, readers, stopping, ws) = (pool.clone(), readers.clone(), not_stopping.clone(), ws[0]);
        async move {
            let wakes = Wakes { readers: &readers, stopping };
            long_poll::read_waiting(&pool, wakes, ws, None, first, 100, Duration::from_secs(60)).await
        }
    });
    let appends = Appends::spawn(pool.clone());
    let later = appends.append(DeliveryMode::Poll, item(ws[0], "meanwhile")).await.expect("append");
    let rows = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reader answered within its wait")
        .expect("reader task")
        .expect("read");
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![later]);
    assert!(started.elapsed() < long_poll::REREAD_EVERY / 2, "woken by the notice, not by the re-read");
}

#[tokio::test]
async fn a_waiting_read_answers_at_once_with_what_there_is_when_the_process_stops() {
    let (_db, pool) = TestDb::migrated(10).await;
    let ws = workspaces(&pool, 1, DeliveryMode::Poll).await[0];
    let (notices, _rx) = listening(&pool).await;
    let readers = Readers::spawn(&notices);
    let (stop, stopping) = watch::channel(false);
    let reader = tokio::spawn({
        let (pool, readers) = (pool.clone(), readers.clone());
        async move {
            let wakes = Wakes { readers: &readers, stopping };
            long_poll::read_waiting(&pool, wakes, ws, None, 0, 100, Duration::from_secs(300)).await
        }
    });
    stop.send(true).expect("the reader listens");
    let rows = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("a stopping process does not wait out a 300 s long poll")
        .expect("reader task")
        .expect("read");
    assert!(rows.is_empty(), "{rows:?}");
}
