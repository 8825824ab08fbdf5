//! What a worker knows about the world it runs in: which Docker engine answers now, which
//! platform it belongs to, and that its sweeps decide on locked rows.

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use jobs::backend::Backends;
use jobs::backend::docker::{DockerBackend, DockerSettings};
use jobs::domain::{OpKind, Status};
use jobs::sweeps::orphans;
use reqwest::StatusCode;
use serde_json::json;
use tests::{Stack, bootstrap_secret_of, containers_of, docker, ec2_env, eventually, require_docker_image};

const LONG: Duration = Duration::from_secs(90);

/// The engine's socket, as the Docker CLI and bollard find it.
fn docker_socket() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_string(),
        _ => "/var/run/docker.sock".to_string(),
    }
}

/// How many runs of the sweeps named like `sweeps` (LIKE patterns) finished after `since`
/// with an outcome like `outcome`.
async fn sweeps_finished(
    pool: &sqlx::PgPool,
    sweeps: &[&str],
    since: chrono::DateTime<chrono::Utc>,
    outcome: &str,
) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM sweep_runs WHERE sweep LIKE ANY($1) AND finished_at > $2 AND outcome LIKE $3",
    )
    .bind(sweeps)
    .bind(since)
    .bind(outcome)
    .fetch_one(pool)
    .await
    .expect("sweep_runs")
}

async fn advertised(stack: &Stack, pid: u32) -> Option<Vec<String>> {
    sqlx::query_scalar("SELECT backends FROM worker_processes WHERE pid = $1")
        .bind(pid as i32)
        .fetch_optional(&stack.pool)
        .await
        .expect("worker_processes")
}

