//! Agents working together: the activity inbox (poll and push), InboxPush with its retries,
//! messages to agents, and the delegations ledger with its sweep and admin views. The round
//! trips run two real stub agents in containers (`tests/agent-stub`).

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{Resp, Stack, container_name, docker, eventually, require_docker_image};

const LONG: Duration = Duration::from_secs(90);

async fn call(stack: &Stack, method: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
    stack.raw(method, path, Some(token), body.map(|b| b.to_string()).as_deref()).await
}

/// An external workspace (poll mode unless said) and its token.
async fn external(stack: &Stack, name: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": name, "external": true});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    let r = stack.post("/workspaces", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let token = r.body["connection"]["auth_token"].as_str().expect("token at create").to_string();
    (id, token)
}

/// A containerised stub agent, online, and the token it holds.
async fn agent(stack: &Stack, name: &str, mode: &str) -> (String, String) {
    let r = stack.post("/workspaces?wait=60", json!({"name": name, "delivery_mode": mode})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let token = stack.agent_token(&id).await;
    (id, token)
}

async fn inbox(stack: &Stack, id: &str, method: &str) -> Vec<Value> {
    let r = stack.get(&format!("/workspaces/{id}/activity?type=a2a_receive&since_id=0&limit=500")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body.as_array().expect("rows").iter().filter(|row| row["method"] == method).cloned().collect()
}

async fn delegation(stack: &Stack, id: &str, did: &str) -> Value {
    let r = stack.get(&format!("/workspaces/{id}/delegations")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body.as_array().expect("rows").iter().find(|d| d["delegation_id"] == did).cloned().expect("the delegation")
}

async fn event_count(stack: &Stack, event: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM structure_events WHERE event_type = $1")
        .bind(event)
        .fetch_one(&stack.pool)
        .await
        .unwrap()
}

fn inbox_log(id: &str) -> String {
    docker(&["exec", &container_name(id), "cat", "/tmp/inbox.log"])
}

/// A delegates to B; B's agent works it from its inbox and reports; A's inbox ends with
/// exactly one result carrying B's text. Returns the delegation id.
async fn round_trip(stack: &Stack, a: &(String, String), b: &(String, String)) -> String {
    let task = "count the stars";
    let r = call(
        stack,
        "POST",
        &format!("/workspaces/{}/delegate", a.0),
        &a.1,
        Some(json!({"target_id": b.0, "task": task})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "delegated");
    let did = r.body["delegation_id"].as_str().expect("delegation id").to_string();
    let results = eventually(LONG, "the result in the caller's inbox", || async {
        let rows = inbox(stack, &a.0, "delegate_result").await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["response_body"]["text"], format!("done: {task}"));
    assert_eq!(results[0]["response_body"]["delegation_id"], did.as_str());
    let d = delegation(stack, &a.0, &did).await;
    assert_eq!(d["status"], "completed", "{d}");
    assert_eq!(d["callee_id"], b.0.as_str());
    // B's poller received it as a message carrying the delegation.
    let received = inbox(stack, &b.0, "message/send").await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["request_body"]["params"]["message"]["metadata"]["delegation_id"], did.as_str());
    for e in ["DELEGATION_SENT", "DELEGATION_STATUS", "DELEGATION_COMPLETE"] {
        assert!(event_count(stack, e).await >= 1, "{e} recorded");
    }
    did
}

#[tokio::test]
async fn a_delegation_round_trips_between_two_polling_agents_in_containers() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let a = agent(&stack, "caller", "poll").await;
    let b = agent(&stack, "callee", "poll").await;
    round_trip(&stack, &a, &b).await;
}

#[tokio::test]
async fn a_push_mode_caller_receives_the_result_over_http() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let a = agent(&stack, "pushed-caller", "push").await;
    let b = agent(&stack, "callee", "poll").await;
    let did = round_trip(&stack, &a, &b).await;
    let line = eventually(LONG, "the caller's agent to receive the result", || async {
        inbox_log(&a.0).lines().find(|l| l.contains(&did) && l.contains("delegate_result")).map(str::to_string)
    })
    .await;
    assert!(line.contains("done: count the stars"), "{line}");
    let row = &inbox(&stack, &a.0, "delegate_result").await[0];
    assert_eq!(row["delivery"], "delivered", "{row}");
    assert_eq!(row["delivery_attempts"], 1);
}

#[tokio::test]
async fn a_thousand_items_reach_a_push_agent_in_order_exactly_once() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let (id, _) = agent(&stack, "busy", "push").await;
    // One message with ?wait: the agent's answer comes back.
    let msg = |n: usize| {
        json!({"jsonrpc": "2.0", "id": n, "method": "message/send",
        "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": format!("m{n}")}]}}})
    };
    let r = stack.post(&format!("/workspaces/{id}/a2a?wait=30"), msg(0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "delivered");
    let first = r.body["id"].as_i64().expect("item id");
    assert_eq!(r.body["response"]["result"]["parts"][0]["text"], format!("ack {first}"));

    let mut sent = vec![first];
    for n in 1..1000 {
        let r = stack.post(&format!("/workspaces/{id}/a2a"), msg(n)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        sent.push(r.body["id"].as_i64().expect("item id"));
    }
    let got: Vec<i64> = eventually(Duration::from_secs(180), "1000 items at the agent", || async {
        let ids: Vec<i64> = inbox_log(&id).lines().filter_map(|l| l.split(' ').next()?.parse().ok()).collect();
        (ids.len() >= 1000).then_some(ids)
    })
    .await;
    assert_eq!(got.len(), 1000, "each item exactly once");
    assert_eq!(got, sent, "in the order they were sent");
    // The agent logs an item before answering: its record follows the answer.
    eventually(LONG, "every item recorded as delivered", || async {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM activity_logs WHERE workspace_id = $1::uuid AND delivery IS DISTINCT FROM 'delivered'",
        )
        .bind(&id)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        (pending == 0).then_some(())
    })
    .await;
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbox_delivery_attempts t JOIN activity_logs a ON a.id = t.item_id
          WHERE a.workspace_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 1000, "one push per item");
}

