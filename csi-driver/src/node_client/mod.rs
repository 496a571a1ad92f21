//! The operator's node API, from the plugin's side: an [`IdentitySource`].
//!
//! The plugin attests with its projected service-account token (audience `wimsey-node`) and a
//! CSR for a node key generated here, over TLS that checks the operator's SVID against the
//! mounted bundle file; it re-attests at half the node SVID's life. Each attached pod gets a task
//! that watches the pod's entries (WatchPod), generates a P-256 key per entry locally, sends only
//! CSRs, renews at half-life with jittered backoff, and publishes
//! [`crate::identity::IdentitySnapshot`]s.
//!
//! Outages are ridden out: every unary call has a deadline; a failed re-attestation keeps the
//! node session while it is valid; `Unavailable` is retried and never takes SVIDs away; a
//! denial does so only once it has held for [`NodeClientConfig::denial_grace`].

pub mod grace;
mod pod;
pub mod schedule;
mod tls;
pub mod transport;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use wimsey_core::bundle::{TrustDomainBundle, parse_x509_authorities_pem};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::reserved;
use wimsey_core::x509::build_csr;
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_proto::wimsey::node::v1::node_client::NodeClient as NodeGrpc;
use wimsey_proto::wimsey::node::v1::{AttestRequest, Bundles};
use wimsey_runtime::svid_tls::SharedRoots;
use zeroize::Zeroizing;

use crate::identity::{IdentitySource, PodInfo};
use crate::metrics::Metrics;
pub use grace::DEFAULT_DENIAL_GRACE;
pub use pod::NodePod;
pub use transport::NodeApiTransport;

/// How often [`NodeClient::keep_session`] looks at the session (renewal itself is at half-life).
const SESSION_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The default deadline of one unary node API call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the plugin's own token and the bootstrap bundle are mounted by default.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/wimsey/token";
pub const DEFAULT_BUNDLE_PATH: &str = "/var/run/wimsey/bundle/bundle.pem";

/// How to reach and trust the operator.
#[derive(Debug, Clone)]
pub struct NodeClientConfig {
    /// `host:port` of the node API.
    pub endpoint: String,
    /// This node's name (the plugin pod's `spec.nodeName`).
    pub node_name: String,
    pub trust_domain: TrustDomain,
    /// The operator's SVID ID; `spiffe://<td>/wimsey/operator` by default.
    pub server_id: SpiffeId,
    /// The plugin's projected token for audience `wimsey-node`.
    pub token_path: PathBuf,
    /// PEM X.509 roots to trust the operator with before the first attestation.
    pub bundle_path: PathBuf,
    /// Deadline of each unary call (Attest, SignX509Svids, Mint*, and WatchPod's first answer).
    pub call_timeout: Duration,
    /// How long a denial must hold before a pod's SVIDs (and files) are taken away.
    pub denial_grace: Duration,
    /// TCP_NODELAY, HTTP/2 keepalive and timeouts of the node API connection.
    pub transport: NodeApiTransport,
}

impl NodeClientConfig {
    /// `endpoint` is `host:port`; an `https://` prefix (as a Service URL is often written) is
    /// accepted and dropped.
    pub fn new(
        endpoint: impl AsRef<str>,
        node_name: String,
        trust_domain: TrustDomain,
    ) -> Result<Self, NodeClientError> {
        let server_id = reserved::operator_id(&trust_domain)
            .map_err(|e| NodeClientError::Config(format!("operator ID: {e}")))?;
        Ok(Self {
            endpoint: normalize_endpoint(endpoint.as_ref())?,
            node_name,
            trust_domain,
            server_id,
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            bundle_path: PathBuf::from(DEFAULT_BUNDLE_PATH),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            denial_grace: DEFAULT_DENIAL_GRACE,
            transport: NodeApiTransport::default(),
        })
    }
}

