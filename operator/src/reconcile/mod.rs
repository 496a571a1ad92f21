//! The entry reconciler: watches ClusterSPIFFEIDs, ClusterStaticEntries,
//! ClusterFederatedTrustDomains, Pods, Namespaces, Nodes and EndpointSlices into a
//! [`ClusterState`], and renders the pods each change affects into the [`crate::store::EntryStore`].
//!
//! [`state`] (the index of watched objects, and in `state/render.rs` the pass that renders dirty
//! pods and hands them to a [`crate::backend::Backend`]), [`federation`] and [`status`] are plain
//! logic; [`watch`] is the Kubernetes edge. The status writer sits above, in [`crate::status`].

pub mod directory;
pub mod federation;
pub mod ids;
pub mod kept;
pub mod resource_meta;
mod shared;
pub mod state;
pub mod status;
pub mod watch;

#[cfg(test)]
mod relist_tests;
#[cfg(test)]
mod tests;

pub use directory::PodDirectory;
pub use federation::{FederatedTrustDomain, FederationSet};
pub use ids::entry_id;
pub use kept::{KeptFields, KeptKind};
pub use resource_meta::ResourceMeta;
pub use state::{ClusterState, Dirty, PassReport, SliceInput, SpecInput, StaticInput};
pub use watch::{FeedbackSender, ReconcileError, Reconciler, ReconcilerHandle};
