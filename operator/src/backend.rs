//! The seam between the reconciler and where registration entries live. The reconciler computes
//! the desired entries (per pod, and the static ones) and hands them to a [`Backend`], which makes
//! them so and reports what changed. The embedded backend is [`crate::store::EntryStore`], which
//! the authority and the node API then serve from; a SPIRE Server backend would create, update
//! and delete entries through SPIRE's Entry API instead.

use std::collections::BTreeMap;

use wimsey_core::entries::OwnerKind;

use crate::store::{EntryStore, PodRecord, StoredEntry};

/// What a backend that writes elsewhere (the `spire` backend) reports back to the reconciler, for
/// the resources' status: whether it can reach its server, and the entries the server refused,
/// by the resource that declared them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feedback {
    /// Why the server cannot be reached, while it cannot.
    pub unavailable: Option<String>,
    pub failures: BTreeMap<(OwnerKind, String), EntryFailures>,
    /// What became of each ClusterFederatedTrustDomain's relationship in the server, by resource
    /// name. `None` when the backend does not hold relationships (embedded: the bundle poller
    /// reports on them instead).
    pub relationships: Option<BTreeMap<String, RelationshipStatus>>,
}

/// A ClusterFederatedTrustDomain's relationship in the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationshipStatus {
    Set,
    /// Refused, with the server's code and message.
    Refused(String),
}

/// The entries of one resource the server refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFailures {
    pub count: i64,
    /// The first refusal: which entry and why.
    pub first: String,
}

/// What one hand-over changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Pods whose entries changed (or were removed).
    pub pods_changed: usize,
}

/// Where the reconciler's desired entries go.
pub trait Backend: Send + Sync {
    /// Makes each pod's entries what its record says (`None`: the pod has none any more).
    fn apply_pods(&self, records: Vec<(String, Option<PodRecord>)>) -> Applied;

    /// Makes the static entries exactly `entries`. Returns whether anything changed.
    fn apply_static_entries(&self, entries: Vec<StoredEntry>) -> bool;
}

/// The embedded backend.
impl Backend for EntryStore {
    fn apply_pods(&self, records: Vec<(String, Option<PodRecord>)>) -> Applied {
        Applied {
            pods_changed: self.set_pods(records),
        }
    }

    fn apply_static_entries(&self, entries: Vec<StoredEntry>) -> bool {
        self.set_static_entries(entries)
    }
}
