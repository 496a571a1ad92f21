//! Kubernetes objects to the plain views `wimsey_core::entries` renders.
//!
//! Pods and nodes are converted keeping only what the ClusterSPIFFEID templates can reach (a
//! [`FieldTree`], see `reconcile::kept`): the identity fields always, the rest of `.PodMeta`,
//! `.PodSpec`, `.NodeMeta` and `.NodeSpec` only where a template reads it.

mod go_value;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as K8sLabelSelector, ObjectMeta,
};
use kube::ResourceExt;
use wimsey_core::entries::{
    ClusterSpiffeIdView, EntryError, LabelSelector, LabelSelectorOperator,
    LabelSelectorRequirement, NamespaceView, NodeView, PodView, StaticEntryView,
};
use wimsey_core::template::{FieldTree, Value};

use go_value::go_fields;
pub use go_value::go_template_value;

use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry};

fn creation_seconds(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second())
}

fn deletion_seconds(meta: &ObjectMeta) -> Option<i64> {
    meta.deletion_timestamp.as_ref().map(|t| t.0.as_second())
}

fn string_map(map: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.clone().unwrap_or_default()
}

/// A Kubernetes label selector; an unknown operator is a spec error, as in
/// `LabelSelectorAsSelector`.
pub fn label_selector(
    selector: &K8sLabelSelector,
    field: &str,
) -> Result<LabelSelector, EntryError> {
    let match_expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|requirement| {
            let operator =
                LabelSelectorOperator::parse(&requirement.operator).ok_or_else(|| {
                    EntryError::InvalidLabelSelector {
                        field: field.to_owned(),
                        reason: format!(
                            "{:?} is not a valid label selector operator",
                            requirement.operator
                        ),
                    }
                })?;
            Ok(LabelSelectorRequirement {
                key: requirement.key.clone(),
                operator,
                values: requirement.values.clone().unwrap_or_default(),
            })
        })
        .collect::<Result<_, EntryError>>()?;
    Ok(LabelSelector {
        match_labels: string_map(&selector.match_labels),
        match_expressions,
    })
}

/// A ClusterSPIFFEID as the renderer sees it.
pub fn cluster_spiffe_id_view(
    resource: &ClusterSPIFFEID,
) -> Result<ClusterSpiffeIdView, EntryError> {
    let spec = &resource.spec;
    Ok(ClusterSpiffeIdView {
        name: resource.name_any(),
        uid: resource.uid().unwrap_or_default(),
        creation_timestamp: creation_seconds(&resource.metadata),
        deletion_timestamp: deletion_seconds(&resource.metadata),
        spiffe_id_template: spec.spiffe_id_template.clone(),
        ttl: spec.ttl.clone(),
        jwt_ttl: spec.jwt_ttl.clone(),
        dns_name_templates: spec.dns_name_templates.clone(),
        workload_selector_templates: spec.workload_selector_templates.clone(),
        federates_with: spec.federates_with.clone(),
        namespace_selector: spec
            .namespace_selector
            .as_ref()
            .map(|s| label_selector(s, "namespaceSelector"))
            .transpose()?,
        pod_selector: spec
            .pod_selector
            .as_ref()
            .map(|s| label_selector(s, "podSelector"))
            .transpose()?,
        admin: spec.admin,
        downstream: spec.downstream,
        auto_populate_dns_names: spec.auto_populate_dns_names,
        class_name: spec.class_name.clone(),
        fallback: spec.fallback,
        hint: spec.hint.clone(),
    })
}

/// A ClusterStaticEntry as the renderer sees it.
pub fn static_entry_view(resource: &ClusterStaticEntry) -> StaticEntryView {
    let spec = &resource.spec;
    StaticEntryView {
        name: resource.name_any(),
        uid: resource.uid().unwrap_or_default(),
        creation_timestamp: creation_seconds(&resource.metadata),
        deletion_timestamp: deletion_seconds(&resource.metadata),
        spiffe_id: spec.spiffe_id.clone(),
        parent_id: spec.parent_id.clone(),
        selectors: spec.selectors.clone(),
        federates_with: spec.federates_with.clone(),
        x509_svid_ttl: spec.x509_svid_ttl.clone(),
        jwt_svid_ttl: spec.jwt_svid_ttl.clone(),
        dns_names: spec.dns_names.clone(),
        hint: spec.hint.clone(),
        admin: spec.admin,
        downstream: spec.downstream,
        store_svid: spec.store_svid,
        class_name: spec.class_name.clone(),
    }
}

