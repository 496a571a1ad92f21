//! Registration entries, their identity key, and conflict resolution between resources.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::EntryError;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// A workload selector, `type:value` (the value may itself contain colons).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub kind: String,
    pub value: String,
}

impl Selector {
    pub fn new(kind: &str, value: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        }
    }

    /// Parses `type:value` as spire-controller-manager's `parseSelector`: split at the first
    /// colon, both sides non-empty.
    pub fn parse(input: &str) -> Result<Self, EntryError> {
        let invalid = |reason| EntryError::InvalidSelector {
            value: input.to_owned(),
            reason,
        };
        let (kind, value) = input
            .split_once(':')
            .ok_or_else(|| invalid("expected at least one colon to separate type from value"))?;
        if kind.is_empty() {
            return Err(invalid("type cannot be empty"));
        }
        if value.is_empty() {
            return Err(invalid("value cannot be empty"));
        }
        Ok(Self::new(kind, value))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// One registration entry, backend-neutral. A zero TTL means the server default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    /// In declaration order; for pod entries `k8s:pod-uid:<uid>` comes first.
    pub selectors: Vec<Selector>,
    pub x509_svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    pub dns_names: Vec<String>,
    pub hint: String,
    pub store_svid: bool,
}

/// What makes two entries "the same" to SPIRE: SPIFFE ID, parent ID and the selector set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    /// Sorted by type, then value.
    pub selectors: Vec<Selector>,
}

impl Entry {
    pub fn key(&self) -> EntryKey {
        let mut selectors = self.selectors.clone();
        selectors.sort();
        EntryKey {
            spiffe_id: self.spiffe_id.clone(),
            parent_id: self.parent_id.clone(),
            selectors,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnerKind {
    ClusterSpiffeId,
    ClusterStaticEntry,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::ClusterSpiffeId => "ClusterSPIFFEID",
            OwnerKind::ClusterStaticEntry => "ClusterStaticEntry",
        }
    }
}

/// The resource an entry came from, with what decides who wins a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryOwner {
    pub kind: OwnerKind,
    pub name: String,
    pub uid: String,
    /// Unix seconds.
    pub creation_timestamp: i64,
    pub deletion_timestamp: Option<i64>,
}

impl EntryOwner {
    /// spire-controller-manager's `objectCmp`: older first; then not being deleted; then the
    /// later deletion; then UID. Less means preferred.
    pub fn preference(&self, other: &Self) -> Ordering {
        self.creation_timestamp
            .cmp(&other.creation_timestamp)
            .then_with(
                || match (self.deletion_timestamp, other.deletion_timestamp) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                    (Some(a), Some(b)) => b.cmp(&a),
                },
            )
            .then_with(|| self.uid.cmp(&other.uid))
    }
}

impl fmt::Display for EntryOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// An entry and the resource that declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredEntry {
    pub entry: Entry,
    pub owner: EntryOwner,
}

/// A declared entry that lost a conflict: another resource declared the same key and is older.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedEntry {
    pub entry: Entry,
    pub owner: EntryOwner,
    pub masked_by: EntryOwner,
}

/// The outcome of [`resolve_conflicts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// One entry per key, from the preferred resource, in key order.
    pub entries: Vec<DeclaredEntry>,
    pub masked: Vec<MaskedEntry>,
}

/// Keeps one entry per key: the preferred owner's (see [`EntryOwner::preference`]); the others
/// are masked, not merged. ClusterSPIFFEIDs and ClusterStaticEntries share one key space.
pub fn resolve_conflicts(declared: impl IntoIterator<Item = DeclaredEntry>) -> Resolved {
    let mut by_key: BTreeMap<EntryKey, Vec<DeclaredEntry>> = BTreeMap::new();
    for entry in declared {
        by_key.entry(entry.entry.key()).or_default().push(entry);
    }
    let mut resolved = Resolved::default();
    for (_, mut candidates) in by_key {
        candidates.sort_by(|a, b| a.owner.preference(&b.owner));
        let mut candidates = candidates.into_iter();
        let Some(winner) = candidates.next() else {
            continue;
        };
        resolved.masked.extend(candidates.map(|loser| MaskedEntry {
            entry: loser.entry,
            owner: loser.owner,
            masked_by: winner.owner.clone(),
        }));
        resolved.entries.push(winner);
    }
    resolved
}
