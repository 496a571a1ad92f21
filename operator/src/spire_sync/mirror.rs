//! What the SPIRE Server holds for us, as we last learned it: the owned entries (from one listing
//! at start, then from the answers to our own writes), and the desired entries SPIRE refused, so
//! that a refused entry is not sent again on every change. Plain data; the calls are made by
//! [`super::SpireSync`].

use std::collections::BTreeMap;

use tonic::Code;
use wimsey_core::entries::{Entry, EntryKey};
use wimsey_core::entry_sync::{Ownership, Stored, SyncPlan, plan_sync};
use wimsey_proto::spire::entry::v1::RegistrationEntry;

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
    refused: BTreeMap<EntryKey, Refusal>,
}

impl Mirror {
    /// The owned entries among everything listed; an owned entry we cannot read is left out
    /// (logged): it is never planned for, so never deleted by mistake.
    pub fn from_listed(listed: &[RegistrationEntry], ownership: &Ownership) -> Self {
        let mut owned = BTreeMap::new();
        for entry in listed {
            match to_stored(entry) {
                Ok(stored) if ownership.owns(&stored) => {
                    owned.insert(stored.id.clone(), stored);
                }
                Ok(_) => {}
                Err(reason) => {
                    tracing::warn!(id = %entry.id, %reason, "SPIRE entry not understood; left alone");
                }
            }
        }
        Self {
            owned,
            refused: BTreeMap::new(),
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
        let wanted: Vec<Entry> = desired
            .iter()
            .filter(|e| {
                self.refused
                    .get(&e.key())
                    .is_none_or(|refusal| refusal.entry != **e)
            })
            .cloned()
            .collect();
        let current: Vec<Stored> = self.owned.values().cloned().collect();
        plan_sync(&wanted, &current, ownership, |entry| {
            entry_id("", &entry.key())
        })
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
                        self.owned.insert(stored.id.clone(), stored);
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
                    self.owned.remove(&sent.id);
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
                } => {
                    self.owned.remove(id);
                }
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
        self.owned.insert(stored.id.clone(), stored);
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
