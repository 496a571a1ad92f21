//! Graceful shutdown: SIGTERM (kubelet stopping the pod) or SIGINT ends the process's work,
//! fanned out through one `CancellationToken` every task holds a clone or child of.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT. The task ends when `shutdown` is cancelled either way.
pub fn cancel_on_shutdown_signal(shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown_signal() => shutdown.cancel(),
            () = shutdown.cancelled() => {}
        }
    })
}
