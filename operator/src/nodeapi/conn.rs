//! Per-connection limits of the node API: a connection slot held for the connection's life, an
//! idle timer (no call in progress for too long closes the connection), and a tower layer that
//! bounds each request's size and read time and tracks calls in progress.

use futures_util::future::BoxFuture;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::NodeIdentity;

/// Socket options for an accepted connection: `TCP_NODELAY`, because every call is a small
/// request and response, and Nagle's algorithm against the peer's delayed ACKs adds ~40 ms to a
/// call that waits for a second segment.
pub(super) fn prepare_accepted(tcp: &TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)
}

/// Calls in progress on one connection, and since when there have been none.
#[derive(Debug)]
pub(super) struct ConnActivity {
    state: Mutex<(usize, Instant)>,
}

impl ConnActivity {
    pub(super) fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((0, now)),
        })
    }

    /// Marks a call in progress until the guard is dropped.
    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.lock().0 += 1;
        InFlight(self.clone())
    }

    /// When the connection becomes idle for `timeout`, or `None` while a call is in progress.
    pub(super) fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        let (in_flight, idle_since) = *self.lock();
        (in_flight == 0).then(|| idle_since + timeout)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        // Plain counters; a poisoned lock still holds a usable value.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One call in progress (see [`ConnActivity::start`]).
#[derive(Debug)]
pub(super) struct InFlight(Arc<ConnActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.0 = state.0.saturating_sub(1);
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

/// An accepted TCP connection holding its slot under the connection cap, which reads as closed
/// once it has had no call in progress for the idle timeout.
#[derive(Debug)]
pub(super) struct LimitedTcp {
    inner: TcpStream,
    activity: Arc<ConnActivity>,
    idle_timeout: Duration,
    idle_check: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl LimitedTcp {
    pub(super) fn new(
        inner: TcpStream,
        slot: OwnedSemaphorePermit,
        activity: Arc<ConnActivity>,
        idle_timeout: Duration,
    ) -> Self {
        let first_check = Instant::now() + idle_timeout;
        Self {
            inner,
            activity,
            idle_timeout,
            idle_check: Box::pin(tokio::time::sleep_until(first_check)),
            _slot: slot,
        }
    }

    /// Whether the idle timeout has passed; otherwise the timer is armed to wake `cx`.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.activity.idle_deadline(self.idle_timeout) {
                Some(deadline) if deadline <= now => return true,
                Some(deadline) => self.idle_check.as_mut().reset(deadline),
                // Busy: look again a full timeout later (it can only end idle after that).
                None => self.idle_check.as_mut().reset(now + self.idle_timeout),
            }
        }
        false
    }
}

impl AsyncRead for LimitedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.idle_expired(cx) {
            // End of stream: the server side closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What each request learns about its connection (tonic's connect info).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(super) node: Option<NodeIdentity>,
    pub(super) peer: SocketAddr,
    pub(super) activity: Arc<ConnActivity>,
}

/// The caller's address, in request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerAddr(pub(super) SocketAddr);

/// Bounds every request's body to `max_bytes` (answered RESOURCE_EXHAUSTED) read within
/// `read_timeout`, marks the call in progress until its response ends, and puts the caller's
/// node identity and address into the request's extensions.
#[derive(Debug, Clone)]
pub(super) struct RequestLimitsLayer {
    pub(super) max_bytes: usize,
    pub(super) read_timeout: Duration,
}

impl<S> Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimits {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct RequestLimits<S> {
    inner: S,
    limits: RequestLimitsLayer,
}

/// gRPC's length-prefixed message framing: one flag byte and a 4-byte length.
const GRPC_FRAME_HEADER: usize = 5;

impl<S> Service<http::Request<Body>> for RequestLimits<S>
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
        // The ready service handles this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let info = parts.extensions.get::<ConnInfo>().cloned();
            let in_flight = info.as_ref().map(|info| info.activity.start());
            if let Some(info) = info {
                parts.extensions.insert(info.node);
                parts.extensions.insert(PeerAddr(info.peer));
            }
            // Every node API request is one message: reading it whole bounds it before decoding.
            let limited = Limited::new(body, limits.max_bytes + GRPC_FRAME_HEADER);
            let bytes = match tokio::time::timeout(limits.read_timeout, limited.collect()).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                    return Ok(Status::resource_exhausted(format!(
                        "request larger than {} bytes",
                        limits.max_bytes
                    ))
                    .into_http());
                }
                Ok(Err(error)) => {
                    return Ok(
                        Status::cancelled(format!("reading the request: {error}")).into_http()
                    );
                }
                Err(_) => {
                    return Ok(Status::deadline_exceeded(format!(
                        "request not received within {:?}",
                        limits.read_timeout
                    ))
                    .into_http());
                }
            };
            let request = http::Request::from_parts(parts, Body::new(Full::<Bytes>::new(bytes)));
            let response = inner.call(request).await?;
            Ok(response.map(|body| {
                Body::new(Tracked {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its call counted as in progress until it is dropped.
struct Tracked {
    body: Body,
    _in_flight: Option<InFlight>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let ((accepted, _), _client) =
            tokio::join!(async { listener.accept().await.unwrap() }, async {
                client.await.unwrap()
            });
        assert!(!accepted.nodelay().unwrap(), "off unless set");
        prepare_accepted(&accepted).unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn idle_deadline_counts_from_the_last_call_ending() {
        let t0 = Instant::now();
        let activity = ConnActivity::new(t0);
        let timeout = Duration::from_secs(10);
        assert_eq!(activity.idle_deadline(timeout), Some(t0 + timeout));
        let first = activity.start();
        let second = activity.start();
        assert_eq!(activity.idle_deadline(timeout), None, "busy");
        drop(first);
        assert_eq!(activity.idle_deadline(timeout), None, "one call still open");
        let before_end = Instant::now();
        drop(second);
        let deadline = activity.idle_deadline(timeout).unwrap();
        assert!(deadline >= before_end + timeout, "counted from the end");
        assert!(deadline <= Instant::now() + timeout);
    }
}
