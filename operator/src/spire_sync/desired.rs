//! The desired entries as the sync last saw them in the [`EntryStore`], so that a change costs
//! work in proportion to what changed: pod records are shared (`Arc`), and a record that is the
//! same allocation as before has not changed.
//!
//! Two records can want the same entry key (a ClusterStaticEntry identical to a pod's entry): a
//! count of the records wanting each key (by its hash) keeps a key wanted while any record still
//! wants it, so removing one of them never deletes the entry the other needs.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use wimsey_core::entries::{Entry, EntryKey};

use crate::store::{PodRecord, StoredEntry};

/// Entry keys whose desired entry may have changed, with the entry now wanted (None: none).
pub type Changed = BTreeMap<EntryKey, Option<Entry>>;

#[derive(Debug, Default)]
pub struct Desired {
    /// Pod UID -> its record and the update that last saw it in the store.
    pods: HashMap<String, (Arc<PodRecord>, u64)>,
    statics: Vec<StoredEntry>,
    updates: u64,
    /// How many desired entries have a key of this hash (a hash, not the key: 16 bytes per entry
    /// instead of a copy of every key; a collision only costs a search).
    wanting: HashMap<u64, u32>,
}

impl Desired {
    /// Takes the store's current `pods` and `statics`; returns what changed since the last call.
    /// Unchanged pods cost a pointer comparison, and no allocation.
    pub fn update(&mut self, pods: Vec<Arc<PodRecord>>, statics: Vec<StoredEntry>) -> Changed {
        self.updates += 1;
        let seen = self.updates;
        let mut changed = Changed::new();
        for pod in pods {
            match self.pods.get_mut(&pod.uid) {
                Some((held, at)) => {
                    *at = seen;
                    if !Arc::ptr_eq(held, &pod) {
                        unwanted(&mut changed, &mut self.wanting, &held.entries);
                        wanted(&mut changed, &mut self.wanting, &pod.entries);
                        *held = pod;
                    }
                }
                None => {
                    wanted(&mut changed, &mut self.wanting, &pod.entries);
                    self.pods.insert(pod.uid.clone(), (pod, seen));
                }
            }
        }
        // Pods no longer in the store.
        let wanting = &mut self.wanting;
        self.pods.retain(|_, (held, at)| {
            let present = *at == seen;
            if !present {
                unwanted(&mut changed, wanting, &held.entries);
            }
            present
        });
        if statics != self.statics {
            unwanted(&mut changed, &mut self.wanting, &self.statics);
            wanted(&mut changed, &mut self.wanting, &statics);
            self.statics = statics;
        }
        self.still_wanted(&mut changed);
        changed
    }

    /// A key no changed record wants any more may still be wanted by an unchanged one: then
    /// that record's entry is what is wanted.
    fn still_wanted(&self, changed: &mut Changed) {
        for (key, entry) in changed.iter_mut() {
            if entry.is_none() && self.wanting.contains_key(&key_hash(key)) {
                *entry = self.find(key);
            }
        }
    }

    /// The desired entry with `key`, searched (rare: only for a key two records want).
    fn find(&self, key: &EntryKey) -> Option<Entry> {
        self.pods
            .values()
            .flat_map(|(pod, _)| pod.entries.iter())
            .chain(self.statics.iter())
            .find(|stored| stored.entry.key() == *key)
            .map(|stored| stored.entry.clone())
    }

    /// The record held for pod `uid`.
    pub fn pod(&self, uid: &str) -> Option<Arc<PodRecord>> {
        self.pods.get(uid).map(|(pod, _)| Arc::clone(pod))
    }

    /// Every desired entry.
    pub fn all(&self) -> Vec<Entry> {
        self.pods
            .values()
            .flat_map(|(pod, _)| pod.entries.iter())
            .chain(self.statics.iter())
            .map(|e| e.entry.clone())
            .collect()
    }
}

fn key_hash(key: &EntryKey) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// Marks the keys of `entries` as no longer wanted by their record, unless a changed record
/// already wants them.
fn unwanted(changed: &mut Changed, wanting: &mut HashMap<u64, u32>, entries: &[StoredEntry]) {
    for stored in entries {
        let key = stored.entry.key();
        if let std::collections::hash_map::Entry::Occupied(mut count) =
            wanting.entry(key_hash(&key))
        {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
        changed.entry(key).or_insert(None);
    }
}

fn wanted(changed: &mut Changed, wanting: &mut HashMap<u64, u32>, entries: &[StoredEntry]) {
    for stored in entries {
        let key = stored.entry.key();
        *wanting.entry(key_hash(&key)).or_default() += 1;
        changed.insert(key, Some(stored.entry.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spire_sync::test_fixtures::{entry, pod, stored};

    #[test]
    fn only_what_changed_is_reported() {
        let mut desired = Desired::default();
        let (p1, p2) = (pod(1, 60), pod(2, 60));
        let first = desired.update(vec![p1.clone(), p2.clone()], Vec::new());
        assert_eq!(first.len(), 2);
        // The same records again: nothing.
        assert!(
            desired
                .update(vec![p1.clone(), p2.clone()], Vec::new())
                .is_empty()
        );
        // Pod 2 changed, pod 3 came, pod 1 left, a static entry appeared.
        let changed = desired.update(vec![pod(2, 120), pod(3, 60)], vec![stored(entry(9, 60))]);
        assert_eq!(changed[&entry(1, 60).key()], None);
        assert_eq!(changed[&entry(2, 60).key()], Some(entry(2, 120)));
        assert_eq!(changed[&entry(3, 60).key()], Some(entry(3, 60)));
        assert_eq!(changed[&entry(9, 60).key()], Some(entry(9, 60)));
        assert_eq!(changed.len(), 4);
        let mut all = desired.all();
        all.sort_by_key(|e| e.spiffe_id.to_string());
        assert_eq!(all, vec![entry(2, 120), entry(3, 60), entry(9, 60)]);
    }

    #[test]
    fn a_key_two_records_want_stays_wanted_while_either_does() {
        let mut desired = Desired::default();
        let twin = stored(entry(1, 60));
        desired.update(vec![pod(1, 60)], vec![twin.clone()]);
        // The pod goes; the static entry with the same key still wants it.
        let changed = desired.update(Vec::new(), vec![twin]);
        assert_eq!(changed[&entry(1, 60).key()], Some(entry(1, 60)));
        // Now the static entry goes too: no longer wanted.
        let changed = desired.update(Vec::new(), Vec::new());
        assert_eq!(changed[&entry(1, 60).key()], None);
        assert!(desired.wanting.is_empty(), "{:?}", desired.wanting);
    }

    #[test]
    fn an_entry_moving_between_records_stays_wanted() {
        let mut desired = Desired::default();
        desired.update(vec![pod(1, 60)], Vec::new());
        // The same key, now a static entry: wanted whatever the order of the two changes.
        let changed = desired.update(Vec::new(), vec![stored(entry(1, 60))]);
        assert_eq!(changed[&entry(1, 60).key()], Some(entry(1, 60)));
    }
}
