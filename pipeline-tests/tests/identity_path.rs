//! A pod's whole identity path in one process, with no cluster: the operator's node API (real
//! signing authority, real TLS on loopback; the API server replaced by a [`PodDirectory`] and a
//! fake TokenReview), the CSI plugin as it runs in production (its node API client as the
//! identity source, the volume manager, the CSI Node service on a Unix socket, the per-pod
//! Workload API server bound into the volume's target with a real bind mount), and the `spiffe`
//! crate as the workload. The tests run as root (mounts), as `make test` does.
//!
//! Attest → publish → fetch → rotate → revoke → unpublish, and a plugin on another node that
//! gets nothing for the pod.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use spiffe::{JwtSvid, WorkloadApiClient};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use wimsey_core::x509::{CLOCK_SKEW_BACKDATE, certificate_validity, verify_svid};
use wimsey_csi::csi::{ManagerConfig, SOCKET_NAME, VolumeManager, serve_csi};
use wimsey_csi::node_client::{NodeClient, NodeClientConfig};
use wimsey_csi::socket::bind_unix_socket;
use wimsey_proto::csi::v1 as csi;
use wimsey_proto::csi::v1::node_client::NodeClient as CsiNodeClient;
use wimsey_proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};

use support::fixtures::{pod_facts, pod_record};
use support::node_api::{APP_NS, NAMESPACE, OnePod, Server, one_pod_on_n1, start, trust_domain};
use support::reviewer::token;

const WAIT: Duration = Duration::from_secs(30);

/// The CSI plugin for one node, wired as `wimsey-csi` wires it: its node API client (keeping its
/// node session) feeds the volume manager, served on a CSI socket.
struct Plugin {
    csi: CsiNodeClient<Channel>,
    manager: Arc<VolumeManager<NodeClient>>,
    shutdown: CancellationToken,
    csi_task: JoinHandle<Result<(), tonic::transport::Error>>,
    _token_file: tempfile::NamedTempFile,
}

impl Plugin {
    async fn start(server: &Server, node: &str, node_token: &str, dir: &Path) -> Self {
        let token_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token_file.path(), node_token).unwrap();
        let mut config =
            NodeClientConfig::new(&server.endpoint, node.into(), trust_domain()).unwrap();
        config.token_path = token_file.path().to_owned();
        config.bundle_path = server.bundle_file.path().to_owned();
        config.denial_grace = Duration::from_secs(1);
        let client = NodeClient::new(config).unwrap();
        let shutdown = CancellationToken::new();
        let (keeper, keeper_shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move { keeper.keep_session(keeper_shutdown).await });
        let ready = wimsey_csi::admin::plugin_readiness(None, Some(client.session_state()));
        let manager = Arc::new(
            VolumeManager::new(
                Arc::new(client),
                ManagerConfig {
                    state_dir: dir.join("state"),
                    spire_agent_socket_dir: None,
                    files_tmpfs_size: "1m".into(),
                    files_tmpfs_inodes: wimsey_csi::csi::manager::DEFAULT_FILES_TMPFS_INODES,
                    workload_api: Default::default(),
                },
            )
            .unwrap(),
        );
        manager.restore().await.unwrap();
        let socket = dir.join("csi.sock");
        let listener = bind_unix_socket(&socket, 0o600).unwrap();
        let csi_task = tokio::spawn(serve_csi(
            listener,
            Arc::clone(&manager),
            node.into(),
            ready,
            shutdown.clone(),
        ));
        Self {
            csi: CsiNodeClient::new(unix_channel(&socket).await),
            manager,
            shutdown,
            csi_task,
            _token_file: token_file,
        }
    }

    /// Publishes a Workload API volume for `pod` at `target`, as kubelet does (pod facts and
    /// the pod's token for the `wimsey` audience in the volume context).
    async fn publish(&mut self, volume: &str, target: &Path, pod: &PodToken<'_>) {
        self.csi
            .node_publish_volume(publish_request(volume, target, pod))
            .await
            .expect("NodePublishVolume");
    }

    async fn unpublish(&mut self, volume: &str, target: &Path) {
        self.csi
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: volume.into(),
                target_path: target.display().to_string(),
            })
            .await
            .expect("NodeUnpublishVolume");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.csi_task.await.unwrap().unwrap();
        self.manager.shutdown().await;
    }
}

