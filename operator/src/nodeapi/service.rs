//! The `wimsey.node.v1.Node` gRPC handlers: each authenticates the caller, authorizes the pod,
//! asks the authority's [`crate::authority::issuer::Issuer`] to sign, and maps the result to
//! protos. Lifetimes and keys are the issuer's business, never the handlers'.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use tonic::{Request, Response, Status};
use wimsey_core::SpiffeId;
use wimsey_core::jose::PublicJwk;
use wimsey_core::jose::unix_seconds;
use wimsey_core::x509::verify_csr;
use wimsey_proto::wimsey::node::v1::node_server::Node;
use wimsey_proto::wimsey::node::v1::{
    AttestRequest, AttestResponse, Bundles, MintJwtSvidRequest, MintJwtSvidResponse,
    MintWitSvidRequest, MintWitSvidResponse, PodEntry, PodRef, PodUpdate, SignX509SvidsRequest,
    SignX509SvidsResponse, WatchPodRequest, X509Svid,
};

use super::conn::PeerAddr;
use super::limits::{check_audiences, check_csr_count};
use super::verdict::{
    PlacedPod, check_node_attestation, check_plugin_account, check_pod_token, node_id, place_pod,
    plugin_pod,
};
use super::{NodeApi, NodeApiError, NodeIdentity, State};
use crate::authority::SigningMaterial;
use crate::store::PodRecord;

type PodUpdates = Pin<Box<dyn Stream<Item = Result<PodUpdate, Status>> + Send>>;

/// A WatchPod stream re-checks its pod at least this far apart, whatever the verdict says.
const MIN_RECHECK: Duration = Duration::from_secs(5);

/// A pod call that passed every check.
struct AuthorizedPod {
    /// The pod's entries; `None` when it has none.
    record: Option<Arc<PodRecord>>,
    /// When to review the pod token again (and when the node credential ends, if sooner).
    recheck_at: SystemTime,
}

impl AuthorizedPod {
    /// The pod's entries, or `NoIdentity` (a denial).
    fn entries(&self) -> Result<&Arc<PodRecord>, NodeApiError> {
        self.record
            .as_ref()
            .filter(|record| !record.entries.is_empty())
            .ok_or(NodeApiError::NoIdentity)
    }
}

impl State {
    fn caller_node<T>(&self, request: &Request<T>) -> Result<NodeIdentity, NodeApiError> {
        let node = request
            .extensions()
            .get::<Option<NodeIdentity>>()
            .cloned()
            .flatten()
            .ok_or(NodeApiError::Unauthenticated(
                "this call needs a node SVID as client certificate",
            ))?;
        if node.valid_until <= SystemTime::now() {
            return Err(NodeApiError::Unauthenticated(
                "the node SVID of this connection has expired",
            ));
        }
        Ok(node)
    }

    /// The checks every pod call makes: the informer places the pod on the caller's node, and
    /// the pod's own token (TokenReview, or its cached verdict) names that pod and its service
    /// account.
    async fn authorize_pod(
        &self,
        node: &NodeIdentity,
        pod: Option<&PodRef>,
    ) -> Result<AuthorizedPod, NodeApiError> {
        let pod = pod.ok_or(NodeApiError::InvalidArgument("pod"))?;
        if pod.pod_uid.is_empty() {
            return Err(NodeApiError::InvalidArgument("pod.pod_uid"));
        }
        if pod.pod_token.is_empty() {
            return Err(NodeApiError::InvalidArgument("pod.pod_token"));
        }
        let placed = self.place(&pod.pod_uid, &node.node_name)?;
        let verdict = self
            .review(
                &pod.pod_token,
                &self.args.pod_token_audience,
                Some(&pod.pod_uid),
            )
            .await?;
        check_pod_token(
            &verdict.review,
            &placed.facts.uid,
            &placed.facts.namespace,
            &placed.facts.service_account,
        )?;
        Ok(AuthorizedPod {
            record: placed.record,
            recheck_at: verdict.recheck_at.min(node.valid_until),
        })
    }

