//! Crashes, shutdowns, missing backends and agents that never come.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tests::{Stack, containers_of, eventually, require_docker_image};

const LONG: Duration = Duration::from_secs(90);

async fn op_of(stack: &Stack, id: &str) -> serde_json::Value {
    stack.ops(id).await.into_iter().last().expect("an op")
}

#[tokio::test]
async fn a_worker_killed_mid_provision_is_replaced_and_one_container_remains() {
    require_docker_image();
    // Production rescue settings (heartbeat 5 s × 3 missed). The failpoint holds the first
    // worker between starting the container and recording it; its agent cannot reach the
    // api, so the rescuing worker must replace that container, not add a second one.
    let mut stack = Stack::builder().workers(0).start().await;
    let victim = stack.add_worker(&[("FAILPOINT_AFTER_START_SECONDS", "300"), ("PLATFORM_URL", "http://127.0.0.1:9")]);
    let id = stack.create(json!({"name": "crashy"})).await;
    eventually(LONG, "the first worker to start the container", || async {
        (containers_of(&id).len() == 1 && op_of(&stack, &id).await["status"] == "running").then_some(())
    })
    .await;

    stack.add_worker(&[]);
    stack.workers[victim].signal("KILL");
    let killed = Instant::now();
    let op = eventually(Duration::from_secs(60), "another worker to finish the provision", || async {
        let op = op_of(&stack, &id).await;
        (op["status"] == "succeeded").then_some(op)
    })
    .await;
    let rescue = killed.elapsed();
    eprintln!("SIGKILL → provision finished by another worker: {rescue:?}");
    assert!(rescue < Duration::from_secs(35), "rescue took {rescue:?}");
    assert_eq!(op["attempts"], 2, "{op}");
    stack.wait_status(&id, "online", LONG).await;
    assert_eq!(containers_of(&id).len(), 1, "exactly one container after the rescue");
    let env = tests::docker(&["inspect", "-f", "{{json .Config.Env}}", &tests::container_name(&id)]);
    assert!(env.contains(&format!("PLATFORM_URL={}", stack.url)), "the surviving container is the rescuer's: {env}");
}

#[tokio::test]
async fn sigterm_lets_the_running_job_finish_before_the_worker_exits() {
    require_docker_image();
    let mut stack = Stack::builder().workers(0).start().await;
    let w = stack.add_worker(&[("FAILPOINT_AFTER_START_SECONDS", "3"), ("SHUTDOWN_GRACE_SECONDS", "60")]);
    let id = stack.create(json!({"name": "graceful"})).await;
    eventually(LONG, "the provision to be running", || async {
        (op_of(&stack, &id).await["status"] == "running").then_some(())
    })
    .await;
    stack.workers[w].signal("TERM");
    assert!(stack.workers[w].wait_exit(Duration::from_secs(60)).await, "worker exited with an error");
    let op = op_of(&stack, &id).await;
    assert_eq!(op["status"], "succeeded", "the running job finished before exit: {op}");
    assert_eq!(op["attempts"], 1, "{op}");
}

