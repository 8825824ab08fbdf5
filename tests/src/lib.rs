//! Test harness: real processes against real components. Each test gets a fresh database
//! on the PostgreSQL server named by `TEST_DATABASE_URL`, and starts the real `api` and
//! `worker` binaries against it; workspaces run in the real Docker engine from the agent
//! stub image named by `AGENT_STUB_IMAGE` (both set by `dev/test`).
//!
//! [`chaos`] holds what the chaos suites share (`tests/tests/chaos/`).

pub mod chaos;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobs::backend::docker::CONTAINER_PREFIX;
use jobs::backend::ec2::{TAG_MANAGED, TAG_PLATFORM, TAG_WORKSPACE_ID};
use jobs::backend::{LABEL_MANAGED, LABEL_PLATFORM, LABEL_WORKSPACE_ID};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

pub const ADMIN: &str = "test-admin-token";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with `./dev/test`"))
}

/// The directory holding the `api` and `worker` binaries of this build.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary> → target/<profile>
    exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: build with `cargo build --workspace --bins` first", p.display());
    p
}

/// Polls `check` until it yields a value or `timeout` passes (then panics naming `what`).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(Instant::now() + timeout, Duration::from_millis(100), check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Checks `check` every `every` until it yields a value, or `None` once `deadline` passes:
/// the one condition wait of the tests, for callers that record a miss instead of panicking.
pub async fn poll_until<T, F, Fut>(deadline: Instant, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

pub struct TestDb {
    pub url: String,
    pub name: String,
    server_url: String,
}

impl TestDb {
    /// A fresh database on the server named by `TEST_DATABASE_URL`.
    pub async fn create() -> TestDb {
        TestDb::create_on(&required_env("TEST_DATABASE_URL")).await
    }

    /// A fresh database with apalis' schema and ours, and a pool of `connections` on it,
    /// for tests of the `jobs` library with no process.
    pub async fn migrated(connections: u32) -> (TestDb, PgPool) {
        let db = TestDb::create().await;
        let pool = jobs::db::connect(&db.url, connections).await.expect("connect");
        jobs::db::migrate(&pool).await.expect("migrate");
        (db, pool)
    }

    /// A fresh database on the server at `server_url` (a URL naming any existing database).
    pub async fn create_on(server_url: &str) -> TestDb {
        let server_url = server_url.to_string();
        let name = format!("t_{}", Uuid::new_v4().simple());
        let admin =
            PgPoolOptions::new().max_connections(1).connect(&server_url).await.expect("connect TEST_DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let (base, _) = server_url.rsplit_once('/').expect("TEST_DATABASE_URL has a database path");
        TestDb { url: format!("{base}/{name}"), name, server_url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server_url.clone(), self.name.clone());
        // Drop runs outside async; a small runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&pool)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A child process whose output goes to a log file; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: PathBuf, args: &[&str], env: &[(String, String)]) -> Proc {
        let log = std::env::temp_dir().join(format!("ws-test-{name}-{}.log", Uuid::new_v4().simple()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn process");
        Proc { name: name.into(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status when the process has exited (it is reaped then), else `None`.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill -{sig} {} failed", self.name);
    }

    /// Waits for the process to exit and returns whether it exited successfully.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let what = format!("{} to exit", self.name);
        eventually(timeout, &what, || {
            let r = self.child.try_wait();
            async move { r.ok().flatten() }
        })
        .await
        .success()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("----- last lines of {} ({}) -----", self.name, self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

pub struct StackBuilder {
    env: Vec<(String, String)>,
    worker_env: Vec<(String, String)>,
    workers: usize,
    database_server: Option<String>,
}

impl StackBuilder {
    /// Environment for both the api and the workers.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Environment for the workers started by `start` only.
    pub fn worker_env(mut self, k: &str, v: &str) -> Self {
        self.worker_env.push((k.into(), v.into()));
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The test database is made on this PostgreSQL server instead of `TEST_DATABASE_URL`'s
    /// (the chaos suites restart their own server).
    pub fn database_server(mut self, url: &str) -> Self {
        self.database_server = Some(url.into());
        self
    }

    pub async fn start(self) -> Stack {
        let db = match &self.database_server {
            Some(url) => TestDb::create_on(url).await,
            None => TestDb::create().await,
        };
        let mut base: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("ADMIN_TOKEN".into(), ADMIN.into()),
            ("LOG_FORMAT".into(), "pretty".into()),
            ("RUST_LOG".into(), "info".into()),
            ("NO_COLOR".into(), "1".into()),
            ("DATABASE_MAX_CONNECTIONS".into(), "10".into()),
            ("RETRY_DELAY_SCALE".into(), "0.05".into()),
            ("DOCKER_NETWORK".into(), "host".into()),
            // Tests share the Docker engine and the EC2 emulator; the platform id keeps each
            // test's orphan sweep to its own instances.
            ("PLATFORM_ID".into(), db.name.clone()),
            // Orphan reaps wait for nothing unless a test asks for the production grace.
            ("ORPHANS_START_GRACE_SECONDS".into(), "0".into()),
        ];
        if let Ok(img) = std::env::var("AGENT_STUB_IMAGE") {
            base.push(("WORKSPACE_IMAGE_DEFAULT".into(), img));
        }
        base.extend(self.env);
        let mut api_env = base.clone();
        api_env.push(("API_ADDR".into(), "127.0.0.1:0".into()));
        let api = Proc::spawn("api", bin("api"), &[], &api_env);
        let url = eventually(Duration::from_secs(30), "the api to listen", || {
            let text = api.log_text();
            async move { text.lines().find_map(|l| l.split("api listening on ").nth(1).map(|s| s.trim().to_string())) }
        })
        .await;
        let pool = PgPoolOptions::new().max_connections(5).connect(&db.url).await.expect("connect test db");
        let mut worker_env = base;
        worker_env.push(("PLATFORM_URL".into(), url.clone()));
        let mut stack = Stack {
            client: reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("http client"),
            api: Some(api),
            workers: vec![],
            pool,
            url,
            worker_env,
            extra_worker_env: self.worker_env,
            db,
        };
        for _ in 0..self.workers {
            stack.add_worker(&[]);
        }
        stack
    }
}

pub struct Stack {
    pub url: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub api: Option<Proc>,
    pub workers: Vec<Proc>,
    worker_env: Vec<(String, String)>,
    extra_worker_env: Vec<(String, String)>,
    pub db: TestDb,
}

pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
}

impl Resp {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_else(|| panic!("no error message in {} {}", self.status, self.body))
    }
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder { env: vec![], worker_env: vec![], workers: 1, database_server: None }
    }

    /// Starts one more worker; `env` adds to (and overrides) the stack's worker environment.
    pub fn add_worker(&mut self, env: &[(&str, &str)]) -> usize {
        let owned: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.add_worker_with(&owned)
    }

    pub fn add_worker_with(&mut self, env: &[(&str, String)]) -> usize {
        let mut e = self.worker_env.clone();
        e.extend(self.extra_worker_env.iter().cloned());
        e.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let n = self.workers.len();
        self.workers.push(Proc::spawn(&format!("worker{n}"), bin("worker"), &["run"], &e));
        n
    }

    /// A request with an explicit bearer token (`None`: no Authorization header) and raw body.
    pub async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status} body is not JSON: {text}"))
        };
        Resp { status, body }
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.raw("POST", path, Some(ADMIN), Some(&body.to_string())).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.raw("GET", path, Some(ADMIN), None).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.raw("DELETE", path, Some(ADMIN), None).await
    }

    pub async fn workspace(&self, id: &str) -> Value {
        let r = self.get(&format!("/workspaces/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    pub async fn status_of(&self, id: &str) -> String {
        self.workspace(id).await["status"].as_str().unwrap_or_default().to_string()
    }

    pub async fn wait_status(&self, id: &str, want: &str, timeout: Duration) -> Value {
        eventually(timeout, &format!("workspace {id} to be {want}"), || async {
            let ws = self.workspace(id).await;
            (ws["status"] == want).then_some(ws)
        })
        .await
    }

    pub async fn ops(&self, id: &str) -> Vec<Value> {
        let r = self.get(&format!("/workspaces/{id}/ops")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body.as_array().cloned().unwrap_or_default()
    }

    /// Waits until every op of the workspace is final, and returns them (newest first).
    pub async fn ops_settled(&self, id: &str, timeout: Duration) -> Vec<Value> {
        eventually(timeout, &format!("ops of {id} to finish"), || async {
            let ops = self.ops(id).await;
            ops.iter().all(|o| matches!(o["status"].as_str(), Some("succeeded" | "failed" | "canceled"))).then_some(ops)
        })
        .await
    }

    /// The token the agent in the workspace's container keeps: the start delivered a
    /// single-use bootstrap secret there, which the agent replaces with the token it gets
    /// back from its register.
    pub async fn agent_token(&self, id: &str) -> String {
        let name = container_name(id);
        eventually(Duration::from_secs(15), "the agent to keep its token", || async {
            let token = docker(&["exec", &name, "cat", "/configs/.auth_token"]);
            let me = self.raw("GET", &format!("/workspaces/{id}"), Some(&token), None).await;
            (me.status == StatusCode::OK).then_some(token)
        })
        .await
    }

    pub async fn create(&self, body: Value) -> String {
        let r = self.post("/workspaces", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().expect("id").to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Containers of this test's workspaces go with it.
        let url = self.db.url.clone();
        let platform = self.db.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(&url).await else { return };
                // Removed workspaces too: a stop that gave up may have left a container.
                let ids: Vec<Uuid> =
                    sqlx::query_scalar("SELECT id FROM workspaces").fetch_all(&pool).await.unwrap_or_default();
                pool.close().await;
                for id in ids {
                    let _ = Command::new("docker").args(["rm", "-f", &container_name(&id.to_string())]).output();
                }
                // And whatever a test started behind the platform's back with its labels.
                let labelled = Command::new("docker")
                    .args(["ps", "-aq", "--filter", &format!("label={}", label(LABEL_PLATFORM, &platform))])
                    .output();
                if let Ok(out) = labelled {
                    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        let _ = Command::new("docker").args(["rm", "-f", id]).output();
                    }
                }
            });
        })
        .join();
    }
}

/// The name of the workspace's container, as the Docker backend gives it.
pub fn container_name(workspace_id: &str) -> String {
    format!("{CONTAINER_PREFIX}{workspace_id}")
}

/// `key=value` of a label on our containers, for `docker --filter label=...` and `--label`.
pub fn label(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// The labels the Docker backend puts on a container of `platform` for `workspace_id`.
pub fn our_labels(workspace_id: &str, platform: &str) -> [String; 3] {
    [label(LABEL_WORKSPACE_ID, workspace_id), label(LABEL_MANAGED, "true"), label(LABEL_PLATFORM, platform)]
}

/// Names of the containers (running or not) labelled with this workspace id.
pub fn containers_of(workspace_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={}", label(LABEL_WORKSPACE_ID, workspace_id)),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "docker ps failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

/// Starts a container of `image` behind the platform's back, labelled as one of
/// `platform`'s for `workspace_id`; returns its name.
pub fn run_labelled_container(workspace_id: &str, platform: &str, image: &str) -> String {
    let name = format!("ghost-{}", Uuid::new_v4().simple());
    let [ws_label, managed_label, platform_label] = our_labels(workspace_id, platform);
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--label",
        &ws_label,
        "--label",
        &managed_label,
        "--label",
        &platform_label,
        "-e",
        &format!("WORKSPACE_ID={workspace_id}"),
        "-e",
        "PLATFORM_URL=http://127.0.0.1:9",
        image,
    ]);
    name
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn require_docker_image() -> String {
    required_env("AGENT_STUB_IMAGE")
}

pub fn moto_url() -> String {
    required_env("MOTO_URL")
}

/// Worker environment that makes EC2 reachable through the emulator; `enabled` decides
/// whether new workspaces go there.
pub fn ec2_env(enabled: bool) -> Vec<(&'static str, String)> {
    vec![
        ("EC2_ENABLED", enabled.to_string()),
        ("AWS_ENDPOINT_URL", moto_url()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("EC2_AMI_ID", "ami-12c6146b".into()),
        ("EC2_INSTANCE_TYPE_TIER2", "t3.micro".into()),
    ]
}

pub async fn ec2_client() -> aws_sdk_ec2::Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(moto_url())
        .load()
        .await;
    aws_sdk_ec2::Client::new(&shared)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub state: String,
    pub instance_type: String,
    pub tags: Vec<(String, String)>,
}

impl Instance {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "running")
    }
}

