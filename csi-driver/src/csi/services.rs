//! The CSI Identity and Node services (csi-contract.md §3.3, §3.4) over the volume manager.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::warn;
use wimsey_proto::csi::v1 as csi;
use wimsey_proto::csi::v1::identity_server::{Identity, IdentityServer};
use wimsey_proto::csi::v1::node_server::{Node, NodeServer};
use wimsey_proto::csi::v1::node_service_capability::rpc::Type as NodeCap;

use super::error::CsiError;
use super::manager::VolumeManager;
use super::mounts;
use super::request::{parse_publish, parse_unpublish, parse_volume_stats};
use crate::identity::IdentitySource;
use crate::metrics::{RESULT_OK, UNKNOWN_MODE, VolumeOperation, code_label};
use crate::volume_mode::VolumeMode;

/// The CSI driver name (the CSIDriver object's name).
pub const DRIVER_NAME: &str = "csi.wimsey.dev";

/// Identity: name, version, no plugin capabilities (a node-only driver has no controller), and
/// `Probe` answering from the plugin's readiness (the same gate as the admin `/readyz`).
#[derive(Debug, Clone)]
pub struct IdentityService {
    ready: watch::Receiver<bool>,
}

impl IdentityService {
    pub fn new(ready: watch::Receiver<bool>) -> Self {
        Self { ready }
    }

    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.to_owned(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse::default()))
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let ready = *self.ready.borrow();
        Ok(Response::new(csi::ProbeResponse { ready: Some(ready) }))
    }
}

/// Node: publish/unpublish through the volume manager; stats report the mount's health.
#[derive(Debug)]
pub struct NodeService<S: IdentitySource> {
    manager: Arc<VolumeManager<S>>,
    node_id: String,
}

impl<S: IdentitySource> NodeService<S> {
    pub fn new(manager: Arc<VolumeManager<S>>, node_id: String) -> Self {
        Self { manager, node_id }
    }

    pub fn into_server(self) -> NodeServer<Self> {
        NodeServer::new(self)
    }

    /// Counts a publish or unpublish with its latency, and refreshes the active volume gauge.
    async fn observe(
        &self,
        operation: VolumeOperation,
        mode: &'static str,
        outcome: &Result<(), Status>,
        started: Instant,
    ) {
        let result = match outcome {
            Ok(()) => RESULT_OK,
            Err(status) => code_label(status.code()),
        };
        let metrics = self.manager.metrics();
        metrics.observe_volume_operation(operation, mode, result, started.elapsed().as_secs_f64());
        self.manager.record_active_volumes().await;
    }
}

fn fail(rpc: &'static str, error: CsiError) -> Status {
    warn!(rpc, error = %error, label = error.label(), "CSI call failed");
    Status::from(error)
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc}: not supported by this node-only driver"))
}

#[tonic::async_trait]
impl<S: IdentitySource> Node for NodeService<S> {
    async fn node_stage_volume(
        &self,
        _request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(unimplemented("NodeStageVolume"))
    }

    async fn node_unstage_volume(
        &self,
        _request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(unimplemented("NodeUnstageVolume"))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        const RPC: &str = "NodePublishVolume";
        let started = Instant::now();
        let (mode, published) = match parse_publish(request.get_ref()) {
            Ok(spec) => (spec.mode.as_str(), self.manager.publish(spec).await),
            Err(error) => (UNKNOWN_MODE, Err(error)),
        };
        let published = published.map_err(|e| fail(RPC, e));
        self.observe(VolumeOperation::Publish, mode, &published, started)
            .await;
        published?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        const RPC: &str = "NodeUnpublishVolume";
        let started = Instant::now();
        let (mode, unpublished) = match parse_unpublish(request.get_ref()) {
            Ok((volume_id, target)) => {
                let mode = self.manager.mode_of(&volume_id).await;
                let mode = mode.map_or(UNKNOWN_MODE, VolumeMode::as_str);
                (mode, self.manager.unpublish(&volume_id, &target).await)
            }
            Err(error) => (UNKNOWN_MODE, Err(error)),
        };
        let unpublished = unpublished.map_err(|e| fail(RPC, e));
        self.observe(VolumeOperation::Unpublish, mode, &unpublished, started)
            .await;
        unpublished?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        const RPC: &str = "NodeGetVolumeStats";
        let (volume_id, path) = parse_volume_stats(request.get_ref()).map_err(|e| fail(RPC, e))?;
        match self.manager.target_of(&volume_id).await {
            Some(target) if target == path => {}
            _ => {
                return Err(Status::not_found(format!(
                    "volume {volume_id} is not published at {}",
                    path.display()
                )));
            }
        }
        let mounted = mounts::is_mount_point(&path).map_err(|e| fail(RPC, e))?;
        let volume_condition = Some(if mounted {
            csi::VolumeCondition {
                abnormal: false,
                message: "mounted".to_owned(),
            }
        } else {
            csi::VolumeCondition {
                abnormal: true,
                message: format!("{} is not mounted", path.display()),
            }
        });
        Ok(Response::new(csi::NodeGetVolumeStatsResponse {
            usage: Vec::new(),
            volume_condition,
        }))
    }

    async fn node_expand_volume(
        &self,
        _request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(unimplemented("NodeExpandVolume"))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let capabilities = [
            NodeCap::GetVolumeStats,
            NodeCap::VolumeCondition,
            NodeCap::VolumeMountGroup,
        ]
        .into_iter()
        .map(|cap| csi::NodeServiceCapability {
            r#type: Some(csi::node_service_capability::Type::Rpc(
                csi::node_service_capability::Rpc { r#type: cap as i32 },
            )),
        })
        .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

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
