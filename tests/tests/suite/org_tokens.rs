//! Org API tokens: minted by the admin token only, accepted wherever the admin token is,
//! listed without their secret, dead once revoked, and minted at a bounded rate.

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{ADMIN, Stack};
use tokio_tungstenite::tungstenite::Message;

async fn mint(stack: &Stack, name: &str) -> Value {
    let r = stack.post("/org/tokens", json!({"name": name})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body
}

#[tokio::test]
async fn an_org_token_has_the_admins_reach_until_it_is_revoked() {
    let stack = Stack::builder().workers(0).start().await;
    let minted = mint(&stack, "ci").await;
    let token = minted["token"].as_str().expect("token").to_string();
    let prefix = minted["prefix"].as_str().expect("prefix").to_string();
    assert_eq!((token.len(), &token[..8]), (43, prefix.as_str()));
    assert_eq!(minted["name"], "ci");
    let org = Some(token.as_str());

    // Before any use, nothing was recorded.
    let listed = stack.get("/org/tokens").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body[0]["last_used_at"], Value::Null);

    // Admin routes.
    assert_eq!(stack.raw("GET", "/workspaces", org, None).await.status, StatusCode::OK);
    let created = stack.raw("POST", "/workspaces", org, Some(&json!({"name": "by-org"}).to_string())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    let ops = stack.ops(&id).await;
    assert_eq!(ops[0]["requested_by"], format!("org-token:{prefix}"), "ops name the token that asked for them");
    let imported = stack
        .raw(
            "POST",
            "/org/import",
            org,
            Some(&json!({"template": {"name": "o", "workspaces": [{"name": "x"}]}}).to_string()),
        )
        .await;
    assert_eq!(imported.status, StatusCode::CREATED, "{}", imported.body);
    assert_eq!(stack.raw("GET", &format!("/workspaces/{id}/ops"), org, None).await.status, StatusCode::OK);

    // Agent routes, with the admin's reach: a heartbeat for an external workspace.
    let ext = stack.post("/workspaces", json!({"name": "ext", "external": true})).await;
    assert_eq!(ext.status, StatusCode::CREATED, "{}", ext.body);
    let ext_id = ext.body["id"].as_str().expect("id").to_string();
    let ws_token = ext.body["connection"]["auth_token"].as_str().expect("auth token").to_string();
    let hb = json!({"workspace_id": ext_id}).to_string();
    assert_eq!(stack.raw("POST", "/registry/heartbeat", org, Some(&hb)).await.status, StatusCode::OK);

    // The event stream, with the token in the query as browsers send it.
    let ws_url = format!("{}/ws?token={token}", stack.url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url).await.expect("an org token opens the event stream");
    stack.create(json!({"name": "seen-on-the-stream"})).await;
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await;
    assert!(matches!(frame, Ok(Some(Ok(Message::Text(_))))), "an event arrives: {frame:?}");

    // Only the admin token itself mints org tokens; a workspace token sees none of this.
    let r = stack.raw("POST", "/org/tokens", org, Some("{}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.error().contains("admin token"), "{}", r.error());
    for (method, path) in [("GET", "/org/tokens"), ("POST", "/org/tokens"), ("POST", "/org/import")] {
        let r = stack.raw(method, path, Some(&ws_token), Some("{}")).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}: {}", r.body);
    }

    // Listed with its prefix, never its secret; its use was recorded.
    let listed = stack.get("/org/tokens").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let rows = listed.body.as_array().expect("array").clone();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0]["id"].clone(), rows[0]["prefix"].clone()), (minted["id"].clone(), json!(prefix)));
    assert_eq!((rows[0]["name"].clone(), rows[0]["created_by"].clone()), (json!("ci"), json!("admin")));
    assert!(rows[0]["last_used_at"].is_string(), "{}", rows[0]);
    assert!(!listed.body.to_string().contains(&token), "the list shows the secret");
    assert!(rows[0].get("token").is_none() && rows[0].get("token_hash").is_none(), "{}", rows[0]);
    assert_eq!(stack.raw("GET", "/org/tokens", org, None).await.status, StatusCode::OK, "an org token may list");

    // Revoked: dead at once, everywhere.
    let path = format!("/org/tokens/{}", minted["id"].as_str().expect("id"));
    let r = stack.delete(&path).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, json!({"revoked": true})));
    assert_eq!(stack.delete(&path).await.status, StatusCode::NOT_FOUND, "already revoked");
    assert_eq!(stack.delete(&format!("/org/tokens/{}", uuid::Uuid::new_v4())).await.status, StatusCode::NOT_FOUND);
    assert_eq!(stack.delete("/org/tokens/nope").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(stack.raw("GET", "/workspaces", org, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stack.raw("POST", "/registry/heartbeat", org, Some(&hb)).await.status, StatusCode::UNAUTHORIZED);
    assert!(tokio_tungstenite::connect_async(&ws_url).await.is_err(), "a revoked token opens no event stream");
    assert_eq!(stack.get("/org/tokens").await.body, json!([]), "only live tokens are listed");
}

#[tokio::test]
async fn minting_org_tokens_is_rate_limited() {
    let stack = Stack::builder().workers(0).env("ORG_TOKEN_MINTS_PER_HOUR", "3").start().await;
    for i in 0..3 {
        mint(&stack, &format!("t{i}")).await;
    }
    let refused = stack
        .client
        .post(format!("{}/org/tokens", stack.url))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=1200).contains(&retry_after), "one mint of 3 per hour refills in 20 minutes: {retry_after}");
    let body: Value = refused.json().await.expect("JSON body");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("too many org token mints") && error.contains("3 per hour"), "{error}");
    assert_eq!(stack.get("/org/tokens").await.body.as_array().map(Vec::len), Some(3), "the refused mint wrote nothing");

    // A malformed body is a 400 whatever the limit: it is read before the limit is spent.
    let r = stack.post("/org/tokens", json!({"name": "x", "scope": "all"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("scope"), "{}", r.error());
}
