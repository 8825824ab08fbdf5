//! Workers on several hosts, each with its own Docker engine. There is one real engine
//! here: worker groups with different `DOCKER_ENGINE_ID`s stand in for the hosts, and the
//! engine label on each container says which "host" made it.

use std::collections::HashMap;
use std::time::Duration;

use jobs::backend::LABEL_DOCKER_ENGINE;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{ADMIN, Stack, container_name, containers_of, docker, eventually, label, our_labels, require_docker_image};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(90);

fn on(engine: &str) -> [(&'static str, &str); 1] {
    [("DOCKER_ENGINE_ID", engine)]
}

/// The `worker_processes.id` of each worker, once it advertises its engine.
async fn worker_ids(stack: &Stack, workers: &[usize]) -> Vec<String> {
    let mut ids = vec![];
    for &i in workers {
        let pid = stack.workers[i].pid() as i32;
        let id = eventually(LONG, "the worker to advertise its engine", || async {
            sqlx::query_scalar::<_, String>(
                "SELECT id FROM worker_processes WHERE pid = $1 AND cardinality(docker_engines) > 0",
            )
            .bind(pid)
            .fetch_optional(&stack.pool)
            .await
            .unwrap()
        })
        .await;
        ids.push(id);
    }
    ids
}

/// The engine label of the workspace's container.
fn engine_label(id: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        &format!("{{{{ index .Config.Labels \"{LABEL_DOCKER_ENGINE}\" }}}}"),
        &container_name(id),
    ])
}

/// Creates a workspace and waits for it to come online; returns its id and engine.
async fn online(stack: &Stack, name: &str) -> (String, String) {
    let r = stack.post("/workspaces?wait=60", json!({"name": name})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let engine = r.body["docker_engine"].as_str().unwrap_or_else(|| panic!("no engine recorded: {}", r.body));
    (id, engine.to_string())
}

/// The newest op of the workspace of `kind`, once final.
async fn last_op(stack: &Stack, id: &str, kind: &str) -> Value {
    let ops = stack.ops_settled(id, LONG).await;
    ops.into_iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind} op of {id}"))
}

/// Starts a container behind the platform's back, labelled as made on `engine`.
fn run_labelled_container_on(workspace_id: &str, platform: &str, image: &str, engine: &str) -> String {
    let name = format!("ghost-{}", Uuid::new_v4().simple());
    let [ws, managed, platform] = our_labels(workspace_id, platform);
    let engine = label(LABEL_DOCKER_ENGINE, engine);
    let mut args = vec!["run", "-d", "--name", &name, "--network", "host"];
    for l in [&ws, &managed, &platform, &engine] {
        args.extend(["--label", l.as_str()]);
    }
    args.extend(["-e", "PLATFORM_URL=http://127.0.0.1:9", image]);
    docker(&args);
    name
}

fn exists(container: &str) -> bool {
    let out = std::process::Command::new("docker").args(["inspect", container]).output().expect("docker inspect");
    out.status.success()
}

