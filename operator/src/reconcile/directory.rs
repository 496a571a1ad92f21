//! The pods the reconciler's informer has seen, for the node API: where each pod runs and as
//! which service account. It is fed by the same Pod watch as the reconciler, so it costs no
//! extra API traffic and keeps answering (with what was last seen) while the API server is
//! down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use wimsey_core::entries::PodView;

use crate::nodeapi::cluster::{ClusterView, PodFacts, PodLookup};

/// Deleted pod UIDs remembered, so "deleted" stays a definite answer for a while.
pub const DELETED_PODS_REMEMBERED: usize = 4096;

#[derive(Debug, Default)]
struct Pods {
    by_uid: HashMap<String, Arc<PodFacts>>,
    uid_by_name: HashMap<(String, String), String>,
    deleted: HashSet<String>,
    /// Deletion order, oldest first, to bound `deleted`.
    deleted_order: VecDeque<String>,
}

/// The informer's pods. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct PodDirectory {
    pods: Arc<RwLock<Pods>>,
    synced: Arc<AtomicBool>,
}

impl PodDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&self, view: &PodView) {
        self.apply_facts(PodFacts {
            uid: view.uid.clone(),
            namespace: view.namespace.clone(),
            name: view.name.clone(),
            service_account: view.service_account.clone(),
            node_name: view.node_name.clone(),
        });
    }

    pub fn apply_facts(&self, facts: PodFacts) {
        if facts.uid.is_empty() {
            return;
        }
        let mut pods = self.write();
        let name = (facts.namespace.clone(), facts.name.clone());
        pods.uid_by_name.insert(name, facts.uid.clone());
        pods.by_uid.insert(facts.uid.clone(), Arc::new(facts));
    }

    pub fn delete(&self, uid: &str) {
        let mut pods = self.write();
        if let Some(gone) = pods.by_uid.remove(uid) {
            let name = (gone.namespace.clone(), gone.name.clone());
            if pods.uid_by_name.get(&name).is_some_and(|u| u == uid) {
                pods.uid_by_name.remove(&name);
            }
        }
        if pods.deleted.insert(uid.to_owned()) {
            pods.deleted_order.push_back(uid.to_owned());
            while pods.deleted_order.len() > DELETED_PODS_REMEMBERED {
                if let Some(oldest) = pods.deleted_order.pop_front() {
                    pods.deleted.remove(&oldest);
                }
            }
        }
    }

    /// The informer has delivered its first full list (and the first render is done).
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // Every write is a single insert or remove, so a poisoned lock is still consistent.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pods> {
        self.pods.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Pods> {
        self.pods.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClusterView for PodDirectory {
    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn pod(&self, uid: &str) -> PodLookup {
        let pods = self.read();
        match pods.by_uid.get(uid) {
            Some(facts) => PodLookup::Known(PodFacts::clone(facts)),
            None if pods.deleted.contains(uid) => PodLookup::Deleted,
            None => PodLookup::Unknown,
        }
    }

    fn pod_named(&self, namespace: &str, name: &str) -> PodLookup {
        let pods = self.read();
        pods.uid_by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .and_then(|uid| pods.by_uid.get(uid))
            .map_or(PodLookup::Unknown, |facts| {
                PodLookup::Known(PodFacts::clone(facts))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(uid: &str, name: &str, node: &str) -> PodFacts {
        PodFacts {
            uid: uid.into(),
            namespace: "ns".into(),
            name: name.into(),
            service_account: "sa".into(),
            node_name: node.into(),
        }
    }

    #[test]
    fn pods_are_found_by_uid_and_name_and_deletions_are_remembered() {
        let directory = PodDirectory::new();
        assert!(!directory.synced());
        directory.apply_facts(facts("u1", "p", "n1"));
        directory.mark_synced();
        assert!(directory.synced());
        assert_eq!(
            directory.pod("u1"),
            PodLookup::Known(facts("u1", "p", "n1"))
        );
        assert_eq!(
            directory.pod_named("ns", "p"),
            PodLookup::Known(facts("u1", "p", "n1"))
        );
        assert_eq!(directory.pod("u2"), PodLookup::Unknown);
        // A pod recreated under the same name: the name points at the new one, and deleting
        // the old one does not unlink it.
        directory.apply_facts(facts("u2", "p", "n2"));
        directory.delete("u1");
        assert_eq!(directory.pod("u1"), PodLookup::Deleted);
        assert_eq!(
            directory.pod_named("ns", "p"),
            PodLookup::Known(facts("u2", "p", "n2"))
        );
        assert_eq!(directory.len(), 1);
    }

    #[test]
    fn remembered_deletions_are_bounded() {
        let directory = PodDirectory::new();
        for i in 0..=DELETED_PODS_REMEMBERED {
            directory.delete(&format!("u{i}"));
        }
        assert_eq!(directory.pod("u0"), PodLookup::Unknown);
        assert_eq!(
            directory.pod(&format!("u{DELETED_PODS_REMEMBERED}")),
            PodLookup::Deleted
        );
    }
}
