//! wimsey end-to-end test support.
//!
//! - [`oci`]: the OCI image-layout writer behind `wimsey-oci-image` (always built).
//! - [`kube_schemas`]: kubeconform's JSON schemas from the API server's OpenAPI document, behind
//!   `wimsey-kube-schemas` (always built).
//! - [`values_doc`]: the values reference of docs/install.md from the chart, behind `wimsey-values-doc`.
//! - with the default `cluster` feature: [`cluster`] (find the cluster from `KUBECONFIG`, its level, our
//!   image names), [`namespace`] (a temporary namespace per test, dumped on failure and deleted),
//!   [`wait`] (wait for a condition with a timeout), [`diagnostics`] (pod status, events and logs) and
//!   [`exec`] (run a command in a pod), [`identity`] (a ClusterSPIFFEID per test and the pods that read
//!   their identity), [`plugin_admin`] (the CSI plugin's `/readyz` and `/metrics` through a pod
//!   port-forward), [`svid_timeline`] (a watcher's SVIDs over time, and any moment it held only an
//!   expired one) and [`wimsey`] (install wimsey from its Helm chart).

pub mod kube_schemas;
pub mod oci;
pub mod values_doc;

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "cluster")]
pub mod diagnostics;
#[cfg(feature = "cluster")]
pub mod exec;
#[cfg(feature = "cluster")]
pub mod identity;
#[cfg(feature = "cluster")]
pub mod namespace;
#[cfg(feature = "cluster")]
pub mod plugin_admin;
#[cfg(feature = "cluster")]
pub mod svid_timeline;
#[cfg(feature = "cluster")]
pub mod wait;
#[cfg(feature = "cluster")]
pub mod wimsey;
#[cfg(feature = "cluster")]
pub mod workloads;

#[cfg(feature = "cluster")]
pub use cluster::{Cluster, Level};
#[cfg(feature = "cluster")]
pub use namespace::TestNamespace;
