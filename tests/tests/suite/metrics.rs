//! Operations: `/metrics` on the api and on a worker (`WORKER_METRICS_ADDR`) is valid
//! Prometheus text whose counters move by what was done, and sweeps that find nothing to do
//! stay out of the INFO log.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tests::{Stack, eventually, require_docker_image};

const LONG: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y"}` (the braces included) → the labels and what follows them.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = rest.split_once("=\"").ok_or_else(|| format!("label without =\" in {s:?}"))?;
        if !is_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} twice in {s:?}"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A strict reader of the Prometheus text format: every sample belongs to a family whose
/// `# TYPE` came first, names and labels are well formed, and no series appears twice.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut samples = vec![];
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_name(name) || !matches!(kind, "counter" | "gauge" | "histogram" | "summary" | "untyped") {
                        return Err(format!("bad TYPE line {line:?}"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(format!("{name} typed twice"));
                    }
                }
                (Some("HELP"), Some(name), _) if is_name(name) => {}
                (Some("HELP"), _, _) => return Err(format!("bad HELP line {line:?}")),
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| format!("no value in {line:?}"))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| format!("no value in {line:?}"))?)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| format!("bad timestamp in {line:?}"))?;
        }
        if fields.next().is_some() {
            return Err(format!("trailing text in {line:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("{name} has no TYPE before it"));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(format!("bucket without le in {line:?}"));
        }
        if !seen.insert(format!("{name}{labels:?}")) {
            return Err(format!("series {name}{labels:?} twice"));
        }
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(samples)
}

struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the series with exactly these labels; 0 when it is absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.0.iter().find(|s| s.name == name && s.labels == want).map_or(0.0, |s| s.value)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }
}

