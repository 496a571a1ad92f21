//! Kubernetes objects to the plain views `wimsey_core::entries` renders.

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
use wimsey_core::template::Value;

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

/// The pod fields templates commonly use. The full `.PodSpec` arrives with the reconciler.
pub fn pod_view(pod: &Pod) -> PodView {
    let spec = pod.spec.as_ref();
    let text = |value: Option<&String>| Value::from(value.cloned().unwrap_or_default());
    let mut extra_spec = BTreeMap::new();
    extra_spec.insert(
        "Hostname".to_owned(),
        text(spec.and_then(|s| s.hostname.as_ref())),
    );
    extra_spec.insert(
        "Subdomain".to_owned(),
        text(spec.and_then(|s| s.subdomain.as_ref())),
    );
    extra_spec.insert(
        "SchedulerName".to_owned(),
        text(spec.and_then(|s| s.scheduler_name.as_ref())),
    );
    extra_spec.insert(
        "PriorityClassName".to_owned(),
        text(spec.and_then(|s| s.priority_class_name.as_ref())),
    );
    let mut extra_meta = BTreeMap::new();
    extra_meta.insert(
        "GenerateName".to_owned(),
        text(pod.metadata.generate_name.as_ref()),
    );
    extra_meta.insert(
        "ResourceVersion".to_owned(),
        text(pod.metadata.resource_version.as_ref()),
    );
    PodView {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        uid: pod.uid().unwrap_or_default(),
        labels: string_map(&pod.metadata.labels),
        annotations: string_map(&pod.metadata.annotations),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        extra_meta,
        extra_spec,
        service_dns_names: Vec::new(),
    }
}

pub fn node_view(node: &Node) -> NodeView {
    let spec = node.spec.as_ref();
    let mut extra_spec = BTreeMap::new();
    extra_spec.insert(
        "PodCIDR".to_owned(),
        Value::from(spec.and_then(|s| s.pod_cidr.clone()).unwrap_or_default()),
    );
    extra_spec.insert(
        "ProviderID".to_owned(),
        Value::from(spec.and_then(|s| s.provider_id.clone()).unwrap_or_default()),
    );
    NodeView {
        name: node.name_any(),
        uid: node.uid().unwrap_or_default(),
        labels: string_map(&node.metadata.labels),
        extra_meta: BTreeMap::new(),
        extra_spec,
    }
}

pub fn namespace_view(namespace: &Namespace) -> NamespaceView {
    NamespaceView {
        name: namespace.name_any(),
        labels: string_map(&namespace.metadata.labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement as K8sRequirement;

    #[test]
    fn label_selectors_convert_and_unknown_operators_are_spec_errors() {
        let selector = K8sLabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            match_expressions: Some(vec![K8sRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["dev".into()]),
            }]),
        };
        let converted = label_selector(&selector, "podSelector").unwrap();
        assert_eq!(converted.match_labels["app"], "web");
        assert_eq!(
            converted.match_expressions[0].operator,
            LabelSelectorOperator::NotIn
        );

        let bad = K8sLabelSelector {
            match_expressions: Some(vec![K8sRequirement {
                key: "env".into(),
                operator: "Equals".into(),
                values: None,
            }]),
            ..K8sLabelSelector::default()
        };
        let err = label_selector(&bad, "namespaceSelector").unwrap_err();
        assert_eq!(err.label(), "invalid_label_selector");
        assert!(err.to_string().contains("Equals"), "{err}");
    }

    #[test]
    fn pods_default_to_the_default_service_account() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let view = pod_view(&pod);
        assert_eq!(view.service_account, "default");
        assert_eq!(view.node_name, "");
        assert!(view.labels.is_empty());
    }
}
