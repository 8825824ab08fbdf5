//! Chaos on the EC2 backend (the moto emulator), smaller: 12 workspaces, about 80 verbs over a
//! minute. Every start pauses between starting its instance and recording it, and faults hit
//! workers that hold an op, so provisions are rescued mid-flight: the rescuer must adopt the
//! instance its predecessor started, one instance per op. No agent runs in the emulator's
//! instances, so workspaces stay provisioning until the provision-timeout sweep fails them.

use std::collections::{BTreeMap, HashMap};

use jobs::backend::ec2::{TAG_OP_ID, TAG_PLATFORM, TAG_WORKSPACE_ID};
use tests::chaos::{Chaos, Defaults, OpRow, ThrowawayPg, Workload, WorkspaceRow, history, knob};
use tests::{Instance, ec2_env, instances_tagged};

fn describe(is: &[&Instance]) -> Vec<String> {
    is.iter().map(|i| format!("{} ({}, op {})", i.id, i.state, i.tag(TAG_OP_ID).unwrap_or("-"))).collect()
}

/// At most one live instance per op, and no more in all than the op had claims (moto ignores
/// `ClientToken`, so a claim paused before `RunInstances` may launch one its start then
/// terminates); the statuses against the live
/// (pending or running) instances: none for a paused or removed workspace, at most one for
/// a failed one, exactly the recorded one for a live one; no instance of an unknown workspace.
fn check_instances(workspaces: &[WorkspaceRow], ops: &[OpRow], instances: &[Instance]) -> (Vec<String>, String) {
    let mut violations = vec![];
    let mut per_op: HashMap<&str, Vec<&Instance>> = HashMap::new();
    let mut of: HashMap<&str, Vec<&Instance>> = HashMap::new();
    for i in instances {
        per_op.entry(i.tag(TAG_OP_ID).unwrap_or_default()).or_default().push(i);
        of.entry(i.tag(TAG_WORKSPACE_ID).unwrap_or_default()).or_default().push(i);
    }
    let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.kind != "stop") {
        let is = per_op.remove(o.id.to_string().as_str()).unwrap_or_default();
        *histogram.entry(is.len()).or_default() += 1;
        let live = is.iter().filter(|i| i.is_live()).count();
        if live > 1 || is.len() > o.attempts.max(1) as usize {
            violations.push(format!(
                "op {} ({}, {} attempt(s)) started {} instances, {live} live: {:?}; its workspace's ops:{}",
                o.id,
                o.kind,
                o.attempts,
                is.len(),
                describe(&is),
                history(ops, o.workspace_id)
            ));
        }
    }
    for (op, is) in per_op {
        violations
            .push(format!("instances tagged with op {op:?}, which is no provision or restart: {:?}", describe(&is)));
    }
    for ws in workspaces {
        let id = ws.id.to_string();
        let all = of.remove(id.as_str()).unwrap_or_default();
        let live: Vec<&Instance> = all.iter().copied().filter(|i| i.is_live()).collect();
        let recorded = ws.instance_ref.as_deref().unwrap_or_default();
        let problem = match ws.status.as_str() {
            "paused" | "removed" if !live.is_empty() => Some("should have no live instance".to_string()),
            "failed" if live.len() > 1 => Some("should have at most one live instance".to_string()),
            "online" | "degraded" | "offline" if live.len() != 1 || live[0].id != recorded => {
                Some(format!("should have exactly one live instance, the recorded {recorded:?}"))
            }
            _ => None,
        };
        if let Some(p) = problem {
            violations.push(format!(
                "workspace {id} is {} and {p}; its instances: {:?}; its ops:{}",
                ws.status,
                describe(&all),
                history(ops, ws.id)
            ));
        }
    }
    for (ws, is) in of {
        if is.iter().any(|i| i.is_live()) {
            violations.push(format!("live instances of a workspace that does not exist ({ws:?}): {:?}", describe(&is)));
        }
    }
    let summary = format!(
        "instances: {} ({} live)\ninstances per provision/restart op (any state): {}\n",
        instances.len(),
        instances.iter().filter(|i| i.is_live()).count(),
        histogram.iter().map(|(n, ops)| format!("{n} → {ops} op(s)")).collect::<Vec<_>>().join(", ")
    );
    (violations, summary)
}

#[tokio::test]
async fn ec2_chaos_adopts_the_instance_a_rescued_start_left_one_instance_per_op() {
    let pg = ThrowawayPg::start();
    let mut w = Workload::from_env(
        "ec2",
        "CHAOS_EC2",
        Defaults {
            seconds: 60.0,
            workspaces: 12,
            verbs: 80,
            fault_every: 6.0,
            stop_for: 12.0,
            pg_down: 3.0,
            target_busy: true,
        },
    );
    let failpoint: f64 = knob("CHAOS_EC2_FAILPOINT_SECONDS", 3.0);
    let mut env: Vec<(String, String)> = ec2_env(true).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    env.push(("FAILPOINT_AFTER_START_SECONDS".into(), failpoint.to_string()));
    let mut buffered = env.clone();
    buffered.push(("WORKER_CONCURRENCY".into(), "2".into()));
    w.worker_envs = vec![buffered, env.clone(), env];
    let mut stack = tests::chaos::chaos_stack(&pg.url)
        .env("DOCKER_ENABLED", "false")
        // No agent ever registers: every start ends in the provision timeout.
        .env("PROVISION_TIMEOUT_SECONDS", "20")
        .env("SWEEP_PROVISION_TIMEOUT_SECONDS", "2")
        .env("SWEEP_LIVENESS_SECONDS", "5")
        .env("SWEEP_ORPHANS_SECONDS", "10")
        .workers(0)
        .start()
        .await;
    let platform = stack.db.name.clone();
    let mut chaos = Chaos::start(w, &mut stack).await;
    chaos.run_workload(&mut stack, &pg).await;
    if chaos.settle("after the workload").await {
        chaos.settle_through_orphans_sweep().await;
    }
    let (ops, workspaces) = chaos.common_checks().await;
    let instances = instances_tagged(TAG_PLATFORM, &platform).await;
    let (found, summary) = check_instances(&workspaces, &ops, &instances);
    chaos.violations.extend(found);
    let mut report = chaos.report(&ops, &workspaces);
    report.push_str(&summary);
    let adopted = ops.iter().filter(|o| o.result.as_deref().is_some_and(|r| r.contains("started ec2"))).count();
    report.push_str(&format!("ops that recorded a started instance: {adopted}\n"));
    chaos.conclude(&report);
}
