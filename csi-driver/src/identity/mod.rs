//! The plugin's one identity model, below everything else in the crate: what a pod is
//! ([`PodInfo`]), where its identities come from ([`IdentitySource`], the node API client in
//! production), what it holds at a moment ([`IdentitySnapshot`]) and how it is read
//! ([`PodIdentity`]: by the Workload API server and the files writer alike).
//!
//! - [`source`]: [`PodInfo`] and the [`IdentitySource`] trait the volume manager attaches pods to.
//! - [`snapshot`]: [`IdentitySnapshot`], the identities and bundles of one pod, and the
//!   [`PodIdentity`] trait that publishes them and mints JWT-SVIDs.
//! - [`none`]: the source for nodes without a node API (spire-agent mode only).

pub mod none;
pub mod snapshot;
pub mod source;

pub use none::NoIdentitySource;
pub use snapshot::{
    IdentitySnapshot, IssuedIdentities, MintError, PodIdentity, WitSvidEntry, X509SvidEntry,
};
pub use source::{IdentitySource, PodInfo};
