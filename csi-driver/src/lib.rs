//! wimsey-csi: the CSI node plugin.
//!
//! - [`identity`]: the one identity model at the bottom: [`identity::PodInfo`], the
//!   [`identity::IdentitySource`] trait, [`identity::IdentitySnapshot`]s and the
//!   [`identity::PodIdentity`] handle, and the no-identity source.
//! - [`csi`]: the CSI Identity and Node services, the volume manager (workload-api, files and
//!   spire-agent modes), volume records and kubelet plugin registration.
//! - [`workload_api`]: the per-pod SPIFFE Workload API server, fed by a
//!   [`identity::PodIdentity`] and served on a Unix socket only that pod can reach.
//! - [`node_client`]: the operator's node API client, the [`identity::IdentitySource`] that
//!   supplies every pod's identities.
//! - [`socket`]: binding the plugin's Unix sockets, and the HTTP/2 `:authority` front for clients
//!   that send the socket path.
//! - [`admin`]: `/livez`, `/readyz` and `/metrics`, and what ready means for the plugin.
//! - [`metrics`]: the plugin's Prometheus metrics, served on the admin address.

pub mod admin;
pub mod csi;
pub mod identity;
pub mod metrics;
pub mod node_client;
pub mod socket;
pub mod volume_mode;
pub mod workload_api;