    /// Pod `uid` on `node`, from the caches.
    fn place(&self, uid: &str, node: &str) -> Result<PlacedPod, NodeApiError> {
        place_pod(
            self.cluster.synced(),
            self.cluster.pod(uid),
            self.store.pod(uid),
            uid,
            node,
        )
    }

    /// Our bundle, and the federated bundles `record`'s entries federate with (none for `None`).
    /// Serialized once per bundle generation ([`super::bundles::BundleCache`]).
    fn bundles(
        &self,
        material: &Arc<SigningMaterial>,
        record: Option<&PodRecord>,
    ) -> Result<Bundles, NodeApiError> {
        let own = self.bundle_cache.own(material)?;
        let wanted: BTreeSet<_> = record
            .iter()
            .flat_map(|r| r.entries.iter())
            .flat_map(|e| e.entry.federates_with.iter())
            .collect();
        let federated = if wanted.is_empty() {
            Vec::new()
        } else {
            let serialized = self
                .bundle_cache
                .federated(&self.federated.borrow().clone())?;
            wanted
                .into_iter()
                .filter_map(|td| serialized.get(td).cloned())
                .collect()
        };
        Ok(Bundles {
            own: Some(own),
            federated,
        })
    }

    /// The pod's entries and bundles (`None`: a pod without entries gets an empty update).
    fn pod_update(&self, record: Option<&PodRecord>) -> Result<PodUpdate, NodeApiError> {
        let material = self.authority.current();
        let entries = record
            .iter()
            .flat_map(|record| record.entries.iter())
            .map(|stored| PodEntry {
                entry_id: stored.id.clone(),
                spiffe_id: stored.entry.spiffe_id.as_str().to_owned(),
                dns_names: stored.entry.dns_names.clone(),
                hint: stored.entry.hint.clone(),
                x509_svid_ttl_seconds: i64::try_from(stored.entry.x509_svid_ttl.as_secs())
                    .unwrap_or(i64::MAX),
                jwt_svid_ttl_seconds: i64::try_from(stored.entry.jwt_svid_ttl.as_secs())
                    .unwrap_or(i64::MAX),
                federates_with: stored
                    .entry
                    .federates_with
                    .iter()
                    .map(|td| td.name().to_owned())
                    .collect(),
            })
            .collect();
        Ok(PodUpdate {
            entries,
            bundles: Some(self.bundles(&material, record)?),
        })
    }

    /// The pod's entry for `spiffe_id`, or PermissionDenied.
    fn entry_for<'r>(
        record: &'r PodRecord,
        spiffe_id: &str,
    ) -> Result<&'r crate::store::StoredEntry, NodeApiError> {
        if record.entries.is_empty() {
            return Err(NodeApiError::NoIdentity);
        }
        let id =
            SpiffeId::parse(spiffe_id).map_err(|_| NodeApiError::InvalidArgument("spiffe_id"))?;
        record
            .entries
            .iter()
            .find(|e| e.entry.spiffe_id == id)
            .ok_or_else(|| {
                NodeApiError::PermissionDenied(
                    "no identity issued for the requested SPIFFE ID".into(),
                )
            })
    }
}

