//! The entry reconciler: watches ClusterSPIFFEIDs, ClusterStaticEntries,
//! ClusterFederatedTrustDomains, Pods, Namespaces, Nodes and EndpointSlices into a
//! [`ClusterState`], and renders the pods each change affects into the [`crate::store::EntryStore`].
//!
//! [`state`] and [`federation`] are plain logic; [`watch`] is the Kubernetes edge.

pub mod directory;
pub mod federation;
pub mod ids;
pub mod kept;
pub mod resource_meta;
mod shared;
pub mod state;
pub mod watch;

#[cfg(test)]
mod relist_tests;
#[cfg(test)]
mod tests;

pub use directory::PodDirectory;
pub use federation::{FederatedTrustDomain, FederationSet};
pub use ids::entry_id;
pub use kept::{KeptFields, KeptKind};
pub use state::{
    ClusterState, Dirty, PassReport, ResourceMeta, SliceInput, SpecInput, StaticInput,
};
pub use watch::{ReconcileError, Reconciler, ReconcilerHandle};
