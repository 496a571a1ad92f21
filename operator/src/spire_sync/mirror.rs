//! What the SPIRE Server holds for us, as we last learned it: the owned entries (from one listing
//! at start, then from the answers to our own writes), and the desired entries SPIRE refused, so
//! that a refused entry is not sent again on every change. Plain data; the calls are made by
//! [`super::SpireSync`].

use std::collections::{BTreeMap, BTreeSet};

use tonic::Code;
use wimsey_core::entries::{Entry, EntryKey};
use wimsey_core::entry_sync::{Ownership, Stored, SyncPlan, plan_sync};
use wimsey_proto::spire::entry::v1::RegistrationEntry;

use super::desired::Changed;
use crate::reconcile::entry_id;
use crate::spire_entries::{Outcome, to_stored};

/// Why SPIRE did not take a desired entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The entry as it was sent: the same entry is not sent again until the next full listing.
    pub entry: Entry,
    pub code: Code,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Mirror {
    owned: BTreeMap<String, Stored>,
    /// The IDs of the owned entries, by key (more than one only for duplicates, which the
    /// next plan for that key deletes).
    by_key: BTreeMap<EntryKey, BTreeSet<String>>,
    refused: BTreeMap<EntryKey, Refusal>,
    needs_full_plan: bool,
}

impl Mirror {
    /// The owned entries among everything listed; an owned entry we cannot read is left out
    /// (logged): it is never planned for, so never deleted by mistake.
    pub fn from_listed(listed: &[RegistrationEntry], ownership: &Ownership) -> Self {
        let mut mirror = Self::default();
        for entry in listed {
            match to_stored(entry) {
                Ok(stored) if ownership.owns(&stored) => mirror.insert(stored),
                Ok(_) => {}
                Err(reason) => {
                    tracing::warn!(id = %entry.id, %reason, "SPIRE entry not understood; left alone");
                }
            }
        }
        mirror
    }

    fn insert(&mut self, stored: Stored) {
        if let Some(old) = self.owned.get(&stored.id) {
            let old_key = old.entry.key();
            if let Some(ids) = self.by_key.get_mut(&old_key) {
                ids.remove(&stored.id);
                if ids.is_empty() {
                    self.by_key.remove(&old_key);
                }
            }
        }
        self.by_key
            .entry(stored.entry.key())
            .or_default()
            .insert(stored.id.clone());
        self.owned.insert(stored.id.clone(), stored);
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.owned.remove(id) {
            let key = old.entry.key();
            if let Some(ids) = self.by_key.get_mut(&key) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.owned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owned.is_empty()
    }

    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.refused.values()
    }

    /// The calls that make the owned entries `desired`, leaving out entries refused as they are.
    /// New entries get stable IDs (`<prefix><hash of the key>`), so a retried create of the
    /// same entry meets AlreadyExists instead of making a duplicate.
    pub fn plan(&self, desired: &[Entry], ownership: &Ownership) -> SyncPlan {
        let mut held_back = BTreeSet::new();
        let mut wanted = Vec::with_capacity(desired.len());
        for entry in desired {
            if self.is_held_back(entry) {
                held_back.insert(entry.key());
            } else {
                wanted.push(entry.clone());
            }
        }
        // What SPIRE holds for a held-back key stays as it is: neither updated nor deleted.
        let current: Vec<Stored> = self
            .owned
            .values()
            .filter(|s| !held_back.contains(&s.entry.key()))
            .cloned()
            .collect();
        plan_sync(&wanted, &current, ownership, |entry| {
            entry_id("", &entry.key())
        })
    }

    /// The calls for the keys in `changed` only (what changed in the store since the last
    /// plan): the same decisions as [`Mirror::plan`] over everything, at the cost of the change.
    /// Refusals of keys no longer wanted are forgotten.
    pub fn plan_changes(&mut self, changed: &Changed, ownership: &Ownership) -> SyncPlan {
        let mut wanted = Vec::new();
        let mut held_back = BTreeSet::new();
        for (key, entry) in changed {
            match entry {
                Some(entry) if self.is_held_back(entry) => {
                    held_back.insert(key);
                }
                Some(entry) => wanted.push(entry.clone()),
                None => {
                    self.refused.remove(key);
                }
            }
        }
        let current: Vec<Stored> = changed
            .keys()
            .filter(|key| !held_back.contains(key))
            .filter_map(|key| self.by_key.get(key))
            .flatten()
            .filter_map(|id| self.owned.get(id).cloned())
            .collect();
        plan_sync(&wanted, &current, ownership, |entry| {
            entry_id("", &entry.key())
        })
    }