#[tokio::test]
async fn a_worker_started_while_docker_is_down_takes_it_up_when_it_answers_and_drops_it_when_it_goes() {
    require_docker_image();
    let mut stack = Stack::builder().workers(0).start().await;
    // The worker's engine is a path that does not exist yet: dockerd is "down".
    let dir = std::env::temp_dir().join(format!("ws-test-docker-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("docker.sock");
    let host = format!("unix://{}", sock.display());
    let w = stack.add_worker(&[("DOCKER_HOST", host.as_str()), ("DOCKER_PROBE_SECONDS", "1")]);
    let pid = stack.workers[w].pid();
    eventually(LONG, "the worker to announce itself with no backend", || async {
        (advertised(&stack, pid).await == Some(vec![])).then_some(())
    })
    .await;
    assert!(stack.workers[w].log_text().contains("probing again until one does"), "the worker says it will retry");

    // dockerd comes up.
    symlink(docker_socket(), &sock).unwrap();
    eventually(LONG, "the worker to advertise docker", || async {
        (advertised(&stack, pid).await == Some(vec!["docker".to_string()])).then_some(())
    })
    .await;
    let r = stack.post("/workspaces?wait=60", json!({"name": "once-it-answers"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "online", "{}", r.body);

    // dockerd goes away: the worker stops advertising it.
    std::fs::remove_file(&sock).unwrap();
    eventually(LONG, "the worker to stop advertising docker", || async {
        (advertised(&stack, pid).await == Some(vec![])).then_some(())
    })
    .await;
    assert!(stack.workers[w].log_text().contains("stopped answering"), "the worker says why");

    // Work needing Docker is left to a worker that has it, without using up attempts.
    let other = stack.add_worker(&[]);
    let other_pid = stack.workers[other].pid();
    eventually(LONG, "the other worker to advertise docker", || async {
        (advertised(&stack, other_pid).await == Some(vec!["docker".to_string()])).then_some(())
    })
    .await;
    // While the other worker is frozen, only this one fetches: it must leave the op alone.
    stack.workers[other].signal("STOP");
    let id = stack.create(json!({"name": "elsewhere"})).await;
    eventually(LONG, "the docker-less worker to leave the op to the other", || async {
        stack.workers[w].log_text().contains("left to it").then_some(())
    })
    .await;
    let op = stack.ops(&id).await.into_iter().last().expect("an op");
    assert_eq!((op["status"].as_str(), op["attempts"].as_i64()), (Some("queued"), Some(0)), "{op}");
    stack.workers[other].signal("CONT");
    stack.wait_status(&id, "online", LONG).await;
    let op = stack.ops(&id).await.into_iter().last().expect("an op");
    assert_eq!(op["attempts"], 1, "no attempt was used up by the worker without docker: {op}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_platform_id_each_database_is_its_own_platform_and_reaps_only_its_own() {
    require_docker_image();
    let no_id = |b: tests::StackBuilder| b.env("PLATFORM_ID", "").env("SWEEP_ORPHANS_SECONDS", "1");
    let a = no_id(Stack::builder()).start().await;
    let r = a.post("/workspaces?wait=60", json!({"name": "mine"})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let platform_a: String = sqlx::query_scalar("SELECT id FROM platform").fetch_one(&a.pool).await.unwrap();
    let label =
        docker(&["inspect", "-f", "{{index .Config.Labels \"molecule.platform.id\"}}", &tests::container_name(&id)]);
    assert_eq!(label, platform_a, "the container carries the id created with A's database");
    assert_ne!(platform_a, "default");

    // Another deployment on the same engine, also without PLATFORM_ID, sweeps for orphans.
    let b = no_id(Stack::builder()).start().await;
    let platform_b: String = sqlx::query_scalar("SELECT id FROM platform").fetch_one(&b.pool).await.unwrap();
    assert_ne!(platform_a, platform_b);
    let since = chrono::Utc::now();
    eventually(LONG, "two orphan sweeps of B to finish", || async {
        (sweeps_finished(&b.pool, &["orphans:docker:%"], since, "0 reaped%").await >= 2).then_some(())
    })
    .await;
    assert_eq!(containers_of(&id), vec![tests::container_name(&id)], "B left A's container alone");
    assert_eq!(a.status_of(&id).await, "online");
}

#[tokio::test]
async fn a_new_worker_reaps_no_orphan_before_its_grace_is_over() {
    let image = require_docker_image();
    let mut stack = Stack::builder().env("SWEEP_ORPHANS_SECONDS", "1").workers(0).start().await;
    let ghost = uuid::Uuid::new_v4().to_string();
    tests::run_labelled_container(&ghost, &stack.db.name, &image);
    let started = Instant::now();
    let w = stack.add_worker(&[("ORPHANS_START_GRACE_SECONDS", "4")]);
    eventually(LONG, "the ghost container to be reaped", || async { containers_of(&ghost).is_empty().then_some(()) })
        .await;
    assert!(started.elapsed() >= Duration::from_secs(4), "reaped after {:?}, inside the grace", started.elapsed());
    let skipped = sweeps_finished(
        &stack.pool,
        &["orphans:docker:%"],
        chrono::DateTime::UNIX_EPOCH,
        "skipped: this worker started%",
    )
    .await;
    assert!(skipped >= 1, "periods inside the grace say why they reaped nothing");
    assert!(stack.workers[w].log_text().contains("waits for the grace period"));
}

#[tokio::test]
async fn the_orphans_sweep_decides_on_the_locked_row_so_a_resume_in_between_is_not_undone() {
    let image = require_docker_image();
    let stack = Stack::builder().workers(0).start().await;
    let id = stack.create(json!({"name": "resumed-meanwhile"})).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    // A paused workspace whose container is still up, with nothing in flight: an orphan.
    sqlx::query(
        "UPDATE workspace_ops SET status = 'canceled', finished_at = now(), task_id = NULL WHERE workspace_id = $1::uuid",
    )
    .bind(&id)
    .execute(&stack.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE workspaces SET status = 'paused', backend = 'docker', instance_ref = $2 WHERE id = $1::uuid")
        .bind(&id)
        .bind(tests::container_name(&id))
        .execute(&stack.pool)
        .await
        .unwrap();
    let ghost = tests::run_labelled_container(&id, &stack.db.name, &image);

    // A resume holds the row while the sweep looks.
    let mut tx = jobs::db::begin(&stack.pool).await.unwrap();
    let ws = jobs::store::workspaces::lock(&mut tx, uuid).await.unwrap().unwrap();
    let backends = Backends::default();
    let settings = DockerSettings {
        images: Default::default(),
        default_image: Some(image.clone()),
        network: Some("host".into()),
        tiers: [(256 << 20, 512); 4],
        call_timeout: Duration::from_secs(30),
        platform_id: stack.db.name.clone(),
        engine_id: None,
    };
    backends.set_docker(Some(std::sync::Arc::new(DockerBackend::connect(settings).await.expect("docker"))));
    let sweep_settings = orphans::Settings {
        every: Duration::from_secs(60),
        stale_token_after: Duration::from_secs(300),
        start_grace: Duration::ZERO,
    };
    let sweep = tokio::spawn({
        let pool = stack.pool.clone();
        async move { orphans::run(&pool, &backends, &sweep_settings).await }
    });
    eventually(LONG, "the sweep to wait for the workspace's lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        (waiting >= 1).then_some(())
    })
    .await;
    let ws = jobs::transition::set_status(&mut tx, &ws, Status::Provisioning, None, json!({"source": "test"}))
        .await
        .unwrap();
    jobs::ops::request(&mut tx, &ws, OpKind::Provision, "resume", "test").await.unwrap();
    tx.commit().await.unwrap();

    let outcome = sweep.await.unwrap().expect("the sweep ran");
    assert!(outcome.starts_with("0 reaped, 0 stop op(s) queued"), "{outcome}");
    assert_eq!(containers_of(&id), vec![ghost], "the resumed workspace's container was not reaped");
    let stops: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workspace_ops WHERE workspace_id = $1::uuid AND kind = 'stop'")
            .bind(&id)
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(stops, 0);
}

#[tokio::test]
async fn a_worker_whose_clock_is_hours_off_judges_silence_and_timeouts_by_the_database() {
    let lib = std::env::var("FAKETIME_LIB").expect("FAKETIME_LIB (dev/test installs libfaketime)");
    let mut stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    // Three hours ahead on the wall clock; timers (the monotonic clock) stay true. No agent
    // runs in the emulator's instances, so the workspace stays `provisioning` for as long as
    // the timeout allows: an hour by the database's clock, long past by the worker's.
    let mut env: Vec<(&str, String)> = ec2_env(true);
    env.extend([
        ("LD_PRELOAD", lib.clone()),
        ("FAKETIME", "+3h".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ("FAKETIME_DONT_RESET", "1".into()),
        ("SWEEP_LIVENESS_SECONDS", "1".into()),
        ("SWEEP_PROVISION_TIMEOUT_SECONDS", "1".into()),
        ("HEARTBEAT_STALE_AFTER_SECONDS", "60".into()),
        ("PROVISION_TIMEOUT_SECONDS", "3600".into()),
    ]);
    let w = stack.add_worker_with(&env);
    let waiting = stack.create(json!({"name": "still-booting"})).await;
    let online = stack.create(json!({"name": "registered"})).await;
    stack.ops_settled(&online, LONG).await;
    let instance = stack.workspace(&online).await["instance_ref"].as_str().unwrap().to_string();
    let secret = bootstrap_secret_of(&instance).await;
    let body = json!({"id": online, "url": "http://127.0.0.1:8000"}).to_string();
    let r = stack.raw("POST", "/registry/register", Some(&secret), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The skew is real: the worker's own log lines are stamped hours ahead.
    let log = stack.workers[w].log_text();
    let stamp = log.lines().find_map(|l| l.split_whitespace().next()?.parse::<chrono::DateTime<chrono::Utc>>().ok());
    let ahead = stamp.expect("a timestamped log line") - chrono::Utc::now();
    assert!(ahead > chrono::Duration::hours(2), "the worker's clock is not skewed: {ahead}");

    let since = chrono::Utc::now();
    eventually(LONG, "three liveness and three provision-timeout sweeps to run", || async {
        (sweeps_finished(&stack.pool, &["liveness", "provision-timeout"], since, "%").await >= 6).then_some(())
    })
    .await;
    assert_eq!(stack.status_of(&waiting).await, "provisioning", "not timed out by the worker's clock");
    assert_eq!(stack.status_of(&online).await, "online", "not silent by the worker's clock");
    assert_eq!(stack.ops(&online).await.len(), 1, "no restart was queued");
}
