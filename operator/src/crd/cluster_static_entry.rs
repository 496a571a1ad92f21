// KubeSchema derives a hidden copy of each struct, which the lint sees as an unreachable `pub`.
#![allow(unreachable_pub)]
// Each `printcolumn(...)` repeats the same keys, which clippy takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::is_false;

/// ClusterStaticEntry: one literal registration entry (no templating), for workloads outside
/// the cluster, downstream servers and node aliases.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterStaticEntry",
    plural = "clusterstaticentries",
    singular = "clusterstaticentry",
    status = "ClusterStaticEntryStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "ClusterStaticEntry declares one registration entry verbatim.",
    printcolumn(name = "SPIFFE ID", type_ = "string", json_path = ".spec.spiffeID"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Parent ID",
        type_ = "string",
        json_path = ".spec.parentID",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStaticEntrySpec {
    /// The entry's SPIFFE ID (any trust domain).
    #[serde(rename = "spiffeID")]
    pub spiffe_id: String,

    /// The SPIFFE ID of the agent or server the entry is for.
    #[serde(rename = "parentID")]
    pub parent_id: String,

    /// Workload selectors, each type:value.
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[^:]+:.+$'))").message("selectors must be type:value with a non-empty type and value (e.g. k8s:ns:default)"))]
    pub selectors: Vec<String>,

    /// Trust domains whose bundles the workload receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 264)))]
    #[x_kube(validation = Rule::new("self.all(td, td.matches('^(spiffe://)?[a-z0-9._-]{1,255}$'))").message("federatesWith entries must be trust domain names: lowercase letters, digits, '.', '-' and '_' (e.g. example.org)"))]
    pub federates_with: Vec<String>,

    /// X509-SVID TTL (a duration such as "1h"); unset means the server default.
    #[serde(
        rename = "x509SVIDTTL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub x509_svid_ttl: String,

    /// JWT-SVID TTL (a duration such as "5m"); unset means the server default.
    #[serde(
        rename = "jwtSVIDTTL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub jwt_svid_ttl: String,

    /// DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,

    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// At most 1024 bytes, as the Workload API specification bounds a hint.
    #[schemars(length(max = 1024))]
    pub hint: String,

    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,

    #[serde(default, skip_serializing_if = "is_false")]
    pub downstream: bool,

    /// Whether the SVID is stored in the datastore (for SVIDStore plugins).
    #[serde(rename = "storeSVID", default, skip_serializing_if = "is_false")]
    pub store_svid: bool,

    /// Which controller instance handles this resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub class_name: String,
}

/// spire-controller-manager's three booleans, plus conditions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStaticEntryStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The entry rendered (its fields are valid).
    pub rendered: bool,
    /// An older resource declares an entry with the same key.
    pub masked: bool,
    /// The entry is stored.
    pub set: bool,
}
