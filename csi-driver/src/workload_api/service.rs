//! The tonic `SpiffeWorkloadAPI` service for one pod.
//!
//! Streams render the full state from the current snapshot at once, then again on every change
//! (bundle streams skip a message equal to the last one, as SPIRE does). A snapshot with no
//! identity ends the stream with `PermissionDenied`, one not ready with `Unavailable`. A call
//! that finds the pod not ready yet first waits up to [`FIRST_SYNC_WAIT`] for its identities.
//! Request fields are bounded by [`WorkloadApiLimits`]; JWT-SVIDs come from the pod's
//! [`PodJwtSvidCache`] until their half-life, and are minted only on a miss.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use wimsey_proto::workload as pb;
use wimsey_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};

use super::error::WorkloadApiError;
use super::jwt_cache::{CacheKey, PodJwtSvidCache};
use super::limits::WorkloadApiLimits;
use super::responses;
use crate::identity::{IdentitySnapshot, IssuedIdentities, PodIdentity};

/// Responses buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 2;

/// How long a call waits for a pod's first identities before it answers `Unavailable`. A volume
/// is published (and the container may start) before the node API has answered for the pod,
/// usually by milliseconds; answering at once would send the client into its retry backoff,
/// which is a second or more for go-spiffe.
pub const FIRST_SYNC_WAIT: Duration = Duration::from_secs(5);

/// The Workload API for one pod, over the identity source `P`.
#[derive(Debug)]
pub struct WorkloadApiService<P> {
    identity: Arc<P>,
    shutdown: CancellationToken,
    first_sync_wait: Duration,
    limits: WorkloadApiLimits,
    jwt_svids: Arc<PodJwtSvidCache>,
}

impl<P: PodIdentity> WorkloadApiService<P> {
    /// Open streams end with `Unavailable` when `shutdown` is cancelled, so a graceful server
    /// shutdown does not wait for clients that never hang up. Uses the default limits.
    pub fn new(identity: Arc<P>, shutdown: CancellationToken) -> Self {
        let limits = WorkloadApiLimits::default();
        let jwt_svids = Arc::new(PodJwtSvidCache::new(
            identity.current(),
            limits.max_cached_jwt_svids,
        ));
        Self {
            identity,
            shutdown,
            first_sync_wait: FIRST_SYNC_WAIT,
            limits,
            jwt_svids,
        }
    }

    /// Replaces the default limits (and empties the JWT-SVID cache, sized by them).
    #[must_use]
    pub fn with_limits(mut self, limits: WorkloadApiLimits) -> Self {
        self.jwt_svids = Arc::new(PodJwtSvidCache::new(
            self.identity.current(),
            limits.max_cached_jwt_svids,
        ));
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &WorkloadApiLimits {
        &self.limits
    }

    /// Replaces [`FIRST_SYNC_WAIT`].
    #[must_use]
    pub fn with_first_sync_wait(mut self, wait: Duration) -> Self {
        self.first_sync_wait = wait;
        self
    }

    /// The service ready to add to a tonic server. tonic's own message size limit is set too,
    /// as a backstop: the admission layer refuses an oversized message first, with the right code.
    pub fn into_server(self) -> SpiffeWorkloadApiServer<Self> {
        let max_request_bytes = self.limits.max_request_bytes;
        SpiffeWorkloadApiServer::new(self).max_decoding_message_size(max_request_bytes)
    }

    /// A JWT-SVID for `key` from the pod's cache, minted (and cached) on a miss.
    async fn jwt_svid(
        &self,
        key: CacheKey,
    ) -> Result<zeroize::Zeroizing<String>, WorkloadApiError> {
        let generation = match self.jwt_svids.lookup(&key, SystemTime::now()) {
            Ok(token) => return Ok(token),
            Err(generation) => generation,
        };
        let token = self
            .identity
            .mint_jwt_svid(key.spiffe_id(), key.audience())
            .await?;
        self.jwt_svids
            .store(generation, key, token.clone(), SystemTime::now());
        Ok(token)
    }

    /// Renders from the pod's snapshot once it is past `NotReady` (or the wait is over).
    async fn issued_settled<T>(
        &self,
        render: impl FnOnce(&IssuedIdentities) -> Result<T, WorkloadApiError>,
    ) -> Result<T, WorkloadApiError> {
        let mut snapshots = self.identity.current();
        let snapshot = tokio::select! {
            snapshot = settled(&mut snapshots, self.first_sync_wait) => snapshot,
            () = self.shutdown.cancelled() => return Err(WorkloadApiError::ShuttingDown),
        };
        render(responses::issued(&snapshot)?)
    }

    fn stream<T>(
        &self,
        rpc: &'static str,
        dedupe: Dedupe,
        render: impl Fn(&IssuedIdentities) -> Result<T, WorkloadApiError> + Send + 'static,
    ) -> ReceiverStream<Result<T, Status>>
    where
        T: PartialEq + Clone + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(stream_updates(
            rpc,
            self.identity.current(),
            StreamOptions {
                shutdown: self.shutdown.clone(),
                first_sync_wait: self.first_sync_wait,
                dedupe,
            },
            tx,
            move |snapshot: &IdentitySnapshot| render(responses::issued(snapshot)?),
        ));
        ReceiverStream::new(rx)
    }
}

