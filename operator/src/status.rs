//! Writes the custom resources' status (computed in [`crate::reconcile::status`]) by server-side
//! apply to the status subresource, only while this replica holds the Lease, with an Event when a
//! resource turns unhealthy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::metrics::Metrics;
use crate::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry, reasons};
use crate::reconcile::status::{
    CrKind, DesiredStatus, FIELD_MANAGER, bounded_message, event_for, status_to_write,
    without_timestamps,
};

/// Writes statuses while this replica holds the Lease.
pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// What we applied, and the resourceVersion observed at that time: until the watch shows a
    /// newer version, the write is not repeated.
    applied: HashMap<(CrKind, String), (Value, Option<String>)>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("applied", &self.applied.len())
            .finish_non_exhaustive()
    }
}

impl StatusWriter {
    pub fn new(client: Client, reporter: Reporter, metrics: Arc<Metrics>) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            applied: HashMap::new(),
        }
    }

    /// Runs until `shutdown`: on every new snapshot or leadership change, applies what differs.
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Arc<Vec<DesiredStatus>>>,
        mut leader: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        loop {
            let mut retry = false;
            if *leader.borrow_and_update() {
                let snapshot = snapshots.borrow_and_update().clone();
                retry = !self.write_all(&snapshot).await;
            } else {
                self.applied.clear();
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = snapshots.changed() => if changed.is_err() { return },
                changed = leader.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
            }
        }
    }

    /// Applies every status that needs it; false when a write failed (retried later).
    async fn write_all(&mut self, snapshot: &[DesiredStatus]) -> bool {
        let started = std::time::Instant::now();
        let mut ok = true;
        for desired in snapshot {
            let key = (desired.kind, desired.name.clone());
            let Some(status) =
                status_to_write(&desired.status, desired.observed.as_ref(), Timestamp::now())
            else {
                self.applied.remove(&key);
                continue;
            };
            if self.applied.get(&key).is_some_and(|(applied, observed)| {
                without_timestamps(applied) == without_timestamps(&status)
                    && observed == &desired.observed_version
            }) {
                continue;
            }
            match self.apply(desired, &status).await {
                Ok(()) => {
                    tracing::info!(kind = desired.kind.as_str(), name = %desired.name, "status written");
                    // A fetch failure already got its Event from the bundle poller.
                    if let Some((reason, message)) =
                        event_for(&desired.status, desired.observed.as_ref())
                        && !reasons::FETCH_FAILURES.contains(&reason.as_str())
                    {
                        self.publish_event(desired, reason, message).await;
                    }
                    self.applied
                        .insert(key, (status, desired.observed_version.clone()));
                }
                Err(error) => {
                    ok = false;
                    tracing::warn!(kind = desired.kind.as_str(), name = %desired.name, %error, "status write failed");
                }
            }
        }
        self.metrics
            .observe_phase("status", started.elapsed().as_secs_f64());
        ok
    }

    async fn apply(&self, desired: &DesiredStatus, status: &Value) -> Result<(), kube::Error> {
        let body = json!({
            "apiVersion": "spire.spiffe.io/v1alpha1",
            "kind": desired.kind.as_str(),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&body);
        match desired.kind {
            CrKind::ClusterSpiffeId => {
                Api::<ClusterSPIFFEID>::all(self.client.clone())
                    .patch_status(&desired.name, &params, &patch)
                    .await?;
            }
            CrKind::ClusterStaticEntry => {
                Api::<ClusterStaticEntry>::all(self.client.clone())
                    .patch_status(&desired.name, &params, &patch)
                    .await?;
            }
            CrKind::ClusterFederatedTrustDomain => {
                Api::<ClusterFederatedTrustDomain>::all(self.client.clone())
                    .patch_status(&desired.name, &params, &patch)
                    .await?;
            }
        }
        Ok(())
    }

    async fn publish_event(&self, desired: &DesiredStatus, reason: String, message: String) {
        let reference = ObjectReference {
            api_version: Some("spire.spiffe.io/v1alpha1".to_owned()),
            kind: Some(desired.kind.as_str().to_owned()),
            name: Some(desired.name.clone()),
            uid: Some(desired.uid.clone()),
            ..ObjectReference::default()
        };
        let note = bounded_message(&message);
        let event = Event {
            type_: EventType::Warning,
            reason,
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(name = %desired.name, %error, "publishing an event failed");
        }
    }
}
