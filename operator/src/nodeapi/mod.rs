//! The node API (`wimsey.node.v1.Node`): how CSI plugins get identities for their pods.
//!
//! One TLS port. `Attest` needs no client certificate: the plugin proves itself with its projected
//! service-account token (audience `wimsey-node`), which TokenReview must accept as the wimsey-csi
//! service account bound to a pod running on the claimed node; it gets a short-lived node SVID
//! `spiffe://<td>/spire/agent/wimsey/<cluster>/<node>`. Every other RPC needs that SVID as client
//! certificate (mutual TLS) and serves only pods that the informer places on that node, after
//! TokenReview (audience `wimsey`, verdicts cached by token hash until expiry) confirms the
//! pod's own token names the pod. State is the authority Secret and the entry store, so any
//! replica can serve.
//!
//! Steady state needs no API server: where pods run comes from the informer caches
//! ([`cluster::ClusterView`]), and a TokenReview verdict is reused until its token expires when
//! TokenReview cannot be reached (see [`verdict::VerdictCache`]); a token with no verdict (a
//! replica the plugin failed over to) is verified against the service-account issuer's keys
//! fetched beforehand. What does stop during an API server outage: pods the operator has not
//! seen yet and changes to ClusterSPIFFEIDs (answered `Unavailable` until the API server is back).

mod bundles;
pub mod cluster;
mod conn;
mod error;
pub mod limits;
pub mod material;
mod service;
mod tls;
pub mod verdict;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use wimsey_core::TrustDomain;
use wimsey_core::backoff::{backoff, jitter};
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::service_account::{ServiceAccountTokenError, verify_pod_token};
use wimsey_proto::wimsey::node::v1::node_server::NodeServer;

use crate::authority::issuer::Issuer;
use crate::authority::serving::ServingCert;
use crate::authority::{SigningAuthority, SigningMaterial};
use crate::config::Settings;
use crate::store::EntryStore;
use cluster::{ClusterView, KubeReviewer, Reviewer};
pub use error::NodeApiError;
pub use limits::NodeApiLimits;
use material::NodeAuthority;
pub use tls::NodeIdentity;
use verdict::{Cached, Verdict, VerdictCache, VerdictPolicy, reviewed_token, verdict_key};

/// How often the service-account issuer keys are fetched again. The API server rotates them
/// rarely; a TokenReview that accepts a token signed by a key we lack fetches them sooner.
const ISSUER_KEYS_REFRESH: Duration = Duration::from_secs(3600);
/// The least time between two fetches of the issuer keys asked for by such tokens.
const ISSUER_KEYS_EARLIEST_REFETCH: Duration = Duration::from_secs(60);
/// Retries of a failed fetch of the issuer keys: from this...
const ISSUER_KEYS_RETRY_MIN: Duration = Duration::from_secs(2);
/// ...to this.
const ISSUER_KEYS_RETRY_MAX: Duration = Duration::from_secs(300);

/// How long one TokenReview may take before it counts as unreachable: a node API call waits on
/// it (an API server that is away can hold a connection attempt for the client's 30 s).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// After TokenReview did not answer in time, calls go straight to the fallbacks for this long.
const REVIEW_SKIP_AFTER_HANG: Duration = Duration::from_secs(10);

/// How often tokens that arrived while TokenReview was unreachable are tried again.
const PENDING_REVIEW_INTERVAL: Duration = Duration::from_secs(10);

/// Federated bundles to pass on to pods whose entries federate with them, by trust domain.
pub type FederatedBundles = Arc<BTreeMap<TrustDomain, TrustDomainBundle>>;