/// Whether a stream skips a response equal to the one it sent last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dedupe {
    SkipUnchanged,
    SendEvery,
}

/// The pod's snapshot once it is past `NotReady`; still `NotReady` after `wait`, or when the
/// source is gone.
async fn settled(
    snapshots: &mut watch::Receiver<Arc<IdentitySnapshot>>,
    wait: Duration,
) -> Arc<IdentitySnapshot> {
    let not_ready = |s: &Arc<IdentitySnapshot>| matches!(**s, IdentitySnapshot::NotReady);
    if let Ok(Ok(snapshot)) =
        tokio::time::timeout(wait, snapshots.wait_for(|s| !not_ready(s))).await
    {
        return Arc::clone(&snapshot);
    }
    Arc::clone(&snapshots.borrow_and_update())
}

struct StreamOptions {
    shutdown: CancellationToken,
    first_sync_wait: Duration,
    dedupe: Dedupe,
}

/// Sends `render(snapshot)` as soon as the pod is past `NotReady` (or the first-sync wait is
/// over) and after every change until the client goes away, rendering fails (the error is the
/// stream's last message), the source closes, or shutdown.
async fn stream_updates<T: PartialEq + Clone>(
    rpc: &'static str,
    mut snapshots: watch::Receiver<Arc<IdentitySnapshot>>,
    options: StreamOptions,
    tx: mpsc::Sender<Result<T, Status>>,
    render: impl Fn(&IdentitySnapshot) -> Result<T, WorkloadApiError>,
) {
    let StreamOptions {
        shutdown,
        first_sync_wait,
        dedupe,
    } = options;
    tokio::select! {
        _ = settled(&mut snapshots, first_sync_wait) => {}
        () = shutdown.cancelled() => {
            let _ = tx.try_send(Err(WorkloadApiError::ShuttingDown.into()));
            return;
        }
        () = tx.closed() => return,
    }
    let mut last_sent: Option<T> = None;
    loop {
        let snapshot = Arc::clone(&snapshots.borrow_and_update());
        match render(&snapshot) {
            Ok(response) => {
                let send = match dedupe {
                    Dedupe::SendEvery => true,
                    Dedupe::SkipUnchanged => {
                        let changed = last_sent.as_ref() != Some(&response);
                        if changed {
                            last_sent = Some(response.clone());
                        }
                        changed
                    }
                };
                if send && !deliver(&tx, Ok(response), &shutdown).await {
                    return;
                }
            }
            Err(error) => {
                log_rpc_error(rpc, &error);
                deliver(&tx, Err(error.into()), &shutdown).await;
                return;
            }
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    // The pod's identity source is gone (volume unpublished): let the client reconnect.
                    deliver(&tx, Err(WorkloadApiError::ShuttingDown.into()), &shutdown).await;
                    return;
                }
            }
            () = shutdown.cancelled() => {
                // Best effort: a client that stopped reading must not hold up the shutdown.
                let _ = tx.try_send(Err(WorkloadApiError::ShuttingDown.into()));
                return;
            }
            () = tx.closed() => return,
        }
    }
}

/// Sends one stream item; false when the client is gone or the server shuts down first (a
/// client that stops reading must not hold up a graceful shutdown).
async fn deliver<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    item: Result<T, Status>,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        sent = tx.send(item) => sent.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

/// The security header rule (Workload Endpoint §4, SPIRE's middleware): exactly one
/// `workload.spiffe.io` value, and it is `true`.
pub fn check_security_header(metadata: &MetadataMap) -> Result<(), WorkloadApiError> {
    let mut values = metadata.get_all(pb::SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if value.as_bytes() == pb::SECURITY_HEADER_VALUE.as_bytes() => Ok(()),
        _ => Err(WorkloadApiError::MissingSecurityHeader),
    }
}

