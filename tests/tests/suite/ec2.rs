//! The EC2 backend end to end against the moto EC2 emulator, and the switch between backends.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tests::{
    Stack, bootstrap_secret_of, containers_of, ec2_env, instances_of, live_instances_of, require_docker_image,
};

const LONG: Duration = Duration::from_secs(90);

/// What the agent on the workspace's live instance would do: register with the bootstrap
/// secret its user data carries, and come online with the token it gets back.
async fn agent_registers(stack: &Stack, id: &str) -> String {
    let live = live_instances_of(id).await;
    assert_eq!(live.len(), 1, "{live:?}");
    let secret = bootstrap_secret_of(&live[0].id).await;
    let body = json!({"id": id, "url": "http://127.0.0.1:8000"}).to_string();
    let r = stack.raw("POST", "/registry/register", Some(&secret), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["auth_token"].as_str().expect("the bootstrap secret is exchanged for a token").to_string()
}

#[tokio::test]
async fn ec2_workspaces_get_tagged_instances_that_restart_pause_resume_and_delete_terminate() {
    let mut stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    stack.add_worker_with(&ec2_env(true));

    let id = stack.create(json!({"name": "cloud", "tier": 2})).await;
    stack.ops_settled(&id, LONG).await;
    let ws = stack.workspace(&id).await;
    assert_eq!((ws["backend"].as_str(), ws["status"].as_str()), (Some("ec2"), Some("provisioning")), "{ws}");
    let first = live_instances_of(&id).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(ws["instance_ref"], first[0].id.as_str(), "the instance id is recorded on the workspace");
    assert_eq!(first[0].instance_type, "t3.micro", "tier 2's configured type");
    for (k, v) in [("molecule:workspace_id", id.as_str()), ("molecule:managed", "true")] {
        assert!(first[0].tags.contains(&(k.to_string(), v.to_string())), "{k}={v} missing: {:?}", first[0].tags);
    }
    let token = agent_registers(&stack, &id).await;
    assert_eq!(stack.status_of(&id).await, "online");
    assert_eq!(stack.raw("GET", &format!("/workspaces/{id}"), Some(&token), None).await.status, StatusCode::OK);

    // Restart: old instance terminated, a new one running; the old token is revoked so the
    // new agent can bootstrap.
    let r = stack.post(&format!("/workspaces/{id}/restart"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    stack.ops_settled(&id, LONG).await;
    let after = instances_of(&id).await;
    let old = after.iter().find(|i| i.id == first[0].id).expect("old instance");
    assert_eq!(old.state, "terminated");
    let live = live_instances_of(&id).await;
    assert_eq!(live.len(), 1, "{after:?}");
    assert_ne!(live[0].id, first[0].id);
    assert_eq!(
        stack.raw("GET", &format!("/workspaces/{id}"), Some(&token), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    agent_registers(&stack, &id).await;

    let r = stack.post(&format!("/workspaces/{id}/pause"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    stack.ops_settled(&id, LONG).await;
    assert!(live_instances_of(&id).await.is_empty(), "pause terminates");

    let r = stack.post(&format!("/workspaces/{id}/resume"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    stack.ops_settled(&id, LONG).await;
    assert_eq!(live_instances_of(&id).await.len(), 1, "resume starts a new instance");

    assert_eq!(stack.delete(&format!("/workspaces/{id}")).await.status, StatusCode::OK);
    let ops = stack.ops_settled(&id, LONG).await;
    assert!(ops.iter().all(|o| o["status"] == "succeeded"), "{ops:?}");
    assert!(live_instances_of(&id).await.is_empty(), "delete terminates");
    assert_eq!(instances_of(&id).await.len(), 3, "three starts, three instances, all terminated");
}

#[tokio::test]
async fn a_workspace_is_stopped_on_the_backend_that_started_it_whatever_is_configured_now() {
    require_docker_image();
    let mut stack = Stack::builder().workers(0).start().await;
    let w = stack.add_worker(&[]);

    // Started on Docker.
    let r = stack.post("/workspaces?wait=60", json!({"name": "mover"})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["backend"], "docker");

    // EC2 is enabled: the Docker workspace is still paused on Docker; nothing touches EC2.
    stack.workers[w].signal("TERM");
    stack.workers[w].wait_exit(LONG).await;
    let w = stack.add_worker_with(&ec2_env(true));
    assert_eq!(stack.post(&format!("/workspaces/{id}/pause"), json!({})).await.status, StatusCode::OK);
    stack.ops_settled(&id, LONG).await;
    assert!(containers_of(&id).is_empty(), "the Docker container was removed");
    assert!(instances_of(&id).await.is_empty(), "EC2 was not involved");

    // Resumed, it starts where new workspaces go now: EC2.
    assert_eq!(stack.post(&format!("/workspaces/{id}/resume"), json!({})).await.status, StatusCode::OK);
    stack.ops_settled(&id, LONG).await;
    assert_eq!(stack.workspace(&id).await["backend"], "ec2");
    assert_eq!(live_instances_of(&id).await.len(), 1);

    // The reverse: new workspaces go to Docker again, but this one is stopped on EC2.
    stack.workers[w].signal("TERM");
    stack.workers[w].wait_exit(LONG).await;
    stack.add_worker_with(&ec2_env(false));
    assert_eq!(stack.delete(&format!("/workspaces/{id}")).await.status, StatusCode::OK);
    let ops = stack.ops_settled(&id, LONG).await;
    assert_eq!(ops[0]["kind"], "stop");
    assert_eq!(ops[0]["status"], "succeeded", "{:?}", ops[0]);
    assert!(live_instances_of(&id).await.is_empty(), "the EC2 instance was terminated");
    assert!(containers_of(&id).is_empty());
}
