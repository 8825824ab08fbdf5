//! The lifecycle end to end: real api and worker processes, real Postgres, real Docker.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tests::{Stack, containers_of, docker, eventually, require_docker_image};

const LONG: Duration = Duration::from_secs(90);

#[tokio::test]
async fn workspace_goes_online_restarts_pauses_resumes_and_is_deleted_without_leftovers() {
    require_docker_image();
    let stack = Stack::builder().start().await;

    let started = Instant::now();
    let r = stack.post("/workspaces?wait=60", json!({"name": "lifecycle", "tier": 2})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "online", "{}", r.body);
    eprintln!("create → online: {:?}", started.elapsed());
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["backend"], "docker");

    // The container is ours: named, labelled, given its env and the live token.
    let name = tests::container_name(&id);
    assert_eq!(containers_of(&id), vec![name.clone()]);
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &name]);
    assert!(labels.contains("\"molecule.platform.managed\":\"true\""), "{labels}");
    let env = docker(&["inspect", "-f", "{{json .Config.Env}}", &name]);
    assert!(
        env.contains(&format!("WORKSPACE_ID={id}")) && env.contains(&format!("PLATFORM_URL={}", stack.url)),
        "{env}"
    );
    // The start delivered a single-use bootstrap secret there; the agent registered with it
    // and keeps the workspace token it got back in its place.
    let token = stack.agent_token(&id).await;

    // Restart: a new container, and the agent registers again.
    let old_container = docker(&["inspect", "-f", "{{.Id}}", &name]);
    let r = stack.post(&format!("/workspaces/{id}/restart?wait=60"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "online", "{}", r.body);
    assert_ne!(docker(&["inspect", "-f", "{{.Id}}", &name]), old_container);
    assert_eq!(containers_of(&id).len(), 1);
    let old = stack.raw("GET", &format!("/workspaces/{id}"), Some(&token), None).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "the old instance's token is revoked by the restart");

    // Pause stops the container.
    let r = stack.post(&format!("/workspaces/{id}/pause"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["paused_count"], 1);
    assert_eq!(stack.status_of(&id).await, "paused");
    eventually(LONG, "the paused workspace's container to go", || async {
        containers_of(&id).is_empty().then_some(())
    })
    .await;
    assert_eq!(stack.post(&format!("/workspaces/{id}/pause"), json!({})).await.status, StatusCode::CONFLICT);

    // Resume provisions it again.
    let r = stack.post(&format!("/workspaces/{id}/resume?wait=60"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "online", "{}", r.body);
    assert_eq!(containers_of(&id).len(), 1);

    // Delete: tombstoned at once, container removed by the stop op.
    let r = stack.delete(&format!("/workspaces/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "removed");
    assert_eq!(stack.status_of(&id).await, "removed");
    let ops = stack.ops_settled(&id, LONG).await;
    assert!(containers_of(&id).is_empty(), "no container may be left after delete");
    let kinds: Vec<(&str, &str, &str)> = ops
        .iter()
        .rev()
        .map(|o| (o["kind"].as_str().unwrap(), o["reason"].as_str().unwrap(), o["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("provision", "create", "succeeded"),
            ("restart", "restart", "succeeded"),
            ("stop", "pause", "succeeded"),
            ("provision", "resume", "succeeded"),
            ("stop", "delete", "succeeded"),
        ]
    );
    let listed = stack.get("/workspaces").await;
    assert!(listed.body.as_array().unwrap().iter().all(|w| w["id"] != id.as_str()), "removed rows are not listed");
}

#[tokio::test]
async fn fifty_concurrent_restarts_run_at_most_two_and_end_online() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let r = stack.post("/workspaces?wait=60", json!({"name": "busy"})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();

    let path = format!("/workspaces/{id}/restart");
    let results = futures::future::join_all((0..50).map(|_| stack.post(&path, json!({})))).await;
    for r in &results {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let mut op_ids: Vec<&str> = results.iter().map(|r| r.body["op_id"].as_str().unwrap()).collect();
    op_ids.sort();
    op_ids.dedup();
    assert!(op_ids.len() <= 2, "50 requests made {} restart ops", op_ids.len());

    let ops = stack.ops_settled(&id, LONG).await;
    let restarts = ops.iter().filter(|o| o["kind"] == "restart").count();
    assert!((1..=2).contains(&restarts), "{restarts} restarts ran: {ops:?}");
    assert!(ops.iter().all(|o| o["status"] == "succeeded"), "{ops:?}");
    stack.wait_status(&id, "online", LONG).await;
    assert_eq!(containers_of(&id).len(), 1);
}

#[tokio::test]
async fn create_then_immediate_delete_leaves_no_container_and_no_running_op() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let id = stack.create(json!({"name": "short-lived"})).await;
    let r = stack.delete(&format!("/workspaces/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let ops = stack.ops_settled(&id, LONG).await;
    assert!(ops.iter().all(|o| o["status"] != "running" && o["status"] != "queued"));
    let stop = ops.iter().find(|o| o["kind"] == "stop").expect("a stop op");
    assert_eq!(stop["status"], "succeeded", "{stop}");
    assert!(containers_of(&id).is_empty(), "a container was left behind");
    assert_eq!(stack.status_of(&id).await, "removed");
}

#[tokio::test]
async fn delete_of_a_parent_needs_confirmation_and_cascades() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let parent = stack.create(json!({"name": "team"})).await;
    let child = stack.create(json!({"name": "member", "parent_id": parent})).await;
    let r = stack.delete(&format!("/workspaces/{parent}")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["status"], "confirmation_required");
    assert_eq!(r.body["children_count"], 1);
    assert_eq!(r.body["children"][0]["id"], child.as_str());
    assert!(r.body["error"].is_string());
    assert_ne!(stack.status_of(&parent).await, "removed", "an unconfirmed delete changes nothing");

    let r = stack.delete(&format!("/workspaces/{parent}?confirm=true")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["cascade_deleted"], 1);
    for id in [&parent, &child] {
        assert_eq!(stack.status_of(id).await, "removed");
        stack.ops_settled(id, LONG).await;
        assert!(containers_of(id).is_empty());
    }
}

#[tokio::test]
async fn collapse_removes_the_children_and_patch_refuses_a_parent_cycle() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let team = stack.create(json!({"name": "team"})).await;
    let a = stack.create(json!({"name": "a", "parent_id": team})).await;
    let b = stack.create(json!({"name": "b", "parent_id": team})).await;
    for id in [&team, &a, &b] {
        stack.wait_status(id, "online", LONG).await;
    }

    // Moving the team under its own child would make a cycle.
    let r = stack
        .raw("PATCH", &format!("/workspaces/{team}"), Some(tests::ADMIN), Some(&json!({"parent_id": a}).to_string()))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = stack
        .raw(
            "PATCH",
            &format!("/workspaces/{a}"),
            Some(tests::ADMIN),
            Some(&json!({"name": "alpha", "tier": 1}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((r.body["name"].as_str(), r.body["tier"].as_i64()), (Some("alpha"), Some(1)));
    let children = stack.get(&format!("/workspaces?parent_id={team}")).await;
    assert_eq!(children.body.as_array().unwrap().len(), 2);

    let r = stack.post(&format!("/workspaces/{team}/collapse"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut removed: Vec<&str> = r.body["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    removed.sort();
    assert_eq!(removed, vec!["alpha", "b"]);
    for child in [&a, &b] {
        assert_eq!(stack.status_of(child).await, "removed");
        stack.ops_settled(child, LONG).await;
        assert!(containers_of(child).is_empty());
    }
    assert_eq!(stack.status_of(&team).await, "online", "collapse keeps the parent");
    assert_eq!(containers_of(&team).len(), 1);
}
