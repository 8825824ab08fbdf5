//! The operators' dashboard (`/admin/ui`): in headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `dev/test`), an operator logs
//! in, reads the overview, opens a failed job and retries it until it succeeds; over plain
//! HTTP, the session cookie's attributes and the refusals without a session or a CSRF token.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};
use serde_json::json;
use tests::{ADMIN, Proc, Stack, bin, eventually, poll_until, require_docker_image};

const LONG: Duration = Duration::from_secs(90);

/// A workspace whose provision failed: created while no worker runs, then failed by a worker
/// that has no backend. That worker is stopped again, so a retry waits for the next one.
async fn failed_provision(stack: &mut Stack, name: &str) -> (String, String) {
    let ws = stack.create(json!({"name": name, "tier": 2})).await;
    let op = stack.ops(&ws).await.last().and_then(|o| o["id"].as_str()).expect("the create's op").to_string();
    let w = stack.add_worker(&[("DOCKER_ENABLED", "false")]);
    eventually(LONG, "the provision to fail", || async {
        (stack.get(&format!("/admin/jobs/{op}")).await.body["job"]["state"] == "failed").then_some(())
    })
    .await;
    stack.workers[w].signal("TERM");
    assert!(stack.workers[w].wait_exit(LONG).await, "the backend-less worker exits");
    (ws, op)
}

/// A second api process on the stack's database, with its own admin token; and its URL.
async fn api_replica(stack: &Stack, admin_token: &str) -> (Proc, String) {
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", stack.db.url.as_str()),
        ("ADMIN_TOKEN", admin_token),
        ("API_ADDR", "127.0.0.1:0"),
        ("LOG_FORMAT", "pretty"),
        ("NO_COLOR", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let api = Proc::spawn("api-replica", bin("api"), &[], &env);
    let url = eventually(Duration::from_secs(30), "the replica to listen", || {
        let text = api.log_text();
        async move { text.lines().find_map(|l| l.split("api listening on ").nth(1).map(|s| s.trim().to_string())) }
    })
    .await;
    (api, url)
}

/// Finds and clicks, again if the page's own reload replaced the element in between.
async fn click(c: &Client, css: &str) {
    eventually(LONG, css, || async { c.find(Locator::Css(css)).await.ok()?.click().await.ok() }).await;
}

/// A client that does not follow redirects, so each answer is seen as sent.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Logs in with `token`; returns the response's status, `Location` and `Set-Cookie`.
async fn login(stack: &Stack, token: &str) -> (StatusCode, Option<String>, Option<String>, String) {
    let r = http().post(format!("{}/admin/ui/login", stack.url)).form(&[("token", token)]).send().await.expect("login");
    let location = r.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(String::from);
    let cookie = r.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).map(String::from);
    (r.status(), location, cookie, r.text().await.expect("body"))
}

/// The hidden CSRF field of a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().expect("its value").to_string()
}

