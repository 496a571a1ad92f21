//! One attached pod: a task that follows the pod's entries, keeps its SVIDs fresh, and publishes
//! snapshots; and the handle the Workload API server reads.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::SpiffeId;
use wimsey_core::jose::{PublicJwk, private_jwk_json};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::{CertDer, build_csr};
use wimsey_proto::wimsey::node::v1::node_client::NodeClient as NodeGrpc;
use wimsey_proto::wimsey::node::v1::{
    EntryCsr, MintJwtSvidRequest, MintWitSvidRequest, PodEntry, PodRef, SignX509SvidsRequest,
    WatchPodRequest,
};
use zeroize::Zeroizing;

use super::grace::{DenialGrace, Holding};
use super::schedule::{backoff, jitter, renew_at};
use super::{NodeClient, NodeClientError, ParsedBundles, unix_time, with_deadline, within};
use crate::identity::{
    IdentitySnapshot, IssuedIdentities, MintError, PodIdentity, PodInfo, WitSvidEntry,
    X509SvidEntry,
};

const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

struct Shared {
    uid: String,
    token: watch::Sender<Option<Zeroizing<String>>>,
    snapshot: watch::Sender<Arc<IdentitySnapshot>>,
    client: NodeClient,
    stop: CancellationToken,
}

/// The identities of one attached pod. Cheap to clone.
#[derive(Clone)]
pub struct NodePod {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NodePod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePod")
            .field("uid", &self.shared.uid)
            .finish_non_exhaustive()
    }
}

impl NodePod {
    pub(super) fn start(
        client: NodeClient,
        pod: PodInfo,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let (token, _) = watch::channel(pod.token);
        let (snapshot, _) = watch::channel(Arc::new(IdentitySnapshot::NotReady));
        let shared = Arc::new(Shared {
            uid: pod.uid,
            token,
            snapshot,
            client,
            stop: CancellationToken::new(),
        });
        runtime.spawn(follow(shared.clone()));
        Self { shared }
    }

    pub fn uid(&self) -> &str {
        &self.shared.uid
    }

    /// kubelet republished the volume with a fresh token.
    pub(super) fn refresh_token(&self, token: Option<Zeroizing<String>>) {
        if token.is_some() {
            self.shared.token.send_replace(token);
        }
    }

    pub(super) fn stop(&self) {
        self.shared.stop.cancel();
    }
}

impl PodIdentity for NodePod {
    fn current(&self) -> watch::Receiver<Arc<IdentitySnapshot>> {
        self.shared.snapshot.subscribe()
    }

    async fn mint_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
    ) -> Result<Zeroizing<String>, MintError> {
        let pod = self.shared.pod_ref().ok_or(MintError::NotReady)?;
        let channel = self
            .shared
            .client
            .channel()
            .await
            .map_err(|e| MintError::Failed(e.to_string()))?;
        let timeout = self.shared.client.config().call_timeout;
        let mut grpc = NodeGrpc::new(channel);
        let request = with_deadline(
            MintJwtSvidRequest {
                pod: Some(pod),
                spiffe_id: spiffe_id.as_str().to_owned(),
                audience: audience.to_vec(),
            },
            timeout,
        );
        let response = within(timeout, grpc.mint_jwt_svid(request))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::PermissionDenied => MintError::NotEntitled,
                _ => MintError::Failed(status.message().to_owned()),
            })?;
        Ok(Zeroizing::new(response.into_inner().token))
    }
}

impl Shared {
    fn pod_ref(&self) -> Option<PodRef> {
        self.token.borrow().as_ref().map(|token| PodRef {
            pod_uid: self.uid.clone(),
            pod_token: token.to_string(),
        })
    }

    fn publish(&self, snapshot: IdentitySnapshot) {
        self.snapshot.send_replace(Arc::new(snapshot));
    }

    fn holds_identities(&self) -> bool {
        matches!(**self.snapshot.borrow(), IdentitySnapshot::Issued(_))
    }

    /// The node API refused the pod: its identities go only once the denial has held for the
    /// grace period.
    fn denied(&self, progress: &mut Progress, why: &str) {
        let holding = self.holds_identities();
        match progress.grace.on_denied(SystemTime::now(), holding) {
            Holding::Drop => {
                if holding {
                    tracing::info!(pod = %self.uid, why, "denial held past the grace; identities withdrawn");
                }
                self.publish(IdentitySnapshot::NoIdentity);
            }
            Holding::Keep => {
                tracing::info!(pod = %self.uid, why, "denied; keeping the current identities during the grace period")
            }
        }
    }
}

/// What the pod task carries across watch rounds.
struct Progress {
    /// Consecutive failed rounds (for the backoff).
    attempt: u32,
    grace: DenialGrace,
}

/// Why a watch round ended.
enum RoundEnd {
    Stopped,
    /// Reconnect after this attempt's backoff.
    Retry,
}

