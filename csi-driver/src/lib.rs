//! wimsey-csi: the CSI node plugin. For now, the per-pod SPIFFE Workload API server: one tonic
//! service per pod volume, fed by a [`workload_api::PodIdentity`] that supplies that pod's
//! identities, served on a Unix socket that only that pod can reach.

pub mod identity_source;
pub mod node_client;
pub mod workload_api;
pub mod csi;
