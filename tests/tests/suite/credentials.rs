//! No way in without a credential, and `online` means the current instance registered:
//! bootstrap secrets (single-use, expiring, hashed), tokens revoked with their instance,
//! external tokens at create and rotate.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tests::{ADMIN, Stack, bootstrap_secret_of, docker, ec2_env, eventually, live_instances_of, require_docker_image};

const LONG: Duration = Duration::from_secs(90);

fn register_body(id: &str) -> String {
    json!({"id": id, "url": "http://127.0.0.1:8000"}).to_string()
}

#[tokio::test]
async fn a_register_without_a_credential_is_refused_and_takes_nothing_over() {
    // No worker: the workspace waits in `provisioning`, the window the bootstrap used to leave open.
    let stack = Stack::builder().workers(0).start().await;
    let id = stack.create(json!({"name": "no-worker"})).await;
    let r = stack.raw("POST", "/registry/register", None, Some(&register_body(&id))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.error().contains("bootstrap secret"), "the error says what is needed: {}", r.body);
    let r = stack.raw("POST", "/registry/register", Some("made-up-secret"), Some(&register_body(&id))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let ws = stack.workspace(&id).await;
    assert_eq!(ws["status"], "provisioning");
    assert!(ws["url"].is_null(), "the caller's URL was not stored: {ws}");
}

#[tokio::test]
async fn an_ec2_workspace_comes_online_through_its_bootstrap_secret_once_and_not_after_it_expires() {
    let mut stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    stack.add_worker_with(&ec2_env(true));
    let id = stack.create(json!({"name": "cloud"})).await;
    stack.ops_settled(&id, LONG).await;
    let live = live_instances_of(&id).await;
    assert_eq!(live.len(), 1, "{live:?}");
    let secret = bootstrap_secret_of(&live[0].id).await;

    // Stored hashed, and valid for exactly the provision timeout (10 minutes by default).
    let (stored, valid_for): (i64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE secret_hash = sha256(convert_to($2, 'UTF8'))),
                max(extract(epoch FROM expires_at - created_at))::float8
           FROM workspace_bootstraps WHERE workspace_id = $1::uuid",
    )
    .bind(&id)
    .bind(&secret)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    assert!((599.0..=601.0).contains(&valid_for), "{valid_for}");
    let plaintext_stored: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM workspace_bootstraps WHERE position(convert_to($1, 'UTF8') IN secret_hash) > 0)",
    )
    .bind(&secret)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert!(!plaintext_stored);

    let r = stack.raw("POST", "/registry/register", Some(&secret), Some(&register_body(&id))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = r.body["auth_token"].as_str().expect("the secret is exchanged for the workspace token").to_string();
    assert_eq!(stack.status_of(&id).await, "online");
    let hb = json!({"workspace_id": id}).to_string();
    assert_eq!(stack.raw("POST", "/registry/heartbeat", Some(&token), Some(&hb)).await.status, StatusCode::OK);

    // Used: a second register with it is refused.
    let r = stack.raw("POST", "/registry/register", Some(&secret), Some(&register_body(&id))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a used secret: {}", r.body);
    // The secret is no token either.
    assert_eq!(
        stack.raw("POST", "/registry/heartbeat", Some(&secret), Some(&hb)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Expired: a restart mints a new secret; once past its deadline it is refused.
    let r = stack.post(&format!("/workspaces/{id}/restart"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    stack.ops_settled(&id, LONG).await;
    let live = live_instances_of(&id).await;
    assert_eq!(live.len(), 1, "{live:?}");
    let fresh = bootstrap_secret_of(&live[0].id).await;
    assert_ne!(fresh, secret);
    assert_eq!(
        stack.raw("POST", "/registry/heartbeat", Some(&token), Some(&hb)).await.status,
        StatusCode::UNAUTHORIZED,
        "the old instance's token died with it"
    );
    sqlx::query(
        "UPDATE workspace_bootstraps SET expires_at = now() - interval '1 second' WHERE workspace_id = $1::uuid",
    )
    .bind(&id)
    .execute(&stack.pool)
    .await
    .unwrap();
    let r = stack.raw("POST", "/registry/register", Some(&fresh), Some(&register_body(&id))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "an expired secret: {}", r.body);
    assert_eq!(stack.status_of(&id).await, "provisioning");
}

#[tokio::test]
async fn a_rescued_ec2_start_adopts_the_instance_and_its_secret_still_registers() {
    // The first worker starts the instance, then sits (failpoint) before recording it and is
    // killed; the rescuer adopts that instance, which holds the first claim's secret.
    let mut stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let mut slow = ec2_env(true);
    slow.push(("FAILPOINT_AFTER_START_SECONDS", "300".into()));
    let victim = stack.add_worker_with(&slow);
    let id = stack.create(json!({"name": "adopted"})).await;
    let first = eventually(LONG, "the first claim to start an instance", || async {
        let live = live_instances_of(&id).await;
        (live.len() == 1).then(|| live[0].id.clone())
    })
    .await;
    stack.workers[victim].signal("KILL");
    stack.add_worker_with(&ec2_env(true));
    stack.ops_settled(&id, LONG).await;
    let op = stack.ops(&id).await.into_iter().last().expect("the provision");
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["attempts"], 2, "the op was rescued: {op}");
    let live = live_instances_of(&id).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id, first, "the rescuer adopted the instance, it did not start another");

    let secret = bootstrap_secret_of(&first).await;
    let r = stack.raw("POST", "/registry/register", Some(&secret), Some(&register_body(&id))).await;
    assert_eq!(r.status, StatusCode::OK, "the adopted instance can register: {}", r.body);
    assert_eq!(stack.status_of(&id).await, "online");
    let live_secrets: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM workspace_bootstraps
          WHERE workspace_id = $1::uuid AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(&id)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(live_secrets, 0, "one registration per start: the rescuer's unused secret is revoked");
}

#[tokio::test]
async fn a_docker_workspace_registers_with_its_secret_and_the_replaced_instance_can_do_nothing() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let r = stack.post("/workspaces?wait=60", json!({"name": "docker-bootstrap"})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let used: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM workspace_bootstraps WHERE workspace_id = $1::uuid AND used_at IS NOT NULL",
    )
    .bind(&id)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(used, 1, "the agent came in with the secret delivered into its container");

    let old_token = stack.agent_token(&id).await;

    // Replace the instance: the new one registers with its own secret.
    let r = stack.post(&format!("/workspaces/{id}/restart?wait=60"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(stack.status_of(&id).await, "online");
    // Whatever the old instance still holds is dead: it can neither register nor heartbeat.
    let hb = json!({"workspace_id": id}).to_string();
    let r = stack.raw("POST", "/registry/register", Some(&old_token), Some(&register_body(&id))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = stack.raw("POST", "/registry/heartbeat", Some(&old_token), Some(&hb)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
}

#[tokio::test]
async fn a_provision_that_finds_the_workspace_online_checks_its_instance_and_starts_a_missing_one() {
    require_docker_image();
    let stack = Stack::builder().start().await;
    let r = stack.post("/workspaces?wait=60", json!({"name": "ghost"})).await;
    assert_eq!(r.body["status"], "online", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let uuid: uuid::Uuid = id.parse().unwrap();
    // The container disappears behind the platform's back while the row still says online,
    // and a provision is asked for (as a rescued one would find it).
    docker(&["rm", "-f", &tests::container_name(&id)]);
    let mut tx = jobs::db::begin(&stack.pool).await.unwrap();
    let ws = jobs::store::workspaces::lock(&mut tx, uuid).await.unwrap().unwrap();
    assert_eq!(ws.status, jobs::domain::Status::Online);
    let (op, _) = jobs::ops::request(&mut tx, &ws, jobs::domain::OpKind::Provision, "test", "test").await.unwrap();
    tx.commit().await.unwrap();
    let done = eventually(LONG, "the provision to finish", || async {
        let r = stack.get(&format!("/ops/{}", op.id)).await;
        (r.body["status"] == "succeeded" || r.body["status"] == "failed").then_some(r.body)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["result"].as_str().unwrap_or_default().starts_with("started docker"), "{done}");
    stack.wait_status(&id, "online", LONG).await;
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &tests::container_name(&id)]), "true");
}

#[tokio::test]
async fn an_external_workspace_gets_its_token_at_create_and_a_new_one_by_rotation() {
    let stack = Stack::builder().workers(0).start().await;
    for body in [
        json!({"name": "ext", "runtime": "external"}),
        json!({"name": "ext-url", "runtime": "external", "url": "http://127.0.0.1:9000"}),
    ] {
        let r = stack.post("/workspaces", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        let token = r.body["connection"]["auth_token"].as_str().expect("a token at create").to_string();
        assert_eq!(
            stack.raw("POST", "/registry/register", None, Some(&register_body(&id))).await.status,
            StatusCode::UNAUTHORIZED
        );
        let r = stack.raw("POST", "/registry/register", Some(&token), Some(&register_body(&id))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(stack.status_of(&id).await, "online");

        let r = stack.raw("POST", &format!("/workspaces/{id}/external/rotate"), Some(&token), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "rotation is the admin's: {}", r.body);
        let r = stack.get(&format!("/workspaces/{id}/external/connection")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let shown = &r.body["connection"];
        assert_eq!(shown["auth_token"], "", "a stored token is never shown again: {shown}");
        assert_eq!(shown["workspace_id"], id.as_str());
        let platform = shown["platform_url"].as_str().expect("platform_url");
        assert_eq!(shown["registry_endpoint"], format!("{platform}/registry/register"));
        assert_eq!(shown["heartbeat_endpoint"], format!("{platform}/registry/heartbeat"));
        for snippet in ["curl_register_template", "python_snippet"] {
            let text = shown[snippet].as_str().expect(snippet);
            assert!(text.contains(&id) && text.contains("<token>") && !text.contains(&token), "{snippet}: {text}");
        }

        let r = stack.post(&format!("/workspaces/{id}/external/rotate"), json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let rotated = r.body["connection"]["auth_token"].as_str().expect("the new token").to_string();
        assert_eq!(r.body["connection"]["python_snippet"], shown["python_snippet"], "one builder for both");
        let hb = json!({"workspace_id": id}).to_string();
        assert_eq!(
            stack.raw("POST", "/registry/heartbeat", Some(&token), Some(&hb)).await.status,
            StatusCode::UNAUTHORIZED
        );
        let r = stack.raw("POST", "/registry/register", Some(&token), Some(&register_body(&id))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the old token is dead: {}", r.body);
        let r = stack.raw("POST", "/registry/register", Some(&rotated), Some(&register_body(&id))).await;
        assert_eq!(r.status, StatusCode::OK, "the new token registers: {}", r.body);
        assert_eq!(stack.raw("POST", "/registry/heartbeat", Some(&rotated), Some(&hb)).await.status, StatusCode::OK);
        let rotations: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM structure_events WHERE event_type = 'EXTERNAL_CREDENTIALS_ROTATED' AND workspace_id = $1",
        )
        .bind(id.parse::<uuid::Uuid>().unwrap())
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        assert_eq!(rotations, 1);
        // The older path rotates the same way.
        let r = stack.raw("POST", &format!("/workspaces/{id}/token"), Some(ADMIN), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_ne!(r.body["connection"]["auth_token"], rotated.as_str());
    }
    let id = stack.create(json!({"name": "runs-here"})).await;
    for (method, path) in [("POST", "rotate"), ("GET", "connection")] {
        let r = stack.raw(method, &format!("/workspaces/{id}/external/{path}"), Some(ADMIN), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert_eq!(r.body["runtime"], "langgraph", "{}", r.body);
        assert!(r.body["hint"].as_str().is_some_and(|h| h.contains("/restart")), "{}", r.body);
    }
    let r = stack.get(&format!("/workspaces/{}/external/connection", uuid::Uuid::new_v4())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}
