//! `worker admin ...`: the operators' command line over the admin REST api. Tables for
//! people, `--json` (the api's own bodies) for scripts.
//!
//! Exit codes: 0 done, 1 the api answered with an error (its message is printed), 2 the
//! command line is wrong, 3 the api cannot be reached.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(name = "admin", bin_name = "worker admin", about = "Inspect and steer the job queue through the admin api")]
struct Cli {
    /// The api's base URL.
    #[arg(long, env = "WS_URL", global = true)]
    url: Option<String>,
    /// The admin token, or an org API token.
    #[arg(long, env = "ADMIN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the api's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lifecycle ops, sweep runs and inbox pushes.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Per-kind counts, waits and throughput; pause and resume a kind.
    Queues {
        #[command(subcommand)]
        action: Option<QueuesAction>,
    },
    /// Worker processes, alive or recently dead, and what each runs.
    Workers,
    /// Workspaces, one workspace, and its ops.
    Workspaces {
        #[command(subcommand)]
        action: WorkspacesAction,
    },
}

#[derive(Debug, Subcommand)]
enum JobsAction {
    /// Newest first.
    List {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_before` of the previous page.
        #[arg(long)]
        before: Option<String>,
    },
    /// A job with its attempts, workspace and queue task.
    Show { id: String },
    /// Runs a failed job again.
    Retry { id: String },
    /// Cancels a queued or running op.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
enum QueuesAction {
    List,
    Pause { kind: String },
    Resume { kind: String },
}

#[derive(Debug, Subcommand)]
enum WorkspacesAction {
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    Show {
        id: String,
    },
    /// The workspace's ops, newest first.
    Ops {
        id: String,
    },
}

enum Failure {
    Api(String),
    Usage(String),
    Unreachable(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        let (code, msg) = match self {
            Failure::Api(m) => (1, m),
            Failure::Usage(m) => (2, m),
            Failure::Unreachable(m) => (3, m),
        };
        eprintln!("worker admin: {msg}");
        ExitCode::from(code)
    }
}

/// `args` are the words after `worker`, starting with `admin`.
pub async fn main(args: Vec<String>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.token);
        if method == reqwest::Method::POST {
            req = req.header("content-type", "application/json").body("{}");
        }
        let resp = req.send().await.map_err(|e| Failure::Unreachable(format!("cannot reach {url}: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Failure::Unreachable(format!("reading the answer of {url}: {e}")))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let msg = body.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| body.to_string());
        Err(Failure::Api(format!("{status}: {msg}")))
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path).await
    }

    async fn post(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::POST, path).await
    }
}

/// Query parameters, percent-encoded.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let url = cli.url.ok_or_else(|| Failure::Usage("no api URL: pass --url or set WS_URL".into()))?;
    let token = cli.token.ok_or_else(|| Failure::Usage("no token: pass --token or set ADMIN_TOKEN".into()))?;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(Failure::Usage(format!("--url {url:?} must start with http:// or https://")));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Failure::Usage(format!("cannot build an HTTP client: {e}")))?;
    let api = Api { url, token, http };
    let (body, render): (Value, fn(&Value) -> String) = match cli.command {
        Command::Jobs { action: JobsAction::List { kind, state, workspace, limit, before } } => {
            let q = query(&[
                ("kind", kind),
                ("state", state),
                ("workspace_id", workspace),
                ("limit", limit.map(|l| l.to_string())),
                ("before", before),
            ]);
            (api.get(&format!("/admin/jobs{q}")).await?, render_jobs)
        }
        Command::Jobs { action: JobsAction::Show { id } } => {
            (api.get(&format!("/admin/jobs/{}", segment(&id))).await?, render_job_detail)
        }
        Command::Jobs { action: JobsAction::Retry { id } } => {
            (api.post(&format!("/admin/jobs/{}/retry", segment(&id))).await?, render_job_change)
        }
        Command::Jobs { action: JobsAction::Cancel { id } } => {
            (api.post(&format!("/admin/jobs/{}/cancel", segment(&id))).await?, render_job_change)
        }
        Command::Queues { action: None | Some(QueuesAction::List) } => (api.get("/admin/queues").await?, render_queues),
        Command::Queues { action: Some(QueuesAction::Pause { kind }) } => {
            (api.post(&format!("/admin/queues/{}/pause", segment(&kind))).await?, render_pause)
        }
        Command::Queues { action: Some(QueuesAction::Resume { kind }) } => {
            (api.post(&format!("/admin/queues/{}/resume", segment(&kind))).await?, render_pause)
        }
        Command::Workers => (api.get("/admin/workers").await?, render_workers),
        Command::Workspaces { action: WorkspacesAction::List { status, limit } } => {
            let q = query(&[("status", status), ("limit", limit.map(|l| l.to_string()))]);
            (api.get(&format!("/workspaces{q}")).await?, render_workspaces)
        }
        Command::Workspaces { action: WorkspacesAction::Show { id } } => {
            (api.get(&format!("/workspaces/{}", segment(&id))).await?, render_workspace)
        }
        Command::Workspaces { action: WorkspacesAction::Ops { id } } => {
            (api.get(&format!("/workspaces/{}/ops", segment(&id))).await?, render_ops)
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_else(|_| body.to_string()));
    } else {
        print!("{}", render(&body));
    }
    Ok(())
}

// --- rendering -----------------------------------------------------------------------------

/// A field as table text: strings bare, null as `-`, the rest as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn clip(s: String, max: usize) -> String {
    if s.chars().count() <= max { s } else { format!("{}…", s.chars().take(max - 1).collect::<String>()) }
}

/// Left-aligned columns sized to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn items<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    v.get(key).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

fn job_row(j: &Value) -> Vec<String> {
    vec![
        cell(&j["id"]),
        cell(&j["kind"]),
        cell(&j["state"]),
        cell(&j["attempts"]),
        cell(&j["workspace_id"]),
        cell(&j["created_at"]),
        clip(cell(&j["last_error"]), 60),
    ]
}

const JOB_HEADERS: [&str; 7] = ["ID", "KIND", "STATE", "ATTEMPTS", "WORKSPACE", "CREATED", "LAST ERROR"];

fn render_jobs(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v, "jobs").into_iter().map(job_row).collect();
    let mut out = table(&JOB_HEADERS, &rows);
    if let Some(next) = v["next_before"].as_str() {
        out.push_str(&format!("more: --before {next}\n"));
    }
    out
}

fn render_job_detail(v: &Value) -> String {
    let j = &v["job"];
    let mut out = String::new();
    for key in [
        "id",
        "kind",
        "state",
        "attempts",
        "max_attempts",
        "reason",
        "requested_by",
        "workspace_id",
        "claimed_by",
        "created_at",
        "started_at",
        "finished_at",
        "last_error",
    ] {
        out.push_str(&format!("{key:<13} {}\n", cell(&j[key])));
    }
    if v["workspace"].is_object() {
        let w = &v["workspace"];
        out.push_str(&format!("workspace     {} ({}) {}\n", cell(&w["name"]), cell(&w["id"]), cell(&w["status"])));
    }
    if v["task"].is_object() {
        let t = &v["task"];
        out.push_str(&format!(
            "task          {} {} attempts {}/{} run_at {}\n",
            cell(&t["id"]),
            cell(&t["status"]),
            cell(&t["attempts"]),
            cell(&t["max_attempts"]),
            cell(&t["run_at"])
        ));
    }
    let rows: Vec<Vec<String>> = items(v, "attempts")
        .into_iter()
        .map(|a| {
            vec![
                cell(&a["attempt"]),
                cell(&a["worker"]),
                cell(&a["started_at"]),
                cell(&a["finished_at"]),
                cell(&a["outcome"]),
                clip(cell(&a["error"]), 80),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["ATTEMPT", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR"], &rows));
    out
}

fn render_job_change(v: &Value) -> String {
    let j = &v["job"];
    let mut out = format!("job {} ({}) is {}", cell(&j["id"]), cell(&j["kind"]), cell(&j["state"]));
    if let Some(of) = v["retry_of"].as_str() {
        let how = if v["created"] == true { "new" } else { "already pending" };
        out.push_str(&format!(", retry of {of} ({how})"));
    }
    if let Some(was) = v["was"].as_str() {
        out.push_str(&format!(", was {was}"));
    }
    out.push('\n');
    out
}

fn render_queues(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v, "queues")
        .into_iter()
        .map(|q| {
            vec![
                cell(&q["kind"]),
                if q["paused"] == true { "paused".into() } else { "-".into() },
                cell(&q["queued"]),
                cell(&q["running"]),
                q["oldest_waiting_seconds"].as_f64().map_or("-".into(), |s| format!("{s:.0}s")),
                cell(&q["last_minute"]["succeeded"]),
                cell(&q["last_minute"]["failed"]),
                cell(&q["last_hour"]["succeeded"]),
                cell(&q["last_hour"]["failed"]),
            ]
        })
        .collect();
    table(&["KIND", "PAUSED", "QUEUED", "RUNNING", "OLDEST", "OK/1M", "FAIL/1M", "OK/1H", "FAIL/1H"], &rows)
}

fn render_pause(v: &Value) -> String {
    let state = if v["paused"] == true { "paused" } else { "running" };
    let note = if v["changed"] == true { "" } else { " (no change)" };
    format!("{} is {state}{note}\n", cell(&v["kind"]))
}

fn render_workers(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v, "workers")
        .into_iter()
        .map(|w| {
            let running: Vec<String> =
                items(w, "running").into_iter().map(|o| format!("{}:{}", cell(&o["kind"]), cell(&o["id"]))).collect();
            let backends: Vec<String> = items(w, "backends").into_iter().map(cell).collect();
            vec![
                cell(&w["id"]),
                cell(&w["host"]),
                cell(&w["pid"]),
                cell(&w["version"]),
                if backends.is_empty() { "-".into() } else { backends.join(",") },
                if w["alive"] == true { "alive".into() } else { "dead".into() },
                cell(&w["last_seen"]),
                if running.is_empty() { "-".into() } else { running.join(" ") },
            ]
        })
        .collect();
    table(&["ID", "HOST", "PID", "VERSION", "BACKENDS", "STATE", "LAST SEEN", "RUNNING"], &rows)
}

fn workspace_row(w: &Value) -> Vec<String> {
    vec![cell(&w["id"]), cell(&w["name"]), cell(&w["status"]), cell(&w["backend"]), cell(&w["created_at"])]
}

const WORKSPACE_HEADERS: [&str; 5] = ["ID", "NAME", "STATUS", "BACKEND", "CREATED"];

fn render_workspaces(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v.as_array().map(|a| a.iter().map(workspace_row).collect()).unwrap_or_default();
    table(&WORKSPACE_HEADERS, &rows)
}

fn render_workspace(v: &Value) -> String {
    let mut out = table(&WORKSPACE_HEADERS, &[workspace_row(v)]);
    if let Some(e) = v["last_sample_error"].as_str() {
        out.push_str(&format!("last error: {e}\n"));
    }
    out
}

fn render_ops(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    vec![
                        cell(&o["id"]),
                        cell(&o["kind"]),
                        cell(&o["status"]),
                        cell(&o["attempts"]),
                        cell(&o["reason"]),
                        cell(&o["created_at"]),
                        clip(cell(&o["last_error"]), 60),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["ID", "KIND", "STATUS", "ATTEMPTS", "REASON", "CREATED", "LAST ERROR"], &rows)
}
