//! The node API's decisions as plain functions: node SVID IDs, TokenReview verdicts and their
//! cache, and whether a node may act for a pod. Transient ("not known yet", "cannot ask the API
//! server") is kept apart from denial: the first is `Unavailable` (retry), only the second is
//! `PermissionDenied`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use wimsey_core::jose::service_account::PodBoundToken;
use wimsey_core::reserved;
use wimsey_core::{SpiffeId, TrustDomain};
use zeroize::Zeroizing;

use super::NodeApiError;
use super::cluster::{PodFacts, PodLookup};
use crate::store::PodRecord;

/// `user.extra` keys the API server sets for tokens bound to a pod.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The node name in a node SVID ID of our trust domain and cluster, or `None`.
pub use wimsey_core::reserved::node_from_id;

/// The operator's own serving identity (`wimsey_core::reserved::operator_id`).
pub fn operator_id(trust_domain: &TrustDomain) -> Result<SpiffeId, NodeApiError> {
    reserved::operator_id(trust_domain).map_err(|_| NodeApiError::InvalidArgument("trust domain"))
}

/// A node's SVID ID (`wimsey_core::reserved::node_id`): a node name that is not a valid path
/// segment is refused.
pub fn node_id(
    trust_domain: &TrustDomain,
    cluster: &str,
    node: &str,
) -> Result<SpiffeId, NodeApiError> {
    reserved::node_id(trust_domain, cluster, node)
        .map_err(|_| NodeApiError::InvalidArgument("node_name"))
}

/// What an authenticated, pod-bound service-account token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedToken {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// Reads a TokenReview status: the token must be authenticated for `audience`, belong to a
/// service account, and be bound to a pod.
pub fn reviewed_token(
    status: &TokenReviewStatus,
    audience: &str,
) -> Result<ReviewedToken, NodeApiError> {
    if status.authenticated != Some(true) {
        return Err(NodeApiError::Unauthenticated(
            "the token was not accepted by TokenReview",
        ));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|x| x == audience))
    {
        return Err(NodeApiError::Unauthenticated(
            "the token is not for this audience",
        ));
    }
    let user = status
        .user
        .as_ref()
        .ok_or(NodeApiError::Unauthenticated("the token has no user"))?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or(NodeApiError::PermissionDenied(
            "the token is not a service-account token".into(),
        ))?;
    let single = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(key))
            .and_then(|values| match values.as_slice() {
                [one] if !one.is_empty() => Some(one.clone()),
                _ => None,
            })
    };
    let (Some(pod_name), Some(pod_uid)) = (single(EXTRA_POD_NAME), single(EXTRA_POD_UID)) else {
        return Err(NodeApiError::PermissionDenied(
            "the token is not bound to a pod".into(),
        ));
    };
    Ok(ReviewedToken {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name,
        pod_uid,
    })
}

/// A token verified offline against the issuer keys, as a TokenReview would have described it.
pub fn offline_review(bound: PodBoundToken) -> ReviewedToken {
    ReviewedToken {
        namespace: bound.namespace,
        service_account: bound.service_account,
        pod_name: bound.pod_name,
        pod_uid: bound.pod_uid,
    }
}

/// The facts about the attesting plugin's pod, read from the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginPod {
    pub uid: String,
    pub service_account: String,
    pub node_name: String,
}

/// Only the CSI plugin's service account in the operator's namespace may attest nodes.
pub fn check_plugin_account(
    review: &ReviewedToken,
    expected_namespace: &str,
    expected_service_account: &str,
) -> Result<(), NodeApiError> {
    if review.namespace != expected_namespace || review.service_account != expected_service_account
    {
        return Err(NodeApiError::PermissionDenied(format!(
            "service account {}/{} may not attest nodes",
            review.namespace, review.service_account
        )));
    }
    Ok(())
}

/// The attesting plugin's pod as the caches know it: a pod not seen yet is `Unavailable` (the
/// informer lags kubelet), never a denial.
pub fn plugin_pod(
    synced: bool,
    lookup: PodLookup,
    review: &ReviewedToken,
) -> Result<PluginPod, NodeApiError> {
    if !synced {
        return Err(NodeApiError::NotSynced);
    }
    match lookup {
        PodLookup::Known(facts) => Ok(PluginPod {
            uid: facts.uid,
            service_account: facts.service_account,
            node_name: facts.node_name,
        }),
        PodLookup::Deleted => Err(NodeApiError::PermissionDenied(format!(
            "the token's pod {} has been deleted",
            review.pod_name
        ))),
        PodLookup::Unknown => Err(NodeApiError::NotYetVisible(format!(
            "the token's pod {} is not known yet",
            review.pod_name
        ))),
    }
}

