//! The node API through an API server outage, in-process: no API server at all. Pod placement
//! comes from a [`PodDirectory`] (what the informer would hold), TokenReview from a fake whose
//! "API server" can be taken down. Real TLS and gRPC over loopback TCP, driven with the CSI
//! plugin's own node API client.
//!
//! With TokenReview down, a node that attested before keeps getting CSRs signed and JWTs minted
//! for pods it already verified (also with a token kubelet refreshed during the outage), while
//! a pod it never verified gets `Unavailable`, and a pod on another node stays denied. The
//! plugin keeps a pod's SVIDs through `Unavailable`, and drops them only once a denial has held
//! for its grace period. A replica that never reviewed a token (the one the plugin fails over
//! to when its replica dies during the outage) verifies tokens against the service-account
//! issuer's keys instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use wimsey_core::TrustDomain;
use wimsey_core::jose::service_account::IssuerKeys;
use wimsey_core::jose::{PublicJwk, sign_compact};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::build_csr;
use wimsey_csi::identity_source::{IdentitySource, PodInfo};
use wimsey_csi::node_client::{NodeClient, NodeClientConfig, NodeClientError};
use wimsey_csi::workload_api::{IdentitySnapshot, PodIdentity};
use wimsey_operator::authority::state::rotate;
use wimsey_operator::authority::{AuthorityArgs, SigningMaterial, StoredAuthority};
use wimsey_operator::config::{ConfigFlags, Settings};
use wimsey_operator::nodeapi::cluster::{PodFacts, ReviewUnavailable, Reviewer};
use wimsey_operator::nodeapi::material::NodeAuthority;
use wimsey_operator::nodeapi::verdict::{EXTRA_POD_NAME, EXTRA_POD_UID, VerdictPolicy};
use wimsey_operator::nodeapi::{ClusterAccess, FederatedBundles, NodeApi, NodeApiArgs};
use wimsey_operator::reconcile::PodDirectory;
use wimsey_operator::store::{EntryStore, StoredEntry};
use wimsey_proto::wimsey::node::v1::node_client::NodeClient as NodeGrpc;
use wimsey_proto::wimsey::node::v1::{EntryCsr, MintJwtSvidRequest, PodRef, SignX509SvidsRequest};
use zeroize::Zeroizing;

use support::fixtures::{pod_facts, pod_record, stored_entry};

const TRUST_DOMAIN: &str = "outage-test.example";
const CLUSTER: &str = "c1";
const NAMESPACE: &str = "wimsey-system";
const APP_NS: &str = "apps";

/// TokenReview with an "API server" that can be down. Accepts the tokens it was told about.
#[derive(Default)]
struct FakeReviewer {
    down: AtomicBool,
    /// Down the way a vanished API server often is: the call never answers.
    hangs: AtomicBool,
    /// The issuer keys, once published.
    issuer_keys: Mutex<Option<Arc<IssuerKeys>>>,
    accepted: Mutex<HashMap<String, TokenReviewStatus>>,
    /// Reviews answered (accepted or refused) and reviews that failed to reach the API server.
    answered: Mutex<Vec<String>>,
    unreachable: AtomicUsize,
}

impl FakeReviewer {
    fn accept(&self, token: &str, audience: &str, namespace: &str, sa: &str, pod: (&str, &str)) {
        let status = TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![audience.to_owned()]),
            user: Some(UserInfo {
                username: Some(format!("system:serviceaccount:{namespace}:{sa}")),
                extra: Some(BTreeMap::from([
                    (EXTRA_POD_NAME.to_owned(), vec![pod.0.to_owned()]),
                    (EXTRA_POD_UID.to_owned(), vec![pod.1.to_owned()]),
                ])),
                ..UserInfo::default()
            }),
            error: None,
        };
        self.accepted
            .lock()
            .unwrap()
            .insert(format!("{audience}\n{token}"), status);
    }

    /// Publishes `key` as the service-account issuer's (kid `sa-key`).
    fn publish_issuer_key(&self, key: &SigningKey) {
        let mut jwk = PublicJwk::for_signing_key(key).to_json_map();
        jwk.insert("kid".into(), "sa-key".into());
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        let keys = IssuerKeys::from_jwks(ISSUER, jwks.as_bytes()).unwrap();
        *self.issuer_keys.lock().unwrap() = Some(Arc::new(keys));
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn answered(&self, token: &str) -> bool {
        self.answered.lock().unwrap().iter().any(|t| t == token)
    }
}