#[tokio::test]
async fn new_workspaces_spread_across_engines_and_only_their_engines_workers_restart_and_stop_them() {
    require_docker_image();
    let mut stack = Stack::builder().workers(0).start().await;
    let a = [stack.add_worker(&on("engine-a")), stack.add_worker(&on("engine-a"))];
    let b = [stack.add_worker(&on("engine-b")), stack.add_worker(&on("engine-b"))];
    let groups: HashMap<&str, Vec<String>> =
        HashMap::from([("engine-a", worker_ids(&stack, &a).await), ("engine-b", worker_ids(&stack, &b).await)]);

    let mut placed: Vec<(String, String)> = vec![];
    for i in 0..4 {
        placed.push(online(&stack, &format!("spread-{i}")).await);
    }
    for engine in ["engine-a", "engine-b"] {
        assert!(placed.iter().any(|(_, e)| e == engine), "no workspace went to {engine}: {placed:?}");
    }
    for (id, engine) in &placed {
        assert_eq!(&engine_label(id), engine, "the container is labelled with its engine");
        let provision = last_op(&stack, id, "provision").await;
        assert!(
            groups[engine.as_str()].contains(&provision["claimed_by"].as_str().unwrap().to_string()),
            "{provision}"
        );
        let result = provision["result"].as_str().unwrap();
        assert!(result.ends_with(&format!("on engine {engine}")), "the op records the chosen engine: {result}");
    }

    for (id, engine) in &placed {
        let ids = &groups[engine.as_str()];
        let r = stack.post(&format!("/workspaces/{id}/restart?wait=60"), json!({})).await;
        assert_eq!(r.body["status"], "online", "{}", r.body);
        assert_eq!(r.body["docker_engine"], engine.as_str(), "a restart stays on the engine: {}", r.body);
        let restart = last_op(&stack, id, "restart").await;
        assert!(ids.contains(&restart["claimed_by"].as_str().unwrap().to_string()), "{engine}: {restart}");
        assert_eq!(restart["attempts"], 1, "leaving an op to another worker uses no attempt: {restart}");

        assert_eq!(stack.delete(&format!("/workspaces/{id}")).await.status, StatusCode::OK);
        let stop = last_op(&stack, id, "stop").await;
        assert_eq!(stop["status"], "succeeded", "{stop}");
        assert!(ids.contains(&stop["claimed_by"].as_str().unwrap().to_string()), "{engine}: {stop}");
        assert!(containers_of(id).is_empty(), "the stop removed the container on {engine}");
    }
}

#[tokio::test]
async fn a_stop_waits_visibly_while_no_worker_serves_its_engine_and_runs_when_one_returns() {
    require_docker_image();
    let mut stack = Stack::builder().workers(0).start().await;
    let a = stack.add_worker(&on("engine-a"));
    worker_ids(&stack, &[a]).await;
    let (id, engine) = online(&stack, "on-a").await;
    assert_eq!(engine, "engine-a");
    let b = stack.add_worker(&on("engine-b"));
    worker_ids(&stack, &[b]).await;

    stack.workers[a].signal("KILL");
    stack.workers[a].wait_exit(LONG).await;
    assert_eq!(stack.delete(&format!("/workspaces/{id}")).await.status, StatusCode::OK);
    // Once the killed worker's heartbeat is stale, nobody serves engine-a.
    let waiting = eventually(LONG, "the stop to show what it waits for", || async {
        let ops = stack.ops(&id).await;
        let stop = ops.into_iter().find(|o| o["kind"] == "stop")?;
        stop["last_error"].as_str().is_some_and(|e| e.contains("waiting for engine engine-a")).then_some(stop)
    })
    .await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["attempts"], 0, "waiting uses no attempt: {waiting}");
    assert_eq!(containers_of(&id).len(), 1, "engine-b's worker left engine-a's container alone");
    assert_eq!(stack.status_of(&id).await, "removed");

    let back = stack.add_worker(&on("engine-a"));
    let back_id = worker_ids(&stack, &[back]).await.remove(0);
    let stop = last_op(&stack, &id, "stop").await;
    assert_eq!(stop["status"], "succeeded", "{stop}");
    assert_eq!(stop["claimed_by"], back_id.as_str(), "{stop}");
    assert!(containers_of(&id).is_empty(), "the returning engine-a worker removed the container");
}

