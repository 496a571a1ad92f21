//! The desired entries as the sync last saw them in the [`EntryStore`], so that a change costs
//! work in proportion to what changed: pod records are shared (`Arc`), and a record that is the
//! same allocation as before has not changed.

use std::collections::{BTreeMap, HashMap};
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
                        unwanted(&mut changed, &held.entries);
                        wanted(&mut changed, &pod.entries);
                        *held = pod;
                    }
                }
                None => {
                    wanted(&mut changed, &pod.entries);
                    self.pods.insert(pod.uid.clone(), (pod, seen));
                }
            }
        }
        // Pods no longer in the store.
        self.pods.retain(|_, (held, at)| {
            let present = *at == seen;
            if !present {
                unwanted(&mut changed, &held.entries);
            }
            present
        });
        if statics != self.statics {
            unwanted(&mut changed, &self.statics);
            wanted(&mut changed, &statics);
            self.statics = statics;
        }
        changed
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

/// Marks the keys of `entries` as no longer wanted, unless something else already wants them.
fn unwanted(changed: &mut Changed, entries: &[StoredEntry]) {
    for stored in entries {
        changed.entry(stored.entry.key()).or_insert(None);
    }
}

fn wanted(changed: &mut Changed, entries: &[StoredEntry]) {
    for stored in entries {
        changed.insert(stored.entry.key(), Some(stored.entry.clone()));
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
    fn an_entry_moving_between_records_stays_wanted() {
        let mut desired = Desired::default();
        desired.update(vec![pod(1, 60)], Vec::new());
        // The same key, now a static entry: wanted whatever the order of the two changes.
        let changed = desired.update(Vec::new(), vec![stored(entry(1, 60))]);
        assert_eq!(changed[&entry(1, 60).key()], Some(entry(1, 60)));
    }
}