#[tokio::test]
async fn an_unreachable_push_target_is_retried_with_growing_delays_across_a_kill_then_given_up() {
    let mut stack = Stack::builder()
        .env("DOCKER_ENABLED", "false")
        .env("INBOX_RETRY_MAX_ATTEMPTS", "5")
        .env("INBOX_RETRY_MIN_DELAY_SECONDS", "0.5")
        .env("INBOX_RETRY_MAX_DELAY_SECONDS", "8")
        .env("INBOX_PUSH_CONNECT_TIMEOUT_SECONDS", "1")
        .workers(1)
        .start()
        .await;
    // Nothing listens on port 9 (discard); the connection is refused at once.
    let (id, _) =
        external(&stack, "unreachable", json!({"url": "http://127.0.0.1:9/a2a", "delivery_mode": "push"})).await;
    let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "message/send",
        "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": "anyone?"}]}}});
    let r = stack.post(&format!("/workspaces/{id}/a2a"), msg).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let item = r.body["id"].as_i64().expect("item id");
    let attempts = |stack: &Stack| {
        let pool = stack.pool.clone();
        async move { jobs::store::activity_logs::attempts(&pool, item).await.unwrap() }
    };
    eventually(LONG, "two attempts", || async { (attempts(&stack).await.len() >= 2).then_some(()) }).await;
    stack.workers[0].signal("KILL");
    stack.add_worker(&[]);
    let row = eventually(LONG, "the item to be given up", || async {
        let r = stack.get(&format!("/workspaces/{id}/activity?since_id=0")).await;
        let row = r.body.as_array()?.iter().find(|a| a["id"] == item)?.clone();
        (row["delivery"] == "undeliverable").then_some(row)
    })
    .await;
    let tried = attempts(&stack).await;
    assert_eq!(tried.len(), 5, "{tried:?}");
    assert_eq!(row["delivery_attempts"], 5);
    let err = row["error_detail"].as_str().expect("the last error is kept");
    assert!(err.contains("undeliverable after 5 attempt(s)") && err.contains("connect"), "{err}");
    assert!(tried.iter().all(|a| a.error.as_deref().is_some_and(|e| !e.is_empty())));
    // Each wait is at least the policy's delay for that attempt (0.5 s doubling), so they grow.
    let gaps: Vec<f64> =
        tried.windows(2).map(|w| (w[1].started_at - w[0].finished_at).num_milliseconds() as f64 / 1000.0).collect();
    for (k, gap) in gaps.iter().enumerate() {
        let floor = 0.5 * 2f64.powi(k as i32) * 0.95;
        assert!(*gap >= floor, "wait {k} was {gap:.2}s, below {floor:.2}s: {gaps:?}");
    }
    assert!(gaps[3] > gaps[0], "the waits grow: {gaps:?}");
    assert!(
        tried.iter().map(|a| a.worker.clone()).collect::<HashSet<_>>().len() == 2,
        "the second worker finished the retries"
    );
    assert_eq!(event_count(&stack, "INBOX_UNDELIVERABLE").await, 1);
}

