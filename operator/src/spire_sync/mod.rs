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
pub mod relationships;
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
pub use relationships::Relationships;

use crate::backend::{EntryFailures, Feedback, RelationshipStatus};
use crate::reconcile::federation::FederationSet;
use crate::spire_entries::{SpireApiError, SpireEntries, from_stored, mask};
use crate::spire_relationships::SpireRelationships;
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
        /// Each ClusterFederatedTrustDomain's relationship, by resource name (empty when the
        /// sync does not hold relationships).
        relationships: Arc<BTreeMap<String, RelationshipStatus>>,
    },
    /// The SPIRE Server cannot be reached; the reason.
    Unavailable(String),
}

/// The resources' view of `state`: the refused entries by the resource that declared them (found
/// in `store` by entry key), and the server's reachability. Nothing to report while idle (another
/// replica writes, and reports).
pub fn feedback(state: &BackendState, store: &EntryStore) -> Feedback {
    match state {
        BackendState::Idle => Feedback {
            relationships: Some(BTreeMap::new()),
            ..Feedback::default()
        },
        BackendState::Unavailable(reason) => Feedback {
            unavailable: Some(reason.clone()),
            failures: BTreeMap::new(),
            relationships: Some(BTreeMap::new()),
        },
        BackendState::Synced {
            refused,
            relationships,
            ..
        } => {
            let mut failures: BTreeMap<(OwnerKind, String), EntryFailures> = BTreeMap::new();
            if !refused.is_empty() {
                let refused_keys: BTreeMap<EntryKey, &Refusal> =
                    refused.iter().map(|r| (r.entry.key(), r)).collect();
                let pods = store.pods_unordered();
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
                relationships: Some(relationships.as_ref().clone()),
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
    /// Federation relationships created, updated or deleted.
    pub relationships: usize,
}

#[derive(Debug)]
pub struct SpireSync {
    client: SpireEntries,
    store: EntryStore,
    settings: SyncSettings,
    leader: watch::Receiver<bool>,
    ready: watch::Receiver<bool>,
    state: watch::Sender<BackendState>,
    /// Where federation relationships go, and the ClusterFederatedTrustDomains they follow.
    federation: Option<(SpireRelationships, watch::Receiver<Arc<FederationSet>>)>,
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
                federation: None,
            },
            observed,
        )
    }

    /// Also keeps SPIRE's federation relationships equal to `federation` (the validated
    /// ClusterFederatedTrustDomains), through `client`.
    pub fn with_federation(
        mut self,
        client: SpireRelationships,
        federation: watch::Receiver<Arc<FederationSet>>,
    ) -> Self {
        self.federation = Some((client, federation));
        self
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
        let mut federation = self.federation.as_ref().map(|(_, set)| set.clone());
        let mut relationships = match &self.federation {
            Some((client, _)) => Some(Relationships::from_listed(client.list_all().await?)),
            None => None,
        };
        let listed = self.client.list_all().await?;
        let mut mirror = Mirror::from_listed(&listed, &self.settings.ownership);
        drop(listed);
        tracing::info!(owned = mirror.len(), "SPIRE Server entries listed");
        let drift_at = Instant::now() + self.settings.drift_check;
        let mut desired = Desired::default();
        let mut full = true;
        loop {
            let mut statuses = BTreeMap::new();
            let mut relationships_sent = 0;
            if let (Some(held), Some(wanted)) = (relationships.as_mut(), federation.as_mut()) {
                let wanted = wanted.borrow_and_update().clone();
                let (sent, added) = self.sync_relationships(held, &wanted).await?;
                relationships_sent = sent;
                if added {
                    // Entries refused for federating with a trust domain SPIRE did not know
                    // may be accepted now.
                    mirror.forget_refusals();
                    full = true;
                }
                statuses = held.statuses(&wanted);
            }
            let mut report = self.sync_once(&mut mirror, &mut desired, full).await?;
            report.relationships = relationships_sent;
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
                    relationships: Arc::new(statuses),
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
                changed = federation_changed(federation.as_mut()) => {
                    if changed.is_err() {
                        return Ok(());
                    }
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
        let changed = desired.update(self.store.pods_unordered(), self.store.static_entries());
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
            relationships: 0,
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

    /// Makes SPIRE's relationships `desired`: deletes, then creates, then updates (as
    /// spire-controller-manager orders them). Returns how many were sent, and whether any was
    /// created or moved (entries federating with it may be accepted now).
    async fn sync_relationships(
        &self,
        held: &mut Relationships,
        desired: &FederationSet,
    ) -> Result<(usize, bool), SpireApiError> {
        let Some((client, _)) = &self.federation else {
            return Ok((0, false));
        };
        let (mut sent, mut added) = (0, false);
        // A relationship deleted behind our back while we update it asks for one more plan (to
        // create it); a bound, so that someone racing us is never chased for long.
        for _ in 0..3 {
            let plan = held.plan(desired);
            if plan.is_empty() {
                break;
            }
            sent += plan.create.len() + plan.update.len() + plan.delete.len();
            let mut again = false;
            if !plan.delete.is_empty() {
                let outcomes = client.delete(plan.delete.clone()).await?;
                held.record_deleted(&plan.delete, outcomes);
            }
            if !plan.create.is_empty() {
                let outcomes = client.create(plan.create.clone()).await?;
                held.record_created(&plan.create, outcomes);
                added = true;
            }
            if !plan.update.is_empty() {
                let outcomes = client.update(plan.update.clone()).await?;
                again |= held.record_updated(&plan.update, outcomes);
                added = true;
            }
            if !again {
                break;
            }
        }
        Ok((sent, added))
    }
}

/// Resolves when the federation set changes; never without one.
async fn federation_changed(
    federation: Option<&mut watch::Receiver<Arc<FederationSet>>>,
) -> Result<(), watch::error::RecvError> {
    match federation {
        Some(receiver) => receiver.changed().await,
        None => std::future::pending().await,
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
