//! The `spire` backend's engine: keeps the entries a SPIRE Server holds for us equal to the
//! desired entries the reconciler keeps in the [`EntryStore`].
//!
//! It lists the server's entries once when it (re)connects, keeps a [`Mirror`] of the owned ones
//! from then on, and on every change of the store sends only the creates, updates and deletes
//! the difference needs, in batches; so while nothing changes it sends nothing. A slow drift check
//! (a fresh listing, by default every 10 minutes) repairs changes made behind its back. It writes
//! only while this replica holds the Lease; when the server is away (restarting, its socket gone)
//! it says so ([`BackendState::Unavailable`]) and retries with backoff, listing again once back,
//! so nothing is lost or duplicated.

pub mod desired;
pub mod mirror;
#[cfg(test)]
mod test_fixtures;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wimsey_core::backoff::{backoff, jitter};
use wimsey_core::entries::{EntryKey, OwnerKind};
use wimsey_core::entry_sync::{ChangedFields, Ownership, Stored};

pub use desired::Desired;
pub use mirror::{Mirror, Refusal};

use crate::backend::{EntryFailures, Feedback};
use crate::spire_entries::{SpireApiError, SpireEntries, from_stored, mask};
use crate::store::EntryStore;

/// How the sync behaves.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub ownership: Ownership,
    /// A full listing this often repairs entries changed by someone else.
    pub drift_check: Duration,
    /// Changes arriving within this are sent together.
    pub coalesce: Duration,
}

impl SyncSettings {
    pub fn new(ownership: Ownership) -> Self {
        Self {
            ownership,
            drift_check: Duration::from_secs(600),
            coalesce: Duration::from_millis(2),
        }
    }
}

/// What the backend is doing, for status and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendState {
    /// Not the Lease holder, or not connected yet.
    Idle,
    /// The owned entries equal the desired ones, but those SPIRE refused.
    Synced {
        owned: usize,
        refused: Arc<Vec<Refusal>>,
    },
    /// The SPIRE Server cannot be reached; the reason.
    Unavailable(String),
}

/// The resources' view of `state`: the refused entries by the resource that declared them (found
/// in `store` by entry key), and the server's reachability. Nothing to report while idle (another
/// replica writes, and reports).
pub fn feedback(state: &BackendState, store: &EntryStore) -> Feedback {
    match state {
        BackendState::Idle => Feedback::default(),
        BackendState::Unavailable(reason) => Feedback {
            unavailable: Some(reason.clone()),
            failures: BTreeMap::new(),
        },
        BackendState::Synced { refused, .. } => {
            let mut failures: BTreeMap<(OwnerKind, String), EntryFailures> = BTreeMap::new();
            if !refused.is_empty() {
                let refused_keys: BTreeMap<EntryKey, &Refusal> =
                    refused.iter().map(|r| (r.entry.key(), r)).collect();
                let pods = store.all_pods();
                let declared = pods
                    .iter()
                    .flat_map(|pod| pod.entries.iter().cloned())
                    .chain(store.static_entries());
                for stored in declared {
                    let Some(refusal) = refused_keys.get(&stored.entry.key()) else {
                        continue;
                    };
                    let owner = (stored.owner.kind, stored.owner.name.clone());
                    let failures = failures.entry(owner).or_default();
                    if failures.count == 0 {
                        failures.first = format!(
                            "entry {}: {:?}: {}",
                            stored.entry.spiffe_id, refusal.code, refusal.message
                        );
                    }
                    failures.count += 1;
                }
            }
            Feedback {
                unavailable: None,
                failures,
            }
        }
    }
}

/// What one pass sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

#[derive(Debug)]
pub struct SpireSync {
    client: SpireEntries,
    store: EntryStore,
    settings: SyncSettings,
    leader: watch::Receiver<bool>,
    ready: watch::Receiver<bool>,
    state: watch::Sender<BackendState>,
}