#[tokio::test]
async fn an_idempotency_key_answers_with_its_delegation_and_a_failed_one_runs_again() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let a = external(&stack, "a", json!({})).await;
    let b = external(&stack, "b", json!({})).await;
    let body = json!({"target_id": b.0, "task": "t", "idempotency_key": "k1"});
    let path = format!("/workspaces/{}/delegate", a.0);
    let first = call(&stack, "POST", &path, &a.1, Some(body.clone())).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let d1 = first.body["delegation_id"].as_str().unwrap().to_string();
    let replay = call(&stack, "POST", &path, &a.1, Some(body.clone())).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.body["idempotent_hit"], true);
    assert_eq!(replay.body["delegation_id"], d1.as_str());
    assert_eq!(inbox(&stack, &b.0, "message/send").await.len(), 1, "the replay delivered nothing more");

    let fail = json!({"status": "failed", "error": "boom"});
    let r = call(&stack, "POST", &format!("/workspaces/{}/delegations/{d1}/update", b.0), &b.1, Some(fail)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let again = call(&stack, "POST", &path, &a.1, Some(body)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "a failed delegation runs again: {}", again.body);
    let d2 = again.body["delegation_id"].as_str().unwrap().to_string();
    assert_ne!(d1, d2);
    let ids: Vec<String> = sqlx::query_scalar("SELECT delegation_id FROM delegations WHERE idempotency_key = 'k1'")
        .fetch_all(&stack.pool)
        .await
        .unwrap();
    assert_eq!(ids, vec![d2], "the failed row was replaced");
    let failed = inbox(&stack, &a.0, "delegate_result").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"], "error");
    assert_eq!(failed[0]["error_detail"], "boom");
}

