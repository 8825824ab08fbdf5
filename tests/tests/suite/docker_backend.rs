//! Drives `DockerBackend` against the real Docker engine on this machine. Nothing can be
//! pulled, so the first test to run builds tiny busybox images from a static
//! `/bin/busybox` (`apt-get install -y busybox-static`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, RestartPolicyNameEnum};
use jobs::backend::docker::{DockerBackend, DockerSettings};
use jobs::backend::{
    Backend, BackendError, BackendKind, InstanceState, LABEL_MANAGED, LABEL_OP_ID, LABEL_OP_LEASE, LABEL_OP_SEQ,
    LABEL_WORKSPACE_ID, StartSpec,
};
use uuid::Uuid;

const IMAGE: &str = "molecule-docker-backend-test:latest";
/// Runs as a numeric user with no passwd entry.
const IMAGE_UID: &str = "molecule-docker-backend-test:uid";
/// Runs as a named user and ships its own `/configs`, owned by that user, mode 0700.
const IMAGE_NAMED: &str = "molecule-docker-backend-test:named";

const MIB: i64 = 1024 * 1024;
const TIERS: [(i64, i64); 4] = [(64 * MIB, 128), (96 * MIB, 256), (128 * MIB, 512), (160 * MIB, 1024)];

fn ensure_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(err) = BUILT.get_or_init(build_images) {
        panic!("{err}");
    }
}

fn build_images() -> Result<(), String> {
    let busybox = Path::new("/bin/busybox");
    match is_static_elf(busybox) {
        Ok(true) => {}
        Ok(false) => {
            return Err("/bin/busybox is dynamically linked and cannot run in a FROM scratch \
                        image; run `apt-get install -y busybox-static`"
                .to_owned());
        }
        Err(err) => {
            return Err(format!("cannot use /bin/busybox ({err}); run `apt-get install -y busybox-static`"));
        }
    }

    let dir = std::env::temp_dir().join(format!("molecule-docker-backend-test-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = (|| {
        std::fs::copy(busybox, dir.join("busybox")).map_err(|e| format!("copy busybox: {e}"))?;
        let dockerfiles = [
            (
                IMAGE,
                "FROM scratch\n\
                 COPY busybox /bin/busybox\n\
                 RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n\
                 CMD [\"/bin/sh\",\"-c\",\"sleep 3600\"]\n"
                    .to_owned(),
            ),
            (IMAGE_UID, format!("FROM {IMAGE}\nUSER 1000:1000\n")),
            (
                IMAGE_NAMED,
                format!(
                    "FROM {IMAGE}\n\
                     RUN mkdir -p /etc /configs \
                     && echo 'root:x:0:0:root:/:/bin/sh' > /etc/passwd \
                     && echo 'agent:x:1001:1002::/:/bin/sh' >> /etc/passwd \
                     && echo 'root:x:0:' > /etc/group \
                     && echo 'agents:x:1002:' >> /etc/group \
                     && chown 1001:1002 /configs && chmod 700 /configs\n\
                     USER agent\n"
                ),
            ),
        ];
        for (tag, dockerfile) in dockerfiles {
            let file = dir.join("Dockerfile");
            std::fs::write(&file, dockerfile).map_err(|e| format!("write Dockerfile: {e}"))?;
            let out = Command::new("docker")
                .args(["build", "-q", "-t", tag])
                .arg(&dir)
                .output()
                .map_err(|e| format!("cannot run `docker build`: {e}"))?;
            if !out.status.success() {
                return Err(format!("`docker build -t {tag}` failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A dynamically linked ELF names its loader in a PT_INTERP program header.
fn is_static_elf(path: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let u16_at = |at: usize| -> Option<u16> { Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?)) };
    let u32_at = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    let u64_at = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)) };
    // 64-bit little-endian ELF is all this machine runs.
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not a 64-bit little-endian ELF executable".to_owned());
    }
    let parse = || -> Option<bool> {
        let phoff = usize::try_from(u64_at(0x20)?).ok()?;
        let phentsize = usize::from(u16_at(0x36)?);
        let phnum = usize::from(u16_at(0x38)?);
        const PT_INTERP: u32 = 3;
        Some((0..phnum).all(|i| u32_at(phoff + i * phentsize) != Some(PT_INTERP)))
    };
    parse().ok_or_else(|| "truncated ELF header".to_owned())
}

fn settings(default_image: Option<&str>) -> DockerSettings {
    DockerSettings {
        images: HashMap::new(),
        default_image: default_image.map(str::to_owned),
        network: Some("bridge".to_owned()),
        tiers: TIERS,
        call_timeout: Duration::from_secs(30),
        platform_id: "docker-backend-test".to_owned(),
        engine_id: None,
    }
}

async fn backend_with(settings: DockerSettings) -> DockerBackend {
    ensure_images();
    DockerBackend::connect(settings).await.unwrap_or_else(|err| panic!("cannot connect to the Docker engine: {err}"))
}

async fn backend() -> DockerBackend {
    backend_with(settings(Some(IMAGE))).await
}

fn spec(workspace_id: Uuid, secret: &str) -> StartSpec {
    StartSpec {
        workspace_id,
        op_id: Uuid::new_v4(),
        op_seq: 1,
        lease: 1,
        runtime: "langgraph".to_owned(),
        tier: 2,
        model: "test-model".to_owned(),
        platform_url: "http://platform.test:8080".to_owned(),
        bootstrap_secret: secret.to_owned(),
        heartbeat_interval_secs: 5,
        reset_session: false,
        image: None,
    }
}

/// Removes the workspace's container when the test ends, passed or not.
struct Cleanup(String);

impl Cleanup {
    fn new(workspace_id: Uuid) -> Self {
        Cleanup(DockerBackend::container_name(workspace_id))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.0]).output();
    }
}

