//! The outermost tower layer on a pod's Workload API socket: counts every call by RPC and the
//! gRPC code it ended with, and keeps the open-stream gauge. Outside the admission layer, so
//! calls it refuses count too.
//!
//! A call answered at once (trailers-only, every refusal) counts when its response comes back;
//! one with a body counts when the body's trailers pass, and as `CANCELLED` when the body is
//! dropped before them (the client went away).

use futures_util::future::BoxFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// The Workload API's RPCs (and reflection) by their path; anything else is `other`.
const RPCS: [(&str, &str, bool); 8] = [
    ("/SpiffeWorkloadAPI/FetchX509SVID", "FetchX509SVID", true),
    (
        "/SpiffeWorkloadAPI/FetchX509Bundles",
        "FetchX509Bundles",
        true,
    ),
    ("/SpiffeWorkloadAPI/FetchJWTSVID", "FetchJWTSVID", false),
    (
        "/SpiffeWorkloadAPI/FetchJWTBundles",
        "FetchJWTBundles",
        true,
    ),
    (
        "/SpiffeWorkloadAPI/ValidateJWTSVID",
        "ValidateJWTSVID",
        false,
    ),
    ("/SpiffeWorkloadAPI/FetchWITSVID", "FetchWITSVID", true),
    (
        "/SpiffeWorkloadAPI/FetchWITBundles",
        "FetchWITBundles",
        true,
    ),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "ServerReflectionInfo",
        false,
    ),
];

/// The `rpc` label of a request path, and whether the RPC is a Workload API stream.
pub fn rpc_of(path: &str) -> (&'static str, bool) {
    RPCS.iter()
        .find(|(known, _, _)| *known == path)
        .map_or(("other", false), |(_, rpc, stream)| (*rpc, *stream))
}

/// The `grpc-status` of a header or trailer map.
fn grpc_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

/// Records a pod server's calls into the plugin's [`Metrics`].
#[derive(Debug, Clone)]
pub struct CallMetricsLayer {
    metrics: Arc<Metrics>,
}

impl CallMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> CallMetrics<S> {
        CallMetrics {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`CallMetricsLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct CallMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<http::Request<Body>> for CallMetrics<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (rpc, stream) = rpc_of(request.uri().path());
        let metrics = Arc::clone(&self.metrics);
        // The clone that was polled ready serves this call (tower's contract).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let response = inner.call(request).await?;
            if let Some(code) = grpc_code(response.headers()) {
                metrics.count_workload_api_call(rpc, code);
                return Ok(response);
            }
            if stream {
                metrics.stream_opened();
            }
            Ok(response.map(|body| {
                Body::new(ObservedBody {
                    inner: body,
                    rpc,
                    stream,
                    counted: false,
                    metrics,
                })
            }))
        })
    }
}

/// A response body that counts its call when the trailers pass, or when dropped before them.
struct ObservedBody {
    inner: Body,
    rpc: &'static str,
    stream: bool,
    counted: bool,
    metrics: Arc<Metrics>,
}

impl ObservedBody {
    fn count(&mut self, code: Code) {
        if !self.counted {
            self.counted = true;
            self.metrics.count_workload_api_call(self.rpc, code);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.count(grpc_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => self.count(status.code()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.count(Code::Cancelled);
        if self.stream {
            self.metrics.stream_closed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_rpc_and_streams() {
        assert_eq!(
            rpc_of("/SpiffeWorkloadAPI/FetchX509SVID"),
            ("FetchX509SVID", true)
        );
        assert_eq!(
            rpc_of("/SpiffeWorkloadAPI/FetchJWTSVID"),
            ("FetchJWTSVID", false)
        );
        assert_eq!(rpc_of("/SpiffeWorkloadAPI/Nope"), ("other", false));
        assert_eq!(rpc_of("/"), ("other", false));
    }

    #[test]
    fn grpc_status_is_read_from_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_code(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("7"));
        assert_eq!(grpc_code(&headers), Some(Code::PermissionDenied));
    }
}
