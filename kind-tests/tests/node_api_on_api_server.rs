//! The authority and the node API against a real API server (`$KUBECONFIG`): Secret creation
//! race, bundle ConfigMap, node attestation through TokenReview with real pod-bound tokens from
//! the TokenRequest API, every per-pod security check, and the CSI plugin's node API client end
//! to end. gRPC runs over a real TCP loopback socket with real TLS.
//!
//! Run by `make test-operator-cp`, which brings a cluster up first. Each test works in its own
//! namespace and creates its own Node objects (no kubelet behind them: the pods only need to
//! exist with `spec.nodeName` set), and deletes them at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::bundle::{TrustDomainBundle, parse_x509_authorities_pem};
use wimsey_core::entries::{Entry, EntryOwner, OwnerKind, Selector};
use wimsey_core::jose::PublicJwk;
use wimsey_core::jose::jwt_svid::{JwtSvidValidation, validate_jwt_svid};
use wimsey_core::jose::wimse::{WitValidation, validate_wit};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::{build_csr, verify_svid};
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_csi::identity::{IdentitySnapshot, IdentitySource, PodIdentity, PodInfo};
use wimsey_csi::node_client::{NodeClient, NodeClientConfig, NodeClientError};
use wimsey_operator::admin::Metrics;
use wimsey_operator::authority::state::StoredPhase;
use wimsey_operator::authority::store::KubeStore;
use wimsey_operator::authority::{
    AuthorityArgs, AuthorityError, BUNDLE_PEM_KEY, BUNDLE_SPIFFE_KEY, KeyKind, SECRET_DATA_KEY,
    SigningAuthority, SigningMaterial, StoredAuthority,
};
use wimsey_operator::config::{ConfigFlags, Settings};
use wimsey_operator::nodeapi::{FederatedBundles, NodeApi, NodeApiArgs, NodeApiLimits};
use wimsey_operator::reconcile::PodDirectory;
use wimsey_operator::store::{EntryStore, PodRecord, StoredEntry};
use wimsey_proto::wimsey::node::v1::{
    EntryCsr, MintJwtSvidRequest, MintWitSvidRequest, PodRef, SignX509SvidsRequest, WatchPodRequest,
};
use zeroize::Zeroizing;

const TRUST_DOMAIN: &str = "identity-test.example";
const CLUSTER: &str = "cp";
const WAIT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace and Node objects of one test, deleted on drop (best effort).
struct Fixture {
    client: Client,
    namespace: String,
    nodes: Vec<String>,
}

impl Fixture {
    async fn new(label: &str) -> Self {
        let client = Client::try_default()
            .await
            .expect("a cluster (KUBECONFIG); make test-operator-cp brings one up");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let namespace = format!("wimsey-id-{label}-{}-{n}", std::process::id());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Self {
            client,
            namespace,
            nodes: Vec::new(),
        }
    }

    async fn node(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.namespace);
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
        self.nodes.push(name.clone());
        name
    }

    async fn service_account(&self, name: &str) {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
    }

    /// A pod object bound to `node`; returns its UID.
    async fn pod(&self, name: &str, service_account: &str, node: &str) -> String {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": service_account,
                "nodeName": node,
                "automountServiceAccountToken": false,
                "containers": [{"name": "c", "image": "localhost/wimsey/pause:none"}],
            }
        }))
        .unwrap();
        let created = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        created.metadata.uid.unwrap()
    }

    /// A token from the TokenRequest API for `audience`, bound to pod `pod` (`uid`).
    async fn token(&self, service_account: &str, audience: &str, pod: &str, uid: &str) -> String {
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience],
                "expirationSeconds": 600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid},
            }
        });
        let response: TokenRequest =
            Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace)
                .create_subresource("token", service_account, &PostParams::default(), &request)
                .await
                .unwrap();
        response.status.unwrap().token
    }

    /// The authority over this namespace's Secret, as one replica loads it at start.
    async fn load_authority(&self) -> Result<SigningAuthority, AuthorityError> {
        let args = self.authority_args();
        let store = KubeStore::new(
            self.client.clone(),
            &args.authority_namespace,
            &args.authority_secret,
            &args.bundle_configmap,
        );
        SigningAuthority::load(
            Arc::new(store),
            trust_domain(),
            args,
            Arc::new(Metrics::new()),
        )
        .await
    }

    fn authority_args(&self) -> AuthorityArgs {
        AuthorityArgs {
            authority_namespace: self.namespace.clone(),
            authority_secret: "wimsey-authority".into(),
            bundle_configmap: "wimsey-bundle".into(),
            bundle_owner: None,
            ca_ttl: Duration::from_secs(24 * 3600),
            jwt_key_ttl: Duration::from_secs(24 * 3600),
            key_propagation_delay: Duration::from_secs(3600),
            max_x509_svid_ttl: Duration::from_secs(12 * 3600),
            max_jwt_svid_ttl: Duration::from_secs(3600),
            node_svid_ttl: Duration::from_secs(3600),
            server_svid_ttl: Duration::from_secs(3600),
            jwt_issuer_url: None,
            upstream_ca_secret: None,
        }
    }

    async fn cleanup(self) {
        for node in &self.nodes {
            let _ = Api::<Node>::all(self.client.clone())
                .delete(node, &DeleteParams::default())
                .await;
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).unwrap()
}

