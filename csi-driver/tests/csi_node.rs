//! The CSI node plugin over a real Unix socket, with real bind mounts and tmpfs (the tests run as
//! root), real SVIDs from core's Authority, and the `spiffe` crate fetching through the target.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spiffe::WorkloadApiClient;
use support::TestSource;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use wimsey_core::x509::parse_svid_with_key;
use wimsey_core::x509::pem::{decode_certificates, decode_private_key};
use wimsey_csi::csi::manager::{DEFAULT_FILES_TMPFS_INODES, volume_dir_name};
use wimsey_csi::csi::mounts::is_mount_point;
use wimsey_csi::csi::records::{RecordStore, VolumeRecord};
use wimsey_csi::csi::{
    ManagerConfig, RegistrationService, SOCKET_NAME, VolumeManager, registration_socket, serve_csi,
    serve_registration,
};
use wimsey_csi::socket::bind_unix_socket;
use wimsey_proto::csi::v1 as csi;
use wimsey_proto::csi::v1::identity_client::IdentityClient;
use wimsey_proto::csi::v1::node_client::NodeClient;
use wimsey_proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use wimsey_proto::pluginregistration as reg;

/// The plugin (volume manager + CSI server) on a socket in `dir`, state under `dir/state`.
struct Plugin {
    manager: Arc<VolumeManager<TestSource>>,
    socket: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Plugin {
    async fn start(source: Arc<TestSource>, dir: &Path, spire_dir: Option<PathBuf>) -> Self {
        let manager = Arc::new(
            VolumeManager::new(
                source,
                ManagerConfig {
                    state_dir: dir.join("state"),
                    spire_agent_socket_dir: spire_dir,
                    files_tmpfs_size: "1m".into(),
                    files_tmpfs_inodes: DEFAULT_FILES_TMPFS_INODES,
                    workload_api: Default::default(),
                },
            )
            .expect("manager"),
        );
        manager.restore().await.expect("restore");
        let socket = dir.join("csi.sock");
        let listener = bind_unix_socket(&socket, 0o600).expect("bind");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_csi(
            listener,
            Arc::clone(&manager),
            "node-1".into(),
            wimsey_runtime::readiness::always_ready(),
            shutdown.clone(),
        ));
        Self {
            manager,
            socket,
            shutdown,
            task,
        }
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(support::unix_channel(&self.socket).await)
    }

    /// Stops like SIGTERM does: servers end, mounts and records stay.
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("server");
        self.manager.shutdown().await;
    }
}

fn capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn publish_request(
    volume_id: &str,
    target: &Path,
    uid: &str,
    attributes: &[(&str, &str)],
) -> csi::NodePublishVolumeRequest {
    let mut context: HashMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("csi.storage.k8s.io/pod.uid", uid),
        ("csi.storage.k8s.io/serviceAccount.name", "web"),
        ("csi.storage.k8s.io/ephemeral", "true"),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            r#"{"wimsey":{"token":"pod-token-1","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    context.extend(
        attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability()),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

fn unpublish_request(volume_id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
    }
}

const WEB_ID: &str = "spiffe://example.org/ns/default/sa/web";

async fn fetch_svid_id(socket: &Path) -> String {
    let client = WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("connect spiffe client");
    let svid = client.fetch_x509_svid().await.expect("svid");
    svid.spiffe_id().to_string()
}

