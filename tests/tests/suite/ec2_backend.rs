//! The EC2 backend on its own against a real EC2 API emulator (moto server, `MOTO_URL`,
//! set by `dev/test`). Each test tags with its own platform id, so tests never see each other.

use jobs::backend::ec2::{Ec2Backend, TAG_MANAGED, TAG_OP_ID, TAG_PLATFORM, TAG_WORKSPACE_ID};
use jobs::backend::{Backend, InstanceState, StartSpec};
use jobs::config::Ec2Config;
use tests::{instances_of, moto_url, run_instance_tagged};
use uuid::Uuid;

fn config() -> Ec2Config {
    Ec2Config {
        enabled: true,
        region: "us-east-1".into(),
        endpoint_url: Some(moto_url()),
        ami_id: Some("ami-12c6146b".into()),
        instance_types: ["t3.nano".into(), "t3.micro".into(), "t3.small".into(), "t3.medium".into()],
        subnet_id: None,
        security_group_ids: vec![],
    }
}

async fn backend() -> (Ec2Backend, String) {
    // SAFETY of the env: tests of this binary all want the same fake credentials.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    let platform = format!("t-{}", Uuid::new_v4().simple());
    (Ec2Backend::connect(config(), platform.clone()).await, platform)
}

fn spec(workspace_id: Uuid, op_id: Uuid, tier: i32) -> StartSpec {
    StartSpec {
        workspace_id,
        op_id,
        op_seq: 1,
        lease: 1,
        runtime: "langgraph".into(),
        tier,
        model: "m".into(),
        platform_url: "http://127.0.0.1:8080".into(),
        bootstrap_secret: "bootstrap-secret".into(),
        heartbeat_interval_secs: 5,
        reset_session: false,
        image: None,
    }
}

#[tokio::test]
async fn a_provision_run_twice_makes_one_tagged_instance_of_the_tier_type() {
    let (b, platform) = backend().await;
    let (ws, op) = (Uuid::new_v4(), Uuid::new_v4());
    let first = b.start(&spec(ws, op, 2)).await.expect("start");
    // The same op again, claimed anew after its worker died between RunInstances and
    // recording the result: the rescue adopts the instance.
    let second = b.start(&StartSpec { lease: 2, ..spec(ws, op, 2) }).await.expect("start again");
    assert_eq!(first, second);
    let found = instances_of(&ws.to_string()).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let i = &found[0];
    assert_eq!(i.id, first.instance_ref);
    assert_eq!(i.state, "running");
    assert_eq!(i.instance_type, "t3.micro");
    for (k, v) in [(TAG_WORKSPACE_ID, ws.to_string()), (TAG_MANAGED, "true".into()), (TAG_PLATFORM, platform)] {
        assert!(i.tags.contains(&(k.to_string(), v.clone())), "tag {k}={v} missing: {:?}", i.tags);
    }
    assert_eq!(b.status(&first.instance_ref).await.unwrap(), InstanceState::Running);
    let managed = b.list_managed().await.unwrap();
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].workspace_id, Some(ws));

    b.stop(ws, &first.instance_ref, None).await.expect("stop");
    assert_eq!(instances_of(&ws.to_string()).await[0].state, "terminated");
    assert_eq!(b.status(&first.instance_ref).await.unwrap(), InstanceState::Missing);
    b.stop(ws, &first.instance_ref, None).await.expect("a second stop is fine");
    b.stop(ws, "i-0123456789abcdef0", None).await.expect("an unknown instance is already stopped");
    assert!(b.list_managed().await.unwrap().is_empty());
}