#[tokio::test]
async fn without_a_backend_provisioning_fails_with_the_reason_and_pause_and_delete_still_work() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").start().await;
    let r = stack.post("/workspaces?wait=60", json!({"name": "nowhere"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "failed", "{}", r.body);
    let reason = r.body["last_sample_error"].as_str().unwrap();
    assert!(reason.contains("no provisioning backend") && reason.contains("EC2_ENABLED"), "{reason}");
    let id = r.body["id"].as_str().unwrap().to_string();

    let events = stack.get(&format!("/events?workspace_id={id}")).await;
    let failed = events.body.as_array().unwrap().iter().find(|e| e["event"] == "WORKSPACE_PROVISION_FAILED").cloned();
    assert_eq!(failed.expect("a WORKSPACE_PROVISION_FAILED event")["payload"]["error"], reason);

    // The worker says it has no backend, so restarts are refused up front.
    eventually(LONG, "the worker to announce itself", || async {
        let r = stack.post(&format!("/workspaces/{id}/restart"), json!({})).await;
        (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;

    let r = stack.post(&format!("/workspaces/{id}/pause"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = stack.delete(&format!("/workspaces/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ops = stack.ops_settled(&id, LONG).await;
    let stops: Vec<_> = ops.iter().filter(|o| o["kind"] == "stop").collect();
    assert_eq!(stops.len(), 2);
    assert!(stops.iter().all(|o| o["status"] == "succeeded"), "stop is a no-op without a backend: {stops:?}");
    assert_eq!(stack.status_of(&id).await, "removed");
}

#[tokio::test]
async fn a_workspace_whose_agent_never_registers_fails_with_the_timeout_reason() {
    require_docker_image();
    // The agent is pointed at a port nothing listens on, so it can never register.
    let stack = Stack::builder()
        .env("PROVISION_TIMEOUT_SECONDS", "3")
        .env("SWEEP_PROVISION_TIMEOUT_SECONDS", "1")
        .worker_env("PLATFORM_URL", "http://127.0.0.1:9")
        .start()
        .await;
    let id = stack.create(json!({"name": "silent"})).await;
    let ws = stack.wait_status(&id, "failed", LONG).await;
    let reason = ws["last_sample_error"].as_str().unwrap();
    assert!(reason.contains("timed out after 3s") && reason.contains("/registry/register"), "{reason}");
    let events = stack.get(&format!("/events?workspace_id={id}")).await;
    let e = events.body.as_array().unwrap().iter().find(|e| e["event"] == "WORKSPACE_PROVISION_FAILED").cloned();
    assert_eq!(e.expect("failure event")["payload"]["source"], "provision_timeout_sweep");
}

#[tokio::test]
async fn a_workspace_whose_heartbeats_stop_goes_offline_and_is_restarted() {
    require_docker_image();
    let stack =
        Stack::builder().env("HEARTBEAT_STALE_AFTER_SECONDS", "3").env("SWEEP_LIVENESS_SECONDS", "1").start().await;
    let r = stack.post("/workspaces?wait=60", json!({"name": "sleepy"})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    // Freeze the agent: its heartbeats stop.
    tests::docker(&["pause", &tests::container_name(&id)]);
    eventually(LONG, "a liveness restart to bring the workspace back", || async {
        let ops = stack.ops(&id).await;
        let restarted =
            ops.iter().any(|o| o["kind"] == "restart" && o["reason"] == "liveness" && o["status"] == "succeeded");
        (restarted && stack.status_of(&id).await == "online").then_some(())
    })
    .await;
    let events = stack.get(&format!("/events?workspace_id={id}")).await;
    assert!(events.body.as_array().unwrap().iter().any(|e| e["event"] == "WORKSPACE_OFFLINE"));
    assert_eq!(containers_of(&id).len(), 1);
}

#[tokio::test]
async fn each_sweep_runs_once_per_period_across_workers() {
    let stack = Stack::builder()
        .env("DOCKER_ENABLED", "false")
        .env("SWEEP_LIVENESS_SECONDS", "1")
        .env("SWEEP_PROVISION_TIMEOUT_SECONDS", "1")
        .workers(3)
        .start()
        .await;
    let finished: i64 = eventually(LONG, "several sweep periods to run", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sweep_runs WHERE sweep = 'liveness' AND finished_at IS NOT NULL")
                .fetch_one(&stack.pool)
                .await
                .unwrap();
        (n >= 5).then_some(n)
    })
    .await;
    // Three workers tick every period, yet each period was enqueued and run exactly once.
    let (runs, tasks): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sweep_runs), (SELECT count(*) FROM apalis.jobs WHERE job_type = 'sweeps')",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(runs, tasks, "one task per claimed period");
    let dup: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job FROM apalis.jobs WHERE job_type = 'sweeps' GROUP BY job HAVING count(*) > 1) d",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(dup, 0, "no period was enqueued twice");
    assert!(finished >= 5);
}

#[tokio::test]
async fn a_slow_handler_keeps_renewing_its_lease_and_keeps_its_op() {
    require_docker_image();
    // The handler sits 6 s between start and record, three times its 2 s lease.
    let mut stack = Stack::builder().workers(0).start().await;
    stack.add_worker(&[("FAILPOINT_AFTER_START_SECONDS", "6"), ("OP_LEASE_SECONDS", "2")]);
    let id = stack.create(json!({"name": "slow"})).await;
    let lease_until = |stack: &Stack| {
        let pool = stack.pool.clone();
        let id = id.clone();
        async move {
            sqlx::query_as::<_, (String, Option<chrono::DateTime<chrono::Utc>>, i64)>(
                "SELECT status, lease_until, lease FROM workspace_ops WHERE workspace_id = $1::uuid",
            )
            .bind(&id)
            .fetch_one(&pool)
            .await
            .expect("op row")
        }
    };
    let (_, first, _) = eventually(LONG, "the provision to be claimed", || async {
        let row = lease_until(&stack).await;
        (row.0 == "running").then_some(row)
    })
    .await;
    let first = first.expect("a claim has a deadline");
    // Another worker is there to take the op over, should the lease lapse.
    stack.add_worker(&[("OP_LEASE_SECONDS", "2")]);
    eventually(LONG, "the lease to be renewed past its first deadline", || async {
        let (status, until, lease) = lease_until(&stack).await;
        (status == "running" && lease == 1 && until.is_some_and(|u| u > first + chrono::Duration::seconds(2)))
            .then_some(())
    })
    .await;
    let op = eventually(LONG, "the provision to finish", || async {
        let op = op_of(&stack, &id).await;
        (op["status"] == "succeeded").then_some(op)
    })
    .await;
    assert_eq!(op["attempts"], 1, "nobody took the op over from its live owner: {op}");
}
