//! The queue's invariants at the database level: the `jobs` library against a fresh,
//! migrated database, with no process, no backend and no Docker. Each test runs in well
//! under a second and pins one rule of `docs/adr/0002` and `0003` or one sweep.

use std::time::Duration;

use jobs::domain::{CreateRequest, DeliveryMode, Op, OpKind, OpStatus, Status};
use jobs::lifecycle::{self, Created, Deleted, Restarted};
use jobs::ops::{self, Claim, ClaimResult, Finished, Outcome};
use jobs::retry::{RetryPolicies, RetryPolicy};
use jobs::store::{workspace_ops, workspaces};
use jobs::sweeps::{self, SweepKind, liveness, provision_timeout, retention};
use sqlx::PgPool;
use tests::TestDb;
use uuid::Uuid;

/// A fresh database with apalis' schema and ours. The `TestDb` drops it when the test ends.
async fn database() -> (TestDb, PgPool) {
    TestDb::migrated(5).await
}

fn request(name: &str) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        role: None,
        runtime: "langgraph".into(),
        tier: 1,
        model: "m".into(),
        parent_id: None,
        external: false,
        url: None,
        delivery_mode: DeliveryMode::Push,
        max_concurrent_tasks: 1,
        canvas: None,
    }
}

/// Creates a workspace; returns its id and its provision op.
async fn create(pool: &PgPool, name: &str) -> (Uuid, Op) {
    match lifecycle::create(pool, request(name), "test").await.expect("create") {
        Created::Provisioning { workspace, op } => (workspace.id, *op),
        Created::External { .. } => panic!("a langgraph workspace is not external"),
    }
}

async fn op(pool: &PgPool, id: Uuid) -> Op {
    ops::get(pool, id).await.expect("op")
}

/// `(status, run_at is in the future)` of an apalis task.
async fn task(pool: &PgPool, task_id: &str) -> (String, bool) {
    sqlx::query_as("SELECT status, run_at > now() FROM apalis.jobs WHERE id = $1")
        .bind(task_id)
        .fetch_one(pool)
        .await
        .expect("task row")
}

/// Claims the op for the delivery of its current task.
async fn claim(pool: &PgPool, op_id: Uuid) -> Claim {
    let task = op(pool, op_id).await.task_id.expect("the op has a task");
    match ops::claim(pool, op_id, &task, &claimant("test-worker")).await.expect("claim") {
        ClaimResult::Claimed(c) => *c,
        ClaimResult::Skip(why) => panic!("claim of {op_id} skipped: {why}"),
    }
}

const LEASE: Duration = Duration::from_secs(30);

/// A worker that reaches every backend.
fn claimant(worker: &str) -> ops::Claimant<'_> {
    ops::Claimant {
        worker,
        lease: LEASE,
        starts: true,
        reaches: vec![jobs::backend::BackendKind::Docker, jobs::backend::BackendKind::Ec2],
        engines: vec![],
        new_on_engine: None,
    }
}

