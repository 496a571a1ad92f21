// KubeSchema derives a hidden copy of each struct, which the lint sees as an unreachable `pub`.
#![allow(unreachable_pub)]
// Each `printcolumn(...)` repeats the same keys, which clippy takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// ClusterFederatedTrustDomain: a federation relationship with another trust domain.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterFederatedTrustDomain",
    plural = "clusterfederatedtrustdomains",
    singular = "clusterfederatedtrustdomain",
    status = "ClusterFederatedTrustDomainStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "ClusterFederatedTrustDomain federates with another trust domain through its bundle endpoint.",
    printcolumn(
        name = "Trust Domain",
        type_ = "string",
        json_path = ".spec.trustDomain"
    ),
    printcolumn(
        name = "Endpoint URL",
        type_ = "string",
        json_path = ".spec.bundleEndpointURL"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Sequence",
        type_ = "integer",
        json_path = ".status.spiffeSequence"
    ),
    printcolumn(
        name = "X509",
        type_ = "integer",
        json_path = ".status.x509Authorities",
        priority = "1"
    ),
    printcolumn(
        name = "JWT",
        type_ = "integer",
        json_path = ".status.jwtAuthorities",
        priority = "1"
    ),
    printcolumn(
        name = "Last Fetch",
        type_ = "date",
        json_path = ".status.lastSuccessfulFetch"
    ),
    printcolumn(
        name = "Next Refresh",
        type_ = "date",
        json_path = ".status.nextRefresh",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFederatedTrustDomainSpec {
    /// The federated trust domain's name (e.g. example.org).
    #[schemars(length(max = 264), regex(pattern = "[a-z0-9._-]{1,255}"))]
    #[x_kube(validation = Rule::new("self.matches('^(spiffe://)?[a-z0-9._-]{1,255}$')").message("trustDomain must be a trust domain name: lowercase letters, digits, '.', '-' and '_' (e.g. example.org)"))]
    pub trust_domain: String,

    /// URL of the trust domain's SPIFFE bundle endpoint; https only.
    #[serde(rename = "bundleEndpointURL")]
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() == 'https'").message("bundleEndpointURL must be an https URL"),
        validation = Rule::new("isURL(self) && url(self).getHostname() != ''").message("bundleEndpointURL must have a host"),
        validation = Rule::new("!self.matches('^[^/]*//[^/?#]*@')").message("bundleEndpointURL must not contain user info")
    )]
    pub bundle_endpoint_url: String,

    /// How to authenticate the bundle endpoint.
    pub bundle_endpoint_profile: BundleEndpointProfile,

    /// The trust domain's bundle (SPIFFE bundle JSON), used until the first fetch succeeds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_domain_bundle: String,

    /// Which controller instance handles this resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub class_name: String,
}

/// The bundle endpoint profile: `https_web` (Web PKI) or `https_spiffe` (the endpoint presents
/// an X509-SVID for `endpointSPIFFEID`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type != 'https_spiffe' || (has(self.endpointSPIFFEID) && size(self.endpointSPIFFEID) > 0)").message("endpointSPIFFEID is required for the https_spiffe profile"),
    validation = Rule::new("self.type != 'https_web' || !has(self.endpointSPIFFEID) || size(self.endpointSPIFFEID) == 0").message("endpointSPIFFEID must be empty for the https_web profile")
)]
pub struct BundleEndpointProfile {
    #[serde(rename = "type")]
    pub profile_type: BundleEndpointProfileType,

    /// The SPIFFE ID the bundle endpoint presents (https_spiffe only).
    #[serde(
        rename = "endpointSPIFFEID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("size(self) == 0 || self.matches('^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*$')").message("endpointSPIFFEID must be a SPIFFE ID (spiffe://<trust domain>/<path>)"))]
    pub endpoint_spiffe_id: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BundleEndpointProfileType {
    #[default]
    #[serde(rename = "https_web")]
    HttpsWeb,
    #[serde(rename = "https_spiffe")]
    HttpsSpiffe,
}

/// The largest fetched bundle the status holds (its schema's maxLength).
pub const STATUS_BUNDLE_MAX_BYTES: usize = 262_144;

/// spire-controller-manager has no status here (its issue #171); ours says whether federation
/// works. Two writers share it by server-side apply: the reconciler owns `Ready` and
/// `observedGeneration`; the bundle poller (the Lease holder) owns `BundleFetched` and the fetch
/// fields, and the fetched `bundle` is where every replica, and a restarted operator, find the
/// last good bundle without fetching it again.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFederatedTrustDomainStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last good bundle fetched from the bundle endpoint (SPIFFE bundle JSON).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 262144))]
    pub bundle: String,
    /// The trust domain the held bundle belongs to (a bundle is never used for another one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_domain: String,
    /// When a bundle was last fetched successfully (changed or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_fetch: Option<Time>,
    /// The held bundle's `spiffe_sequence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_sequence: Option<u64>,
    /// X.509 authorities in the held bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_authorities: Option<u32>,
    /// JWT authorities in the held bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_authorities: Option<u32>,
    /// When the endpoint is polled next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<Time>,
}