#[tonic::async_trait]
impl Node for NodeApi {
    async fn attest(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        let state = &self.state;
        // Before anything else: a flood must cost no TokenReview.
        let source = request
            .extensions()
            .get::<PeerAddr>()
            .map(|peer| peer.0.ip());
        state.attest_rate.check(source, std::time::Instant::now())?;
        let request = request.into_inner();
        if request.token.is_empty() {
            return Err(NodeApiError::InvalidArgument("token").into());
        }
        if request.node_name.is_empty() {
            return Err(NodeApiError::InvalidArgument("node_name").into());
        }
        if request.csr.is_empty() {
            return Err(NodeApiError::InvalidArgument("csr").into());
        }
        let issuer = state.issuer();
        let material = issuer.material();
        let id = node_id(
            &material.bundle.trust_domain,
            &state.settings.cluster_name,
            &request.node_name,
        )?;
        let csr = verify_csr(&request.csr).map_err(|e| NodeApiError::InvalidCsr {
            entry: "node".into(),
            reason: e.to_string(),
        })?;
        if !state.cluster.synced() {
            return Err(NodeApiError::NotSynced.into());
        }
        let review = state
            .review(&request.token, &state.args.node_token_audience, None)
            .await?
            .review;
        let namespace = &state.plugin_namespace;
        check_plugin_account(&review, namespace, &state.args.csi_service_account)?;
        let pod = plugin_pod(
            state.cluster.synced(),
            state.cluster.pod_named(namespace, &review.pod_name),
            &review,
        )?;
        check_node_attestation(
            &review,
            Some(&pod),
            &state.plugin_namespace,
            &state.args.csi_service_account,
            &request.node_name,
        )?;
        let svid = issuer
            .node_svid(&id, &csr, SystemTime::now())
            .map_err(NodeApiError::from)?;
        tracing::info!(node = %request.node_name, "node attested");
        Ok(Response::new(AttestResponse {
            spiffe_id: id.as_str().to_owned(),
            svid_chain: svid.chain.iter().map(|c| c.as_bytes().to_vec()).collect(),
            expires_at: unix_seconds(svid.not_after),
            bundles: Some(state.bundles(material, None)?),
        }))
    }