/// Ends the claim's lease as if its worker had stopped renewing it long ago.
async fn expire_lease(pool: &PgPool, op_id: Uuid) {
    sqlx::query("UPDATE workspace_ops SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(op_id)
        .execute(pool)
        .await
        .expect("expire the lease");
}

fn fast() -> RetryPolicies {
    RetryPolicies::scaled(0.001)
}

fn policy(kind: OpKind) -> RetryPolicy {
    fast().for_kind(kind)
}

async fn finish(pool: &PgPool, claim: &Claim, outcome: Outcome) -> Finished {
    ops::finish(pool, claim, outcome, policy(claim.op.kind)).await.expect("finish")
}

async fn event_count(pool: &PgPool, workspace_id: Uuid, event: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM structure_events WHERE workspace_id = $1 AND event_type = $2")
        .bind(workspace_id)
        .bind(event)
        .fetch_one(pool)
        .await
        .expect("count events")
}

#[tokio::test]
async fn only_the_head_op_has_a_task_and_finishing_it_hands_the_next_one_its_task() {
    let (_db, pool) = database().await;
    let (id, provision) = create(&pool, "seq").await;
    assert_eq!(provision.status, OpStatus::Queued);
    assert!(provision.task_id.is_some(), "the first op is the head and is delivered at once");

    let Restarted::Queued { op: restart, new } =
        lifecycle::restart(&pool, id, "restart", "test", Default::default()).await.unwrap()
    else {
        panic!("not a noop")
    };
    assert!(!new && restart.id == provision.id, "a restart joins the queued provision");

    let stop = lifecycle::pause(&pool, id, "test").await.unwrap().op_ids[0];
    // The provision was canceled by the pause, so the stop is the head now.
    assert_eq!(op(&pool, provision.id).await.status, OpStatus::Canceled);
    let stop_op = op(&pool, stop).await;
    assert!(stop_op.task_id.is_some());

    // Resume adds a provision behind the running stop: it waits for its turn, with no task.
    let stop_claim = claim(&pool, stop).await;
    let resumed = lifecycle::resume(&pool, id, "test").await.unwrap().op_ids[0];
    assert_eq!(op(&pool, resumed).await.task_id, None, "an op behind the head has no task");

    assert_eq!(finish(&pool, &stop_claim, Outcome::Succeeded("stopped".into())).await, Finished::Recorded);
    let resumed = op(&pool, resumed).await;
    let task_id = resumed.task_id.clone().expect("finishing the head gave the next op its task");
    assert_eq!(task(&pool, &task_id).await, ("Pending".to_string(), false), "due at once");
}

#[tokio::test]
async fn concurrent_restarts_while_a_start_is_queued_all_join_it() {
    let (_db, pool) = database().await;
    let (id, provision) = create(&pool, "coalesce").await;
    let calls = (0..20).map(|_| lifecycle::restart(&pool, id, "restart", "test", Default::default()));
    for result in futures::future::join_all(calls).await {
        match result.expect("restart") {
            Restarted::Queued { op, new } => assert!(!new && op.id == provision.id, "joined {}", op.id),
            Restarted::Noop => panic!("not external"),
        }
    }
    assert_eq!(workspace_ops::list_for_workspace(&pool, id, 100).await.unwrap().len(), 1);

    // Once the start runs, the next restart is new, and the ones after it join that one.
    let _running = claim(&pool, provision.id).await;
    let mut restart_ids = vec![];
    for _ in 0..5 {
        if let Restarted::Queued { op, .. } =
            lifecycle::restart(&pool, id, "restart", "test", Default::default()).await.unwrap()
        {
            restart_ids.push(op.id);
        }
    }
    restart_ids.dedup();
    assert_eq!(restart_ids.len(), 1, "one restart queued behind the running start: {restart_ids:?}");
}

#[tokio::test]
async fn delete_cancels_queued_starts_kills_their_tasks_and_queues_a_stop() {
    let (_db, pool) = database().await;
    let (id, provision) = create(&pool, "supersede").await;
    let task_id = provision.task_id.clone().unwrap();
    let Deleted::Removed { op_ids, .. } = lifecycle::delete(&pool, id, false, "test").await.unwrap() else {
        panic!("no children, no confirmation needed")
    };
    let canceled = op(&pool, provision.id).await;
    assert_eq!(canceled.status, OpStatus::Canceled);
    assert_eq!(canceled.last_error.as_deref(), Some("superseded by delete"));
    assert!(canceled.finished_at.is_some());
    assert_eq!(task(&pool, &task_id).await.0, "Killed", "the canceled op's task will not be fetched");
    let stop = op(&pool, op_ids[0]).await;
    assert_eq!((stop.kind, stop.status), (OpKind::Stop, OpStatus::Queued));
    assert!(stop.task_id.is_some());
    let ws = workspaces::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(ws.status, Status::Removed);
    // A late claim of the canceled op's task does nothing.
    match ops::claim(&pool, provision.id, &task_id, &claimant("test-worker")).await.unwrap() {
        ClaimResult::Skip(why) => assert!(why.contains("canceled"), "{why}"),
        ClaimResult::Claimed(_) => panic!("a canceled op was claimed"),
    }
}

#[tokio::test]
async fn a_stale_claim_is_fenced_out_and_its_successor_records_the_outcome() {
    let (_db, pool) = database().await;
    let (id, provision) = create(&pool, "fence").await;
    let first = claim(&pool, provision.id).await;
    // The worker holding `first` stopped renewing its lease; apalis re-delivers the task.
    expire_lease(&pool, provision.id).await;
    let second = claim(&pool, provision.id).await;
    assert_eq!((first.lease, second.lease), (1, 2));
    assert_eq!(op(&pool, provision.id).await.attempts, 2);

    let mut tx = jobs::db::begin(&pool).await.unwrap();
    assert!(first.fence(&mut tx).await.unwrap().is_err(), "the old lease no longer owns the op");
    tx.rollback().await.unwrap();
    assert_eq!(finish(&pool, &first, Outcome::Failed("stale worker".into())).await, Finished::Fenced);
    let after_stale = op(&pool, provision.id).await;
    assert_eq!((after_stale.status, after_stale.last_error), (OpStatus::Running, None), "nothing was written");

    assert_eq!(finish(&pool, &second, Outcome::Succeeded("started".into())).await, Finished::Recorded);
    let done = op(&pool, provision.id).await;
    assert_eq!((done.status, done.result.as_deref()), (OpStatus::Succeeded, Some("started")));
    assert_eq!(workspaces::get(&pool, id).await.unwrap().unwrap().status, Status::Provisioning);

    // A delivery whose task is not the op's current one is stale too.
    match ops::claim(&pool, provision.id, "01JUNKTASK0000000000000000", &claimant("test-worker")).await.unwrap() {
        ClaimResult::Skip(_) => {}
        ClaimResult::Claimed(_) => panic!("a finished op was claimed again"),
    }
}

#[tokio::test]
async fn a_failed_attempt_is_retried_by_a_delayed_task_until_the_last_one_fails_the_workspace() {
    let (_db, pool) = database().await;
    let (id, provision) = create(&pool, "retry").await;
    for attempt in 1..provision.max_attempts {
        let c = claim(&pool, provision.id).await;
        assert_eq!(c.op.attempts, attempt);
        let old_task = c.op.task_id.clone().unwrap();
        assert_eq!(finish(&pool, &c, Outcome::Retry("engine unreachable".into())).await, Finished::Recorded);
        let queued = op(&pool, provision.id).await;
        assert_eq!(queued.status, OpStatus::Queued);
        assert_eq!(queued.last_error.as_deref(), Some("engine unreachable"));
        assert!(queued.next_attempt_at.is_some());
        let new_task = queued.task_id.expect("a delayed copy delivers the retry");
        assert_ne!(new_task, old_task);
        assert_eq!(task(&pool, &new_task).await.0, "Pending");
    }
    let last = claim(&pool, provision.id).await;
    finish(&pool, &last, Outcome::Retry("engine unreachable".into())).await;
    let failed = op(&pool, provision.id).await;
    assert_eq!(failed.status, OpStatus::Failed);
    let reason = failed.last_error.unwrap();
    assert!(reason.contains("gave up after 5 attempts"), "{reason}");
    let ws = workspaces::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(ws.status, Status::Failed);
    assert_eq!(ws.last_sample_error.as_deref(), Some(reason.as_str()), "the workspace says why it failed");
    assert_eq!(event_count(&pool, id, "WORKSPACE_PROVISION_FAILED").await, 1);
}

#[tokio::test]
async fn a_stop_that_gives_up_is_reported_as_a_leak_suspect() {
    let (_db, pool) = database().await;
    let (id, provision) = create(&pool, "leak").await;
    let c = claim(&pool, provision.id).await;
    finish(&pool, &c, Outcome::Succeeded("started".into())).await;
    let stop = lifecycle::pause(&pool, id, "test").await.unwrap().op_ids[0];
    let c = claim(&pool, stop).await;
    finish(&pool, &c, Outcome::Failed("engine refused".into())).await;
    assert_eq!(op(&pool, stop).await.status, OpStatus::Failed);
    assert_eq!(event_count(&pool, id, "LEAK_SUSPECT").await, 1);
    assert_eq!(workspaces::get(&pool, id).await.unwrap().unwrap().status, Status::Paused, "pause stands");
}

#[tokio::test]
async fn a_head_op_whose_task_vanished_is_redelivered_and_a_delivered_one_is_not() {
    let (_db, pool) = database().await;
    let (_, stranded) = create(&pool, "stranded").await;
    let (_, delivered) = create(&pool, "delivered").await;
    sqlx::query("DELETE FROM apalis.jobs WHERE id = $1").bind(&stranded.task_id).execute(&pool).await.unwrap();

    let redelivered = ops::redeliver_stranded(&pool, Duration::ZERO).await.unwrap();
    assert_eq!(redelivered, vec![stranded.id]);
    let new_task = op(&pool, stranded.id).await.task_id.unwrap();
    assert_ne!(Some(new_task.clone()), stranded.task_id);
    assert_eq!(task(&pool, &new_task).await.0, "Pending");
    assert_eq!(op(&pool, delivered.id).await.task_id, delivered.task_id, "a live task is left alone");

    // The old delivery, should it still arrive, is stale; the new one claims.
    match ops::claim(&pool, stranded.id, stranded.task_id.as_deref().unwrap(), &claimant("test-worker")).await.unwrap()
    {
        ClaimResult::Skip(why) => assert!(why.contains("stale"), "{why}"),
        ClaimResult::Claimed(_) => panic!("the vanished task's delivery claimed the op"),
    }
    assert_eq!(claim(&pool, stranded.id).await.lease, 1);
    assert!(ops::redeliver_stranded(&pool, Duration::ZERO).await.unwrap().is_empty(), "nothing left stranded");
}

#[tokio::test]
async fn an_unknown_value_in_a_typed_column_is_an_error_not_a_default() {
    let (_db, pool) = database().await;
    let (id, _) = create(&pool, "typed").await;
    // Only a hand edit (or a newer server's migration) can put an unknown status there.
    sqlx::query("ALTER TABLE workspaces DROP CONSTRAINT workspaces_status_check").execute(&pool).await.unwrap();
    sqlx::query("UPDATE workspaces SET status = 'hibernating' WHERE id = $1").bind(id).execute(&pool).await.unwrap();
    let err = workspaces::get(&pool, id).await.expect_err("an unknown status must not decode");
    assert!(matches!(err, jobs::Error::Db(_)), "{err:?}");
    assert!(err.to_string().contains("hibernating"), "{err}");
}

#[tokio::test]
async fn provisioning_past_its_timeout_fails_with_the_reason() {
    let (_db, pool) = database().await;
    let (slow, _) = create(&pool, "slow").await;
    let (fresh, _) = create(&pool, "fresh").await;
    let (queued, _) = create(&pool, "queued").await;
    // `slow` was started an hour ago; `queued` has waited two hours for a worker but was
    // never started, so its agent has not had any time yet.
    sqlx::query(
        "UPDATE workspaces SET status_changed_at = now() - interval '2 hours',
                instance_started_at = CASE WHEN id = $1 THEN now() - interval '1 hour' END
          WHERE id IN ($1, $2)",
    )
    .bind(slow)
    .bind(queued)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE workspaces SET instance_started_at = clock_timestamp() WHERE id = $1")
        .bind(fresh)
        .execute(&pool)
        .await
        .unwrap();
    let settings = provision_timeout::Settings { every: Duration::from_secs(30), timeout_override: None };
    let outcome = provision_timeout::run(&pool, &settings, "http://platform.test").await.unwrap();
    assert_eq!(outcome, "1 workspace(s) failed by timeout");
    let ws = workspaces::get(&pool, slow).await.unwrap().unwrap();
    assert_eq!(ws.status, Status::Failed);
    let reason = ws.last_sample_error.unwrap();
    assert!(reason.contains("timed out after 600s") && reason.contains("http://platform.test"), "{reason}");
    assert_eq!(workspaces::get(&pool, fresh).await.unwrap().unwrap().status, Status::Provisioning);
    assert_eq!(
        workspaces::get(&pool, queued).await.unwrap().unwrap().status,
        Status::Provisioning,
        "time in the queue does not count"
    );
}

#[tokio::test]
async fn a_silent_online_workspace_goes_offline_and_gets_one_restart() {
    let (_db, pool) = database().await;
    let (id, provision) = create(&pool, "silent").await;
    let c = claim(&pool, provision.id).await;
    finish(&pool, &c, Outcome::Succeeded("started".into())).await;
    jobs::registry::register(
        &pool,
        id,
        jobs::domain::Registration { url: None, agent_card: None, delivery_mode: None },
        jobs::registry::Credential::Verified,
    )
    .await
    .unwrap();
    sqlx::query("UPDATE workspaces SET last_heartbeat_at = now() - interval '10 minutes' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let settings = liveness::Settings { every: Duration::from_secs(15), stale_after: Duration::from_secs(90) };
    let outcome = liveness::run(&pool, &settings).await.unwrap();
    assert!(outcome.starts_with("1 stale, 1 restart(s) queued"), "{outcome}");
    // The restart moved it on to provisioning, through offline.
    assert_eq!(workspaces::get(&pool, id).await.unwrap().unwrap().status, Status::Provisioning);
    assert_eq!(event_count(&pool, id, "WORKSPACE_OFFLINE").await, 1);
    let ops = workspace_ops::list_for_workspace(&pool, id, 10).await.unwrap();
    assert_eq!((ops[0].kind, ops[0].status, ops[0].reason.as_str()), (OpKind::Restart, OpStatus::Queued, "liveness"));
    // A second pass finds nothing new to do.
    assert!(liveness::run(&pool, &settings).await.unwrap().starts_with("0 stale"));
}

#[tokio::test]
async fn retention_deletes_old_finished_rows_in_batches_and_keeps_the_rest() {
    let (_db, pool) = database().await;
    let mut old_ops = vec![];
    for i in 0..5 {
        let (_, provision) = create(&pool, &format!("old{i}")).await;
        let c = claim(&pool, provision.id).await;
        finish(&pool, &c, Outcome::Succeeded("started".into())).await;
        old_ops.push(provision.id);
    }
    let (_, unfinished) = create(&pool, "queued").await;
    sqlx::query("UPDATE workspace_ops SET finished_at = now() - interval '2 days' WHERE finished_at IS NOT NULL")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE structure_events SET created_at = now() - interval '2 days'").execute(&pool).await.unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now() - interval '2 days' WHERE id <> $1")
        .bind(&unfinished.task_id)
        .execute(&pool)
        .await
        .unwrap();
    let day = Duration::from_secs(24 * 3600);
    let settings = retention::Settings { every: day, jobs: day, ops: day, events: day, activity: day, batch: 2 };
    let purged = retention::run(&pool, &settings).await.unwrap();
    assert_eq!((purged.ops, purged.jobs), (5, 5));
    assert_eq!(purged.batches, 3, "5 tasks in batches of 2");
    assert!(purged.events >= 6, "{}", purged.events);
    for id in old_ops {
        assert!(workspace_ops::get(&pool, id).await.unwrap().is_none());
    }
    let kept = op(&pool, unfinished.id).await;
    assert_eq!(kept.status, OpStatus::Queued);
    assert_eq!(task(&pool, &kept.task_id.unwrap()).await.0, "Pending", "a live task is never purged");
}

#[tokio::test]
async fn a_sweep_period_is_won_by_exactly_one_of_many_claimants() {
    let (_db, pool) = database().await;
    let period = Duration::from_secs(3600);
    let claims = (0..12).map(|_| sweeps::claim_period(&pool, SweepKind::Retention, period));
    let won = futures::future::join_all(claims).await.into_iter().map(|r| r.unwrap()).filter(|w| *w).count();
    assert_eq!(won, 1);
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = 'sweeps'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tasks, 1, "losers enqueue nothing");
}