/// Polls `check` until it returns Some or the deadline passes.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_invalid(
    result: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>,
    field: &str,
) {
    let status = result.expect_err("must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "message {:?} should name {field}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_node_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(TestSource::new(), dir.path(), None).await;
    let mut identity = IdentityClient::new(support::unix_channel(&plugin.socket).await);
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.name, "csi.wimsey.dev");
    assert!(!info.vendor_version.is_empty());
    let caps = identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    assert!(caps.capabilities.is_empty(), "node-only: no controller");
    let probe = identity
        .probe(csi::ProbeRequest {})
        .await
        .expect("probe")
        .into_inner();
    assert_eq!(probe.ready, Some(true));

    let mut node = plugin.node().await;
    let info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("node info")
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    let stage = node
        .node_stage_volume(csi::NodeStageVolumeRequest::default())
        .await
        .expect_err("no staging");
    assert_eq!(stage.code(), Code::Unimplemented);
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(TestSource::new(), dir.path(), None).await;
    let mut node = plugin.node().await;
    let target = dir.path().join("target");
    let good = publish_request("vol-1", &target, "uid-1", &[]);

    let mut r = good.clone();
    r.volume_id.clear();
    assert_invalid(node.node_publish_volume(r).await, "volume_id");
    let mut r = good.clone();
    r.target_path.clear();
    assert_invalid(node.node_publish_volume(r).await, "target_path");
    let mut r = good.clone();
    r.volume_capability = None;
    assert_invalid(node.node_publish_volume(r).await, "volume_capability");
    let mut r = good.clone();
    r.volume_capability = Some(csi::VolumeCapability {
        access_type: Some(AccessType::Block(Default::default())),
        ..capability()
    });
    assert_invalid(node.node_publish_volume(r).await, "block");
    let mut r = good.clone();
    r.readonly = false;
    assert_invalid(node.node_publish_volume(r).await, "readonly");
    let mut r = publish_request("vol-1", &target, "uid-1", &[("mode", "files")]);
    r.readonly = false;
    assert_invalid(node.node_publish_volume(r).await, "`readOnly: true`");
    let r = publish_request("vol-1", &target, "uid-1", &[("mode", "sockets")]);
    assert_invalid(node.node_publish_volume(r).await, "mode");
    assert_invalid(
        node.node_unpublish_volume(unpublish_request("", &target))
            .await,
        "volume_id",
    );
    assert_invalid(
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "vol-1".into(),
            target_path: String::new(),
        })
        .await,
        "target_path",
    );
    assert!(!target.exists(), "nothing created for a rejected request");
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_api_volume_is_served_through_a_read_only_bind_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = TestSource::new();
    let plugin = Plugin::start(Arc::clone(&source), dir.path(), None).await;
    let mut node = plugin.node().await;
    let target = dir.path().join("pod/mount");
    std::fs::create_dir_all(dir.path().join("pod")).expect("parent");

    let request = publish_request("vol-wl", &target, "uid-wl", &[]);
    node.node_publish_volume(request.clone())
        .await
        .expect("publish");
    assert!(is_mount_point(&target).expect("mountinfo"));
    assert_eq!(fetch_svid_id(&target.join(SOCKET_NAME)).await, WEB_ID);
    let write = std::fs::write(target.join("x"), b"x").expect_err("read-only mount");
    assert_eq!(write.raw_os_error(), Some(30), "EROFS: {write}");
    assert_eq!(
        source
            .tokens
            .lock()
            .expect("lock")
            .first()
            .cloned()
            .flatten()
            .as_deref(),
        Some("pod-token-1")
    );

    // Idempotent: same again is OK and mounts nothing more.
    node.node_publish_volume(request.clone())
        .await
        .expect("republish");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let target_str = target.display().to_string();
    assert_eq!(
        mountinfo
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(target_str.as_str()))
            .count(),
        1,
        "one mount after two publishes"
    );
    let other_mode = publish_request("vol-wl", &target, "uid-wl", &[("mode", "files")]);
    let status = node
        .node_publish_volume(other_mode)
        .await
        .expect_err("changed");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let other_target = publish_request("vol-wl", &dir.path().join("pod/other"), "uid-wl", &[]);
    let status = node
        .node_publish_volume(other_target)
        .await
        .expect_err("moved");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Stats report a healthy mount; unknown volumes are NotFound.
    let stats = node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "vol-wl".into(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.volume_condition.map(|c| c.abnormal), Some(false));
    let missing = node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "nope".into(),
            volume_path: "some/path".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown volume");
    assert_eq!(missing.code(), Code::NotFound);

    let records = dir.path().join("state/records/vol-wl.json");
    let record = std::fs::read_to_string(&records).expect("record");
    assert!(
        record.contains("uid-wl") && !record.contains("pod-token-1"),
        "{record}"
    );

    node.node_unpublish_volume(unpublish_request("vol-wl", &target))
        .await
        .expect("unpublish");
    assert!(!target.exists(), "target removed");
    assert!(!records.exists(), "record removed");
    assert!(
        !dir.path()
            .join("state/volumes")
            .join(wimsey_csi::csi::manager::volume_dir_name("vol-wl"))
            .exists()
    );
    assert_eq!(
        *source.detached.lock().expect("lock"),
        vec!["uid-wl".to_owned()]
    );
    node.node_unpublish_volume(unpublish_request("vol-wl", &target))
        .await
        .expect("unpublish again is OK");
    plugin.stop().await;
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_volume_holds_matching_svid_and_key_and_swaps_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = TestSource::new();
    let plugin = Plugin::start(Arc::clone(&source), dir.path(), None).await;
    let mut node = plugin.node().await;
    let target = dir.path().join("files");
    let request = publish_request(
        "vol-files",
        &target,
        "uid-files",
        &[
            ("mode", "files"),
            ("fsGroup", "4321"),
            ("jwtAudiences", "api.example.org, https://b.example"),
            ("wit", "true"),
        ],
    );
    node.node_publish_volume(request.clone())
        .await
        .expect("publish");
    assert!(is_mount_point(&target).expect("mountinfo"));
    let write = std::fs::write(target.join("x"), b"x").expect_err("read-only for the pod");
    assert_eq!(write.raw_os_error(), Some(30), "EROFS: {write}");

    let svid_path = target.join("svid.pem");
    let first = eventually("svid.pem", || std::fs::read_to_string(&svid_path).ok()).await;
    let key_pem = read(&target.join("svid_key.pem"));
    let chain = decode_certificates(&first).expect("chain");
    let key = decode_private_key(&key_pem).expect("key");
    let der: Vec<u8> = chain.iter().flat_map(|c| c.as_bytes().to_vec()).collect();
    let svid = parse_svid_with_key(&der, &key).expect("leaf matches key");
    assert_eq!(svid.spiffe_id.as_str(), WEB_ID);

    let bundle = read(&target.join("bundle.pem"));
    let roots = decode_certificates(&bundle).expect("bundle");
    assert_eq!(
        roots
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect::<Vec<_>>(),
        source.world.issuer.bundle().x509_authorities
    );
    assert!(!read(&target.join("federated/partner.example.pem")).is_empty());
    assert_eq!(
        read(&target.join("jwt-api.example.org.token"))
            .split('.')
            .count(),
        3
    );
    assert!(target.join("jwt-https___b.example.token").exists());
    assert_eq!(read(&target.join("wit.jwt")).split('.').count(), 3);
    assert!(read(&target.join("wit_key.jwk")).contains("\"d\""));

    let key_meta = std::fs::metadata(target.join("svid_key.pem")).expect("meta");
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(key_meta.gid(), 4321);
    let bundle_meta = std::fs::metadata(target.join("bundle.pem")).expect("meta");
    assert_eq!(bundle_meta.permissions().mode() & 0o777, 0o644);

    // A rotation rewrites the whole set behind a new `..data`.
    let data_before = std::fs::read_link(target.join("..data")).expect("..data");
    source.rotate("uid-files", "spiffe://example.org/ns/default/sa/rotated");
    let rotated = eventually("rotated svid.pem", || {
        std::fs::read_to_string(&svid_path)
            .ok()
            .filter(|pem| *pem != first)
    })
    .await;
    let key_pem = read(&target.join("svid_key.pem"));
    let chain = decode_certificates(&rotated).expect("chain");
    let der: Vec<u8> = chain.iter().flat_map(|c| c.as_bytes().to_vec()).collect();
    let svid = parse_svid_with_key(&der, &decode_private_key(&key_pem).expect("key"))
        .expect("rotated leaf matches rotated key");
    assert_eq!(
        svid.spiffe_id.as_str(),
        "spiffe://example.org/ns/default/sa/rotated"
    );
    assert_ne!(
        std::fs::read_link(target.join("..data")).expect("..data"),
        data_before
    );
    // The writer removes the old generation right after the swap.
    eventually("old generation removed", || {
        let generations = std::fs::read_dir(&target)
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("..")
                    && e.file_type().is_ok_and(|t| t.is_dir())
            })
            .count();
        (generations == 1).then_some(())
    })
    .await;

    // Republish after the mount vanished: a fresh tmpfs, filled at once.
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).expect("unmount by hand");
    assert!(!is_mount_point(&target).expect("mountinfo"));
    node.node_publish_volume(request.clone())
        .await
        .expect("republish remounts");
    assert!(is_mount_point(&target).expect("mountinfo"));
    eventually("files rewritten into the new tmpfs", || {
        std::fs::read_to_string(&svid_path).ok()
    })
    .await;

    node.node_unpublish_volume(unpublish_request("vol-files", &target))
        .await
        .expect("unpublish");
    assert!(!target.exists());
    plugin.stop().await;
}

