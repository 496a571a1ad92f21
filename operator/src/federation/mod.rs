//! Federation over the network: our bundle endpoint (and OIDC discovery) served by every
//! replica, and the poller that fetches the bundles of the ClusterFederatedTrustDomains (the
//! Lease holder only) into their status, where every replica finds them.

pub mod args;
pub mod endpoint;
pub mod fetch;
pub mod fetch_status;
pub mod oidc;
pub mod poller;
pub mod web_cert;
pub mod web_pki;
