//! Kubernetes service-account tokens verified offline, against the keys the API server publishes
//! for its service-account issuer (`/.well-known/openid-configuration` and `/openid/v1/jwks`).
//!
//! This is the fallback for when TokenReview cannot be reached: it proves the token was signed by
//! the cluster's issuer for the right audience and is within its lifetime, and names the pod it is
//! bound to. It cannot see revocation (a deleted pod or service account), so callers must check
//! the pod against their own view of the cluster, and prefer TokenReview whenever it answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::jwt_svid::{audience_values, numeric_date};
use super::{CompactJws, JoseError, PublicJwk, clip, parse_strict_object, unix_seconds};

/// The largest JWKS document accepted from the API server.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The most keys kept from one JWKS (an issuer rotating keys publishes a handful).
pub const MAX_ISSUER_KEYS: usize = 32;
/// Clock skew allowed for `exp` and `nbf`, as the API server's own authenticator allows.
pub const LEEWAY: Duration = Duration::from_secs(60);

/// Why issuer keys were refused or a token did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAccountTokenError {
    #[error(transparent)]
    Jose(#[from] JoseError),
    #[error("the issuer is empty")]
    EmptyIssuer,
    #[error("the JWKS is {0} bytes long; the limit is {MAX_JWKS_BYTES}")]
    JwksTooLarge(usize),
    #[error("the JWKS has no usable signing key")]
    NoKeys,
    #[error("the JWKS has {0} keys; the limit is {MAX_ISSUER_KEYS}")]
    TooManyKeys(usize),
    #[error("the JWKS is malformed: {0}")]
    MalformedJwks(&'static str),
    #[error("token alg {0} is not one the API server signs with")]
    AlgNotAllowed(super::JwsAlgorithm),
    #[error("no issuer key \"{0}\"")]
    UnknownKey(String),
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token is not for this audience")]
    WrongAudience,
    #[error("token missing {0} claim")]
    MissingClaim(&'static str),
    #[error("claim {0} has the wrong type")]
    ClaimType(&'static str),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not bound to a pod")]
    NotPodBound,
    #[error("the token's subject does not match its service account")]
    SubjectMismatch,
}

/// The issuer's name and its published verification keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerKeys {
    issuer: String,
    keys: Vec<PublicJwk>,
}

impl IssuerKeys {
    /// Reads the issuer's JWKS (`jwks_json`): keys that are not signature keys (`use` other than
    /// `sig`) or that we cannot use are skipped; none left is an error.
    pub fn from_jwks(issuer: &str, jwks_json: &[u8]) -> Result<Self, ServiceAccountTokenError> {
        if issuer.is_empty() {
            return Err(ServiceAccountTokenError::EmptyIssuer);
        }
        if jwks_json.len() > MAX_JWKS_BYTES {
            return Err(ServiceAccountTokenError::JwksTooLarge(jwks_json.len()));
        }
        let document = parse_strict_object(jwks_json)
            .map_err(|_| ServiceAccountTokenError::MalformedJwks("not a JSON object"))?;
        let Some(Value::Array(entries)) = document.get("keys") else {
            return Err(ServiceAccountTokenError::MalformedJwks("no keys array"));
        };
        if entries.len() > MAX_ISSUER_KEYS {
            return Err(ServiceAccountTokenError::TooManyKeys(entries.len()));
        }
        let keys: Vec<PublicJwk> = entries
            .iter()
            .filter_map(Value::as_object)
            .filter(|jwk| jwk.get("use").is_none_or(|u| u == "sig"))
            .filter_map(|jwk| PublicJwk::from_json_map(jwk).ok())
            .collect();
        if keys.is_empty() {
            return Err(ServiceAccountTokenError::NoKeys);
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            keys,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether a key with this `kid` is among the issuer's.
    pub fn has_key(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }

    /// Whether `token`'s header names a key that is not among these (a key published after
    /// they were fetched). A token without `kid`, or one that does not parse, says nothing.
    pub fn lacks_key_of(&self, token: &str) -> bool {
        CompactJws::parse(token)
            .ok()
            .and_then(|jws| jws.kid().ok().flatten().map(|kid| !self.has_key(kid)))
            .unwrap_or(false)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The `issuer` of an OpenID provider configuration document (bounded like a JWKS).
pub fn discovery_issuer(document: &[u8]) -> Result<String, ServiceAccountTokenError> {
    if document.len() > MAX_JWKS_BYTES {
        return Err(ServiceAccountTokenError::JwksTooLarge(document.len()));
    }
    let document = parse_strict_object(document)
        .map_err(|_| ServiceAccountTokenError::MalformedJwks("discovery is not a JSON object"))?;
    match document.get("issuer") {
        Some(Value::String(issuer)) if !issuer.is_empty() => Ok(issuer.clone()),
        _ => Err(ServiceAccountTokenError::EmptyIssuer),
    }
}

/// Who a verified pod-bound service-account token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBoundToken {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub expires_at: SystemTime,
}

/// Verifies a pod-bound service-account token for `audience` at `now`: signed by one of the
/// issuer's keys (chosen by `kid`, or any when the token has none), from that issuer, for that
/// audience, within its lifetime, its `sub` naming the service account its `kubernetes.io`
/// claim names, and bound to a pod.
pub fn verify_pod_token(
    token: &str,
    keys: &IssuerKeys,
    audience: &str,
    now: SystemTime,
) -> Result<PodBoundToken, ServiceAccountTokenError> {
    let jws = CompactJws::parse(token)?;
    if !jws.alg().is_spiffe_alg() {
        return Err(ServiceAccountTokenError::AlgNotAllowed(jws.alg()));
    }
    verify_signature(&jws, keys)?;
    let claims = jws.claims();
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == keys.issuer => {}
        Some(Value::String(_)) => return Err(ServiceAccountTokenError::WrongIssuer),
        Some(_) => return Err(ServiceAccountTokenError::ClaimType("iss")),
        None => return Err(ServiceAccountTokenError::MissingClaim("iss")),
    }
    let audiences = audience_values(claims)
        .map_err(|_| ServiceAccountTokenError::ClaimType("aud"))?
        .unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(ServiceAccountTokenError::WrongAudience);
    }
    let expires_at = check_lifetime(claims, now)?;
    let bound = pod_binding(claims)?;
    let expected_sub = format!(
        "system:serviceaccount:{}:{}",
        bound.namespace, bound.service_account
    );
    match claims.get("sub") {
        Some(Value::String(sub)) if *sub == expected_sub => {}
        Some(_) => return Err(ServiceAccountTokenError::SubjectMismatch),
        None => return Err(ServiceAccountTokenError::MissingClaim("sub")),
    }
    Ok(PodBoundToken {
        expires_at,
        ..bound
    })
}

fn verify_signature(jws: &CompactJws, keys: &IssuerKeys) -> Result<(), ServiceAccountTokenError> {
    match jws.kid()? {
        Some(kid) => {
            let key = keys
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .ok_or_else(|| ServiceAccountTokenError::UnknownKey(clip(kid)))?;
            Ok(jws.verify(key)?)
        }
        None => {
            let mut result = Err(ServiceAccountTokenError::UnknownKey(String::new()));
            for key in &keys.keys {
                result = jws.verify(key).map_err(ServiceAccountTokenError::from);
                if result.is_ok() {
                    break;
                }
            }
            result
        }
    }
}

fn check_lifetime(
    claims: &Map<String, Value>,
    now: SystemTime,
) -> Result<SystemTime, ServiceAccountTokenError> {
    let date =
        |name| numeric_date(claims, name).map_err(|_| ServiceAccountTokenError::ClaimType(name));
    let now_secs = unix_seconds(now);
    let leeway = LEEWAY.as_secs() as i64;
    let exp = date("exp")?.ok_or(ServiceAccountTokenError::MissingClaim("exp"))?;
    if now_secs.saturating_sub(leeway) >= exp {
        return Err(ServiceAccountTokenError::Expired);
    }
    if let Some(nbf) = date("nbf")?
        && now_secs.saturating_add(leeway) < nbf
    {
        return Err(ServiceAccountTokenError::NotYetValid);
    }
    let exp = u64::try_from(exp).map_err(|_| ServiceAccountTokenError::ClaimType("exp"))?;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .ok_or(ServiceAccountTokenError::ClaimType("exp"))
}

/// The `kubernetes.io` claim of a pod-bound token: namespace, service account and pod.
fn pod_binding(claims: &Map<String, Value>) -> Result<PodBoundToken, ServiceAccountTokenError> {
    let kubernetes = match claims.get("kubernetes.io") {
        Some(Value::Object(k)) => k,
        Some(_) => return Err(ServiceAccountTokenError::ClaimType("kubernetes.io")),
        None => return Err(ServiceAccountTokenError::NotPodBound),
    };
    let text = |value: Option<&Value>, name: &'static str| match value {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ServiceAccountTokenError::ClaimType(name)),
    };
    let namespace = text(kubernetes.get("namespace"), "kubernetes.io.namespace")?;
    let service_account = text(
        kubernetes.get("serviceaccount").and_then(|s| s.get("name")),
        "kubernetes.io.serviceaccount.name",
    )?;
    let Some(pod) = kubernetes.get("pod") else {
        return Err(ServiceAccountTokenError::NotPodBound);
    };
    Ok(PodBoundToken {
        namespace,
        service_account,
        pod_name: text(pod.get("name"), "kubernetes.io.pod.name")?,
        pod_uid: text(pod.get("uid"), "kubernetes.io.pod.uid")?,
        expires_at: UNIX_EPOCH,
    })
}

#[cfg(test)]
#[path = "service_account_tests.rs"]
mod tests;