/// Plants, in the writer's own (writable) view of a files volume, symlinks out of the volume:
/// over the visible names and the writer's staging names.
fn plant_links(view: &Path, victim: &Path, outside: &Path) {
    for (name, target) in [
        ("svid.pem", victim),
        ("federated", outside),
        ("..data_tmp", victim),
        ("..svid.pem.tmp", victim),
        ("..federated.tmp", outside),
    ] {
        let path = view.join(name);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, &path).expect("plant");
    }
}

/// The pod's view is read-only; even so, links planted where the writer writes (before the first
/// write of a restarted plugin, and between two rotations) are replaced or refused, never
/// followed: the files outside stay as they were and the volume ends up right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_volume_is_read_only_for_the_pod_and_never_written_through_planted_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    let victim = outside.join("victim.pem");
    std::fs::write(&victim, "host file").expect("victim");
    let source = TestSource::new();
    let target = dir.path().join("planted");
    let request = publish_request("vol-plant", &target, "uid-plant", &[("mode", "files")]);
    let plugin = Plugin::start(Arc::clone(&source), dir.path(), None).await;
    plugin
        .node()
        .await
        .node_publish_volume(request.clone())
        .await
        .expect("publish");
    let svid_path = target.join("svid.pem");
    eventually("svid.pem", || std::fs::read_to_string(&svid_path).ok()).await;

    // The pod cannot plant anything itself.
    let planted = std::os::unix::fs::symlink(&victim, target.join("svid.pem.new"))
        .expect_err("read-only for the pod");
    assert_eq!(planted.raw_os_error(), Some(30), "EROFS: {planted}");
    // The tmpfs carries the configured caps.
    let caps = rustix::fs::statvfs(&target).expect("statvfs");
    assert_eq!(caps.f_files, DEFAULT_FILES_TMPFS_INODES, "nr_inodes");
    assert_eq!(caps.f_blocks * caps.f_frsize, 1 << 20, "size=1m");

    let view = dir
        .path()
        .join("state/volumes")
        .join(volume_dir_name("vol-plant"));
    let untouched = |when: &str| {
        assert_eq!(read(&victim), "host file", "{when}: link target written");
        let names: Vec<_> = std::fs::read_dir(&outside)
            .expect("outside")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["victim.pem"], "{when}: files created outside");
    };
    let volume_is_right = |want: &'static str| {
        let svid_path = svid_path.clone();
        let target = target.clone();
        move || {
            let link = std::fs::read_link(&svid_path).ok()?;
            let pem = std::fs::read_to_string(&svid_path).ok()?;
            let chain = decode_certificates(&pem).ok()?;
            let key =
                decode_private_key(&std::fs::read_to_string(target.join("svid_key.pem")).ok()?)
                    .ok()?;
            let der: Vec<u8> = chain.iter().flat_map(|c| c.as_bytes().to_vec()).collect();
            let svid = parse_svid_with_key(&der, &key).ok()?;
            let federated = std::fs::read_link(target.join("federated")).ok()?;
            let bundle =
                std::fs::read_to_string(target.join("federated/partner.example.pem")).ok()?;
            (link == Path::new("..data/svid.pem")
                && federated == Path::new("..data/federated")
                && svid.spiffe_id.as_str() == want
                && bundle.contains("BEGIN CERTIFICATE"))
            .then_some(())
        }
    };

    // Before a write: planted while the plugin is down, met by the restarted plugin's first write.
    plugin.stop().await;
    plant_links(&view, &victim, &outside);
    let plugin = Plugin::start(Arc::clone(&source), dir.path(), None).await;
    eventually(
        "the volume right again after a restart",
        volume_is_right(WEB_ID),
    )
    .await;
    untouched("first write");

    // Between writes: planted while the writer runs, then a rotation.
    plant_links(&view, &victim, &outside);
    let rotated = "spiffe://example.org/ns/default/sa/rotated";
    source.rotate("uid-plant", rotated);
    eventually(
        "the rotated set written over planted links",
        volume_is_right(rotated),
    )
    .await;
    untouched("rotation");

    plugin
        .node()
        .await
        .node_unpublish_volume(unpublish_request("vol-plant", &target))
        .await
        .expect("unpublish");
    assert!(
        !target.exists() && !view.exists(),
        "target and view removed"
    );
    assert!(!is_mount_point(&view).expect("mountinfo"));
    untouched("unpublish");
    plugin.stop().await;
}

