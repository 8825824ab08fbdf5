//! `?wait=` and the event stream.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{ADMIN, Stack, require_docker_image};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn wait_returns_the_final_state_or_202_with_the_op_when_time_runs_out() {
    // No worker at all: the request is accepted and queued, and the wait runs out.
    let stack = Stack::builder().workers(0).start().await;
    let r = stack.post("/workspaces?wait=0.5", json!({"name": "patient"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["op"]["status"], "queued", "{}", r.body);
    assert_eq!(r.body["op"]["kind"], "provision");
    let id = r.body["id"].as_str().unwrap().to_string();
    let op_id = r.body["op_id"].as_str().unwrap().to_string();
    let op = stack.get(&format!("/ops/{op_id}")).await;
    assert_eq!(op.status, StatusCode::OK);
    assert_eq!(op.body["workspace_id"], id.as_str());

    // A worker comes up later and the queued op runs: nothing was lost.
    require_docker_image();
    let mut stack = stack;
    stack.add_worker(&[]);
    let r = stack.post(&format!("/workspaces/{id}/restart?wait=60"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "online", "{}", r.body);

    let bad = stack.post("/workspaces?wait=forever", json!({"name": "x"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = stack.post("/workspaces?wait=100000", json!({"name": "x"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn events_written_by_a_worker_reach_a_websocket_client_of_the_api() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let ws_url = format!("{}/ws?token={ADMIN}", stack.url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.expect("websocket connect");

    let id = stack.create(json!({"name": "watched"})).await;
    let mut seen: Vec<String> = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // WORKSPACE_STARTED is written only by the worker; WORKSPACE_ONLINE by the agent's register.
    while !(seen.contains(&"WORKSPACE_STARTED".to_string()) && seen.contains(&"WORKSPACE_ONLINE".to_string())) {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("events seen before the deadline: {seen:?}"))
            .expect("socket open")
            .expect("message");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("event JSON");
            assert!(v["timestamp"].is_string() && v.get("payload").is_some(), "{v}");
            if v["workspace_id"] == id.as_str() {
                seen.push(v["event"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(seen.first().map(String::as_str), Some("WORKSPACE_PROVISIONING"), "{seen:?}");

    let r = stack.get(&format!("/events?workspace_id={id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    let logged: Vec<&str> = r.body.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert!(logged.contains(&"WORKSPACE_STARTED") && logged.contains(&"WORKSPACE_ONLINE"), "{logged:?}");

    let refused = tokio_tungstenite::connect_async(format!("{}/ws", stack.url.replacen("http", "ws", 1))).await;
    assert!(refused.is_err(), "the event stream needs the admin token");
}