#[tokio::test]
async fn a_sweep_run_is_skipped_while_the_previous_run_of_that_sweep_still_goes() {
    let (_db, pool) = database().await;
    let config = jobs::config::Config::read(&jobs::config::Env::from_pairs([("DATABASE_URL", "unused")])).unwrap();
    let ctx = jobs::kinds::JobContext::new(
        pool.clone(),
        std::sync::Arc::new(config),
        Default::default(),
        "test-worker".into(),
    );
    let outcome_of = |period_start| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT outcome FROM sweep_runs WHERE sweep = 'retention' AND period_start = $1",
            )
            .bind(period_start)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let task = |minutes_ago: i64| jobs::queue::SweepTask {
        v: 1,
        sweep: "retention".into(),
        period_start: chrono::Utc::now() - chrono::Duration::minutes(minutes_ago),
    };
    let (earlier, later) = (task(2), task(1));
    for t in [&earlier, &later] {
        sqlx::query("INSERT INTO sweep_runs (sweep, period_start) VALUES ('retention', $1)")
            .bind(t.period_start)
            .execute(&pool)
            .await
            .unwrap();
    }

    // The earlier period's run is still going: it holds the sweep's lock.
    let mut running = jobs::db::begin(&pool).await.unwrap();
    assert!(jobs::store::sweep_runs::try_lock(&mut running, "retention").await.unwrap());
    sweeps::run(&ctx, &later).await.unwrap();
    assert_eq!(outcome_of(later.period_start).await, "skipped: the previous run of this sweep is still going");
    running.commit().await.unwrap();

    sweeps::run(&ctx, &earlier).await.unwrap();
    assert!(outcome_of(earlier.period_start).await.starts_with("deleted "), "runs once the lock is free");
}

