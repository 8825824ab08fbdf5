//! `GET /openapi.json` is the api's contract: served without a token, and schemathesis,
//! run against a live api with the admin token, finds no server error and no answer that
//! the document does not describe.

use std::path::PathBuf;
use std::process::Command;

use reqwest::StatusCode;
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

/// Runs schemathesis with the committed configuration (`tests/schemathesis.toml`) against a
/// live api and its database, no worker: every check must pass. Its output, with the count
/// of test cases it ran, is printed.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let bin = std::env::var("SCHEMATHESIS_BIN")
        .expect("SCHEMATHESIS_BIN is not set: run the tests with `./dev/test`, which installs schemathesis");
    let stack = Stack::builder().workers(0).start().await;
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let report = std::env::temp_dir().join(format!("ws-schemathesis-{}", std::process::id()));
    let url = format!("{}/openapi.json", stack.url);
    let auth = format!("Authorization: Bearer {ADMIN}");
    let (status, out) = tokio::task::spawn_blocking(move || {
        let out = Command::new(&bin)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &url, "--header", &auth, "--no-color", "--report-dir"])
            .arg(&report)
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis");
        (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    })
    .await
    .expect("schemathesis thread");
    println!("{out}");
    // The summary line names how many test cases ran; a run that generated none proves nothing.
    let cases = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Test cases:"))
        .find_map(|rest| rest.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .unwrap_or_else(|| panic!("schemathesis printed no test case count:\n{out}"));
    println!("schemathesis ran {cases} test cases");
    assert!(cases > 1000, "schemathesis ran only {cases} test cases");
    assert!(status.success(), "schemathesis failed ({status}); its output is above");
    assert!(stack.api.as_ref().is_some_and(|api| !api.log_text().contains("panicked")), "the api panicked");
}
