//! Chaos on the Docker backend: 60 workspaces, about 600 verbs over 3 minutes, a worker hit
//! every 10 s, one PostgreSQL restart; then the containers must match the statuses and the
//! engine's event stream must show at most one container created per claim of an op.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::EventsOptionsBuilder;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jobs::backend::{LABEL_OP_ID, LABEL_OP_LEASE, LABEL_PLATFORM, LABEL_WORKSPACE_ID};
use tests::chaos::{Chaos, Defaults, OpRow, ThrowawayPg, Workload, WorkspaceRow, history, op_rows, workspace_rows};
use tests::{docker, require_docker_image};
use uuid::Uuid;

/// Marks the container made to check that the event stream is live.
const LABEL_PROBE: &str = "molecule.chaos.probe";

/// A `create` event of one of the platform's containers.
#[derive(Debug, Clone)]
struct Created {
    at: DateTime<Utc>,
    container: String,
    name: String,
    workspace: Option<String>,
    op: Option<String>,
    lease: Option<String>,
    probe: bool,
}

/// The engine's container `create` events for one platform, collected from subscription
/// until [`Events::finish`].
struct Events {
    created: Arc<Mutex<Vec<Created>>>,
    /// Why the stream ended early, if it did.
    ended: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    /// Subscribes, and returns once a probe container's create has come through, so no
    /// event of the run can be missed.
    async fn subscribe(platform: &str, image: &str) -> Events {
        let engine = Docker::connect_with_defaults()
            .expect("connect to the Docker engine")
            .with_timeout(Duration::from_secs(24 * 3600))
            .negotiate_version()
            .await
            .expect("negotiate the Docker API version");
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["create".to_string()]),
            ("label", vec![format!("{LABEL_PLATFORM}={platform}")]),
        ]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let created = Arc::new(Mutex::new(vec![]));
        let ended = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (created, ended) = (created.clone(), ended.clone());
            async move {
                let mut stream = engine.events(Some(options));
                let why = loop {
                    match stream.next().await {
                        None => break "the event stream ended".to_string(),
                        Some(Err(e)) => break format!("the event stream failed: {e}"),
                        Some(Ok(ev)) => {
                            let actor = ev.actor.unwrap_or_default();
                            let attrs = actor.attributes.unwrap_or_default();
                            let nanos = ev.time_nano.or(ev.time.map(|s| s * 1_000_000_000)).unwrap_or_default();
                            created.lock().expect("events").push(Created {
                                at: DateTime::from_timestamp_nanos(nanos),
                                container: actor.id.unwrap_or_default(),
                                name: attrs.get("name").cloned().unwrap_or_default(),
                                workspace: attrs.get(LABEL_WORKSPACE_ID).cloned(),
                                op: attrs.get(LABEL_OP_ID).cloned(),
                                lease: attrs.get(LABEL_OP_LEASE).cloned(),
                                probe: attrs.contains_key(LABEL_PROBE),
                            });
                        }
                    }
                };
                *ended.lock().expect("events") = Some(why);
            }
        });
        // The subscription is made by the task, at some point after this: probe until one of
        // the probes shows on the stream.
        let mut live = false;
        for _ in 0..20 {
            let probe = docker(&[
                "create",
                "--label",
                &format!("{LABEL_PLATFORM}={platform}"),
                "--label",
                &format!("{LABEL_PROBE}=1"),
                image,
            ]);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            live = tests::poll_until(deadline, Duration::from_millis(50), || async {
                created.lock().expect("events").iter().any(|c| c.container == probe).then_some(())
            })
            .await
            .is_some();
            docker(&["rm", "-f", &probe]);
            if live {
                break;
            }
        }
        assert!(live, "no probe container showed on the Docker event stream: {:?}", ended.lock().expect("events"));
        created.lock().expect("events").retain(|c| !c.probe);
        Events { created, ended, task }
    }

    fn finish(self) -> (Vec<Created>, Option<String>) {
        self.task.abort();
        let created = std::mem::take(&mut *self.created.lock().expect("events"));
        let ended = self.ended.lock().expect("events").take();
        (created, ended)
    }
}

/// Removes every container of the platform when dropped, whatever state the database is in
/// (the stack's own cleanup needs it).
struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        // No panic here: this may run while the test is failing.
        let filter = format!("label={LABEL_PLATFORM}={}", self.0);
        let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() else { return };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
    }
}

#[derive(Debug, Clone)]
struct Container {
    id: String,
    name: String,
    state: String,
    workspace: String,
}

/// Every container (any state) labelled with the platform.
fn platform_containers(platform: &str) -> Vec<Container> {
    let out = docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label={LABEL_PLATFORM}={platform}"),
        "--format",
        &format!("{{{{.ID}}}}\t{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Label \"{LABEL_WORKSPACE_ID}\"}}}}"),
    ]);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let get = |i: usize| f.get(i).map(|s| s.trim().to_string()).unwrap_or_default();
            Container { id: get(0), name: get(1), state: get(2), workspace: get(3) }
        })
        .collect()
}

