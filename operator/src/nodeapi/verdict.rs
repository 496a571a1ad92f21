//! The node API's decisions as plain functions: node SVID IDs, TokenReview verdicts, and whether
//! a node may act for a pod.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use wimsey_core::reserved;
use wimsey_core::{SpiffeId, TrustDomain};

use super::NodeApiError;

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

/// The `exp` claim of a JWT, unverified: only used to bound how long a verdict that TokenReview
/// gave for the same token is cached.
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = wimsey_core::jose::b64url_decode(payload, "token payload").ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// How long a positive TokenReview verdict may be reused: until the token expires, at most
/// `max_cache`.
pub fn verdict_valid_until(token: &str, now: SystemTime, max_cache: Duration) -> SystemTime {
    let cap = now + max_cache;
    token_expiry(token).map_or(now, |exp| exp.min(cap))
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

    #[test]
    fn verdicts_are_cached_until_the_token_expires_at_most_the_cap() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let token = |exp: u64| {
            let payload = wimsey_core::jose::b64url_encode(format!("{{\"exp\":{exp}}}").as_bytes());
            format!("h.{payload}.s")
        };
        assert_eq!(
            verdict_valid_until(&token(1_060), now, Duration::from_secs(300)),
            UNIX_EPOCH + Duration::from_secs(1_060)
        );
        assert_eq!(
            verdict_valid_until(&token(9_000), now, Duration::from_secs(300)),
            now + Duration::from_secs(300)
        );
        assert_eq!(
            verdict_valid_until("opaque", now, Duration::from_secs(300)),
            now
        );
    }
}
