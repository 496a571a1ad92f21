//! TokenReview without an API server: a [`FakeReviewer`] that accepts the tokens it was told
//! about and can be taken "down", and the tokens the tests present (unsigned ones the fake
//! reviews, and ones signed by a service-account issuer key for offline verification).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use wimsey_core::jose::service_account::IssuerKeys;
use wimsey_core::jose::{PublicJwk, sign_compact};
use wimsey_core::keys::SigningKey;
use wimsey_operator::nodeapi::cluster::{PodFacts, ReviewUnavailable, Reviewer};
use wimsey_operator::nodeapi::verdict::{EXTRA_POD_NAME, EXTRA_POD_UID};

/// TokenReview with an "API server" that can be down. Accepts the tokens it was told about.
#[derive(Default)]
pub(crate) struct FakeReviewer {
    pub(crate) down: AtomicBool,
    /// Down the way a vanished API server often is: the call never answers.
    pub(crate) hangs: AtomicBool,
    /// The issuer keys, once published.
    pub(crate) issuer_keys: Mutex<Option<Arc<IssuerKeys>>>,
    pub(crate) accepted: Mutex<HashMap<String, TokenReviewStatus>>,
    /// Reviews answered (accepted or refused) and reviews that failed to reach the API server.
    pub(crate) answered: Mutex<Vec<String>>,
    pub(crate) unreachable: AtomicUsize,
}

impl FakeReviewer {
    pub(crate) fn accept(
        &self,
        token: &str,
        audience: &str,
        namespace: &str,
        sa: &str,
        pod: (&str, &str),
    ) {
        let status = TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![audience.to_owned()]),
            user: Some(UserInfo {
                username: Some(format!("system:serviceaccount:{namespace}:{sa}")),
                extra: Some(BTreeMap::from([
                    (EXTRA_POD_NAME.to_owned(), vec![pod.0.to_owned()]),
                    (EXTRA_POD_UID.to_owned(), vec![pod.1.to_owned()]),
                ])),
                ..UserInfo::default()
            }),
            error: None,
        };
        self.accepted
            .lock()
            .unwrap()
            .insert(format!("{audience}\n{token}"), status);
    }

    /// Publishes `key` as the service-account issuer's (kid `sa-key`).
    pub(crate) fn publish_issuer_key(&self, key: &SigningKey) {
        let mut jwk = PublicJwk::for_signing_key(key).to_json_map();
        jwk.insert("kid".into(), "sa-key".into());
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        let keys = IssuerKeys::from_jwks(ISSUER, jwks.as_bytes()).unwrap();
        *self.issuer_keys.lock().unwrap() = Some(Arc::new(keys));
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub(crate) fn answered(&self, token: &str) -> bool {
        self.answered.lock().unwrap().iter().any(|t| t == token)
    }
}

impl Reviewer for FakeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, ReviewUnavailable>> {
        Box::pin(async move {
            if self.hangs.load(Ordering::SeqCst) {
                self.unreachable.fetch_add(1, Ordering::SeqCst);
                return std::future::pending().await;
            }
            if self.down.load(Ordering::SeqCst) {
                self.unreachable.fetch_add(1, Ordering::SeqCst);
                return Err(ReviewUnavailable("client error (Connect)".into()));
            }
            self.answered.lock().unwrap().push(token.to_owned());
            Ok(self
                .accepted
                .lock()
                .unwrap()
                .get(&format!("{audience}\n{token}"))
                .cloned()
                .unwrap_or(TokenReviewStatus {
                    authenticated: Some(false),
                    ..TokenReviewStatus::default()
                }))
        })
    }

    fn issuer_keys(&self) -> Option<Arc<IssuerKeys>> {
        self.issuer_keys.lock().unwrap().clone()
    }

    fn refresh_issuer_keys(&self) -> BoxFuture<'_, Result<(), ReviewUnavailable>> {
        Box::pin(async { Ok(()) })
    }
}

pub(crate) const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A pod-bound service-account token for `pod`, signed by the issuer `key`, expiring
/// `expires_in` seconds from now (negative: already expired).
pub(crate) fn signed_token(
    key: &SigningKey,
    audience: &str,
    pod: &PodFacts,
    expires_in: i64,
) -> String {
    signed_token_with_kid(key, "sa-key", audience, pod, expires_in)
}

pub(crate) fn signed_token_with_kid(
    key: &SigningKey,
    kid: &str,
    audience: &str,
    pod: &PodFacts,
    expires_in: i64,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": [audience],
        "sub": format!("system:serviceaccount:{}:{}", pod.namespace, pod.service_account),
        "iat": now - 3600,
        "nbf": now - 3600,
        "exp": now + expires_in,
        "kubernetes.io": {
            "namespace": pod.namespace,
            "serviceaccount": {"name": pod.service_account, "uid": "sa-uid"},
            "pod": {"name": pod.name, "uid": pod.uid},
        },
    });
    let header = serde_json::json!({"kid": kid, "typ": "JWT"});
    let (serde_json::Value::Object(header), serde_json::Value::Object(claims)) = (header, claims)
    else {
        unreachable!()
    };
    sign_compact(&header, &claims, key).unwrap()
}

/// A service-account-shaped JWT for `pod_uid`, valid for `ttl` (unsigned: the fake reviews it).
pub(crate) fn token(pod_uid: &str, serial: u32, ttl: Duration) -> String {
    let exp = (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "exp": exp,
        "jti": serial,
        "kubernetes.io": {"pod": {"uid": pod_uid}},
    });
    let payload = wimsey_core::jose::b64url_encode(claims.to_string().as_bytes());
    format!("eyJhbGciOiJub25lIn0.{payload}.sig")
}