    /// Forgets the refusals, so that the next plan sends those entries again: something they
    /// depend on changed (a federation relationship they name was created).
    pub fn forget_refusals(&mut self) {
        self.refused.clear();
    }

    /// Whether `entry` was refused as it is now (then it is not sent again).
    fn is_held_back(&self, entry: &Entry) -> bool {
        self.refused
            .get(&entry.key())
            .is_some_and(|refusal| refusal.entry == *entry)
    }

    /// Whether an answer showed SPIRE holding something other than we thought (an entry of ours
    /// we did not know of, one deleted behind our back): the next plan must cover every key.
    pub fn take_needs_full_plan(&mut self) -> bool {
        std::mem::take(&mut self.needs_full_plan)
    }

    /// Records the answers to creates of `sent`, in order.
    pub fn record_created(
        &mut self,
        sent: &[Stored],
        outcomes: Vec<Outcome>,
        ownership: &Ownership,
    ) {
        for (sent, outcome) in sent.iter().zip(outcomes) {
            match outcome {
                Outcome::Done(entry) => self.hold(sent, &entry),
                // Ours from an earlier attempt (owned: adopted, updated by the next plan if it
                // differs), or someone else's with the same key (refused).
                Outcome::AlreadyExists(existing) => match to_stored(&existing) {
                    Ok(stored) if ownership.owns(&stored) => {
                        self.insert(stored);
                        self.needs_full_plan = true;
                    }
                    _ => self.refuse(
                        &sent.entry,
                        Code::AlreadyExists,
                        format!(
                            "an entry with the same SPIFFE ID, parent ID and selectors exists and is not ours (ID {})",
                            existing.id
                        ),
                    ),
                },
                Outcome::Refused { code, message } => self.refuse(&sent.entry, code, message),
            }
        }
    }

    /// Records the answers to updates of `sent`, in order.
    pub fn record_updated(&mut self, sent: &[Stored], outcomes: Vec<Outcome>) {
        for (sent, outcome) in sent.iter().zip(outcomes) {
            match outcome {
                Outcome::Done(entry) => self.hold(sent, &entry),
                // Deleted behind our back: the next plan creates it again.
                Outcome::Refused {
                    code: Code::NotFound,
                    ..
                } => {
                    self.remove(&sent.id);
                    self.needs_full_plan = true;
                }
                Outcome::Refused { code, message } => self.refuse(&sent.entry, code, message),
                Outcome::AlreadyExists(_) => {}
            }
        }
    }

    /// Records the answers to deletes of `ids`, in order: done or already gone.
    pub fn record_deleted(&mut self, ids: &[String], outcomes: Vec<Outcome>) {
        for (id, outcome) in ids.iter().zip(outcomes) {
            match outcome {
                Outcome::Done(_)
                | Outcome::Refused {
                    code: Code::NotFound,
                    ..
                } => self.remove(id),
                Outcome::Refused { code, message } => {
                    tracing::warn!(%id, ?code, %message, "SPIRE refused to delete an entry");
                }
                Outcome::AlreadyExists(_) => {}
            }
        }
    }

    /// The entry as SPIRE answered it, or as sent when the answer cannot be read.
    fn hold(&mut self, sent: &Stored, answered: &RegistrationEntry) {
        let stored = to_stored(answered)
            .ok()
            .filter(|s| !s.id.is_empty())
            .unwrap_or_else(|| sent.clone());
        self.refused.remove(&stored.entry.key());
        self.insert(stored);
    }

