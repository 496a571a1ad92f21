//! The tower layer in front of every service on a pod's Workload API socket: it enforces the
//! per-pod stream cap and the request size cap of [`WorkloadApiLimits`], both answered with
//! `RESOURCE_EXHAUSTED` before any handler runs.
//!
//! - A call takes a permit from the pod's semaphore and holds it until its response body is
//!   dropped (the end of a stream, or a reset); with none left it is answered at once.
//! - The request body passes through a [`MessageLengthGuard`]: a message prefix announcing more
//!   than the limit ends the body with a `RESOURCE_EXHAUSTED` status, which tonic's decoder
//!   returns as the call's status (tonic's own limit would answer `OUT_OF_RANGE`).

use futures_util::future::BoxFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::error::WorkloadApiError;
use super::limits::{MessageLengthGuard, WorkloadApiLimits};

/// Applies a pod's stream and request size limits to every call on its server.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    streams: Arc<Semaphore>,
    max_streams: usize,
    max_request_bytes: usize,
}

impl AdmissionLayer {
    /// One layer per pod server: its semaphore is shared by all connections to the socket.
    pub fn new(limits: &WorkloadApiLimits) -> Self {
        let max_streams = limits.max_streams_per_pod.min(Semaphore::MAX_PERMITS);
        Self {
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            max_request_bytes: limits.max_request_bytes,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            limits: self.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    limits: AdmissionLayer,
}

impl<S> Service<http::Request<Body>> for Admission<S>
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
        let Ok(permit) = Arc::clone(&self.limits.streams).try_acquire_owned() else {
            let error = WorkloadApiError::TooManyStreams {
                max: self.limits.max_streams,
            };
            tracing::debug!(path = request.uri().path(), error = %error, label = error.label(), "workload API call refused");
            return Box::pin(std::future::ready(Ok(Status::from(error).into_http())));
        };
        let max = self.limits.max_request_bytes;
        let request = request.map(|body| {
            Body::new(GuardedBody {
                inner: body,
                guard: MessageLengthGuard::new(max),
                max,
            })
        });
        // The clone that was polled ready serves this call (tower's contract).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| {
                Body::new(PermitBody {
                    inner: body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A request body that ends with `RESOURCE_EXHAUSTED` at the first oversized message prefix.
struct GuardedBody {
    inner: Body,
    guard: MessageLengthGuard,
    max: usize,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(too_large) = this.guard.feed(data)
                {
                    let error = WorkloadApiError::RequestTooLarge {
                        len: too_large.len,
                        max: this.max,
                    };
                    tracing::debug!(error = %error, label = error.label(), "workload API request refused");
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body holding the call's stream permit until the body is dropped.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
