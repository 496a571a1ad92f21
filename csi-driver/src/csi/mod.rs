//! The CSI node plugin: Identity and Node services, the volume manager behind them, and kubelet
//! plugin registration.
//!
//! - [`request`]: validation of CSI requests into plain values (pure).
//! - [`manager`]: publish/unpublish/restore per mode (`workload-api`, `files`, `spire-agent`).
//! - [`files`]: the files-mode contents and the atomic writer.
//! - [`records`]: per-volume JSON records so a restarted plugin serves every volume again.
//! - [`mounts`]: bind/tmpfs mounts and mount-point detection.
//! - [`services`]: the tonic Identity and Node services; [`serve_csi`] runs them on a socket.
//! - [`registration`]: `pluginregistration.Registration` for kubelet, behind [`authority`]'s
//!   rewrite of the socket-path `:authority` kubelet sends.
//! - [`no_identity`]: the source used when no node API is configured (spire-agent-only nodes).

pub mod authority;
pub mod error;
pub mod files;
pub mod manager;
pub mod mounts;
pub mod no_identity;
pub mod records;
pub mod registration;
pub mod request;
pub mod services;

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::CsiError;
pub use manager::{ManagerConfig, SOCKET_NAME, VolumeManager};
pub use registration::{RegistrationService, registration_socket, serve_registration};
pub use request::VolumeMode;
pub use services::{DRIVER_NAME, IdentityService, NodeService};

use crate::identity_source::IdentitySource;

/// Serves CSI Identity and Node on `listener` until `shutdown`; `Probe` answers `ready`.
///
/// Not behind the authority front of the registration and Workload API sockets: kubelet's CSI
/// client sends `localhost` since Kubernetes 1.26 (kubernetes#112597), as csi-sanity does, and the
/// front's extra hops cost about a quarter of NodePublishVolume's latency. A client that sends the
/// socket path as `:authority` gets a protocol error here.
pub async fn serve_csi<S: IdentitySource>(
    listener: UnixListener,
    manager: Arc<VolumeManager<S>>,
    node_id: String,
    ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(IdentityService::new(ready).into_server())
        .add_service(NodeService::new(manager, node_id).into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
}
