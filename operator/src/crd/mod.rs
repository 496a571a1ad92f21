//! The three custom resources, drop-in compatible with spire-controller-manager's
//! `spire.spiffe.io/v1alpha1` (every spec field, JSON name, type and default), plus
//! `status.conditions`, `status.observedGeneration` and printer columns on all three.
//!
//! What the API server can check is checked there, with CEL rules and OpenAPI constraints:
//! trust-domain names, selector syntax, bundle endpoint URLs and profiles. What it cannot (a
//! template that does not parse, a label selector with a bad key) becomes a status condition.

mod cluster_federated_trust_domain;
mod cluster_spiffe_id;
mod cluster_static_entry;
mod status;

pub use cluster_federated_trust_domain::{
    BundleEndpointProfile, BundleEndpointProfileType, ClusterFederatedTrustDomain,
    ClusterFederatedTrustDomainSpec, ClusterFederatedTrustDomainStatus, STATUS_BUNDLE_MAX_BYTES,
};
pub use cluster_spiffe_id::{
    ClusterSPIFFEID, ClusterSPIFFEIDSpec, ClusterSPIFFEIDStats, ClusterSPIFFEIDStatus,
};
pub use cluster_static_entry::{
    ClusterStaticEntry, ClusterStaticEntrySpec, ClusterStaticEntryStatus,
};
pub use status::{CONDITION_BUNDLE_FETCHED, CONDITION_READY, reasons};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub const GROUP: &str = "spire.spiffe.io";
pub const VERSION: &str = "v1alpha1";

/// Every CRD we serve, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        ClusterSPIFFEID::crd(),
        ClusterStaticEntry::crd(),
        ClusterFederatedTrustDomain::crd(),
    ]
}

fn is_false(value: &bool) -> bool {
    !*value
}
