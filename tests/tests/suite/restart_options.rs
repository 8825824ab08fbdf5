//! What a restart can ask for beyond a new instance: `reset` (the agent starts a fresh
//! session: the flag reaches the container's environment) and `upgrade` (the workspace moves
//! to the image configured now; without it, it stays on the image it was first started
//! from, whatever the configured tag points at meanwhile).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tests::{Stack, container_name, docker, require_docker_image};

const ONLINE: Duration = Duration::from_secs(90);

fn image_id(reference: &str) -> String {
    docker(&["image", "inspect", "-f", "{{.Id}}", reference]).trim().to_string()
}

fn container_image(id: &str) -> String {
    docker(&["inspect", "-f", "{{.Image}}", &container_name(id)]).trim().to_string()
}

fn container_env(id: &str) -> Vec<String> {
    docker(&["inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", &container_name(id)])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Removes the test's image tag and what it pointed at, passed or not.
struct Untag(String);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[tokio::test]
async fn a_restart_keeps_the_pinned_image_unless_asked_to_upgrade_and_reset_reaches_the_agent() {
    let stub = require_docker_image();
    let tag = format!("ws-pin-test-{}:current", uuid::Uuid::new_v4().simple());
    docker(&["tag", &stub, &tag]);
    let _untag = Untag(tag.clone());
    let stack = Stack::builder().env("WORKSPACE_IMAGE_DEFAULT", &tag).start().await;

    let r = stack.post("/workspaces?wait=60", json!({"name": "pinned"})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let first = image_id(&tag);
    assert_eq!(stack.workspace(&id).await["runtime_image"], first.as_str(), "the image is recorded at provision");
    assert_eq!(container_image(&id), first);
    assert!(!container_env(&id).iter().any(|e| e.starts_with("RESET_SESSION=")), "{:?}", container_env(&id));

    // The configured tag moves to another image.
    docker(&["commit", &container_name(&id), &tag]);
    let second = image_id(&tag);
    let _second = Untag(second.clone());
    assert_ne!(first, second);

    let r = stack.post(&format!("/workspaces/{id}/restart?reset=true"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["reset_session"], true, "{}", r.body);
    let op_id = r.body["op_id"].as_str().unwrap().to_string();
    let op = stack.get(&format!("/ops/{op_id}")).await.body;
    assert_eq!((op["reset_session"].clone(), op["upgrade_image"].clone()), (json!(true), json!(false)), "{op}");
    stack.ops_settled(&id, ONLINE).await;
    stack.wait_status(&id, "online", ONLINE).await;
    assert_eq!(container_image(&id), first, "a restart stays on the pinned image");
    assert!(container_env(&id).contains(&"RESET_SESSION=1".to_string()), "{:?}", container_env(&id));

    // The body form, and the upgrade.
    let r = stack.post(&format!("/workspaces/{id}/restart?wait=60"), json!({"upgrade": true})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "online", "{}", r.body);
    assert_eq!(container_image(&id), second, "an upgrade moves to the image configured now");
    assert_eq!(stack.workspace(&id).await["runtime_image"], second.as_str());
    assert!(!container_env(&id).iter().any(|e| e.starts_with("RESET_SESSION=")), "reset was not asked this time");

    let r = stack.post(&format!("/workspaces/{id}/restart"), json!({"reset": "yes"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = stack.post(&format!("/workspaces/{id}/restart?reset=maybe"), json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}