/// Every instance (any state) tagged with this workspace id.
pub async fn instances_of(workspace_id: &str) -> Vec<Instance> {
    instances_tagged(TAG_WORKSPACE_ID, workspace_id).await
}

/// Every instance (any state) whose tag `key` is `value`, across every page.
pub async fn instances_tagged(key: &str, value: &str) -> Vec<Instance> {
    let client = ec2_client().await;
    let mut out = vec![];
    let mut next: Option<String> = None;
    loop {
        let resp = client
            .describe_instances()
            .filters(aws_sdk_ec2::types::Filter::builder().name(format!("tag:{key}")).values(value).build())
            .set_next_token(next.take())
            .send()
            .await
            .expect("describe instances");
        out.extend(resp.reservations().iter().flat_map(|r| r.instances()).map(|i| {
            Instance {
                id: i.instance_id().unwrap_or_default().into(),
                state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
                instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
                tags: i
                    .tags()
                    .iter()
                    .map(|t| (t.key().unwrap_or_default().into(), t.value().unwrap_or_default().into()))
                    .collect(),
            }
        }));
        match resp.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return out,
        }
    }
}

pub async fn live_instances_of(workspace_id: &str) -> Vec<Instance> {
    instances_of(workspace_id).await.into_iter().filter(Instance::is_live).collect()
}