/// Node API settings, flattened into `wimsey-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeApiArgs {
    /// Address the node API (gRPC over TLS) listens on.
    #[arg(long, env = "WIMSEY_NODE_API_ADDR", default_value = "0.0.0.0:8443")]
    pub node_api_addr: SocketAddr,
    /// The CSI plugin's service account (in the operator's namespace); only it may attest nodes.
    #[arg(long, env = "WIMSEY_CSI_SERVICE_ACCOUNT", default_value = "wimsey-csi")]
    pub csi_service_account: String,
    /// Audience of the plugin's own token (node attestation).
    #[arg(
        long,
        env = "WIMSEY_NODE_TOKEN_AUDIENCE",
        default_value = "wimsey-node"
    )]
    pub node_token_audience: String,
    /// Audience of pod tokens (CSI tokenRequests).
    #[arg(long, env = "WIMSEY_POD_TOKEN_AUDIENCE", default_value = "wimsey")]
    pub pod_token_audience: String,
    #[command(flatten)]
    pub limits: NodeApiLimits,
}

pub(crate) struct State {
    authority: NodeAuthority,
    /// Where the CSI plugin's pods run: the operator's own namespace.
    plugin_namespace: String,
    store: EntryStore,
    settings: Settings,
    args: NodeApiArgs,
    /// Where pods run (informer caches).
    cluster: Arc<dyn ClusterView>,
    reviewer: Arc<dyn Reviewer>,
    verdicts: Mutex<VerdictCache>,
    /// Told when TokenReview accepted a token signed by an issuer key not fetched yet.
    issuer_keys_outdated: tokio::sync::Notify,
    /// Until when calls skip TokenReview, after it did not answer in time.
    review_skip_until: Mutex<Option<Instant>>,
    federated: watch::Receiver<FederatedBundles>,
    verifier: Arc<tls::NodeCertVerifier>,
    /// Cancelled when serving stops, so open WatchPod streams end and shutdown can complete.
    stopping: CancellationToken,
    attest_rate: limits::AttestRateLimit,
    bundle_cache: bundles::BundleCache,
    /// WatchPod rounds that found nothing new to send: a stream woken for nothing.
    idle_watch_wakeups: std::sync::atomic::AtomicU64,
}

/// The node API server. Cheap to clone.
#[derive(Clone)]
pub struct NodeApi {
    state: Arc<State>,
}

impl std::fmt::Debug for NodeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApi")
            .field("args", &self.state.args)
            .finish_non_exhaustive()
    }
}

/// Where the node API learns about the cluster: pod placement from the informer caches and
/// TokenReview. Fakes in tests.
#[derive(Clone)]
pub struct ClusterAccess {
    pub view: Arc<dyn ClusterView>,
    pub reviewer: Arc<dyn Reviewer>,
    /// How long TokenReview verdicts are trusted.
    pub verdicts: VerdictPolicy,
}

impl std::fmt::Debug for ClusterAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAccess")
            .field("synced", &self.view.synced())
            .finish_non_exhaustive()
    }
}

impl ClusterAccess {
    /// The reconciler's informer (`pods`) and TokenReview through `client`.
    pub fn kube(client: Client, pods: impl ClusterView) -> Self {
        Self {
            view: Arc::new(pods),
            reviewer: Arc::new(KubeReviewer::new(client)),
            verdicts: VerdictPolicy::default(),
        }
    }
}

impl NodeApi {
    /// `pods` is the reconciler's pod directory; `federated` supplies federated bundles (an
    /// empty map if there is no federation).
    pub fn new(
        client: Client,
        authority: SigningAuthority,
        store: EntryStore,
        pods: impl ClusterView,
        settings: Settings,
        args: NodeApiArgs,
        federated: watch::Receiver<FederatedBundles>,
    ) -> Self {
        Self::with_cluster(
            NodeAuthority::from(&authority),
            store,
            ClusterAccess::kube(client, pods),
            settings,
            args,
            federated,
        )
    }

    /// The node API over any [`ClusterAccess`] (in-process tests use fakes).
    pub fn with_cluster(
        authority: NodeAuthority,
        store: EntryStore,
        cluster: ClusterAccess,
        settings: Settings,
        args: NodeApiArgs,
        federated: watch::Receiver<FederatedBundles>,
    ) -> Self {
        let verifier = Arc::new(tls::NodeCertVerifier::new(
            authority.subscribe(),
            settings.cluster_name.clone(),
        ));
        Self {
            state: Arc::new(State {
                plugin_namespace: authority.args().authority_namespace.clone(),
                authority,
                store,
                settings,
                cluster: cluster.view,
                reviewer: cluster.reviewer,
                verdicts: Mutex::new(VerdictCache::new(cluster.verdicts)),
                review_skip_until: Mutex::new(None),
                issuer_keys_outdated: tokio::sync::Notify::new(),
                federated,
                verifier,
                stopping: CancellationToken::new(),
                attest_rate: limits::AttestRateLimit::new(&args.limits, std::time::Instant::now()),
                bundle_cache: bundles::BundleCache::default(),
                idle_watch_wakeups: std::sync::atomic::AtomicU64::new(0),
                args,
            }),
        }
    }

