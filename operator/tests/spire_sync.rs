//! The `spire` backend's sync against a real SPIRE Server (v1.13.3, `make test-spire-interop`):
//! it takes over entries spire-controller-manager wrote (same key: kept with their IDs), deletes
//! owned entries nobody wants and never touches others; then follows the desired entries with
//! creates, updates and deletes only, no listing; rides out a server restart (Unavailable, then
//! whatever changed meanwhile, with no duplicates); and a drift check repairs an entry deleted
//! behind its back. ClusterFederatedTrustDomains become SPIRE's federation relationships (created
//! with their starting bundle, moved in place, deleted), and an entry federating with such a
//! trust domain is accepted once SPIRE knows it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::entries::{Entry, EntryOwner, OwnerKind, Selector};
use wimsey_core::entry_sync::Ownership;
use wimsey_core::jose::PublicJwk;
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::spiffe_id::SpiffeId;
use wimsey_core::spiffe_id::TrustDomain;
use wimsey_core::x509::upstream::test_pki::UserPki;
use wimsey_operator::backend::RelationshipStatus;
use wimsey_operator::reconcile::federation::{
    BundleEndpointProfile, FederatedTrustDomain, FederationSet,
};
use wimsey_operator::spire_entries::{BatchLimits, SpireEntries, to_stored};
use wimsey_operator::spire_relationships::SpireRelationships;
use wimsey_operator::spire_sync::{BackendState, SpireSync, SyncSettings};
use wimsey_operator::store::{EntryStore, PodRecord, StoredEntry};
use wimsey_proto::spire::entry::v1::{
    RegistrationEntry, Selector as SpireSelector, SpiffeId as SpireId,
};

#[path = "support/spire.rs"]
mod spire;

use spire::{FederatesWith, SpireOptions, SpireServer};

const TD: &str = "spire.test";
const PREFIX: &str = "wimsey.";
const WAIT: Duration = Duration::from_secs(30);

fn spiffe(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap()
}

fn pod_entry(n: usize, ttl: u64) -> Entry {
    Entry {
        spiffe_id: spiffe(&format!("/ns/team/sa/app-{n}")),
        parent_id: spiffe("/spire/agent/k8s_psat/test/node-1"),
        selectors: vec![Selector::new("k8s", &format!("pod-uid:uid-{n}"))],
        x509_svid_ttl: Duration::from_secs(ttl),
        jwt_svid_ttl: Duration::from_secs(300),
        federates_with: Vec::new(),
        admin: false,
        downstream: false,
        dns_names: Vec::new(),
        hint: String::new(),
        store_svid: false,
    }
}

fn record(n: usize, ttl: u64) -> PodRecord {
    PodRecord {
        uid: format!("uid-{n}"),
        namespace: "team".into(),
        name: format!("app-{n}"),
        service_account: format!("app-{n}"),
        node_name: "node-1".into(),
        entries: vec![StoredEntry {
            id: format!("{PREFIX}{n}"),
            entry: pod_entry(n, ttl),
            owner: EntryOwner {
                kind: OwnerKind::ClusterSpiffeId,
                name: "apps".into(),
                uid: "csid-uid".into(),
                creation_timestamp: 0,
                deletion_timestamp: None,
            },
        }],
    }
}

fn set_pods(store: &EntryStore, pods: impl IntoIterator<Item = (usize, Option<u64>)>) {
    store.set_pods(
        pods.into_iter()
            .map(|(n, ttl)| (format!("uid-{n}"), ttl.map(|ttl| record(n, ttl)))),
    );
}

/// An entry as spire-controller-manager writes it: `<prefix><uuid>` ID.
fn scm_written(n: usize, ttl: i32) -> RegistrationEntry {
    let id = |path: &str| {
        Some(SpireId {
            trust_domain: TD.into(),
            path: path.into(),
        })
    };
    RegistrationEntry {
        id: format!("{PREFIX}00000000-0000-4000-8000-{n:012}"),
        spiffe_id: id(&format!("/ns/team/sa/app-{n}")),
        parent_id: id("/spire/agent/k8s_psat/test/node-1"),
        selectors: vec![SpireSelector {
            r#type: "k8s".into(),
            value: format!("pod-uid:uid-{n}"),
        }],
        x509_svid_ttl: ttl,
        jwt_svid_ttl: 300,
        ..RegistrationEntry::default()
    }
}