/// `docker inspect` of the recorded instance: Some(running?) or None when it does not exist.
fn instance_running(instance_ref: &str) -> Option<bool> {
    let out = Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", instance_ref]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim() == "true")
}

/// The statuses against the containers: a live workspace (online, degraded, offline) has
/// exactly one container and it runs; a paused or removed one has none; a failed one at most
/// one (kept for inspection); an online one's recorded instance runs; no container belongs
/// to a workspace that does not exist.
fn check_containers(workspaces: &[WorkspaceRow], ops: &[OpRow], containers: &[Container]) -> Vec<String> {
    let mut violations = vec![];
    let mut of: HashMap<&str, Vec<&Container>> = HashMap::new();
    for c in containers {
        of.entry(c.workspace.as_str()).or_default().push(c);
    }
    let describe = |cs: &[&Container]| {
        cs.iter().map(|c| format!("{} {} ({})", c.name, &c.id[..12.min(c.id.len())], c.state)).collect::<Vec<_>>()
    };
    for ws in workspaces {
        let id = ws.id.to_string();
        let cs = of.remove(id.as_str()).unwrap_or_default();
        let problem = match ws.status.as_str() {
            "online" | "degraded" | "offline" if cs.len() != 1 || cs[0].state != "running" => {
                Some("should have exactly one container, running")
            }
            "paused" | "removed" if !cs.is_empty() => Some("should have no container"),
            "failed" if cs.len() > 1 => Some("should have at most one container"),
            _ => None,
        };
        if let Some(p) = problem {
            violations.push(format!(
                "workspace {id} is {} and {p}; it has {:?}; its ops:{}",
                ws.status,
                describe(&cs),
                history(ops, ws.id)
            ));
        }
        if ws.status == "online" {
            let reference = ws.instance_ref.clone().unwrap_or_default();
            let problem = if ws.backend.as_deref() != Some("docker") {
                Some(format!("its backend is {:?}", ws.backend))
            } else if reference.is_empty() {
                Some("no instance is recorded (instance_ref is empty)".to_string())
            } else {
                match instance_running(&reference) {
                    Some(true) => None,
                    Some(false) => Some(format!("its recorded instance {reference} is not running")),
                    None => Some(format!("its recorded instance {reference} does not exist")),
                }
            };
            if let Some(p) = problem {
                violations.push(format!(
                    "workspace {id} is online but {p}; its containers: {:?}; its ops:{}",
                    describe(&cs),
                    history(ops, ws.id)
                ));
            }
        }
    }
    for (ws, cs) in of {
        violations.push(format!("containers of a workspace that does not exist ({ws:?}): {:?}", describe(&cs)));
    }
    violations
}