#[tokio::test]
async fn pause_and_delete_reach_descendants_deeper_than_64_and_a_long_cycle_is_refused() {
    let (_db, pool) = database().await;
    let mut chain: Vec<Uuid> = vec![];
    for i in 0..70 {
        let mut req = request(&format!("level{i}"));
        req.parent_id = chain.last().copied();
        match lifecycle::create(&pool, req, "test").await.unwrap() {
            Created::Provisioning { workspace, .. } => chain.push(workspace.id),
            Created::External { .. } => panic!("not external"),
        }
    }
    let (root, deepest) = (chain[0], chain[69]);
    let cycle = jobs::domain::Patch { parent_id: Some(Some(deepest)), ..Default::default() };
    let err = lifecycle::patch(&pool, root, cycle).await.expect_err("a 70-long cycle");
    assert!(matches!(err, jobs::Error::Invalid { field: "parent_id", .. }), "{err}");

    assert_eq!(lifecycle::pause(&pool, root, "test").await.unwrap().paused.len(), 70);
    let Deleted::Removed { removed, op_ids } = lifecycle::delete(&pool, root, true, "test").await.unwrap() else {
        panic!("confirmed")
    };
    assert_eq!((removed.len(), op_ids.len()), (70, 70));
    let deepest = workspaces::get(&pool, deepest).await.unwrap().unwrap();
    assert_eq!(deepest.status, Status::Removed, "the 70th level is removed too");
}