impl Reviewer for FakeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, ReviewUnavailable>> {
        Box::pin(async move {
            if self.hangs.load(Ordering::SeqCst) {
                self.unreachable.fetch_add(1, Ordering::SeqCst);
                return std::future::pending().await;
            }
            if self.down.load(Ordering::SeqCst) {
                self.unreachable.fetch_add(1, Ordering::SeqCst);
                return Err(ReviewUnavailable("client error (Connect)".into()));
            }
            self.answered.lock().unwrap().push(token.to_owned());
            Ok(self
                .accepted
                .lock()
                .unwrap()
                .get(&format!("{audience}\n{token}"))
                .cloned()
                .unwrap_or(TokenReviewStatus {
                    authenticated: Some(false),
                    ..TokenReviewStatus::default()
                }))
        })
    }

    fn issuer_keys(&self) -> Option<Arc<IssuerKeys>> {
        self.issuer_keys.lock().unwrap().clone()
    }

    fn refresh_issuer_keys(&self) -> BoxFuture<'_, Result<(), ReviewUnavailable>> {
        Box::pin(async { Ok(()) })
    }
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A pod-bound service-account token for `pod`, signed by the issuer `key`, expiring
/// `expires_in` seconds from now (negative: already expired).
fn signed_token(key: &SigningKey, audience: &str, pod: &PodFacts, expires_in: i64) -> String {
    signed_token_with_kid(key, "sa-key", audience, pod, expires_in)
}

fn signed_token_with_kid(
    key: &SigningKey,
    kid: &str,
    audience: &str,
    pod: &PodFacts,
    expires_in: i64,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": [audience],
        "sub": format!("system:serviceaccount:{}:{}", pod.namespace, pod.service_account),
        "iat": now - 3600,
        "nbf": now - 3600,
        "exp": now + expires_in,
        "kubernetes.io": {
            "namespace": pod.namespace,
            "serviceaccount": {"name": pod.service_account, "uid": "sa-uid"},
            "pod": {"name": pod.name, "uid": pod.uid},
        },
    });
    let header = serde_json::json!({"kid": kid, "typ": "JWT"});
    let (serde_json::Value::Object(header), serde_json::Value::Object(claims)) = (header, claims)
    else {
        unreachable!()
    };
    sign_compact(&header, &claims, key).unwrap()
}

/// A service-account-shaped JWT for `pod_uid`, valid for `ttl` (unsigned: the fake reviews it).
fn token(pod_uid: &str, serial: u32, ttl: Duration) -> String {
    let exp = (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "exp": exp,
        "jti": serial,
        "kubernetes.io": {"pod": {"uid": pod_uid}},
    });
    let payload = wimsey_core::jose::b64url_encode(claims.to_string().as_bytes());
    format!("eyJhbGciOiJub25lIn0.{payload}.sig")
}

fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).unwrap()
}

#[derive(Parser)]
struct AuthorityCli {
    #[command(flatten)]
    authority: AuthorityArgs,
}

fn authority_args() -> AuthorityArgs {
    let mut args = AuthorityCli::parse_from(["test"]).authority;
    args.authority_namespace = NAMESPACE.into();
    args
}