fn mode_and_owner(path: &Path) -> (u32, u32) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.permissions().mode() & 0o7777, meta.uid())
}

/// Runs `f` on a thread whose credentials are uid/gid 65534 with no supplementary groups (the
/// kernel checks a thread's own credentials; the rest of the test process stays root).
fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        rustix::thread::set_thread_groups(&[]).expect("setgroups");
        rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(65534)).expect("setgid");
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534)).expect("setuid");
        f()
    })
    .join()
    .expect("nobody thread")
}

/// The state and `volumes/` directories are 0700 root, so a host user cannot reach a pod's socket
/// or files through the host path; the pod's non-root user reaches them through its mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_and_files_are_reachable_only_through_the_pods_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The path to the targets is open to everyone, as a container's is to its own mounts.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // A state directory left 0755, as a DirectoryOrCreate hostPath makes it: narrowed at start.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let plugin = Plugin::start(TestSource::new(), dir.path(), None).await;
    let mut node = plugin.node().await;
    let socket_target = dir.path().join("pod-socket");
    let files_target = dir.path().join("pod-files");
    node.node_publish_volume(publish_request("vol-perm", &socket_target, "uid-perm", &[]))
        .await
        .expect("publish workload-api");
    node.node_publish_volume(publish_request(
        "vol-perm-files",
        &files_target,
        "uid-perm-files",
        &[("mode", "files")],
    ))
    .await
    .expect("publish files");
    eventually("svid.pem", || {
        std::fs::read_to_string(files_target.join("svid.pem")).ok()
    })
    .await;

    for private in [state.clone(), state.join("volumes"), state.join("records")] {
        assert_eq!(
            mode_and_owner(&private),
            (0o700, 0),
            "{}",
            private.display()
        );
    }
    let socket_dir = state.join("volumes").join(volume_dir_name("vol-perm"));
    let files_dir = state
        .join("volumes")
        .join(volume_dir_name("vol-perm-files"));
    // What the pods see at their targets: traversable by their non-root users.
    assert_eq!(mode_and_owner(&socket_dir), (0o755, 0));
    assert_eq!(mode_and_owner(&files_dir), (0o755, 0), "the tmpfs root");
    assert_eq!(mode_and_owner(&socket_dir.join(SOCKET_NAME)).0, 0o666);

    let host_socket = socket_dir.join(SOCKET_NAME);
    let pod_socket = socket_target.join(SOCKET_NAME);
    let host_file = files_dir.join("bundle.pem");
    let pod_file = files_target.join("bundle.pem");
    let (host_connect, pod_connect, host_read, pod_read) = as_nobody(move || {
        (
            std::os::unix::net::UnixStream::connect(&host_socket).map(drop),
            std::os::unix::net::UnixStream::connect(&pod_socket).map(drop),
            std::fs::read(&host_file).map(drop),
            std::fs::read(&pod_file).map(drop),
        )
    });
    let denied = host_connect.expect_err("connect through the host path");
    assert_eq!(
        denied.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{denied}"
    );
    pod_connect.expect("connect through the pod's mount");
    let denied = host_read.expect_err("read through the host path");
    assert_eq!(
        denied.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{denied}"
    );
    pod_read.expect("read through the pod's mount");

    for (id, target) in [
        ("vol-perm", &socket_target),
        ("vol-perm-files", &files_target),
    ] {
        node.node_unpublish_volume(unpublish_request(id, target))
            .await
            .expect("unpublish");
    }
    plugin.stop().await;
}