#[tokio::test]
async fn statuses_only_move_forward_and_strangers_see_nothing() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let a = external(&stack, "a", json!({})).await;
    let b = external(&stack, "b", json!({})).await;
    let c = external(&stack, "c", json!({})).await;
    let r = call(
        &stack,
        "POST",
        &format!("/workspaces/{}/delegate", a.0),
        &a.1,
        Some(json!({"target_id": b.0, "task": "t"})),
    )
    .await;
    let did = r.body["delegation_id"].as_str().unwrap().to_string();
    let update = |status: &'static str| {
        let path = format!("/workspaces/{}/delegations/{did}/update", b.0);
        let token = b.1.clone();
        let stack = &stack;
        async move { call(stack, "POST", &path, &token, Some(json!({"status": status, "response_preview": "r"}))).await }
    };
    let r = update("in_progress").await;
    assert_eq!((r.status, r.body["changed"].clone()), (StatusCode::OK, json!(true)), "{}", r.body);
    let r = update("in_progress").await;
    assert_eq!(
        (r.status, r.body["changed"].clone()),
        (StatusCode::OK, json!(false)),
        "a replay is a no-op: {}",
        r.body
    );
    let r = update("completed").await;
    assert_eq!((r.status, r.body["changed"].clone()), (StatusCode::OK, json!(true)), "{}", r.body);
    let r = update("completed").await;
    assert_eq!((r.status, r.body["changed"].clone()), (StatusCode::OK, json!(false)), "{}", r.body);
    for other in ["failed", "in_progress"] {
        let r = update(other).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{other}: {}", r.body);
        assert!(r.error().contains("completed"), "{}", r.body);
    }
    let r = update("stuck").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "agents report in_progress, completed or failed: {}", r.body);
    assert_eq!(delegation(&stack, &a.0, &did).await["status"], "completed");
    assert_eq!(inbox(&stack, &a.0, "delegate_result").await.len(), 1, "one result, however many replays");
    // Another workspace: its own path does not reach the row, and B's path refuses its token.
    let as_c = json!({"status": "failed"});
    let r =
        call(&stack, "POST", &format!("/workspaces/{}/delegations/{did}/update", c.0), &c.1, Some(as_c.clone())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = call(&stack, "POST", &format!("/workspaces/{}/delegations/{did}/update", b.0), &c.1, Some(as_c)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = call(&stack, "POST", &format!("/workspaces/{}/delegations/{did}/heartbeat", c.0), &c.1, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}

#[tokio::test]
async fn the_sweep_fails_overdue_and_sticks_silent_delegations_once_per_period() {
    let stack = Stack::builder()
        .env("DOCKER_ENABLED", "false")
        .env("SWEEP_DELEGATIONS_SECONDS", "1")
        .env("DELEGATION_STUCK_THRESHOLD_SECONDS", "2")
        .workers(3)
        .start()
        .await;
    let a = external(&stack, "a", json!({})).await;
    let b = external(&stack, "b", json!({})).await;
    let delegate = |deadline: Option<f64>| {
        let mut body = json!({"target_id": b.0, "task": "t"});
        if let Some(d) = deadline {
            body["deadline_seconds"] = json!(d);
        }
        let path = format!("/workspaces/{}/delegate", a.0);
        let token = a.1.clone();
        let stack = &stack;
        async move {
            let r = call(stack, "POST", &path, &token, Some(body)).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
            r.body["delegation_id"].as_str().unwrap().to_string()
        }
    };
    let report = |did: String, path: &'static str, body: Option<Value>| {
        let token = b.1.clone();
        let full = format!("/workspaces/{}/delegations/{did}/{path}", b.0);
        let stack = &stack;
        async move {
            let r = call(stack, "POST", &full, &token, body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
    };
    let overdue = delegate(Some(1.0)).await;
    let silent = delegate(None).await;
    report(silent.clone(), "update", Some(json!({"status": "in_progress"}))).await;
    report(silent.clone(), "heartbeat", None).await;
    let never_beat = delegate(None).await;
    report(never_beat.clone(), "update", Some(json!({"status": "in_progress"}))).await;
    let waiting = delegate(None).await;

    let d = eventually(LONG, "the overdue one to fail", || async {
        let d = delegation(&stack, &a.0, &overdue).await;
        (d["status"] == "failed").then_some(d)
    })
    .await;
    assert_eq!(d["error_detail"], "deadline exceeded by sweeper");
    let d = eventually(LONG, "the silent one to be stuck", || async {
        let d = delegation(&stack, &a.0, &silent).await;
        (d["status"] == "stuck").then_some(d)
    })
    .await;
    assert!(d["error_detail"].as_str().unwrap().starts_with("no heartbeat for"), "{d}");
    // Several more periods: the others stay as they are.
    let runs_now: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sweep_runs WHERE sweep = 'delegations' AND finished_at IS NOT NULL")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    eventually(LONG, "three more sweep periods", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sweep_runs WHERE sweep = 'delegations' AND finished_at IS NOT NULL",
        )
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        (n >= runs_now + 3).then_some(())
    })
    .await;
    assert_eq!(
        delegation(&stack, &a.0, &never_beat).await["status"],
        "in_progress",
        "no heartbeat yet is no stale one"
    );
    assert_eq!(delegation(&stack, &a.0, &waiting).await["status"], "dispatched", "waits for its deadline");
    let results = inbox(&stack, &a.0, "delegate_result").await;
    assert_eq!(results.len(), 2, "one result per ending: {results:?}");
    // Three workers, each period run once, and none ended in an error.
    let (runs, distinct, errors): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT period_start), count(*) FILTER (WHERE outcome LIKE 'error%')
           FROM sweep_runs WHERE sweep = 'delegations'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(runs, distinct);
    assert_eq!(errors, 0);
    let dup: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job FROM apalis.jobs WHERE job_type = 'sweeps' GROUP BY job HAVING count(*) > 1) d",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(dup, 0, "no period enqueued twice");
}