async fn scrape(client: &reqwest::Client, url: &str) -> Scrape {
    let resp = client.get(url).send().await.expect("scrape");
    assert_eq!(resp.status(), StatusCode::OK, "{url}");
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/plain"), "{url} answered {content_type}");
    let text = resp.text().await.expect("metrics text");
    Scrape(parse_exposition(&text).unwrap_or_else(|e| panic!("{url} is not Prometheus text: {e}\n{text}")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[test]
fn the_exposition_reader_is_strict() {
    let good = "# HELP a_total things\n# TYPE a_total counter\na_total{kind=\"x\",q=\"a\\\"b\"} 3\n\
                # TYPE h_seconds histogram\nh_seconds_bucket{le=\"+Inf\"} 1\nh_seconds_sum 0.5\nh_seconds_count 1\n";
    let samples = parse_exposition(good).expect("valid text");
    assert_eq!(samples.len(), 4);
    assert_eq!(samples[0].labels["q"], "a\"b");
    for bad in [
        "a_total 1\n",
        "# TYPE a counter\na{kind=\"x} 1\n",
        "# TYPE a counter\na 1\na 2\n",
        "# TYPE a counter\na one\n",
        "# TYPE 1a counter\n",
        "# TYPE h histogram\nh_bucket 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test]
async fn metrics_count_a_create_and_a_restart_on_the_api_and_the_worker() {
    require_docker_image();
    let port = free_port();
    let stack = Stack::builder().worker_env("WORKER_METRICS_ADDR", &format!("127.0.0.1:{port}")).start().await;
    let worker_url = eventually(Duration::from_secs(30), "the worker's metrics listener", || {
        let text = stack.workers[0].log_text();
        async move {
            text.lines().find_map(|l| l.split("metrics listening on ").nth(1).map(|s| format!("{}/metrics", s.trim())))
        }
    })
    .await;
    assert!(worker_url.ends_with(&format!(":{port}/metrics")), "{worker_url}");
    let api_url = format!("{}/metrics", stack.url);
    let client = &stack.client;

    // Open like /health: a scraper has no token.
    let api0 = scrape(client, &api_url).await;
    let worker0 = scrape(client, &worker_url).await;
    for kind in ["provision", "stop", "restart", "inbox_push", "sweep"] {
        assert!(
            api0.0
                .iter()
                .any(|s| s.name == "ws_jobs_enqueued_total" && s.labels.get("kind").map(String::as_str) == Some(kind)),
            "enqueued{{kind={kind}}} is exported from the start"
        );
    }
    assert_eq!(api0.value("ws_queue_depth", &[("kind", "provision")]), 0.0);
    assert!(api0.has("ws_queue_oldest_waiting_seconds"));
    assert_eq!(api0.value("ws_workspaces", &[("status", "online")]), 0.0);

    let id = stack.create(json!({"name": "metered"})).await;
    stack.wait_status(&id, "online", LONG).await;
    stack.ops_settled(&id, LONG).await;
    let api1 = scrape(client, &api_url).await;
    let enq = |s: &Scrape, kind: &str| s.value("ws_jobs_enqueued_total", &[("kind", kind)]);
    assert_eq!(enq(&api1, "provision") - enq(&api0, "provision"), 1.0, "one provision enqueued by the create");
    let created = |s: &Scrape| s.value("ws_http_requests_total", &[("route", "/workspaces"), ("status", "201")]);
    assert_eq!(created(&api1) - created(&api0), 1.0);
    assert!(api1.value("ws_http_request_duration_seconds_count", &[("route", "/workspaces")]) >= 1.0);
    assert!(
        api1.value("ws_http_requests_total", &[("route", "/workspaces/{id}"), ("status", "200")]) >= 1.0,
        "requests are labelled with the route template"
    );
    assert!(!api1.0.iter().any(|s| s.labels.values().any(|v| v.contains(&id))), "no label carries a workspace id");
    assert_eq!(api1.value("ws_workspaces", &[("status", "online")]), 1.0);
    assert_eq!(api1.value("ws_queue_depth", &[("kind", "provision")]), 0.0);

    let worker1 = scrape(client, &worker_url).await;
    let count = |s: &Scrape, name: &str, kind: &str| s.value(name, &[("kind", kind)]);
    for name in ["ws_jobs_claimed_total", "ws_jobs_succeeded_total"] {
        assert_eq!(count(&worker1, name, "provision") - count(&worker0, name, "provision"), 1.0, "{name}");
    }
    assert_eq!(count(&worker1, "ws_jobs_failed_total", "provision"), 0.0);
    assert_eq!(count(&worker1, "ws_job_duration_seconds_count", "provision"), 1.0);
    assert!(count(&worker1, "ws_jobs_enqueued_total", "sweep") >= 1.0, "the worker enqueues sweep periods");

    let r = stack.post(&format!("/workspaces/{id}/restart?wait=60"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "online", "{}", r.body);
    stack.ops_settled(&id, LONG).await;
    let api2 = scrape(client, &api_url).await;
    assert_eq!(enq(&api2, "restart") - enq(&api1, "restart"), 1.0, "one restart enqueued");
    assert_eq!(enq(&api2, "provision"), enq(&api1, "provision"));
    let worker2 = scrape(client, &worker_url).await;
    for name in ["ws_jobs_claimed_total", "ws_jobs_succeeded_total"] {
        assert_eq!(count(&worker2, name, "restart") - count(&worker1, name, "restart"), 1.0, "{name}");
    }

    // Every response carries a request id; one the caller sends is kept.
    let resp = client.get(format!("{}/health", stack.url)).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-me-42"));
    let resp = client.get(format!("{}/health", stack.url)).send().await.unwrap();
    assert!(resp.headers().get("x-request-id").is_some_and(|v| !v.is_empty()));
    // A handler's log line carries the route template and the request's id.
    let resp = client
        .post(format!("{}/org/tokens", stack.url))
        .bearer_auth(tests::ADMIN)
        .header("x-request-id", "mint-req-7")
        .json(&json!({"name": "metrics"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let api = stack.api.as_ref().expect("api");
    let line = eventually(Duration::from_secs(10), "the mint's log line", || {
        let text = api.log_text();
        async move { text.lines().find(|l| l.contains("org token minted")).map(str::to_string) }
    })
    .await;
    assert!(line.contains(r#"route="/org/tokens""#) && line.contains(r#"request_id="mint-req-7""#), "{line}");
    // Unmatched paths share one label, so a scan cannot create series.
    let r = stack.get("/no/such/path/123").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let api3 = scrape(client, &api_url).await;
    assert!(api3.value("ws_http_requests_total", &[("route", "unmatched"), ("status", "404")]) >= 1.0);
    assert!(!api3.0.iter().any(|s| s.labels.values().any(|v| v.contains("/no/such"))));
}

#[tokio::test]
async fn a_bad_worker_metrics_address_stops_the_worker_naming_the_variable() {
    let mut stack = Stack::builder().workers(0).start().await;
    let n = stack.add_worker(&[("WORKER_METRICS_ADDR", "not-an-address")]);
    let worker = &mut stack.workers[n];
    assert!(!worker.wait_exit(Duration::from_secs(30)).await, "the worker must fail");
    let log = worker.log_text();
    assert!(log.contains("WORKER_METRICS_ADDR=\"not-an-address\" is not host:port"), "{log}");
}

/// What a worker logs at INFO once while it starts; anything else at INFO is activity.
const START_LINES: [&str; 5] = [
    "already exists, skipping",
    "the Docker engine answers",
    "worker starting",
    "metrics listening on",
    "INFO Worker ",
];

/// The worker's INFO lines other than its start-up ones.
fn info_activity(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" INFO ") && !START_LINES.iter().any(|m| l.contains(m)))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn quiet_sweeps_log_at_debug_and_a_sweep_that_acts_logs_at_info() {
    let short = [
        "SWEEP_LIVENESS_SECONDS",
        "SWEEP_PROVISION_TIMEOUT_SECONDS",
        "SWEEP_DELEGATIONS_SECONDS",
        "SWEEP_ORPHANS_SECONDS",
    ];
    let mut builder = Stack::builder().env("HEARTBEAT_STALE_AFTER_SECONDS", "2");
    for var in short {
        builder = builder.worker_env(var, "1");
    }
    let stack = builder.start().await;
    let finished = |sweep: &'static str| {
        let pool = stack.pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM sweep_runs WHERE sweep = $1 AND finished_at IS NOT NULL")
                    .bind(sweep)
                    .fetch_one(&pool)
                    .await
                    .expect("count sweep runs");
            n
        }
    };
    for sweep in ["liveness", "provision-timeout", "delegations", "orphans"] {
        eventually(LONG, &format!("three finished {sweep} periods"), || async {
            (finished(sweep).await >= 3).then_some(())
        })
        .await;
    }
    let quiet = info_activity(&stack.workers[0].log_text());
    assert!(quiet.is_empty(), "a quiet worker logged at INFO:\n{}", quiet.join("\n"));

    // An external agent that registers and then falls silent: the liveness sweep acts.
    let r = stack.post("/workspaces", json!({"name": "silent", "external": true})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let token = r.body["connection"]["auth_token"].as_str().expect("token").to_string();
    let body = json!({"id": id, "url": "http://127.0.0.1:8000"}).to_string();
    let r = stack.raw("POST", "/registry/register", Some(&token), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(stack.status_of(&id).await, "online");
    stack.wait_status(&id, "awaiting_agent", LONG).await;
    let acted = eventually(Duration::from_secs(30), "an INFO line of the liveness sweep that acted", || {
        let lines = info_activity(&stack.workers[0].log_text());
        async move { lines.into_iter().find(|l| l.contains("sweep finished") && l.contains("1 stale")) }
    })
    .await;
    assert!(acted.contains("liveness"), "{acted}");
}

#[test]
fn the_dashboard_and_the_docs_name_only_exported_metrics() {
    use jobs::metrics as m;
    let exported = [
        m::JOBS_ENQUEUED,
        m::JOBS_CLAIMED,
        m::JOBS_SUCCEEDED,
        m::JOBS_FAILED,
        m::JOBS_RETRIED,
        m::JOB_DURATION,
        m::QUEUE_DEPTH,
        m::QUEUE_OLDEST_WAITING,
        m::HTTP_REQUESTS,
        m::HTTP_DURATION,
        m::WORKSPACES,
        m::LONG_POLLS,
        m::OP_RESCUES,
        m::ORPHANS_REAPED,
        m::LEAK_SUSPECTS,
    ];
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let dashboard = std::fs::read_to_string(docs.join("grafana-dashboard.json")).expect("dashboard");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let guide = std::fs::read_to_string(docs.join("metrics.md")).expect("metrics.md");
    let named = |text: &str| -> HashSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ws_") && w.len() > 3)
            .map(|w| w.strip_suffix("_bucket").unwrap_or(w).to_string())
            .collect()
    };
    for name in named(&dashboard).iter().chain(named(&guide).iter()) {
        assert!(exported.contains(&name.as_str()), "{name} is not exported");
    }
    for name in exported {
        assert!(guide.contains(&format!("`{name}`")), "{name} is not documented");
    }
}

#[tokio::test]
async fn the_api_samples_waiting_jobs_and_workspaces_at_scrape_time() {
    // No worker: the provision waits.
    let stack = Stack::builder().workers(0).start().await;
    let url = format!("{}/metrics", stack.url);
    let id = stack.create(json!({"name": "waiting"})).await;
    let s = scrape(&stack.client, &url).await;
    assert_eq!(s.value("ws_queue_depth", &[("kind", "provision")]), 1.0);
    assert_eq!(s.value("ws_workspaces", &[("status", "provisioning")]), 1.0);
    eventually(Duration::from_secs(20), "the provision to have waited a second", || async {
        let s = scrape(&stack.client, &url).await;
        (s.value("ws_queue_oldest_waiting_seconds", &[("kind", "provision")]) >= 1.0).then_some(())
    })
    .await;
    // Removed: the op is canceled and the gauges follow.
    let r = stack.delete(&format!("/workspaces/{id}")).await;
    assert!(r.status.is_success(), "{}", r.body);
    let s = scrape(&stack.client, &url).await;
    assert_eq!(s.value("ws_queue_depth", &[("kind", "provision")]), 0.0);
    assert_eq!(s.value("ws_queue_oldest_waiting_seconds", &[("kind", "provision")]), 0.0);
    assert_eq!(s.value("ws_workspaces", &[("status", "provisioning")]), 0.0);
}

/// A graceful stop must not wait out the agents' long polls (up to 300 s each), nor cut
/// them off: each is answered at once with what there is, and the api exits cleanly.
#[tokio::test]
async fn a_stopping_api_answers_its_open_long_polls_at_once_and_exits_cleanly() {
    let mut stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let url = format!("{}/metrics", stack.url);
    let r = stack.post("/workspaces", json!({"name": "poller", "external": true})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let token = r.body["connection"]["auth_token"].as_str().expect("token").to_string();
    assert_eq!(scrape(&stack.client, &url).await.value("ws_inbox_long_polls", &[]), 0.0);

    let polls: Vec<_> = (0..2)
        .map(|_| {
            let (client, path) =
                (reqwest::Client::new(), format!("{}/workspaces/{id}/activity?since_id=0&wait=300", stack.url));
            let token = token.clone();
            tokio::spawn(async move {
                let r = client.get(path).bearer_auth(token).send().await.expect("long poll answered");
                (r.status(), r.json::<serde_json::Value>().await.expect("json"))
            })
        })
        .collect();
    eventually(Duration::from_secs(20), "both long polls to be waiting", || async {
        (scrape(&stack.client, &url).await.value("ws_inbox_long_polls", &[]) == 2.0).then_some(())
    })
    .await;

    let api = stack.api.as_mut().expect("the stack's api");
    let stopped_at = std::time::Instant::now();
    api.signal("TERM");
    for poll in polls {
        let (status, rows) =
            tokio::time::timeout(Duration::from_secs(30), poll).await.expect("answered, not waited out").expect("task");
        assert_eq!(status, StatusCode::OK, "{rows}");
        assert_eq!(rows, json!([]), "nothing was appended");
    }
    assert!(api.wait_exit(Duration::from_secs(30)).await, "the api exits with success after a graceful stop");
    // The polls asked for 300 s; the answer came from the stop, not the wait running out.
    assert!(stopped_at.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn an_orphan_reaped_by_the_sweep_is_counted_on_the_worker() {
    let image = require_docker_image();
    let port = free_port();
    let stack = Stack::builder()
        .worker_env("WORKER_METRICS_ADDR", &format!("127.0.0.1:{port}"))
        .worker_env("SWEEP_ORPHANS_SECONDS", "1")
        .start()
        .await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    eventually(Duration::from_secs(30), "the worker's metrics listener", || {
        let text = stack.workers[0].log_text();
        async move { text.contains("metrics listening on").then_some(()) }
    })
    .await;
    assert_eq!(scrape(&stack.client, &url).await.value("ws_orphans_reaped_total", &[]), 0.0);
    // A container of this platform for a workspace that has no row.
    let ghost = tests::run_labelled_container(&uuid::Uuid::new_v4().to_string(), &stack.db.name, &image);
    eventually(LONG, "the orphan to be reaped and counted", || async {
        let s = scrape(&stack.client, &url).await;
        (s.value("ws_orphans_reaped_total", &[]) == 1.0).then_some(())
    })
    .await;
    let left = tests::docker(&["ps", "-q", "--filter", &format!("name={ghost}")]);
    assert!(left.is_empty(), "the ghost container still runs");
}
