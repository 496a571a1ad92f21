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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_csi::identity::{IdentitySnapshot, IdentitySource, PodIdentity, PodInfo};
use wimsey_csi::node_client::{NodeClient, NodeClientConfig};
use wimsey_operator::reconcile::PodDirectory;
use wimsey_operator::store::EntryStore;
use zeroize::Zeroizing;

use support::fixtures::{pod_facts, pod_record, stored_entry};
use support::node_api::{
    APP_NS, NAMESPACE, OnePod, TRUST_DOMAIN, assert_refused, authority_args, code_of, issued,
    jwt_request, material, one_pod_on_n1, plugin, sign_request, start, start_on, trust_domain,
    wait_for_snapshot,
};
use support::reviewer::{FakeReviewer, signed_token, signed_token_with_kid, token};

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
