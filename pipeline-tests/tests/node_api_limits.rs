//! The node API's limits, in process: a real server on a loopback TCP port with real TLS, the CSI
//! plugin's own client, and an in-memory API server (`support/fake_api.rs`) answering the Pod and
//! TokenReview calls (the authority runs over its in-memory store). The same server against a real API server is in
//! `identity.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::build_csr;
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_csi::node_client::{NodeClient, NodeClientConfig, NodeClientError, NodeSession};
use wimsey_operator::admin::metrics::Metrics;
use wimsey_operator::authority::store::MemoryStore;
use wimsey_operator::authority::{AuthorityArgs, SigningAuthority};
use wimsey_operator::config::{ConfigFlags, Settings};
use wimsey_operator::nodeapi::cluster::PodFacts;
use wimsey_operator::nodeapi::{FederatedBundles, NodeApi, NodeApiArgs, NodeApiLimits};
use wimsey_operator::reconcile::PodDirectory;
use wimsey_operator::store::{EntryStore, PodRecord, StoredEntry};
use wimsey_proto::wimsey::node::v1::{
    AttestRequest, EntryCsr, MintJwtSvidRequest, PodRef, SignX509SvidsRequest, WatchPodRequest,
};

use support::fake_api::FakeApi;
use support::fixtures::{pod_facts, pod_record, stored_entry};

const TRUST_DOMAIN: &str = "limits.example";
const NAMESPACE: &str = "wimsey-system";
const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(20);

fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).unwrap()
}

struct Server {
    api: Arc<FakeApi>,
    node_api: NodeApi,
    store: EntryStore,
    pods: PodDirectory,
    /// Kept alive as `run` keeps it: it owns the channel that wakes streams on key rotation.
    _authority: SigningAuthority,
    endpoint: String,
    bundle_file: tempfile::NamedTempFile,
    shutdown: CancellationToken,
    _federated: watch::Sender<FederatedBundles>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(limits: NodeApiLimits) -> Server {
    let api = FakeApi::new();
    let client = api.client();
    let authority_args = {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            authority: AuthorityArgs,
        }
        let mut args = <Cli as clap::Parser>::parse_from(["x"]).authority;
        args.authority_namespace = NAMESPACE.into();
        args
    };
    let authority = SigningAuthority::load(
        Arc::new(MemoryStore::default()),
        trust_domain(),
        authority_args,
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let settings = Settings::resolve(
        Default::default(),
        ConfigFlags {
            trust_domain: Some(TRUST_DOMAIN.into()),
            cluster_name: Some("test".into()),
            ..ConfigFlags::default()
        },
    )
    .unwrap();
    let (federated, federated_rx) = watch::channel(FederatedBundles::default());
    let store = EntryStore::new();
    // the informer's view of the pods: the plugin's pod, and each test pod as `pod()` adds it
    let pods = PodDirectory::new();
    pods.apply_facts(facts("csi-1", "csi-uid", NAMESPACE, "wimsey-csi"));
    pods.mark_synced();
    let node_api = NodeApi::new(
        client,
        authority.clone(),
        store.clone(),
        pods.clone(),
        settings,
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
    let shutdown = CancellationToken::new();
    tokio::spawn(node_api.clone().serve(listener, shutdown.clone()));
    let bundle_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bundle_file.path(),
        authority.current().bundle.x509_authorities_pem(),
    )
    .unwrap();
    api.add_pod(NAMESPACE, "csi-1", "csi-uid", "wimsey-csi", NODE);
    Server {
        api,
        node_api,
        store,
        pods,
        _authority: authority,
        endpoint,
        bundle_file,
        shutdown,
        _federated: federated,
    }
}

impl Server {
    /// The plugin's client holding `token` as its projected token.
    fn plugin(&self, token: &str) -> (NodeClient, tempfile::NamedTempFile) {
        let token_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token_file.path(), token).unwrap();
        let mut config =
            NodeClientConfig::new(&self.endpoint, NODE.into(), trust_domain()).unwrap();
        config.token_path = token_file.path().to_owned();
        config.bundle_path = self.bundle_file.path().to_owned();
        (NodeClient::new(config).unwrap(), token_file)
    }

    async fn attested(&self) -> (NodeClient, NodeSession, tempfile::NamedTempFile) {
        let token = self
            .api
            .token("wimsey-node", NAMESPACE, "wimsey-csi", "csi-1", "csi-uid");
        let (plugin, file) = self.plugin(&token);
        let session = plugin.attest().await.unwrap();
        (plugin, session, file)
    }

    /// Pod `name` on our node with one entry; returns its PodRef (with a valid pod token).
    fn pod(&self, name: &str, entry_path: &str) -> PodRef {
        let uid = format!("{name}-uid");
        self.pods.apply_facts(facts(name, &uid, "app", "app"));
        self.store
            .set_pod(&uid, Some(record(&uid, name, vec![entry(entry_path)])));
        PodRef {
            pod_token: self.api.token("wimsey", "app", "app", name, &uid),
            pod_uid: uid,
        }
    }
}