#[tokio::test]
async fn claims_of_one_op_that_each_started_an_instance_all_keep_the_first_launched() {
    // Two claims of one op that each got past the check before either launched (a claim
    // paused between its check and RunInstances, where ClientToken is not honoured).
    let (b, platform) = backend().await;
    let (ws, op) = (Uuid::new_v4(), Uuid::new_v4());
    let (ws_s, op_s) = (ws.to_string(), op.to_string());
    let tags =
        [(TAG_WORKSPACE_ID, ws_s.as_str()), (TAG_MANAGED, "true"), (TAG_PLATFORM, &platform), (TAG_OP_ID, &op_s)];
    let first = run_instance_tagged(&tags).await;
    let second = run_instance_tagged(&tags).await;
    let kept = b.start(&StartSpec { lease: 3, ..spec(ws, op, 1) }).await.expect("start");
    let found = instances_of(&ws_s).await;
    let live: Vec<&str> = found.iter().filter(|i| i.is_live()).map(|i| i.id.as_str()).collect();
    assert_eq!(live, vec![kept.instance_ref.as_str()], "one live instance stays: {found:?}");
    assert!(
        [first.as_str(), second.as_str()].contains(&kept.instance_ref.as_str()),
        "the start adopted one of the op's instances, it made none: {found:?}"
    );
    assert_eq!(found.len(), 2, "{found:?}");
    // Whichever claim asks, it keeps the same instance.
    let again = b.start(&StartSpec { lease: 4, ..spec(ws, op, 1) }).await.expect("start again");
    assert_eq!(again.instance_ref, kept.instance_ref);
}

#[tokio::test]
async fn stop_terminates_every_instance_of_the_workspace_and_a_new_op_starts_a_new_one() {
    let (b, _) = backend().await;
    let ws = Uuid::new_v4();
    let a = b.start(&spec(ws, Uuid::new_v4(), 1)).await.unwrap();
    let c = b.start(&spec(ws, Uuid::new_v4(), 1)).await.unwrap();
    assert_ne!(a, c, "another op is another instance");
    b.stop(ws, "", None).await.unwrap();
    assert!(instances_of(&ws.to_string()).await.iter().all(|i| i.state == "terminated"));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transient_error_and_a_missing_ami_a_permanent_one() {
    let (_, platform) = backend().await;
    let mut cfg = config();
    cfg.endpoint_url = Some("http://127.0.0.1:9".into());
    let down = Ec2Backend::connect(cfg, platform.clone()).await;
    let err = down.stop(Uuid::new_v4(), "i-0123456789abcdef0", None).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let mut cfg = config();
    cfg.ami_id = None;
    let no_ami = Ec2Backend::connect(cfg, platform).await;
    let err = no_ami.start(&spec(Uuid::new_v4(), Uuid::new_v4(), 1)).await.unwrap_err();
    assert!(!err.is_transient() && err.to_string().contains("EC2_AMI_ID"), "{err}");
}

#[tokio::test]
async fn a_retried_restart_keeps_and_adopts_its_own_instance_and_a_stale_stop_keeps_a_later_ones() {
    let (b, _) = backend().await;
    let (ws, old_op, restart_op) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let old = b.start(&StartSpec { op_seq: 3, ..spec(ws, old_op, 1) }).await.unwrap();
    // The restart (op 7) started its instance, then its worker died before recording it.
    let own = b.start(&StartSpec { op_seq: 7, ..spec(ws, restart_op, 1) }).await.unwrap();
    // Its second claim stops what runs, keeping what op 7 started, and adopts it.
    b.stop(ws, &old.instance_ref, Some(7)).await.expect("stop");
    let again = b.start(&StartSpec { op_seq: 7, lease: 2, ..spec(ws, restart_op, 1) }).await.unwrap();
    assert_eq!(again, own, "the rescued restart adopts its instance");
    let states = || async {
        instances_of(&ws.to_string()).await.into_iter().map(|i| (i.id, i.state)).collect::<Vec<(String, String)>>()
    };
    let now = states().await;
    assert!(now.contains(&(own.instance_ref.clone(), "running".into())), "{now:?}");
    assert!(now.contains(&(old.instance_ref.clone(), "terminated".into())), "{now:?}");
    // A stop of op 5 that comes late leaves op 7's instance running.
    b.stop(ws, &own.instance_ref, Some(5)).await.expect("stale stop");
    assert!(states().await.contains(&(own.instance_ref.clone(), "running".into())));
}