/// `.PodMeta`/`.NodeMeta` fields that `keep` reaches, except labels (always in the view) and,
/// for pods, annotations (in the view, filtered). `managedFields` is bookkeeping no template
/// needs, and `resourceVersion` changes on every status update, which would re-render the pod
/// each time.
fn meta_fields(
    meta: &ObjectMeta,
    keep: &FieldTree,
    annotations_in_view: bool,
) -> BTreeMap<String, Value> {
    if keep.is_empty() {
        return BTreeMap::new();
    }
    // Built field by field: cloning the whole ObjectMeta would copy managedFields first.
    let trimmed = ObjectMeta {
        annotations: if annotations_in_view {
            None
        } else {
            meta.annotations.clone()
        },
        creation_timestamp: meta.creation_timestamp.clone(),
        deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
        deletion_timestamp: meta.deletion_timestamp.clone(),
        finalizers: meta.finalizers.clone(),
        generate_name: meta.generate_name.clone(),
        generation: meta.generation,
        labels: None,
        managed_fields: None,
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        owner_references: meta.owner_references.clone(),
        resource_version: None,
        self_link: meta.self_link.clone(),
        uid: meta.uid.clone(),
    };
    let mut fields = go_fields("*v1.ObjectMeta", &trimmed, |r| r.object_meta, keep);
    // The view carries these; an empty copy here would hide them.
    fields.remove("Labels");
    if annotations_in_view {
        fields.remove("Annotations");
    }
    fields
}

static NOTHING: FieldTree = FieldTree::new();
static EVERYTHING: std::sync::LazyLock<FieldTree> = std::sync::LazyLock::new(FieldTree::everything);

/// A pod as templates see it, whole: `.PodMeta` is the whole ObjectMeta and `.PodSpec` the whole
/// PodSpec, with Go field names.
pub fn pod_view(pod: &Pod) -> PodView {
    pod_view_keeping(pod, &EVERYTHING)
}

/// A pod keeping what `keep` (a tree over the template data: `PodMeta`, `PodSpec`) reaches, and
/// always what identity and selection need: name, namespace, UID, labels, service account, node.
pub fn pod_view_keeping(pod: &Pod, keep: &FieldTree) -> PodView {
    let spec = pod.spec.as_ref();
    let meta_keep = keep.field("PodMeta").unwrap_or(&NOTHING);
    let annotations_keep = meta_keep.field("Annotations").unwrap_or(&NOTHING);
    PodView {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        uid: pod.uid().unwrap_or_default(),
        labels: string_map(&pod.metadata.labels),
        annotations: pod
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(key, _)| annotations_keep.keeps_key(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        extra_meta: meta_fields(&pod.metadata, meta_keep, true),
        extra_spec: spec
            .map(|s| {
                go_fields(
                    "*v1.PodSpec",
                    s,
                    |r| r.pod_spec,
                    keep.field("PodSpec").unwrap_or(&NOTHING),
                )
            })
            .unwrap_or_default(),
        service_dns_names: Vec::new(),
    }
}

/// A node as templates see it (`.NodeMeta`, `.NodeSpec`), whole; the node's status is not
/// template data.
pub fn node_view(node: &Node) -> NodeView {
    node_view_keeping(node, &EVERYTHING)
}

/// A node keeping what `keep` reaches of `NodeMeta` and `NodeSpec`, and always its name, UID
/// and labels.
pub fn node_view_keeping(node: &Node, keep: &FieldTree) -> NodeView {
    NodeView {
        name: node.name_any(),
        uid: node.uid().unwrap_or_default(),
        labels: string_map(&node.metadata.labels),
        extra_meta: meta_fields(
            &node.metadata,
            keep.field("NodeMeta").unwrap_or(&NOTHING),
            false,
        ),
        extra_spec: node
            .spec
            .as_ref()
            .map(|s| {
                go_fields(
                    "*v1.NodeSpec",
                    s,
                    |r| r.node_spec,
                    keep.field("NodeSpec").unwrap_or(&NOTHING),
                )
            })
            .unwrap_or_default(),
    }
}

pub fn namespace_view(namespace: &Namespace) -> NamespaceView {
    NamespaceView {
        name: namespace.name_any(),
        labels: string_map(&namespace.metadata.labels),
    }
}

#[cfg(test)]
mod tests;