/// The pod task: watch, sign, renew; reconnect with jittered backoff on failure.
async fn follow(shared: Arc<Shared>) {
    let mut progress = Progress {
        attempt: 0,
        grace: DenialGrace::new(shared.client.config().denial_grace),
    };
    loop {
        match watch_round(&shared, &mut progress).await {
            RoundEnd::Stopped => return,
            RoundEnd::Retry => {
                let mut wait = backoff(progress.attempt, RETRY_BASE, RETRY_MAX, jitter());
                // A held denial is looked at again when its grace ends, not a backoff later.
                if let Some(drop_at) = progress
                    .grace
                    .drop_at()
                    .filter(|_| shared.holds_identities())
                {
                    let until = drop_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    wait = wait.min(until.max(RETRY_BASE));
                }
                progress.attempt = progress.attempt.saturating_add(1);
                let mut token = shared.token.subscribe();
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                    // A fresh token is worth trying at once.
                    _ = token.changed() => {}
                }
            }
        }
    }
}

async fn watch_round(shared: &Shared, progress: &mut Progress) -> RoundEnd {
    let Some(pod) = shared.pod_ref() else {
        // No token yet (kubelet sends it with the next publish).
        return RoundEnd::Retry;
    };
    let channel = match shared.client.channel().await {
        Ok(channel) => channel,
        Err(error) => {
            tracing::warn!(%error, label = error.label(), pod = %shared.uid, "node API unavailable");
            return RoundEnd::Retry;
        }
    };
    let mut grpc = NodeGrpc::new(channel);
    // Only the first answer has a deadline: the stream itself stays open.
    let timeout = shared.client.config().call_timeout;
    let mut updates =
        match within(timeout, grpc.watch_pod(WatchPodRequest { pod: Some(pod) })).await {
            Ok(response) => response.into_inner(),
            Err(status) => return on_status(shared, progress, status),
        };
    let mut entries: Vec<PodEntry> = Vec::new();
    let mut bundles: Option<ParsedBundles> = None;
    let mut renew: Option<SystemTime> = None;
    let mut sign_attempt = 0u32;
    loop {
        // Wake for the renewal, or when a held "no entries" denial's grace ends.
        let held = progress
            .grace
            .drop_at()
            .filter(|_| entries.is_empty() && shared.holds_identities());
        let wake = match (renew, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = wake
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(Duration::MAX);
        tokio::select! {
            () = shared.stop.cancelled() => return RoundEnd::Stopped,
            next = updates.next() => match next {
                None => return RoundEnd::Retry,
                Some(Err(status)) => return on_status(shared, progress, status),
                Some(Ok(update)) => {
                    progress.attempt = 0;
                    let parsed = match update.bundles.as_ref().map(|b| shared.client.update_roots(b)) {
                        Some(Ok(parsed)) => parsed,
                        Some(Err(error)) => {
                            tracing::warn!(%error, pod = %shared.uid, "bad bundle in pod update");
                            return RoundEnd::Retry;
                        }
                        None => return RoundEnd::Retry,
                    };
                    if update.entries.is_empty() {
                        entries.clear();
                        renew = None;
                        shared.denied(progress, "the pod has no entries");
                        bundles = Some(parsed);
                        continue;
                    }
                    progress.grace.on_success();
                    let entries_changed = update.entries != entries;
                    entries = update.entries;
                    bundles = Some(parsed);
                    if !entries_changed && renew.is_some() {
                        // Only the bundles changed: keep the SVIDs, send the new trust.
                        republish_bundles(shared, bundles.as_ref());
                        continue;
                    }
                    renew = Some(SystemTime::now());
                }
            },
            () = tokio::time::sleep(sleep) => {
                if held.is_some() && entries.is_empty() {
                    shared.denied(progress, "the pod still has no entries");
                }
            }
        }
        if renew.is_some_and(|at| at <= SystemTime::now()) {
            match issue(shared, &mut grpc, &entries).await {
                Ok((issued, expires_at, issued_at)) => {
                    sign_attempt = 0;
                    progress.grace.on_success();
                    renew = Some(renew_at(issued_at, expires_at));
                    let Some(bundles) = bundles.clone() else {
                        continue;
                    };
                    shared.publish(IdentitySnapshot::Issued(IssuedIdentities {
                        bundle: bundles.own,
                        federated_bundles: bundles.federated,
                        x509_svids: issued.0,
                        wit_svids: issued.1,
                    }));
                }
                Err(error) if error.is_permission_denied() => {
                    shared.denied(progress, "signing refused");
                    return RoundEnd::Retry;
                }
                // The connection's node SVID ended: reconnect (attesting again) at once.
                Err(NodeClientError::Status(status))
                    if status.code() == tonic::Code::Unauthenticated =>
                {
                    return RoundEnd::Retry;
                }
                Err(error) => {
                    tracing::warn!(%error, label = error.label(), pod = %shared.uid, "renewing SVIDs");
                    shared.client.count_issuance_error(error.label());
                    renew = Some(
                        SystemTime::now() + backoff(sign_attempt, RETRY_BASE, RETRY_MAX, jitter()),
                    );
                    sign_attempt = sign_attempt.saturating_add(1);
                }
            }
        }
    }
}

fn on_status(shared: &Shared, progress: &mut Progress, status: tonic::Status) -> RoundEnd {
    // Unauthenticated needs nothing special: an expired node SVID is past its renewal time, so
    // the next round attests again; an expired pod token is replaced by kubelet's republish.
    // Unavailable (the operator's view lags, or it cannot reach the API server) and deadlines
    // keep what the pod has and retry with backoff.
    if status.code() == tonic::Code::PermissionDenied {
        shared.denied(progress, status.message());
    } else {
        shared.client.count_issuance_error("watch");
    }
    tracing::debug!(code = ?status.code(), message = status.message(), pod = %shared.uid, "pod watch ended");
    RoundEnd::Retry
}

fn republish_bundles(shared: &Shared, bundles: Option<&ParsedBundles>) {
    let Some(bundles) = bundles else { return };
    let current = shared.snapshot.borrow().clone();
    if let IdentitySnapshot::Issued(issued) = current.as_ref() {
        let mut issued = issued.clone();
        issued.bundle = bundles.own.clone();
        issued.federated_bundles = bundles.federated.clone();
        shared.publish(IdentitySnapshot::Issued(issued));
    }
}

type Issued = (Vec<X509SvidEntry>, Option<Vec<WitSvidEntry>>);

/// Generates a key per entry, has the CSRs signed, and mints a WIT-SVID per entry. Returns the
/// identities, the earliest expiry and when the request was made.
async fn issue(
    shared: &Shared,
    grpc: &mut NodeGrpc<tonic::transport::Channel>,
    entries: &[PodEntry],
) -> Result<(Issued, SystemTime, SystemTime), NodeClientError> {
    let pod = shared
        .pod_ref()
        .ok_or_else(|| NodeClientError::InvalidResponse("no pod token".into()))?;
    let issued_at = SystemTime::now();
    let mut keys = Vec::with_capacity(entries.len());
    let mut csrs = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = SpiffeId::parse(&entry.spiffe_id)
            .map_err(|e| NodeClientError::InvalidResponse(format!("entry SPIFFE ID: {e}")))?;
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256)?;
        csrs.push(EntryCsr {
            entry_id: entry.entry_id.clone(),
            csr: build_csr(&key, &id, &entry.dns_names)?,
        });
        keys.push((entry.entry_id.clone(), key));
    }
    let timeout = shared.client.config().call_timeout;
    let request = with_deadline(
        SignX509SvidsRequest {
            pod: Some(pod.clone()),
            csrs,
        },
        timeout,
    );
    let response = within(timeout, grpc.sign_x509_svids(request))
        .await?
        .into_inner();
    let mut x509 = Vec::with_capacity(entries.len());
    let mut expires_at: Option<SystemTime> = None;
    for (entry_id, key) in &keys {
        let svid = response
            .svids
            .iter()
            .find(|s| &s.entry_id == entry_id)
            .ok_or_else(|| {
                NodeClientError::InvalidResponse(format!("no SVID for entry {entry_id}"))
            })?;
        let spiffe_id = SpiffeId::parse(&svid.spiffe_id)
            .map_err(|e| NodeClientError::InvalidResponse(format!("SVID SPIFFE ID: {e}")))?;
        let expiry = unix_time(svid.expires_at);
        expires_at = Some(expires_at.map_or(expiry, |e| e.min(expiry)));
        x509.push(X509SvidEntry {
            spiffe_id,
            chain: svid.chain.iter().cloned().map(CertDer::new).collect(),
            private_key_pkcs8: key.pkcs8_der(),
            hint: svid.hint.clone(),
        });
    }
    let wit = mint_wits(grpc, &pod, &x509, timeout).await;
    let expires_at =
        expires_at.ok_or_else(|| NodeClientError::InvalidResponse("no SVIDs".into()))?;
    Ok(((x509, wit), expires_at, issued_at))
}