    async fn sign_x509_svids(
        &self,
        request: Request<SignX509SvidsRequest>,
    ) -> Result<Response<SignX509SvidsResponse>, Status> {
        let state = &self.state;
        let node = state.caller_node(&request)?;
        let request = request.into_inner();
        check_csr_count(request.csrs.len(), state.args.limits.max_csrs)?;
        let pod = state.authorize_pod(&node, request.pod.as_ref()).await?;
        let record = pod.entries()?;
        if request.csrs.is_empty() {
            return Err(NodeApiError::InvalidArgument("csrs").into());
        }
        let issuer = state.issuer();
        let now = SystemTime::now();
        let mut svids = Vec::with_capacity(request.csrs.len());
        for csr in &request.csrs {
            let stored = record
                .entries
                .iter()
                .find(|e| e.id == csr.entry_id)
                .ok_or_else(|| NodeApiError::UnknownEntry(csr.entry_id.clone()))?;
            let verified = verify_csr(&csr.csr).map_err(|e| NodeApiError::InvalidCsr {
                entry: csr.entry_id.clone(),
                reason: e.to_string(),
            })?;
            let svid = issuer.x509_svid(&stored.entry, &verified, now)?;
            svids.push(X509Svid {
                entry_id: stored.id.clone(),
                spiffe_id: stored.entry.spiffe_id.as_str().to_owned(),
                chain: svid.chain.iter().map(|c| c.as_bytes().to_vec()).collect(),
                expires_at: unix_seconds(svid.not_after),
                hint: stored.entry.hint.clone(),
            });
        }
        Ok(Response::new(SignX509SvidsResponse {
            svids,
            bundles: Some(state.bundles(issuer.material(), Some(record))?),
        }))
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let state = &self.state;
        let node = state.caller_node(&request)?;
        let request = request.into_inner();
        check_audiences(
            &request.audience,
            state.args.limits.max_jwt_audiences,
            state.args.limits.max_jwt_audience_bytes,
        )?;
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(NodeApiError::InvalidArgument("audience").into());
        }
        let pod = state.authorize_pod(&node, request.pod.as_ref()).await?;
        let stored = State::entry_for(pod.entries()?, &request.spiffe_id)?;
        let minted =
            state
                .issuer()
                .jwt_svid(&stored.entry, &request.audience, SystemTime::now())?;
        Ok(Response::new(MintJwtSvidResponse {
            token: minted.token,
            expires_at: unix_seconds(minted.expires_at),
        }))
    }

    async fn mint_wit_svid(
        &self,
        request: Request<MintWitSvidRequest>,
    ) -> Result<Response<MintWitSvidResponse>, Status> {
        let state = &self.state;
        let node = state.caller_node(&request)?;
        let request = request.into_inner();
        let workload_key = PublicJwk::from_json(&request.public_jwk)
            .map_err(|e| NodeApiError::InvalidJwk(e.to_string()))?;
        let pod = state.authorize_pod(&node, request.pod.as_ref()).await?;
        let stored = State::entry_for(pod.entries()?, &request.spiffe_id)?;
        let minted = state
            .issuer()
            .wit_svid(&stored.entry, &workload_key, SystemTime::now())?;
        Ok(Response::new(MintWitSvidResponse {
            token: minted.token,
            expires_at: unix_seconds(minted.expires_at),
        }))
    }

    type WatchPodStream = PodUpdates;

    async fn watch_pod(
        &self,
        request: Request<WatchPodRequest>,
    ) -> Result<Response<PodUpdates>, Status> {
        let state = self.state.clone();
        let node = state.caller_node(&request)?;
        let request = request.into_inner();
        let pod_ref = request.pod.ok_or(NodeApiError::InvalidArgument("pod"))?;
        let mut recheck_at = state.authorize_pod(&node, Some(&pod_ref)).await?.recheck_at;
        let uid = pod_ref.pod_uid.clone();
        // Woken by this pod's record only, not by every change in the store.
        let mut store_changes = state.store.subscribe_pod(&uid);
        let mut material_changes = state.authority.subscribe();
        let mut federated_changes = state.federated.clone();
        let (updates, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<PodUpdate> = None;
            // A closed channel (no federation source, or an authority that no longer rotates)
            // never changes again: the stream goes on without it.
            let mut federated_open = true;
            let mut material_open = true;
            loop {
                // Re-check on every round: the pod may have moved, gone, or the credentials lapsed.
                let record = match state.place(&uid, &node.node_name) {
                    Ok(placed) => placed.record,
                    Err(error) => {
                        let _ = updates.send(Err(error.into())).await;
                        return;
                    }
                };
                let update = match state.pod_update(record.as_deref()) {
                    Ok(update) => update,
                    Err(error) => {
                        let _ = updates.send(Err(error.into())).await;
                        return;
                    }
                };
                if last.as_ref() != Some(&update) {
                    if updates.send(Ok(update.clone())).await.is_err() {
                        return;
                    }
                    last = Some(update);
                } else {
                    state
                        .idle_watch_wakeups
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let expiry = recheck_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .max(MIN_RECHECK);
                tokio::select! {
                    () = updates.closed() => return,
                    () = state.stopping.cancelled() => {
                        let _ = updates.send(Err(NodeApiError::ShuttingDown.into())).await;
                        return;
                    }
                    () = tokio::time::sleep(expiry) => {
                        // The node SVID ended (the client re-attests and reconnects), or the
                        // cached token verdict is due: review the pod token again (while the
                        // API server is down, the verdict serves until the token expires).
                        let renewed = if SystemTime::now() >= node.valid_until {
                            Err(NodeApiError::Unauthenticated("the node SVID of this connection has expired"))
                        } else {
                            state.authorize_pod(&node, Some(&pod_ref)).await
                        };
                        match renewed {
                            Ok(pod) => recheck_at = pod.recheck_at,
                            Err(error) => {
                                let _ = updates.send(Err(error.into())).await;
                                return;
                            }
                        }
                    }
                    changed = store_changes.changed() => if changed.is_err() { return },
                    changed = material_changes.changed(), if material_open => material_open = changed.is_ok(),
                    changed = federated_changes.changed(), if federated_open => federated_open = changed.is_ok(),
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
