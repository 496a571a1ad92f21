//! wimsey-proto: gRPC messages, clients and servers generated at build time from the .proto files
//! under `proto/` (compiled with protox, so no `protoc` is needed).
//!
//! - [`workload`]: the SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package), including the
//!   WIT-SVID profile RPCs.
//! - [`csi::v1`]: CSI v1 Identity and Node services (`csi.v1`).
//! - [`pluginregistration`]: kubelet plugin registration v1 (`pluginregistration.Registration`).
//! - [`wimsey::node::v1`]: the wimsey node API between the CSI plugin and the operator.
//! - [`spire::entry::v1`]: the SPIRE Server's entry API (`spire.api.server.entry.v1.Entry`), the
//!   subset the operator's spire backend calls; [`spire::trustdomain::v1`]: its federation
//!   relationships (`spire.api.server.trustdomain.v1.TrustDomain`).

/// SPIFFE Workload API. The proto file has no package, so the gRPC paths are
/// `/SpiffeWorkloadAPI/<Method>`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod workload {
    tonic::include_proto!("_");

    /// The metadata key every Workload API request must carry, with the value [`SECURITY_HEADER_VALUE`].
    pub const SECURITY_HEADER: &str = "workload.spiffe.io";
    pub const SECURITY_HEADER_VALUE: &str = "true";

    /// The encoded `FileDescriptorSet` of `workloadapi.proto` and its imports
    /// (`google/protobuf/struct.proto`), for gRPC server reflection: with it `grpcurl` and other
    /// reflection clients call the Workload API without a copy of the proto file.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/workloadapi_descriptor_set.bin"));
}

/// Container Storage Interface.
pub mod csi {
    /// CSI v1 (`csi.v1`): Identity and Node services.
    #[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

/// kubelet plugin registration v1 (`pluginregistration`).
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// wimsey's own APIs.
pub mod wimsey {
    /// The node API (`wimsey.node.v1`): node attestation and per-pod identities for the CSI plugin.
    pub mod node {
        #[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
        pub mod v1 {
            tonic::include_proto!("wimsey.node.v1");
        }
    }
}

/// The SPIRE Server API (wire-compatible subset).
pub mod spire {
    /// `spire.api.server.entry.v1`: registration entries.
    pub mod entry {
        #[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
        pub mod v1 {
            tonic::include_proto!("spire.api.server.entry.v1");
        }
    }
    /// `spire.api.server.trustdomain.v1`: federation relationships.
    pub mod trustdomain {
        #[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
        pub mod v1 {
            tonic::include_proto!("spire.api.server.trustdomain.v1");
        }
    }
}

#[cfg(test)]
mod tests;