/// What kubelet knows of the pod a volume is for.
struct PodToken<'a> {
    uid: &'a str,
    name: &'a str,
    token: &'a str,
}

fn publish_request(
    volume: &str,
    target: &Path,
    pod: &PodToken<'_>,
) -> csi::NodePublishVolumeRequest {
    let tokens = serde_json::json!({
        "wimsey": {"token": pod.token, "expirationTimestamp": "2030-01-01T00:00:00Z"},
    });
    let context: HashMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", pod.name),
        ("csi.storage.k8s.io/pod.namespace", APP_NS),
        ("csi.storage.k8s.io/pod.uid", pod.uid),
        ("csi.storage.k8s.io/serviceAccount.name", "app"),
        ("csi.storage.k8s.io/ephemeral", "true"),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            &tokens.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    csi::NodePublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

async fn unix_channel(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

async fn workload_client(target: &Path) -> WorkloadApiClient {
    let socket: PathBuf = target.join(SOCKET_NAME);
    WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("the spiffe crate connects to the pod's socket")
}

/// A fresh target directory's parent, as kubelet makes it (`pods/<uid>/volumes/...`).
fn target_in(dir: &Path, name: &str) -> PathBuf {
    let parent = dir.join("pods").join(name);
    std::fs::create_dir_all(&parent).unwrap();
    parent.join("mount")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_attested_served_rotated_and_revoked_through_the_whole_path() {
    let OnePod {
        app,
        directory,
        store,
        mut app_entry,
        reviewer,
        csi_token,
        app_token,
    } = one_pod_on_n1();
    // A 4 s X.509-SVID, so the plugin renews it (at half-life) while the test watches.
    app_entry.entry.x509_svid_ttl = Duration::from_secs(4);
    store.set_pod(&app.uid, Some(pod_record(&app, vec![app_entry.clone()])));
    let server = start(directory, reviewer, store.clone()).await;
    let roots = {
        let pem = std::fs::read_to_string(server.bundle_file.path()).unwrap();
        wimsey_core::x509::pem::decode_certificates(&pem).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = Plugin::start(&server, "n1", &csi_token, dir.path()).await;

    // Publish: kubelet hands over the pod's token; the pod's socket appears in its volume.
    let target = target_in(dir.path(), "app");
    let pod = PodToken {
        uid: &app.uid,
        name: "app",
        token: &app_token,
    };
    plugin.publish("vol-app", &target, &pod).await;
    let client = workload_client(&target).await;

    // Fetch: the SVID names the entry's ID, chains to the authority's roots, and the context
    // carries our trust domain's bundle.
    let mut contexts = client.stream_x509_contexts().await.expect("stream");
    let first = tokio::time::timeout(WAIT, contexts.next())
        .await
        .expect("a first X.509 context")
        .expect("stream open")
        .expect("context");
    let svid = first.default_svid().expect("an SVID");
    assert_eq!(
        svid.spiffe_id().to_string(),
        app_entry.entry.spiffe_id.as_str()
    );
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let verified = verify_svid(
        &chain,
        |td| (*td == trust_domain()).then_some(roots.as_slice()),
        SystemTime::now(),
    )
    .expect("the SVID chains to the authority's roots");
    assert_eq!(verified.spiffe_id, app_entry.entry.spiffe_id);
    let td = spiffe::TrustDomain::new(trust_domain().to_string()).unwrap();
    assert!(first.bundle_set().get(&td).is_some(), "own bundle served");
    let first_leaf = chain[0].clone();

    // JWT-SVID: minted through the node API, validated offline with the served JWT bundle.
    let jwt = client
        .fetch_jwt_svid(&["svc"], None)
        .await
        .expect("JWT-SVID");
    let jwt_bundles = client.fetch_jwt_bundles().await.expect("JWT bundles");
    let validated =
        JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["svc"]).expect("valid JWT-SVID");
    assert_eq!(
        validated.spiffe_id().to_string(),
        app_entry.entry.spiffe_id.as_str()
    );

    // Rotate: a new SVID arrives on the open stream before the first one expires.
    let rotated = tokio::time::timeout(WAIT, async {
        loop {
            let context = contexts
                .next()
                .await
                .expect("stream open")
                .expect("context");
            let leaf = context.default_svid().expect("an SVID").cert_chain()[0]
                .as_bytes()
                .to_vec();
            if leaf != first_leaf {
                return leaf;
            }
        }
    })
    .await
    .expect("a rotated SVID");
    let (rotated_from, rotated_until) = certificate_validity(&rotated).unwrap();
    let (_, first_until) = certificate_validity(&first_leaf).unwrap();
    assert!(
        rotated_until > first_until,
        "the new SVID outlives the old one"
    );
    // Issued (notBefore is backdated by the clock-skew allowance) before the first one expired.
    assert!(
        rotated_from + CLOCK_SKEW_BACKDATE < first_until,
        "rotated at {:?}, after the first SVID expired at {first_until:?}",
        rotated_from + CLOCK_SKEW_BACKDATE
    );

    // Revoke: the entry no longer selects the pod, so the workload has no identity.
    store.set_pod(&app.uid, Some(pod_record(&app, Vec::new())));
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match client.fetch_x509_svid().await {
                Err(error) => return error,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the identity is taken away");
    assert!(
        refused.to_string().contains("no identity issued"),
        "{refused}"
    );

    // Unpublish: the pod's socket is gone with its volume.
    let socket = plugin.manager.volume_dir("vol-app").join(SOCKET_NAME);
    assert!(socket.exists(), "served from {}", socket.display());
    plugin.unpublish("vol-app", &target).await;
    assert!(!socket.exists(), "{} left behind", socket.display());
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_on_another_node_gets_nothing_for_the_pod() {
    let OnePod {
        app,
        directory,
        store,
        reviewer,
        app_token,
        ..
    } = one_pod_on_n1();
    // A second node with its own plugin pod, whose token the API server accepts.
    let csi_n2 = pod_facts("csi2-uid", NAMESPACE, "csi-n2", "wimsey-csi", "n2");
    directory.apply_facts(csi_n2.clone());
    let n2_token = token(&csi_n2.uid, 1, Duration::from_secs(3600));
    reviewer.accept(
        &n2_token,
        "wimsey-node",
        NAMESPACE,
        "wimsey-csi",
        ("csi-n2", &csi_n2.uid),
    );
    let server = start(directory, reviewer.clone(), store).await;
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = Plugin::start(&server, "n2", &n2_token, dir.path()).await;

    // kubelet on n2 would never do this for a pod on n1; a compromised n2 might.
    let target = target_in(dir.path(), "stolen");
    plugin
        .publish(
            "vol-stolen",
            &target,
            &PodToken {
                uid: &app.uid,
                name: "app",
                token: &app_token,
            },
        )
        .await;
    let client = workload_client(&target).await;
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match client.fetch_x509_svid().await {
                Err(error) if error.to_string().contains("no identity issued") => return error,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(svid) => panic!("node n2 obtained {} for a pod on n1", svid.spiffe_id()),
            }
        }
    })
    .await
    .expect("a definite refusal");
    assert!(refused.to_string().contains("no identity issued"));
    plugin.unpublish("vol-stolen", &target).await;
    plugin.stop().await;
}
