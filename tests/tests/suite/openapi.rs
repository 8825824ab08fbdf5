//! `GET /openapi.json` is the api's contract: served without a token, and schemathesis,
//! run against a live api with the admin token, finds no server error and no answer that
//! the document does not describe.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::json;
use tests::{ADMIN, Stack};

#[tokio::test]
async fn the_document_is_served_without_a_token_and_lists_the_routes() {
    let stack = Stack::builder().workers(0).start().await;
    let r = stack.raw("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", r.body["openapi"]);
    let paths = r.body["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/workspaces", "post"),
        ("/workspaces/{id}", "delete"),
        ("/workspaces/{id}/chat/uploads", "post"),
        ("/ws", "get"),
        ("/metrics", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not documented");
    }
    let schemes = r.body["components"]["securitySchemes"].as_object().expect("security schemes");
    assert_eq!(schemes["admin_token"]["scheme"], "bearer");
}

/// Rows the fuzzed requests can name, so that they reach each handler's logic instead of
/// its 404: random UUIDs name nothing.
struct Fixtures {
    workspace: String,
    op: String,
    external: String,
    /// Deleted, paused and collapsed by the run.
    victim: String,
    victim_op: String,
    memory: String,
    delegation: String,
    file: String,
    org_token: String,
}

async fn fixtures(stack: &Stack) -> Fixtures {
    let created = |name: &str, external: bool| {
        let body = json!({"name": name, "external": external});
        async move {
            let r = stack.post("/workspaces", body).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body
        }
    };
    let ws = created("fuzzed", false).await;
    let ext = created("fuzzed-external", true).await;
    let victim = created("fuzzed-victim", false).await;
    let id =
        |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}")).to_string();
    let workspace = id(&ws, "id");
    let external = id(&ext, "id");
    let memory =
        stack.post(&format!("/workspaces/{workspace}/memories"), json!({"content": "a fact", "scope": "LOCAL"})).await;
    assert_eq!(memory.status, StatusCode::CREATED, "{}", memory.body);
    let delegation = "fuzzed-delegation";
    let recorded = stack
        .post(
            &format!("/workspaces/{workspace}/delegations/record"),
            json!({"target_id": external, "task": "a task", "delegation_id": delegation}),
        )
        .await;
    assert_eq!(recorded.status, StatusCode::ACCEPTED, "{}", recorded.body);
    let form = Form::new().part("files", Part::bytes(b"hello".to_vec()).file_name("hello.txt"));
    let uploaded = stack
        .client
        .post(format!("{}/workspaces/{workspace}/chat/uploads", stack.url))
        .bearer_auth(ADMIN)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(uploaded.status(), StatusCode::OK);
    let uploaded: serde_json::Value = uploaded.json().await.expect("upload answer");
    let uri = uploaded["files"][0]["uri"].as_str().expect("uri");
    let file = uri.rsplit('/').next().expect("file id").to_string();
    let token = stack.post("/org/tokens", json!({"name": "fuzzed"})).await;
    assert_eq!(token.status, StatusCode::CREATED, "{}", token.body);
    Fixtures {
        op: id(&ws, "op_id"),
        victim_op: id(&victim, "op_id"),
        victim: id(&victim, "id"),
        memory: id(&memory.body, "id"),
        org_token: id(&token.body, "id"),
        delegation: delegation.into(),
        file,
        workspace,
        external,
    }
}