    fn refuse(&mut self, entry: &Entry, code: Code, message: String) {
        tracing::warn!(spiffe_id = %entry.spiffe_id, ?code, %message, "SPIRE refused an entry");
        self.refused.insert(
            entry.key(),
            Refusal {
                entry: entry.clone(),
                code,
                message,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spire_entries::from_stored;
    use crate::spire_sync::test_fixtures::entry as fixture_entry;

    fn entry(n: usize) -> Entry {
        fixture_entry(n, 3600)
    }

    fn ours() -> Ownership {
        Ownership::new("w")
    }

    #[test]
    fn new_entries_get_ids_from_their_key_and_answers_fill_the_mirror() {
        let mut mirror = Mirror::default();
        let plan = mirror.plan(&[entry(1), entry(2)], &ours());
        assert_eq!(plan.create.len(), 2);
        assert_eq!(
            plan.create[0].id,
            format!("w.{}", entry_id("", &entry(1).key()))
        );
        let answers = plan
            .create
            .iter()
            .map(|s| Outcome::Done(from_stored(s)))
            .collect();
        mirror.record_created(&plan.create, answers, &ours());
        assert_eq!(mirror.len(), 2);
        let again = mirror.plan(&[entry(1), entry(2)], &ours());
        assert_eq!((again.create.len(), again.unchanged), (0, 2));
    }

    #[test]
    fn a_refused_entry_is_not_sent_again_until_it_changes() {
        let mut mirror = Mirror::default();
        let plan = mirror.plan(&[entry(1)], &ours());
        let refused = Outcome::Refused {
            code: Code::InvalidArgument,
            message: "bad selector".into(),
        };
        mirror.record_created(&plan.create, vec![refused], &ours());
        assert_eq!(mirror.refusals().count(), 1);
        assert!(mirror.plan(&[entry(1)], &ours()).create.is_empty());
        let mut changed = entry(1);
        changed.hint = "fixed".into();
        assert_eq!(mirror.plan(&[changed], &ours()).create.len(), 1);
    }

    #[test]
    fn someone_elses_entry_with_our_key_is_a_refusal_and_ours_is_adopted() {
        let mut mirror = Mirror::default();
        let plan = mirror.plan(&[entry(1), entry(2)], &ours());
        let mut foreign = from_stored(&plan.create[0]);
        foreign.id = "not-ours".into();
        let mut earlier = from_stored(&plan.create[1]);
        earlier.id = "w.from-an-earlier-attempt".into();
        mirror.record_created(
            &plan.create,
            vec![
                Outcome::AlreadyExists(foreign),
                Outcome::AlreadyExists(earlier),
            ],
            &ours(),
        );
        assert_eq!(mirror.len(), 1);
        let refusal = mirror.refusals().next().unwrap();
        assert_eq!(refusal.code, Code::AlreadyExists);
        assert!(refusal.message.contains("not-ours"), "{}", refusal.message);
    }

    #[test]
    fn entries_gone_behind_our_back_leave_the_mirror() {
        let mut mirror = Mirror::default();
        let plan = mirror.plan(&[entry(1), entry(2)], &ours());
        let answers = plan
            .create
            .iter()
            .map(|s| Outcome::Done(from_stored(s)))
            .collect();
        mirror.record_created(&plan.create, answers, &ours());
        let not_found = || Outcome::Refused {
            code: Code::NotFound,
            message: "gone".into(),
        };
        let mut changed = plan.create[0].clone();
        changed.entry.hint = "new".into();
        mirror.record_updated(std::slice::from_ref(&changed), vec![not_found()]);
        assert_eq!(
            mirror.len(),
            1,
            "an update of a deleted entry: recreated by the next plan"
        );
        mirror.record_deleted(std::slice::from_ref(&plan.create[1].id), vec![not_found()]);
        assert!(mirror.is_empty());
        assert_eq!(mirror.plan(&[changed.entry], &ours()).create.len(), 1);
    }
}

#[cfg(test)]
mod incremental_tests {
    use std::sync::Arc;

    use super::*;
    use crate::spire_entries::from_stored;
    use crate::spire_sync::Desired;
    use crate::spire_sync::test_fixtures::pod;
    use crate::store::PodRecord;

    /// Applies `plan` as a server that accepts everything would.
    fn accept(mirror: &mut Mirror, plan: &SyncPlan, ownership: &Ownership) {
        let done = |s: &Stored| Outcome::Done(from_stored(s));
        mirror.record_deleted(
            &plan.delete,
            plan.delete
                .iter()
                .map(|_| Outcome::Done(RegistrationEntry::default()))
                .collect(),
        );
        mirror.record_created(
            &plan.create,
            plan.create.iter().map(done).collect(),
            ownership,
        );
        let updated: Vec<Stored> = plan.update.iter().map(|(s, _)| s.clone()).collect();
        mirror.record_updated(&updated, updated.iter().map(done).collect());
    }

    #[test]
    fn planning_the_changes_decides_as_planning_everything() {
        let ownership = Ownership::new("w");
        let mut mirror = Mirror::default();
        let mut desired = Desired::default();
        desired.update((0..20).map(|n| pod(n, 60)).collect(), Vec::new());
        let plan = mirror.plan(&desired.all(), &ownership);
        accept(&mut mirror, &plan, &ownership);
        assert_eq!(mirror.len(), 20);

        // Pods 0-4 leave, 5-9 change their TTL, 10-19 stay as they were, 20-24 arrive.
        let kept: Vec<_> = (5..25)
            .map(|n| match n {
                5..10 => pod(n, 120),
                10..20 => desired_pod(&desired, &format!("uid-{n}")),
                _ => pod(n, 60),
            })
            .collect();
        let changed = desired.update(kept, Vec::new());
        assert_eq!(changed.len(), 15, "only the pods that changed");
        let incremental = mirror.plan_changes(&changed, &ownership);
        let everything = mirror.plan(&desired.all(), &ownership);
        let ids = |plan: &SyncPlan| {
            let mut c: Vec<_> = plan.create.iter().map(|s| s.id.clone()).collect();
            let mut u: Vec<_> = plan.update.iter().map(|(s, _)| s.id.clone()).collect();
            let mut d = plan.delete.clone();
            c.sort();
            u.sort();
            d.sort();
            (c, u, d)
        };
        assert_eq!(ids(&incremental), ids(&everything));
        assert_eq!(
            (
                incremental.create.len(),
                incremental.update.len(),
                incremental.delete.len()
            ),
            (5, 5, 5)
        );
        accept(&mut mirror, &incremental, &ownership);
        assert_eq!(mirror.plan(&desired.all(), &ownership).unchanged, 20);
    }

    /// The record `desired` holds for `uid` (the same allocation: unchanged).
    fn desired_pod(desired: &Desired, uid: &str) -> Arc<PodRecord> {
        desired.pod(uid).expect("held")
    }

    #[test]
    fn a_refused_update_leaves_the_entry_spire_holds_alone() {
        let ownership = Ownership::new("w");
        let mut mirror = Mirror::default();
        let mut desired = Desired::default();
        desired.update(vec![pod(1, 60)], Vec::new());
        let plan = mirror.plan(&desired.all(), &ownership);
        accept(&mut mirror, &plan, &ownership);
        // The TTL changes; SPIRE refuses the update.
        let changed = desired.update(vec![pod(1, 7200)], Vec::new());
        let plan = mirror.plan_changes(&changed, &ownership);
        assert_eq!(plan.update.len(), 1);
        let refused = Outcome::Refused {
            code: Code::InvalidArgument,
            message: "no".into(),
        };
        let sent: Vec<Stored> = plan.update.iter().map(|(s, _)| s.clone()).collect();
        mirror.record_updated(&sent, vec![refused]);
        // Asked again (any change to the same record), and in a full plan: no call at all, and
        // above all no delete of the entry SPIRE still holds.
        let again = desired.update(vec![pod(1, 7200), pod(2, 60)], Vec::new());
        let plan = mirror.plan_changes(&again, &ownership);
        assert!(plan.delete.is_empty() && plan.update.is_empty(), "{plan:?}");
        let full = mirror.plan(&desired.all(), &ownership);
        assert!(full.delete.is_empty() && full.update.is_empty(), "{full:?}");
        assert_eq!(full.create.len(), 1, "only pod 2");
    }
}