/// Starts an instance behind the platform's back, tagged as one of `platform`'s for
/// `workspace_id`; returns its id.
pub async fn run_tagged_instance(workspace_id: &str, platform: &str) -> String {
    run_instance_tagged(&[(TAG_WORKSPACE_ID, workspace_id), (TAG_MANAGED, "true"), (TAG_PLATFORM, platform)]).await
}

/// Starts an instance with exactly these tags; returns its id.
pub async fn run_instance_tagged(tags: &[(&str, &str)]) -> String {
    let tags: Vec<aws_sdk_ec2::types::Tag> =
        tags.iter().map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build()).collect();
    let resp = ec2_client()
        .await
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .set_tags(Some(tags))
                .build(),
        )
        .send()
        .await
        .expect("run instance");
    resp.instances().first().and_then(|i| i.instance_id()).expect("instance id").to_string()
}

/// The bootstrap secret a start delivered to an EC2 instance, read back from its user data
/// the way the instance's own boot script would find it.
pub async fn bootstrap_secret_of(instance_id: &str) -> String {
    use base64::Engine;
    let resp = ec2_client()
        .await
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("describe the instance's user data");
    let encoded = resp.user_data().and_then(|u| u.value()).expect("the instance has user data");
    let script = base64::engine::general_purpose::STANDARD.decode(encoded).expect("user data is base64");
    let script = String::from_utf8(script).expect("user data is text");
    script
        .lines()
        .find_map(|l| l.split("printf '%s\\n' '").nth(1).and_then(|rest| rest.split('\'').next()))
        .unwrap_or_else(|| panic!("no bootstrap secret in the user data:\n{script}"))
        .to_string()
}
