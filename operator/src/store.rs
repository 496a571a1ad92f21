//! The embedded backend: the desired registration entries, indexed by pod UID and by node.
//!
//! The reconciler writes a pod's whole entry set at once ([`EntryStore::set_pod`]); the authority
//! and the node API read it ([`EntryStore::pod`], [`EntryStore::pods_on_node`]) and wait for
//! changes ([`EntryStore::subscribe`]). Every write that changes something bumps the revision, so
//! a reader that saw revision N knows whether anything happened since.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use wimsey_core::entries::{Entry, EntryOwner};

/// One registration entry as stored: the entry, its stable ID and who declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// `<entryIDPrefix><hash of the entry key>`: stable across restarts for the same entry.
    pub id: String,
    pub entry: Entry,
    pub owner: EntryOwner,
}

/// The entries of one pod and where the pod runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// `spec.nodeName`; empty while unscheduled.
    pub node_name: String,
    /// In key order, one per entry key (masked entries are not here).
    pub entries: Vec<StoredEntry>,
}

/// What changed in the store, for subscribers that only care about some pods or nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreRevision {
    pub revision: u64,
}

#[derive(Debug, Default)]
struct StoreState {
    pods: HashMap<String, Arc<PodRecord>>,
    /// Node name -> pod UIDs scheduled there.
    by_node: HashMap<String, BTreeSet<String>>,
    /// Entries of ClusterStaticEntries, by entry ID (not tied to a pod).
    static_entries: BTreeMap<String, StoredEntry>,
    revision: u64,
    /// Pod UID -> a counter bumped whenever that pod's record changes, for
    /// [`EntryStore::subscribe_pod`]. Senders nobody listens to are dropped on the next
    /// subscription.
    pod_watchers: HashMap<String, watch::Sender<u64>>,
}