fn docker_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker").args(args).output().unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

fn exec(container: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", container];
    args.extend_from_slice(cmd);
    let (ok, stdout, stderr) = docker_cli(&args);
    assert!(ok, "docker exec {container} {cmd:?} failed: {stderr}");
    stdout
}

async fn inspect(name: &str) -> ContainerInspectResponse {
    let docker = Docker::connect_with_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("negotiate docker api version");
    docker.inspect_container(name, None).await.unwrap_or_else(|e| panic!("inspect {name}: {e}"))
}

async fn managed_for(backend: &DockerBackend, workspace_id: Uuid) -> Vec<(String, bool)> {
    backend
        .list_managed()
        .await
        .expect("list_managed")
        .into_iter()
        .filter(|m| m.workspace_id == Some(workspace_id))
        .map(|m| (m.instance_ref, m.running))
        .collect()
}

#[tokio::test]
async fn start_runs_one_labelled_container_holding_the_token() {
    let backend = backend().await;
    assert_eq!(backend.kind(), BackendKind::Docker);
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = format!("ws-{id}");

    let started = backend.start(&spec(id, "token-one")).await.expect("start");
    assert_eq!(started.instance_ref, name);

    assert_eq!(managed_for(&backend, id).await, vec![(name.clone(), true)]);
    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Running);

    let info = inspect(&name).await;
    let config = info.config.expect("config");
    let labels = config.labels.expect("labels");
    assert_eq!(labels.get(LABEL_WORKSPACE_ID), Some(&id.to_string()));
    assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    let env = config.env.expect("env");
    for expected in [
        format!("WORKSPACE_ID={id}"),
        "PLATFORM_URL=http://platform.test:8080".to_owned(),
        "WORKSPACE_CONFIG_PATH=/configs".to_owned(),
        "TIER=2".to_owned(),
        "MODEL=test-model".to_owned(),
        "RUNTIME=langgraph".to_owned(),
    ] {
        assert!(env.contains(&expected), "{expected} missing from {env:?}");
    }
    let host = info.host_config.expect("host config");
    assert_eq!(host.memory, Some(TIERS[1].0));
    assert_eq!(host.cpu_shares, Some(TIERS[1].1));
    assert_eq!(host.network_mode.as_deref(), Some("bridge"));
    assert_eq!(host.restart_policy.and_then(|p| p.name), Some(RestartPolicyNameEnum::UNLESS_STOPPED));

    assert_eq!(exec(&name, &["cat", "/configs/.auth_token"]), "token-one");
    assert_eq!(exec(&name, &["stat", "-c", "%a %u %g", "/configs/.auth_token"]), "600 0 0");
}