fn material(args: &AuthorityArgs) -> SigningMaterial {
    let lifetimes = args.lifetimes();
    let mut stored = StoredAuthority::empty(&trust_domain());
    rotate(&mut stored, &trust_domain(), &lifetimes, SystemTime::now()).unwrap();
    SigningMaterial::from_stored(&stored, &trust_domain(), &lifetimes, SystemTime::now()).unwrap()
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

/// A node API on loopback over `directory` and `reviewer`.
struct Server {
    endpoint: String,
    bundle_file: tempfile::NamedTempFile,
    shutdown: CancellationToken,
    _material: watch::Sender<Arc<SigningMaterial>>,
    _federated: watch::Sender<FederatedBundles>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(directory: PodDirectory, reviewer: Arc<FakeReviewer>, store: EntryStore) -> Server {
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
fn start_on(
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

fn plugin(server: &Server, node: &str, token: &str) -> (NodeClient, tempfile::NamedTempFile) {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), token).unwrap();
    let mut config = NodeClientConfig::new(&server.endpoint, node.into(), trust_domain()).unwrap();
    config.token_path = token_file.path().to_owned();
    config.bundle_path = server.bundle_file.path().to_owned();
    (NodeClient::new(config).unwrap(), token_file)
}

fn code_of(error: NodeClientError) -> tonic::Code {
    match error {
        NodeClientError::Status(status) => status.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn sign_request(pod: &PodFacts, token: &str, entry: &StoredEntry) -> SignX509SvidsRequest {
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
async fn assert_refused(
    grpc: &mut NodeGrpc<Channel>,
    request: SignX509SvidsRequest,
    code: tonic::Code,
) {
    let status = grpc.sign_x509_svids(request).await.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
}

fn jwt_request(pod: &PodFacts, token: &str, entry: &StoredEntry) -> MintJwtSvidRequest {
    MintJwtSvidRequest {
        pod: Some(PodRef {
            pod_uid: pod.uid.clone(),
            pod_token: token.to_owned(),
        }),
        spiffe_id: entry.entry.spiffe_id.as_str().to_owned(),
        audience: vec!["svc".into()],
    }
}

#[tokio::test]
async fn verified_pods_keep_their_identities_while_token_review_is_down() {
    let hour = Duration::from_secs(3600);
    let csi = pod_facts("csi-uid", NAMESPACE, "csi-n1", "wimsey-csi", "n1");
    let app = pod_facts("app-uid", APP_NS, "app", "app", "n1");
    let newcomer = pod_facts("new-uid", APP_NS, "newcomer", "app", "n1");
    let elsewhere = pod_facts("far-uid", APP_NS, "far", "app", "n2");
    let directory = PodDirectory::new();
    let store = EntryStore::new();
    let app_entry = stored_entry(&format!("spiffe://{TRUST_DOMAIN}/ns/{APP_NS}/sa/app"));
    for pod in [&csi, &app, &newcomer, &elsewhere] {
        directory.apply_facts(pod.clone());
        if pod.namespace == APP_NS {
            store.set_pod(&pod.uid, Some(pod_record(pod, vec![app_entry.clone()])));
        }
    }
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
    let newcomer_token = token(&newcomer.uid, 1, hour);
    reviewer.accept(
        &newcomer_token,
        "wimsey",
        APP_NS,
        "app",
        ("newcomer", &newcomer.uid),
    );
    let far_token = token(&elsewhere.uid, 1, hour);
    reviewer.accept(&far_token, "wimsey", APP_NS, "app", ("far", &elsewhere.uid));
    let server = start(directory, reviewer.clone(), store).await;

    // Before the outage: the node attests and the app gets its SVIDs.
    let (node, _token_file) = plugin(&server, "n1", &csi_token);
    let session = node.attest().await.unwrap();
    let mut grpc = session.grpc();
    grpc.sign_x509_svids(sign_request(&app, &app_token, &app_entry))
        .await
        .unwrap();

    // The API server goes away.
    reviewer.set_down(true);
    let signed = grpc
        .sign_x509_svids(sign_request(&app, &app_token, &app_entry))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.svids.len(), 1);
    grpc.mint_jwt_svid(jwt_request(&app, &app_token, &app_entry))
        .await
        .unwrap();
    assert!(
        reviewer.unreachable.load(Ordering::SeqCst) >= 2,
        "the stale verdicts were re-checked with TokenReview first"
    );
    // kubelet republishes the volume with a new token: served on the previous verdict.
    let refreshed = token(&app.uid, 2, 2 * hour);
    reviewer.accept(&refreshed, "wimsey", APP_NS, "app", ("app", &app.uid));
    grpc.sign_x509_svids(sign_request(&app, &refreshed, &app_entry))
        .await
        .unwrap();
    grpc.mint_jwt_svid(jwt_request(&app, &refreshed, &app_entry))
        .await
        .unwrap();
    // A token naming another pod is never served on this pod's verdict.
    let foreign = token(&newcomer.uid, 3, hour);
    assert_refused(
        &mut grpc,
        sign_request(&app, &foreign, &app_entry),
        tonic::Code::Unavailable,
    )
    .await;
    // The node re-attests with the token it was verified with.
    node.attest().await.unwrap();

    // Never verified: Unavailable, not a denial. Not known at all: the same.
    assert_refused(
        &mut grpc,
        sign_request(&newcomer, &newcomer_token, &app_entry),
        tonic::Code::Unavailable,
    )
    .await;
    let unknown = pod_facts("unknown-uid", APP_NS, "unknown", "app", "n1");
    assert_refused(
        &mut grpc,
        sign_request(&unknown, &newcomer_token, &app_entry),
        tonic::Code::Unavailable,
    )
    .await;
    // A plugin token never reviewed cannot attest during the outage.
    let (stranger, _t) = plugin(&server, "n1", &token(&csi.uid, 9, hour));
    assert_eq!(
        code_of(stranger.attest().await.unwrap_err()),
        tonic::Code::Unavailable
    );
    // The up-to-date cache still denies a pod on another node.
    assert_refused(
        &mut grpc,
        sign_request(&elsewhere, &far_token, &app_entry),
        tonic::Code::PermissionDenied,
    )
    .await;

    // The API server is back: the newest token is reviewed (by the next call or the pending
    // reviews), and the newcomer is served.
    reviewer.set_down(false);
    grpc.sign_x509_svids(sign_request(&app, &refreshed, &app_entry))
        .await
        .unwrap();
    assert!(reviewer.answered(&refreshed));
    grpc.sign_x509_svids(sign_request(&newcomer, &newcomer_token, &app_entry))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replica_that_never_reviewed_verifies_tokens_against_the_issuer_keys() {
    let hour = 3600;
    let csi = pod_facts("csi-uid", NAMESPACE, "csi-n1", "wimsey-csi", "n1");
    let app = pod_facts("app-uid", APP_NS, "app", "app", "n1");
    let gone = pod_facts("gone-uid", APP_NS, "gone", "app", "n1");
    let elsewhere = pod_facts("far-uid", APP_NS, "far", "app", "n2");
    let directory = PodDirectory::new();
    let store = EntryStore::new();
    let app_entry = stored_entry(&format!("spiffe://{TRUST_DOMAIN}/ns/{APP_NS}/sa/app"));
    for pod in [&csi, &app, &gone, &elsewhere] {
        directory.apply_facts(pod.clone());
        if pod.namespace == APP_NS {
            store.set_pod(&pod.uid, Some(pod_record(pod, vec![app_entry.clone()])));
        }
    }
    directory.delete(&gone.uid);
    directory.mark_synced();
    let issuer = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let reviewer = Arc::new(FakeReviewer::default());
    reviewer.publish_issuer_key(&issuer);
    // This replica starts with TokenReview already unreachable: no verdict to fall back on.
    reviewer.set_down(true);
    let server = start(directory, reviewer.clone(), store).await;

    let csi_token = signed_token(&issuer, "wimsey-node", &csi, hour);
    let (node, _token_file) = plugin(&server, "n1", &csi_token);
    let session = node.attest().await.unwrap();
    let mut grpc = session.grpc();
    let app_token = signed_token(&issuer, "wimsey", &app, hour);
    let signed = grpc
        .sign_x509_svids(sign_request(&app, &app_token, &app_entry))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.svids.len(), 1);
    grpc.mint_jwt_svid(jwt_request(&app, &app_token, &app_entry))
        .await
        .unwrap();
    assert!(reviewer.unreachable.load(Ordering::SeqCst) >= 3);

    // What TokenReview would refuse, the issuer keys refuse too.
    let refused = [
        (
            "forged",
            signed_token(
                &SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
                "wimsey",
                &app,
                hour,
            ),
        ),
        (
            "wrong audience",
            signed_token(&issuer, "wimsey-node", &app, hour),
        ),
        // Past the 60 s leeway the API server also allows.
        ("expired", signed_token(&issuer, "wimsey", &app, -120)),
        ("unsigned", token(&app.uid, 7, Duration::from_secs(3600))),
    ];
    for (what, token) in &refused {
        let status = grpc
            .sign_x509_svids(sign_request(&app, token, &app_entry))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{what}: {status:?}"
        );
    }
    // A key the replica has not fetched: no verdict either way, and not served on the pod's
    // earlier verdict.
    let unknown_key = signed_token_with_kid(&issuer, "rotated", "wimsey", &app, hour);
    assert_refused(
        &mut grpc,
        sign_request(&app, &unknown_key, &app_entry),
        tonic::Code::Unavailable,
    )
    .await;
    // A verified token still needs the pod to be where the caches say.
    let far_token = signed_token(&issuer, "wimsey", &elsewhere, hour);
    assert_refused(
        &mut grpc,
        sign_request(&elsewhere, &far_token, &app_entry),
        tonic::Code::PermissionDenied,
    )
    .await;
    let gone_token = signed_token(&issuer, "wimsey", &gone, hour);
    assert_refused(
        &mut grpc,
        sign_request(&gone, &gone_token, &app_entry),
        tonic::Code::PermissionDenied,
    )
    .await;
    assert_refused(
        &mut grpc,
        sign_request(&app, &far_token, &app_entry),
        tonic::Code::PermissionDenied,
    )
    .await;
    // A plugin token for another node's plugin cannot attest this node.
    let (impostor, _t) = plugin(&server, "n2", &csi_token);
    assert_eq!(
        code_of(impostor.attest().await.unwrap_err()),
        tonic::Code::PermissionDenied
    );

    // TokenReview is back and has the last word: it refuses the token the keys accepted.
    reviewer.set_down(false);
    assert_refused(
        &mut grpc,
        sign_request(&app, &app_token, &app_entry),
        tonic::Code::Unauthenticated,
    )
    .await;
    assert!(reviewer.answered(&app_token));
}

#[tokio::test]
async fn a_token_review_that_never_answers_holds_a_call_for_seconds_not_until_the_client_gives_up()
{
    let csi = pod_facts("csi-uid", NAMESPACE, "csi-n1", "wimsey-csi", "n1");
    let app = pod_facts("app-uid", APP_NS, "app", "app", "n1");
    let directory = PodDirectory::new();
    let store = EntryStore::new();
    let app_entry = stored_entry(&format!("spiffe://{TRUST_DOMAIN}/ns/{APP_NS}/sa/app"));
    for pod in [&csi, &app] {
        directory.apply_facts(pod.clone());
    }
    store.set_pod(&app.uid, Some(pod_record(&app, vec![app_entry.clone()])));
    directory.mark_synced();
    let issuer = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let reviewer = Arc::new(FakeReviewer::default());
    reviewer.publish_issuer_key(&issuer);
    let server = start(directory, reviewer.clone(), store).await;
    let csi_token = signed_token(&issuer, "wimsey-node", &csi, 3600);
    reviewer.accept(
        &csi_token,
        "wimsey-node",
        NAMESPACE,
        "wimsey-csi",
        ("csi-n1", &csi.uid),
    );
    let (node, _token_file) = plugin(&server, "n1", &csi_token);
    let session = node.attest().await.unwrap();
    let mut grpc = session.grpc();

    reviewer.hangs.store(true, Ordering::SeqCst);
    let app_token = signed_token(&issuer, "wimsey", &app, 3600);
    let call = grpc.sign_x509_svids(sign_request(&app, &app_token, &app_entry));
    // Far below the plugin's 30 s request timeout: the review is given up after 5 s and the
    // token verified against the issuer keys.
    tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("the call waited on TokenReview")
        .unwrap();
    // The next calls do not wait on it again for a while.
    let other_token = signed_token(&issuer, "wimsey", &app, 1800);
    tokio::time::timeout(
        Duration::from_secs(2),
        grpc.sign_x509_svids(sign_request(&app, &other_token, &app_entry)),
    )
    .await
    .expect("the second call waited on TokenReview")
    .unwrap();
}

#[tokio::test]
async fn the_node_api_is_unavailable_until_its_caches_have_synced() {
    let hour = Duration::from_secs(3600);
    let csi = pod_facts("csi-uid", NAMESPACE, "csi-n1", "wimsey-csi", "n1");
    let directory = PodDirectory::new();
    directory.apply_facts(csi.clone());
    let reviewer = Arc::new(FakeReviewer::default());
    let csi_token = token(&csi.uid, 1, hour);
    reviewer.accept(
        &csi_token,
        "wimsey-node",
        NAMESPACE,
        "wimsey-csi",
        ("csi-n1", &csi.uid),
    );
    let server = start(directory.clone(), reviewer, EntryStore::new()).await;
    let (node, _t) = plugin(&server, "n1", &csi_token);
    assert_eq!(
        code_of(node.attest().await.unwrap_err()),
        tonic::Code::Unavailable
    );
    directory.mark_synced();
    node.attest().await.unwrap();
}

async fn wait_for_snapshot(
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
struct OnePod {
    app: PodFacts,
    directory: PodDirectory,
    store: EntryStore,
    app_entry: StoredEntry,
    reviewer: Arc<FakeReviewer>,
    csi_token: String,
    app_token: String,
}

fn one_pod_on_n1() -> OnePod {
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

fn issued(snapshot: &IdentitySnapshot) -> bool {
    matches!(snapshot, IdentitySnapshot::Issued(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_keeps_svids_through_unavailable_and_drops_them_after_a_held_denial() {
    let hour = Duration::from_secs(3600);
    let grace = Duration::from_secs(3);
    let OnePod {
        app,
        directory,
        store,
        app_entry,
        reviewer,
        csi_token,
        app_token,
    } = one_pod_on_n1();
    let server = start(directory.clone(), reviewer.clone(), store.clone()).await;

    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), &csi_token).unwrap();
    let mut config = NodeClientConfig::new(&server.endpoint, "n1".into(), trust_domain()).unwrap();
    config.token_path = token_file.path().to_owned();
    config.bundle_path = server.bundle_file.path().to_owned();
    config.denial_grace = grace;
    let source = NodeClient::new(config).unwrap();
    let pod_info = |token: &str| PodInfo {
        uid: app.uid.clone(),
        namespace: APP_NS.into(),
        name: "app".into(),
        service_account: "app".into(),
        token: Some(Zeroizing::new(token.to_owned())),
    };
    let handle = source.attach(pod_info(&app_token));
    let mut snapshots = handle.current();
    wait_for_snapshot(&mut snapshots, "issued SVIDs", issued).await;

    // The operator's entries lag behind the pod (Unavailable): the stream ends, the plugin
    // retries, and the pod keeps its SVIDs for longer than the grace.
    let mut lagging = pod_record(&app, vec![app_entry.clone()]);
    lagging.node_name = String::new();
    store.set_pod(&app.uid, Some(lagging));
    let kept = tokio::time::timeout(2 * grace, async {
        loop {
            snapshots.changed().await.unwrap();
            if !issued(&snapshots.borrow_and_update()) {
                return;
            }
        }
    })
    .await;
    assert!(kept.is_err(), "Unavailable took the SVIDs away");
    assert!(issued(&handle.current().borrow()));

    // A real denial (the up-to-date cache places the pod elsewhere): kept during the grace,
    // then dropped. A fresh token makes the plugin ask at once.
    let mut moved = app.clone();
    moved.node_name = "n2".into();
    directory.apply_facts(moved.clone());
    store.set_pod(&app.uid, Some(pod_record(&moved, vec![app_entry.clone()])));
    let denied_at = std::time::Instant::now();
    source.attach(pod_info(&token(&app.uid, 2, hour)));
    wait_for_snapshot(&mut snapshots, "NoIdentity after the grace", |s| {
        matches!(s, IdentitySnapshot::NoIdentity)
    })
    .await;
    assert!(
        denied_at.elapsed() >= grace,
        "the SVIDs went {:?} after the denial began, within the {grace:?} grace",
        denied_at.elapsed()
    );
    source.detach(&app.uid);
}

/// Whether `snapshot` holds an X.509-SVID that chains to `roots`.
fn issued_under(snapshot: &IdentitySnapshot, roots: &[Vec<u8>]) -> bool {
    let IdentitySnapshot::Issued(identities) = snapshot else {
        return false;
    };
    identities.x509_svids.first().is_some_and(|svid| {
        wimsey_core::x509::verify_svid(&svid.chain, |_| Some(roots), SystemTime::now()).is_ok()
    })
}

/// The operator comes back with a new CA (its old one expired while it was down) and without the
/// old one in its bundle. The plugin's node session is then refused in TLS; it must attest again
/// with the bundle file kubelet refreshed, long before the session's own renewal time.
/// `next_ca_published` is the case where the plugin already trusts the new CA (it was published
/// ahead): the plugin's handshake succeeds and the operator's refusal arrives as a TLS alert.
async fn plugin_reattests_when_the_ca_is_replaced(next_ca_published: bool) {
    let OnePod {
        app,
        directory,
        store,
        reviewer,
        csi_token,
        app_token,
        ..
    } = one_pod_on_n1();

    let args = authority_args();
    let replacement = material(&args);
    let mut first = material(&args);
    if next_ca_published {
        first
            .bundle
            .x509_authorities
            .extend(replacement.bundle.x509_authorities.clone());
    }
    let old_roots = first.bundle.x509_authorities[..1].to_vec();
    let new_roots = replacement.bundle.x509_authorities.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = start_on(
        listener,
        first,
        directory.clone(),
        reviewer.clone(),
        store.clone(),
    );

    // The plugin's own copy of the bundle file: it outlives the first server.
    let bundle_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(server.bundle_file.path(), bundle_file.path()).unwrap();
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), &csi_token).unwrap();
    let mut config = NodeClientConfig::new(&server.endpoint, "n1".into(), trust_domain()).unwrap();
    config.token_path = token_file.path().to_owned();
    config.bundle_path = bundle_file.path().to_owned();
    let source = NodeClient::new(config).unwrap();
    let pod = source.attach(PodInfo {
        uid: app.uid.clone(),
        namespace: APP_NS.into(),
        name: "app".into(),
        service_account: "app".into(),
        token: Some(Zeroizing::new(app_token.clone())),
    });
    let mut snapshots = pod.current();
    wait_for_snapshot(&mut snapshots, "SVIDs under the first CA", |s| {
        issued_under(s, &old_roots)
    })
    .await;

    // The operator restarts on the same address with only the replacement CA; kubelet refreshes
    // the plugin's bundle file from the new ConfigMap.
    drop(server);
    let replaced = loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => break listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let server = start_on(replaced, replacement, directory, reviewer, store);
    std::fs::copy(server.bundle_file.path(), bundle_file.path()).unwrap();

    // Within the test's 30 s, not at the node session's half-life (30 min).
    wait_for_snapshot(&mut snapshots, "SVIDs under the replacement CA", |s| {
        issued_under(s, &new_roots)
    })
    .await;
    source.detach(&app.uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_attests_again_when_the_ca_it_trusts_is_replaced() {
    plugin_reattests_when_the_ca_is_replaced(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_attests_again_when_its_node_certificate_is_refused() {
    plugin_reattests_when_the_ca_is_replaced(true).await;
}