/// The in-memory entry store. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct EntryStore {
    state: Arc<RwLock<StoreState>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Default for EntryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl EntryStore {
    pub fn new() -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            state: Arc::default(),
            changes: Arc::new(changes),
        }
    }

    /// Replaces everything known about pod `uid`: `None` removes it. Returns whether anything
    /// changed (an identical record is not a change and does not wake subscribers).
    pub fn set_pod(&self, uid: &str, record: Option<PodRecord>) -> bool {
        self.set_pods([(uid.to_owned(), record)]) > 0
    }

    /// [`EntryStore::set_pod`] for many pods under one lock, with one revision bump (so
    /// subscribers wake once per reconcile pass, not once per pod). Returns how many changed.
    pub fn set_pods(
        &self,
        records: impl IntoIterator<Item = (String, Option<PodRecord>)>,
    ) -> usize {
        let mut state = self.write();
        let mut changed = 0;
        for (uid, record) in records {
            if replace_pod(&mut state, &uid, record) {
                changed += 1;
                if let Some(watcher) = state.pod_watchers.get(&uid) {
                    watcher.send_modify(|count| *count = count.wrapping_add(1));
                }
            }
        }
        if changed > 0 {
            self.bump(state);
        }
        changed
    }

    /// Replaces the whole set of static entries. Returns whether anything changed.
    pub fn set_static_entries(&self, entries: Vec<StoredEntry>) -> bool {
        let mut state = self.write();
        let new: BTreeMap<String, StoredEntry> =
            entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        if state.static_entries == new {
            return false;
        }
        state.static_entries = new;
        self.bump(state);
        true
    }

    pub fn pod(&self, uid: &str) -> Option<Arc<PodRecord>> {
        self.read().pods.get(uid).cloned()
    }

    /// The pods scheduled on `node`, by UID.
    pub fn pods_on_node(&self, node: &str) -> Vec<Arc<PodRecord>> {
        let state = self.read();
        state
            .by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|uid| state.pods.get(uid).cloned())
            .collect()
    }

    /// Every pod record, by namespace and name (for `/debug/entries` and tests).
    pub fn all_pods(&self) -> Vec<Arc<PodRecord>> {
        let mut pods = self.pods_unordered();
        pods.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        pods
    }

    /// Every pod record, in no order: what a caller that only looks each one up needs (the
    /// spire sync on every change), without sorting 50k records by strings.
    pub fn pods_unordered(&self) -> Vec<Arc<PodRecord>> {
        self.read().pods.values().cloned().collect()
    }

    pub fn static_entries(&self) -> Vec<StoredEntry> {
        self.read().static_entries.values().cloned().collect()
    }

    /// Number of entries, pod and static.
    pub fn entry_count(&self) -> usize {
        let state = self.read();
        state.pods.values().map(|p| p.entries.len()).sum::<usize>() + state.static_entries.len()
    }

    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// A receiver whose value is the store revision; it changes after every effective write.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A receiver that changes whenever pod `uid`'s record changes (set, replaced or removed),
    /// and for nothing else: a WatchPod stream is not woken by other pods' changes.
    pub fn subscribe_pod(&self, uid: &str) -> watch::Receiver<u64> {
        let mut state = self.write();
        state
            .pod_watchers
            .retain(|_, watcher| watcher.receiver_count() > 0);
        state
            .pod_watchers
            .entry(uid.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn bump(&self, mut state: std::sync::RwLockWriteGuard<'_, StoreState>) {
        state.revision += 1;
        let revision = state.revision;
        drop(state);
        self.changes.send_replace(revision);
    }

    // A panic while holding the lock cannot leave the maps half-updated (every write is a
    // single insert/remove), so a poisoned lock is still consistent.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, StoreState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StoreState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn replace_pod(state: &mut StoreState, uid: &str, record: Option<PodRecord>) -> bool {
    let old = state.pods.get(uid);
    if old.map(|o| &**o) == record.as_ref() {
        return false;
    }
    if let Some(old) = state.pods.get(uid).cloned() {
        remove_from_node(&mut state.by_node, &old.node_name, uid);
    }
    match record {
        Some(record) => {
            if !record.node_name.is_empty() {
                state
                    .by_node
                    .entry(record.node_name.clone())
                    .or_default()
                    .insert(uid.to_owned());
            }
            state.pods.insert(uid.to_owned(), Arc::new(record));
        }
        None => {
            state.pods.remove(uid);
        }
    }
    true
}

fn remove_from_node(by_node: &mut HashMap<String, BTreeSet<String>>, node: &str, uid: &str) {
    if let Some(uids) = by_node.get_mut(node) {
        uids.remove(uid);
        if uids.is_empty() {
            by_node.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str, node: &str) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            namespace: "ns".into(),
            name: format!("pod-{uid}"),
            service_account: "default".into(),
            node_name: node.into(),
            entries: Vec::new(),
        }
    }

    #[test]
    fn indexes_pods_by_node_and_moves_them() {
        let store = EntryStore::new();
        assert!(store.set_pod("a", Some(record("a", "n1"))));
        assert!(store.set_pod("b", Some(record("b", "n1"))));
        assert_eq!(store.pods_on_node("n1").len(), 2);
        assert!(store.set_pod("a", Some(record("a", "n2"))));
        assert_eq!(store.pods_on_node("n1").len(), 1);
        assert_eq!(store.pods_on_node("n2")[0].uid, "a");
        assert!(store.set_pod("b", None));
        assert!(store.pods_on_node("n1").is_empty());
        assert!(store.pod("b").is_none());
    }

    #[test]
    fn identical_write_is_not_a_change() {
        let store = EntryStore::new();
        let mut changes = store.subscribe();
        assert!(store.set_pod("a", Some(record("a", "n1"))));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        assert!(!store.set_pod("a", Some(record("a", "n1"))));
        assert!(!changes.has_changed().unwrap());
        assert_eq!(store.revision(), 1);
        assert!(!store.set_pod("missing", None));
    }

    #[test]
    fn a_batch_is_one_revision() {
        let store = EntryStore::new();
        let changed = store.set_pods([
            ("a".to_owned(), Some(record("a", "n1"))),
            ("b".to_owned(), Some(record("b", "n1"))),
            ("c".to_owned(), None),
        ]);
        assert_eq!(changed, 2);
        assert_eq!(store.revision(), 1);
        assert_eq!(store.pods_on_node("n1").len(), 2);
        assert_eq!(
            store.set_pods([("a".to_owned(), Some(record("a", "n1")))]),
            0
        );
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn pod_subscriptions_wake_only_for_their_pod() {
        let store = EntryStore::new();
        store.set_pod("a", Some(record("a", "n1")));
        store.set_pod("b", Some(record("b", "n1")));
        let mut a = store.subscribe_pod("a");
        let mut b = store.subscribe_pod("b");
        let a_again = store.subscribe_pod("a");
        let mut moved = record("a", "n1");
        moved.name = "renamed".into();
        assert!(store.set_pod("a", Some(moved)));
        assert!(a.has_changed().unwrap() && a_again.has_changed().unwrap());
        assert!(!b.has_changed().unwrap(), "b's record did not change");
        a.borrow_and_update();
        // An unchanged write and a write to another pod wake nobody watching a.
        store.set_pods([("c".to_owned(), Some(record("c", "n2")))]);
        assert!(!a.has_changed().unwrap());
        assert!(store.set_pod("a", None));
        assert!(a.has_changed().unwrap(), "removal wakes");
        assert!(!b.has_changed().unwrap());
        b.borrow_and_update();
        // Dropped subscriptions are forgotten.
        drop((a, a_again, b));
        let _c = store.subscribe_pod("c");
        assert_eq!(store.read().pod_watchers.len(), 1);
    }
}
