//! Kubelet plugin registration v1 (csi-contract.md §3.8), served by the plugin itself so the
//! DaemonSet needs no node-driver-registrar sidecar.

use std::path::{Path, PathBuf};

use std::io;

use tokio::io::DuplexStream;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};
use wimsey_proto::pluginregistration as pb;
use wimsey_proto::pluginregistration::registration_server::{Registration, RegistrationServer};

use super::authority::rewrite_client_frames;
use super::services::DRIVER_NAME;

/// The plugin type kubelet's plugin watcher routes to its CSI handler.
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";

/// The registration socket's path in kubelet's registry directory.
pub fn registration_socket(registry_dir: &Path) -> PathBuf {
    registry_dir.join(format!("{DRIVER_NAME}-reg.sock"))
}

/// Answers kubelet's GetInfo; a failed registration cancels `failed` so the process can exit and
/// be restarted (as node-driver-registrar does).
#[derive(Debug, Clone)]
pub struct RegistrationService {
    endpoint: String,
    failed: CancellationToken,
}

impl RegistrationService {
    /// `endpoint` is the CSI socket's path as kubelet (on the host) sees it.
    pub fn new(endpoint: String, failed: CancellationToken) -> Self {
        Self { endpoint, failed }
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
        } else {
            error!(driver = DRIVER_NAME, error = %status.error, "kubelet refused the registration");
            self.failed.cancel();
        }
        Ok(Response::new(pb::RegistrationStatusResponse {}))
    }
}

/// Serves the registration service on `listener` until `shutdown`. Each connection goes through
/// the [`authority`](super::authority) front, so kubelet's socket-path `:authority` is accepted.
pub async fn serve_registration(
    listener: UnixListener,
    service: RegistrationService,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (connections, incoming) = mpsc::channel::<io::Result<DuplexStream>>(8);
    let accepting = shutdown.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            let client = tokio::select! {
                () = accepting.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => client,
                    Err(e) => {
                        warn!(error = %e, "accepting a registration connection");
                        continue;
                    }
                },
            };
            let (front, server_side) = tokio::io::duplex(64 * 1024);
            if connections.send(Ok(server_side)).await.is_err() {
                return;
            }
            tokio::spawn(relay(client, front));
        }
    });
    let served = tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown.cancelled_owned())
        .await;
    acceptor.abort();
    served
}

/// Client frames go through the authority rewrite; responses are copied back as they are.
async fn relay(client: UnixStream, server: DuplexStream) {
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, server_write) = tokio::io::split(server);
    let (requests, _) = tokio::join!(
        rewrite_client_frames(client_read, server_write),
        tokio::io::copy(&mut server_read, &mut client_write),
    );
    if let Err(e) = requests {
        warn!(error = %e, "registration connection dropped");
    }
}