#[tokio::test]
async fn second_start_replaces_the_container_with_a_fresh_token() {
    let backend = backend().await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = DockerBackend::container_name(id);

    backend.start(&spec(id, "first")).await.expect("first start");
    let first_id = inspect(&name).await.id.expect("container id");

    let again = backend.start(&spec(id, "second")).await.expect("second start");
    assert_eq!(again.instance_ref, name);
    let second_id = inspect(&name).await.id.expect("container id");

    assert_ne!(first_id, second_id, "the old container should be replaced");
    assert_eq!(managed_for(&backend, id).await, vec![(name.clone(), true)]);
    assert_eq!(exec(&name, &["cat", "/configs/.auth_token"]), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_leave_exactly_one_container() {
    let backend = std::sync::Arc::new(backend().await);
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = DockerBackend::container_name(id);

    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let token = format!("token-{i}");
                let result = backend.start(&spec(id, &token)).await;
                (token, result)
            })
        })
        .collect();
    let mut succeeded = Vec::new();
    for task in tasks {
        let (token, result) = task.await.expect("start task");
        match result {
            Ok(started) => {
                assert_eq!(started.instance_ref, name);
                succeeded.push(token);
            }
            Err(err) => assert!(err.is_transient(), "unexpected permanent error: {err}"),
        }
    }
    assert!(!succeeded.is_empty(), "every concurrent start failed");

    assert_eq!(managed_for(&backend, id).await, vec![(name.clone(), true)]);
    let token = exec(&name, &["cat", "/configs/.auth_token"]);
    assert!(succeeded.contains(&token), "container holds {token}, but only {succeeded:?} reported success");
}

#[tokio::test]
async fn stop_removes_the_container_and_is_idempotent() {
    let backend = backend().await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = DockerBackend::container_name(id);

    backend.start(&spec(id, "t")).await.expect("start");
    backend.stop(id, &name, None).await.expect("stop");
    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Missing);
    assert!(managed_for(&backend, id).await.is_empty());
    backend.stop(id, &name, None).await.expect("second stop");

    // No recorded instance: the container is found by its workspace name.
    backend.start(&spec(id, "t")).await.expect("restart");
    backend.stop(id, "", None).await.expect("stop by workspace id");
    assert!(managed_for(&backend, id).await.is_empty());
    backend.stop(id, "", None).await.expect("stop by workspace id again");
}

#[tokio::test]
async fn stopped_container_reports_stopped_and_start_revives_it() {
    let backend = backend().await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = DockerBackend::container_name(id);

    backend.start(&spec(id, "t")).await.expect("start");
    // `docker stop` is synchronous, so the state is settled when it returns.
    let (ok, _, stderr) = docker_cli(&["stop", "-t", "0", &name]);
    assert!(ok, "docker stop: {stderr}");

    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Stopped);
    assert_eq!(managed_for(&backend, id).await, vec![(name.clone(), false)]);

    backend.start(&spec(id, "t2")).await.expect("start again");
    assert_eq!(managed_for(&backend, id).await, vec![(name.clone(), true)]);
    assert_eq!(exec(&name, &["cat", "/configs/.auth_token"]), "t2");
}

#[tokio::test]
async fn status_of_unknown_container_is_missing() {
    let backend = backend().await;
    let name = DockerBackend::container_name(Uuid::new_v4());
    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Missing);
    assert_eq!(backend.status("").await.expect("status"), InstanceState::Missing);
}

#[tokio::test]
async fn a_start_never_replaces_the_container_of_a_newer_start() {
    let backend = backend().await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = DockerBackend::container_name(id);
    let op = Uuid::new_v4();
    let claim =
        |op_seq: i64, lease: i64| StartSpec { op_id: op, op_seq, lease, ..spec(id, &format!("secret-{lease}")) };

    let rescuer = backend.start(&claim(7, 2)).await.expect("the rescuing claim starts");
    let labels = inspect(&name).await.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get(LABEL_OP_ID), Some(&op.to_string()));
    assert_eq!(
        (labels.get(LABEL_OP_SEQ).map(String::as_str), labels.get(LABEL_OP_LEASE).map(String::as_str)),
        (Some("7"), Some("2"))
    );

    // The claim it superseded wakes up and starts: it must leave the newer container alone.
    match backend.start(&claim(7, 1)).await {
        Err(BackendError::Superseded(why)) => assert!(why.contains("newer start"), "{why}"),
        other => panic!("a stale claim's start was not refused: {other:?}"),
    }
    // So must a claim of an earlier op.
    assert!(matches!(backend.start(&claim(6, 5)).await, Err(BackendError::Superseded(_))));
    assert_eq!(inspect(&name).await.id, Some(rescuer.made.clone()), "the newer container is untouched");
    assert_eq!(exec(&name, &["cat", "/configs/.auth_token"]), "secret-2");

    // A newer claim replaces it, and discarding what a superseded start made removes only that.
    let newer = backend.start(&claim(8, 1)).await.expect("a later op's start replaces it");
    assert_ne!(newer.made, rescuer.made);
    backend.discard(&rescuer).await.expect("discarding a container that is gone already is fine");
    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Running, "discard went by id, not name");
    backend.discard(&newer).await.expect("discard");
    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Missing);
}

