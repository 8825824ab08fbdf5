//! The api under trouble and abuse: a listener that loses its connection, a database that
//! goes away, agent URLs aimed inside the network, oversized or endless input, and
//! credentials that must never reach a log.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jobs::notify::LISTENER_APPLICATION_NAME;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tests::{ADMIN, Stack, bin, eventually};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn listener_pid(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1")
        .bind(LISTENER_APPLICATION_NAME)
        .fetch_optional(pool)
        .await
        .expect("pg_stat_activity")
}

async fn admin_socket(stack: &Stack) -> Socket {
    let url = format!("{}/ws?token={ADMIN}", stack.url.replacen("http", "ws", 1));
    tokio_tungstenite::connect_async(url).await.expect("websocket connect").0
}

/// Reads frames until one satisfies `want`, or panics at the deadline.
async fn next_frame_where(socket: &mut Socket, timeout: Duration, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {timeout:?}"))
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("frame JSON");
            if want(&v) {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn a_killed_listener_is_rebuilt_and_subscribers_are_told_to_resync() {
    let stack = Stack::builder().worker_env("DOCKER_ENABLED", "false").start().await;
    let first = eventually(Duration::from_secs(20), "the api's listener session", || listener_pid(&stack.pool)).await;
    let mut socket = admin_socket(&stack).await;

    let killed: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(first).fetch_one(&stack.pool).await.unwrap();
    assert!(killed);
    let resync =
        next_frame_where(&mut socket, Duration::from_secs(20), "RESYNC frame", |v| v["event"] == "RESYNC").await;
    assert!(resync["timestamp"].is_string() && resync["payload"]["reason"].is_string(), "{resync}");
    let second = eventually(Duration::from_secs(20), "a new listener session", || async {
        listener_pid(&stack.pool).await.filter(|pid| *pid != first)
    })
    .await;
    assert_ne!(first, second);

    // Events reach a WebSocket client only through NOTIFY: the new listener hears them.
    let id = stack.create(json!({"name": "after-the-kill"})).await;
    next_frame_where(&mut socket, Duration::from_secs(20), "an event of the new workspace", |v| {
        v["workspace_id"] == id.as_str()
    })
    .await;

    // And a wait is answered when its op ends (this worker reaches no backend, so the
    // provision fails at once) instead of running out its 60 seconds.
    let started = Instant::now();
    let r = stack.post("/workspaces?wait=60", json!({"name": "waited"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "failed", "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(30), "the wait took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_lost_notice_costs_a_wait_seconds_not_the_whole_wait() {
    let stack = Stack::builder().workers(0).start().await;
    let (client, url) = (stack.client.clone(), stack.url.clone());
    let waiting = tokio::spawn(async move {
        let r = client
            .post(format!("{url}/workspaces?wait=60"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "unannounced"}))
            .send()
            .await
            .expect("request");
        let status = r.status();
        (status, r.json::<Value>().await.expect("JSON body"), Instant::now())
    });
    let (op_id, ws_id): (Uuid, Uuid) = eventually(Duration::from_secs(20), "the provision op", || async {
        sqlx::query_as("SELECT id, workspace_id FROM workspace_ops").fetch_optional(&stack.pool).await.unwrap()
    })
    .await;

    // Finish the op behind the listener's back: no NOTIFY announces it.
    let mut tx = jobs::db::begin(&stack.pool).await.unwrap();
    sqlx::query("UPDATE workspace_ops SET status = 'failed', last_error = 'ended without a notice', finished_at = now() WHERE id = $1")
        .bind(op_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE workspaces SET status = 'failed', last_sample_error = 'ended without a notice' WHERE id = $1")
        .bind(ws_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let changed = Instant::now();

    let (status, body, answered) =
        tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("the wait noticed the change").unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(body["op_id"], op_id.to_string());
    let lag = answered.saturating_duration_since(changed);
    assert!(lag < Duration::from_secs(8), "the wait saw the change {lag:?} after it was committed");
}

/// A connection to the server's maintenance database, from which the test database can
/// be closed to the api without stopping the server other tests share.
async fn server_pool() -> PgPool {
    let url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL is set by dev/test");
    PgPoolOptions::new().max_connections(1).connect(&url).await.expect("connect to the server")
}

async fn get_with_headers(stack: &Stack, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = stack.client.get(format!("{}{path}", stack.url)).bearer_auth(ADMIN).send().await.expect("request");
    let (status, headers) = (r.status(), r.headers().clone());
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status} body is not JSON: {text}"));
    (status, headers, body)
}

#[tokio::test]
async fn an_unreachable_database_is_503_with_retry_after_until_it_is_back() {
    let stack = Stack::builder().workers(0).start().await;
    assert_eq!(stack.get("/workspaces").await.status, StatusCode::OK);
    let server = server_pool().await;
    let db = &stack.db.name;
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false")))
        .execute(&server)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .execute(&server)
        .await
        .unwrap();

    for path in ["/workspaces", "/health", &format!("/workspaces/{}", Uuid::new_v4())] {
        let (status, headers, body) = get_with_headers(&stack, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "GET {path}: {body}");
        assert_eq!(headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("2"), "GET {path}");
        assert_eq!(body["error"], "the database is unavailable; retry shortly", "GET {path}");
    }
    let r = stack.post("/workspaces", json!({"name": "while-down"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);

    // The api reconnects by itself once the database takes connections again.
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")))
        .execute(&server)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the api to answer again", || async {
        let ok = stack.get("/workspaces").await.status == StatusCode::OK;
        ok.then_some(())
    })
    .await;
    assert_eq!(stack.get("/health").await.status, StatusCode::OK);
    assert_eq!(stack.post("/workspaces", json!({"name": "after"})).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn agent_urls_on_a_private_network_need_allow_private() {
    let private = "http://10.0.0.5/";
    let strict = Stack::builder().workers(0).start().await;
    let r = strict.post("/workspaces", json!({"name": "p", "external": true, "url": private})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("AGENT_URL_ALLOW_PRIVATE"), "{}", r.body);
    let id = strict.create(json!({"name": "e", "external": true, "url": "http://127.0.0.1:8000"})).await;
    let r = strict.post("/registry/register", json!({"id": id, "url": private})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // The api listens on loopback, so agents on its own host may use it.
    let r = strict.post("/registry/register", json!({"id": id, "url": "http://127.0.0.1:8000"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let open = Stack::builder().workers(0).env("AGENT_URL_ALLOW_PRIVATE", "true").start().await;
    let r = open.post("/workspaces", json!({"name": "p", "external": true, "url": private})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(open.workspace(r.body["id"].as_str().unwrap()).await["url"], private);
    let id = open.create(json!({"name": "e", "external": true, "url": "http://127.0.0.1:8000"})).await;
    let r = open.post("/registry/register", json!({"id": id, "url": private})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(open.workspace(&id).await["url"], private);
    // Metadata addresses stay refused whatever the setting.
    let r = open.post("/registry/register", json!({"id": id, "url": "http://169.254.169.254/"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}

#[tokio::test]
async fn agent_cards_are_at_most_64_kib() {
    let stack = Stack::builder().workers(0).start().await;
    let id = stack.create(json!({"name": "carded", "external": true, "url": "http://127.0.0.1:8000"})).await;
    let big = json!({"id": id, "agent_card": {"description": "x".repeat(70 * 1024)}});
    let r = stack.post("/registry/register", big).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().starts_with("agent_card ") && r.error().contains("64 KiB"), "{}", r.body);
    let card: Option<Value> = sqlx::query_scalar("SELECT agent_card FROM workspaces WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(card, None, "a refused card is not stored");

    let fits = json!({"id": id, "agent_card": {"description": "x".repeat(60 * 1024)}});
    assert_eq!(stack.post("/registry/register", fits).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_workspace_list_pages_with_an_opaque_cursor() {
    let stack = Stack::builder().workers(0).start().await;
    let mut created = vec![];
    for n in 0..7 {
        created.push(stack.create(json!({"name": format!("w{n}"), "external": true})).await);
    }
    let ids = |body: &Value| -> Vec<String> {
        body.as_array().expect("an array").iter().map(|w| w["id"].as_str().unwrap().to_string()).collect()
    };

    let (status, headers, body) = get_with_headers(&stack, "/workspaces").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), created, "the whole list, oldest first");
    assert!(headers.get("x-next-cursor").is_none(), "one page holds it all");

    let mut paged = vec![];
    let mut pages = 0;
    let mut path = "/workspaces?status=awaiting_agent&limit=3".to_string();
    loop {
        let (status, headers, body) = get_with_headers(&stack, &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = ids(&body);
        assert!(page.len() <= 3);
        paged.extend(page);
        pages += 1;
        match headers.get("x-next-cursor").and_then(|v| v.to_str().ok()) {
            Some(cursor) => path = format!("/workspaces?status=awaiting_agent&limit=3&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "the cursor does not advance");
    }
    assert_eq!(paged, created, "pages neither skip nor repeat");
    assert_eq!(pages, 3);

    for bad in ["limit=0", "limit=501", "cursor=not-a-cursor", "cursor=AAAA"] {
        let r = stack.get(&format!("/workspaces?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        let field = bad.split('=').next().unwrap();
        assert!(r.error().starts_with(field), "{bad}: {}", r.body);
    }
    assert_eq!(stack.get("/workspaces?limit=500").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_burst_of_heartbeats_gets_429_and_a_later_one_succeeds() {
    let stack =
        Stack::builder().workers(0).env("REGISTRY_RATE_BURST", "3").env("REGISTRY_RATE_PER_SECOND", "1").start().await;
    let noisy = stack.create(json!({"name": "noisy", "external": true, "url": "http://127.0.0.1:8000"})).await;
    let quiet = stack.create(json!({"name": "quiet", "external": true, "url": "http://127.0.0.1:8000"})).await;
    let heartbeat = |id: &str| {
        let req = stack.client.post(format!("{}/registry/heartbeat", stack.url)).bearer_auth(ADMIN);
        req.json(&json!({"workspace_id": id})).send()
    };

    let mut statuses = vec![];
    let mut refused = None;
    for _ in 0..10 {
        let r = heartbeat(&noisy).await.expect("request");
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS && refused.is_none() {
            let retry_after = r.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            refused = Some((retry_after, r.json::<Value>().await.expect("JSON body")));
        }
    }
    assert!(statuses[..3].iter().all(|s| *s == StatusCode::OK), "the burst is allowed: {statuses:?}");
    let (retry_after, body) = refused.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After: {retry_after:?}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("too many")), "{body}");

    let r = heartbeat(&quiet).await.expect("request");
    assert_eq!(r.status(), StatusCode::OK, "each workspace has its own budget");
    eventually(Duration::from_secs(10), "a heartbeat to be accepted again", || async {
        (heartbeat(&noisy).await.expect("request").status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_api_refuses_to_start_without_an_admin_token() {
    let out = tokio::process::Command::new(bin("api"))
        .env_clear()
        // Empty counts as unset; nothing is reachable, so only the token check can end it.
        .env("ADMIN_TOKEN", "")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("API_ADDR", "127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.expect("the api exits").expect("run api");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("ADMIN_TOKEN"), "{text}");
}

#[tokio::test]
async fn websocket_tokens_never_reach_the_log() {
    // Debug is where the HTTP trace layer's spans are recorded.
    let stack = Stack::builder().workers(0).env("RUST_LOG", "debug").start().await;
    let secret = format!("SECRET-{}", Uuid::new_v4());
    let ws = stack.url.replacen("http", "ws", 1);
    let refused = tokio_tungstenite::connect_async(format!("{ws}/ws?token={secret}")).await;
    assert!(refused.is_err(), "an unknown token opens nothing");
    let mut socket = admin_socket(&stack).await;
    socket.close(None).await.expect("close");

    let api = stack.api.as_ref().expect("api");
    let log = eventually(Duration::from_secs(10), "the requests to be logged", || {
        let log = api.log_text();
        async move { (log.lines().filter(|l| l.contains("/ws")).count() >= 2).then_some(log) }
    })
    .await;
    assert!(!log.contains(&secret), "the refused token is in the log");
    assert!(!log.contains(ADMIN), "the admin token is in the log");
}