/// Node attestation: the token is the CSI plugin's service account in the operator's namespace,
/// its pod exists with that UID and service account, and runs on the claimed node.
pub fn check_node_attestation(
    review: &ReviewedToken,
    pod: Option<&PluginPod>,
    expected_namespace: &str,
    expected_service_account: &str,
    claimed_node: &str,
) -> Result<(), NodeApiError> {
    check_plugin_account(review, expected_namespace, expected_service_account)?;
    let pod = pod.ok_or_else(|| {
        NodeApiError::PermissionDenied(format!(
            "the token's pod {} does not exist",
            review.pod_name
        ))
    })?;
    if pod.uid != review.pod_uid || pod.service_account != expected_service_account {
        return Err(NodeApiError::PermissionDenied(format!(
            "the token's pod {} has been replaced",
            review.pod_name
        )));
    }
    if pod.node_name != claimed_node {
        return Err(NodeApiError::PermissionDenied(format!(
            "the token's pod does not run on node {claimed_node}"
        )));
    }
    Ok(())
}

/// A pod call: the pod's own token must name the pod and its service account.
pub fn check_pod_token(
    review: &ReviewedToken,
    pod_uid: &str,
    namespace: &str,
    service_account: &str,
) -> Result<(), NodeApiError> {
    if review.pod_uid != pod_uid {
        return Err(NodeApiError::PermissionDenied(
            "the pod token belongs to another pod".into(),
        ));
    }
    if review.namespace != namespace || review.service_account != service_account {
        return Err(NodeApiError::PermissionDenied(
            "the pod token belongs to another service account".into(),
        ));
    }
    Ok(())
}

/// Where a pod call stands: the pod on the caller's node, with its entries (`None`: it has none).
#[derive(Debug, Clone)]
pub struct PlacedPod {
    pub facts: PodFacts,
    pub record: Option<Arc<PodRecord>>,
}

/// Whether `node` may act for pod `uid`, from the caches (`lookup`: the informer; `record`: the
/// rendered entries). A lagging view is `Unavailable`; only an up-to-date "no" is a denial.
/// Pods never change nodes, so a pod the informer places on another node is a real denial.
pub fn place_pod(
    synced: bool,
    lookup: PodLookup,
    record: Option<Arc<PodRecord>>,
    uid: &str,
    node: &str,
) -> Result<PlacedPod, NodeApiError> {
    if !synced {
        return Err(NodeApiError::NotSynced);
    }
    let facts = match lookup {
        PodLookup::Known(facts) => facts,
        PodLookup::Deleted => {
            return Err(NodeApiError::PermissionDenied(format!(
                "pod {uid} has been deleted"
            )));
        }
        PodLookup::Unknown => {
            return Err(NodeApiError::NotYetVisible(format!(
                "pod {uid} is not known yet"
            )));
        }
    };
    if facts.node_name.is_empty() {
        return Err(NodeApiError::NotYetVisible(format!(
            "pod {uid} is not scheduled yet as far as the operator knows"
        )));
    }
    if facts.node_name != node {
        return Err(NodeApiError::PermissionDenied(format!(
            "pod {uid} is not scheduled on node {node}"
        )));
    }
    match record {
        // The entries were rendered from an older view of the pod: wait for the next pass.
        Some(record) if record.node_name != node => Err(NodeApiError::NotYetVisible(format!(
            "the entries of pod {uid} are not rendered for node {node} yet"
        ))),
        record => Ok(PlacedPod { facts, record }),
    }
}

/// The longest token accepted for parsing its claims (Kubernetes tokens are about 1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The claims of a Kubernetes service-account JWT we read without verifying it: only after
/// TokenReview accepted the very same token (whose signature covers them), or to refuse a
/// fallback, never to grant anything on their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedClaims {
    pub expires_at: SystemTime,
    /// `kubernetes.io.pod.uid`, for pod-bound tokens.
    pub pod_uid: Option<String>,
}

pub fn unverified_claims(token: &str) -> Option<UnverifiedClaims> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = wimsey_core::jose::b64url_decode(payload, "token payload").ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    let pod_uid = claims
        .pointer("/kubernetes.io/pod/uid")
        .and_then(|uid| uid.as_str())
        .map(str::to_owned);
    Some(UnverifiedClaims {
        expires_at: UNIX_EPOCH.checked_add(Duration::from_secs(exp))?,
        pod_uid,
    })
}