/// The committed configuration, and per operation the fixtures its path names.
fn config(committed: &str, f: &Fixtures) -> String {
    let mut out = committed.to_string();
    let mut bind = |path_regex: &str, methods: &str, params: &[(&str, &str)]| {
        let params: Vec<String> = params.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"")).collect();
        out.push_str(&format!(
            "\n[[operations]]\ninclude-path-regex = '{path_regex}'\ninclude-method-regex = '{methods}'\nparameters = {{ {} }}\n",
            params.join(", ")
        ));
    };
    let ws = f.workspace.as_str();
    bind(r"^/workspaces/\{id\}$", "^(GET|PATCH)$", &[("path.id", ws)]);
    bind(r"^/workspaces/\{id\}$", "^DELETE$", &[("path.id", &f.victim)]);
    // An operation's own parameters replace the configuration's, so `wait` is repeated.
    bind(r"^/workspaces/\{id\}/(pause|collapse|resume)$", ".", &[("path.id", &f.victim), ("query.wait", "0")]);
    bind(
        r"^/workspaces/\{id\}/(restart|ops|activity|a2a|chat/uploads|delegate|delegations|delegations/record|memories)$",
        ".",
        &[("path.id", ws), ("query.wait", "0")],
    );
    bind(r"^/workspaces/\{id\}/(token|external/rotate|external/connection)$", ".", &[("path.id", &f.external)]);
    bind(r"^/workspaces/\{id\}/memories/\{memory_id\}$", ".", &[("path.id", ws), ("path.memory_id", &f.memory)]);
    bind(
        r"^/workspaces/\{id\}/delegations/\{delegation_id\}/",
        ".",
        &[("path.id", ws), ("path.delegation_id", &f.delegation)],
    );
    bind(r"^/workspaces/\{id\}/pending-uploads/", ".", &[("path.id", ws), ("path.file_id", &f.file)]);
    bind(r"^/ops/\{id\}$", ".", &[("path.id", &f.op)]);
    bind(r"^/admin/jobs/\{id\}$", ".", &[("path.id", &f.op)]);
    bind(r"^/admin/jobs/\{id\}/(retry|cancel)$", ".", &[("path.id", &f.victim_op)]);
    bind(r"^/admin/queues/\{kind\}/", ".", &[("path.kind", "restart")]);
    bind(r"^/org/tokens/\{id\}$", ".", &[("path.id", &f.org_token)]);
    bind(r"^/ws$", ".", &[("query.token", ADMIN)]);
    out
}

/// `ws_admin=<session>`, from a dashboard login with the admin token.
async fn dashboard_session(stack: &Stack) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let r = client
        .post(format!("{}/admin/ui/login", stack.url))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("dashboard login");
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "dashboard login");
    let cookie = r.headers().get(reqwest::header::SET_COOKIE).and_then(|v| v.to_str().ok()).expect("session cookie");
    cookie.split(';').next().expect("cookie pair").to_string()
}

/// Runs schemathesis with the committed configuration (`tests/schemathesis.toml`, plus the
/// fixtures' ids) against a live api and its database, no worker: every check must pass.
/// Its output, with the count of test cases it ran, is printed.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let bin = std::env::var("SCHEMATHESIS_BIN")
        .expect("SCHEMATHESIS_BIN is not set: run the tests with `./dev/test`, which installs schemathesis");
    let stack = Stack::builder().workers(0).start().await;
    let committed = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml"))
        .expect("tests/schemathesis.toml");
    let fixtures = fixtures(&stack).await;
    let dir = std::env::temp_dir().join(format!("ws-schemathesis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("schemathesis dir");
    let config_path = dir.join("schemathesis.toml");
    std::fs::write(&config_path, config(&committed, &fixtures)).expect("write config");
    let url = format!("{}/openapi.json", stack.url);
    let auth = format!("Authorization: Bearer {ADMIN}");
    // With a dashboard session the pages answer, so their filters and ids are fuzzed too,
    // and the forms reach their CSRF check (which a generated token never passes).
    let session = format!("Cookie: {}", dashboard_session(&stack).await);
    let workdir = dir.clone();
    let (status, out) = tokio::task::spawn_blocking(move || {
        let out = Command::new(&bin)
            .current_dir(&dir)
            .arg("--config-file")
            .arg(&config_path)
            .args(["run", &url, "--header", &auth, "--header", &session, "--no-color"])
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis");
        (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    })
    .await
    .expect("schemathesis thread");
    let _ = std::fs::remove_dir_all(&workdir);
    println!("{out}");
    // The summary names how many test cases ran ("Test cases:" then "N generated, ..."); a
    // run that generated few proves little.
    let mut lines = out.lines().skip_while(|l| l.trim() != "Test cases:").skip(1);
    let cases: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("schemathesis printed no test case count:\n{out}"));
    // Straight to the process's stderr, past the test harness' capture, so the CI log shows
    // the run's summary and count even when the test passes.
    let summary: String = out.lines().skip_while(|l| !l.contains(" SUMMARY ")).map(|l| format!("{l}\n")).collect();
    let _ = writeln!(std::io::stderr(), "{summary}schemathesis ran {cases} test cases against /openapi.json");
    assert!(status.success(), "schemathesis failed ({status}); its output is above");
    assert!(cases > 1000, "schemathesis ran only {cases} test cases");
    let api_log = stack.api.as_ref().map(|api| api.log_text()).unwrap_or_default();
    assert!(!api_log.contains("panicked"), "the api panicked:\n{api_log}");
}
