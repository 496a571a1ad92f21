//! One operator node API on loopback (real TLS, real gRPC, a real signing authority), with the
//! cluster replaced by a [`PodDirectory`] and a [`FakeReviewer`], and the plugin's node API
//! client pointed at it. Also the one-pod world most tests start from.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use wimsey_core::TrustDomain;
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::build_csr;
use wimsey_csi::identity::IdentitySnapshot;
use wimsey_csi::node_client::{NodeClient, NodeClientConfig, NodeClientError};
use wimsey_operator::authority::state::rotate;
use wimsey_operator::authority::{AuthorityArgs, SigningMaterial, StoredAuthority};
use wimsey_operator::config::{ConfigFlags, Settings};
use wimsey_operator::nodeapi::cluster::PodFacts;
use wimsey_operator::nodeapi::material::NodeAuthority;
use wimsey_operator::nodeapi::verdict::VerdictPolicy;
use wimsey_operator::nodeapi::{ClusterAccess, FederatedBundles, NodeApi, NodeApiArgs};
use wimsey_operator::reconcile::PodDirectory;
use wimsey_operator::store::{EntryStore, StoredEntry};
use wimsey_proto::wimsey::node::v1::node_client::NodeClient as NodeGrpc;
use wimsey_proto::wimsey::node::v1::{EntryCsr, MintJwtSvidRequest, PodRef, SignX509SvidsRequest};

use super::fixtures::{pod_facts, pod_record, stored_entry};
use super::reviewer::{FakeReviewer, token};

pub(crate) const TRUST_DOMAIN: &str = "pipeline-test.example";
pub(crate) const CLUSTER: &str = "c1";
pub(crate) const NAMESPACE: &str = "wimsey-system";
pub(crate) const APP_NS: &str = "apps";

pub(crate) fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).unwrap()
}

#[derive(Parser)]
struct AuthorityCli {
    #[command(flatten)]
    authority: AuthorityArgs,
}

pub(crate) fn authority_args() -> AuthorityArgs {
    let mut args = AuthorityCli::parse_from(["test"]).authority;
    args.authority_namespace = NAMESPACE.into();
    args
}

pub(crate) fn material(args: &AuthorityArgs) -> SigningMaterial {
    let lifetimes = args.lifetimes();
    let mut stored = StoredAuthority::empty(&trust_domain());
    rotate(&mut stored, &trust_domain(), &lifetimes, SystemTime::now()).unwrap();
    SigningMaterial::from_stored(&stored, &trust_domain(), &lifetimes, SystemTime::now()).unwrap()
}

pub(crate) fn settings() -> Settings {
    Settings::from_flags(ConfigFlags {
        trust_domain: Some(TRUST_DOMAIN.into()),
        cluster_name: Some(CLUSTER.into()),
        cluster_domain: Some("cluster.local".into()),
        ..ConfigFlags::default()
    })
    .unwrap()
}

/// A node API on loopback over `directory` and `reviewer`.
pub(crate) struct Server {
    pub(crate) endpoint: String,
    pub(crate) bundle_file: tempfile::NamedTempFile,
    pub(crate) shutdown: CancellationToken,
    _material: watch::Sender<Arc<SigningMaterial>>,
    _federated: watch::Sender<FederatedBundles>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn start(
    directory: PodDirectory,
    reviewer: Arc<FakeReviewer>,
    store: EntryStore,
) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(
        listener,
        material(&authority_args()),
        directory,
        reviewer,
        store,
    )
}

/// A node API serving `material` on `listener`; the bundle file holds `material`'s roots, as
/// kubelet's copy of the bundle ConfigMap would.
pub(crate) fn start_on(
    listener: tokio::net::TcpListener,
    material: SigningMaterial,
    directory: PodDirectory,
    reviewer: Arc<FakeReviewer>,
    store: EntryStore,
) -> Server {
    let bundle_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bundle_file.path(), material.bundle.x509_authorities_pem()).unwrap();
    let (material_tx, material_rx) = watch::channel(Arc::new(material));
    let (federated_tx, federated_rx) = watch::channel(FederatedBundles::default());
    let api = NodeApi::with_cluster(
        NodeAuthority::new(material_rx, authority_args()),
        store,
        ClusterAccess {
            view: Arc::new(directory),
            reviewer,
            // Every verdict is due for a new review at once: what an outage longer than the
            // refresh period looks like, without waiting for it.
            verdicts: VerdictPolicy {
                refresh: Duration::ZERO,
                ..VerdictPolicy::default()
            },
        },
        settings(),
        NodeApiArgs {
            node_api_addr: "127.0.0.1:0".parse().unwrap(),
            csi_service_account: "wimsey-csi".into(),
            node_token_audience: "wimsey-node".into(),
            pod_token_audience: "wimsey".into(),
            limits: Default::default(),
        },
        federated_rx,
    );
    let endpoint = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(api.serve(listener, shutdown.clone()));
    Server {
        endpoint,
        bundle_file,
        shutdown,
        _material: material_tx,
        _federated: federated_tx,
    }
}

