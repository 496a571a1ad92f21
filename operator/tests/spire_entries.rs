//! Our SPIRE entry API client against a real SPIRE Server (v1.13.3, `make test-spire-interop`),
//! over its admin Unix socket: batched creates keep the IDs we give (how ownership is marked),
//! report a similar existing entry as AlreadyExists and a malformed one as InvalidArgument without
//! failing the others; paged listing sees every entry, and so does SPIRE's own CLI; updates change
//! what the mask names; deletes remove exactly the IDs given; an entry made with the CLI is
//! listed but never touched. A stopped server is an "unavailable" error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tonic::Code;
use wimsey_operator::spire_entries::{BatchLimits, Outcome, SpireEntries};
use wimsey_proto::spire::entry::v1::{EntryMask, RegistrationEntry, Selector, SpiffeId};

#[path = "support/spire.rs"]
mod spire;

use spire::{SpireOptions, SpireServer};

const TD: &str = "spire.test";

fn id(path: &str) -> Option<SpiffeId> {
    Some(SpiffeId {
        trust_domain: TD.into(),
        path: path.into(),
    })
}

/// An entry the way spire-controller-manager writes one for a pod: `<prefix>.<uuid>` ID, the
/// node's agent as parent, k8s selectors.
fn pod_entry(n: usize) -> RegistrationEntry {
    RegistrationEntry {
        id: format!("wimsey.00000000-0000-4000-8000-{n:012}"),
        spiffe_id: id(&format!("/ns/team/sa/app-{n}")),
        parent_id: id("/spire/agent/k8s_psat/test/node-1"),
        selectors: vec![Selector {
            r#type: "k8s".into(),
            value: format!("pod-uid:0000-{n}"),
        }],
        x509_svid_ttl: 3600,
        jwt_svid_ttl: 300,
        dns_names: vec![format!("app-{n}.team.svc")],
        ..RegistrationEntry::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_against_a_real_spire_server() {
    let spire = tokio::task::spawn_blocking(|| SpireServer::start(SpireOptions::new(TD)))
        .await
        .unwrap()
        .expect("start spire-server");
    // Small batches and pages, so that several calls are made.
    let limits = BatchLimits {
        create: 4,
        update: 3,
        delete: 5,
        page: 7,
    };
    let entries = SpireEntries::connect_lazy(spire.socket_path(), limits).unwrap();
    assert_eq!(entries.count().await.unwrap(), 0);

    // Someone else's entry, made with SPIRE's CLI.
    spire
        .cli(
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://spire.test/theirs",
                "-parentID",
                "spiffe://spire.test/spire/agent/x",
                "-selector",
                "unix:uid:1000",
            ],
            None,
        )
        .expect("entry create by the CLI");

    // 10 new entries, a duplicate of the first (same SPIFFE ID, parent and selectors, another
    // ID), and one with a malformed selector.
    let mut batch: Vec<RegistrationEntry> = (0..10).map(pod_entry).collect();
    let mut duplicate = pod_entry(0);
    duplicate.id = "wimsey.ffffffff-0000-4000-8000-000000000000".into();
    batch.push(duplicate);
    let mut malformed = pod_entry(99);
    malformed.selectors = vec![Selector {
        r#type: "k8s".into(),
        value: String::new(),
    }];
    batch.push(malformed);
    let outcomes = entries.create(batch).await.unwrap();
    assert_eq!(outcomes.len(), 12);
    for (n, outcome) in outcomes[..10].iter().enumerate() {
        match outcome {
            Outcome::Done(entry) => assert_eq!(entry.id, pod_entry(n).id, "the ID we gave is kept"),
            other => panic!("entry {n}: {other:?}"),
        }
    }
    match &outcomes[10] {
        Outcome::AlreadyExists(existing) => assert_eq!(existing.id, pod_entry(0).id),
        other => panic!("duplicate: {other:?}"),
    }
    match &outcomes[11] {
        Outcome::Refused { code, message } => {
            assert_eq!(*code, Code::InvalidArgument, "{message}");
            println!("SPIRE refused the malformed entry: {code:?} {message}");
        }
        other => panic!("malformed: {other:?}"),
    }

    // Paged listing (page size 7) sees all 11, and so does SPIRE's CLI.
    let listed = entries.list_all().await.unwrap();
    assert_eq!(listed.len(), 11, "{listed:?}");
    let ours: Vec<&RegistrationEntry> = listed
        .iter()
        .filter(|e| e.id.starts_with("wimsey."))
        .collect();
    assert_eq!(ours.len(), 10);
    let shown = spire
        .cli(&["entry", "show", "-output", "json"], None)
        .unwrap();
    for n in 0..10 {
        assert!(
            shown.contains(&pod_entry(n).id),
            "CLI does not show entry {n}"
        );
    }
    assert_eq!(entries.count().await.unwrap(), 11);

    // Update: only what the mask names changes.
    let mut changed = pod_entry(3);
    changed.dns_names = vec!["renamed.team.svc".into()];
    changed.x509_svid_ttl = 60;
    let outcomes = entries
        .update(
            vec![changed],
            EntryMask {
                dns_names: true,
                ..EntryMask::default()
            },
        )
        .await
        .unwrap();
    match &outcomes[0] {
        Outcome::Done(entry) => {
            assert_eq!(entry.dns_names, ["renamed.team.svc"]);
            assert_eq!(entry.x509_svid_ttl, 3600, "not in the mask: unchanged");
        }
        other => panic!("update: {other:?}"),
    }

    // Delete our 10 (and one that does not exist): the CLI's entry stays.
    let mut ids: Vec<String> = (0..10).map(|n| pod_entry(n).id).collect();
    ids.push("wimsey.does-not-exist".into());
    let outcomes = entries.delete(ids).await.unwrap();
    assert!(
        outcomes[..10].iter().all(|o| matches!(o, Outcome::Done(_))),
        "{outcomes:?}"
    );
    assert!(matches!(
        &outcomes[10],
        Outcome::Refused {
            code: Code::NotFound,
            ..
        }
    ));
    let left = entries.list_all().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].spiffe_id, id("/theirs"));
    println!(
        "SPIRE entry API: 10 created in batches of {}, listed in pages of {}, 1 updated, 10 deleted; the CLI's entry untouched",
        limits.create, limits.page
    );

    // The server goes away: an unavailable error, not a refusal.
    drop(spire);
    let error = entries.count().await.unwrap_err();
    assert!(error.is_unavailable(), "{error}");
}