/// Each create event is the op's named by its labels, else the one of its workspace that
/// was running at the time (between its first claim and its end). No op may create more
/// containers than its attempts, and no claim more than one.
fn check_creates(created: &[Created], ops: &[OpRow]) -> (Vec<String>, String) {
    let mut violations = vec![];
    let by_id: HashMap<Uuid, &OpRow> = ops.iter().map(|o| (o.id, o)).collect();
    let mut per_op: BTreeMap<Uuid, Vec<&Created>> = BTreeMap::new();
    let (mut by_label, mut by_time) = (0, 0);
    for c in created {
        let labelled = c.op.as_deref().and_then(|s| Uuid::parse_str(s).ok());
        let op = match labelled {
            Some(op) => {
                by_label += 1;
                Some(op)
            }
            None => {
                let ws = c.workspace.as_deref().and_then(|s| Uuid::parse_str(s).ok());
                let op = ops
                    .iter()
                    .filter(|o| Some(o.workspace_id) == ws && o.kind != "stop")
                    .rfind(|o| o.started_at.is_some_and(|s| s <= c.at) && o.finished_at.is_none_or(|f| c.at <= f))
                    .map(|o| o.id);
                if op.is_some() {
                    by_time += 1;
                }
                op
            }
        };
        match op {
            Some(op) if by_id.contains_key(&op) => per_op.entry(op).or_default().push(c),
            _ => violations.push(format!(
                "container {} ({}) created at {} for workspace {:?} belongs to no op{}; the workspace's ops:{}",
                c.name,
                &c.container[..12.min(c.container.len())],
                c.at.format("%H:%M:%S%.3f"),
                c.workspace,
                c.op.as_deref().map(|o| format!(" (labelled op {o}, unknown)")).unwrap_or_default(),
                c.workspace
                    .as_deref()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .map(|w| history(ops, w))
                    .unwrap_or_default()
            )),
        }
    }
    let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
    let mut several = String::new();
    for o in ops.iter().filter(|o| o.kind != "stop") {
        let cs = per_op.get(&o.id).map(Vec::as_slice).unwrap_or_default();
        *histogram.entry(cs.len()).or_default() += 1;
        let creates = || {
            cs.iter()
                .map(|c| {
                    format!(
                        "\n        created {} {} lease label {}",
                        c.at.format("%H:%M:%S%.3f"),
                        &c.container[..12.min(c.container.len())],
                        c.lease.as_deref().unwrap_or("-")
                    )
                })
                .collect::<String>()
        };
        if cs.len() > 1 {
            several.push_str(&format!("  op {} ({}, attempts {}):{}\n", o.id, o.kind, o.attempts, creates()));
        }
        if cs.len() > o.attempts.max(0) as usize {
            violations.push(format!(
                "op {} ({}) created {} containers in {} attempt(s):{}\n      its workspace's ops:{}",
                o.id,
                o.kind,
                cs.len(),
                o.attempts,
                creates(),
                history(ops, o.workspace_id)
            ));
        }
        let mut per_lease: BTreeMap<&str, usize> = BTreeMap::new();
        for c in cs {
            if let Some(l) = &c.lease {
                *per_lease.entry(l.as_str()).or_default() += 1;
            }
        }
        for (lease, n) in per_lease.into_iter().filter(|(_, n)| *n > 1) {
            violations.push(format!(
                "op {} created {n} containers under one claim (lease {lease}):{}",
                o.id,
                creates()
            ));
        }
    }
    let summary = format!(
        "containers created: {} (attributed to an op by its label: {by_label}, by time: {by_time})\n\
         containers created per provision/restart op: {}\n{several}",
        created.len(),
        histogram.iter().map(|(n, ops)| format!("{n} → {ops} op(s)")).collect::<Vec<_>>().join(", ")
    );
    (violations, summary)
}

#[tokio::test]
async fn docker_chaos_keeps_one_container_per_live_workspace_and_per_claim() {
    let image = require_docker_image();
    let pg = ThrowawayPg::start();
    let mut w = Workload::from_env(
        "docker",
        "CHAOS",
        Defaults {
            seconds: 180.0,
            workspaces: 60,
            verbs: 600,
            fault_every: 10.0,
            stop_for: 20.0,
            pg_down: 3.0,
            target_busy: false,
        },
    );
    // One worker runs two jobs at a time, so its tasks wait in its buffer.
    w.worker_envs = vec![vec![("WORKER_CONCURRENCY".into(), "2".into())], vec![], vec![]];
    let mut stack = tests::chaos::chaos_stack(&pg.url)
        // A start whose agent never comes fails within the settle phase.
        .env("PROVISION_TIMEOUT_SECONDS", "45")
        .env("SWEEP_PROVISION_TIMEOUT_SECONDS", "2")
        .env("HEARTBEAT_STALE_AFTER_SECONDS", "30")
        .env("SWEEP_LIVENESS_SECONDS", "5")
        .env("SWEEP_ORPHANS_SECONDS", "10")
        .workers(0)
        .start()
        .await;
    let platform = stack.db.name.clone();
    let _cleanup = RemoveContainers(platform.clone());
    let events = Events::subscribe(&platform, &image).await;
    let mut chaos = Chaos::start(w, &mut stack).await;
    chaos.run_workload(&mut stack, &pg).await;

    let mut early = vec![];
    if chaos.settle("after the workload").await {
        // What the state was before the last orphans sweep, for the notes: the sweep may
        // repair what the ops left.
        let (ops, workspaces) = (op_rows(&chaos.pool).await, workspace_rows(&chaos.pool).await);
        early = check_containers(&workspaces, &ops, &platform_containers(&platform));
        chaos.settle_through_orphans_sweep().await;
    }
    let (ops, workspaces) = chaos.common_checks().await;
    let containers = platform_containers(&platform);
    let found = check_containers(&workspaces, &ops, &containers);
    for v in early.into_iter().filter(|v| !found.contains(v)) {
        chaos.notes.push(format!("at the first quiescence, repaired since (by the orphans sweep?): {v}"));
    }
    chaos.violations.extend(found);
    let (created, ended) = events.finish();
    if let Some(why) = ended {
        chaos.violations.push(format!("the Docker event stream stopped early, so create counts are incomplete: {why}"));
    }
    let (found, summary) = check_creates(&created, &ops);
    chaos.violations.extend(found);
    let mut report = chaos.report(&ops, &workspaces);
    report.push_str(&summary);
    report.push_str(&format!(
        "containers now: {} ({} running)\n",
        containers.len(),
        containers.iter().filter(|c| c.state == "running").count()
    ));
    chaos.conclude(&report);
}
