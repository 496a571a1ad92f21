//! Entries and pod records for the sync's unit tests.

use std::sync::Arc;
use std::time::Duration;

use wimsey_core::entries::{Entry, EntryOwner, OwnerKind, Selector};
use wimsey_core::spiffe_id::SpiffeId;

use crate::store::{PodRecord, StoredEntry};

pub(crate) fn entry(n: usize, ttl: u64) -> Entry {
    let id = |s: &str| SpiffeId::parse(s).unwrap();
    Entry {
        spiffe_id: id(&format!("spiffe://td/app-{n}")),
        parent_id: id("spiffe://td/node"),
        selectors: vec![Selector::new("k8s", &format!("pod-uid:{n}"))],
        x509_svid_ttl: Duration::from_secs(ttl),
        jwt_svid_ttl: Duration::ZERO,
        federates_with: Vec::new(),
        admin: false,
        downstream: false,
        dns_names: Vec::new(),
        hint: String::new(),
        store_svid: false,
    }
}

pub(crate) fn stored(entry: Entry) -> StoredEntry {
    StoredEntry {
        id: String::new(),
        entry,
        owner: EntryOwner {
            kind: OwnerKind::ClusterSpiffeId,
            name: "s".into(),
            uid: "u".into(),
            creation_timestamp: 0,
            deletion_timestamp: None,
        },
    }
}

pub(crate) fn pod(n: usize, ttl: u64) -> Arc<PodRecord> {
    Arc::new(PodRecord {
        uid: format!("uid-{n}"),
        namespace: "a".into(),
        name: format!("p{n}"),
        service_account: "default".into(),
        node_name: "node".into(),
        entries: vec![stored(entry(n, ttl))],
    })
}