    /// How many times a WatchPod stream woke and found nothing new for its pod (each stream is
    /// woken only by its own pod's record and by bundle changes, so this stays near zero).
    pub fn idle_watch_wakeups(&self) -> u64 {
        self.state
            .idle_watch_wakeups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Binds `--node-api-addr` and serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), NodeApiError> {
        let listener = TcpListener::bind(self.state.args.node_api_addr)
            .await
            .map_err(|e| {
                NodeApiError::Internal(format!("binding {}: {e}", self.state.args.node_api_addr))
            })?;
        self.serve(listener, shutdown).await
    }

    /// Serves on `listener` until `shutdown`: TLS handshakes, then gRPC.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), NodeApiError> {
        {
            let stopping = self.state.stopping.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stopping.cancel();
            });
        }
        {
            let state = self.state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PENDING_REVIEW_INTERVAL);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = tick.tick() => state.review_pending().await,
                    }
                }
            });
        }
        {
            let state = self.state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = state.keep_issuer_keys() => {}
                }
            });
        }
        let serving = Arc::new(ServingCert::new(verdict::operator_id(
            &self.state.authority.current().bundle.trust_domain,
        )?));
        {
            let state = self.state.clone();
            serving.keep_renewed(
                self.state.authority.subscribe(),
                move |material| state.issuer_for(material),
                shutdown.clone(),
            )?;
        }
        let mut config =
            rustls::ServerConfig::builder_with_provider(wimsey_runtime::svid_tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| NodeApiError::Internal(e.to_string()))?
                .with_client_cert_verifier(self.state.verifier.clone())
                .with_cert_resolver(serving);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let (connections, incoming) =
            tokio::sync::mpsc::channel::<Result<tls::NodeConn, std::io::Error>>(64);
        let verifier = self.state.verifier.clone();
        let accept_shutdown = shutdown.clone();
        let limits = self.state.args.limits.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            limits
                .max_connections
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = accept_shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a node API connection");
                        continue;
                    }
                };
                // Over the cap the connection is closed at once (dropped), before any TLS work.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "node API connection refused: connection cap reached");
                    continue;
                };
                if let Err(error) = conn::prepare_accepted(&tcp) {
                    tracing::debug!(%error, %peer, "setting TCP_NODELAY");
                }
                let activity = conn::ConnActivity::new(tokio::time::Instant::now());
                let tcp = conn::LimitedTcp::new(tcp, slot, activity.clone(), limits.idle_timeout);
                let acceptor = acceptor.clone();
                let connections = connections.clone();
                let verifier = verifier.clone();
                let read_timeout = limits.read_timeout;
                // Handshakes run on their own task so a slow peer cannot hold up others.
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(read_timeout, acceptor.accept(tcp)).await;
                    let tls = match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "node API TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let node = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| verifier.identity_of(chain, SystemTime::now()).ok());
                    let info = conn::ConnInfo {
                        node,
                        peer,
                        activity,
                    };
                    let _ = connections
                        .send(Ok(tls::NodeConn { inner: tls, info }))
                        .await;
                });
            }
        });
        let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming).boxed();
        let limits = self.state.args.limits.clone();
        let max_request_bytes = limits.max_request_bytes;
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .layer(conn::RequestLimitsLayer {
                max_bytes: max_request_bytes,
                read_timeout: limits.read_timeout,
            })
            .add_service(NodeServer::new(self).max_decoding_message_size(max_request_bytes))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .map_err(|e| NodeApiError::Internal(e.to_string()))
    }
}