#[tokio::test]
async fn retiring_an_engine_settles_what_waited_for_it() {
    require_docker_image();
    let mut stack = Stack::builder().workers(0).start().await;
    let a = stack.add_worker(&on("engine-a"));
    worker_ids(&stack, &[a]).await;
    let (removed, _) = online(&stack, "removed-on-a").await;
    let (live, _) = online(&stack, "live-on-a").await;
    let b = stack.add_worker(&on("engine-b"));
    worker_ids(&stack, &[b]).await;
    // engine-a's host goes away for good (its worker leaves the fleet at once).
    stack.workers[a].signal("TERM");
    stack.workers[a].wait_exit(LONG).await;

    assert_eq!(stack.delete(&format!("/workspaces/{removed}")).await.status, StatusCode::OK);
    assert_eq!(stack.post(&format!("/workspaces/{live}/restart"), json!({})).await.status, StatusCode::OK);
    for id in [&removed, &live] {
        eventually(LONG, "the op to wait for engine-a", || async {
            let ops = stack.ops(id).await;
            ops[0]["last_error"].as_str().is_some_and(|e| e.contains("waiting for engine engine-a")).then_some(())
        })
        .await;
    }
    let r = stack.delete(&format!("/workspaces/{removed}?purge=true")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "a waiting stop blocks the purge: {}", r.body);

    let r = stack.raw("POST", "/admin/engines/engine-a/retire", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = stack.raw("POST", "/admin/engines/%20/retire", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("engine_id must not be empty"), "{}", r.body);
    let r = stack.post("/admin/engines/engine-a/retire", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (&r.body["stops_resolved"], &r.body["starts_canceled"], &r.body["workspaces_failed"]),
        (&json!(1), &json!(1), &json!(1)),
        "{}",
        r.body
    );

    let stop = last_op(&stack, &removed, "stop").await;
    assert_eq!(stop["status"], "succeeded", "{stop}");
    assert_eq!(stop["result"], "engine retired; nothing left to stop");
    let restart = last_op(&stack, &live, "restart").await;
    assert_eq!(restart["status"], "canceled", "{restart}");
    let ws = stack.workspace(&live).await;
    assert_eq!(ws["status"], "failed", "{ws}");
    assert_eq!(ws["last_sample_error"], "docker engine engine-a was retired", "{ws}");
    assert!(ws["docker_engine"].is_null(), "the workspace forgot the engine: {ws}");

    // Retiring again changes nothing; the removed workspace can now be purged.
    let again = stack.post("/admin/engines/engine-a/retire", json!({})).await;
    assert_eq!((again.status, &again.body["stops_resolved"]), (StatusCode::OK, &json!(0)), "{}", again.body);
    assert_eq!(again.body["retired_at"], r.body["retired_at"]);
    let r = stack.delete(&format!("/workspaces/{removed}?purge=true")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let events = stack.get("/events?type=DOCKER_ENGINE_RETIRED").await;
    assert_eq!(events.body.as_array().unwrap().len(), 2, "{}", events.body);

    // A restart of the failed workspace starts it afresh on an engine that is still there.
    let r = stack.post(&format!("/workspaces/{live}/restart?wait=60"), json!({})).await;
    assert_eq!((r.body["status"].as_str(), r.body["docker_engine"].as_str()), (Some("online"), Some("engine-b")));
}

#[tokio::test]
async fn each_engines_orphans_sweep_reaps_its_own_containers_only() {
    let image = require_docker_image();
    let mut stack = Stack::builder().env("SWEEP_ORPHANS_SECONDS", "1").workers(0).start().await;
    let a = stack.add_worker(&on("engine-a"));
    worker_ids(&stack, &[a]).await;
    let (on_a, _) = online(&stack, "kept-on-a").await;
    stack.workers[a].signal("TERM");
    stack.workers[a].wait_exit(LONG).await;

    let platform = stack.db.name.clone();
    let ghost_a = run_labelled_container_on(&Uuid::new_v4().to_string(), &platform, &image, "engine-a");
    let ghost_b = run_labelled_container_on(&Uuid::new_v4().to_string(), &platform, &image, "engine-b");
    stack.add_worker(&on("engine-b"));

    eventually(LONG, "engine-b's sweep to reap its orphan", || async { (!exists(&ghost_b)).then_some(()) }).await;
    // Two more full runs of engine-b's sweep after the reap, and engine-a's containers are untouched.
    let since = chrono::Utc::now();
    eventually(LONG, "two more runs of engine-b's sweep", || async {
        let runs: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sweep_runs WHERE sweep = 'orphans:docker:engine-b' AND finished_at > $1
                AND outcome LIKE '%reaped%'",
        )
        .bind(since)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        (runs >= 2).then_some(())
    })
    .await;
    assert!(exists(&ghost_a), "engine-b's sweep left engine-a's orphan to engine-a");
    assert!(exists(&container_name(&on_a)), "engine-b's sweep left engine-a's workspace alone");
    let reaped = stack.get("/events?type=ORPHAN_REAPED").await;
    assert_eq!(reaped.body.as_array().unwrap().len(), 1, "{}", reaped.body);
    let engine_a_runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sweep_runs WHERE sweep = 'orphans:docker:engine-a' AND started_at > $1",
    )
    .bind(since)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(engine_a_runs, 0, "nobody serves engine-a, so nobody sweeps it");
    docker(&["rm", "-f", &ghost_a]);
}

