//! The admin HTTP server: `/livez` (the process answers), `/readyz` (200 while the readiness
//! gate is open, else 503) and whatever routes the caller adds (`/metrics`), served until a
//! `CancellationToken` is cancelled.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The content type of the Prometheus text that prometheus-client encodes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving the admin address: {0}")]
    Serve(#[source] std::io::Error),
}

impl AdminError {
    pub fn label(&self) -> &'static str {
        match self {
            AdminError::Bind { .. } => "bind",
            AdminError::Serve(_) => "serve",
        }
    }
}

/// Binds the admin address (port 0 picks a free one: see `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// `routes` plus `/livez` and `/readyz` answered from `ready`.
pub fn router(ready: watch::Receiver<bool>, routes: Router) -> Router {
    routes
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(move || readyz(ready.clone())))
}

async fn readyz(ready: watch::Receiver<bool>) -> Response {
    if *ready.borrow() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// A `/metrics` answer: `text` as the OpenMetrics text prometheus-client encodes.
pub fn metrics_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled (open requests finish first).
pub async fn serve(
    listener: TcpListener,
    ready: watch::Receiver<bool>,
    routes: Router,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    serve_router(listener, router(ready, routes), shutdown).await
}

/// Serves `app` as it is on `listener` until `shutdown` (for a server without probes, such as a
/// loopback-only debug address).
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(AdminError::Serve)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get_path(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (status, format!("{head}\n\n{body}"))
    }

    #[tokio::test]
    async fn probes_follow_the_gate_and_caller_routes_are_served_until_shutdown() {
        let (ready_tx, ready) = watch::channel(false);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let routes = Router::new().route(
            "/metrics",
            get(|| async { metrics_response("up 1\n# EOF\n".to_owned()) }),
        );
        let server = tokio::spawn(serve(listener, ready, routes, shutdown.clone()));

        assert_eq!(get_path(addr, "/livez").await.0, 200);
        assert_eq!(get_path(addr, "/readyz").await.0, 503);
        ready_tx.send_replace(true);
        assert_eq!(get_path(addr, "/readyz").await.0, 200);
        ready_tx.send_replace(false);
        assert_eq!(get_path(addr, "/readyz").await.0, 503);
        let (status, text) = get_path(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(text.contains(OPENMETRICS_CONTENT_TYPE), "{text}");
        assert!(text.ends_with("up 1\n# EOF\n"), "{text}");
        assert_eq!(get_path(addr, "/nothing").await.0, 404);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_taken_address_is_a_bind_error() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert_eq!(err.label(), "bind");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
