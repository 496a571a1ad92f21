//! The bundle poller: while this replica holds the Lease, one task per accepted
//! ClusterFederatedTrustDomain fetches its bundle endpoint at the bundle's refresh hint (clamped),
//! retries with jittered backoff, keeps the last good bundle, and stores it in the resource's
//! status, from where every replica's reconciler passes it on to pods.
//!
//! `https_spiffe` endpoints are verified with the latest bundle of the endpoint ID's trust domain:
//! the one being fetched (self-serving; bootstrapped from `trustDomainBundle`), ours, or another
//! relationship's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use rustls::RootCertStore;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wimsey_core::SpiffeId;
use wimsey_core::backoff::jitter;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::federation::{BundleUpdate, RefreshPolicy, compare_bundles};

use super::fetch::{EndpointAuth, FetchError, FetchLimits, fetch_bundle};
use super::fetch_status::{FETCH_FIELD_MANAGER, PollOutcome, fetch_status, fetch_transition};
use crate::admin::Metrics;
use crate::authority::SigningMaterial;
use crate::crd::{ClusterFederatedTrustDomain, STATUS_BUNDLE_MAX_BYTES, reasons};
use crate::reconcile::FederationSet;
use crate::reconcile::federation::{BundleEndpointProfile, FederatedTrustDomain};
use crate::reconcile::status::bounded_message;

/// What the poller needs besides the federation set.
#[derive(Debug, Clone)]
pub struct PollerSettings {
    pub policy: RefreshPolicy,
    pub limits: FetchLimits,
    /// Roots for `https_web` endpoints.
    pub web_roots: Arc<RootCertStore>,
}

/// The poller of one replica; it polls only while the replica holds the Lease.
#[derive(Clone)]
pub struct Poller {
    client: Client,
    reporter: Reporter,
    settings: PollerSettings,
    metrics: Arc<Metrics>,
    own: watch::Receiver<Arc<SigningMaterial>>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

type TaskKey = (String, FederatedTrustDomain);

impl Poller {
    pub fn new(
        client: Client,
        reporter: Reporter,
        settings: PollerSettings,
        metrics: Arc<Metrics>,
        own: watch::Receiver<Arc<SigningMaterial>>,
    ) -> Self {
        Self {
            client,
            reporter,
            settings,
            metrics,
            own,
        }
    }