#[tokio::test]
async fn the_dashboard_refuses_requests_without_a_session_or_a_csrf_token_and_its_cookie_is_http_only_and_strict() {
    let mut stack = Stack::builder().workers(0).start().await;
    let (ws, failed) = failed_provision(&mut stack, "ui-http").await;
    let client = http();

    // No cookie: pages redirect to the login page; actions are 401s.
    let job_page = format!("/admin/ui/jobs/{failed}");
    for page in ["/admin/ui", "/admin/ui/jobs?state=failed", job_page.as_str()] {
        let r = client.get(format!("{}{page}", stack.url)).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(r.headers()[LOCATION], "/admin/ui/login", "{page}");
    }
    let r =
        client.post(format!("{}/admin/ui/jobs/{failed}/retry", stack.url)).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("log in")), "{body}");
    // A cookie naming no session is no session, nor is the admin token itself as a cookie.
    let admin_cookie = format!("ws_admin={ADMIN}");
    for cookie in ["ws_admin=forged", admin_cookie.as_str()] {
        let r = client.get(format!("{}/admin/ui", stack.url)).header("cookie", cookie).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{cookie}");
    }

    // A wrong token: the login page again, naming the problem, and no cookie.
    let (status, _, cookie, body) = login(&stack, "not-the-admin-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(cookie.is_none(), "{cookie:?}");
    assert!(body.contains("id=\"login-error\"") && body.contains("not the admin token"), "{body}");
    // A workspace's own token does not open the dashboard either.
    let external = stack.post("/workspaces", json!({"name": "ui-external", "external": true})).await;
    let ws_token = external.body["connection"]["auth_token"].as_str().expect("a workspace token").to_string();
    let (status, _, cookie, _) = login(&stack, &ws_token).await;
    assert_eq!((status, cookie), (StatusCode::UNAUTHORIZED, None));

    // The admin token: a session cookie that scripts cannot read and other sites cannot send.
    let (status, location, cookie, _) = login(&stack, ADMIN).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/admin/ui"));
    let cookie = cookie.expect("a session cookie");
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for want in ["HttpOnly", "SameSite=Strict", "Path=/admin/ui"] {
        assert!(attrs.contains(&want), "{want} in {cookie}");
    }
    assert!(!attrs.contains(&"Secure"), "plain HTTP gets no Secure cookie: {cookie}");
    let session = attrs[0].to_string();
    assert!(session.starts_with("ws_admin=") && !session.contains(ADMIN), "{session}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM admin_ui_sessions").fetch_one(&stack.pool).await.unwrap();
    assert_eq!(stored, 1);

    // Behind a TLS proxy the cookie is Secure.
    let r = client
        .post(format!("{}/admin/ui/login", stack.url))
        .header("x-forwarded-proto", "https")
        .form(&[("token", ADMIN)])
        .send()
        .await
        .unwrap();
    assert!(r.headers()[SET_COOKIE].to_str().unwrap().ends_with("; Secure"), "{:?}", r.headers()[SET_COOKIE]);

    // With the cookie: the job's page shows it failed, with its error and a Retry form.
    let page =
        client.get(format!("{}/admin/ui/jobs/{failed}", stack.url)).header("cookie", &session).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // No other site may frame the page's buttons, and no cache may keep it.
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["content-security-policy"], "frame-ancestors 'none'");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("action=\"/admin/ui/jobs/{failed}/retry\"")), "{html}");
    assert!(html.contains("no provisioning backend"), "the error is on the page: {html}");
    let csrf = csrf_of(&html);

    // A retry without the CSRF token, or with another one, is refused and retries nothing.
    let retry = format!("{}/admin/ui/jobs/{failed}/retry", stack.url);
    for form in [vec![], vec![("csrf", "wrong")], vec![("csrf", "")]] {
        let r = client.post(&retry).header("cookie", &session).form(&form).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{form:?}");
        let body: serde_json::Value = r.json().await.expect("a JSON error");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("CSRF")), "{body}");
    }
    let r = client.post(&retry).header("cookie", &session).body("").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no body at all");
    assert_eq!(stack.ops(&ws).await.len(), 1, "no retry op was made");
    assert_eq!(stack.get(&format!("/admin/jobs/{failed}")).await.body["job"]["state"], "failed");

    // With it, the retry is made by the dashboard's operator, and the answer leads to it.
    let r = client.post(&retry).header("cookie", &session).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let ops = stack.ops(&ws).await;
    assert_eq!(ops.len(), 2, "{ops:?}");
    let new = ops[0]["id"].as_str().unwrap();
    assert_eq!(r.headers()[LOCATION].to_str().unwrap(), format!("/admin/ui/jobs/{new}"));
    assert_eq!(ops[0]["requested_by"], "admin-ui");
    assert_eq!(ops[0]["reason"], format!("retry of {failed}"));

    // Bad input is a page naming the problem, never a 500.
    for (path, status, needle) in [
        ("/admin/ui/jobs?state=stuck", StatusCode::BAD_REQUEST, "stuck"),
        ("/admin/ui/jobs?workspace_id=nope", StatusCode::BAD_REQUEST, "workspace_id"),
        ("/admin/ui/jobs/not-a-job", StatusCode::BAD_REQUEST, "not-a-job"),
        ("/admin/ui/jobs/7b7b1d2e-0000-4000-8000-000000000000", StatusCode::NOT_FOUND, "not found"),
        ("/admin/ui/workspaces/nope", StatusCode::NOT_FOUND, "nope"),
        ("/admin/ui/workspaces?status=sleeping", StatusCode::BAD_REQUEST, "online"),
        ("/admin/ui/delegations?status=lost", StatusCode::BAD_REQUEST, "in_flight"),
    ] {
        let r = client.get(format!("{}{path}", stack.url)).header("cookie", &session).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }

    // Sessions live in the database: another api replica with the same admin token honours
    // the cookie, and one whose ADMIN_TOKEN was changed (a leaked token rotated) does not.
    for (token, want) in [(ADMIN, StatusCode::OK), ("rotated-admin-token", StatusCode::SEE_OTHER)] {
        let (mut replica, url) = api_replica(&stack, token).await;
        let r = client.get(format!("{url}/admin/ui")).header("cookie", &session).send().await.unwrap();
        assert_eq!(r.status(), want, "a replica with ADMIN_TOKEN={token}");
        replica.signal("TERM");
        assert!(replica.wait_exit(LONG).await, "the replica exits");
    }

    // Logging out ends the session for good, even for a cookie kept after it.
    let r = client
        .post(format!("{}/admin/ui/logout", stack.url))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let r = client.get(format!("{}/admin/ui", stack.url)).header("cookie", &session).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the session is gone");
}