/// A pod on our node as the informer sees it.
fn facts(name: &str, uid: &str, namespace: &str, service_account: &str) -> PodFacts {
    pod_facts(uid, namespace, name, service_account, NODE)
}

fn entry(path: &str) -> StoredEntry {
    stored_entry(&format!("spiffe://{TRUST_DOMAIN}{path}"))
}

fn record(uid: &str, name: &str, entries: Vec<StoredEntry>) -> PodRecord {
    pod_record(&facts(name, uid, "app", "app"), entries)
}

fn code_of(error: NodeClientError) -> tonic::Status {
    match error {
        NodeClientError::Status(status) => status,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn csr(path: &str) -> Vec<u8> {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let id = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}{path}")).unwrap();
    build_csr(&key, &id, &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_is_rate_limited_per_source_before_any_token_review() {
    let server = start(NodeApiLimits {
        attest_rate_per_source: 0.001,
        attest_burst_per_source: 3,
        ..NodeApiLimits::default()
    })
    .await;
    // Tokens TokenReview rejects: each Attest within the rate costs one review.
    for n in 1..=2 {
        let (plugin, _t) = server.plugin(&format!("not-a-token-{n}"));
        let status = code_of(plugin.attest().await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert_eq!(server.api.reviews(), n);
    }
    // The third of the burst is a good one.
    server.attested().await;
    assert_eq!(server.api.reviews(), 3);
    // Over the rate: refused with RESOURCE_EXHAUSTED before the token is even looked at.
    for n in 4..=6 {
        let (plugin, _t) = server.plugin(&format!("not-a-token-{n}"));
        let status = code_of(plugin.attest().await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains("too many Attest calls from 127.0.0.1"),
            "{status:?}"
        );
    }
    assert_eq!(server.api.reviews(), 3, "refused calls cost no TokenReview");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counts_lengths_and_sizes_are_bounded() {
    let server = start(NodeApiLimits {
        max_csrs: 2,
        max_jwt_audiences: 2,
        max_jwt_audience_bytes: 16,
        max_request_bytes: 16 * 1024,
        ..NodeApiLimits::default()
    })
    .await;
    let (_plugin, session, _t) = server.attested().await;
    let pod = server.pod("web", "/web");
    let mut grpc = session.grpc();
    let reviews_before = server.api.reviews();

    let csrs = |n: usize| SignX509SvidsRequest {
        pod: Some(pod.clone()),
        csrs: (0..n)
            .map(|_| EntryCsr {
                entry_id: "e-web".into(),
                csr: csr("/web"),
            })
            .collect(),
    };
    let status = grpc.sign_x509_svids(csrs(3)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("3 CSRs"), "{status:?}");
    assert_eq!(
        grpc.sign_x509_svids(csrs(2))
            .await
            .unwrap()
            .into_inner()
            .svids
            .len(),
        2
    );

    let jwt = |audience: Vec<String>| MintJwtSvidRequest {
        pod: Some(pod.clone()),
        spiffe_id: format!("spiffe://{TRUST_DOMAIN}/web"),
        audience,
    };
    let status = grpc
        .mint_jwt_svid(jwt(vec!["a".into(), "b".into(), "c".into()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("3 audiences"), "{status:?}");
    let status = grpc
        .mint_jwt_svid(jwt(vec!["a".repeat(17)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("17 bytes"), "{status:?}");
    assert!(grpc.mint_jwt_svid(jwt(vec!["a".repeat(16)])).await.is_ok());

    // A request over the size limit: RESOURCE_EXHAUSTED (not OUT_OF_RANGE), and the connection
    // keeps serving.
    let mut huge = pod.clone();
    huge.pod_token = "x".repeat(20 * 1024);
    let status = grpc
        .mint_jwt_svid(MintJwtSvidRequest {
            pod: Some(huge),
            ..jwt(vec!["a".into()])
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("16384 bytes"), "{status:?}");
    let oversized_attest = session
        .grpc()
        .attest(AttestRequest {
            token: "t".repeat(20 * 1024),
            node_name: NODE.into(),
            csr: csr("/node"),
        })
        .await
        .unwrap_err();
    assert_eq!(oversized_attest.code(), tonic::Code::ResourceExhausted);
    assert!(grpc.mint_jwt_svid(jwt(vec!["b".into()])).await.is_ok());
    // The pod token was reviewed once (then cached); no refused call reviewed anything.
    assert!(server.api.reviews() <= reviews_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_wakes_only_for_its_own_pod() {
    let server = start(NodeApiLimits::default()).await;
    let (_plugin, session, _t) = server.attested().await;
    let mut grpc = session.grpc();
    let pod_a = server.pod("a", "/a");
    let pod_b = server.pod("b", "/b");
    let watch = |pod: &PodRef| WatchPodRequest {
        pod: Some(pod.clone()),
    };
    let mut stream_a = grpc.watch_pod(watch(&pod_a)).await.unwrap().into_inner();
    let mut stream_b = grpc.watch_pod(watch(&pod_b)).await.unwrap().into_inner();
    assert_eq!(stream_a.message().await.unwrap().unwrap().entries.len(), 1);
    assert_eq!(stream_b.message().await.unwrap().unwrap().entries.len(), 1);

    // Pod A's entries change, then a pod nobody watches comes and goes, then pod B's change.
    for round in 1..=3 {
        server.store.set_pod(
            "a-uid",
            Some(record(
                "a-uid",
                "a",
                vec![entry("/a"), entry(&format!("/a{round}"))],
            )),
        );
        let update = tokio::time::timeout(WAIT, stream_a.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            update.entries[1].spiffe_id,
            format!("spiffe://{TRUST_DOMAIN}/a{round}")
        );
        server
            .store
            .set_pod("c-uid", Some(record("c-uid", "c", vec![entry("/c")])));
        server.store.set_pod("c-uid", None);
        server.store.set_pod(
            "b-uid",
            Some(record(
                "b-uid",
                "b",
                vec![entry("/b"), entry(&format!("/b{round}"))],
            )),
        );
        let update = tokio::time::timeout(WAIT, stream_b.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            update.entries[1].spiffe_id,
            format!("spiffe://{TRUST_DOMAIN}/b{round}")
        );
    }
    // With every change waking every stream, B would have woken for A's and C's changes and A
    // for B's and C's, each finding nothing new.
    assert_eq!(server.node_api.idle_watch_wakeups(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once() {
    let server = start(NodeApiLimits {
        max_connections: 2,
        read_timeout: Duration::from_secs(60),
        ..NodeApiLimits::default()
    })
    .await;
    let held_1 = TcpStream::connect(&server.endpoint).await.unwrap();
    let held_2 = TcpStream::connect(&server.endpoint).await.unwrap();
    let mut third = TcpStream::connect(&server.endpoint).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed by the server: {read:?}"
    );
    // The slots are taken: a real client cannot attest either.
    let token = server
        .api
        .token("wimsey-node", NAMESPACE, "wimsey-csi", "csi-1", "csi-uid");
    let (plugin, _t) = server.plugin(&token);
    assert!(plugin.attest().await.is_err());
    // Closing one frees its slot.
    drop(held_1);
    let deadline = Instant::now() + WAIT;
    loop {
        match plugin.attest().await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("a slot never freed: {error}"),
        }
    }
    drop(held_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    let idle_timeout = Duration::from_millis(400);
    let server = start(NodeApiLimits {
        idle_timeout,
        read_timeout: Duration::from_secs(60),
        ..NodeApiLimits::default()
    })
    .await;
    // A connection that never sends anything is closed after the idle timeout, not before.
    let started = Instant::now();
    let mut idle = TcpStream::connect(&server.endpoint).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(waited >= idle_timeout, "closed after {waited:?}");

    // An open WatchPod stream is a call in progress: its connection outlives the timeout.
    let (_plugin, session, _t) = server.attested().await;
    let pod = server.pod("web", "/web");
    let mut stream = session
        .grpc()
        .watch_pod(WatchPodRequest { pod: Some(pod) })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    tokio::time::sleep(idle_timeout * 3).await;
    server.store.set_pod(
        "web-uid",
        Some(record(
            "web-uid",
            "web",
            vec![entry("/web"), entry("/web2")],
        )),
    );
    let update = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(update.entries.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_and_keepalive_pings_are_the_configured_ones() {
    let server = start(NodeApiLimits {
        max_concurrent_streams: 7,
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(60),
        read_timeout: Duration::from_secs(60),
        ..NodeApiLimits::default()
    })
    .await;
    let mut tls = support::h2_raw::connect(&server.endpoint).await;
    // The client preface and empty SETTINGS; then never answer anything, not even PINGs.
    tls.write_all(support::h2_raw::PREFACE).await.unwrap();
    tls.write_all(&support::h2_raw::frame(4, 0, 0, &[]))
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    let mut max_streams = None;
    let mut pings = 0;
    loop {
        match tokio::time::timeout(WAIT, support::h2_raw::read_frame(&mut tls))
            .await
            .unwrap()
        {
            None => break,
            Some((4, flags, payload)) if flags & 1 == 0 => {
                for setting in payload.chunks_exact(6) {
                    if u16::from_be_bytes([setting[0], setting[1]]) == 3 {
                        max_streams = Some(u32::from_be_bytes([
                            setting[2], setting[3], setting[4], setting[5],
                        ]));
                    }
                }
            }
            Some((6, flags, _)) if flags & 1 == 0 => pings += 1,
            Some(_) => {}
        }
    }
    assert_eq!(max_streams, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert!(pings >= 1, "keepalive PINGs sent");
    // Unanswered, the PING ends the connection after interval + timeout (and long before the
    // idle timeout of 60 s).
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(400) && closed_after < Duration::from_secs(15),
        "closed after {closed_after:?}"
    );
}