/// Everything the server holds, by SPIFFE ID path (a duplicate would show up as two IDs).
async fn server_entries(client: &SpireEntries) -> BTreeMap<String, Vec<(String, i32)>> {
    let mut by_path: BTreeMap<String, Vec<(String, i32)>> = BTreeMap::new();
    for entry in client.list_all().await.unwrap() {
        let path = entry.spiffe_id.as_ref().unwrap().path.clone();
        by_path
            .entry(path)
            .or_default()
            .push((entry.id.clone(), entry.x509_svid_ttl));
    }
    by_path
}

async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running sync of `store` into the server behind `client`, as the Lease holder with the
/// caches synced.
struct Running {
    task: tokio::task::JoinHandle<()>,
    state: watch::Receiver<BackendState>,
    shutdown: CancellationToken,
    /// Held: a dropped Lease sender reads as a lost Lease.
    _leader: watch::Sender<bool>,
}

fn start_sync(client: &SpireEntries, store: &EntryStore, settings: SyncSettings) -> Running {
    let (leader_tx, leader) = watch::channel(true);
    let (sync, state) = SpireSync::new(
        client.clone(),
        store.clone(),
        settings,
        leader,
        watch::channel(true).1,
    );
    let shutdown = CancellationToken::new();
    Running {
        task: tokio::spawn(sync.run(shutdown.clone())),
        state,
        shutdown,
        _leader: leader_tx,
    }
}

async fn synced(state: &mut watch::Receiver<BackendState>, owned: usize) {
    let reached = tokio::time::timeout(
        WAIT,
        state.wait_for(|s| {
            matches!(s, BackendState::Synced { owned: o, refused, .. } if *o == owned && refused.is_empty())
        }),
    )
    .await
    .is_ok();
    assert!(
        reached,
        "not synced with {owned} owned: {:?}",
        *state.borrow()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spire_backend_takes_over_follows_without_listing_and_rides_out_a_restart() {
    let mut server = tokio::task::spawn_blocking(|| SpireServer::start(SpireOptions::new(TD)))
        .await
        .unwrap()
        .expect("start spire-server");
    // Our own view of the server, apart from the sync's client (and its call counts).
    let observer = SpireEntries::connect_lazy(server.socket_path(), BatchLimits::default());

    // Before the takeover: pod 0's entry as spire-controller-manager wrote it, pod 1's with an
    // older TTL, an owned entry nobody wants any more, and an entry made by hand (not ours).
    server
        .cli(
            &[
                "entry",
                "create",
                "-parentID",
                &format!("spiffe://{TD}/admin"),
                "-spiffeID",
                &format!("spiffe://{TD}/by-hand"),
                "-selector",
                "unix:uid:0",
            ],
            None,
        )
        .unwrap();
    let seeded = observer
        .create(vec![
            scm_written(0, 3600),
            scm_written(1, 60),
            scm_written(99, 3600),
        ])
        .await
        .unwrap();
    assert_eq!(seeded.len(), 3);

    let store = EntryStore::new();
    set_pods(&store, (0..10).map(|n| (n, Some(3600))));
    let client = SpireEntries::connect_lazy(server.socket_path(), BatchLimits::default());
    let settings = SyncSettings::new(Ownership::new(PREFIX));
    let Running {
        task,
        mut state,
        shutdown,
        _leader,
    } = start_sync(&client, &store, settings);

    synced(&mut state, 10).await;
    let entries = server_entries(&observer).await;
    assert_eq!(
        entries["/ns/team/sa/app-0"],
        [(scm_written(0, 3600).id, 3600)],
        "adopted as is"
    );
    assert_eq!(
        entries["/ns/team/sa/app-1"],
        [(scm_written(1, 60).id, 3600)],
        "updated in place"
    );
    assert!(
        !entries.contains_key("/ns/team/sa/app-99"),
        "unwanted owned entry deleted"
    );
    assert_eq!(entries["/by-hand"].len(), 1, "not ours: untouched");
    assert_eq!(entries.len(), 11);
    let [lists, creates, updates, deletes] = client.calls().snapshot();
    println!(
        "takeover: {lists} ListEntries page(s), {creates} create, {updates} update, {deletes} delete call(s)"
    );
    assert_eq!((creates, updates, deletes), (1, 1, 1));

    // Steady state: one pod added, one removed, one changed; no listing.
    set_pods(&store, [(10, Some(3600)), (3, None), (4, Some(7200))]);
    synced(&mut state, 10).await;
    let entries = until("the three changes in SPIRE", || async {
        let entries = server_entries(&observer).await;
        (entries.contains_key("/ns/team/sa/app-10")
            && !entries.contains_key("/ns/team/sa/app-3")
            && entries["/ns/team/sa/app-4"][0].1 == 7200)
            .then_some(entries)
    })
    .await;
    assert_eq!(entries.len(), 11);
    assert_eq!(
        client.calls().snapshot()[0],
        lists,
        "no ListEntries while following changes"
    );

    // The server restarts; meanwhile a pod arrives. Unavailable, then synced, no duplicates.
    tokio::task::block_in_place(|| server.stop()).unwrap();
    set_pods(&store, [(11, Some(3600))]);
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, BackendState::Unavailable(_))),
    )
    .await
    .expect("Unavailable while the server is down")
    .unwrap();
    tokio::task::block_in_place(|| server.start_again()).unwrap();
    synced(&mut state, 11).await;
    let entries = server_entries(&observer).await;
    assert_eq!(entries["/ns/team/sa/app-11"].len(), 1);
    assert!(
        entries.values().all(|ids| ids.len() == 1),
        "no duplicates: {entries:?}"
    );
    assert_eq!(entries.len(), 12);
    shutdown.cancel();
    task.await.unwrap();

    // A drift check repairs an entry deleted behind the backend's back.
    let mut settings = SyncSettings::new(Ownership::new(PREFIX));
    settings.drift_check = Duration::from_secs(2);
    let Running {
        task,
        mut state,
        shutdown,
        _leader,
    } = start_sync(&client, &store, settings);
    synced(&mut state, 11).await;
    let victim = entries["/ns/team/sa/app-5"][0].0.clone();
    observer.delete(vec![victim]).await.unwrap();
    until("app-5 recreated by the drift check", || async {
        server_entries(&observer)
            .await
            .get("/ns/team/sa/app-5")
            .filter(|ids| ids.len() == 1)
            .map(|_| ())
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();

    // Every entry the server holds for us reads back as what the store wants.
    let ours: Vec<Entry> = observer
        .list_all()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.id.starts_with(PREFIX))
        .map(|e| to_stored(e).unwrap().entry)
        .collect();
    assert_eq!(ours.len(), 11);
    for entry in &ours {
        let n: usize = entry
            .spiffe_id
            .path()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ttl = if n == 4 { 7200 } else { 3600 };
        assert_eq!(*entry, pod_entry(n, ttl));
    }
}