/// A chromedriver child process on a free port, in a process group of its own so that the
/// Chromium it starts dies with it even when a failing test never closes its session.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver, installed by dev/test)");
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let status = format!("{}/status", driver.url);
    eventually(Duration::from_secs(30), "chromedriver to answer", || {
        let status = status.clone();
        async move { reqwest::get(&status).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                      "--window-size=1366,900"]});
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a headless Chromium session")
}

/// The element's text, found again if the page's own reload replaced it in between.
async fn text_of(c: &Client, css: &str) -> String {
    eventually(Duration::from_secs(20), css, || async { c.find(Locator::Css(css)).await.ok()?.text().await.ok() }).await
}

/// Where screenshots go: into the docs with `UPDATE_SCREENSHOTS=1`, else a scratch directory.
fn screenshot_dir(scratch: &str) -> PathBuf {
    if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/img")
    } else {
        let dir = std::env::temp_dir().join(scratch);
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        dir
    }
}

async fn screenshot(c: &Client, path: PathBuf) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[tokio::test]
async fn in_chromium_an_operator_logs_in_reads_the_overview_and_retries_a_failed_job_until_it_succeeds() {
    require_docker_image();
    let mut stack = Stack::builder().workers(0).start().await;
    let (ws, failed) = failed_provision(&mut stack, "ui-browser").await;
    // The worker that can run it, so the retry succeeds.
    stack.add_worker(&[]);
    let shots = screenshot_dir(&format!("admin-ui-{}", stack.db.name));
    let driver = chromedriver().await;
    let c = browser(&driver).await;
    let ui = |path: &str| format!("{}{path}", stack.url);

    // No session: the dashboard sends the browser to the login page.
    c.goto(&ui("/admin/ui")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/admin/ui/login");
    let token = c.find(Locator::Css("#token")).await.unwrap();
    token.send_keys(ADMIN).await.unwrap();
    c.find(Locator::Css("form button[type=submit]")).await.unwrap().click().await.unwrap();

    // The overview: the failure is counted, the queues and the live worker are listed.
    wait_path(&c, "/admin/ui").await;
    assert_eq!(text_of(&c, "#queue-provision .failed-hour").await, "1");
    assert!(text_of(&c, "#queues").await.contains("provision"));
    assert!(text_of(&c, "#failures").await.contains("no provisioning backend"));
    eventually(LONG, "the worker to show as alive", || async {
        c.refresh().await.ok()?;
        text_of(&c, "#workers").await.contains("alive").then_some(())
    })
    .await;
    c.find(Locator::Css("#throughput")).await.expect("the throughput chart");

    // Jobs filtered by failed, then the failed job.
    c.goto(&ui("/admin/ui/jobs?state=failed")).await.unwrap();
    click(&c, &format!("tr[data-job='{failed}'] a")).await;
    wait_path(&c, &format!("/admin/ui/jobs/{failed}")).await;
    assert_eq!(text_of(&c, "#job-state").await, "failed");
    let error = text_of(&c, "#last-error").await;
    assert!(error.contains("no provisioning backend"), "the error whole: {error}");
    screenshot(&c, shots.join("admin-ui-job.png")).await;

    // Retry: the browser lands on the new job, which runs and succeeds.
    click(&c, "form[action$='/retry'] button").await;
    let deadline = Instant::now() + LONG;
    let new = poll_until(deadline, Duration::from_millis(200), || async {
        let path = c.current_url().await.ok()?.path().to_string();
        path.strip_prefix("/admin/ui/jobs/").filter(|id| *id != failed).map(String::from)
    })
    .await
    .expect("the browser to be led to the retry");
    assert!(text_of(&c, "#job").await.contains(&format!("retry of {failed}")));
    let succeeded = poll_until(deadline, Duration::from_millis(500), || async {
        c.refresh().await.ok()?;
        (text_of(&c, "#job-state").await == "succeeded").then_some(())
    })
    .await;
    assert!(succeeded.is_some(), "the retried job {new} succeeds; page: {}", c.source().await.unwrap_or_default());
    assert!(text_of(&c, "#attempts").await.contains("succeeded"));
    assert_eq!(stack.status_of(&ws).await, "online");

    // The overview again, now with a success beside the failure.
    c.goto(&ui("/admin/ui")).await.unwrap();
    assert_eq!(text_of(&c, "#queue-provision .succeeded-hour").await, "1");
    assert_eq!(text_of(&c, "#queue-provision .failed-hour").await, "1");
    screenshot(&c, shots.join("admin-ui-overview.png")).await;
    c.close().await.expect("close the browser");
}

async fn wait_path(c: &Client, path: &str) {
    eventually(Duration::from_secs(20), &format!("the browser to show {path}"), || async {
        (c.current_url().await.ok()?.path() == path).then_some(())
    })
    .await;
}