/// A state directory another user owns could be opened up again by that user: refused.
#[test]
fn a_state_dir_another_user_owns_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state");
    std::os::unix::fs::chown(&state, Some(65534), None).expect("chown");
    let config = ManagerConfig {
        state_dir: state.clone(),
        spire_agent_socket_dir: None,
        files_tmpfs_size: "1m".into(),
        files_tmpfs_inodes: DEFAULT_FILES_TMPFS_INODES,
        workload_api: Default::default(),
    };
    let error = VolumeManager::new(TestSource::new(), config).expect_err("refused");
    assert!(error.to_string().contains("owned by uid 65534"), "{error}");
    assert!(!state.join("records").exists(), "nothing created in it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_agent_volume_bind_mounts_the_agent_socket_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_dir = dir.path().join("agent-sockets");
    std::fs::create_dir(&agent_dir).expect("agent dir");
    std::fs::write(agent_dir.join("marker"), "agent").expect("marker");
    let plugin = Plugin::start(TestSource::new(), dir.path(), Some(agent_dir)).await;
    let mut node = plugin.node().await;
    let target = dir.path().join("spire");
    let request = csi::NodePublishVolumeRequest {
        volume_id: "vol-spire".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability()),
        readonly: true,
        volume_context: HashMap::from([
            ("mode".to_owned(), "spire-agent".to_owned()),
            ("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned()),
        ]),
        ..Default::default()
    };
    node.node_publish_volume(request).await.expect("publish");
    assert_eq!(read(&target.join("marker")), "agent");
    assert!(std::fs::write(target.join("y"), "y").is_err(), "read-only");
    node.node_unpublish_volume(unpublish_request("vol-spire", &target))
        .await
        .expect("unpublish");
    assert!(!target.exists());
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plugin_serves_every_recorded_volume_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = TestSource::new();
    let target = dir.path().join("restart-target");
    let files_target = dir.path().join("restart-files");
    {
        let plugin = Plugin::start(Arc::clone(&source), dir.path(), None).await;
        let mut node = plugin.node().await;
        node.node_publish_volume(publish_request("vol-r", &target, "uid-r", &[]))
            .await
            .expect("publish");
        node.node_publish_volume(publish_request(
            "vol-rf",
            &files_target,
            "uid-rf",
            &[("mode", "files")],
        ))
        .await
        .expect("publish files");
        assert_eq!(fetch_svid_id(&target.join(SOCKET_NAME)).await, WEB_ID);
        plugin.stop().await;
    }
    // Down: the mount stays, nobody answers on the socket.
    assert!(is_mount_point(&target).expect("mountinfo"));
    // A plugin container restarts in a new mount namespace, without its writable view of a files
    // volume's tmpfs: the tmpfs lives on only at the pod's target.
    let files_view = dir
        .path()
        .join("state/volumes")
        .join(volume_dir_name("vol-rf"));
    nix::mount::umount2(&files_view, nix::mount::MntFlags::MNT_DETACH).expect("drop the view");
    assert!(
        UnixStream::connect(target.join(SOCKET_NAME)).await.is_err(),
        "nobody serves while the plugin is down"
    );

    // A record whose pod went away meanwhile (its volume directory is gone) is dropped.
    let gone = VolumeRecord {
        volume_id: "vol-gone".into(),
        target_path: dir.path().join("deleted-pod/mount"),
        mode: wimsey_csi::csi::VolumeMode::WorkloadApi,
        pod: None,
        attributes: Default::default(),
        fs_group: None,
    };
    RecordStore::open(dir.path().join("state/records"))
        .expect("records")
        .write(&gone)
        .expect("write");

    let plugin = Plugin::start(Arc::clone(&source), dir.path(), None).await;
    assert!(
        !dir.path().join("state/records/vol-gone.json").exists(),
        "record of a gone pod dropped"
    );
    assert_eq!(
        fetch_svid_id(&target.join(SOCKET_NAME)).await,
        WEB_ID,
        "served again through the same bind mount"
    );
    // The files writer is back too: a rotation reaches the existing tmpfs.
    let before = eventually("files written", || {
        std::fs::read_to_string(files_target.join("svid.pem")).ok()
    })
    .await;
    source.rotate("uid-rf", "spiffe://example.org/ns/default/sa/after-restart");
    eventually("files rewritten after restart", || {
        std::fs::read_to_string(files_target.join("svid.pem"))
            .ok()
            .filter(|pem| *pem != before)
    })
    .await;
    let mut node = plugin.node().await;
    for (id, t) in [("vol-r", &target), ("vol-rf", &files_target)] {
        node.node_unpublish_volume(unpublish_request(id, t))
            .await
            .expect("unpublish");
        assert!(!t.exists());
    }
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_get_info_names_the_driver_and_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = registration_socket(dir.path());
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some("csi.wimsey.dev-reg.sock")
    );
    let listener = bind_unix_socket(&path, 0o600).expect("bind");
    let failed = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_registration(
        listener,
        RegistrationService::new(
            "/var/lib/kubelet/plugins/csi.wimsey.dev/csi.sock".into(),
            failed.clone(),
        ),
        shutdown.clone(),
    ));
    let mut client =
        reg::registration_client::RegistrationClient::new(support::unix_channel(&path).await);
    let info = client
        .get_info(reg::InfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "csi.wimsey.dev");
    assert_eq!(
        info.endpoint,
        "/var/lib/kubelet/plugins/csi.wimsey.dev/csi.sock"
    );
    assert_eq!(info.supported_versions, vec!["1.0.0".to_owned()]);

    client
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .expect("notify ok");
    assert!(!failed.is_cancelled());
    client
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: false,
            error: "version not supported".into(),
        })
        .await
        .expect("notify failure");
    assert!(failed.is_cancelled(), "a refused registration is signalled");
    shutdown.cancel();
    task.await.expect("join").expect("server");
}