fn settings() -> Settings {
    Settings::from_flags(ConfigFlags {
        trust_domain: Some(TRUST_DOMAIN.into()),
        cluster_name: Some(CLUSTER.into()),
        cluster_domain: Some("cluster.local".into()),
        ..ConfigFlags::default()
    })
    .unwrap()
}

fn entry(spiffe_id: &str, dns: &[&str]) -> StoredEntry {
    let id = SpiffeId::parse(spiffe_id).unwrap();
    StoredEntry {
        id: format!("e-{}", id.path().replace('/', "-")),
        entry: Entry {
            spiffe_id: id,
            parent_id: SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/spire/agent/x")).unwrap(),
            selectors: vec![Selector::new("k8s", "ns:x")],
            x509_svid_ttl: Duration::ZERO,
            jwt_svid_ttl: Duration::ZERO,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            dns_names: dns.iter().map(|d| (*d).to_owned()).collect(),
            hint: String::new(),
            store_svid: false,
        },
        owner: EntryOwner {
            kind: OwnerKind::ClusterSpiffeId,
            name: "test".into(),
            uid: "u".into(),
            creation_timestamp: 0,
            deletion_timestamp: None,
        },
    }
}

fn record(
    uid: &str,
    namespace: &str,
    name: &str,
    sa: &str,
    node: &str,
    entries: Vec<StoredEntry>,
) -> PodRecord {
    PodRecord {
        uid: uid.into(),
        namespace: namespace.into(),
        name: name.into(),
        service_account: sa.into(),
        node_name: node.into(),
        entries,
    }
}

/// A running node API on 127.0.0.1 and what a plugin needs to reach it.
struct Server {
    authority: SigningAuthority,
    endpoint: String,
    bundle_file: tempfile::NamedTempFile,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<Result<(), wimsey_operator::nodeapi::NodeApiError>>,
    federated: watch::Sender<FederatedBundles>,
    /// What the informer would know: the test namespace's pods when the server started.
    pods: PodDirectory,
}

async fn start_server(fixture: &Fixture, store: &EntryStore) -> Server {
    start_server_with(fixture, store, fixture.authority_args()).await
}

async fn start_server_with(fixture: &Fixture, store: &EntryStore, args: AuthorityArgs) -> Server {
    start_server_limited(fixture, store, args, NodeApiLimits::default()).await
}

async fn start_server_limited(
    fixture: &Fixture,
    store: &EntryStore,
    args: AuthorityArgs,
    limits: NodeApiLimits,
) -> Server {
    let shutdown = CancellationToken::new();
    let authority = SigningAuthority::start(
        fixture.client.clone(),
        trust_domain(),
        args,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let (federated, federated_rx) = watch::channel(FederatedBundles::default());
    // Every test creates its pods before starting the server.
    let pods = PodDirectory::new();
    let listed = Api::<Pod>::namespaced(fixture.client.clone(), &fixture.namespace)
        .list(&Default::default())
        .await
        .unwrap();
    for pod in &listed.items {
        pods.apply(&wimsey_operator::views::pod_view(pod));
    }
    pods.mark_synced();
    let api = NodeApi::new(
        fixture.client.clone(),
        authority.clone(),
        store.clone(),
        pods.clone(),
        settings(),
        NodeApiArgs {
            node_api_addr: "127.0.0.1:0".parse().unwrap(),
            csi_service_account: "wimsey-csi".into(),
            node_token_audience: "wimsey-node".into(),
            pod_token_audience: "wimsey".into(),
            limits,
        },
        federated_rx,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let serving = tokio::spawn(api.serve(listener, shutdown.clone()));
    // The plugin's bootstrap trust: the PEM the wimsey-bundle ConfigMap carries.
    let bundle_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bundle_file.path(),
        authority.current().bundle.x509_authorities_pem(),
    )
    .unwrap();
    Server {
        authority,
        endpoint,
        bundle_file,
        shutdown,
        serving,
        federated,
        pods,
    }
}

/// A node API client for `node` holding `token` as its own projected token.
fn plugin(server: &Server, node: &str, token: &str) -> (NodeClient, tempfile::NamedTempFile) {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), token).unwrap();
    let mut config = NodeClientConfig::new(&server.endpoint, node.into(), trust_domain()).unwrap();
    config.token_path = token_file.path().to_owned();
    config.bundle_path = server.bundle_file.path().to_owned();
    // Removed entries take identities away once the denial has held this long.
    config.denial_grace = Duration::from_secs(2);
    (NodeClient::new(config).unwrap(), token_file)
}