/// `host:port` from `host:port`, `https://host:port` or `https://host:port/`.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, NodeClientError> {
    let bare = endpoint
        .strip_prefix("https://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let valid = bare
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !bare.contains('/')
        && !bare.contains("://");
    if valid {
        Ok(bare.to_owned())
    } else {
        Err(NodeClientError::Endpoint(endpoint.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeClientError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid node API endpoint {0:?} (want host:port)")]
    Endpoint(String),
    #[error("invalid node API client settings: {0}")]
    Config(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("node API: {0}")]
    Status(#[from] tonic::Status),
    #[error("invalid response from the node API: {0}")]
    InvalidResponse(String),
    #[error("{0}")]
    Key(#[from] wimsey_core::keys::KeyError),
    #[error("{0}")]
    X509(#[from] wimsey_core::x509::X509Error),
    #[error("{0}")]
    Bundle(#[from] wimsey_core::bundle::BundleError),
}

impl NodeClientError {
    pub fn label(&self) -> &'static str {
        match self {
            NodeClientError::Read { .. } => "read",
            NodeClientError::Endpoint(_) => "endpoint",
            NodeClientError::Config(_) => "config",
            NodeClientError::Tls(_) => "tls",
            NodeClientError::Status(_) => "status",
            NodeClientError::InvalidResponse(_) => "invalid_response",
            NodeClientError::Key(_) => "key",
            NodeClientError::X509(_) => "x509",
            NodeClientError::Bundle(_) => "bundle",
        }
    }

    /// The pod is not entitled (no entries, not on this node): the pod has no identity.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, NodeClientError::Status(s) if s.code() == tonic::Code::PermissionDenied)
    }
}

/// `message` as a request the server may drop after `timeout` (the grpc-timeout header).
pub(crate) fn with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Runs one call under a client-side deadline too: a frozen connection or server must not hold
/// a renewal forever.
pub(crate) async fn within<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer from the node API within {timeout:?}"
            )))
        })
}

/// One node attestation: the node SVID's ID and lifetime, and the mTLS channel presenting it.
#[derive(Debug, Clone)]
pub struct NodeSession {
    pub spiffe_id: String,
    pub expires_at: SystemTime,
    renew_at: SystemTime,
    /// Failed re-attestations since this session was issued.
    failed_renewals: u32,
    /// No re-attestation before this (backoff after a failed one), even when refused.
    retry_not_before: SystemTime,
    channel: Channel,
    /// Set when TLS on `channel` fails: the operator no longer takes this session.
    refusal: tls::TlsRefusal,
}

impl NodeSession {
    /// A gRPC client on the mTLS channel.
    pub fn grpc(&self) -> NodeGrpc<Channel> {
        NodeGrpc::new(self.channel.clone())
    }
}

struct Inner {
    config: NodeClientConfig,
    roots: SharedRoots,
    session: tokio::sync::Mutex<Option<NodeSession>>,
    pods: Mutex<HashMap<String, NodePod>>,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    /// True while `session` holds an unexpired node SVID: a readiness gate of the plugin.
    session_established: watch::Sender<bool>,
}

/// The node API client; implements [`IdentitySource`]. Cheap to clone.
#[derive(Clone)]
pub struct NodeClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl NodeClient {
    /// Reads the bootstrap bundle. Must be called inside a tokio runtime; pod tasks run there.
    pub fn new(config: NodeClientConfig) -> Result<Self, NodeClientError> {
        Self::with_metrics(config, Arc::new(Metrics::new()))
    }