/// Publish and unpublish cycles in both modes: each publish leaves a mount with the mode's
/// content, each unpublish removes it, and nothing is left behind. (How long a publish takes is
/// judged against its targets by `make bench-csi-node`, on a release build: a debug build's
/// timings on a shared machine say nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_publish_and_unpublish_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(TestSource::new(), dir.path(), None).await;
    let mut node = plugin.node().await;
    for (mode, content) in [("workload-api", SOCKET_NAME), ("files", "svid.pem")] {
        for i in 0..20 {
            let volume = format!("cycle-{mode}-{i}");
            let target = dir.path().join(&volume);
            let request = publish_request(
                &volume,
                &target,
                &format!("uid-{volume}"),
                &[("mode", mode)],
            );
            node.node_publish_volume(request).await.expect("publish");
            assert!(
                is_mount_point(&target).expect("mountinfo"),
                "{volume} mounted"
            );
            let path = target.join(content);
            eventually(&format!("{volume} holding {content}"), || {
                path.exists().then_some(())
            })
            .await;
            node.node_unpublish_volume(unpublish_request(&volume, &target))
                .await
                .expect("unpublish");
            assert!(
                !is_mount_point(&target).expect("mountinfo"),
                "{volume} unmounted"
            );
            assert!(!target.exists(), "{volume} target removed");
        }
    }
    let records = RecordStore::open(dir.path().join("state/records"))
        .expect("records")
        .load_all()
        .expect("records");
    assert!(records.is_empty(), "no volume record left: {records:?}");
    plugin.stop().await;
}

