//! Nothing leaks: what is left behind is found and reaped by the orphans sweep, and
//! finished rows do not pile up.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tests::{
    Stack, containers_of, docker, ec2_env, eventually, live_instances_of, require_docker_image, run_tagged_instance,
};

const LONG: Duration = Duration::from_secs(90);

#[tokio::test]
async fn instances_and_containers_made_behind_our_back_are_reaped() {
    let image = require_docker_image();
    let mut stack = Stack::builder().env("SWEEP_ORPHANS_SECONDS", "1").workers(0).start().await;
    let platform = stack.db.name.clone();
    let ghost = uuid::Uuid::new_v4().to_string();

    // A container with our labels whose workspace never existed.
    tests::run_labelled_container(&ghost, &platform, &image);
    // An instance with our tags, likewise.
    run_tagged_instance(&ghost, &platform).await;
    assert_eq!(containers_of(&ghost).len(), 1);
    assert_eq!(live_instances_of(&ghost).await.len(), 1);

    stack.add_worker_with(&ec2_env(false));
    eventually(LONG, "the orphans sweep to reap both", || async {
        (containers_of(&ghost).is_empty() && live_instances_of(&ghost).await.is_empty()).then_some(())
    })
    .await;
    let events = stack.get("/events?type=ORPHAN_REAPED").await;
    let backends: Vec<&str> =
        events.body.as_array().unwrap().iter().map(|e| e["payload"]["backend"].as_str().unwrap()).collect();
    assert!(backends.contains(&"docker") && backends.contains(&"ec2"), "{}", events.body);
}

#[tokio::test]
async fn a_stop_that_fails_is_retried_then_reported_and_reaped_once_the_backend_is_back() {
    let mut stack = Stack::builder()
        .env("DOCKER_ENABLED", "false")
        .env("SWEEP_ORPHANS_SECONDS", "1")
        .env("RETRY_DELAY_SCALE", "0.01")
        .workers(0)
        .start()
        .await;
    let good = stack.add_worker_with(&ec2_env(true));
    let id = stack.create(json!({"name": "stuck"})).await;
    stack.ops_settled(&id, LONG).await;
    let instance = live_instances_of(&id).await;
    assert_eq!(instance.len(), 1);
    stack.workers[good].signal("TERM");
    stack.workers[good].wait_exit(LONG).await;

    // The only worker left cannot reach the EC2 API.
    let mut unreachable = ec2_env(true);
    unreachable.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    unreachable.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9".into()));
    let bad = stack.add_worker_with(&unreachable);
    assert_eq!(stack.delete(&format!("/workspaces/{id}")).await.status, StatusCode::OK);
    let ops = stack.ops_settled(&id, LONG).await;
    let stop = &ops[0];
    assert_eq!((stop["kind"].as_str(), stop["status"].as_str()), (Some("stop"), Some("failed")), "{stop}");
    assert_eq!(stop["attempts"], stop["max_attempts"], "every attempt was used: {stop}");
    assert!(stop["last_error"].as_str().unwrap().contains("unreachable"), "{stop}");
    let log = stack.workers[bad].log_text();
    assert!(log.contains("LEAK-SUSPECT"), "the give-up is logged as a leak suspect");
    assert_eq!(log.matches("op attempt failed; retrying").count(), 7, "8 attempts, 7 delayed retries");
    let leaks = stack.get("/events?type=LEAK_SUSPECT").await;
    assert_eq!(leaks.body.as_array().unwrap().len(), 1, "{}", leaks.body);
    assert_eq!(leaks.body[0]["workspace_id"], id.as_str());
    assert_eq!(live_instances_of(&id).await.len(), 1, "the instance is still running: a real leak");

    // The backend is back: the orphans sweep reaps what the stop left.
    stack.workers[bad].signal("TERM");
    stack.workers[bad].wait_exit(LONG).await;
    stack.add_worker_with(&ec2_env(true));
    eventually(LONG, "the orphans sweep to terminate the leaked instance", || async {
        live_instances_of(&id).await.is_empty().then_some(())
    })
    .await;
    let ops = stack.ops_settled(&id, LONG).await;
    assert_eq!(
        (ops[0]["reason"].as_str(), ops[0]["status"].as_str()),
        (Some("orphan"), Some("succeeded")),
        "{:?}",
        ops[0]
    );
}

