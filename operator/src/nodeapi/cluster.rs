//! What the node API needs from the cluster, as two small seams: [`ClusterView`] (where pods
//! run, from the informer caches, never a live API call) and [`Reviewer`] (TokenReview, the one
//! call that must reach the API server, and the issuer keys that stand in for it while it
//! cannot be reached). The kube implementations are [`KubeReviewer`] and
//! [`crate::reconcile::PodDirectory`]; tests put fakes in their place, so the node API can run
//! in-process with no API server, and with one that is "down".

use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use wimsey_core::jose::service_account::{IssuerKeys, discovery_issuer};

/// The facts about a pod the node API decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// `spec.nodeName`; empty while unscheduled.
    pub node_name: String,
}

/// What the caches know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodLookup {
    Known(PodFacts),
    /// Seen, then deleted: a definite answer, unlike [`PodLookup::Unknown`].
    Deleted,
    /// Not seen (yet): the caches may lag behind kubelet.
    Unknown,
}

/// The operator's view of the cluster's pods: informer caches, so it answers during an API
/// server outage with what was last seen.
pub trait ClusterView: Send + Sync + 'static {
    /// True once the caches have delivered their first full list; before that every lookup
    /// would say "unknown" for pods that exist.
    fn synced(&self) -> bool;
    fn pod(&self, uid: &str) -> PodLookup;
    fn pod_named(&self, namespace: &str, name: &str) -> PodLookup;
}

/// The API server could not answer a TokenReview (down, unreachable, throttling, or an error
/// status): the token is neither valid nor invalid as far as we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TokenReview unavailable: {0}")]
pub struct ReviewUnavailable(pub String);

/// TokenReview, and the service-account issuer's public keys.
pub trait Reviewer: Send + Sync + 'static {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, ReviewUnavailable>>;

    /// The issuer keys last fetched, to verify tokens offline while TokenReview cannot be
    /// reached; `None` until a fetch has succeeded.
    fn issuer_keys(&self) -> Option<Arc<IssuerKeys>>;

    /// Fetches the issuer keys again; on failure the last good keys stay.
    fn refresh_issuer_keys(&self) -> BoxFuture<'_, Result<(), ReviewUnavailable>>;
}

/// Where the API server publishes its service-account issuer (OpenID discovery).
pub const ISSUER_DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const ISSUER_JWKS_PATH: &str = "/openid/v1/jwks";

/// TokenReview through the API server; issuer keys from its discovery endpoints.
#[derive(Clone)]
pub struct KubeReviewer {
    client: Client,
    reviews: Api<TokenReview>,
    keys: Arc<RwLock<Option<Arc<IssuerKeys>>>>,
}

impl KubeReviewer {
    pub fn new(client: Client) -> Self {
        Self {
            reviews: Api::all(client.clone()),
            client,
            keys: Arc::default(),
        }
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, ReviewUnavailable> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| ReviewUnavailable(e.to_string()))?;
        self.client
            .request_text(request)
            .await
            .map(String::into_bytes)
            .map_err(|e| ReviewUnavailable(format!("GET {path}: {e}")))
    }
}

impl std::fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeReviewer").finish_non_exhaustive()
    }
}

impl Reviewer for KubeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, ReviewUnavailable>> {
        Box::pin(async move {
            let request = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(vec![audience.to_owned()]),
                },
                ..TokenReview::default()
            };
            let response = self
                .reviews
                .create(&PostParams::default(), &request)
                .await
                .map_err(|e| ReviewUnavailable(e.to_string()))?;
            // A review without a status is an API server fault, not a verdict on the token.
            response
                .status
                .ok_or_else(|| ReviewUnavailable("TokenReview returned no status".into()))
        })
    }

    fn issuer_keys(&self) -> Option<Arc<IssuerKeys>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn refresh_issuer_keys(&self) -> BoxFuture<'_, Result<(), ReviewUnavailable>> {
        Box::pin(async move {
            let issuer = discovery_issuer(&self.get(ISSUER_DISCOVERY_PATH).await?)
                .map_err(|e| ReviewUnavailable(format!("issuer discovery: {e}")))?;
            let keys = IssuerKeys::from_jwks(&issuer, &self.get(ISSUER_JWKS_PATH).await?)
                .map_err(|e| ReviewUnavailable(format!("issuer keys: {e}")))?;
            *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
            Ok(())
        })
    }
}
