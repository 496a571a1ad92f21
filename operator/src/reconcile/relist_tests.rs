//! A ClusterSPIFFEID reaching a field the watches do not keep: the pods wait for one relist that
//! keeps it, then render the entry it gives (issue 10).

use k8s_openapi::api::core::v1::{Node, Pod};
use wimsey_core::entries::RenderConfig;
use wimsey_core::spiffe_id::TrustDomain;

use super::kept::KeptKind;
use super::state::{ClusterState, SpecInput};
use crate::store::EntryStore;
use crate::views::{namespace_view, node_view_keeping, pod_view_keeping};

/// A classless spec selecting every namespace, with workload selector templates.
fn spec(name: &str, created: i64, id: &str, selectors: &[&str]) -> SpecInput {
    let mut spec = super::tests::spec(name, created, id, None);
    if let Ok(view) = &mut spec.view {
        view.workload_selector_templates = selectors.iter().map(|s| (*s).to_owned()).collect();
    }
    spec
}

/// What the API server would send: a pod with more than any template reads.
fn pod_object() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "pod-uid-1",
                     "labels": {"app": "web"}, "annotations": {"checksum/config": "abc"}},
        "spec": {"serviceAccountName": "web-sa", "nodeName": "n1",
                 "containers": [{"name": "app", "image": "registry.example/app:1",
                                 "args": ["--serve"], "env": [{"name": "A", "value": "b"}]}]},
        "status": {"phase": "Running"}
    }))
    .unwrap()
}

fn node_object() -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1", "uid": "node-uid-1"}, "spec": {"providerID": "p"}
    }))
    .unwrap()
}

#[test]
fn a_template_reaching_a_field_not_kept_relists_once_and_then_renders_it() {
    let config = RenderConfig::new(
        TrustDomain::new("example.org").unwrap(),
        "c1",
        "cluster.local",
    );
    let mut state = ClusterState::new(config, "wimsey.");
    let store = EntryStore::new();
    state.apply_namespace(namespace_view(
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "shop"}})).unwrap(),
    ));
    state.apply_spec(spec(
        "by-sa",
        1,
        "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
        &[],
    ));
    // The watches start with what the listed ClusterSPIFFEIDs reach.
    let kept = state.kept_fields();
    state.apply_node(node_view_keeping(&node_object(), &kept.tree));
    let narrow = pod_view_keeping(&pod_object(), &kept.tree);
    assert!(
        !narrow.extra_spec.contains_key("Containers"),
        "{:?}",
        narrow.extra_spec
    );
    assert!(narrow.annotations.is_empty());
    state.apply_pod(narrow);
    state.reconcile(&store);
    assert_eq!(store.pod("pod-uid-1").unwrap().entries.len(), 1);
    assert!(state.relists_wanted().is_empty());

    // A new spec pins the image: a field no template reached.
    state.apply_spec(spec(
        "by-image",
        2,
        "spiffe://example.org/image-pinned",
        &["k8s:pod-image:{{ (index .PodSpec.Containers 0).Image }}"],
    ));
    assert_eq!(
        state.relists_wanted(),
        vec![(KeptKind::Pods, kept.pods + 1)]
    );
    // Until the relist, the pod is not rendered from data without the image (that would be a
    // render failure, "can't evaluate field Image").
    let held = state.reconcile(&store);
    assert_eq!(held.pods_rendered, 0);
    assert!(
        held.render_failures.is_empty(),
        "{:?}",
        held.render_failures
    );
    assert_eq!(store.pod("pod-uid-1").unwrap().entries.len(), 1);
    assert_eq!(state.tally("by-image").map_or(0, |t| t.render_failures), 0);

    // The relist: the Pod watch starts over with the widened fields.
    let widened = state.kept_fields();
    assert_eq!(widened.pods, kept.pods + 1);
    assert_eq!(widened.nodes, kept.nodes, "nodes are not relisted");
    state.apply_pod(pod_view_keeping(&pod_object(), &widened.tree));
    // Still held until the relist is complete.
    assert_eq!(state.reconcile(&store).pods_rendered, 0);
    state.relisted(KeptKind::Pods, widened.pods);
    assert!(state.relists_wanted().is_empty());
    let report = state.reconcile(&store);
    assert_eq!(report.pods_rendered, 1);
    assert!(
        report.render_failures.is_empty(),
        "{:?}",
        report.render_failures
    );

    let record = store.pod("pod-uid-1").unwrap();
    let pinned = record
        .entries
        .iter()
        .find(|e| e.owner.name == "by-image")
        .expect("the new spec's entry");
    assert_eq!(
        pinned.entry.spiffe_id.as_str(),
        "spiffe://example.org/image-pinned"
    );
    let selectors: Vec<String> = pinned
        .entry
        .selectors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        selectors,
        [
            "k8s:pod-uid:pod-uid-1",
            "k8s:pod-image:registry.example/app:1"
        ]
    );
    assert_eq!(record.entries.len(), 2);

    // A second spec reaching the same field needs no relist: it is kept from now on.
    state.apply_spec(spec(
        "by-image-2",
        3,
        "spiffe://example.org/image/{{ (index .PodSpec.Containers 0).Image | len }}",
        &[],
    ));
    assert!(state.relists_wanted().is_empty());
    assert_eq!(state.reconcile(&store).pods_rendered, 1);
}