/// The `exp` claim of a JWT, unverified (see [`UnverifiedClaims`]).
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    unverified_claims(token).map(|claims| claims.expires_at)
}

/// How long verdicts are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictPolicy {
    /// A verdict is re-checked with TokenReview after this long when the API server answers.
    pub refresh: Duration,
    /// Past `refresh`, while the API server does not answer, how often to try again.
    pub stale_recheck: Duration,
    /// A verdict never outlives its token's `exp`, nor this long after the review.
    pub max_lifetime: Duration,
    /// Past this many verdicts, expired ones are swept.
    pub sweep_above: usize,
}

impl Default for VerdictPolicy {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(300),
            stale_recheck: Duration::from_secs(15),
            max_lifetime: Duration::from_secs(24 * 3600),
            sweep_above: 4096,
        }
    }
}

/// A verdict to act on: who the token belongs to, until when that holds (the reviewed token's
/// expiry), and when to ask TokenReview again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub review: ReviewedToken,
    pub valid_until: SystemTime,
    pub recheck_at: SystemTime,
}

/// What the cache holds for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// Reviewed recently: use it without asking.
    Fresh(Verdict),
    /// Due for a new review, still within the reviewed token's lifetime: use it only if
    /// TokenReview cannot be reached.
    Stale(Verdict),
    Miss,
}

#[derive(Debug, Clone)]
struct StoredVerdict {
    review: ReviewedToken,
    audience: String,
    fresh_until: SystemTime,
    valid_until: SystemTime,
}

/// A token kubelet sent for a pod while TokenReview could not be reached: reviewed when the API
/// server is back.
#[derive(Clone)]
pub struct PendingToken {
    pub audience: String,
    pub pod_uid: String,
    pub token: Zeroizing<String>,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for PendingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingToken")
            .field("audience", &self.audience)
            .field("pod_uid", &self.pod_uid)
            .finish_non_exhaustive()
    }
}

/// TokenReview verdicts, keyed by sha256(audience, token) (never by the token itself), and per
/// pod: the verified verdict that lasts longest, and the newest token not reviewed yet.
#[derive(Debug, Default)]
pub struct VerdictCache {
    policy: VerdictPolicy,
    verdicts: HashMap<String, StoredVerdict>,
    /// (audience, pod UID) -> key of the pod's longest-lasting verified verdict.
    by_pod: HashMap<(String, String), String>,
    pending: HashMap<(String, String), PendingToken>,
}

/// The cache key of `token` for `audience`.
pub fn verdict_key(audience: &str, token: &str) -> String {
    wimsey_core::jose::sha256_b64url(format!("{audience}\n{token}").as_bytes())
}

impl VerdictCache {
    pub fn new(policy: VerdictPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.verdicts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
    }

    fn verdict_at(&self, stored: &StoredVerdict, now: SystemTime) -> Cached {
        if stored.valid_until <= now {
            return Cached::Miss;
        }
        if now < stored.fresh_until {
            return Cached::Fresh(Verdict {
                review: stored.review.clone(),
                valid_until: stored.valid_until,
                recheck_at: stored.fresh_until,
            });
        }
        Cached::Stale(Verdict {
            review: stored.review.clone(),
            valid_until: stored.valid_until,
            recheck_at: (now + self.policy.stale_recheck).min(stored.valid_until),
        })
    }

    pub fn lookup(&self, key: &str, now: SystemTime) -> Cached {
        self.verdicts
            .get(key)
            .map_or(Cached::Miss, |stored| self.verdict_at(stored, now))
    }

    /// TokenReview accepted the token (`expires_at`: its `exp`). The verdict holds until that
    /// `exp` and no longer; without an `exp` it is used once and not kept.
    pub fn record_accepted(
        &mut self,
        key: String,
        audience: &str,
        review: ReviewedToken,
        expires_at: Option<SystemTime>,
        now: SystemTime,
    ) -> Verdict {
        self.record(key, audience, review, expires_at, now, self.policy.refresh)
    }