#[tokio::test]
async fn a_long_poll_answers_with_the_message_sent_while_it_waits_and_an_empty_list_when_none_is() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let a = external(&stack, "a", json!({})).await;
    let b = external(&stack, "b", json!({})).await;
    let read = |q: &str| {
        let (stack, path, token) = (&stack, format!("/workspaces/{}/activity?{q}", a.0), a.1.clone());
        async move { call(stack, "GET", &path, &token, None).await }
    };
    for (q, names) in [("wait=5", "since_id"), ("since_id=0&wait=301", "wait"), ("since_id=0&wait=-1", "wait")] {
        let r = read(q).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.body);
        assert!(r.error().contains(names), "{q}: {}", r.body);
    }

    let started = std::time::Instant::now();
    let r = read("type=a2a_receive&since_id=0&wait=1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!([]), "nothing came");
    assert!(started.elapsed() >= Duration::from_secs(1), "answered before the wait was up");

    let started = std::time::Instant::now();
    let waiting = tokio::spawn({
        let (url, token, id) = (stack.url.clone(), a.1.clone(), a.0.clone());
        async move {
            let r = reqwest::Client::new()
                .get(format!("{url}/workspaces/{id}/activity?type=a2a_receive&since_id=0&wait=120"))
                .bearer_auth(token)
                .send()
                .await
                .expect("long poll");
            (r.status(), r.json::<Value>().await.expect("json"))
        }
    });
    let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "message/send",
        "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": "wake up"}]}}});
    let sent = call(&stack, "POST", &format!("/workspaces/{}/a2a", a.0), &b.1, Some(msg)).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.body);
    let (status, rows) =
        tokio::time::timeout(Duration::from_secs(60), waiting).await.expect("answered within the wait").expect("task");
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["id"], sent.body["id"], "the message sent while it waited");
    assert_eq!(rows[0]["source_id"], b.0.as_str());
    // The api's waiting read re-reads only every 10 s: an answer well before is the notice's.
    assert!(started.elapsed() < Duration::from_secs(5), "woken by the notice, not by the re-read");
}