#[tokio::test]
async fn resuming_an_external_workspace_waits_for_its_agent_and_starts_nothing() {
    let (_db, pool) = database().await;
    let mut req = request("ext");
    req.runtime = "external".into();
    req.external = true;
    req.delivery_mode = DeliveryMode::Poll;
    let Created::External { workspace, token } = lifecycle::create(&pool, req, "test").await.unwrap() else {
        panic!("external")
    };
    let id = workspace.id;
    lifecycle::pause(&pool, id, "test").await.unwrap();
    let resumed = lifecycle::resume(&pool, id, "test").await.unwrap();
    assert_eq!((resumed.resumed, resumed.op_ids.len()), (vec![id], 0));
    assert_eq!(workspaces::get(&pool, id).await.unwrap().unwrap().status, Status::AwaitingAgent);
    let kinds: Vec<OpKind> =
        workspace_ops::list_for_workspace(&pool, id, 10).await.unwrap().into_iter().map(|o| o.kind).collect();
    assert!(!kinds.contains(&OpKind::Provision), "nothing is started for an external workspace: {kinds:?}");
    assert_eq!(
        jobs::store::workspace_tokens::validate(&pool, &token).await.unwrap(),
        Some(id),
        "its agent's token still works"
    );
}

#[tokio::test]
async fn a_delivery_of_an_op_under_a_live_lease_defers_instead_of_taking_it_over() {
    let (_db, pool) = database().await;
    let (_id, provision) = create(&pool, "busy").await;
    let first = claim(&pool, provision.id).await;
    let running = op(&pool, provision.id).await;
    assert_eq!(running.claimed_by.as_deref(), Some("test-worker"));
    // apalis presumed the owner dead and delivers the task again: the owner's lease says
    // otherwise, so the delivery becomes a task due when that lease would expire.
    let task_id = running.task_id.clone().unwrap();
    match ops::claim(&pool, provision.id, &task_id, &claimant("another-worker")).await.unwrap() {
        ClaimResult::Skip(why) => assert!(why.contains("live lease held by test-worker"), "{why}"),
        ClaimResult::Claimed(_) => panic!("a running op under a live lease was taken over"),
    }
    let deferred = op(&pool, provision.id).await;
    assert_eq!((deferred.attempts, deferred.lease, deferred.status), (1, first.lease, OpStatus::Running));
    let new_task = deferred.task_id.clone().expect("a deferred delivery");
    assert_ne!(new_task, task_id, "the old delivery is stale from now on");
    let (status, later) = task(&pool, &new_task).await;
    assert_eq!(status, "Pending");
    assert!(later, "the deferred delivery is due when the lease would expire, not now");
    // The owner keeps renewing: still its op.
    assert!(workspace_ops::renew_lease(&pool, provision.id, first.lease, LEASE).await.unwrap());

    // The owner stops renewing; once its lease has expired the next delivery rescues the op.
    expire_lease(&pool, provision.id).await;
    let rescued = match ops::claim(&pool, provision.id, &new_task, &claimant("another-worker")).await.unwrap() {
        ClaimResult::Claimed(c) => *c,
        ClaimResult::Skip(why) => panic!("an expired lease was not taken over: {why}"),
    };
    assert_eq!((rescued.lease, rescued.op.attempts), (first.lease + 1, 2));
    assert_eq!(rescued.op.claimed_by.as_deref(), Some("another-worker"));
    assert!(
        !workspace_ops::renew_lease(&pool, provision.id, first.lease, LEASE).await.unwrap(),
        "the old owner's renewal finds its claim superseded"
    );
}