impl State {
    /// What signs now, under this cluster's lifetimes.
    fn issuer(&self) -> Issuer {
        self.issuer_for(self.authority.current())
    }

    /// What signs with `material` (the serving certificate follows its own subscription).
    fn issuer_for(&self, material: Arc<SigningMaterial>) -> Issuer {
        self.authority.issuer(material, &self.settings)
    }

    /// TokenReview for `token` and `audience`, through the verdict cache. When TokenReview
    /// cannot be reached, a verdict already given for this token serves until the token
    /// expires; otherwise see [`State::fallback`].
    async fn review(
        &self,
        token: &str,
        audience: &str,
        pod_uid: Option<&str>,
    ) -> Result<Verdict, NodeApiError> {
        let key = verdict_key(audience, token);
        let stale = match self.verdicts().lookup(&key, SystemTime::now()) {
            Cached::Fresh(verdict) => return Ok(verdict),
            Cached::Stale(verdict) => Some(verdict),
            Cached::Miss => None,
        };
        let claims = verdict::unverified_claims(token);
        let expires_at = claims.as_ref().map(|c| c.expires_at);
        match self
            .ask(key.clone(), token, audience, pod_uid, expires_at, false)
            .await
        {
            Ok(answer) => answer,
            Err(unavailable) => match stale {
                Some(verdict) => Ok(verdict),
                None => self.fallback(key, token, audience, pod_uid, claims.as_ref(), unavailable),
            },
        }
    }

