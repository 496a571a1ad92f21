//! Plain views of the Kubernetes objects and configuration that rendering reads. The operator
//! fills them from the API objects; tests build them directly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use super::EntryError;
use super::selector::LabelSelector;
use crate::spiffe_id::TrustDomain;
use crate::template::{Template, Value};

/// spire-controller-manager's default parent ID: the k8s_psat agent on the pod's node.
pub const DEFAULT_PARENT_ID_TEMPLATE: &str =
    "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}";

/// What a pod contributes to selection and templates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    /// `spec.nodeName`; empty while the pod is unscheduled.
    pub node_name: String,
    /// Further `.PodMeta` fields (Go names, e.g. `GenerateName`), added to the built-in ones.
    pub extra_meta: BTreeMap<String, Value>,
    /// Further `.PodSpec` fields (Go names, e.g. `Hostname`, `Containers`).
    pub extra_spec: BTreeMap<String, Value>,
    /// DNS names from the Services whose endpoints reference this pod (see
    /// [`super::service_dns_names`]); used only by specs with `autoPopulateDNSNames`.
    pub service_dns_names: Vec<String>,
}

/// What a node contributes to templates (`.NodeMeta`, `.NodeSpec`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// Further `.NodeMeta` fields (Go names).
    pub extra_meta: BTreeMap<String, Value>,
    /// `.NodeSpec` fields (Go names, e.g. `PodCIDR`, `ProviderID`).
    pub extra_spec: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A ClusterSPIFFEID as written: metadata that decides conflicts, and the spec fields verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSpiffeIdView {
    pub name: String,
    pub uid: String,
    /// `metadata.creationTimestamp`, Unix seconds.
    pub creation_timestamp: i64,
    /// `metadata.deletionTimestamp`, Unix seconds.
    pub deletion_timestamp: Option<i64>,
    pub spiffe_id_template: String,
    /// Go duration (`1h`); empty means the server default.
    pub ttl: String,
    pub jwt_ttl: String,
    pub dns_name_templates: Vec<String>,
    pub workload_selector_templates: Vec<String>,
    pub federates_with: Vec<String>,
    /// `None` selects every namespace.
    pub namespace_selector: Option<LabelSelector>,
    /// `None` selects every pod.
    pub pod_selector: Option<LabelSelector>,
    pub admin: bool,
    pub downstream: bool,
    pub auto_populate_dns_names: bool,
    pub class_name: String,
    pub fallback: bool,
    pub hint: String,
}

/// A ClusterStaticEntry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticEntryView {
    pub name: String,
    pub uid: String,
    pub creation_timestamp: i64,
    pub deletion_timestamp: Option<i64>,
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<String>,
    pub federates_with: Vec<String>,
    pub x509_svid_ttl: String,
    pub jwt_svid_ttl: String,
    pub dns_names: Vec<String>,
    pub hint: String,
    pub admin: bool,
    pub downstream: bool,
    pub store_svid: bool,
    pub class_name: String,
}

/// Decides which namespaces get no pod entries (`ignoreNamespaces`). The operator implements it
/// with anchored regexes; core has no regex engine.
pub trait NamespaceFilter: Send + Sync + fmt::Debug {
    fn is_ignored(&self, namespace: &str) -> bool;
}

/// Ignores nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIgnoredNamespaces;

impl NamespaceFilter for NoIgnoredNamespaces {
    fn is_ignored(&self, _namespace: &str) -> bool {
        false
    }
}

/// Ignores exactly the listed names.
#[derive(Debug, Clone, Default)]
pub struct ExactNamespaces(pub BTreeSet<String>);

impl NamespaceFilter for ExactNamespaces {
    fn is_ignored(&self, namespace: &str) -> bool {
        self.0.contains(namespace)
    }
}

/// The process-wide settings rendering depends on.
#[derive(Debug, Clone)]
pub struct RenderConfig {
    pub trust_domain: TrustDomain,
    pub cluster_name: String,
    pub cluster_domain: String,
    /// This instance's class; see [`handles_class`].
    pub class_name: String,
    /// Also handle resources with no class when `class_name` is set.
    pub watch_classless: bool,
    pub parent_id_template: Template,
    pub ignored_namespaces: Arc<dyn NamespaceFilter>,
}

impl RenderConfig {
    /// A configuration with the default parent template, no class and no ignored namespaces.
    pub fn new(trust_domain: TrustDomain, cluster_name: &str, cluster_domain: &str) -> Self {
        #[allow(clippy::expect_used)] // a constant that the tests parse
        let parent_id_template = Template::parse("parentIDTemplate", DEFAULT_PARENT_ID_TEMPLATE)
            .expect("the default parent ID template parses");
        Self {
            trust_domain,
            cluster_name: cluster_name.to_owned(),
            cluster_domain: cluster_domain.to_owned(),
            class_name: String::new(),
            watch_classless: false,
            parent_id_template,
            ignored_namespaces: Arc::new(NoIgnoredNamespaces),
        }
    }

    /// Replaces the parent ID template (`parentIDTemplate`).
    pub fn with_parent_id_template(mut self, source: &str) -> Result<Self, EntryError> {
        self.parent_id_template =
            Template::parse("parentIDTemplate", source).map_err(|source| {
                EntryError::InvalidTemplate {
                    field: "parentIDTemplate".to_owned(),
                    source,
                }
            })?;
        Ok(self)
    }

    pub fn with_class(mut self, class_name: &str, watch_classless: bool) -> Self {
        self.class_name = class_name.to_owned();
        self.watch_classless = watch_classless;
        self
    }

    pub fn with_ignored_namespaces(mut self, filter: Arc<dyn NamespaceFilter>) -> Self {
        self.ignored_namespaces = filter;
        self
    }
}

/// spire-controller-manager's `reconcileClass`: a resource with class `c` is ours when `c` is
/// our class, or when it has none and we watch classless ones. With no class configured only
/// classless resources are ours.
pub fn handles_class(config: &RenderConfig, resource_class: &str) -> bool {
    (resource_class.is_empty() && config.watch_classless) || resource_class == config.class_name
}
