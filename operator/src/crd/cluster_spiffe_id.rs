// KubeSchema derives a hidden copy of each struct, which the lint sees as an unreachable `pub`.
#![allow(unreachable_pub)]
// Each `printcolumn(...)` repeats the same keys, which clippy takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::is_false;

/// ClusterSPIFFEID: a cluster-scoped template that yields one registration entry per selected
/// pod.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterSPIFFEID",
    plural = "clusterspiffeids",
    singular = "clusterspiffeid",
    status = "ClusterSPIFFEIDStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "ClusterSPIFFEID gives every selected pod a SPIFFE ID rendered from templates.",
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
        name = "Pods",
        type_ = "integer",
        json_path = ".status.stats.podsSelected"
    ),
    printcolumn(
        name = "Entries",
        type_ = "integer",
        json_path = ".status.stats.entriesToSet"
    ),
    printcolumn(
        name = "Class",
        type_ = "string",
        json_path = ".spec.className",
        priority = "1"
    ),
    printcolumn(
        name = "SPIFFE ID",
        type_ = "string",
        json_path = ".spec.spiffeIDTemplate",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSPIFFEIDSpec {
    /// Go text/template rendering the pod's SPIFFE ID. It must render a SPIFFE ID in the
    /// controller's trust domain. Variables: .TrustDomain .ClusterName .ClusterDomain .PodMeta
    /// .PodSpec .NodeMeta .NodeSpec.
    #[serde(rename = "spiffeIDTemplate")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("spiffeIDTemplate must not be empty"))]
    pub spiffe_id_template: String,

    /// Upper bound of the X509-SVID TTL (a duration such as "1h"); unset means the server default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ttl: String,

    /// TTL of JWT-SVIDs (a duration such as "5m"); unset means the server default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwt_ttl: String,

    /// Go text/templates rendering DNS SANs; de-duplicated, in order.
    #[serde(
        rename = "dnsNameTemplates",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dns_name_templates: Vec<String>,

    /// Go text/templates rendering extra selectors (type:value), ANDed with k8s:pod-uid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_selector_templates: Vec<String>,

    /// Trust domains whose bundles the workloads receive (names, e.g. "example.org").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 264)))]
    #[x_kube(validation = Rule::new("self.all(td, td.matches('^(spiffe://)?[a-z0-9._-]{1,255}$'))").message("federatesWith entries must be trust domain names: lowercase letters, digits, '.', '-' and '_' (e.g. example.org)"))]
    pub federates_with: Vec<String>,

    /// Selects namespaces; unset selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Selects pods within the selected namespaces; unset selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// Whether the SVID can be used to access the SPIRE administrative APIs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,

    /// Whether the entry describes a downstream SPIRE server.
    #[serde(default, skip_serializing_if = "is_false")]
    pub downstream: bool,

    /// Adds svc, svc.ns, svc.ns.svc and svc.ns.svc.<clusterDomain> for every Service whose
    /// endpoints reference the pod.
    #[serde(
        rename = "autoPopulateDNSNames",
        default,
        skip_serializing_if = "is_false"
    )]
    pub auto_populate_dns_names: bool,

    /// Which controller instance handles this resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub class_name: String,

    /// Applies only to pods that no non-fallback ClusterSPIFFEID produced an entry for.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fallback: bool,

    /// Hint passed to workloads to choose among several SVIDs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// At most 1024 bytes, as the Workload API specification bounds a hint.
    #[schemars(length(max = 1024))]
    pub hint: String,
}

/// Observed state: the Ready condition and spire-controller-manager's stats counters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSPIFFEIDStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub stats: ClusterSPIFFEIDStats,
}

/// Counters recomputed on every pass, with spire-controller-manager's names.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSPIFFEIDStats {
    #[serde(default)]
    pub namespaces_selected: i64,
    #[serde(default)]
    pub namespaces_ignored: i64,
    #[serde(default)]
    pub pods_selected: i64,
    #[serde(default)]
    pub pod_entry_render_failures: i64,
    #[serde(default)]
    pub entries_masked: i64,
    #[serde(default)]
    pub entries_to_set: i64,
    #[serde(default)]
    pub entry_failures: i64,
}