pub(crate) fn plugin(
    server: &Server,
    node: &str,
    token: &str,
) -> (NodeClient, tempfile::NamedTempFile) {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), token).unwrap();
    let mut config = NodeClientConfig::new(&server.endpoint, node.into(), trust_domain()).unwrap();
    config.token_path = token_file.path().to_owned();
    config.bundle_path = server.bundle_file.path().to_owned();
    (NodeClient::new(config).unwrap(), token_file)
}

pub(crate) fn code_of(error: NodeClientError) -> tonic::Code {
    match error {
        NodeClientError::Status(status) => status.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

pub(crate) fn sign_request(
    pod: &PodFacts,
    token: &str,
    entry: &StoredEntry,
) -> SignX509SvidsRequest {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    SignX509SvidsRequest {
        pod: Some(PodRef {
            pod_uid: pod.uid.clone(),
            pod_token: token.to_owned(),
        }),
        csrs: vec![EntryCsr {
            entry_id: entry.id.clone(),
            csr: build_csr(&key, &entry.entry.spiffe_id, &[]).unwrap(),
        }],
    }
}

/// Signing `request` is refused with `code`.
pub(crate) async fn assert_refused(
    grpc: &mut NodeGrpc<Channel>,
    request: SignX509SvidsRequest,
    code: tonic::Code,
) {
    let status = grpc.sign_x509_svids(request).await.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
}

pub(crate) fn jwt_request(pod: &PodFacts, token: &str, entry: &StoredEntry) -> MintJwtSvidRequest {
    MintJwtSvidRequest {
        pod: Some(PodRef {
            pod_uid: pod.uid.clone(),
            pod_token: token.to_owned(),
        }),
        spiffe_id: entry.entry.spiffe_id.as_str().to_owned(),
        audience: vec!["svc".into()],
    }
}

pub(crate) async fn wait_for_snapshot(
    snapshots: &mut watch::Receiver<Arc<IdentitySnapshot>>,
    what: &str,
    done: impl Fn(&IdentitySnapshot) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if done(&snapshots.borrow_and_update()) {
                return;
            }
            snapshots.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Node n1 with its plugin pod and one app pod that has one entry; both pods' tokens accepted.
pub(crate) struct OnePod {
    pub(crate) app: PodFacts,
    pub(crate) directory: PodDirectory,
    pub(crate) store: EntryStore,
    pub(crate) app_entry: StoredEntry,
    pub(crate) reviewer: Arc<FakeReviewer>,
    pub(crate) csi_token: String,
    pub(crate) app_token: String,
}

pub(crate) fn one_pod_on_n1() -> OnePod {
    let hour = Duration::from_secs(3600);
    let csi = pod_facts("csi-uid", NAMESPACE, "csi-n1", "wimsey-csi", "n1");
    let app = pod_facts("app-uid", APP_NS, "app", "app", "n1");
    let directory = PodDirectory::new();
    let store = EntryStore::new();
    let app_entry = stored_entry(&format!("spiffe://{TRUST_DOMAIN}/ns/{APP_NS}/sa/app"));
    directory.apply_facts(csi.clone());
    directory.apply_facts(app.clone());
    store.set_pod(&app.uid, Some(pod_record(&app, vec![app_entry.clone()])));
    directory.mark_synced();
    let reviewer = Arc::new(FakeReviewer::default());
    let csi_token = token(&csi.uid, 1, hour);
    reviewer.accept(
        &csi_token,
        "wimsey-node",
        NAMESPACE,
        "wimsey-csi",
        ("csi-n1", &csi.uid),
    );
    let app_token = token(&app.uid, 1, hour);
    reviewer.accept(&app_token, "wimsey", APP_NS, "app", ("app", &app.uid));
    OnePod {
        app,
        directory,
        store,
        app_entry,
        reviewer,
        csi_token,
        app_token,
    }
}

pub(crate) fn issued(snapshot: &IdentitySnapshot) -> bool {
    matches!(snapshot, IdentitySnapshot::Issued(_))
}
