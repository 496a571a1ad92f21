//! Federation settings, flattened into `wimsey-operator run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wimsey_core::federation::RefreshPolicy;

use super::endpoint::EndpointLimits;
use super::fetch::FetchLimits;
use crate::authority::parse_duration;
use crate::crd::STATUS_BUNDLE_MAX_BYTES;

/// How our bundle endpoint authenticates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeProfile {
    /// An X.509-SVID of spiffe://<trust domain>/wimsey/bundle-endpoint, from our own CA.
    #[value(name = "https_spiffe")]
    HttpsSpiffe,
    /// A Web PKI certificate from a kubernetes.io/tls Secret (e.g. written by cert-manager).
    #[value(name = "https_web")]
    HttpsWeb,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FederationArgs {
    /// Serve this trust domain's bundle endpoint (and OIDC discovery, with --jwt-issuer-url) on
    /// this address, e.g. 0.0.0.0:8444 (the node API has 8443). Unset: not served.
    #[arg(long, env = "WIMSEY_BUNDLE_ENDPOINT_ADDR")]
    pub bundle_endpoint_addr: Option<SocketAddr>,
    /// How the bundle endpoint authenticates itself.
    #[arg(
        long,
        env = "WIMSEY_BUNDLE_ENDPOINT_PROFILE",
        value_enum,
        default_value = "https_spiffe"
    )]
    pub bundle_endpoint_profile: ServeProfile,
    /// For https_web: the kubernetes.io/tls Secret (in the operator's namespace) holding the
    /// serving certificate (tls.crt) and key (tls.key); reloaded when it changes.
    #[arg(long, env = "WIMSEY_BUNDLE_ENDPOINT_SECRET")]
    pub bundle_endpoint_secret: Option<String>,
    /// Extra trusted roots (a PEM file) for fetching https_web bundle endpoints, on top of the
    /// Mozilla roots and the system's.
    #[arg(long, env = "WIMSEY_FEDERATION_CA_BUNDLE")]
    pub federation_ca_bundle: Option<PathBuf>,
    /// Shortest interval between two fetches of a bundle endpoint, whatever its refresh hint.
    #[arg(long, env = "WIMSEY_FEDERATION_MIN_REFRESH", default_value = "1m", value_parser = parse_duration)]
    pub federation_min_refresh: Duration,
    /// Longest interval between two fetches of a bundle endpoint.
    #[arg(long, env = "WIMSEY_FEDERATION_MAX_REFRESH", default_value = "1h", value_parser = parse_duration)]
    pub federation_max_refresh: Duration,
    /// Interval for bundles without a refresh hint.
    #[arg(long, env = "WIMSEY_FEDERATION_DEFAULT_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub federation_default_refresh: Duration,
    /// Largest bundle accepted from a bundle endpoint, in bytes.
    #[arg(long, env = "WIMSEY_FEDERATION_MAX_BUNDLE_BYTES", default_value_t = FetchLimits::default().max_bundle_bytes)]
    pub federation_max_bundle_bytes: usize,
}

/// Why the federation settings do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationArgsError {
    #[error("--bundle-endpoint-profile=https_web needs --bundle-endpoint-secret")]
    WebWithoutSecret,
    #[error("--bundle-endpoint-secret is only used with --bundle-endpoint-profile=https_web")]
    SecretWithoutWeb,
    #[error(
        "--federation-max-bundle-bytes {0} is larger than a status can hold ({STATUS_BUNDLE_MAX_BYTES})"
    )]
    MaxBundleTooLarge(usize),
}

impl FederationArgs {
    pub fn check(&self) -> Result<(), FederationArgsError> {
        if self.federation_max_bundle_bytes > STATUS_BUNDLE_MAX_BYTES {
            return Err(FederationArgsError::MaxBundleTooLarge(
                self.federation_max_bundle_bytes,
            ));
        }
        match (self.bundle_endpoint_profile, &self.bundle_endpoint_secret) {
            (ServeProfile::HttpsWeb, None) => Err(FederationArgsError::WebWithoutSecret),
            (ServeProfile::HttpsSpiffe, Some(_)) => Err(FederationArgsError::SecretWithoutWeb),
            _ => Ok(()),
        }
    }

    pub fn refresh_policy(&self) -> RefreshPolicy {
        RefreshPolicy {
            min: self.federation_min_refresh,
            max: self.federation_max_refresh,
            default: self.federation_default_refresh,
        }
    }

    pub fn fetch_limits(&self) -> FetchLimits {
        FetchLimits {
            max_bundle_bytes: self.federation_max_bundle_bytes,
            ..FetchLimits::default()
        }
    }

    pub fn endpoint_limits(&self) -> EndpointLimits {
        EndpointLimits::default()
    }
}
