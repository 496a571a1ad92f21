//! The plugin's admin address (the shared runtime's server): `/livez`, `/readyz` and `/metrics`.
//!
//! Ready means kubelet can use the plugin and the plugin can get identities: registered with
//! kubelet (unless self-registration is off) and holding a node API session (unless no node API
//! is configured). CSI `Probe` answers from the same gate.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_runtime::AdminError;
use wimsey_runtime::readiness::{all_ready, always_ready};

use crate::metrics::Metrics;

/// The plugin's readiness: every gate given must be open; `None` is a condition that does not
/// apply. Must be called inside a tokio runtime.
pub fn plugin_readiness(
    registered: Option<watch::Receiver<bool>>,
    node_session: Option<watch::Receiver<bool>>,
) -> watch::Receiver<bool> {
    all_ready(vec![
        registered.unwrap_or_else(always_ready),
        node_session.unwrap_or_else(always_ready),
    ])
}

/// `/metrics` from `metrics`.
pub fn metrics_routes(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = metrics.encode();
            async move { wimsey_runtime::admin::metrics_response(text) }
        }),
    )
}

/// Serves `/livez`, `/readyz` (from `ready`) and `/metrics` on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    ready: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    wimsey_runtime::admin::serve(listener, ready, metrics_routes(metrics), shutdown).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    async fn settles_to(ready: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r == want))
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn ready_needs_registration_and_a_node_session_when_they_apply() {
        assert!(*plugin_readiness(None, None).borrow());

        let (registered_tx, registered) = watch::channel(false);
        let (session_tx, session) = watch::channel(false);
        let mut ready = plugin_readiness(Some(registered), Some(session));
        assert!(!*ready.borrow());
        registered_tx.send_replace(true);
        settles_to(&mut ready, false).await;
        session_tx.send_replace(true);
        settles_to(&mut ready, true).await;
        // The session lapses (e.g. the operator replaced its CA): not ready until it is back.
        session_tx.send_replace(false);
        settles_to(&mut ready, false).await;

        let (registered_tx, registered) = watch::channel(false);
        let mut spire_agent_only = plugin_readiness(Some(registered), None);
        assert!(!*spire_agent_only.borrow());
        registered_tx.send_replace(true);
        settles_to(&mut spire_agent_only, true).await;
    }
}
