//! The CSI Identity and Node services (csi-contract.md §3.3, §3.4) over the volume manager.

use std::sync::Arc;

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
use crate::identity_source::IdentitySource;

/// The CSI driver name (the CSIDriver object's name).
pub const DRIVER_NAME: &str = "csi.wimsey.dev";

/// Identity: name, version, no plugin capabilities (a node-only driver has no controller).
#[derive(Debug, Clone, Default)]
pub struct IdentityService;

impl IdentityService {
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
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
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
        let spec = parse_publish(request.get_ref()).map_err(|e| fail(RPC, e))?;
        self.manager.publish(spec).await.map_err(|e| fail(RPC, e))?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        const RPC: &str = "NodeUnpublishVolume";
        let (volume_id, target) = parse_unpublish(request.get_ref()).map_err(|e| fail(RPC, e))?;
        self.manager
            .unpublish(&volume_id, &target)
            .await
            .map_err(|e| fail(RPC, e))?;
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
