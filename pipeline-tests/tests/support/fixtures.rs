//! Values the in-process node API tests build again and again: a pod as the informer sees it, one
//! stored entry, and the pod's record in the entry store.

use std::time::Duration;

use wimsey_core::SpiffeId;
use wimsey_core::entries::{Entry, EntryOwner, OwnerKind, Selector};
use wimsey_operator::nodeapi::cluster::PodFacts;
use wimsey_operator::store::{PodRecord, StoredEntry};

/// A pod as the informer sees it.
pub(crate) fn pod_facts(uid: &str, namespace: &str, name: &str, sa: &str, node: &str) -> PodFacts {
    PodFacts {
        uid: uid.into(),
        namespace: namespace.into(),
        name: name.into(),
        service_account: sa.into(),
        node_name: node.into(),
    }
}

/// One entry for `spiffe_id` (a full `spiffe://` ID), owned by a ClusterSPIFFEID named `test`.
pub(crate) fn stored_entry(spiffe_id: &str) -> StoredEntry {
    let id = SpiffeId::parse(spiffe_id).expect("a test SPIFFE ID");
    let parent = SpiffeId::parse(&format!("spiffe://{}/spire/agent/x", id.trust_domain()))
        .expect("a parent ID");
    StoredEntry {
        id: format!("e{}", id.path().replace('/', "-")),
        entry: Entry {
            spiffe_id: id,
            parent_id: parent,
            selectors: vec![Selector::new("k8s", "ns:app")],
            x509_svid_ttl: Duration::ZERO,
            jwt_svid_ttl: Duration::ZERO,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            dns_names: Vec::new(),
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

/// The store's record of `pod` with `entries`.
pub(crate) fn pod_record(pod: &PodFacts, entries: Vec<StoredEntry>) -> PodRecord {
    PodRecord {
        uid: pod.uid.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        service_account: pod.service_account.clone(),
        node_name: pod.node_name.clone(),
        entries,
    }
}
