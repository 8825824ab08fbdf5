//! Bad input gets a clear 4xx with an `error` message and changes nothing.

use reqwest::StatusCode;
use serde_json::json;
use tests::{ADMIN, Stack};

/// (what, path, bearer token, raw body, expected status)
type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<String>, StatusCode);

#[tokio::test]
async fn malformed_and_hostile_requests_get_4xx_with_an_error_message() {
    let stack = Stack::builder().workers(0).start().await;
    let cases: Vec<Case> = vec![
        ("malformed JSON", "/workspaces", Some(ADMIN), Some("{\"name\": ".into()), StatusCode::BAD_REQUEST),
        ("not an object", "/workspaces", Some(ADMIN), Some("[1,2]".into()), StatusCode::BAD_REQUEST),
        ("missing name", "/workspaces", Some(ADMIN), Some("{}".into()), StatusCode::BAD_REQUEST),
        (
            "tier of the wrong type",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "a", "tier": "big"}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "tier out of range",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "a", "tier": 9}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown field",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "a", "colour": "red"}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "oversized name",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "n".repeat(256)}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "newline in name",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "a\nb"}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown runtime",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "a", "runtime": "cobol"}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "parent id not a uuid",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "a", "parent_id": "x"}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown parent",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "a", "parent_id": uuid::Uuid::new_v4()}).to_string()),
            StatusCode::NOT_FOUND,
        ),
        ("missing token", "/workspaces", None, Some(json!({"name": "a"}).to_string()), StatusCode::UNAUTHORIZED),
        ("wrong token", "/workspaces", Some("nope"), Some(json!({"name": "a"}).to_string()), StatusCode::UNAUTHORIZED),
        (
            "metadata url",
            "/workspaces",
            Some(ADMIN),
            Some(json!({"name": "a", "external": true, "url": "http://169.254.169.254/"}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, path, token, body, want) in cases {
        let r = stack.raw("POST", path, token, body.as_deref()).await;
        assert_eq!(r.status, want, "{what}: {}", r.body);
        assert!(!r.error().is_empty(), "{what}: empty error");
    }
    let huge = json!({"name": "x".repeat(2 * 1024 * 1024)}).to_string();
    // On a connection of its own: the api answers 413 without reading the rest of the body
    // and closes the connection, which the stack's pooled client would otherwise hand to
    // the next request as a broken pipe.
    let r = reqwest::Client::new()
        .post(format!("{}/workspaces", stack.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("the api answers an oversized body");
    let status = r.status();
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM workspaces").fetch_one(&stack.pool).await.unwrap();
    assert_eq!(count, 0, "no bad request may write anything");

    let unknown = uuid::Uuid::new_v4();
    for (method, path, want) in [
        ("GET", format!("/workspaces/{unknown}"), StatusCode::NOT_FOUND),
        ("POST", format!("/workspaces/{unknown}/restart"), StatusCode::NOT_FOUND),
        ("POST", format!("/workspaces/{unknown}/pause"), StatusCode::NOT_FOUND),
        ("DELETE", format!("/workspaces/{unknown}"), StatusCode::NOT_FOUND),
        ("GET", format!("/ops/{unknown}"), StatusCode::NOT_FOUND),
        ("GET", "/workspaces/not-a-uuid".to_string(), StatusCode::BAD_REQUEST),
        ("GET", "/no/such/route".to_string(), StatusCode::NOT_FOUND),
        ("PUT", "/workspaces".to_string(), StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/workspaces?status=sleeping".to_string(), StatusCode::BAD_REQUEST),
    ] {
        let r = stack.raw(method, &path, Some(ADMIN), None).await;
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        assert!(!r.error().is_empty());
    }
}

#[tokio::test]
async fn workspace_tokens_open_only_their_own_workspace() {
    let stack = Stack::builder().workers(0).start().await;
    // External workspaces without a URL get their token once, at creation.
    let a = stack.post("/workspaces", json!({"name": "a", "external": true})).await;
    let b = stack.post("/workspaces", json!({"name": "b", "external": true})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["status"], "awaiting_agent");
    let (a_id, a_token) = (a.body["id"].as_str().unwrap(), a.body["connection"]["auth_token"].as_str().unwrap());
    let b_id = b.body["id"].as_str().unwrap();

    assert_eq!(stack.raw("GET", &format!("/workspaces/{a_id}"), Some(a_token), None).await.status, StatusCode::OK);
    let r = stack.raw("GET", &format!("/workspaces/{b_id}"), Some(a_token), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(!r.error().is_empty());
    let r = stack.raw("POST", &format!("/workspaces/{b_id}/pause"), Some(a_token), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Pause, resume and collapse change whole subtrees: admin only, even on one's own workspace.
    for verb in ["pause", "resume", "collapse"] {
        let r = stack.raw("POST", &format!("/workspaces/{a_id}/{verb}"), Some(a_token), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{verb}: {}", r.body);
    }
    assert_eq!(stack.raw("GET", "/workspaces", Some(a_token), None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(stack.raw("GET", &format!("/workspaces/{a_id}"), None, None).await.status, StatusCode::UNAUTHORIZED);

    // Register: a workspace with a live token needs it; the right token brings it online.
    let body = json!({"id": b_id, "url": "http://127.0.0.1:8000"}).to_string();
    assert_eq!(stack.raw("POST", "/registry/register", None, Some(&body)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stack.raw("POST", "/registry/register", Some(a_token), Some(&body)).await.status, StatusCode::FORBIDDEN);
    let hb = json!({"workspace_id": b_id}).to_string();
    assert_eq!(stack.raw("POST", "/registry/heartbeat", Some(a_token), Some(&hb)).await.status, StatusCode::FORBIDDEN);
    let own = json!({"id": a_id, "url": "http://127.0.0.1:8000"}).to_string();
    let r = stack.raw("POST", "/registry/register", Some(a_token), Some(&own)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.get("auth_token").is_none(), "a token is only handed out when there is none");
    assert_eq!(stack.status_of(a_id).await, "online");
    let nul = json!({"workspace_id": a_id, "sample_error": "bad\u{0}byte"}).to_string();
    let r = stack.raw("POST", "/registry/heartbeat", Some(a_token), Some(&nul)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a NUL character is a client error, not a 500: {}", r.body);
    let bad = json!({"id": a_id, "url": "http://169.254.169.254/latest/meta-data"}).to_string();
    assert_eq!(
        stack.raw("POST", "/registry/register", Some(a_token), Some(&bad)).await.status,
        StatusCode::BAD_REQUEST
    );

    // Deleting revokes the token.
    assert_eq!(stack.delete(&format!("/workspaces/{a_id}")).await.status, StatusCode::OK);
    assert_eq!(
        stack.raw("GET", &format!("/workspaces/{a_id}"), Some(a_token), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let hb = json!({"workspace_id": a_id}).to_string();
    assert_eq!(stack.raw("POST", "/registry/heartbeat", None, Some(&hb)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stack.raw("POST", "/registry/heartbeat", Some(ADMIN), Some(&hb)).await.status, StatusCode::NOT_FOUND);
}
