//! wimsey-operator: reconciles `ClusterSPIFFEID`, `ClusterStaticEntry` and
//! `ClusterFederatedTrustDomain` (`spire.spiffe.io/v1alpha1`) into registration entries and
//! federation relationships.
//!
//! This crate holds the Kubernetes edge: CRD types, configuration, and the conversion of API
//! objects into the plain views that `wimsey_core::entries` renders.

pub mod admin;
pub mod authority;
pub mod backend;
pub mod config;
pub mod crd;
pub mod crdgen;
pub mod crdref;
pub mod federation;
pub mod leader;
pub mod nodeapi;
pub mod owner;
pub mod reconcile;
pub mod run;
pub mod scm_config;
pub mod spire_api;
pub mod spire_entries;
pub mod spire_relationships;
pub mod spire_sync;
pub mod status;
pub mod store;
pub mod views;
pub mod watch_backoff;
