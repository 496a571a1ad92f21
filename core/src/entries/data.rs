//! The template data, with the Go names spire-controller-manager's `templateData` exposes:
//! `.TrustDomain .ClusterName .ClusterDomain .PodMeta .PodSpec .NodeMeta .NodeSpec`.
//!
//! `.PodMeta` and `.NodeMeta` are `*metav1.ObjectMeta`, `.PodSpec` `*corev1.PodSpec`, `.NodeSpec`
//! `*corev1.NodeSpec`. Labels and annotations are always maps (empty when the object has none),
//! so `{{ .PodMeta.Labels.app }}` on an unlabelled pod renders `<no value>` rather than failing
//! on a missing field.

use std::collections::BTreeMap;

use super::views::{NodeView, PodView, RenderConfig};
use crate::template::Value;

const OBJECT_META: &str = "*v1.ObjectMeta";

/// Data for a pod's `spiffeIDTemplate`, `dnsNameTemplates` and `workloadSelectorTemplates`.
pub fn pod_template_data(config: &RenderConfig, pod: &PodView, node: &NodeView) -> Value {
    pod_template_data_on(config, pod, node_meta_value(node), node_spec_value(node))
}

/// As [`pod_template_data`], with the node's `.NodeMeta` and `.NodeSpec` already built (they are
/// the same for every pod on the node, so a render pass builds them once per node).
pub(super) fn pod_template_data_on(
    config: &RenderConfig,
    pod: &PodView,
    node_meta: Value,
    node_spec: Value,
) -> Value {
    template_data(
        config,
        pod_meta_value(pod),
        pod_spec_value(pod),
        node_meta,
        node_spec,
    )
}

/// Data for the parent ID template: as for the pod, but `.PodMeta` and `.PodSpec` are nil, as
/// in spire-controller-manager.
pub fn parent_template_data(config: &RenderConfig, node: &NodeView) -> Value {
    parent_template_data_on(config, node_meta_value(node), node_spec_value(node))
}

pub(super) fn parent_template_data_on(
    config: &RenderConfig,
    node_meta: Value,
    node_spec: Value,
) -> Value {
    template_data(config, Value::Nil, Value::Nil, node_meta, node_spec)
}

fn template_data(
    config: &RenderConfig,
    pod_meta: Value,
    pod_spec: Value,
    node_meta: Value,
    node_spec: Value,
) -> Value {
    Value::structure(
        "*spireentry.templateData",
        [
            ("TrustDomain", Value::from(config.trust_domain.name())),
            ("ClusterName", Value::from(config.cluster_name.as_str())),
            ("ClusterDomain", Value::from(config.cluster_domain.as_str())),
            ("PodMeta", pod_meta),
            ("PodSpec", pod_spec),
            ("NodeMeta", node_meta),
            ("NodeSpec", node_spec),
        ],
    )
}

fn object_meta(
    name: &str,
    namespace: &str,
    uid: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    extra: &BTreeMap<String, Value>,
) -> Value {
    // The zero values of the ObjectMeta fields users may name, so that a template naming one
    // renders it (possibly empty) instead of failing; the caller's extras override them.
    let mut fields: BTreeMap<String, Value> = [
        ("Name", Value::from(name)),
        ("GenerateName", Value::from("")),
        ("Namespace", Value::from(namespace)),
        ("UID", Value::from(uid)),
        ("ResourceVersion", Value::from("")),
        ("Generation", Value::Int(0)),
        ("Labels", Value::string_map(labels.clone())),
        ("Annotations", Value::string_map(annotations.clone())),
        ("OwnerReferences", Value::Nil),
        ("Finalizers", Value::Nil),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    fields.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    Value::structure(OBJECT_META, fields)
}

fn pod_meta_value(pod: &PodView) -> Value {
    object_meta(
        &pod.name,
        &pod.namespace,
        &pod.uid,
        &pod.labels,
        &pod.annotations,
        &pod.extra_meta,
    )
}

fn pod_spec_value(pod: &PodView) -> Value {
    let mut fields: BTreeMap<String, Value> = [
        (
            "ServiceAccountName",
            Value::from(pod.service_account.as_str()),
        ),
        // The deprecated alias Kubernetes still fills in.
        (
            "DeprecatedServiceAccount",
            Value::from(pod.service_account.as_str()),
        ),
        ("NodeName", Value::from(pod.node_name.as_str())),
        ("Hostname", Value::from("")),
        ("Subdomain", Value::from("")),
        ("SchedulerName", Value::from("")),
        ("PriorityClassName", Value::from("")),
        ("Containers", Value::Nil),
        ("InitContainers", Value::Nil),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    fields.extend(pod.extra_spec.iter().map(|(k, v)| (k.clone(), v.clone())));
    Value::structure("*v1.PodSpec", fields)
}

pub(super) fn node_meta_value(node: &NodeView) -> Value {
    object_meta(
        &node.name,
        "",
        &node.uid,
        &node.labels,
        &BTreeMap::new(),
        &node.extra_meta,
    )
}

pub(super) fn node_spec_value(node: &NodeView) -> Value {
    let mut fields: BTreeMap<String, Value> = [
        ("PodCIDR", Value::from("")),
        ("PodCIDRs", Value::Nil),
        ("ProviderID", Value::from("")),
        ("Unschedulable", Value::Bool(false)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    fields.extend(node.extra_spec.iter().map(|(k, v)| (k.clone(), v.clone())));
    Value::structure("*v1.NodeSpec", fields)
}