/// One gRPC call the way kubelet's registration client makes it: raw HTTP/2 whose `:authority`
/// is the socket path. Returns the response message, or the RST_STREAM error code.
async fn call_with_path_authority(
    socket: &Path,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> Result<Vec<u8>, u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    let head = |len: usize, kind: u8, flags: u8, id: u32| {
        let l = u32::try_from(len).expect("len").to_be_bytes();
        let i = id.to_be_bytes();
        vec![l[1], l[2], l[3], kind, flags, i[0], i[1], i[2], i[3]]
    };
    let authority = socket.display().to_string();
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    headers.extend(
        extra_headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
    );
    let block = fluke_hpack::Encoder::new().encode(headers);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(head(0, 4, 0, 0));
    out.extend(head(block.len(), 1, 0x4, 1));
    out.extend(&block);
    out.extend(head(5, 0, 0x1, 1));
    out.extend([0, 0, 0, 0, 0]);
    stream.write_all(&out).await.expect("write");
    let read = async {
        loop {
            let mut h = [0u8; 9];
            stream.read_exact(&mut h).await.expect("frame head");
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let mut payload = vec![0u8; len];
            stream
                .read_exact(&mut payload)
                .await
                .expect("frame payload");
            match h[3] {
                // DATA: one gRPC message (5-byte prefix).
                0 if payload.len() >= 5 => return Ok(payload[5..].to_vec()),
                3 => {
                    return Err(u32::from_be_bytes(payload[..4].try_into().expect("code")));
                }
                4 if h[4] & 1 == 0 => {
                    stream
                        .write_all(&head(0, 4, 1, 0))
                        .await
                        .expect("settings ack");
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answer within 10s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_authority_is_accepted_on_workload_and_registration_sockets() {
    use prost::Message;
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(TestSource::new(), dir.path(), None).await;

    // A pod's Workload API socket (gRPC C-core clients such as py-spiffe).
    let target = dir.path().join("wl");
    let mut node = plugin.node().await;
    node.node_publish_volume(publish_request("vol-auth", &target, "uid-auth", &[]))
        .await
        .expect("publish");
    let reply = call_with_path_authority(
        &target.join(SOCKET_NAME),
        "/SpiffeWorkloadAPI/FetchX509SVID",
        &[("workload.spiffe.io", "true")],
    )
    .await
    .expect("FetchX509SVID answered");
    let svids = wimsey_proto::workload::X509svidResponse::decode(reply.as_slice()).expect("decode");
    assert_eq!(svids.svids[0].spiffe_id, WEB_ID);
    node.node_unpublish_volume(unpublish_request("vol-auth", &target))
        .await
        .expect("unpublish");
    plugin.stop().await;

    // The registration socket (kubelet's registration client).
    let path = registration_socket(dir.path());
    let listener = bind_unix_socket(&path, 0o600).expect("bind");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_registration(
        listener,
        RegistrationService::new("/plugin/csi.sock".into(), CancellationToken::new()),
        shutdown.clone(),
    ));
    let reply = call_with_path_authority(&path, "/pluginregistration.Registration/GetInfo", &[])
        .await
        .expect("GetInfo answered");
    let info = reg::PluginInfo::decode(reply.as_slice()).expect("PluginInfo");
    assert_eq!(info.name, "csi.wimsey.dev");
    assert_eq!(info.endpoint, "/plugin/csi.sock");
    shutdown.cancel();
    task.await.expect("join").expect("server");
}

/// `GET path` over HTTP/1.0 on the admin address: the status and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let status = response[9..12].parse().expect("status code");
    let body = response.split_once("\r\n\r\n").expect("head").1.to_owned();
    (status, body)
}

async fn readyz_becomes(addr: std::net::SocketAddr, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = http_get(addr, "/readyz").await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics_show(addr: std::net::SocketAddr, lines: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if lines.iter().all(|line| text.contains(line)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{lines:?} not all in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The plugin wired as `wimsey-csi` wires it: one Metrics for the manager and every pod server,
/// readiness from kubelet's registration, the admin address and CSI Probe answering from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_address_and_probe_follow_registration_and_count_volumes() {
    use wimsey_csi::admin::{plugin_readiness, serve_admin};
    use wimsey_csi::metrics::Metrics;

    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new());
    let manager = Arc::new(
        VolumeManager::new(
            TestSource::new(),
            ManagerConfig {
                state_dir: dir.path().join("state"),
                spire_agent_socket_dir: None,
                files_tmpfs_size: "1m".into(),
                files_tmpfs_inodes: DEFAULT_FILES_TMPFS_INODES,
                workload_api: Default::default(),
            },
        )
        .expect("manager")
        .with_metrics(Arc::clone(&metrics)),
    );
    let shutdown = CancellationToken::new();
    let registration =
        RegistrationService::new("/plugin/csi.sock".into(), CancellationToken::new());
    let ready = plugin_readiness(Some(registration.registered()), None);
    let admin_listener = wimsey_runtime::admin::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind admin");
    let admin_addr = admin_listener.local_addr().expect("admin addr");
    let admin = tokio::spawn(serve_admin(
        admin_listener,
        ready.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let csi_socket = dir.path().join("csi.sock");
    let csi_server = tokio::spawn(serve_csi(
        bind_unix_socket(&csi_socket, 0o600).expect("bind CSI"),
        Arc::clone(&manager),
        "node-1".into(),
        ready,
        shutdown.clone(),
    ));
    let reg_socket = registration_socket(dir.path());
    let reg_server = tokio::spawn(serve_registration(
        bind_unix_socket(&reg_socket, 0o600).expect("bind registration"),
        registration,
        shutdown.clone(),
    ));

    // Before kubelet confirms the registration: alive, not ready, and Probe says so.
    let mut identity = IdentityClient::new(support::unix_channel(&csi_socket).await);
    let probe = identity.probe(csi::ProbeRequest {}).await.expect("probe");
    assert_eq!(probe.into_inner().ready, Some(false));
    assert_eq!(http_get(admin_addr, "/livez").await.0, 200);
    assert_eq!(http_get(admin_addr, "/readyz").await.0, 503);

    let mut kubelet =
        reg::registration_client::RegistrationClient::new(support::unix_channel(&reg_socket).await);
    kubelet
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .expect("notify");
    readyz_becomes(admin_addr, 200).await;
    let probe = identity.probe(csi::ProbeRequest {}).await.expect("probe");
    assert_eq!(probe.into_inner().ready, Some(true));

    // A publish is counted with its mode and result, and its volume is active.
    let mut node = NodeClient::new(support::unix_channel(&csi_socket).await);
    let target = dir.path().join("pod/mount");
    std::fs::create_dir_all(dir.path().join("pod")).expect("parent");
    node.node_publish_volume(publish_request("vol-metrics", &target, "uid-m", &[]))
        .await
        .expect("publish");
    metrics_show(
        admin_addr,
        &[
            "wimsey_csi_volume_operations_total{operation=\"publish\",mode=\"workload-api\",result=\"ok\"} 1",
            "wimsey_csi_volume_operation_duration_seconds_count{operation=\"publish\",mode=\"workload-api\",result=\"ok\"} 1",
            "wimsey_csi_active_volumes{mode=\"workload-api\"} 1",
            "wimsey_csi_active_volumes{mode=\"files\"} 0",
        ],
    )
    .await;

    // The pod's Workload API calls are counted by RPC; an open stream shows while it is open.
    let socket = target.join(SOCKET_NAME);
    let client = WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("connect spiffe client");
    let mut stream = client.stream_x509_contexts().await.expect("stream");
    use futures_util::StreamExt;
    stream.next().await.expect("first").expect("context");
    metrics_show(admin_addr, &["wimsey_csi_workload_api_streams 1"]).await;
    drop(stream);
    let jwt = client.fetch_jwt_svid(&["metrics"], None).await;
    assert!(jwt.is_ok(), "{jwt:?}");
    metrics_show(
        admin_addr,
        &[
            "wimsey_csi_workload_api_streams 0",
            "wimsey_csi_workload_api_calls_total{rpc=\"FetchJWTSVID\",code=\"OK\"} 1",
            "wimsey_csi_workload_api_calls_total{rpc=\"FetchX509SVID\"",
        ],
    )
    .await;

    // A bad request counts under mode "unknown" with its code; unpublish empties the gauge.
    let bad = node
        .node_publish_volume(publish_request(
            "vol-bad",
            &target,
            "uid-m",
            &[("mode", "nope")],
        ))
        .await;
    assert_invalid(bad, "mode");
    node.node_unpublish_volume(unpublish_request("vol-metrics", &target))
        .await
        .expect("unpublish");
    metrics_show(
        admin_addr,
        &[
            "wimsey_csi_volume_operations_total{operation=\"publish\",mode=\"unknown\",result=\"INVALID_ARGUMENT\"} 1",
            "wimsey_csi_volume_operations_total{operation=\"unpublish\",mode=\"workload-api\",result=\"ok\"} 1",
            "wimsey_csi_active_volumes{mode=\"workload-api\"} 0",
        ],
    )
    .await;

    // kubelet withdrawing the registration makes the plugin unready again.
    kubelet
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: false,
            error: "test".into(),
        })
        .await
        .expect("notify");
    readyz_becomes(admin_addr, 503).await;

    shutdown.cancel();
    admin.await.expect("join").expect("admin");
    csi_server.await.expect("join").expect("csi");
    reg_server.await.expect("join").expect("registration");
    manager.shutdown().await;
}