/// Leaves the task as apalis leaves one it fetched again after an earlier run: `Running`,
/// with that run's `done_at`.
async fn running_again(pool: &PgPool, task_id: &str) {
    sqlx::query("UPDATE apalis.jobs SET status = 'Running', done_at = now() - interval '1 hour' WHERE id = $1")
        .bind(task_id)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn retention_kills_a_running_task_only_when_its_ops_lease_has_expired() {
    let (_db, pool) = database().await;
    let (_id, provision) = create(&pool, "long").await;
    claim(&pool, provision.id).await;
    let task_id = op(&pool, provision.id).await.task_id.unwrap();
    running_again(&pool, &task_id).await;
    let day = Duration::from_secs(86_400);
    let settings = retention::Settings { every: day, jobs: day, ops: day, events: day, activity: day, batch: 100 };
    retention::run(&pool, &settings).await.unwrap();
    assert_eq!(task(&pool, &task_id).await.0, "Running", "a task whose op holds a live lease is being worked on");

    expire_lease(&pool, provision.id).await;
    retention::run(&pool, &settings).await.unwrap();
    assert_eq!(task(&pool, &task_id).await.0, "Killed", "nobody renews the lease: the row is residue");
}

/// The residue check runs once per retention period over a table that may hold a million
/// finished tasks; it must read the running ones only, not every retained task.
#[tokio::test]
async fn the_panic_residue_check_reads_running_tasks_not_every_retained_one() {
    use jobs::store::apalis::{KILL_PANIC_RESIDUE, bench};
    let (_db, pool) = database().await;
    bench::reset_queue(&pool, "retained", "retained").await.unwrap();
    bench::insert_finished(&pool, "retained", "retained", 50_000).await.unwrap();
    let (_id, provision) = create(&pool, "re-run").await;
    let task_id = op(&pool, provision.id).await.task_id.unwrap();
    running_again(&pool, &task_id).await;
    bench::analyze(&pool).await.unwrap();

    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {KILL_PANIC_RESIDUE}")))
        .bind(jobs::queue::LIFECYCLE_QUEUE)
        .fetch_all(&pool)
        .await
        .unwrap();
    let scan =
        plan.iter().find(|l| l.contains("Scan") && l.contains(" on jobs j")).expect("the plan reads apalis.jobs");
    assert!(scan.contains("apalis_jobs_running_done_at_idx"), "the check reads every retained task: {plan:#?}");
    // The index changes how the rows are found, not which: the residue is still killed.
    let killed = jobs::store::apalis::kill_panic_residue(&pool, jobs::queue::LIFECYCLE_QUEUE).await.unwrap();
    assert_eq!(killed, 1);
    assert_eq!(task(&pool, &task_id).await.0, "Killed");
}

/// An event's notification carries its envelope, so listeners need not read it back; an
/// envelope too long for a notification is announced by its id and read. Either way every
/// listener receives the event whole.
#[tokio::test]
async fn listeners_receive_events_whole_whether_inline_or_too_long_for_a_notification() {
    use jobs::notify::Notice;
    let (_db, pool) = database().await;
    let notices = jobs::notify::spawn_listener(pool.clone());
    let mut rx = notices.subscribe();
    let deadline = Duration::from_secs(15);
    // The listener announces a resync once it listens; events before that could be missed.
    tokio::time::timeout(deadline, async { while !matches!(rx.recv().await, Ok(Notice::Resync)) {} })
        .await
        .expect("the listener never started listening");

    let inline = serde_json::json!({"note": "small"});
    let too_long =
        serde_json::json!({"note": "x".repeat(3 * jobs::store::structure_events::NOTIFY_INLINE_MAX as usize)});
    for payload in [inline, too_long] {
        let mut tx = jobs::db::begin(&pool).await.unwrap();
        let id = jobs::events::record(&mut tx, "TEST_EVENT", None, payload.clone()).await.unwrap();
        tx.commit().await.unwrap();
        let got = tokio::time::timeout(deadline, async {
            loop {
                if let Ok(Notice::Event(e)) = rx.recv().await
                    && e.id == id
                {
                    return e;
                }
            }
        })
        .await
        .expect("the event never reached the listener");
        assert_eq!(got.event, "TEST_EVENT");
        assert_eq!(got.workspace_id, None);
        assert_eq!(got.payload, payload, "the event arrived altered");
    }
}

#[tokio::test]
async fn one_claim_statement_takes_every_claimable_delivery_of_a_round_and_only_those() {
    let (_db, pool) = database().await;
    let (_, ready) = create(&pool, "round-ready").await;
    let (_, stale) = create(&pool, "round-stale").await;
    let (_, running) = create(&pool, "round-running").await;
    let held = claim(&pool, running.id).await;
    let deliveries = vec![
        (ready.id, ready.task_id.clone().unwrap()),
        (stale.id, "01JUNKTASK0000000000000000".to_string()),
        (running.id, running.task_id.clone().unwrap()),
    ];
    let fleet = jobs::fleet::Snapshot::default();
    let claims = ops::claim_directly(&pool, &deliveries, &claimant("round-worker"), &fleet).await.unwrap();
    let claimed: Vec<Uuid> = claims.iter().map(|c| c.op.id).collect();
    assert_eq!(claimed, vec![ready.id], "only the queued op delivered by its own task is taken");
    let taken = op(&pool, ready.id).await;
    assert_eq!(
        (taken.status, taken.attempts, taken.claimed_by.as_deref()),
        (OpStatus::Running, 1, Some("round-worker"))
    );
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM op_attempts WHERE op_id = $1 AND finished_at IS NULL")
        .bind(ready.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the claim opened its attempt");
    assert_eq!((op(&pool, stale.id).await.status, op(&pool, stale.id).await.attempts), (OpStatus::Queued, 0));
    let still = op(&pool, running.id).await;
    assert_eq!((still.lease, still.claimed_by.as_deref()), (held.lease, Some("test-worker")), "a held op is not taken");
}

#[tokio::test]
async fn a_round_of_endings_records_each_as_finish_does_and_a_fenced_one_writes_nothing() {
    let (_db, pool) = database().await;
    // A provision that fails: its workspace fails with the reason and one event.
    let (failing_ws, failing) = create(&pool, "round-fails").await;
    let failing = claim(&pool, failing.id).await;
    // A provision claimed twice: the first claim's ending is fenced, the second's recorded.
    let (twice_ws, twice) = create(&pool, "round-twice").await;
    let stale = claim(&pool, twice.id).await;
    expire_lease(&pool, twice.id).await;
    let current = claim(&pool, twice.id).await;
    // A provision that fails after its workspace was paused: the pause stands, and the stop
    // queued behind the provision is handed its task.
    let (paused_ws, paused) = create(&pool, "round-paused").await;
    let paused = claim(&pool, paused.id).await;
    let stop = lifecycle::pause(&pool, paused_ws, "test").await.unwrap().op_ids[0];
    assert_eq!(op(&pool, stop).await.task_id, None, "the stop waits behind the running provision");

    let endings: Vec<ops::Ending> = [
        (&failing, Outcome::Failed("no provisioning backend".into())),
        (&stale, Outcome::Succeeded("stale".into())),
        (&current, Outcome::Succeeded("started".into())),
        (&paused, Outcome::Failed("engine unreachable".into())),
    ]
    .iter()
    .map(|(c, o)| ops::Ending::of(c, o).expect("a final ending"))
    .collect();
    assert!(ops::Ending::of(&paused, &Outcome::Retry("x".into())).is_none(), "a retry is finished alone");
    assert!(
        ops::Ending::of(&held_stop(&pool).await, &Outcome::Failed("x".into())).is_none(),
        "so is a stop that gave up"
    );
    let finished = ops::finish_round(&pool, &endings).await.unwrap();
    assert_eq!(finished, vec![Finished::Recorded, Finished::Fenced, Finished::Recorded, Finished::Recorded]);

    let failed = op(&pool, failing.op.id).await;
    assert_eq!((failed.status, failed.last_error.as_deref()), (OpStatus::Failed, Some("no provisioning backend")));
    let ws = workspaces::get(&pool, failing_ws).await.unwrap().unwrap();
    assert_eq!((ws.status, ws.last_sample_error.as_deref()), (Status::Failed, Some("no provisioning backend")));
    let payload: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM structure_events WHERE workspace_id = $1 AND event_type = 'WORKSPACE_PROVISION_FAILED'",
    )
    .bind(failing_ws)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(payload["op_id"], serde_json::json!(failing.op.id));
    assert_eq!(
        (payload["source"].as_str(), payload["error"].as_str(), payload["name"].as_str(), payload["from"].as_str()),
        (Some("provision"), Some("no provisioning backend"), Some("round-fails"), Some("provisioning"))
    );
    let attempt: (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error FROM op_attempts WHERE op_id = $1 AND finished_at IS NOT NULL")
            .bind(failing.op.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempt, ("failed".to_string(), Some("no provisioning backend".to_string())));

    let done = op(&pool, twice.id).await;
    assert_eq!(
        (done.status, done.result.as_deref()),
        (OpStatus::Succeeded, Some("started")),
        "the stale ending wrote nothing"
    );
    assert_eq!(workspaces::get(&pool, twice_ws).await.unwrap().unwrap().status, Status::Provisioning);

    assert_eq!(op(&pool, paused.op.id).await.status, OpStatus::Failed);
    assert_eq!(workspaces::get(&pool, paused_ws).await.unwrap().unwrap().status, Status::Paused, "pause stands");
    assert_eq!(event_count(&pool, paused_ws, "WORKSPACE_PROVISION_FAILED").await, 0);
    let stop_task = op(&pool, stop).await.task_id.expect("the next head got its task");
    assert_eq!(task(&pool, &stop_task).await, ("Pending".to_string(), false));
}

/// A claimed stop of a workspace whose provision succeeded.
async fn held_stop(pool: &PgPool) -> Claim {
    let (id, provision) = create(pool, "held-stop").await;
    let c = claim(pool, provision.id).await;
    finish(pool, &c, Outcome::Succeeded("started".into())).await;
    let stop = lifecycle::pause(pool, id, "test").await.unwrap().op_ids[0];
    claim(pool, stop).await
}

#[tokio::test]
async fn a_since_id_reader_misses_no_item_of_concurrent_one_statement_writers() {
    use jobs::store::activity_logs::{self, NewActivity};
    let (_db, pool) = database().await;
    let ws = match lifecycle::create(&pool, CreateRequest { external: true, ..request("poller") }, "test").await {
        Ok(Created::External { workspace, .. }) => workspace.id,
        Ok(Created::Provisioning { .. }) => panic!("an external workspace is not provisioned"),
        Err(e) => panic!("create: {e}"),
    };
    const WRITERS: usize = 4;
    const EACH: usize = 100;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..EACH {
                    let item = NewActivity {
                        workspace_id: ws,
                        activity_type: jobs::inbox::INBOX_TYPE.into(),
                        method: Some("message/send".into()),
                        request_body: Some(jobs::inbox::message_send(&format!("{w}-{n}"), "hi", serde_json::json!({}))),
                        status: "ok".into(),
                        ..Default::default()
                    };
                    ids.push(jobs::inbox::write(&pool, DeliveryMode::Poll, item).await.expect("append"));
                }
                ids
            })
        })
        .collect();
    // The reader moves its cursor to the last id it saw, as an agent does: an id that
    // committed after a higher one would be skipped for good.
    let mut seen = Vec::new();
    let mut cursor = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < WRITERS * EACH {
        assert!(std::time::Instant::now() < deadline, "only {} of {} items were read", seen.len(), WRITERS * EACH);
        let rows = activity_logs::list(&pool, ws, Some(jobs::inbox::INBOX_TYPE), Some(cursor), 500).await.unwrap();
        if let Some(last) = rows.last() {
            cursor = last.id;
        } else if writers.iter().all(|w| w.is_finished()) {
            break;
        } else {
            tokio::task::yield_now().await;
        }
        seen.extend(rows.iter().map(|r| r.id));
    }
    let mut written: Vec<i64> = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    written.sort_unstable();
    assert_eq!(seen, written, "the reader saw every item, once, in id order");
}