#[tokio::test]
async fn a_stop_keeps_what_its_own_op_or_a_later_one_started() {
    let backend = backend().await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = DockerBackend::container_name(id);
    let started = backend.start(&StartSpec { op_seq: 20, ..spec(id, "t") }).await.expect("start by op 20");
    // A stale stop of op 12 (or a retried restart, op 20 itself) leaves it alone.
    backend.stop(id, &started.instance_ref, Some(12)).await.expect("a stale stop");
    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Running);
    backend.stop(id, &started.instance_ref, Some(20)).await.expect("the op's own retried stop");
    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Running);
    // A later op's stop removes it.
    backend.stop(id, &started.instance_ref, Some(21)).await.expect("stop");
    assert_eq!(backend.status(&name).await.expect("status"), InstanceState::Missing);
}

#[tokio::test]
async fn token_belongs_to_a_numeric_image_user() {
    let backend = backend_with(settings(Some(IMAGE_UID))).await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = DockerBackend::container_name(id);

    backend.start(&spec(id, "uid-token")).await.expect("start");
    assert_eq!(exec(&name, &["id", "-u"]), "1000");
    assert_eq!(exec(&name, &["cat", "/configs/.auth_token"]), "uid-token");
    assert_eq!(exec(&name, &["stat", "-c", "%a %u %g", "/configs/.auth_token"]), "600 1000 1000");
}

#[tokio::test]
async fn token_belongs_to_a_named_image_user() {
    let backend = backend_with(settings(Some(IMAGE_NAMED))).await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);
    let name = DockerBackend::container_name(id);

    backend.start(&spec(id, "named-token")).await.expect("start");
    assert_eq!(exec(&name, &["id", "-u"]), "1001");
    assert_eq!(exec(&name, &["cat", "/configs/.auth_token"]), "named-token");
    assert_eq!(exec(&name, &["stat", "-c", "%a %u %g", "/configs/.auth_token"]), "600 1001 1002");
    assert_eq!(exec(&name, &["stat", "-c", "%u %g", "/configs"]), "1001 1002");
}

#[tokio::test]
async fn missing_image_is_permanent_and_leaves_nothing() {
    let image = format!("molecule-docker-backend-test:absent-{}", Uuid::new_v4());
    let backend = backend_with(settings(Some(&image))).await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);

    match backend.start(&spec(id, "t")).await {
        Err(BackendError::Permanent(message)) => {
            assert_eq!(message, format!("image {image} not found on the Docker engine"));
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert!(managed_for(&backend, id).await.is_empty());
}

#[tokio::test]
async fn unconfigured_runtime_is_permanent() {
    let backend = backend_with(settings(None)).await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);

    match backend.start(&spec(id, "t")).await {
        Err(BackendError::Permanent(message)) => {
            assert!(message.contains("WORKSPACE_IMAGE_LANGGRAPH"), "{message}");
            assert!(message.contains("WORKSPACE_IMAGE_DEFAULT"), "{message}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert!(managed_for(&backend, id).await.is_empty());
}

#[tokio::test]
async fn unknown_network_is_permanent_and_leaves_nothing() {
    let network = format!("molecule-absent-{}", Uuid::new_v4());
    let mut settings = settings(Some(IMAGE));
    settings.network = Some(network.clone());
    let backend = backend_with(settings).await;
    let id = Uuid::new_v4();
    let _cleanup = Cleanup::new(id);

    match backend.start(&spec(id, "t")).await {
        Err(BackendError::Permanent(message)) => {
            assert!(message.contains(&network), "{message}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert!(managed_for(&backend, id).await.is_empty());
}

#[tokio::test]
async fn an_engine_that_does_not_answer_in_time_is_transient() {
    ensure_images();
    let mut settings = settings(Some(IMAGE));
    settings.call_timeout = Duration::ZERO;
    match DockerBackend::connect(settings).await {
        Err(err) => assert!(err.is_transient(), "expected a transient error, got {err}"),
        Ok(_) => panic!("connect succeeded within a zero timeout"),
    }
}
