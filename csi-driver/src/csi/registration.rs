//! Kubelet plugin registration v1 (csi-contract.md §3.8), served by the plugin itself so the
//! DaemonSet needs no node-driver-registrar sidecar.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{error, info};
use wimsey_proto::pluginregistration as pb;
use wimsey_proto::pluginregistration::registration_server::{Registration, RegistrationServer};

use super::services::DRIVER_NAME;
use crate::socket::authority::{FrontLimits, local_authority_incoming};

/// The plugin type kubelet's plugin watcher routes to its CSI handler.
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";

/// The registration socket's path in kubelet's registry directory.
pub fn registration_socket(registry_dir: &Path) -> PathBuf {
    registry_dir.join(format!("{DRIVER_NAME}-reg.sock"))
}

/// Answers kubelet's GetInfo; a failed registration cancels `failed` so the process can exit and
/// be restarted (as node-driver-registrar does); a successful one opens the
/// [`registered`](RegistrationService::registered) readiness gate.
#[derive(Debug, Clone)]
pub struct RegistrationService {
    endpoint: String,
    failed: CancellationToken,
    registered: Arc<watch::Sender<bool>>,
}

impl RegistrationService {
    /// `endpoint` is the CSI socket's path as kubelet (on the host) sees it.
    pub fn new(endpoint: String, failed: CancellationToken) -> Self {
        Self {
            endpoint,
            failed,
            registered: Arc::new(watch::channel(false).0),
        }
    }

    /// True once kubelet reported the plugin registered (`NotifyRegistrationStatus`).
    pub fn registered(&self) -> watch::Receiver<bool> {
        self.registered.subscribe()
    }

    pub fn into_server(self) -> RegistrationServer<Self> {
        RegistrationServer::new(self)
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::PluginInfo>, Status> {
        Ok(Response::new(pb::PluginInfo {
            r#type: CSI_PLUGIN_TYPE.to_owned(),
            name: DRIVER_NAME.to_owned(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["1.0.0".to_owned()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<pb::RegistrationStatus>,
    ) -> Result<Response<pb::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            info!(driver = DRIVER_NAME, "registered with kubelet");
            self.registered.send_replace(true);
        } else {
            self.registered.send_replace(false);
            error!(driver = DRIVER_NAME, error = %status.error, "kubelet refused the registration");
            self.failed.cancel();
        }
        Ok(Response::new(pb::RegistrationStatusResponse {}))
    }
}

/// Serves the registration service on `listener` until `shutdown`, behind the
/// [`authority`](crate::socket::authority) front (kubelet sends the socket path as `:authority`), with
/// its default limits: only root (kubelet) can reach this socket.
pub async fn serve_registration(
    listener: UnixListener,
    service: RegistrationService,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            local_authority_incoming(listener, FrontLimits::default()),
            shutdown.cancelled_owned(),
        )
        .await
}