/// One WIT-SVID per identity, each for its own fresh key. WIT-SVIDs are optional (incubating):
/// if the operator cannot mint them the pod is served without the WIT profile.
async fn mint_wits(
    grpc: &mut NodeGrpc<tonic::transport::Channel>,
    pod: &PodRef,
    identities: &[X509SvidEntry],
    timeout: Duration,
) -> Option<Vec<WitSvidEntry>> {
    let mut wits = Vec::with_capacity(identities.len());
    for identity in identities {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).ok()?;
        let public =
            serde_json::Value::Object(PublicJwk::for_signing_key(&key).to_json_map()).to_string();
        let request = with_deadline(
            MintWitSvidRequest {
                pod: Some(pod.clone()),
                spiffe_id: identity.spiffe_id.as_str().to_owned(),
                public_jwk: public,
            },
            timeout,
        );
        let response = within(timeout, grpc.mint_wit_svid(request)).await;
        let token = match response {
            Ok(response) => response.into_inner().token,
            Err(status) => {
                tracing::debug!(code = ?status.code(), "WIT-SVID not minted");
                return None;
            }
        };
        wits.push(WitSvidEntry {
            spiffe_id: identity.spiffe_id.clone(),
            token: Zeroizing::new(token),
            private_jwk: private_jwk_json(&key).ok()?,
            hint: identity.hint.clone(),
        });
    }
    Some(wits)
}