impl SpireSync {
    pub fn new(
        client: SpireEntries,
        store: EntryStore,
        settings: SyncSettings,
        leader: watch::Receiver<bool>,
        ready: watch::Receiver<bool>,
    ) -> (Self, watch::Receiver<BackendState>) {
        let (state, observed) = watch::channel(BackendState::Idle);
        (
            Self {
                client,
                store,
                settings,
                leader,
                ready,
                state,
            },
            observed,
        )
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            // Write only as the Lease holder, and only once the store holds the desired entries
            // (the reconciler's caches have synced): a plan against a store still empty would
            // delete every owned entry.
            let leading = *self.leader.borrow_and_update();
            let ready = *self.ready.borrow_and_update();
            if !(leading && ready) {
                self.state.send_replace(BackendState::Idle);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = self.leader.changed() => if changed.is_err() { return },
                    changed = self.ready.changed() => if changed.is_err() { return },
                }
                continue;
            }
            match self.connected(&shutdown).await {
                Ok(()) => return,
                Err(Interrupted::StartOver) => failures = 0,
                Err(Interrupted::Failed(error)) => {
                    let reason = error.to_string();
                    tracing::warn!(%error, label = error.label(), "SPIRE Server sync");
                    self.state.send_replace(BackendState::Unavailable(reason));
                    let wait = backoff(
                        failures,
                        Duration::from_millis(200),
                        Duration::from_secs(30),
                        jitter(),
                    );
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One connection: list, then follow the store until the drift check, a failure, the end
    /// of the lease or shutdown (`Ok`).
    async fn connected(&mut self, shutdown: &CancellationToken) -> Result<(), Interrupted> {
        let mut changes = self.store.subscribe();
        changes.borrow_and_update();
        let listed = self.client.list_all().await?;
        let mut mirror = Mirror::from_listed(&listed, &self.settings.ownership);
        drop(listed);
        tracing::info!(owned = mirror.len(), "SPIRE Server entries listed");
        let drift_at = Instant::now() + self.settings.drift_check;
        let mut desired = Desired::default();
        let mut full = true;
        loop {
            let mut report = self.sync_once(&mut mirror, &mut desired, full).await?;
            // An answer showed SPIRE holding something else than we thought: one full plan now.
            if mirror.take_needs_full_plan() {
                report = self.sync_once(&mut mirror, &mut desired, true).await?;
                mirror.take_needs_full_plan();
            }
            full = false;
            if report != SyncReport::default() {
                tracing::info!(?report, "SPIRE Server entries synced");
            }
            let refused: Vec<Refusal> = mirror.refusals().cloned().collect();
            self.state.send_if_modified(|current| {
                let next = BackendState::Synced {
                    owned: mirror.len(),
                    refused: Arc::new(refused),
                };
                let changed = *current != next;
                *current = next;
                changed
            });
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(drift_at) => return Err(Interrupted::StartOver),
                changed = self.leader.changed() => {
                    if changed.is_err() || !*self.leader.borrow_and_update() {
                        return Err(Interrupted::StartOver);
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    tokio::time::sleep(self.settings.coalesce).await;
                    changes.borrow_and_update();
                }
            }
        }
    }

    /// Sends what makes the owned entries the desired ones, and records the answers: after a
    /// listing (`full`) over every entry, else over what changed in the store since the last call.
    pub async fn sync_once(
        &self,
        mirror: &mut Mirror,
        desired: &mut Desired,
        full: bool,
    ) -> Result<SyncReport, SpireApiError> {
        let changed = desired.update(self.store.all_pods(), self.store.static_entries());
        let ownership = &self.settings.ownership;
        let plan = if full {
            mirror.plan(&desired.all(), ownership)
        } else {
            mirror.plan_changes(&changed, ownership)
        };
        let report = SyncReport {
            created: plan.create.len(),
            updated: plan.update.len(),
            deleted: plan.delete.len(),
            unchanged: plan.unchanged,
        };
        if !plan.delete.is_empty() {
            let outcomes = self.client.delete(plan.delete.clone()).await?;
            mirror.record_deleted(&plan.delete, outcomes);
        }
        if !plan.create.is_empty() {
            let sent: Vec<_> = plan.create.iter().map(from_stored).collect();
            let outcomes = self.client.create(sent).await?;
            mirror.record_created(&plan.create, outcomes, ownership);
        }
        for (fields, entries) in by_mask(plan.update) {
            let sent: Vec<_> = entries.iter().map(from_stored).collect();
            let outcomes = self.client.update(sent, mask(fields)).await?;
            mirror.record_updated(&entries, outcomes);
        }
        Ok(report)
    }
}

/// Why a connection ended without shutdown.
enum Interrupted {
    /// Not the Lease holder any more, or time for the drift check: list again.
    StartOver,
    Failed(SpireApiError),
}

impl From<SpireApiError> for Interrupted {
    fn from(error: SpireApiError) -> Self {
        Interrupted::Failed(error)
    }
}

/// Updates grouped by the fields they set: one mask per call.
fn by_mask(updates: Vec<(Stored, ChangedFields)>) -> BTreeMap<ChangedFields, Vec<Stored>> {
    let mut groups: BTreeMap<ChangedFields, Vec<Stored>> = BTreeMap::new();
    for (stored, fields) in updates {
        groups.entry(fields).or_default().push(stored);
    }
    groups
}