fn code_of(error: NodeClientError) -> tonic::Code {
    match error {
        NodeClientError::Status(status) => status.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn csr_for(id: &str) -> Vec<u8> {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    build_csr(&key, &SpiffeId::parse(id).unwrap(), &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_secret_is_created_once_and_the_bundle_is_published() {
    let fixture = Fixture::new("authority").await;
    // Two replicas starting at the same moment.
    let (a, b) = tokio::join!(fixture.load_authority(), fixture.load_authority(),);
    let (a, b) = (a.unwrap(), b.unwrap());
    let (ca_a, ca_b) = (a.current(), b.current());
    assert_eq!(
        ca_a.ca.certificate(),
        ca_b.ca.certificate(),
        "one CA for the trust domain"
    );
    assert_eq!(ca_a.jwt.kid, ca_b.jwt.kid);

    let secrets = Api::<Secret>::namespaced(fixture.client.clone(), &fixture.namespace);
    let listed = secrets.list(&Default::default()).await.unwrap();
    let authority_secrets: Vec<_> = listed
        .items
        .iter()
        .filter(|s| s.metadata.name.as_deref() == Some("wimsey-authority"))
        .collect();
    assert_eq!(authority_secrets.len(), 1);

    let cm = Api::<ConfigMap>::namespaced(fixture.client.clone(), &fixture.namespace)
        .get("wimsey-bundle")
        .await
        .unwrap();
    let data: BTreeMap<String, String> = cm.data.unwrap();
    let roots = parse_x509_authorities_pem(&data[BUNDLE_PEM_KEY]).unwrap();
    assert_eq!(roots, vec![ca_a.ca.certificate().as_bytes().to_vec()]);
    let bundle =
        TrustDomainBundle::from_spiffe_jwks(trust_domain(), data[BUNDLE_SPIFFE_KEY].as_bytes())
            .unwrap();
    assert_eq!(bundle.x509_authorities, roots);
    assert!(bundle.jwt_authorities.contains_key(&ca_a.jwt.kid));
    assert!(bundle.wit_authorities.contains_key(&ca_a.wit.kid));
    assert_eq!(bundle.refresh_hint_seconds, Some(900));
    assert_eq!(bundle.sequence_number, Some(ca_a.generation));

    // A third replica later loads the same keys.
    let c = fixture.load_authority().await.unwrap();
    assert_eq!(c.current().ca.certificate(), ca_a.ca.certificate());
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_enforces_node_pod_and_token_checks() {
    let mut fixture = Fixture::new("nodeapi").await;
    let ns = fixture.namespace.clone();
    let node_a = fixture.node("a").await;
    let node_b = fixture.node("b").await;
    for sa in ["wimsey-csi", "intruder", "app"] {
        fixture.service_account(sa).await;
    }
    let csi_a = fixture.pod("csi-a", "wimsey-csi", &node_a).await;
    let intruder_a = fixture.pod("intruder-a", "intruder", &node_a).await;
    let app_a = fixture.pod("app-a", "app", &node_a).await;
    let app_b = fixture.pod("app-b", "app", &node_b).await;

    let store = EntryStore::new();
    let app_id = format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/app");
    let app_entry = entry(&app_id, &["app.example.internal"]);
    store.set_pod(
        &app_a,
        Some(record(
            &app_a,
            &ns,
            "app-a",
            "app",
            &node_a,
            vec![app_entry.clone()],
        )),
    );
    store.set_pod(
        &app_b,
        Some(record(
            &app_b,
            &ns,
            "app-b",
            "app",
            &node_b,
            vec![app_entry.clone()],
        )),
    );
    let server = start_server(&fixture, &store).await;

    // Attestation: the right SA, pod and node.
    let csi_token = fixture
        .token("wimsey-csi", "wimsey-node", "csi-a", &csi_a)
        .await;
    let (plugin_a, _t) = plugin(&server, &node_a, &csi_token);
    let session = plugin_a.attest().await.unwrap();
    assert_eq!(
        session.spiffe_id,
        format!("spiffe://{TRUST_DOMAIN}/spire/agent/wimsey/{CLUSTER}/{node_a}")
    );
    assert!(session.expires_at > SystemTime::now());

    // Refused: another service account, a token for another audience, a pod on another node.
    let intruder_token = fixture
        .token("intruder", "wimsey-node", "intruder-a", &intruder_a)
        .await;
    let (intruder, _t) = plugin(&server, &node_a, &intruder_token);
    assert_eq!(
        code_of(intruder.attest().await.unwrap_err()),
        tonic::Code::PermissionDenied
    );
    let wrong_audience = fixture.token("wimsey-csi", "wimsey", "csi-a", &csi_a).await;
    let (wrong, _t) = plugin(&server, &node_a, &wrong_audience);
    assert_eq!(
        code_of(wrong.attest().await.unwrap_err()),
        tonic::Code::Unauthenticated
    );
    let (elsewhere, _t) = plugin(&server, &node_b, &csi_token);
    assert_eq!(
        code_of(elsewhere.attest().await.unwrap_err()),
        tonic::Code::PermissionDenied
    );

    // Signing for a pod on node A with node A's credential and the pod's own token.
    let app_a_token = fixture.token("app", "wimsey", "app-a", &app_a).await;
    let pod_a = PodRef {
        pod_uid: app_a.clone(),
        pod_token: app_a_token.clone(),
    };
    let sign = |pod: PodRef| SignX509SvidsRequest {
        pod: Some(pod),
        csrs: vec![EntryCsr {
            entry_id: app_entry.id.clone(),
            csr: csr_for(&app_id),
        }],
    };
    let mut grpc = session.grpc();
    let signed = grpc
        .sign_x509_svids(sign(pod_a.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.svids.len(), 1);
    let material = server.authority.current();
    let roots = &material.bundle.x509_authorities;
    let verified = verify_svid(
        &signed.svids[0].chain,
        |td| (*td == trust_domain()).then_some(roots.as_slice()),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(verified.spiffe_id.as_str(), app_id);
    assert_eq!(verified.dns_names, vec!["app.example.internal".to_owned()]);

    // Node A's credential for a pod on node B: refused even with that pod's valid token.
    let app_b_token = fixture.token("app", "wimsey", "app-b", &app_b).await;
    let status = grpc
        .sign_x509_svids(sign(PodRef {
            pod_uid: app_b.clone(),
            pod_token: app_b_token,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // A forged pod UID: the pod on node A, but the token of another pod.
    let intruder_pod_token = fixture
        .token("intruder", "wimsey", "intruder-a", &intruder_a)
        .await;
    let status = grpc
        .sign_x509_svids(sign(PodRef {
            pod_uid: app_a.clone(),
            pod_token: intruder_pod_token,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // A UID the store does not know.
    let status = grpc
        .sign_x509_svids(sign(PodRef {
            pod_uid: "00000000-0000-0000-0000-000000000000".into(),
            pod_token: app_a_token.clone(),
        }))
        .await
        .unwrap_err();
    // A pod the informer has not seen may just be new: retry, not a denial.
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // The pod's token for another audience.
    let node_audience = fixture.token("app", "wimsey-node", "app-a", &app_a).await;
    let status = grpc
        .sign_x509_svids(sign(PodRef {
            pod_uid: app_a.clone(),
            pod_token: node_audience,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // Without a node SVID only Attest is served.
    let status = plugin_a
        .server_auth_only()
        .unwrap()
        .sign_x509_svids(sign(pod_a.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // JWT-SVID and WIT-SVID for the pod's identity; another identity is refused.
    let jwt = grpc
        .mint_jwt_svid(MintJwtSvidRequest {
            pod: Some(pod_a.clone()),
            spiffe_id: app_id.clone(),
            audience: vec!["svc".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let validated = validate_jwt_svid(
        &jwt.token,
        "svc",
        &material.bundle,
        SystemTime::now(),
        &JwtSvidValidation::default(),
    );
    assert_eq!(validated.unwrap().spiffe_id.as_str(), app_id);
    let status = grpc
        .mint_jwt_svid(MintJwtSvidRequest {
            pod: Some(pod_a.clone()),
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/other"),
            audience: vec!["svc".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let workload_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let submitted = PublicJwk::for_signing_key(&workload_key);
    let public = serde_json::Value::Object(submitted.to_json_map()).to_string();
    let wit = grpc
        .mint_wit_svid(MintWitSvidRequest {
            pod: Some(pod_a.clone()),
            spiffe_id: app_id.clone(),
            public_jwk: public,
        })
        .await
        .unwrap()
        .into_inner();
    // A relying party's view: signed by the bundle's WIT authority, for the pod's identity,
    // confirming the key the plugin submitted.
    let validated = validate_wit(
        &wit.token,
        &material.bundle,
        SystemTime::now(),
        &WitValidation::default(),
    )
    .expect("the WIT-SVID validates against the bundle's WIT authority");
    assert_eq!(
        validated.spiffe_id().map(SpiffeId::as_str),
        Some(app_id.as_str())
    );
    assert_eq!(
        validated.cnf_key.key, submitted.key,
        "cnf.jwk is the submitted key"
    );
    assert_eq!(validated.cnf_key.thumbprint(), submitted.thumbprint());
    assert_eq!(validated.kid.as_deref(), Some(material.wit.kid.as_str()));
    assert_eq!(validated.expires_at, wit.expires_at);
    let mut without_wit_authority = material.bundle.clone();
    without_wit_authority.wit_authorities.clear();
    assert!(
        validate_wit(
            &wit.token,
            &without_wit_authority,
            SystemTime::now(),
            &WitValidation::default()
        )
        .is_err(),
        "a JWT authority alone does not validate a WIT"
    );

    // The watch stream sends the pod's entries and bundle, and follows changes.
    let mut updates = grpc
        .watch_pod(WatchPodRequest {
            pod: Some(pod_a.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let first = updates.message().await.unwrap().unwrap();
    assert_eq!(first.entries.len(), 1);
    assert_eq!(first.entries[0].spiffe_id, app_id);
    assert_eq!(
        first.bundles.unwrap().own.unwrap().trust_domain,
        TRUST_DOMAIN
    );
    store.set_pod(
        &app_a,
        Some(record(&app_a, &ns, "app-a", "app", &node_a, Vec::new())),
    );
    let second = tokio::time::timeout(WAIT, updates.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(second.entries.is_empty());
    // The pod moves to node B: node A's stream ends with PermissionDenied.
    let mut moved = wimsey_operator::views::pod_view(
        &Api::<Pod>::namespaced(fixture.client.clone(), &ns)
            .get("app-a")
            .await
            .unwrap(),
    );
    moved.node_name = node_b.clone();
    server.pods.apply(&moved);
    store.set_pod(
        &app_a,
        Some(record(&app_a, &ns, "app-a", "app", &node_b, Vec::new())),
    );
    let ended = tokio::time::timeout(WAIT, updates.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::PermissionDenied);

    server.shutdown.cancel();
    fixture.cleanup().await;
}

async fn wait_for(
    snapshots: &mut watch::Receiver<Arc<IdentitySnapshot>>,
    what: &str,
    done: impl Fn(&IdentitySnapshot) -> bool,
) -> Arc<IdentitySnapshot> {
    tokio::time::timeout(WAIT, async {
        loop {
            let current = snapshots.borrow_and_update().clone();
            if done(&current) {
                return current;
            }
            snapshots.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}; last: {:?}",
            snapshots.borrow()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_client_keeps_a_pod_issued_and_follows_entry_removal() {
    let mut fixture = Fixture::new("client").await;
    let ns = fixture.namespace.clone();
    let node = fixture.node("a").await;
    fixture.service_account("wimsey-csi").await;
    fixture.service_account("app").await;
    let csi = fixture.pod("csi", "wimsey-csi", &node).await;
    let app = fixture.pod("app", "app", &node).await;
    let store = EntryStore::new();
    let app_id = format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/app");
    let mut federating = entry(&app_id, &[]);
    federating.entry.federates_with = vec![TrustDomain::new("federated.example").unwrap()];
    store.set_pod(
        &app,
        Some(record(&app, &ns, "app", "app", &node, vec![federating])),
    );
    let server = start_server(&fixture, &store).await;
    // A federated trust domain's bundle (any CA will do: only its delivery is checked).
    let other = TrustDomain::new("federated.example").unwrap();
    let other_ca = wimsey_core::x509::Authority::generate_root(
        &other,
        KeyAlgorithm::EcdsaP256,
        &wimsey_core::x509::CaParams::new("other", Duration::from_secs(3600)),
        SystemTime::now(),
    )
    .unwrap();
    let mut other_bundle = TrustDomainBundle::new(other.clone());
    other_bundle.x509_authorities = vec![other_ca.certificate().as_bytes().to_vec()];
    server.federated.send_replace(Arc::new(BTreeMap::from([(
        other.clone(),
        other_bundle.clone(),
    )])));

    let csi_token = fixture
        .token("wimsey-csi", "wimsey-node", "csi", &csi)
        .await;
    let (source, _t) = plugin(&server, &node, &csi_token);
    let pod_token = fixture.token("app", "wimsey", "app", &app).await;
    let handle = source.attach(PodInfo {
        uid: app.clone(),
        namespace: ns.clone(),
        name: "app".into(),
        service_account: "app".into(),
        token: Some(Zeroizing::new(pod_token)),
    });
    let mut snapshots = handle.current();
    let issued = wait_for(&mut snapshots, "an issued SVID", |s| {
        matches!(s, IdentitySnapshot::Issued(_))
    })
    .await;
    let IdentitySnapshot::Issued(issued) = issued.as_ref() else {
        unreachable!()
    };
    assert_eq!(issued.x509_svids.len(), 1);
    let svid = &issued.x509_svids[0];
    assert_eq!(svid.spiffe_id.as_str(), app_id);
    let roots = &issued.bundle.x509_authorities;
    let verified = verify_svid(
        &svid.chain,
        |td| (*td == trust_domain()).then_some(roots.as_slice()),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(verified.spiffe_id.as_str(), app_id);
    // The key the plugin generated matches the certificate.
    wimsey_core::x509::parse_svid_with_key(
        &wimsey_core::x509::concat_der(&svid.chain),
        &svid.private_key_pkcs8,
    )
    .unwrap();
    assert_eq!(issued.wit_svids.as_ref().map(Vec::len), Some(1));
    // The entry federates with federated.example: its bundle reaches the pod.
    assert_eq!(
        issued
            .federated_bundles
            .get(&other)
            .map(|b| &b.x509_authorities),
        Some(&other_bundle.x509_authorities)
    );

    let jwt = handle
        .mint_jwt_svid(&SpiffeId::parse(&app_id).unwrap(), &["svc".to_owned()])
        .await
        .unwrap();
    assert_eq!(jwt.split('.').count(), 3);

    // Entries removed: the pod has no identity.
    store.set_pod(
        &app,
        Some(record(&app, &ns, "app", "app", &node, Vec::new())),
    );
    wait_for(&mut snapshots, "NoIdentity", |s| {
        matches!(s, IdentitySnapshot::NoIdentity)
    })
    .await;

    // Shutdown completes although the plugin still holds its WatchPod stream open.
    server.shutdown.cancel();
    tokio::time::timeout(WAIT, server.serving)
        .await
        .expect("the node API stops with a watch open")
        .unwrap()
        .unwrap();
    source.detach(&app);
    fixture.cleanup().await;
}

async fn wait_material(
    changes: &mut watch::Receiver<Arc<SigningMaterial>>,
    what: &str,
    done: impl Fn(&SigningMaterial) -> bool,
) -> Arc<SigningMaterial> {
    tokio::time::timeout(WAIT, async {
        loop {
            let current = changes.borrow_and_update().clone();
            if done(&current) {
                return current;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_rotate_keys_together_through_the_secret() {
    let fixture = Fixture::new("rotation").await;
    let args = AuthorityArgs {
        ca_ttl: Duration::from_secs(8),
        jwt_key_ttl: Duration::from_secs(4),
        key_propagation_delay: Duration::from_secs(1),
        max_x509_svid_ttl: Duration::from_secs(2),
        max_jwt_svid_ttl: Duration::from_secs(1),
        // Everything a CA signs must fit in half its lifetime.
        node_svid_ttl: Duration::from_secs(2),
        server_svid_ttl: Duration::from_secs(2),
        ..fixture.authority_args()
    };
    let shutdown = CancellationToken::new();
    let (a, b) = tokio::join!(
        SigningAuthority::start(
            fixture.client.clone(),
            trust_domain(),
            args.clone(),
            shutdown.clone()
        ),
        SigningAuthority::start(
            fixture.client.clone(),
            trust_domain(),
            args.clone(),
            shutdown.clone()
        ),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let first_ca = a.current().ca.certificate().clone();
    let first_jwt = a.current().jwt.kid.clone();
    assert_eq!(b.current().ca.certificate(), &first_ca);

    // Both replicas run their rotation loops; the CA rotates after half its 8 s lifetime.
    let rotated = wait_material(&mut a.subscribe(), "a CA rotation on replica a", |m| {
        m.ca.certificate() != &first_ca
    })
    .await;
    assert_ne!(
        rotated.jwt.kid, first_jwt,
        "the JWT key rotated first (4 s)"
    );
    // The new CA was published before it signs, so the bundle holds it with its predecessor
    // until the predecessor's SVIDs have expired.
    assert!(
        rotated
            .bundle
            .x509_authorities
            .contains(&rotated.ca.certificate().as_bytes().to_vec())
    );
    let on_b = wait_material(&mut b.subscribe(), "replica b to catch up", |m| {
        m.generation >= rotated.generation
    })
    .await;
    let on_a = a.current();
    if on_b.generation == on_a.generation {
        assert_eq!(on_b.ca.certificate(), on_a.ca.certificate());
        assert_eq!(on_b.jwt.kid, on_a.jwt.kid);
    }

    // The Secret never holds more than one active key of a kind, whoever wrote last.
    let secret = Api::<Secret>::namespaced(fixture.client.clone(), &fixture.namespace)
        .get("wimsey-authority")
        .await
        .unwrap();
    let stored: StoredAuthority =
        serde_json::from_slice(&secret.data.unwrap()[SECRET_DATA_KEY].0).unwrap();
    for kind in KeyKind::ALL {
        let active = stored
            .keys(kind)
            .iter()
            .filter(|k| k.phase == StoredPhase::Active)
            .count();
        assert_eq!(active, 1, "{kind:?}");
    }
    assert!(stored.generation >= rotated.generation);

    // The bundle ConfigMap follows (written by whichever replica rotated).
    let config_maps = Api::<ConfigMap>::namespaced(fixture.client.clone(), &fixture.namespace);
    tokio::time::timeout(WAIT, async {
        loop {
            let cm = config_maps.get("wimsey-bundle").await.unwrap();
            let pem = cm
                .data
                .unwrap_or_default()
                .remove(BUNDLE_PEM_KEY)
                .unwrap_or_default();
            let roots = parse_x509_authorities_pem(&pem).unwrap();
            if roots.contains(&rotated.ca.certificate().as_bytes().to_vec()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the bundle ConfigMap shows the rotated CA");
    shutdown.cancel();
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_client_renews_at_half_life_and_reattests_when_the_node_svid_ends() {
    let mut fixture = Fixture::new("renew").await;
    let ns = fixture.namespace.clone();
    let node = fixture.node("a").await;
    fixture.service_account("wimsey-csi").await;
    fixture.service_account("app").await;
    let csi = fixture.pod("csi", "wimsey-csi", &node).await;
    let app = fixture.pod("app", "app", &node).await;
    let store = EntryStore::new();
    let app_id = format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/app");
    let mut short = entry(&app_id, &[]);
    short.entry.x509_svid_ttl = Duration::from_secs(4);
    store.set_pod(
        &app,
        Some(record(&app, &ns, "app", "app", &node, vec![short])),
    );
    let args = AuthorityArgs {
        node_svid_ttl: Duration::from_secs(4),
        ..fixture.authority_args()
    };
    let server = start_server_with(&fixture, &store, args).await;
    let csi_token = fixture
        .token("wimsey-csi", "wimsey-node", "csi", &csi)
        .await;
    let (source, _t) = plugin(&server, &node, &csi_token);
    let pod_token = fixture.token("app", "wimsey", "app", &app).await;
    let handle = source.attach(PodInfo {
        uid: app.clone(),
        namespace: ns.clone(),
        name: "app".into(),
        service_account: "app".into(),
        token: Some(Zeroizing::new(pod_token)),
    });
    let mut snapshots = handle.current();
    let leaf = |s: &IdentitySnapshot| match s {
        IdentitySnapshot::Issued(issued) => Some(issued.x509_svids[0].chain[0].clone()),
        _ => None,
    };
    let first = wait_for(&mut snapshots, "the first SVID", |s| leaf(s).is_some()).await;
    let first_leaf = leaf(&first).unwrap();
    let started = std::time::Instant::now();
    // Renewed at half of its 4 s life.
    let second = wait_for(&mut snapshots, "a renewed SVID", |s| {
        leaf(s).is_some_and(|l| l != first_leaf)
    })
    .await;
    let second_leaf = leaf(&second).unwrap();
    // Past the first node SVID's end the server refuses its connection; SVIDs keep coming only
    // because the client attested again.
    let after_node_expiry = wait_for(
        &mut snapshots,
        "an SVID issued after the node SVID ended",
        |s| {
            started.elapsed() > Duration::from_secs(5)
                && leaf(s).is_some_and(|l| l != first_leaf && l != second_leaf)
        },
    )
    .await;
    let IdentitySnapshot::Issued(issued) = after_node_expiry.as_ref() else {
        unreachable!()
    };
    let roots = &issued.bundle.x509_authorities;
    verify_svid(
        &issued.x509_svids[0].chain,
        |td| (*td == trust_domain()).then_some(roots.as_slice()),
        SystemTime::now(),
    )
    .unwrap();
    source.detach(&app);
    server.shutdown.cancel();
    fixture.cleanup().await;
}

/// The node API's limits hold with a real TokenReview behind them (tests/node_api_limits.rs has
/// the same against an in-memory API server, with more cases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_limits_hold_against_a_real_api_server() {
    let mut fixture = Fixture::new("limits").await;
    let ns = fixture.namespace.clone();
    let node = fixture.node("a").await;
    for sa in ["wimsey-csi", "app"] {
        fixture.service_account(sa).await;
    }
    let csi = fixture.pod("csi", "wimsey-csi", &node).await;
    let app = fixture.pod("app", "app", &node).await;
    let store = EntryStore::new();
    let app_id = format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/app");
    store.set_pod(
        &app,
        Some(record(
            &app,
            &ns,
            "app",
            "app",
            &node,
            vec![entry(&app_id, &[])],
        )),
    );
    let server = start_server_limited(
        &fixture,
        &store,
        fixture.authority_args(),
        NodeApiLimits {
            attest_rate_per_source: 0.001,
            attest_burst_per_source: 2,
            max_jwt_audiences: 2,
            max_request_bytes: 16 * 1024,
            ..NodeApiLimits::default()
        },
    )
    .await;
    let csi_token = fixture
        .token("wimsey-csi", "wimsey-node", "csi", &csi)
        .await;
    let (csi_plugin, _t) = plugin(&server, &node, &csi_token);
    let session = csi_plugin.attest().await.unwrap();
    // A token TokenReview rejects still counts against the rate.
    let (bad, _t) = plugin(&server, &node, "not-a-token");
    assert_eq!(
        code_of(bad.attest().await.unwrap_err()),
        tonic::Code::Unauthenticated
    );
    let refused = code_of(csi_plugin.attest().await.unwrap_err());
    assert_eq!(refused, tonic::Code::ResourceExhausted);

    let app_token = fixture.token("app", "wimsey", "app", &app).await;
    let pod = PodRef {
        pod_uid: app.clone(),
        pod_token: app_token,
    };
    let mut grpc = session.grpc();
    let status = grpc
        .mint_jwt_svid(MintJwtSvidRequest {
            pod: Some(pod.clone()),
            spiffe_id: app_id.clone(),
            audience: vec!["a".into(), "b".into(), "c".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = grpc
        .mint_jwt_svid(MintJwtSvidRequest {
            pod: Some(pod.clone()),
            spiffe_id: "x".repeat(20 * 1024),
            audience: vec!["a".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    grpc.mint_jwt_svid(MintJwtSvidRequest {
        pod: Some(pod),
        spiffe_id: app_id,
        audience: vec!["a".into()],
    })
    .await
    .unwrap();

    server.shutdown.cancel();
    fixture.cleanup().await;
}

/// The fallback for a TokenReview outage works on the tokens a real API server issues: the issuer
/// keys come from its discovery endpoints, and its pod-bound tokens verify against them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_pod_tokens_verify_against_the_api_servers_published_issuer_keys() {
    use wimsey_core::jose::service_account::{ServiceAccountTokenError, verify_pod_token};
    use wimsey_operator::nodeapi::cluster::{KubeReviewer, Reviewer};

    let mut fixture = Fixture::new("issuer").await;
    let node = fixture.node("n1").await;
    fixture.service_account("app").await;
    let uid = fixture.pod("app", "app", &node).await;
    let token = fixture.token("app", "wimsey", "app", &uid).await;

    let reviewer = KubeReviewer::new(fixture.client.clone());
    assert!(reviewer.issuer_keys().is_none());
    reviewer.refresh_issuer_keys().await.unwrap();
    let keys = reviewer.issuer_keys().expect("issuer keys after a fetch");
    assert!(keys.issuer().starts_with("https://"), "{}", keys.issuer());

    let bound = verify_pod_token(&token, &keys, "wimsey", SystemTime::now()).unwrap();
    assert_eq!(bound.pod_uid, uid);
    assert_eq!(bound.pod_name, "app");
    assert_eq!(bound.namespace, fixture.namespace);
    assert_eq!(bound.service_account, "app");
    assert!(bound.expires_at > SystemTime::now());
    assert_eq!(
        verify_pod_token(&token, &keys, "wimsey-node", SystemTime::now()),
        Err(ServiceAccountTokenError::WrongAudience)
    );
    // One byte of the signature changed: refused.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(verify_pod_token(&forged, &keys, "wimsey", SystemTime::now()).is_err());
    fixture.cleanup().await;
}