    /// One TokenReview, its answer recorded in the cache; `Err` when it could not be asked.
    /// A call (`probing` false) skips TokenReview for a moment after it did not answer in time,
    /// rather than each call waiting out [`REVIEW_TIMEOUT`]; the pending reviews probe it.
    async fn ask(
        &self,
        key: String,
        token: &str,
        audience: &str,
        pod_uid: Option<&str>,
        expires_at: Option<SystemTime>,
        probing: bool,
    ) -> Result<Result<Verdict, NodeApiError>, cluster::ReviewUnavailable> {
        let started = Instant::now();
        let skipping = self
            .review_skip_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| started < until);
        if skipping && !probing {
            return Err(cluster::ReviewUnavailable(
                "TokenReview could not be reached moments ago".into(),
            ));
        }
        let status =
            match tokio::time::timeout(REVIEW_TIMEOUT, self.reviewer.review(token, audience)).await
            {
                Ok(answer) => {
                    let status = answer?;
                    *self
                        .review_skip_until
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = None;
                    status
                }
                Err(_) => {
                    // A refused connection costs nothing to try again; one that hangs does.
                    *self
                        .review_skip_until
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now() + REVIEW_SKIP_AFTER_HANG);
                    return Err(cluster::ReviewUnavailable(format!(
                        "no answer within {REVIEW_TIMEOUT:?}"
                    )));
                }
            };
        let now = SystemTime::now();
        Ok(match reviewed_token(&status, audience) {
            Ok(review) => {
                if self
                    .reviewer
                    .issuer_keys()
                    .is_some_and(|keys| keys.lacks_key_of(token))
                {
                    self.issuer_keys_outdated.notify_one();
                }
                Ok(self
                    .verdicts()
                    .record_accepted(key, audience, review, expires_at, now))
            }
            Err(refused) => {
                self.verdicts().record_refused(&key, audience, pod_uid);
                Err(refused)
            }
        })
    }

    /// TokenReview could not be reached and the token has no verdict yet. Once the issuer keys
    /// were fetched, the token is verified against them (Attest too: the signature
    /// authenticates the caller); a token they refuse is `Unauthenticated`, one signed by a key
    /// they do not know is `Unavailable`. Without keys, a pod call (`pod_uid`: the pod the
    /// authenticated node asks for) is served on the pod's previous verdict (see
    /// [`VerdictCache::fallback_for_pod`]), and Attest is `Unavailable`. Either way a pod's
    /// token is kept to be reviewed when the API server is back.
    fn fallback(
        &self,
        key: String,
        token: &str,
        audience: &str,
        pod_uid: Option<&str>,
        claims: Option<&verdict::UnverifiedClaims>,
        unavailable: cluster::ReviewUnavailable,
    ) -> Result<Verdict, NodeApiError> {
        let now = SystemTime::now();
        if let Some(keys) = self.reviewer.issuer_keys() {
            match verify_pod_token(token, &keys, audience, now) {
                Ok(bound) => {
                    // A token naming another pod is refused by the caller: nothing to keep.
                    let own_pod = pod_uid.is_some_and(|uid| uid == bound.pod_uid);
                    let expires_at = bound.expires_at;
                    return Ok(self.verdicts().record_verified_offline(
                        key,
                        audience,
                        verdict::offline_review(bound),
                        own_pod.then_some(token),
                        expires_at,
                        now,
                    ));
                }
                // Signed by a key fetched after ours: no verdict either way. Not served on the
                // pod's previous verdict either: kubelet cannot get new tokens while the API
                // server is away, so an unknown key is far more likely a forgery.
                Err(ServiceAccountTokenError::UnknownKey(_)) => {
                    return Err(unavailable.into());
                }
                Err(refused) => {
                    tracing::debug!(error = %refused, "token refused by the issuer keys");
                    return Err(NodeApiError::Unauthenticated(
                        "the token does not verify against the service-account issuer's keys",
                    ));
                }
            }
        }
        let (Some(pod_uid), Some(claims)) = (pod_uid, claims) else {
            return Err(unavailable.into());
        };
        // A token that says it is another pod's is not worth keeping.
        if claims.pod_uid.as_deref().is_some_and(|uid| uid != pod_uid) {
            return Err(unavailable.into());
        }
        let mut verdicts = self.verdicts();
        let verdict = verdicts
            .fallback_for_pod(audience, pod_uid, now)
            .ok_or(NodeApiError::ReviewUnavailable(unavailable))?;
        verdicts.keep_pending(audience, pod_uid, token, claims.expires_at);
        Ok(verdict)
    }

    /// Fetches the service-account issuer keys at start, every [`ISSUER_KEYS_REFRESH`], and soon
    /// after TokenReview accepted a token signed by a key they lack; retrying
    /// failures with backoff; the last good keys stay in use meanwhile.
    async fn keep_issuer_keys(&self) {
        let mut failures = 0u32;
        loop {
            let fetched = tokio::time::Instant::now();
            match self.reviewer.refresh_issuer_keys().await {
                Ok(()) => {
                    tracing::debug!("service-account issuer keys fetched");
                    failures = 0;
                    tokio::select! {
                        () = tokio::time::sleep(ISSUER_KEYS_REFRESH) => {}
                        () = self.issuer_keys_outdated.notified() => {
                            // At once, unless the last fetch was moments ago.
                            tokio::time::sleep_until(fetched + ISSUER_KEYS_EARLIEST_REFETCH).await;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "fetching the service-account issuer keys");
                    let wait = backoff(
                        failures,
                        ISSUER_KEYS_RETRY_MIN,
                        ISSUER_KEYS_RETRY_MAX,
                        jitter(),
                    );
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Reviews the tokens that arrived while TokenReview could not be reached.
    async fn review_pending(&self) {
        let pending = self.verdicts().pending(SystemTime::now());
        for token in pending {
            let key = verdict_key(&token.audience, &token.token);
            let answer = self
                .ask(
                    key,
                    &token.token,
                    &token.audience,
                    Some(&token.pod_uid),
                    Some(token.expires_at),
                    true,
                )
                .await;
            match answer {
                Ok(Ok(_)) => tracing::debug!(pod = %token.pod_uid, "pending pod token reviewed"),
                Ok(Err(error)) => {
                    tracing::info!(%error, pod = %token.pod_uid, "pending pod token refused")
                }
                // Still unreachable: tried again on the next round.
                Err(_) => return,
            }
        }
    }

    fn verdicts(&self) -> std::sync::MutexGuard<'_, VerdictCache> {
        // Every change is a whole insert or remove; a poisoned cache is still consistent.
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner())
    }
}