    /// The token verified offline against the issuer keys while TokenReview could not be
    /// reached: kept like an accepted one but stale at once, so TokenReview is asked again on
    /// every use until it answers (only TokenReview sees revocation). `pending_token` (a pod
    /// call for the token's own pod) waits to be reviewed when the API server is back.
    pub fn record_verified_offline(
        &mut self,
        key: String,
        audience: &str,
        review: ReviewedToken,
        pending_token: Option<&str>,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Verdict {
        let pod_uid = review.pod_uid.clone();
        let verdict = self.record(key, audience, review, Some(expires_at), now, Duration::ZERO);
        // After recording: recording clears the pending token a review has settled.
        if let Some(token) = pending_token {
            self.keep_pending(audience, &pod_uid, token, expires_at);
        }
        Verdict {
            recheck_at: (now + self.policy.stale_recheck).min(verdict.valid_until),
            ..verdict
        }
    }

    fn record(
        &mut self,
        key: String,
        audience: &str,
        review: ReviewedToken,
        expires_at: Option<SystemTime>,
        now: SystemTime,
        fresh_for: Duration,
    ) -> Verdict {
        let Some(expires_at) = expires_at.filter(|exp| *exp > now) else {
            return Verdict {
                review,
                valid_until: now,
                recheck_at: now,
            };
        };
        if self.verdicts.len() >= self.policy.sweep_above {
            self.sweep(now);
        }
        let valid_until = expires_at.min(now + self.policy.max_lifetime);
        let stored = StoredVerdict {
            review: review.clone(),
            audience: audience.to_owned(),
            fresh_until: (now + fresh_for).min(valid_until),
            valid_until,
        };
        let pod = (audience.to_owned(), review.pod_uid.clone());
        let longest = self
            .by_pod
            .get(&pod)
            .and_then(|k| self.verdicts.get(k))
            .is_none_or(|best| best.valid_until <= valid_until);
        if longest {
            self.by_pod.insert(pod.clone(), key.clone());
        }
        // The newest token has been reviewed (or an even newer one is still waiting).
        if self
            .pending
            .get(&pod)
            .is_some_and(|p| p.expires_at <= expires_at)
        {
            self.pending.remove(&pod);
        }
        self.verdicts.insert(key, stored);
        Verdict {
            review,
            valid_until,
            recheck_at: (now + fresh_for).min(valid_until),
        }
    }

    /// TokenReview refused the token. When the token was presented for `pod_uid` by a node
    /// entitled to that pod, the pod's earlier verdicts go too: TokenReview's newest answer
    /// wins (a deleted pod's tokens all stop being valid).
    pub fn record_refused(&mut self, key: &str, audience: &str, pod_uid: Option<&str>) {
        self.verdicts.remove(key);
        if let Some(uid) = pod_uid {
            let pod = (audience.to_owned(), uid.to_owned());
            self.pending.remove(&pod);
            if let Some(best) = self.by_pod.remove(&pod) {
                self.verdicts.remove(&best);
            }
        }
    }

    /// While TokenReview cannot be reached: the pod's verified verdict that lasts longest, to
    /// serve a newer token on. It holds only as long as the token TokenReview accepted, never
    /// as long as the unreviewed one claims.
    pub fn fallback_for_pod(
        &self,
        audience: &str,
        pod_uid: &str,
        now: SystemTime,
    ) -> Option<Verdict> {
        let key = self
            .by_pod
            .get(&(audience.to_owned(), pod_uid.to_owned()))?;
        let stored = self.verdicts.get(key)?;
        (stored.audience == audience && stored.review.pod_uid == pod_uid)
            .then(|| self.verdict_at(stored, now))
            .and_then(|cached| match cached {
                Cached::Fresh(verdict) | Cached::Stale(verdict) => Some(verdict),
                Cached::Miss => None,
            })
    }

    /// Keeps `token` as the pod's newest unreviewed token, if it is newer than the one kept.
    pub fn keep_pending(
        &mut self,
        audience: &str,
        pod_uid: &str,
        token: &str,
        expires_at: SystemTime,
    ) {
        let pod = (audience.to_owned(), pod_uid.to_owned());
        if self
            .pending
            .get(&pod)
            .is_some_and(|kept| kept.expires_at >= expires_at)
        {
            return;
        }
        self.pending.insert(
            pod,
            PendingToken {
                audience: audience.to_owned(),
                pod_uid: pod_uid.to_owned(),
                token: Zeroizing::new(token.to_owned()),
                expires_at,
            },
        );
    }

    /// The tokens to review now that the API server may be back; expired ones are dropped.
    pub fn pending(&mut self, now: SystemTime) -> Vec<PendingToken> {
        self.pending.retain(|_, p| p.expires_at > now);
        self.pending.values().cloned().collect()
    }

    fn sweep(&mut self, now: SystemTime) {
        self.verdicts.retain(|_, v| v.valid_until > now);
        let verdicts = &self.verdicts;
        self.by_pod.retain(|_, key| verdicts.contains_key(key));
        self.pending.retain(|_, p| p.expires_at > now);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn status(username: &str, audience: &str, pod: Option<(&str, &str)>) -> TokenReviewStatus {
        let extra = pod.map(|(name, uid)| {
            BTreeMap::from([
                (EXTRA_POD_NAME.to_owned(), vec![name.to_owned()]),
                (EXTRA_POD_UID.to_owned(), vec![uid.to_owned()]),
            ])
        });
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![audience.to_owned()]),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                extra,
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn node_ids_round_trip_and_foreign_ids_do_not_parse() {
        let id = node_id(&td(), "c1", "node-a.example").unwrap();
        assert_eq!(
            id.as_str(),
            "spiffe://example.org/spire/agent/wimsey/c1/node-a.example"
        );
        assert_eq!(
            node_from_id(&td(), "c1", &id).as_deref(),
            Some("node-a.example")
        );
        assert_eq!(node_from_id(&td(), "c2", &id), None);
        let other = TrustDomain::new("other.org").unwrap();
        assert_eq!(node_from_id(&other, "c1", &id), None);
        let workload = td().id_from_path("/ns/default/sa/x").unwrap();
        assert_eq!(node_from_id(&td(), "c1", &workload), None);
        assert!(node_id(&td(), "c1", "bad/name").is_err());
    }

    #[test]
    fn review_needs_audience_service_account_and_pod_binding() {
        let ok = status(
            "system:serviceaccount:wimsey:wimsey-csi",
            "wimsey-node",
            Some(("p", "u")),
        );
        let review = reviewed_token(&ok, "wimsey-node").unwrap();
        assert_eq!(review.namespace, "wimsey");
        assert_eq!(review.pod_uid, "u");
        assert!(matches!(
            reviewed_token(&ok, "wimsey"),
            Err(NodeApiError::Unauthenticated(_))
        ));
        let user = status("alice", "wimsey-node", Some(("p", "u")));
        assert!(matches!(
            reviewed_token(&user, "wimsey-node"),
            Err(NodeApiError::PermissionDenied(_))
        ));
        let unbound = status(
            "system:serviceaccount:wimsey:wimsey-csi",
            "wimsey-node",
            None,
        );
        assert!(matches!(
            reviewed_token(&unbound, "wimsey-node"),
            Err(NodeApiError::PermissionDenied(_))
        ));
        let mut rejected = ok.clone();
        rejected.authenticated = Some(false);
        assert!(matches!(
            reviewed_token(&rejected, "wimsey-node"),
            Err(NodeApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn node_attestation_checks_account_pod_and_node() {
        let review = ReviewedToken {
            namespace: "wimsey".into(),
            service_account: "wimsey-csi".into(),
            pod_name: "csi-x".into(),
            pod_uid: "u1".into(),
        };
        let pod = PluginPod {
            uid: "u1".into(),
            service_account: "wimsey-csi".into(),
            node_name: "n1".into(),
        };
        assert!(check_node_attestation(&review, Some(&pod), "wimsey", "wimsey-csi", "n1").is_ok());
        assert!(check_node_attestation(&review, Some(&pod), "wimsey", "wimsey-csi", "n2").is_err());
        assert!(check_node_attestation(&review, Some(&pod), "wimsey", "other", "n1").is_err());
        assert!(check_node_attestation(&review, None, "wimsey", "wimsey-csi", "n1").is_err());
        let replaced = PluginPod {
            uid: "u2".into(),
            ..pod
        };
        assert!(
            check_node_attestation(&review, Some(&replaced), "wimsey", "wimsey-csi", "n1").is_err()
        );
    }

    #[test]
    fn pod_token_must_name_the_pod() {
        let review = ReviewedToken {
            namespace: "ns".into(),
            service_account: "sa".into(),
            pod_name: "p".into(),
            pod_uid: "u1".into(),
        };
        assert!(check_pod_token(&review, "u1", "ns", "sa").is_ok());
        assert!(check_pod_token(&review, "u2", "ns", "sa").is_err());
        assert!(check_pod_token(&review, "u1", "ns", "other").is_err());
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// An unsigned service-account-shaped JWT (the cache never checks signatures).
    fn token(pod_uid: &str, exp: u64) -> String {
        let claims = serde_json::json!({
            "exp": exp,
            "kubernetes.io": {"namespace": "ns", "pod": {"name": "p", "uid": pod_uid}},
        });
        let payload = wimsey_core::jose::b64url_encode(claims.to_string().as_bytes());
        format!("h.{payload}.s")
    }

    fn reviewed(pod_uid: &str) -> ReviewedToken {
        ReviewedToken {
            namespace: "ns".into(),
            service_account: "sa".into(),
            pod_name: "p".into(),
            pod_uid: pod_uid.into(),
        }
    }

    fn policy() -> VerdictPolicy {
        VerdictPolicy {
            refresh: Duration::from_secs(300),
            stale_recheck: Duration::from_secs(15),
            max_lifetime: Duration::from_secs(24 * 3600),
            sweep_above: 4,
        }
    }

    /// Records a TokenReview acceptance of `token` at `now`.
    fn accept(cache: &mut VerdictCache, token: &str, now: SystemTime) -> Verdict {
        cache.record_accepted(
            verdict_key("wimsey", token),
            "wimsey",
            reviewed("u1"),
            token_expiry(token),
            now,
        )
    }

    #[test]
    fn claims_are_read_with_bounds() {
        let claims = unverified_claims(&token("u1", 1_060)).unwrap();
        assert_eq!(claims.expires_at, at(1_060));
        assert_eq!(claims.pod_uid.as_deref(), Some("u1"));
        assert_eq!(unverified_claims("opaque"), None);
        assert_eq!(unverified_claims("h.!!!.s"), None);
        let huge = format!("h.{}.s", "A".repeat(MAX_TOKEN_LEN));
        assert_eq!(unverified_claims(&huge), None);
        let no_exp = format!("h.{}.s", wimsey_core::jose::b64url_encode(b"{}"));
        assert_eq!(unverified_claims(&no_exp), None);
    }

    #[test]
    fn a_verdict_is_fresh_then_stale_until_the_token_expires_then_gone() {
        let mut cache = VerdictCache::new(policy());
        let t = token("u1", 1_000 + 3_600);
        let verdict = accept(&mut cache, &t, at(1_000));
        assert_eq!(verdict.valid_until, at(4_600));
        assert_eq!(verdict.recheck_at, at(1_300));
        let key = verdict_key("wimsey", &t);
        assert!(matches!(cache.lookup(&key, at(1_299)), Cached::Fresh(_)));
        // Past the refresh: only to be used when TokenReview cannot be reached.
        match cache.lookup(&key, at(1_300)) {
            Cached::Stale(v) => {
                assert_eq!(v.valid_until, at(4_600));
                assert_eq!(v.recheck_at, at(1_315));
            }
            other => panic!("{other:?}"),
        }
        // Near the end, the recheck never goes past the token's expiry.
        match cache.lookup(&key, at(4_595)) {
            Cached::Stale(v) => assert_eq!(v.recheck_at, at(4_600)),
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.lookup(&key, at(4_600)), Cached::Miss);
        // Another audience is another verdict.
        assert_eq!(
            cache.lookup(&verdict_key("wimsey-node", &t), at(1_000)),
            Cached::Miss
        );
    }

    #[test]
    fn a_verdict_never_outlives_the_reviewed_token_or_the_cap() {
        let mut cache = VerdictCache::new(policy());
        // Short token: fresh only until it expires.
        let short = accept(&mut cache, &token("u1", 1_060), at(1_000));
        assert_eq!(short.valid_until, at(1_060));
        assert_eq!(short.recheck_at, at(1_060));
        // A token claiming a year: capped.
        let long = accept(&mut cache, &token("u1", 1_000 + 365 * 86_400), at(1_000));
        assert_eq!(long.valid_until, at(1_000 + 24 * 3600));
        // No exp, or already expired: used for this call, never cached.
        let opaque = cache.record_accepted(
            verdict_key("wimsey", "opaque"),
            "wimsey",
            reviewed("u1"),
            None,
            at(1_000),
        );
        assert_eq!(opaque.valid_until, at(1_000));
        assert_eq!(
            cache.lookup(&verdict_key("wimsey", "opaque"), at(1_000)),
            Cached::Miss
        );
        let expired = token("u1", 900);
        accept(&mut cache, &expired, at(1_000));
        assert_eq!(
            cache.lookup(&verdict_key("wimsey", &expired), at(1_000)),
            Cached::Miss
        );
    }

    #[test]
    fn a_new_token_during_an_outage_serves_on_the_previous_verdict_and_is_kept() {
        let mut cache = VerdictCache::new(policy());
        let old = token("u1", 4_600);
        accept(&mut cache, &old, at(1_000));
        // kubelet republished at 3_880 with a token valid until 7_480; TokenReview is down.
        let new = token("u1", 7_480);
        let fallback = cache.fallback_for_pod("wimsey", "u1", at(3_880)).unwrap();
        assert_eq!(fallback.review, reviewed("u1"));
        // Never past what TokenReview said: the reviewed token's expiry, not the new one's.
        assert_eq!(fallback.valid_until, at(4_600));
        assert!(fallback.recheck_at <= at(4_600));
        cache.keep_pending("wimsey", "u1", &new, at(7_480));
        // An older token does not replace the newest one kept.
        cache.keep_pending("wimsey", "u1", &old, at(4_600));
        let pending = cache.pending(at(3_890));
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].token.as_str(), new);
        assert_eq!(pending[0].pod_uid, "u1");
        // Nothing for another pod or another audience.
        assert_eq!(cache.fallback_for_pod("wimsey", "u2", at(3_880)), None);
        assert_eq!(cache.fallback_for_pod("wimsey-node", "u1", at(3_880)), None);
        // The outage outlasts the old token: no more fallback.
        assert_eq!(cache.fallback_for_pod("wimsey", "u1", at(4_600)), None);
    }

    #[test]
    fn re_review_after_the_outage_replaces_the_pods_verdict_and_clears_the_pending_token() {
        let mut cache = VerdictCache::new(policy());
        accept(&mut cache, &token("u1", 4_600), at(1_000));
        let new = token("u1", 7_480);
        cache.keep_pending("wimsey", "u1", &new, at(7_480));
        // The API server is back: the pending token is reviewed and accepted.
        let pending = cache.pending(at(4_000));
        accept(&mut cache, &pending[0].token, at(4_000));
        assert!(cache.pending(at(4_001)).is_empty());
        let fallback = cache.fallback_for_pod("wimsey", "u1", at(5_000)).unwrap();
        assert_eq!(fallback.valid_until, at(7_480));
        assert!(matches!(
            cache.lookup(&verdict_key("wimsey", &new), at(4_001)),
            Cached::Fresh(_)
        ));
        // An expired pending token is dropped, never reviewed.
        cache.keep_pending("wimsey", "u1", &token("u1", 8_000), at(8_000));
        assert!(cache.pending(at(8_000)).is_empty());
    }

    #[test]
    fn an_offline_verdict_is_stale_at_once_and_its_token_waits_for_review() {
        let mut cache = VerdictCache::new(policy());
        let t = token("u1", 4_600);
        let key = verdict_key("wimsey", &t);
        let verdict = cache.record_verified_offline(
            key.clone(),
            "wimsey",
            reviewed("u1"),
            Some(&t),
            at(4_600),
            at(1_000),
        );
        assert_eq!(verdict.valid_until, at(4_600));
        assert_eq!(verdict.recheck_at, at(1_015));
        assert!(matches!(cache.lookup(&key, at(1_000)), Cached::Stale(_)));
        let pending = cache.pending(at(1_001));
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].token.as_str(), t);
        // Attest (no pod call): nothing kept.
        let node_token = token("u2", 4_600);
        cache.record_verified_offline(
            verdict_key("wimsey-node", &node_token),
            "wimsey-node",
            reviewed("u2"),
            None,
            at(4_600),
            at(1_000),
        );
        assert_eq!(cache.pending(at(1_001)).len(), 1);
    }

    #[test]
    fn a_refusal_for_the_pod_drops_its_fallback() {
        let mut cache = VerdictCache::new(policy());
        let old = token("u1", 4_600);
        accept(&mut cache, &old, at(1_000));
        cache.keep_pending("wimsey", "u1", &token("u1", 7_480), at(7_480));
        let refused = token("u1", 7_500);
        cache.record_refused(&verdict_key("wimsey", &refused), "wimsey", Some("u1"));
        assert_eq!(cache.fallback_for_pod("wimsey", "u1", at(2_000)), None);
        assert!(cache.pending(at(2_000)).is_empty());
        assert_eq!(
            cache.lookup(&verdict_key("wimsey", &old), at(2_000)),
            Cached::Miss
        );
        // Without a pod (Attest), only that token's own verdict goes.
        let node = token("u9", 4_600);
        accept(&mut cache, &node, at(1_000));
        let other = token("u1", 4_600);
        accept(&mut cache, &other, at(1_000));
        cache.record_refused(&verdict_key("wimsey", &node), "wimsey", None);
        assert_eq!(
            cache.lookup(&verdict_key("wimsey", &node), at(1_001)),
            Cached::Miss
        );
        assert!(cache.fallback_for_pod("wimsey", "u1", at(1_001)).is_some());
    }

    #[test]
    fn expired_verdicts_are_swept_past_the_threshold() {
        let mut cache = VerdictCache::new(policy());
        for i in 0..4 {
            accept(&mut cache, &token("u1", 1_010 + i), at(1_000));
        }
        assert_eq!(cache.len(), 4);
        accept(&mut cache, &token("u1", 9_000), at(2_000));
        assert_eq!(cache.len(), 1);
    }

    fn facts(node: &str) -> PodFacts {
        PodFacts {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "p".into(),
            service_account: "sa".into(),
            node_name: node.into(),
        }
    }

    fn stored(node: &str) -> Arc<PodRecord> {
        Arc::new(PodRecord {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "p".into(),
            service_account: "sa".into(),
            node_name: node.into(),
            entries: Vec::new(),
        })
    }

    #[test]
    fn lagging_views_are_unavailable_and_up_to_date_refusals_are_denials() {
        use tonic::Code;
        let known = |node: &str| PodLookup::Known(facts(node));
        let code =
            |r: Result<PlacedPod, NodeApiError>| r.map(|_| Code::Ok).unwrap_or_else(|e| e.code());
        // Caches not synced yet.
        assert_eq!(
            code(place_pod(
                false,
                known("n1"),
                Some(stored("n1")),
                "u1",
                "n1"
            )),
            Code::Unavailable
        );
        // Not known yet, not scheduled yet, entries rendered from an older view.
        assert_eq!(
            code(place_pod(true, PodLookup::Unknown, None, "u1", "n1")),
            Code::Unavailable
        );
        assert_eq!(
            code(place_pod(true, known(""), None, "u1", "n1")),
            Code::Unavailable
        );
        assert_eq!(
            code(place_pod(true, known("n1"), Some(stored("")), "u1", "n1")),
            Code::Unavailable
        );
        // Up to date: on another node, deleted.
        assert_eq!(
            code(place_pod(true, known("n2"), Some(stored("n2")), "u1", "n1")),
            Code::PermissionDenied
        );
        assert_eq!(
            code(place_pod(true, known("n2"), None, "u1", "n1")),
            Code::PermissionDenied
        );
        assert_eq!(
            code(place_pod(true, PodLookup::Deleted, None, "u1", "n1")),
            Code::PermissionDenied
        );
        // On this node, with or without entries.
        assert!(
            place_pod(true, known("n1"), Some(stored("n1")), "u1", "n1")
                .unwrap()
                .record
                .is_some()
        );
        assert!(
            place_pod(true, known("n1"), None, "u1", "n1")
                .unwrap()
                .record
                .is_none()
        );
        // The attesting plugin's pod.
        let review = reviewed("u1");
        assert_eq!(
            plugin_pod(false, known("n1"), &review).unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(
            plugin_pod(true, PodLookup::Unknown, &review)
                .unwrap_err()
                .code(),
            Code::Unavailable
        );
        assert_eq!(
            plugin_pod(true, PodLookup::Deleted, &review)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            plugin_pod(true, known("n1"), &review).unwrap().node_name,
            "n1"
        );
    }

    #[test]
    fn every_error_has_its_code() {
        use tonic::Code;
        let cases = [
            (NodeApiError::NotSynced, Code::Unavailable),
            (NodeApiError::NotYetVisible("x".into()), Code::Unavailable),
            (
                NodeApiError::ReviewUnavailable(super::super::cluster::ReviewUnavailable(
                    "client error (Connect)".into(),
                )),
                Code::Unavailable,
            ),
            (NodeApiError::ShuttingDown, Code::Unavailable),
            (
                NodeApiError::Unauthenticated("token refused"),
                Code::Unauthenticated,
            ),
            (
                NodeApiError::PermissionDenied("elsewhere".into()),
                Code::PermissionDenied,
            ),
            (NodeApiError::NoIdentity, Code::PermissionDenied),
            (NodeApiError::UnknownEntry("e".into()), Code::NotFound),
            (NodeApiError::InvalidArgument("pod"), Code::InvalidArgument),
            (NodeApiError::Internal("x".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
    }
}
