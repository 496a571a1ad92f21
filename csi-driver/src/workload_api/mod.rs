//! The SPIFFE Workload API for one pod (spiffe-specs §4).
//!
//! - [`identity`]: what the server serves: a watchable [`IdentitySnapshot`] per pod and the
//!   [`PodIdentity`] trait that supplies it and mints JWT-SVIDs.
//! - [`responses`]: plain functions from a snapshot to Workload API messages.
//! - [`service`]: the tonic service (security header, streaming, error mapping).
//! - [`socket`]: binding the per-pod Unix socket and serving until shutdown.

pub mod error;
pub mod identity;
pub mod responses;
pub mod service;
pub mod socket;

pub use error::WorkloadApiError;
pub use identity::{IdentitySnapshot, IssuedIdentities, PodIdentity, WitSvidEntry, X509SvidEntry};
pub use service::WorkloadApiService;
pub use socket::{
    SocketError, bind_unix_socket, bind_unix_socket_in_new_dir, serve_unix_socket,
    serve_workload_api,
};
