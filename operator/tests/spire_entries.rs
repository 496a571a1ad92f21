//! Our SPIRE entry API client against a real SPIRE Server (v1.13.3, `make test-spire-interop`),
//! over its admin Unix socket: batched creates keep the IDs we give (how ownership is marked),
//! report a similar existing entry as AlreadyExists and a malformed one as InvalidArgument without
//! failing the others; paged listing sees every entry, and so does SPIRE's own CLI; updates change
//! what the mask names; deletes remove exactly the IDs given; an entry made with the CLI is
//! listed but never touched. A stopped server is an "unavailable" error. And a takeover from
//! spire-controller-manager (its entries seeded as it writes them) writes nothing for unchanged
//! entries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Code;
use wimsey_core::entries::{Entry, Selector as CoreSelector};
use wimsey_core::entry_sync::{Ownership, Stored, plan_sync};
use wimsey_operator::spire_entries::{
    BatchLimits, Outcome, SpireEntries, from_stored, mask, to_stored,
};
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
    let entries = SpireEntries::connect_lazy(spire.socket_path(), limits);
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

/// An entry as spire-controller-manager writes it for a pod (`entryIDPrefix: prod`).
fn scm_entry(n: usize) -> Stored {
    let id = |s: String| wimsey_core::SpiffeId::parse(&s).unwrap();
    Stored {
        id: format!("prod.{}", uuid(n)),
        entry: Entry {
            spiffe_id: id(format!("spiffe://{TD}/ns/shop/sa/svc-{n}")),
            parent_id: id(format!(
                "spiffe://{TD}/spire/agent/k8s_psat/prod/node-uid-{}",
                n % 3
            )),
            selectors: vec![CoreSelector::new("k8s", &format!("pod-uid:pod-{n}"))],
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            federates_with: vec![],
            admin: false,
            downstream: false,
            dns_names: vec![format!("svc-{n}"), format!("svc-{n}.shop")],
            hint: String::new(),
            store_svid: false,
        },
    }
}

fn uuid(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Taking over from spire-controller-manager: its 20 entries are in SPIRE (as it writes them),
/// beside a hand-made entry and another registrar's. We render the same pods (selectors and DNS
/// names in another order, no IDs), with one pod's DNS names changed, one pod gone and one new:
/// the plan adopts every unchanged entry with its ID and no call (its revision stays), updates
/// one, deletes one, creates one, and never touches what it does not own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_over_from_spire_controller_manager_leaves_unchanged_entries_alone() {
    let spire = tokio::task::spawn_blocking(|| SpireServer::start(SpireOptions::new(TD)))
        .await
        .unwrap()
        .expect("start spire-server");
    let entries = SpireEntries::connect_lazy(spire.socket_path(), BatchLimits::default());
    let mut seeded: Vec<RegistrationEntry> = (0..20).map(|n| from_stored(&scm_entry(n))).collect();
    let mut foreign = scm_entry(100);
    foreign.id = format!("other.{}", uuid(100));
    seeded.push(from_stored(&foreign));
    assert!(
        entries
            .create(seeded)
            .await
            .unwrap()
            .iter()
            .all(|o| matches!(o, Outcome::Done(_)))
    );
    spire
        .cli(
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://spire.test/by-hand",
                "-parentID",
                "spiffe://spire.test/spire/agent/x",
                "-selector",
                "unix:uid:0",
            ],
            None,
        )
        .expect("entry create by the CLI");
    let before: BTreeMap<String, i64> = entries
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.revision_number))
        .collect();
    assert_eq!(before.len(), 22);

    let desired: Vec<Entry> = (0..=20)
        .filter(|n| *n != 7)
        .map(|n| {
            let mut e = scm_entry(n).entry;
            e.dns_names.reverse();
            if n == 5 {
                e.dns_names = vec!["renamed".into()];
            }
            e
        })
        .collect();
    let current: Vec<Stored> = entries
        .list_all()
        .await
        .unwrap()
        .iter()
        .map(|e| to_stored(e).unwrap())
        .collect();
    let mut fresh = 1000;
    let plan = plan_sync(&desired, &current, &Ownership::new("prod"), |_| {
        fresh += 1;
        uuid(fresh)
    });
    assert_eq!(plan.unchanged, 18, "{plan:?}");
    assert_eq!(plan.delete, [scm_entry(7).id]);
    assert_eq!(plan.update.len(), 1);
    assert_eq!(plan.update[0].0.id, scm_entry(5).id);
    assert_eq!(plan.create.len(), 1);
    assert!(plan.create[0].id.starts_with("prod."));

    // Applied in spire-controller-manager's order: deletes, creates, updates.
    let deleted = entries.delete(plan.delete.clone()).await.unwrap();
    let created = entries
        .create(plan.create.iter().map(from_stored).collect())
        .await
        .unwrap();
    let (update, changed) = &plan.update[0];
    let updated = entries
        .update(vec![from_stored(update)], mask(*changed))
        .await
        .unwrap();
    for outcome in deleted.iter().chain(&created).chain(&updated) {
        assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
    }

    let after: BTreeMap<String, RegistrationEntry> = entries
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    let mut kept = 0;
    for n in (0..20).filter(|n| *n != 5 && *n != 7) {
        let id = scm_entry(n).id;
        assert_eq!(
            after[&id].revision_number, before[&id],
            "entry {n} was written"
        );
        kept += 1;
    }
    assert_eq!(after[&scm_entry(5).id].dns_names, ["renamed"]);
    assert!(after[&scm_entry(5).id].revision_number > before[&scm_entry(5).id]);
    assert!(!after.contains_key(&scm_entry(7).id));
    assert!(after.contains_key(&plan.create[0].id));
    assert_eq!(after[&foreign.id].revision_number, before[&foreign.id]);
    assert!(
        after
            .values()
            .any(|e| e.spiffe_id.as_ref().is_some_and(|id| id.path == "/by-hand"))
    );
    println!(
        "takeover from spire-controller-manager: {kept} unchanged entries kept their IDs and revisions (no create, no delete, no update for them); 1 updated, 1 deleted, 1 created; the other registrar's and the hand-made entry untouched"
    );
}