#[tokio::test]
async fn the_retention_sweep_deletes_expired_rows_in_batches_while_the_queue_keeps_working() {
    let stack = Stack::builder()
        .env("DOCKER_ENABLED", "false")
        .env("SWEEP_RETENTION_SECONDS", "3")
        .env("RETENTION_BATCH", "5000")
        .workers(0)
        .start()
        .await;
    // 100 000 finished tasks from two days ago, 1 000 from just now, and an old op and event.
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at)
         SELECT apalis.generate_ulid(), 'lifecycle', '\\x7b7d', 'Done', 1, 5, now() - interval '2 days', now() - interval '2 days'
           FROM generate_series(1, 100000)",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at)
         SELECT apalis.generate_ulid(), 'lifecycle', '\\x7b7d', 'Done', 1, 5, now(), now() FROM generate_series(1, 1000)",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO structure_events (event_type, created_at) VALUES ('OLD', now() - interval '90 days')")
        .execute(&stack.pool)
        .await
        .unwrap();

    let mut stack = stack;
    stack.add_worker(&[]);
    // The queue keeps serving while the sweep runs.
    let r = stack.post("/workspaces?wait=60", json!({"name": "busy-while-purging"})).await;
    assert_eq!(r.body["status"], "failed", "the op ran to its end: {}", r.body);

    let outcome: String = eventually(LONG, "a retention pass", || async {
        sqlx::query_scalar::<_, String>(
            "SELECT outcome FROM sweep_runs WHERE sweep = 'retention' AND outcome LIKE 'deleted%' ORDER BY claimed_at LIMIT 1",
        )
        .fetch_optional(&stack.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(outcome.starts_with("deleted 100000 task(s) in 21 batch(es)"), "{outcome}");
    let (old, recent): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE done_at < now() - interval '1 day'), count(*) FILTER (WHERE done_at > now() - interval '1 hour')
           FROM apalis.jobs WHERE job_type = 'lifecycle'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(old, 0);
    assert!(recent >= 1000, "recent tasks are kept");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM structure_events WHERE event_type = 'OLD'")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
}

#[tokio::test]
async fn the_token_of_a_workspace_whose_instance_is_gone_is_revoked() {
    require_docker_image();
    let stack = Stack::builder().env("SWEEP_ORPHANS_SECONDS", "1").env("STALE_TOKEN_AFTER_SECONDS", "1").start().await;
    let r = stack.post("/workspaces?wait=60", json!({"name": "vanishing"})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let token = stack.agent_token(&id).await;
    // The container disappears behind the platform's back; its token must not outlive it.
    docker(&["rm", "-f", &tests::container_name(&id)]);
    // Waiting with the admin token: using the workspace token would keep it fresh.
    eventually(LONG, "the stale token to be revoked", || async {
        let events = stack.get(&format!("/events?workspace_id={id}&type=TOKENS_REVOKED")).await;
        (events.body.as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    let r = stack.raw("GET", &format!("/workspaces/{id}"), Some(&token), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
}

#[tokio::test]
async fn a_stray_instance_of_a_live_workspace_is_reaped_and_its_recorded_instance_kept() {
    let mut stack =
        Stack::builder().env("DOCKER_ENABLED", "false").env("SWEEP_ORPHANS_SECONDS", "1").workers(0).start().await;
    stack.add_worker_with(&ec2_env(true));
    let id = stack.create(json!({"name": "with-a-stray"})).await;
    stack.ops_settled(&id, LONG).await;
    let recorded = stack.workspace(&id).await["instance_ref"].as_str().unwrap().to_string();

    // What a restart whose stop gave up leaves behind: another instance tagged with the workspace.
    let stray = run_tagged_instance(&id, &stack.db.name).await;

    let live = eventually(LONG, "the stray instance to be reaped", || async {
        let live = live_instances_of(&id).await;
        (!live.iter().any(|i| i.id == stray)).then_some(live)
    })
    .await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id, recorded, "the recorded instance is kept");
}