    /// [`NodeClient::new`], recording failures and the session state into `metrics`.
    pub fn with_metrics(
        config: NodeClientConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, NodeClientError> {
        let roots = read_bundle_file(&config)?;
        metrics.set_node_session(false);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                roots: Arc::new(std::sync::RwLock::new(roots)),
                session: tokio::sync::Mutex::new(None),
                pods: Mutex::new(HashMap::new()),
                runtime: tokio::runtime::Handle::current(),
                metrics,
                session_established: watch::channel(false).0,
            }),
        })
    }

    /// True while the plugin holds a valid node session.
    pub fn session_state(&self) -> watch::Receiver<bool> {
        self.inner.session_established.subscribe()
    }

    pub(crate) fn count_issuance_error(&self, label: &'static str) {
        self.inner.metrics.count_issuance_error(label);
    }

    /// Attests at once and keeps the node session current even while no pod needs it, so the
    /// session state (readiness, the gauge) says whether this node can get identities. Returns
    /// when `shutdown` is cancelled.
    pub async fn keep_session(&self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let wait = match self.channel().await {
                Ok(_) => {
                    failures = 0;
                    SESSION_CHECK_INTERVAL
                }
                Err(error) => {
                    tracing::warn!(%error, label = error.label(), node = %self.inner.config.node_name,
                        "no node session yet; retrying");
                    failures = failures.saturating_add(1);
                    schedule::backoff(
                        failures,
                        Duration::from_secs(1),
                        SESSION_CHECK_INTERVAL,
                        schedule::jitter(),
                    )
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The mTLS channel ([`NodeClient::session_channel`]); counts a failure and publishes the
    /// session state.
    pub(crate) async fn channel(&self) -> Result<Channel, NodeClientError> {
        let channel = self.session_channel().await;
        if let Err(error) = &channel {
            self.count_issuance_error(error.label());
        }
        let established = self
            .inner
            .session
            .lock()
            .await
            .as_ref()
            .is_some_and(|session| SystemTime::now() < session.expires_at);
        self.inner.session_established.send_replace(established);
        self.inner.metrics.set_node_session(established);
        channel
    }

    pub fn config(&self) -> &NodeClientConfig {
        &self.inner.config
    }

    /// The mTLS channel, attesting first if there is no node SVID, it is past half-life, or TLS
    /// on it failed (the operator replaced its CA). When re-attestation fails, a session that is
    /// still valid is kept (and re-attestation retried with backoff).
    async fn session_channel(&self) -> Result<Channel, NodeClientError> {
        let mut session = self.inner.session.lock().await;
        if let Some(current) = session.as_mut() {
            let now = SystemTime::now();
            if current.refusal.take() {
                tracing::warn!(node = %self.inner.config.node_name,
                    "TLS to the node API failed on this node's session; attesting again");
                current.renew_at = current.renew_at.min(now.max(current.retry_not_before));
            }
            if now < current.renew_at {
                return Ok(current.channel.clone());
            }
        }
        match self.attest().await {
            Ok(fresh) => {
                let channel = fresh.channel.clone();
                *session = Some(fresh);
                Ok(channel)
            }
            Err(error) => {
                let Some(current) = session.as_mut() else {
                    return Err(error);
                };
                let now = SystemTime::now();
                let Some(retry_at) = schedule::retry_attestation_at(
                    now,
                    current.expires_at,
                    current.failed_renewals,
                    schedule::jitter(),
                ) else {
                    return Err(error);
                };
                tracing::warn!(%error, label = error.label(), node = %self.inner.config.node_name,
                    "re-attestation failed; keeping the node session while it is valid");
                self.count_issuance_error(error.label());
                current.failed_renewals = current.failed_renewals.saturating_add(1);
                current.renew_at = retry_at;
                current.retry_not_before = retry_at;
                Ok(current.channel.clone())
            }
        }
    }

    /// Attests once (reading the token file) and returns the new node credential.
    pub async fn attest(&self) -> Result<NodeSession, NodeClientError> {
        let config = &self.inner.config;
        // A projected token is a few KiB on a tmpfs: a blocking read is fine.
        let token = std::fs::read_to_string(&config.token_path).map_err(|source| {
            NodeClientError::Read {
                path: config.token_path.display().to_string(),
                source,
            }
        })?;
        let token = Zeroizing::new(token.trim().to_owned());
        self.merge_bundle_file();
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256)?;
        // The server takes only the key from the CSR; the ID here just describes the request.
        let placeholder = reserved::node_csr_placeholder_id(&config.trust_domain)
            .map_err(|e| NodeClientError::InvalidResponse(e.to_string()))?;
        let csr = build_csr(&key, &placeholder, &[])?;
        let issued_at = SystemTime::now();
        let mut grpc = self.server_auth_only()?;
        let request = with_deadline(
            AttestRequest {
                token: token.to_string(),
                node_name: config.node_name.clone(),
                csr,
            },
            config.call_timeout,
        );
        let response = within(config.call_timeout, grpc.attest(request))
            .await?
            .into_inner();
        if response.svid_chain.is_empty() {
            return Err(NodeClientError::InvalidResponse(
                "empty node SVID chain".into(),
            ));
        }
        if let Some(bundles) = &response.bundles {
            self.update_roots(bundles)?;
        }
        let expires_at = unix_time(response.expires_at);
        tracing::info!(node = %config.node_name, id = %response.spiffe_id, "node attested");
        let cert = tls::ClientCert {
            chain: response.svid_chain,
            key_pkcs8: key.pkcs8_der(),
        };
        let refusal = tls::TlsRefusal::default();
        let channel = tls::channel(
            &config.endpoint,
            self.inner.roots.clone(),
            &config.trust_domain,
            &config.server_id,
            Some(&cert),
            &config.transport,
            refusal.clone(),
        )?;
        Ok(NodeSession {
            spiffe_id: response.spiffe_id,
            expires_at,
            renew_at: schedule::renew_at(issued_at, expires_at),
            failed_renewals: 0,
            retry_not_before: UNIX_EPOCH,
            channel,
            refusal,
        })
    }

    /// Adds the roots of the (kubelet-refreshed) bundle file to those learned from the operator,
    /// so a plugin that missed a CA rotation while disconnected can still reach the operator.
    fn merge_bundle_file(&self) {
        match read_bundle_file(&self.inner.config) {
            Ok(from_file) => {
                let mut roots = self.inner.roots.write().unwrap_or_else(|e| e.into_inner());
                for root in from_file {
                    if !roots.contains(&root) {
                        roots.push(root);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "re-reading the bundle file"),
        }
    }

    /// A client over TLS that authenticates the server only: enough for Attest, refused for
    /// everything else.
    pub fn server_auth_only(&self) -> Result<NodeGrpc<Channel>, NodeClientError> {
        let config = &self.inner.config;
        let channel = tls::channel(
            &config.endpoint,
            self.inner.roots.clone(),
            &config.trust_domain,
            &config.server_id,
            None,
            &config.transport,
            // Attestation has no session to give up.
            tls::TlsRefusal::default(),
        )?;
        Ok(NodeGrpc::new(channel))
    }

    /// Parses the bundles of a response and trusts the new X.509 roots of our trust domain.
    pub(crate) fn update_roots(&self, bundles: &Bundles) -> Result<ParsedBundles, NodeClientError> {
        let parsed = parse_bundles(&self.inner.config.trust_domain, bundles)?;
        let mut roots = self.inner.roots.write().unwrap_or_else(|e| e.into_inner());
        if !parsed.own.x509_authorities.is_empty() {
            *roots = parsed.own.x509_authorities.clone();
        }
        Ok(parsed)
    }
}

/// Our bundle and the federated ones, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedBundles {
    pub(crate) own: TrustDomainBundle,
    pub(crate) federated: std::collections::BTreeMap<TrustDomain, TrustDomainBundle>,
}

fn parse_bundles(
    trust_domain: &TrustDomain,
    bundles: &Bundles,
) -> Result<ParsedBundles, NodeClientError> {
    let own = bundles
        .own
        .as_ref()
        .ok_or_else(|| NodeClientError::InvalidResponse("no bundle".into()))?;
    if own.trust_domain != trust_domain.name() {
        return Err(NodeClientError::InvalidResponse(format!(
            "bundle for trust domain {:?}, expected {}",
            own.trust_domain, trust_domain
        )));
    }
    let own = TrustDomainBundle::from_spiffe_jwks(trust_domain.clone(), &own.spiffe_bundle)?;
    let mut federated = std::collections::BTreeMap::new();
    for bundle in &bundles.federated {
        let td = TrustDomain::new(&bundle.trust_domain).map_err(|e| {
            NodeClientError::InvalidResponse(format!("federated trust domain: {e}"))
        })?;
        let parsed = TrustDomainBundle::from_spiffe_jwks(td.clone(), &bundle.spiffe_bundle)?;
        federated.insert(td, parsed);
    }
    Ok(ParsedBundles { own, federated })
}

fn read_bundle_file(config: &NodeClientConfig) -> Result<Vec<Vec<u8>>, NodeClientError> {
    let pem =
        std::fs::read_to_string(&config.bundle_path).map_err(|source| NodeClientError::Read {
            path: config.bundle_path.display().to_string(),
            source,
        })?;
    Ok(parse_x509_authorities_pem(&pem)?)
}

fn unix_time(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or_default())
}

impl IdentitySource for NodeClient {
    type Pod = NodePod;

    fn attach(&self, pod: PodInfo) -> NodePod {
        let mut pods = self.inner.pods.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = pods.get(&pod.uid) {
            existing.refresh_token(pod.token);
            return existing.clone();
        }
        let handle = NodePod::start(self.clone(), pod, &self.inner.runtime);
        pods.insert(handle.uid().to_owned(), handle.clone());
        handle
    }

    fn detach(&self, pod_uid: &str) {
        let removed = self
            .inner
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod_uid);
        if let Some(pod) = removed {
            pod.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(td: &str) -> wimsey_proto::wimsey::node::v1::TrustBundle {
        let bundle = TrustDomainBundle::new(TrustDomain::new(td).unwrap());
        wimsey_proto::wimsey::node::v1::TrustBundle {
            trust_domain: td.to_owned(),
            spiffe_bundle: bundle.to_spiffe_jwks().unwrap().into_bytes(),
        }
    }

    #[test]
    fn bundles_must_be_for_our_trust_domain() {
        let ours = TrustDomain::new("example.org").unwrap();
        let good = Bundles {
            own: Some(bundle("example.org")),
            federated: vec![bundle("other.org")],
        };
        let parsed = parse_bundles(&ours, &good).unwrap();
        assert_eq!(parsed.own.trust_domain, ours);
        assert!(
            parsed
                .federated
                .contains_key(&TrustDomain::new("other.org").unwrap())
        );
        let foreign = Bundles {
            own: Some(bundle("evil.org")),
            federated: Vec::new(),
        };
        assert!(parse_bundles(&ours, &foreign).is_err());
        let missing = Bundles {
            own: None,
            federated: Vec::new(),
        };
        assert!(parse_bundles(&ours, &missing).is_err());
    }

    #[test]
    fn endpoints_accept_host_port_and_https_urls() {
        assert_eq!(
            normalize_endpoint("10.0.0.1:8443").unwrap(),
            "10.0.0.1:8443"
        );
        assert_eq!(
            normalize_endpoint("https://10.0.0.1:8443").unwrap(),
            "10.0.0.1:8443"
        );
        assert_eq!(
            normalize_endpoint("https://op.svc:8443/").unwrap(),
            "op.svc:8443"
        );
        assert_eq!(normalize_endpoint("[::1]:8443").unwrap(), "[::1]:8443");
        for bad in [
            "10.0.0.1",
            "http://x:1",
            "https://x:1/path",
            ":8443",
            "x:port",
        ] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
    }
}
