//! Prometheus metrics of the CSI plugin, served on the admin address's `/metrics`.
//!
//! One [`Metrics`] per process, passed explicitly to the parts that record into it (the Node
//! service, the volume manager, each pod's Workload API server, the node API client).

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::volume_mode::VolumeMode;

/// The `mode` label of a call that names no known volume (a bad request, an unknown volume).
pub const UNKNOWN_MODE: &str = "unknown";
/// The `result` label of a volume operation that succeeded.
pub const RESULT_OK: &str = "ok";

/// NodePublishVolume or NodeUnpublishVolume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeOperation {
    Publish,
    Unpublish,
}

impl VolumeOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeOperation::Publish => "publish",
            VolumeOperation::Unpublish => "unpublish",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeOperationLabels {
    operation: &'static str,
    mode: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

fn operation_histogram() -> Histogram {
    // 100 µs .. ~3.3 s: a publish is a few syscalls, a slow one waits on a mount.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of the plugin.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    volume_operations: Family<VolumeOperationLabels, Counter>,
    volume_operation_duration: Family<VolumeOperationLabels, Histogram, fn() -> Histogram>,
    active_volumes: Family<ModeLabels, Gauge>,
    workload_api_calls: Family<RpcLabels, Counter>,
    workload_api_streams: Gauge,
    issuance_errors: Family<ReasonLabels, Counter>,
    node_session: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wimsey_csi");
        let volume_operations = Family::<VolumeOperationLabels, Counter>::default();
        registry.register(
            "volume_operations",
            "NodePublishVolume and NodeUnpublishVolume calls, by operation, volume mode and result (ok or the gRPC code)",
            volume_operations.clone(),
        );
        let volume_operation_duration =
            Family::<VolumeOperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                operation_histogram as fn() -> Histogram,
            );
        registry.register(
            "volume_operation_duration_seconds",
            "Time NodePublishVolume and NodeUnpublishVolume took, by operation, volume mode and result",
            volume_operation_duration.clone(),
        );
        let active_volumes = Family::<ModeLabels, Gauge>::default();
        registry.register(
            "active_volumes",
            "Volumes this plugin serves, by mode",
            active_volumes.clone(),
        );
        let workload_api_calls = Family::<RpcLabels, Counter>::default();
        registry.register(
            "workload_api_calls",
            "Workload API calls on pods' sockets, by RPC and the gRPC code they ended with (a stream counts when it ends)",
            workload_api_calls.clone(),
        );
        let workload_api_streams = Gauge::default();
        registry.register(
            "workload_api_streams",
            "Workload API streams open on pods' sockets",
            workload_api_streams.clone(),
        );
        let issuance_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "issuance_errors",
            "Failed node API calls (attestation, pod watches, signing), by error",
            issuance_errors.clone(),
        );
        let node_session = Gauge::default();
        registry.register(
            "node_session_established",
            "1 while the plugin holds a valid node SVID from the operator's node API",
            node_session.clone(),
        );
        let metrics = Self {
            registry,
            volume_operations,
            volume_operation_duration,
            active_volumes,
            workload_api_calls,
            workload_api_streams,
            issuance_errors,
            node_session,
        };
        // Every mode shows up, at 0, before its first volume.
        metrics.set_active_volumes(&BTreeMap::new());
        metrics
    }

    /// Records one publish or unpublish: `mode` is [`UNKNOWN_MODE`] when the call named no known
    /// volume, `result` [`RESULT_OK`] or a gRPC code name ([`code_label`]).
    pub fn observe_volume_operation(
        &self,
        operation: VolumeOperation,
        mode: &'static str,
        result: &'static str,
        seconds: f64,
    ) {
        let labels = VolumeOperationLabels {
            operation: operation.as_str(),
            mode,
            result,
        };
        self.volume_operations.get_or_create(&labels).inc();
        self.volume_operation_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Sets the active volume gauge of every mode (a mode missing from `counts` has none).
    pub fn set_active_volumes(&self, counts: &BTreeMap<VolumeMode, usize>) {
        for mode in VolumeMode::ALL {
            let count = counts.get(&mode).copied().unwrap_or(0);
            self.active_volumes
                .get_or_create(&ModeLabels {
                    mode: mode.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn count_workload_api_call(&self, rpc: &'static str, code: tonic::Code) {
        self.workload_api_calls
            .get_or_create(&RpcLabels {
                rpc,
                code: code_label(code),
            })
            .inc();
    }

    pub fn stream_opened(&self) {
        self.workload_api_streams.inc();
    }

    pub fn stream_closed(&self) {
        self.workload_api_streams.dec();
    }

    pub fn count_issuance_error(&self, reason: &'static str) {
        self.issuance_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn set_node_session(&self, established: bool) {
        self.node_session.set(i64::from(established));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The canonical name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...), as grpc-go's metrics
/// spell it.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_gauges_and_codes_show_in_the_text() {
        let metrics = Metrics::new();
        let empty = metrics.encode();
        for mode in ["workload-api", "files", "spire-agent"] {
            let line = format!("wimsey_csi_active_volumes{{mode=\"{mode}\"}} 0");
            assert!(empty.contains(&line), "{line} missing from\n{empty}");
        }
        metrics.observe_volume_operation(VolumeOperation::Publish, "files", RESULT_OK, 0.002);
        metrics.observe_volume_operation(
            VolumeOperation::Unpublish,
            UNKNOWN_MODE,
            code_label(tonic::Code::InvalidArgument),
            0.0001,
        );
        metrics.set_active_volumes(&BTreeMap::from([(VolumeMode::Files, 2)]));
        metrics.count_workload_api_call("FetchJWTSVID", tonic::Code::PermissionDenied);
        metrics.stream_opened();
        metrics.stream_opened();
        metrics.stream_closed();
        metrics.count_issuance_error("tls");
        metrics.set_node_session(true);
        let text = metrics.encode();
        for needle in [
            "wimsey_csi_volume_operations_total{operation=\"publish\",mode=\"files\",result=\"ok\"} 1",
            "wimsey_csi_volume_operations_total{operation=\"unpublish\",mode=\"unknown\",result=\"INVALID_ARGUMENT\"} 1",
            "wimsey_csi_volume_operation_duration_seconds_count{operation=\"publish\",mode=\"files\",result=\"ok\"} 1",
            "wimsey_csi_active_volumes{mode=\"files\"} 2",
            "wimsey_csi_active_volumes{mode=\"workload-api\"} 0",
            "wimsey_csi_workload_api_calls_total{rpc=\"FetchJWTSVID\",code=\"PERMISSION_DENIED\"} 1",
            "wimsey_csi_workload_api_streams 1",
            "wimsey_csi_issuance_errors_total{reason=\"tls\"} 1",
            "wimsey_csi_node_session_established 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