fn federation(td: &str, url: &str, bundle: Option<TrustDomainBundle>) -> FederatedTrustDomain {
    FederatedTrustDomain {
        resource: format!("cftd-{td}"),
        trust_domain: TrustDomain::new(td).unwrap(),
        bundle_endpoint_url: url::Url::parse(url).unwrap(),
        profile: BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse(&format!("spiffe://{td}/spire/server")).unwrap(),
        },
        initial_bundle: bundle,
        fetched_bundle: None,
    }
}

fn federation_set(federations: &[FederatedTrustDomain]) -> Arc<FederationSet> {
    Arc::new(
        federations
            .iter()
            .map(|f| (f.trust_domain.name().to_owned(), f.clone()))
            .collect(),
    )
}

/// The relationships SPIRE holds: trust domain -> endpoint URL.
async fn server_relationships(client: &SpireRelationships) -> BTreeMap<String, String> {
    client
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.trust_domain, r.bundle_endpoint_url))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_trust_domains_become_spire_federation_relationships() {
    // SPIRE's own config federates with static.test: not listed (the listings below hold only
    // peer.test), so never deleted (one delete call: the hand-made one).
    let mut options = SpireOptions::new(TD);
    options.federates_with = vec![FederatesWith::https_web(
        "static.test",
        "https://static.example/bundle",
    )];
    let server = tokio::task::spawn_blocking(move || SpireServer::start(options))
        .await
        .unwrap()
        .expect("start spire-server");
    let observer = SpireRelationships::connect_lazy(server.socket_path(), BatchLimits::default());
    // A relationship made by hand: as with spire-controller-manager, no resource declares it,
    // so it goes.
    server
        .cli(
            &[
                "federation",
                "create",
                "-trustDomain",
                "by-hand.test",
                "-bundleEndpointURL",
                "https://by-hand.example/bundle",
                "-bundleEndpointProfile",
                "https_web",
            ],
            None,
        )
        .unwrap();

    // peer.test starts from a bundle with an X.509 root and a JWT key.
    let peer = TrustDomain::new("peer.test").unwrap();
    let mut bundle = TrustDomainBundle::new(peer.clone());
    bundle
        .x509_authorities
        .push(UserPki::new(&peer).root().as_ref().to_vec());
    let jwt_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    bundle
        .jwt_authorities
        .insert("peer-kid".into(), PublicJwk::for_signing_key(&jwt_key));
    let first = federation(
        "peer.test",
        "https://peer.example:8443/bundle",
        Some(bundle.clone()),
    );
    let (federation_tx, federation_rx) =
        watch::channel(federation_set(std::slice::from_ref(&first)));

    // A pod entry federating with peer.test: SPIRE refuses it unless it knows that trust domain.
    let store = EntryStore::new();
    let mut pod = record(1, 3600);
    pod.entries[0].entry.federates_with = vec![peer.clone()];
    store.set_pods([("uid-1".to_owned(), Some(pod))]);

    let client = SpireEntries::connect_lazy(server.socket_path(), BatchLimits::default());
    let relationships =
        SpireRelationships::connect_lazy(server.socket_path(), BatchLimits::default());
    let (leader_tx, leader) = watch::channel(true);
    let (sync, mut state) = SpireSync::new(
        client.clone(),
        store.clone(),
        SyncSettings::new(Ownership::new(PREFIX)),
        leader,
        watch::channel(true).1,
    );
    let sync = sync.with_federation(relationships.clone(), federation_rx);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sync.run(shutdown.clone()));

    synced(&mut state, 1).await;
    assert_eq!(
        server_relationships(&observer).await,
        BTreeMap::from([(
            "peer.test".to_owned(),
            "https://peer.example:8443/bundle".to_owned()
        )]),
        "created, and the hand-made one deleted"
    );
    let held = server
        .federated_bundle("peer.test")
        .unwrap()
        .expect("SPIRE holds the starting bundle");
    assert_eq!(held.x509_authorities, bundle.x509_authorities);
    assert_eq!(
        held.jwt_authorities.get("peer-kid").map(|jwk| &jwk.key),
        Some(&PublicJwk::for_signing_key(&jwt_key).key),
        "the JWT authority arrives as the same key"
    );
    let statuses = match &*state.borrow() {
        BackendState::Synced { relationships, .. } => relationships.as_ref().clone(),
        other => panic!("not synced: {other:?}"),
    };
    assert_eq!(
        statuses,
        BTreeMap::from([("cftd-peer.test".to_owned(), RelationshipStatus::Set)])
    );
    // SPIRE answers a full page with a token for the next, possibly empty, one.
    let listed = relationships.calls().list.load(Ordering::Relaxed);
    let entries = server_entries(&client).await;
    assert_eq!(
        entries["/ns/team/sa/app-1"].len(),
        1,
        "the entry federating with peer.test is accepted"
    );

    let creates_before_move = relationships.calls().batch_create.load(Ordering::Relaxed);

    // The endpoint moves: updated in place; then the resource goes: deleted.
    let moved = federation("peer.test", "https://peer2.example/bundle", Some(bundle));
    federation_tx.send_replace(federation_set(&[moved]));
    until("the relationship moved", || async {
        (server_relationships(&observer).await.get("peer.test")
            == Some(&"https://peer2.example/bundle".to_owned()))
        .then_some(())
    })
    .await;
    let [_, creates, updates, deletes] = [
        relationships.calls().list.load(Ordering::Relaxed),
        relationships.calls().batch_create.load(Ordering::Relaxed),
        relationships.calls().batch_update.load(Ordering::Relaxed),
        relationships.calls().batch_delete.load(Ordering::Relaxed),
    ];
    assert_eq!(
        (creates - creates_before_move, updates, deletes),
        (0, 1, 1),
        "moved with one update"
    );
    federation_tx.send_replace(federation_set(&[]));
    until("the relationship deleted", || async {
        server_relationships(&observer)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(
        relationships.calls().list.load(Ordering::Relaxed),
        listed,
        "listed at the start only"
    );
    shutdown.cancel();
    task.await.unwrap();
    drop(leader_tx);
}