#[tokio::test]
async fn a_task_of_an_unknown_payload_version_is_left_queued_and_run_by_a_worker_that_knows_it() {
    require_docker_image();
    let mut stack = Stack::builder().workers(0).start().await;
    let r = stack.post("/workspaces", json!({"name": "from-the-future"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let op_id: Uuid = stack.ops(&id).await[0]["id"].as_str().unwrap().parse().unwrap();

    // A newer build enqueued this op's task in a payload version this build does not know.
    let mut tx = jobs::db::begin(&stack.pool).await.unwrap();
    let old: String = sqlx::query_scalar("SELECT task_id FROM workspace_ops WHERE id = $1")
        .bind(op_id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Killed', done_at = now() WHERE id = $1")
        .bind(&old)
        .execute(&mut *tx)
        .await
        .unwrap();
    let body = serde_json::to_vec(&json!({"v": 99, "op_id": op_id})).unwrap();
    let task = jobs::store::apalis::insert_task(&mut tx, jobs::queue::LIFECYCLE_QUEUE, &body, None).await.unwrap();
    sqlx::query("UPDATE workspace_ops SET task_id = $2 WHERE id = $1")
        .bind(op_id)
        .bind(&task)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let older = stack.add_worker(&[]);
    eventually(LONG, "the older worker to report the task twice", || async {
        let events = stack.get("/events?type=TASK_VERSION_UNKNOWN").await;
        (events.body.as_array().unwrap().len() >= 2).then_some(())
    })
    .await;
    let events = stack.get("/events?type=TASK_VERSION_UNKNOWN").await;
    let first = events.body.as_array().unwrap().iter().find(|e| e["payload"]["task_id"] == task.as_str());
    let first = first.unwrap_or_else(|| panic!("the inserted task was reported: {}", events.body));
    assert_eq!((first["payload"]["version"].as_u64(), first["payload"]["known_up_to"].as_u64()), (Some(99), Some(1)));
    let op = &stack.ops(&id).await[0];
    assert_eq!((op["status"].as_str(), op["attempts"].as_u64()), (Some("queued"), Some(0)), "{op}");
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs j JOIN workspace_ops o ON o.task_id = j.id
          WHERE o.id = $1 AND j.done_at IS NULL AND convert_from(j.job, 'UTF8')::jsonb ->> 'v' = '99'",
    )
    .bind(op_id)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(pending, 1, "the op is still delivered by a copy of the task");
    assert!(stack.workers[older].log_text().contains("task payload version unknown to this worker"));

    let newer = stack.add_worker(&[("TASK_PAYLOAD_VERSION_MAX", "99")]);
    let newer_id = worker_ids(&stack, &[newer]).await.remove(0);
    let provision = last_op(&stack, &id, "provision").await;
    assert_eq!(provision["status"], "succeeded", "{provision}");
    assert_eq!(provision["claimed_by"], newer_id.as_str(), "{provision}");
    stack.wait_status(&id, "online", LONG).await;
}

/// The claim itself, at the database level: a worker of another engine leaves the op to a
/// live worker of the workspace's engine, or, with none alive, leaves it waiting with the
/// reason; neither uses an attempt, and only a worker of the engine claims it.
#[tokio::test]
async fn the_claim_gives_a_workspaces_op_only_to_a_worker_of_its_engine() {
    use jobs::ops::{self, ClaimResult, Claimant};

    let (_db, pool) = tests::TestDb::migrated(5).await;
    let request = jobs::domain::CreateRequest {
        name: "on-a".into(),
        role: None,
        runtime: "langgraph".into(),
        tier: 1,
        model: "m".into(),
        parent_id: None,
        external: false,
        url: None,
        delivery_mode: jobs::domain::DeliveryMode::Push,
        max_concurrent_tasks: 1,
        canvas: None,
    };
    let (ws, op) = match jobs::lifecycle::create(&pool, request, "test").await.expect("create") {
        jobs::lifecycle::Created::Provisioning { workspace, op } => (workspace.id, *op),
        jobs::lifecycle::Created::External { .. } => panic!("not external"),
    };
    sqlx::query("UPDATE workspaces SET backend = 'docker', docker_engine = 'engine-a' WHERE id = $1")
        .bind(ws)
        .execute(&pool)
        .await
        .unwrap();
    let claimant = |worker: &'static str, engine: &str| Claimant {
        worker,
        lease: Duration::from_secs(30),
        starts: true,
        reaches: vec![jobs::backend::BackendKind::Docker],
        engines: vec![engine.to_owned()],
        new_on_engine: Some(engine.to_owned()),
    };
    let task_of = || async { ops::get(&pool, op.id).await.unwrap().task_id.expect("a task") };
    let heartbeat = |id: &'static str, engine: &'static str| {
        let pool = pool.clone();
        async move {
            jobs::store::worker_processes::heartbeat(&pool, id, "host", 1, &["docker"], &[engine.to_owned()])
                .await
                .unwrap()
        }
    };
    heartbeat("worker-a", "engine-a").await;
    heartbeat("worker-b", "engine-b").await;

    let task = task_of().await;
    match ops::claim(&pool, op.id, &task, &claimant("worker-b", "engine-b")).await.unwrap() {
        ClaimResult::Skip(why) => assert!(why.contains("left to another worker"), "{why}"),
        ClaimResult::Claimed(c) => panic!("worker-b claimed engine-a's op: {c:?}"),
    }
    let after = ops::get(&pool, op.id).await.unwrap();
    assert_eq!((after.attempts, after.last_error.as_deref()), (0, None), "{after:?}");
    assert_ne!(after.task_id.as_deref(), Some(task.as_str()), "redelivered by a new task");

    // engine-a's only worker leaves the fleet.
    jobs::store::worker_processes::remove(&pool, "worker-a").await.unwrap();
    let task = task_of().await;
    match ops::claim(&pool, op.id, &task, &claimant("worker-b", "engine-b")).await.unwrap() {
        ClaimResult::Skip(why) => assert!(why.contains("waiting for engine engine-a"), "{why}"),
        ClaimResult::Claimed(c) => panic!("worker-b claimed engine-a's op: {c:?}"),
    }
    let waiting = ops::get(&pool, op.id).await.unwrap();
    assert_eq!(waiting.status, jobs::domain::OpStatus::Queued);
    assert_eq!(waiting.attempts, 0);
    assert_eq!(waiting.last_error.as_deref(), Some("waiting for engine engine-a: no live worker serves it"));

    heartbeat("worker-a2", "engine-a").await;
    let task = task_of().await;
    match ops::claim(&pool, op.id, &task, &claimant("worker-a2", "engine-a")).await.unwrap() {
        ClaimResult::Claimed(c) => assert_eq!((c.op.claimed_by.as_deref(), c.op.attempts), (Some("worker-a2"), 1)),
        ClaimResult::Skip(why) => panic!("engine-a's worker did not claim: {why}"),
    }
}
