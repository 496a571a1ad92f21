//! The gRPC server on one pod's socket, as the plugin runs it: the Workload API and gRPC server
//! reflection (the Workload Endpoint spec's SHOULD, so `grpcurl -plaintext -unix <socket> list`
//! works without a proto file), behind the pod's limits and the `:authority` front.

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::admission::AdmissionLayer;
use super::call_metrics::CallMetricsLayer;
use super::limits::WorkloadApiLimits;
use super::service::WorkloadApiService;
use crate::identity::PodIdentity;
use crate::metrics::Metrics;
use crate::socket::authority::local_authority_incoming;

/// Why a pod's Workload API server stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serving the Workload API: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("building the gRPC reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl ServeError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ServeError::Serve(_) => "serve",
            ServeError::Reflection(_) => "reflection",
        }
    }
}

/// Serves the Workload API for `identity` with `limits` on `listener` until `shutdown` is
/// cancelled; open streams are ended first so the graceful shutdown completes.
pub async fn serve_workload_api<P: PodIdentity>(
    listener: UnixListener,
    identity: Arc<P>,
    limits: WorkloadApiLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let service = WorkloadApiService::new(identity, shutdown.clone()).with_limits(limits);
    serve_workload_api_service(listener, service, metrics, shutdown).await
}

/// Serves `service` (with its limits) and server reflection on `listener` until `shutdown`,
/// counting calls into `metrics`.
///
/// Behind the authority front: gRPC C-core clients (py-spiffe) send the socket path as
/// `:authority`, which tonic alone rejects.
pub async fn serve_workload_api_service<P: PodIdentity>(
    listener: UnixListener,
    service: WorkloadApiService<P>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let limits = service.limits().clone();
    // Both reflection versions, as grpc-go's reflection.Register (and so SPIRE's agent) does:
    // grpcurl asks for v1 first, older clients only know v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wimsey_proto::workload::FILE_DESCRIPTOR_SET)
    };
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(limits.front.server_max_header_list_size())
        // The first layer is the outermost: refusals by admission are counted too.
        .layer(CallMetricsLayer::new(metrics))
        .layer(AdmissionLayer::new(&limits))
        .add_service(service.into_server())
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .serve_with_incoming_shutdown(
            local_authority_incoming(listener, limits.front),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}