fn log_rpc_error(rpc: &'static str, error: &WorkloadApiError) {
    // Messages name no token and no key; core's errors clip untrusted input.
    tracing::debug!(rpc, error = %error, label = error.label(), "workload API call failed");
}

fn rpc_result<T>(rpc: &'static str, result: Result<T, WorkloadApiError>) -> Result<T, Status> {
    result.map_err(|error| {
        log_rpc_error(rpc, &error);
        error.into()
    })
}

#[tonic::async_trait]
impl<P: PodIdentity> SpiffeWorkloadApi for WorkloadApiService<P> {
    type FetchX509SVIDStream = ReceiverStream<Result<pb::X509svidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<pb::X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<pb::JwtBundlesResponse, Status>>;
    type FetchWITSVIDStream = ReceiverStream<Result<pb::WitsvidResponse, Status>>;
    type FetchWITBundlesStream = ReceiverStream<Result<pb::WitBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        const RPC: &str = "FetchX509SVID";
        rpc_result(RPC, check_security_header(request.metadata()))?;
        Ok(Response::new(self.stream(
            RPC,
            Dedupe::SendEvery,
            responses::x509_svid_response,
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        const RPC: &str = "FetchX509Bundles";
        rpc_result(RPC, check_security_header(request.metadata()))?;
        Ok(Response::new(self.stream(
            RPC,
            Dedupe::SkipUnchanged,
            |identities| Ok(responses::x509_bundles_response(identities)),
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        const RPC: &str = "FetchJWTSVID";
        rpc_result(RPC, check_security_header(request.metadata()))?;
        let request = request.into_inner();
        rpc_result(RPC, self.limits.check_jwt_audiences(&request.audience))?;
        rpc_result(RPC, responses::check_audience(&request.audience))?;
        let requested = rpc_result(RPC, responses::requested_spiffe_id(&request.spiffe_id))?;
        let targets: Vec<(wimsey_core::SpiffeId, String)> = rpc_result(
            RPC,
            self.issued_settled(|identities| {
                Ok(responses::jwt_svid_targets(identities, requested.as_ref())?
                    .into_iter()
                    .map(|(id, hint)| (id.clone(), hint.to_owned()))
                    .collect())
            })
            .await,
        )?;
        let mut svids = Vec::with_capacity(targets.len());
        for (spiffe_id, hint) in targets {
            let token = rpc_result(
                RPC,
                self.jwt_svid(CacheKey::new(&spiffe_id, &request.audience))
                    .await,
            )?;
            svids.push(pb::Jwtsvid {
                spiffe_id: spiffe_id.into_string(),
                svid: token.to_string(),
                hint,
            });
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        const RPC: &str = "FetchJWTBundles";
        rpc_result(RPC, check_security_header(request.metadata()))?;
        Ok(Response::new(self.stream(
            RPC,
            Dedupe::SkipUnchanged,
            responses::jwt_bundles_response,
        )))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        const RPC: &str = "ValidateJWTSVID";
        rpc_result(RPC, check_security_header(request.metadata()))?;
        let request = request.into_inner();
        rpc_result(
            RPC,
            self.limits
                .check_validate_request(&request.audience, &request.svid),
        )?;
        let response = rpc_result(
            RPC,
            self.issued_settled(|identities| {
                responses::validate_jwt_svid_response(
                    identities,
                    &request.audience,
                    &request.svid,
                    SystemTime::now(),
                )
            })
            .await,
        )?;
        Ok(Response::new(response))
    }

    async fn fetch_witsvid(
        &self,
        request: Request<pb::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        const RPC: &str = "FetchWITSVID";
        rpc_result(RPC, check_security_header(request.metadata()))?;
        let requested = rpc_result(
            RPC,
            responses::requested_spiffe_id(&request.get_ref().spiffe_id),
        )?;
        Ok(Response::new(self.stream(
            RPC,
            Dedupe::SendEvery,
            move |identities| responses::wit_svid_response(identities, requested.as_ref()),
        )))
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        const RPC: &str = "FetchWITBundles";
        rpc_result(RPC, check_security_header(request.metadata()))?;
        Ok(Response::new(self.stream(
            RPC,
            Dedupe::SkipUnchanged,
            responses::wit_bundles_response,
        )))
    }
}