    /// Runs until `shutdown`: one polling task per relationship while `leader` is true.
    pub async fn run(
        self,
        mut set: watch::Receiver<Arc<FederationSet>>,
        mut leader: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let poller = Arc::new(self);
        let mut tasks: HashMap<String, (TaskKey, JoinHandle<()>)> = HashMap::new();
        loop {
            let leading = *leader.borrow_and_update();
            let current = set.borrow_and_update().clone();
            tasks.retain(|td, (key, task)| {
                // A task that ended (it panicked, or its relationship was briefly gone) is
                // started again below.
                let keep = leading
                    && !task.is_finished()
                    && current.get(td).is_some_and(|rel| {
                        rel.configured() == key.1.configured() && rel.resource == key.0
                    });
                if !keep {
                    task.abort();
                    poller.metrics.forget_federation(td);
                }
                keep
            });
            if leading {
                for (td, relationship) in current.iter() {
                    if tasks.contains_key(td) {
                        continue;
                    }
                    let key = (relationship.resource.clone(), relationship.clone());
                    let task = tokio::spawn(poller.clone().poll(td.clone(), set.clone()));
                    tasks.insert(td.clone(), (key, task));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = set.changed() => if changed.is_err() { break },
                changed = leader.changed() => if changed.is_err() { break },
            }
        }
        for (_, (_, task)) in tasks {
            task.abort();
        }
    }

    /// Polls one trust domain's endpoint until aborted.
    async fn poll(self: Arc<Self>, trust_domain: String, set: watch::Receiver<Arc<FederationSet>>) {
        let mut held: Option<TrustDomainBundle> = None;
        let mut failures = 0u32;
        loop {
            let Some(relationship) = set.borrow().get(&trust_domain).cloned() else {
                return;
            };
            // The stored bundle may be newer than ours (another leader fetched it).
            if let Some(stored) = relationship.fetched_bundle.as_ref()
                && compare_bundles(held.as_ref(), stored).replaces()
            {
                held = Some(stored.clone());
            }
            let fetched = match self.endpoint_auth(&relationship, held.as_ref(), &set) {
                Ok(auth) => {
                    fetch_bundle(
                        &relationship.bundle_endpoint_url,
                        &relationship.trust_domain,
                        &auth,
                        self.settings.limits,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            let (outcome, metric) = match fetched {
                Ok(bundle) => match compare_bundles(held.as_ref(), &bundle) {
                    // Usually one replica of the peer lagging behind the others: not a failure
                    // (no condition flapping behind a load balancer); the held bundle stays.
                    BundleUpdate::Stale { held, fetched } => {
                        tracing::warn!(
                            trust_domain,
                            held,
                            fetched,
                            "the bundle endpoint served an older spiffe_sequence; keeping the held bundle"
                        );
                        (
                            PollOutcome::Fetched { replaced: false },
                            Some("stale_bundle"),
                        )
                    }
                    update if update.replaces() && !fits_in_status(&bundle) => (
                        PollOutcome::Failed {
                            reason: reasons::INVALID_BUNDLE,
                            message: format!(
                                "the bundle from {} is larger than a status can hold ({STATUS_BUNDLE_MAX_BYTES} bytes)",
                                relationship.bundle_endpoint_url
                            ),
                        },
                        Some("too_large_for_status"),
                    ),
                    update => {
                        if update.replaces() {
                            tracing::info!(trust_domain, sequence = ?bundle.sequence_number,
                                "federated bundle updated");
                            held = Some(bundle);
                        }
                        let replaced = update.replaces();
                        (PollOutcome::Fetched { replaced }, None)
                    }
                },
                Err(error) => {
                    tracing::warn!(trust_domain, %error, "fetching a federated bundle failed");
                    let label = error.label();
                    (
                        PollOutcome::Failed {
                            reason: error.reason(),
                            message: error.to_string(),
                        },
                        Some(label),
                    )
                }
            };
            self.metrics.count_federation_fetch(&trust_domain, metric);
            let interval = self.settings.policy.interval(
                held.as_ref()
                    .or(relationship.current_bundle())
                    .and_then(|b| b.refresh_hint_seconds),
            );
            let wait = match &outcome {
                PollOutcome::Fetched { .. } => {
                    failures = 0;
                    interval
                }
                PollOutcome::Failed { .. } => {
                    failures = failures.saturating_add(1);
                    self.settings
                        .policy
                        .retry_delay(failures, interval, jitter())
                }
            };
            if let Err(error) = self
                .store(&relationship, &outcome, held.as_ref(), wait)
                .await
            {
                // The bundle is kept in memory and stored with the next poll's write.
                tracing::warn!(trust_domain, %error, "storing the federation status failed");
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// How to authenticate `relationship`'s endpoint now.
    fn endpoint_auth(
        &self,
        relationship: &FederatedTrustDomain,
        held: Option<&TrustDomainBundle>,
        set: &watch::Receiver<Arc<FederationSet>>,
    ) -> Result<EndpointAuth, FetchError> {
        let BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } = &relationship.profile
        else {
            return Ok(EndpointAuth::Web(self.settings.web_roots.clone()));
        };
        let own = self.own.borrow().clone();
        let authorities = endpoint_authorities(
            relationship,
            endpoint_spiffe_id,
            held,
            &own.bundle,
            &set.borrow(),
        )?;
        Ok(EndpointAuth::Spiffe {
            id: endpoint_spiffe_id.clone(),
            authorities,
        })
    }

    /// Writes the poller's status fields (and an Event on a transition).
    async fn store(
        &self,
        relationship: &FederatedTrustDomain,
        outcome: &PollOutcome,
        held: Option<&TrustDomainBundle>,
        next_poll: Duration,
    ) -> Result<(), kube::Error> {
        let api = Api::<ClusterFederatedTrustDomain>::all(self.client.clone());
        let current = api.get_status(&relationship.resource).await?;
        let previous = current.status.as_ref();
        // After a restart or failover the age of the held bundle counts from its stored fetch.
        if let Some(at) = previous.and_then(|s| s.last_successful_fetch.as_ref()) {
            self.metrics.seed_federation_success(
                relationship.trust_domain.name(),
                u64::try_from(at.0.as_second()).unwrap_or(0),
            );
        }
        let now = Timestamp::now();
        let next = SystemTime::now() + next_poll;
        let next = Timestamp::try_from(next).unwrap_or(now);
        let status = fetch_status(
            previous,
            outcome,
            held,
            relationship.bundle_endpoint_url.as_str(),
            now,
            next,
        );
        let body = json!({
            "apiVersion": "spire.spiffe.io/v1alpha1",
            "kind": "ClusterFederatedTrustDomain",
            "status": status,
        });
        api.patch_status(
            &relationship.resource,
            &PatchParams::apply(FETCH_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        if let Some((ok, reason, message)) = fetch_transition(previous, &status) {
            let reference = ObjectReference {
                api_version: Some("spire.spiffe.io/v1alpha1".to_owned()),
                kind: Some("ClusterFederatedTrustDomain".to_owned()),
                name: Some(relationship.resource.clone()),
                uid: current.metadata.uid.clone(),
                ..ObjectReference::default()
            };
            let note = bounded_message(&message);
            let event = Event {
                type_: if ok {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason,
                note: Some(note),
                action: "FetchBundle".to_owned(),
                secondary: None,
            };
            let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(resource = %relationship.resource, %error, "publishing an event failed");
            }
        }
        Ok(())
    }
}

/// Whether `bundle` fits in the status field the CRD bounds (the API server would refuse the
/// whole status write, and every replica would miss the bundle).
fn fits_in_status(bundle: &TrustDomainBundle) -> bool {
    bundle
        .to_spiffe_jwks()
        .is_ok_and(|json| json.len() <= STATUS_BUNDLE_MAX_BYTES)
}

/// The X.509 authorities an `https_spiffe` endpoint's SVID (of `endpoint_id`) is checked against:
/// the latest bundle of the endpoint ID's trust domain. Self-serving (the trust domain being
/// fetched): the held bundle plus `trustDomainBundle`, so that an operator can re-bootstrap a
/// relationship whose held bundle no longer matches the peer's CA. Ours, or another
/// relationship's, for a non-self-serving endpoint.
fn endpoint_authorities(
    relationship: &FederatedTrustDomain,
    endpoint_id: &SpiffeId,
    held: Option<&TrustDomainBundle>,
    own: &TrustDomainBundle,
    set: &FederationSet,
) -> Result<Vec<Vec<u8>>, FetchError> {
    let endpoint_td = endpoint_id.trust_domain();
    let authorities = if endpoint_td == relationship.trust_domain {
        let mut authorities: Vec<Vec<u8>> = held
            .or(relationship.fetched_bundle.as_ref())
            .map(|b| b.x509_authorities.clone())
            .unwrap_or_default();
        for ca in relationship
            .initial_bundle
            .iter()
            .flat_map(|b| &b.x509_authorities)
        {
            if !authorities.contains(ca) {
                authorities.push(ca.clone());
            }
        }
        authorities
    } else if endpoint_td == own.trust_domain {
        own.x509_authorities.clone()
    } else {
        set.get(endpoint_td.name())
            .and_then(FederatedTrustDomain::current_bundle)
            .map(|b| b.x509_authorities.clone())
            .unwrap_or_default()
    };
    if authorities.is_empty() {
        return Err(FetchError::NoBundleForEndpoint {
            trust_domain: endpoint_td.name().to_owned(),
        });
    }
    Ok(authorities)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wimsey_core::TrustDomain;

    use super::*;

    fn bundle(td: &str, cas: &[&[u8]]) -> TrustDomainBundle {
        let mut bundle = TrustDomainBundle::new(TrustDomain::new(td).unwrap());
        bundle.x509_authorities = cas.iter().map(|c| c.to_vec()).collect();
        bundle
    }

    fn relationship(
        td: &str,
        initial: Option<TrustDomainBundle>,
        fetched: Option<TrustDomainBundle>,
    ) -> FederatedTrustDomain {
        FederatedTrustDomain {
            resource: td.to_owned(),
            trust_domain: TrustDomain::new(td).unwrap(),
            bundle_endpoint_url: url::Url::parse(&format!("https://{td}/")).unwrap(),
            profile: BundleEndpointProfile::HttpsWeb,
            initial_bundle: initial,
            fetched_bundle: fetched,
        }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn each_kind_of_endpoint_is_checked_with_the_latest_bundle_of_its_trust_domain() {
        let own = bundle("ours.test", &[b"our-ca"]);
        let hub = relationship("hub.test", None, Some(bundle("hub.test", &[b"hub-ca"])));
        let set = FederationSet::from([("hub.test".to_owned(), hub)]);

        // Self-serving: bootstrapped from trustDomainBundle before the first fetch.
        let peer = relationship("peer.test", Some(bundle("peer.test", &[b"boot"])), None);
        let server = id("spiffe://peer.test/spire/server");
        assert_eq!(
            endpoint_authorities(&peer, &server, None, &own, &set).unwrap(),
            vec![b"boot".to_vec()]
        );
        // Then the latest fetched bundle, and trustDomainBundle still (re-bootstrapping).
        let fetched = bundle("peer.test", &[b"new"]);
        assert_eq!(
            endpoint_authorities(&peer, &server, Some(&fetched), &own, &set).unwrap(),
            vec![b"new".to_vec(), b"boot".to_vec()]
        );
        // Non-self-serving: served by us, or by another federated trust domain.
        assert_eq!(
            endpoint_authorities(&peer, &id("spiffe://ours.test/x"), None, &own, &set).unwrap(),
            vec![b"our-ca".to_vec()]
        );
        assert_eq!(
            endpoint_authorities(&peer, &id("spiffe://hub.test/x"), None, &own, &set).unwrap(),
            vec![b"hub-ca".to_vec()]
        );
        // A trust domain we know nothing of, or a self-serving one with no bundle at all.
        let error = endpoint_authorities(&peer, &id("spiffe://unknown.test/x"), None, &own, &set)
            .unwrap_err();
        assert_eq!(error.reason(), "TrustDomainMismatch");
        let bare = relationship("bare.test", None, None);
        assert!(
            endpoint_authorities(
                &bare,
                &id("spiffe://bare.test/s"),
                None,
                &own,
                &BTreeMap::new()
            )
            .is_err()
        );
    }
}
