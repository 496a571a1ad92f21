//! The NetworkPolicies of the chart's default render (`config/default/wimsey.yaml`, drift-checked
//! against `config/charts/wimsey` by `make verify`) parse as NetworkPolicy objects and fit the
//! manifests they protect: their selectors pick the operator's and the plugin's pod labels, and
//! their ports are the operator's named container ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// The documents of the default render, as JSON values.
fn rendered() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/default/wimsey.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("\n---\n")
        .filter_map(|doc| {
            serde_saphyr::from_str::<Option<Value>>(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"))
        })
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(documents: &[Value], kind: &str) -> Vec<T> {
    documents
        .iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .collect()
}

#[test]
fn network_policies_admit_only_the_plugin_and_the_scrape_path() {
    let documents = rendered();
    let policies: Vec<NetworkPolicy> = of_kind(&documents, "NetworkPolicy");
    assert_eq!(policies.len(), 3, "the default render has three policies");
    let deployment: Deployment = of_kind(&documents, "Deployment").pop().unwrap();
    let daemonset: DaemonSet = of_kind(&documents, "DaemonSet").pop().unwrap();
    let operator_labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap();
    let plugin_labels = daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap();
    assert!(
        daemonset
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.host_network)
            != Some(true),
        "a hostNetwork plugin would not match a podSelector"
    );
    let container_ports: Vec<String> = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| &s.containers[0])
        .and_then(|c| c.ports.clone())
        .unwrap()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();

    let by_name = |name: &str| {
        policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no policy {name}"))
            .spec
            .clone()
            .unwrap()
    };
    for policy in &policies {
        let spec = policy.spec.as_ref().unwrap();
        let selected = spec
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .clone()
            .unwrap();
        assert!(
            selected
                .iter()
                .all(|(k, v)| operator_labels.get(k) == Some(v)),
            "{:?} selects the operator pods",
            policy.metadata.name
        );
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_owned()][..])
        );
        assert!(spec.egress.is_none());
    }
    assert!(
        by_name("wimsey-operator-default-deny").ingress.is_none(),
        "no rule: deny all ingress"
    );

    let node_api = by_name("wimsey-operator-node-api").ingress.unwrap();
    assert_eq!(node_api.len(), 1);
    let from = node_api[0].from.clone().unwrap();
    assert_eq!(from.len(), 1);
    assert!(
        from[0].namespace_selector.is_none(),
        "the plugin's namespace only"
    );
    let peer_labels = from[0].pod_selector.clone().unwrap().match_labels.unwrap();
    assert!(
        !peer_labels.is_empty()
            && peer_labels
                .iter()
                .all(|(k, v)| plugin_labels.get(k) == Some(v)),
        "{peer_labels:?} must pick the plugin's pods ({plugin_labels:?})"
    );
    assert!(
        !peer_labels
            .iter()
            .all(|(k, v)| operator_labels.get(k) == Some(v)),
        "the operator's own pods are not plugins"
    );
    let ports = node_api[0].ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::String("node-api".into())));

    let metrics = by_name("wimsey-operator-metrics").ingress.unwrap();
    assert_eq!(metrics.len(), 1);
    let from = metrics[0].from.clone().unwrap();
    let namespaces = from[0]
        .namespace_selector
        .clone()
        .unwrap()
        .match_labels
        .unwrap();
    assert_eq!(
        namespaces
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("monitoring")
    );
    assert_eq!(
        metrics[0].ports.clone().unwrap()[0].port,
        Some(IntOrString::String("admin".into()))
    );
    for port in ["node-api", "admin"] {
        assert!(
            container_ports.iter().any(|p| p == port),
            "{port} in {container_ports:?}"
        );
    }
}
