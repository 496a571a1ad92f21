//! Our bundle endpoint: `GET /` answers this trust domain's SPIFFE bundle (X.509 and JWT
//! authorities, `spiffe_sequence` and `spiffe_refresh_hint`), read from the signing material on every request so
//! a rotation is served at once; OIDC discovery rides on the same listener when configured. Every
//! replica serves it (no Lease), over `https_spiffe` (an SVID of the reserved bundle endpoint ID)
//! or `https_web` (a Secret's certificate). No client authentication, as the spec requires.
//!
//! Bounds: connections, TLS handshake and request header time, HTTP/1.1 only, GET only.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::authority::SigningMaterial;

/// Bounds of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointLimits {
    pub max_connections: usize,
    /// TLS handshake, and then each request's header.
    pub handshake_timeout: Duration,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the endpoint could not serve.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The serialized bundle of the current material, made once per material.
#[derive(Debug, Default)]
struct BundleJson {
    cached: Mutex<Option<(Weak<SigningMaterial>, Arc<str>)>>,
}

impl BundleJson {
    fn of(&self, material: &Arc<SigningMaterial>) -> Result<Arc<str>, String> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, json)) = cached.as_ref()
            && std::ptr::eq(from.as_ptr(), Arc::as_ptr(material))
        {
            return Ok(json.clone());
        }
        // WIT-SVID keys stay out: go-spiffe (through v2.6, and so SPIRE's federation client)
        // refuses a bundle with `"use": "wit-svid"` instead of ignoring the key as the spec
        // asks, which would break federation with every SPIRE peer.
        let mut published = material.bundle.clone();
        published.wit_authorities.clear();
        let json: Arc<str> = published
            .to_spiffe_jwks()
            .map_err(|e| e.to_string())?
            .into();
        *cached = Some((Arc::downgrade(material), json.clone()));
        Ok(json)
    }
}

#[derive(Debug, Clone)]
struct BundleState {
    material: watch::Receiver<Arc<SigningMaterial>>,
    json: Arc<BundleJson>,
}

async fn bundle(State(state): State<BundleState>) -> Response {
    let material = state.material.borrow().clone();
    match state.json.of(&material) {
        Ok(json) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json.to_string(),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "serializing our bundle");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The routes: the bundle at `/` (other methods get 405), plus `extra` (OIDC discovery).
pub fn router(material: watch::Receiver<Arc<SigningMaterial>>, extra: Option<Router>) -> Router {
    let bundle_routes = Router::new()
        .route("/", get(bundle))
        .with_state(BundleState {
            material,
            json: Arc::default(),
        });
    match extra {
        Some(extra) => bundle_routes.merge(extra),
        None => bundle_routes,
    }
}

/// Binds `addr` (separately from serving, so a test or caller learns the port first).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, EndpointError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| EndpointError::Bind { addr, source })
}

/// Serves `routes` over TLS (certificates from `resolver`) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    routes: Router,
    limits: EndpointLimits,
    shutdown: CancellationToken,
) -> Result<(), EndpointError> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(wimsey_runtime::svid_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| EndpointError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "bundle endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the limit, the connection is closed at once instead of queueing. The slots are
        // shared: the handshake and header timeouts are what bound how long one client holds one.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let routes = routes.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) =
                tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await
            else {
                tracing::debug!(%peer, "bundle endpoint TLS handshake failed or timed out");
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                routes.clone().oneshot(request.map(axum::body::Body::new))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.handshake_timeout)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
