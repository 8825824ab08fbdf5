//! Operators' admin routes end to end: the job listing and detail, retry, cancel, queue
//! pauses and the worker list, against real api and worker processes.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{ADMIN, Stack, eventually, poll_until, require_docker_image};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(90);

async fn jobs(stack: &Stack, query: &str) -> Value {
    let r = stack.get(&format!("/admin/jobs?{query}")).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
    r.body
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().expect("id").to_string()).collect()
}

/// The provision op a workspace was created with.
async fn first_op(stack: &Stack, ws: &str) -> String {
    let ops = stack.ops(ws).await;
    ops.last().and_then(|o| o["id"].as_str()).expect("the create's op").to_string()
}

async fn events_of(stack: &Stack, event: &str) -> Vec<Value> {
    sqlx::query_scalar("SELECT payload FROM structure_events WHERE event_type = $1 ORDER BY id")
        .bind(event)
        .fetch_all(&stack.pool)
        .await
        .expect("events")
}

#[tokio::test]
async fn failed_provisions_are_listed_by_kind_state_and_workspace_in_pages_and_a_retry_runs_them_again() {
    require_docker_image();
    // No live worker: the creates queue; then a worker without a backend fails them fast.
    let mut stack = Stack::builder().workers(0).start().await;
    let mut wss = vec![];
    for n in 0..3 {
        wss.push(stack.create(json!({"name": format!("adm-{n}"), "tier": 2})).await);
    }
    let queued = jobs(&stack, "kind=provision&state=queued").await;
    assert_eq!(queued["count"], 3, "{queued}");
    stack.add_worker(&[("DOCKER_ENABLED", "false")]);
    eventually(LONG, "the three provisions to fail", || async {
        (jobs(&stack, "kind=provision&state=failed").await["count"] == 3).then_some(())
    })
    .await;

    // Pages of two, newest first, with no job twice and nothing left out.
    let first = jobs(&stack, "kind=provision&state=failed&limit=2").await;
    assert_eq!(first["count"], 2, "{first}");
    let cursor = first["next_before"].as_str().expect("a next page").to_string();
    let second = jobs(&stack, &format!("kind=provision&state=failed&limit=2&before={cursor}")).await;
    assert_eq!(second["count"], 1, "{second}");
    assert!(second["next_before"].is_null(), "{second}");
    let mut all = ids(&first);
    all.extend(ids(&second));
    let mut expected: Vec<String> = vec![];
    for ws in wss.iter().rev() {
        expected.push(first_op(&stack, ws).await);
    }
    assert_eq!(all, expected, "newest first across pages");
    let job = &first["jobs"][0];
    assert_eq!(job["kind"], "provision");
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempts"], 1);
    assert!(job["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{job}");
    assert!(job["claimed_by"].as_str().is_some(), "{job}");
    assert!(job["finished_at"].is_string() && job["started_at"].is_string(), "{job}");

    // Filters: by workspace, and kinds and states with nothing in them.
    let one = jobs(&stack, &format!("workspace_id={}", wss[1])).await;
    assert_eq!(ids(&one), vec![first_op(&stack, &wss[1]).await], "{one}");
    assert_eq!(jobs(&stack, "kind=stop").await["count"], 0);
    assert_eq!(jobs(&stack, "kind=provision&state=succeeded").await["count"], 0);
    let sweeps = jobs(&stack, "kind=sweep").await;
    assert!(ids(&sweeps).iter().all(|id| id.starts_with("sweep:")), "{sweeps}");

    // Bad filters are 400s naming the problem and what is allowed.
    for (query, needle) in [
        ("kind=reboot", "kind"),
        ("state=stuck", "state"),
        ("workspace_id=nope", "workspace_id"),
        ("before=garbage", "before"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
    ] {
        let r = stack.get(&format!("/admin/jobs?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
        assert!(r.error().contains(needle), "{query}: {}", r.body);
    }
    let r = stack.get("/admin/jobs?kind=reboot").await;
    assert!(r.body["allowed"].as_array().is_some_and(|a| a.contains(&json!("sweep:liveness"))), "{}", r.body);
    let r = stack.raw("GET", "/admin/jobs", Some("not-a-token"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Detail: the attempt and its error, the workspace, the apalis task.
    let failed = first_op(&stack, &wss[0]).await;
    let d = stack.get(&format!("/admin/jobs/{failed}")).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    let attempts = d.body["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{}", d.body);
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["error"], d.body["job"]["last_error"]);
    assert_eq!(attempts[0]["worker"], d.body["job"]["claimed_by"]);
    assert_eq!(d.body["workspace"]["id"], wss[0].as_str());
    assert_eq!(d.body["workspace"]["status"], "failed");
    assert_eq!(d.body["task"]["queue"], "lifecycle", "{}", d.body);
    for bad in ["nope", "sweep:nothing@1", "inbox:x"] {
        assert_eq!(stack.get(&format!("/admin/jobs/{bad}")).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(stack.get(&format!("/admin/jobs/{}", Uuid::new_v4())).await.status, StatusCode::NOT_FOUND);

    // The queue statistics saw the failures.
    let q = stack.get("/admin/queues").await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    let provision = q.body["queues"].as_array().unwrap().iter().find(|q| q["kind"] == "provision").unwrap().clone();
    assert_eq!(provision["last_hour"]["failed"], 3, "{provision}");
    assert_eq!(provision["queued"], 0, "{provision}");

    // Retry while no worker runs: the retry stays pending, so retrying again returns it.
    stack.workers[0].signal("TERM");
    stack.workers[0].wait_exit(LONG).await;
    let r = stack.post(&format!("/admin/jobs/{failed}/retry"), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let retry = r.body["job"]["id"].as_str().expect("new job").to_string();
    assert_ne!(retry, failed);
    assert_eq!(r.body["job"]["reason"], format!("retry of {failed}"));
    assert_eq!(r.body["job"]["requested_by"], "admin");
    assert_eq!(r.body["job"]["state"], "queued");
    let again = stack.post(&format!("/admin/jobs/{failed}/retry"), json!({})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["job"]["id"], retry.as_str());
    assert_eq!(stack.status_of(&wss[0]).await, "provisioning", "a retried start waits for its workspace again");

    // A worker that reaches Docker runs it: the workspace comes online.
    stack.add_worker(&[]);
    stack.wait_status(&wss[0], "online", LONG).await;
    let d = stack.get(&format!("/admin/jobs/{retry}")).await;
    assert_eq!(d.body["job"]["state"], "succeeded", "{}", d.body);
    assert_eq!(d.body["attempts"][0]["outcome"], "succeeded", "{}", d.body);
    let r = stack.post(&format!("/admin/jobs/{retry}/retry"), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "only a failed op is retried: {}", r.body);
    let retried = events_of(&stack, "JOB_RETRIED").await;
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0]["operator"], "admin");
    assert_eq!(retried[0]["new_job_id"], retry.as_str());
}

#[tokio::test]
async fn a_queued_op_is_canceled_with_its_task_and_a_running_one_is_fenced() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let ws = stack.create(json!({"name": "to-cancel", "tier": 2})).await;
    let op = first_op(&stack, &ws).await;
    let r = stack.post(&format!("/admin/jobs/{op}/cancel"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["was"], "queued");
    assert_eq!(r.body["job"]["state"], "canceled");
    let d = stack.get(&format!("/admin/jobs/{op}")).await;
    assert_eq!(d.body["task"]["status"], "Killed", "its apalis task is killed: {}", d.body);
    assert_eq!(d.body["workspace"]["status"], "failed", "the start it waited for is gone: {}", d.body);
    // Idempotent; and a canceled op is not retried.
    let r = stack.post(&format!("/admin/jobs/{op}/cancel"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["was"], "canceled");
    assert_eq!(stack.post(&format!("/admin/jobs/{op}/retry"), json!({})).await.status, StatusCode::CONFLICT);
    let canceled = events_of(&stack, "JOB_CANCELED").await;
    assert_eq!(canceled.len(), 1, "{canceled:?}");
    assert_eq!(canceled[0]["operator"], "admin");
    assert_eq!(canceled[0]["was"], "queued");

    // A running op: claimed here as a worker would, then canceled under it.
    let ws = stack.create(json!({"name": "running", "tier": 2})).await;
    let op: Uuid = first_op(&stack, &ws).await.parse().unwrap();
    let task = jobs::ops::get(&stack.pool, op).await.unwrap().task_id.expect("the head has its task");
    let claimant = jobs::ops::Claimant {
        worker: "test-worker",
        lease: LONG,
        starts: true,
        reaches: vec![],
        engines: vec![],
        new_on_engine: None,
    };
    let claim = match jobs::ops::claim(&stack.pool, op, &task, &claimant).await.unwrap() {
        jobs::ops::ClaimResult::Claimed(c) => c,
        other => panic!("not claimed: {other:?}"),
    };
    // The claim shows as running, under its worker, in the listing and the worker list.
    jobs::store::worker_processes::heartbeat(&stack.pool, "test-worker", "test-host", 1, &[], &[]).await.unwrap();
    let running = jobs(&stack, "state=running").await;
    assert_eq!(ids(&running), vec![op.to_string()], "{running}");
    assert_eq!(running["jobs"][0]["claimed_by"], "test-worker");
    let w = stack.get("/admin/workers").await;
    let me = w.body["workers"].as_array().unwrap().iter().find(|w| w["id"] == "test-worker").unwrap().clone();
    assert_eq!(me["running"][0]["id"], op.to_string(), "{me}");
    assert_eq!(me["running"][0]["kind"], "provision", "{me}");
    let r = stack.post(&format!("/admin/jobs/{op}/cancel"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["was"], "running");
    let w = stack.get("/admin/workers").await;
    assert!(w.body["workers"].as_array().unwrap().iter().all(|w| w["running"] == json!([])), "{}", w.body);
    let mut tx = jobs::db::begin(&stack.pool).await.unwrap();
    assert!(claim.fence(&mut tx).await.unwrap().is_err(), "the holder's next write is fenced");
    drop(tx);
    let finished =
        jobs::ops::finish(&stack.pool, &claim, jobs::ops::Outcome::Succeeded("late".into()), jobs::retry::PROVISION)
            .await
            .unwrap();
    assert_eq!(finished, jobs::ops::Finished::Fenced);
    let d = stack.get(&format!("/admin/jobs/{op}")).await;
    assert_eq!(d.body["job"]["state"], "canceled", "{}", d.body);
    let attempt = &d.body["attempts"][0];
    assert_eq!(attempt["worker"], "test-worker");
    assert_eq!(attempt["outcome"], "canceled");
    assert_eq!(attempt["error"], "canceled by admin while running", "{}", d.body);

    // A final op is not canceled.
    let r = stack.post(&format!("/admin/jobs/{op}/cancel"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "canceled already: {}", r.body);
    let r = stack.post("/admin/jobs/sweep:liveness@0/cancel", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}

#[tokio::test]
async fn a_paused_kind_is_not_claimed_until_it_is_resumed() {
    let mut stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let r = stack.post("/admin/queues/provision/pause", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["changed"], true);
    assert_eq!(r.body["queue"]["paused"], true);
    assert_eq!(r.body["queue"]["paused_by"], "admin");
    let again = stack.post("/admin/queues/provision/pause", json!({})).await;
    assert_eq!(again.body["changed"], false, "{}", again.body);
    let r = stack.post("/admin/queues/sweep:liveness/pause", json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("sweep:liveness"), "{}", r.body);

    let ws = stack.create(json!({"name": "paused-kind", "tier": 2})).await;
    let op = first_op(&stack, &ws).await;
    // A worker runs (one without a backend fails a provision at once), but does not claim it.
    stack.add_worker(&[]);
    eventually(LONG, "the worker to be alive", || async {
        let w = stack.get("/admin/workers").await;
        (w.body["workers"][0]["alive"] == true).then_some(())
    })
    .await;
    let claimed = poll_until(Instant::now() + Duration::from_secs(6), Duration::from_millis(200), || async {
        let d = stack.get(&format!("/admin/jobs/{op}")).await;
        (d.body["job"]["state"] != "queued" || d.body["job"]["attempts"] != 0).then_some(d.body)
    })
    .await;
    assert!(claimed.is_none(), "a paused kind was claimed: {claimed:?}");
    let q = stack.get("/admin/queues").await;
    let provision = q.body["queues"].as_array().unwrap().iter().find(|q| q["kind"] == "provision").unwrap().clone();
    assert_eq!(provision["queued"], 1, "{provision}");
    assert!(provision["oldest_waiting_seconds"].as_f64().is_some_and(|s| s >= 5.0), "{provision}");

    let r = stack.post("/admin/queues/provision/resume", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["changed"], true);
    let job = eventually(LONG, "the op to run once resumed", || async {
        let d = stack.get(&format!("/admin/jobs/{op}")).await;
        (d.body["job"]["state"] == "failed").then_some(d.body)
    })
    .await;
    assert_eq!(job["job"]["attempts"], 1, "waiting did not use attempts: {job}");
    assert_eq!(events_of(&stack, "QUEUE_PAUSED").await.len(), 1);
    assert_eq!(events_of(&stack, "QUEUE_RESUMED").await.len(), 1);
}

#[tokio::test]
async fn workers_lists_a_killed_worker_as_dead() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(1).start().await;
    let pid = stack.workers[0].pid();
    let w = eventually(LONG, "the worker to announce itself", || async {
        let r = stack.get("/admin/workers").await;
        r.body["workers"].as_array().and_then(|a| a.first().cloned())
    })
    .await;
    assert_eq!(w["pid"], pid, "{w}");
    assert_eq!(w["alive"], true, "{w}");
    assert_eq!(w["version"], env!("CARGO_PKG_VERSION"), "{w}");
    assert!(w["host"].as_str().is_some_and(|h| !h.is_empty()), "{w}");
    assert_eq!(w["running"], json!([]));
    let r = stack.raw("GET", "/admin/workers", Some(&format!("{ADMIN}x")), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    stack.workers[0].signal("KILL");
    eventually(LONG, "the killed worker to be listed as dead", || async {
        let r = stack.get("/admin/workers").await;
        let w = r.body["workers"].as_array()?.iter().find(|w| w["pid"] == pid)?.clone();
        (w["alive"] == false).then_some(())
    })
    .await;
}

/// Runs `worker admin <args>` against the stack: (exit code, stdout, stderr).
async fn cli(stack: &Stack, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(tests::bin("worker"));
    cmd.arg("admin").args(args).env_remove("WS_URL").env_remove("ADMIN_TOKEN").env("WS_URL", &stack.url);
    cmd.env("ADMIN_TOKEN", ADMIN);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(LONG, cmd.output()).await.expect("the CLI to finish").expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli_json(stack: &Stack, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = cli(stack, &all, &[]).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} --json is not JSON ({e}): {out}"))
}

#[tokio::test]
async fn the_admin_cli_drives_every_subcommand_with_tables_json_and_exit_codes() {
    let mut stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let a = stack.create(json!({"name": "cli-a", "tier": 2})).await;
    let a_op = first_op(&stack, &a).await;

    // jobs list / show, as a table and as JSON.
    let (code, out, err) = cli(&stack, &["jobs", "list", "--kind", "provision"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID") && out.contains(&a_op) && out.contains("queued"), "{out}");
    let page = cli_json(&stack, &["jobs", "list", "--state", "queued", "--limit", "5"]).await;
    assert_eq!(ids(&page), vec![a_op.clone()], "{page}");
    let shown = cli_json(&stack, &["jobs", "show", &a_op]).await;
    assert_eq!(shown["job"]["id"], a_op.as_str());
    let (code, out, _) = cli(&stack, &["jobs", "show", &a_op], &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("cli-a") && out.contains("ATTEMPT"), "{out}");

    // queues: pause, list, resume.
    let (code, out, err) = cli(&stack, &["queues", "pause", "provision"], &[]).await;
    assert_eq!((code, out.trim()), (0, "provision is paused"), "{err}");
    let q = cli_json(&stack, &["queues"]).await;
    let provision = q["queues"].as_array().unwrap().iter().find(|q| q["kind"] == "provision").unwrap().clone();
    assert_eq!(provision["paused"], true, "{provision}");
    let (code, out, _) = cli(&stack, &["queues"], &[]).await;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("provision") && l.contains("paused")), "{out}");
    let (code, out, _) = cli(&stack, &["queues", "resume", "provision"], &[]).await;
    assert_eq!((code, out.trim()), (0, "provision is running"));

    // jobs cancel; a retry of what is not failed is the api's 409: exit 1 with its message.
    let (code, out, err) = cli(&stack, &["jobs", "cancel", &a_op], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("canceled") && out.contains("was queued"), "{out}");
    let (code, _, err) = cli(&stack, &["jobs", "retry", &a_op], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("409") && err.contains("only a failed op is retried"), "{err}");

    // jobs retry of a failed op, and workers, once a worker without a backend failed it.
    let b = stack.create(json!({"name": "cli-b", "tier": 2})).await;
    let b_op = first_op(&stack, &b).await;
    stack.add_worker(&[]);
    eventually(LONG, "b's provision to fail", || async {
        let d = stack.get(&format!("/admin/jobs/{b_op}")).await;
        (d.body["job"]["state"] == "failed").then_some(())
    })
    .await;
    let retried = cli_json(&stack, &["jobs", "retry", &b_op]).await;
    assert_eq!(retried["retry_of"], b_op.as_str(), "{retried}");
    assert_eq!(retried["created"], true, "{retried}");
    let w = cli_json(&stack, &["workers"]).await;
    assert_eq!(w["workers"][0]["alive"], true, "{w}");
    let (code, out, _) = cli(&stack, &["workers"], &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("alive") && out.contains(&stack.workers[0].pid().to_string()), "{out}");

    // workspaces list / show / ops.
    let list = cli_json(&stack, &["workspaces", "list"]).await;
    let names: Vec<&str> = list.as_array().unwrap().iter().filter_map(|w| w["name"].as_str()).collect();
    assert!(names.contains(&"cli-a") && names.contains(&"cli-b"), "{list}");
    let (code, out, _) = cli(&stack, &["workspaces", "show", &a], &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("cli-a") && out.contains("failed"), "{out}");
    let ops = cli_json(&stack, &["workspaces", "ops", &b]).await;
    assert_eq!(ops.as_array().map(Vec::len), Some(2), "the provision and its retry: {ops}");
    let (code, out, _) = cli(&stack, &["workspaces", "ops", &b], &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&format!("retry of {b_op}")), "{out}");

    // Exit codes: usage 2, api error 1, unreachable 3.
    assert_eq!(cli(&stack, &["jobs", "frob"], &[]).await.0, 2);
    assert_eq!(cli(&stack, &["jobs", "list", "--limit", "lots"], &[]).await.0, 2);
    let (code, _, err) = cli(&stack, &["queues", "--url", "ftp://x"], &[]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&stack, &["jobs", "list", "--kind", "reboot"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("400") && err.contains("kind"), "{err}");
    let (code, _, err) = cli(&stack, &["workers", "--token", "wrong"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = cli(&stack, &["workers"], &[("WS_URL", "http://127.0.0.1:9")]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test]
async fn an_undeliverable_inbox_item_is_listed_and_a_retry_pushes_it_once_more() {
    let stack = Stack::builder()
        .env("DOCKER_ENABLED", "false")
        .env("INBOX_RETRY_MAX_ATTEMPTS", "1")
        .env("INBOX_PUSH_CONNECT_TIMEOUT_SECONDS", "1")
        .workers(1)
        .start()
        .await;
    // Nothing listens on port 9 (discard): every push is refused at once.
    let r = stack
        .post(
            "/workspaces",
            json!({"name": "unreachable", "external": true, "url": "http://127.0.0.1:9/a2a", "delivery_mode": "push"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ws = r.body["id"].as_str().expect("id").to_string();
    let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "message/send",
        "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": "anyone?"}]}}});
    let r = stack.post(&format!("/workspaces/{ws}/a2a"), msg).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = format!("inbox:{}", r.body["id"].as_i64().expect("item id"));
    let failed = eventually(LONG, "the item to be given up", || async {
        let d = stack.get(&format!("/admin/jobs/{job}")).await;
        (d.body["job"]["state"] == "failed").then_some(d.body)
    })
    .await;
    assert_eq!(failed["job"]["kind"], "inbox_push");
    assert_eq!(failed["job"]["attempts"], 1);
    assert_eq!(failed["attempts"].as_array().map(Vec::len), Some(1), "{failed}");
    assert_eq!(failed["attempts"][0]["outcome"], "failed");
    assert!(failed["job"]["last_error"].as_str().is_some_and(|e| e.contains("undeliverable")), "{failed}");
    let listed = jobs(&stack, &format!("kind=inbox_push&state=failed&workspace_id={ws}")).await;
    assert_eq!(ids(&listed), vec![job.clone()], "{listed}");
    let q = stack.get("/admin/queues").await;
    let inbox = q.body["queues"].as_array().unwrap().iter().find(|q| q["kind"] == "inbox_push").unwrap().clone();
    assert_eq!(inbox["last_hour"]["failed"], 1, "{inbox}");

    let r = stack.post(&format!("/admin/jobs/{job}/retry"), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["job"]["id"], job.as_str(), "the item itself is re-armed");
    let again = eventually(LONG, "the retried push to be tried and given up", || async {
        let d = stack.get(&format!("/admin/jobs/{job}")).await;
        (d.body["job"]["state"] == "failed" && d.body["attempts"].as_array().map(Vec::len) == Some(2)).then_some(d.body)
    })
    .await;
    assert_eq!(again["job"]["attempts"], 2, "{again}");
    let retried = events_of(&stack, "JOB_RETRIED").await;
    assert_eq!(retried, vec![json!({"job_id": job, "operator": "admin"})]);
    // Only lifecycle ops are canceled.
    let r = stack.post(&format!("/admin/jobs/{job}/cancel"), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
}