#[tokio::test]
async fn the_cursor_reads_forward_and_a_foreign_or_unknown_one_is_gone() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let a = external(&stack, "a", json!({})).await;
    let b = external(&stack, "b", json!({})).await;
    let mut ids = vec![];
    for n in 0..3 {
        let msg = json!({"jsonrpc": "2.0", "id": n, "method": "message/send",
            "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": format!("m{n}")}]}}});
        let r = call(&stack, "POST", &format!("/workspaces/{}/a2a", a.0), &b.1, Some(msg)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        assert_eq!(r.body["delivery_mode"], "poll");
        ids.push(r.body["id"].as_i64().unwrap());
    }
    let read = |q: String, token: String| {
        let stack = &stack;
        let path = format!("/workspaces/{}/activity?{q}", a.0);
        async move { call(stack, "GET", &path, &token, None).await }
    };
    let rows = |r: &Resp| r.body.as_array().unwrap().iter().map(|x| x["id"].as_i64().unwrap()).collect::<Vec<_>>();
    let r = read("since_id=0".into(), a.1.clone()).await;
    assert_eq!(rows(&r), ids, "from the beginning, oldest first");
    assert_eq!(r.body[0]["source_id"], b.0.as_str(), "the sender is recorded");
    let r = read(format!("since_id={}", ids[0]), a.1.clone()).await;
    assert_eq!(rows(&r), ids[1..].to_vec(), "after the cursor, ascending");
    let r = read(format!("since_id={}&limit=1", ids[0]), a.1.clone()).await;
    assert_eq!(rows(&r), vec![ids[1]]);
    let r = read(String::new(), a.1.clone()).await;
    assert_eq!(rows(&r), ids.iter().rev().copied().collect::<Vec<_>>(), "without a cursor, newest first");

    // B's own row as A's cursor, and a cursor that never was.
    let own = call(
        &stack,
        "POST",
        &format!("/workspaces/{}/activity", b.0),
        &b.1,
        Some(json!({"activity_type": "agent_log", "summary": "hi"})),
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    let foreign = own.body["id"].as_i64().unwrap();
    for cursor in [foreign, 987_654_321] {
        let r = read(format!("since_id={cursor}"), a.1.clone()).await;
        assert_eq!(r.status, StatusCode::GONE, "{}", r.body);
        assert!(r.error().contains(&cursor.to_string()), "{}", r.body);
    }
    // A token reads only its own log; an agent writes only its own rows, of agent types.
    assert_eq!(read("since_id=0".into(), b.1.clone()).await.status, StatusCode::FORBIDDEN);
    let r = call(
        &stack,
        "POST",
        &format!("/workspaces/{}/activity", b.0),
        &b.1,
        Some(json!({"activity_type": "a2a_receive"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = call(
        &stack,
        "POST",
        &format!("/workspaces/{}/activity", b.0),
        &b.1,
        Some(json!({"activity_type": "agent_log", "source_id": a.0})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

#[tokio::test]
async fn admin_views_count_every_status_and_refuse_an_unknown_one() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let r = stack.get("/admin/delegations/stats").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"queued": 0, "dispatched": 0, "in_progress": 0, "completed": 0, "failed": 0, "stuck": 0})
    );
    let r = stack.get("/admin/delegations?status=lost").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["allowed"], json!(["in_flight", "stuck", "failed", "completed"]));
    assert_eq!(r.body["requested_status"], "lost");
    for limit in ["0", "1001", "x"] {
        assert_eq!(stack.get(&format!("/admin/delegations?limit={limit}")).await.status, StatusCode::BAD_REQUEST);
    }
    let a = external(&stack, "a", json!({})).await;
    let b = external(&stack, "b", json!({})).await;
    let mut ids = vec![];
    for _ in 0..2 {
        let r = call(
            &stack,
            "POST",
            &format!("/workspaces/{}/delegate", a.0),
            &a.1,
            Some(json!({"target_id": b.0, "task": "t"})),
        )
        .await;
        ids.push(r.body["delegation_id"].as_str().unwrap().to_string());
    }
    let r = stack.get("/admin/delegations?limit=10").await;
    assert_eq!(r.body["status"], "in_flight");
    assert_eq!(r.body["count"], 2);
    let listed: Vec<&str> =
        r.body["delegations"].as_array().unwrap().iter().map(|d| d["delegation_id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![ids[1].as_str(), ids[0].as_str()], "newest first");
    let first = &r.body["delegations"][0];
    assert!(
        first.get("last_heartbeat").is_none() && first.get("result_preview").is_none(),
        "null fields are left out: {first}"
    );
    assert_eq!(stack.get("/admin/delegations/stats").await.body["dispatched"], 2);
    let r = call(&stack, "GET", "/admin/delegations", &a.1, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let a = external(&stack, "a", json!({})).await;
    let b = external(&stack, "b", json!({})).await;
    let a2a = format!("/workspaces/{}/a2a", b.0);
    for (body, want) in [
        ("{not json", "malformed JSON"),
        (r#"{"jsonrpc":"2.0","method":"tasks/cancel","params":{"message":{}}}"#, "message/send"),
        (r#"{"jsonrpc":"2.0","method":"message/send","params":{}}"#, "params.message"),
        (r#"[1,2]"#, "JSON-RPC"),
    ] {
        let r = stack.raw("POST", &a2a, Some(&a.1), Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert!(r.error().contains(want), "{body}: {}", r.body);
    }
    let big =
        json!({"jsonrpc": "2.0", "method": "message/send", "params": {"message": {"text": "x".repeat(1024 * 1024)}}});
    let r = stack.raw("POST", &a2a, Some(&a.1), Some(&big.to_string())).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    let missing = uuid::Uuid::new_v4();
    let ok_msg = json!({"jsonrpc": "2.0", "method": "message/send", "params": {"message": {"parts": []}}});
    let r = stack.post(&format!("/workspaces/{missing}/a2a"), ok_msg).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    let delegate = format!("/workspaces/{}/delegate", a.0);
    for (body, status) in [
        (json!({"target_id": a.0, "task": "t"}), StatusCode::BAD_REQUEST),
        (json!({"target_id": missing, "task": "t"}), StatusCode::NOT_FOUND),
        (json!({"target_id": b.0, "task": "  "}), StatusCode::BAD_REQUEST),
        (json!({"target_id": "nope", "task": "t"}), StatusCode::BAD_REQUEST),
        (json!({"target_id": b.0, "task": "t", "deadline_seconds": -1}), StatusCode::BAD_REQUEST),
    ] {
        let r = call(&stack, "POST", &delegate, &a.1, Some(body.clone())).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(!r.error().is_empty());
    }
    let r = call(
        &stack,
        "POST",
        &format!("/workspaces/{}/delegations/nope/update", b.0),
        &b.1,
        Some(json!({"status": "completed"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let (rows, delegations): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM activity_logs), (SELECT count(*) FROM delegations)")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!((rows, delegations), (0, 0), "no partial rows");
}
