//! The reconciler's plain logic: which pods a change touches, coalescing, and what lands in
//! the store.

use std::collections::{BTreeMap, BTreeSet};

use wimsey_core::entries::{
    ClusterSpiffeIdView, LabelSelector, NamespaceView, NodeView, PodView, RenderConfig,
    StaticEntryView,
};
use wimsey_core::spiffe_id::TrustDomain;

use super::resource_meta::ResourceMeta;
use super::state::{ClusterState, SliceInput, SpecInput, StaticInput, StaticOutcome};
use crate::store::EntryStore;

fn config() -> RenderConfig {
    RenderConfig::new(
        TrustDomain::new("example.org").unwrap(),
        "c1",
        "cluster.local",
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(ns: &str, name: &str, node: &str) -> PodView {
    PodView {
        name: name.into(),
        namespace: ns.into(),
        uid: format!("uid-{ns}-{name}"),
        service_account: "default".into(),
        node_name: node.into(),
        labels: labels(&[("app", name)]),
        ..PodView::default()
    }
}

pub(super) fn spec(
    name: &str,
    created: i64,
    template: &str,
    ns_selector: Option<&[(&str, &str)]>,
) -> SpecInput {
    SpecInput {
        meta: ResourceMeta {
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: Some(1),
            resource_version: None,
        },
        class_name: String::new(),
        view: Ok(ClusterSpiffeIdView {
            name: name.into(),
            uid: format!("uid-{name}"),
            creation_timestamp: created,
            spiffe_id_template: template.into(),
            namespace_selector: ns_selector.map(|l| LabelSelector {
                match_labels: labels(l),
                match_expressions: Vec::new(),
            }),
            ..ClusterSpiffeIdView::default()
        }),
        status: None,
    }
}

/// Two namespaces (team a, team b), two nodes, four pods, one spec per team.
fn cluster() -> (ClusterState, EntryStore) {
    let mut state = ClusterState::new(config(), "wimsey.");
    for (ns, team) in [("a", "a"), ("b", "b")] {
        state.apply_namespace(NamespaceView {
            name: ns.into(),
            labels: labels(&[("team", team)]),
        });
    }
    for node in ["n1", "n2"] {
        state.apply_node(NodeView {
            name: node.into(),
            uid: format!("nodeuid-{node}"),
            ..NodeView::default()
        });
    }
    state.apply_pod(pod("a", "p1", "n1"));
    state.apply_pod(pod("a", "p2", "n2"));
    state.apply_pod(pod("b", "p3", "n1"));
    state.apply_pod(pod("b", "p4", "n2"));
    state.apply_spec(spec(
        "team-a",
        10,
        "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}",
        Some(&[("team", "a")]),
    ));
    state.apply_spec(spec(
        "team-b",
        11,
        "spiffe://example.org/b/{{ .PodMeta.Name }}",
        Some(&[("team", "b")]),
    ));
    let store = EntryStore::new();
    state.reconcile(&store);
    (state, store)
}

fn pending_pods(state: &ClusterState) -> BTreeSet<String> {
    state.pending().pods.iter().cloned().collect()
}

fn set(uids: &[&str]) -> BTreeSet<String> {
    uids.iter().map(|u| (*u).to_owned()).collect()
}

#[test]
fn initial_pass_renders_every_pod_with_pod_uid_selector_and_node_parent() {
    let (_, store) = cluster();
    let record = store.pod("uid-a-p1").unwrap();
    assert_eq!(record.node_name, "n1");
    let entry = &record.entries[0];
    assert_eq!(
        entry.entry.spiffe_id.as_str(),
        "spiffe://example.org/ns/a/p1"
    );
    assert_eq!(
        entry.entry.parent_id.as_str(),
        "spiffe://example.org/spire/agent/k8s_psat/c1/nodeuid-n1"
    );
    assert_eq!(entry.entry.selectors[0].to_string(), "k8s:pod-uid:uid-a-p1");
    assert!(entry.id.starts_with("wimsey."));
    assert_eq!(store.pods_on_node("n2").len(), 2);
    assert_eq!(store.entry_count(), 4);
}

#[test]
fn a_pod_event_touches_only_that_pod_and_an_unchanged_pod_nothing() {
    let (mut state, store) = cluster();
    state.apply_pod(pod("a", "p1", "n1"));
    assert!(
        state.pending().is_empty(),
        "an identical view is not a change"
    );
    let mut changed = pod("a", "p1", "n1");
    changed.labels.insert("version".into(), "2".into());
    state.apply_pod(changed);
    assert_eq!(pending_pods(&state), set(&["uid-a-p1"]));
    let report = state.reconcile(&store);
    assert_eq!(report.pods_rendered, 1);
    assert_eq!(report.store_writes, 0, "same entries: no store change");
}

#[test]
fn a_spec_change_touches_only_the_namespaces_its_selectors_can_match() {
    let (mut state, store) = cluster();
    let revision = store.revision();
    state.apply_spec(spec(
        "team-a",
        10,
        "spiffe://example.org/team-a/{{ .PodMeta.Name }}",
        Some(&[("team", "a")]),
    ));
    assert_eq!(pending_pods(&state), set(&["uid-a-p1", "uid-a-p2"]));
    let report = state.reconcile(&store);
    assert_eq!(report.store_writes, 2);
    assert_eq!(
        store.revision(),
        revision + 1,
        "one store revision per pass"
    );
    assert_eq!(
        store.pod("uid-a-p2").unwrap().entries[0]
            .entry
            .spiffe_id
            .as_str(),
        "spiffe://example.org/team-a/p2"
    );

    // Moving the selector from team a to team b touches both (old and new namespaces).
    state.apply_spec(spec(
        "team-a",
        10,
        "spiffe://example.org/x/{{ .PodMeta.Name }}",
        Some(&[("team", "b")]),
    ));
    assert_eq!(pending_pods(&state).len(), 4);
    state.reconcile(&store);

    // A spec without a namespace selector touches every pod.
    state.apply_spec(spec(
        "everyone",
        12,
        "spiffe://example.org/all/{{ .PodMeta.Name }}",
        None,
    ));
    assert_eq!(pending_pods(&state).len(), 4);
    state.reconcile(&store);
    assert_eq!(store.pod("uid-b-p4").unwrap().entries.len(), 3);

    // A status-only update of a spec touches no pod.
    let mut same = spec(
        "everyone",
        12,
        "spiffe://example.org/all/{{ .PodMeta.Name }}",
        None,
    );
    same.status = Some(Default::default());
    state.apply_spec(same);
    assert!(state.pending().pods.is_empty());
    assert!(state.pending().status);
}

#[test]
fn namespace_and_node_changes_touch_their_pods() {
    let (mut state, store) = cluster();
    state.apply_namespace(NamespaceView {
        name: "b".into(),
        labels: labels(&[("team", "a")]),
    });
    assert_eq!(pending_pods(&state), set(&["uid-b-p3", "uid-b-p4"]));
    state.reconcile(&store);
    assert_eq!(
        store.pod("uid-b-p3").unwrap().entries[0]
            .entry
            .spiffe_id
            .as_str(),
        "spiffe://example.org/ns/b/p3"
    );
    state.apply_node(NodeView {
        name: "n1".into(),
        uid: "nodeuid-n1-new".into(),
        ..NodeView::default()
    });
    assert_eq!(pending_pods(&state), set(&["uid-a-p1", "uid-b-p3"]));
    state.reconcile(&store);
    assert!(
        store.pod("uid-a-p1").unwrap().entries[0]
            .entry
            .parent_id
            .as_str()
            .ends_with("/nodeuid-n1-new")
    );
}

#[test]
fn triggers_coalesce_and_deletions_are_not_lost() {
    let (mut state, store) = cluster();
    for version in 0..100 {
        let mut p = pod("a", "p1", "n1");
        p.labels.insert("v".into(), version.to_string());
        state.apply_pod(p);
    }
    state.apply_namespace(NamespaceView {
        name: "a".into(),
        labels: labels(&[("team", "a"), ("x", "y")]),
    });
    state.delete_pod("uid-a-p2");
    assert_eq!(
        state.pending().pods.len(),
        2,
        "one render per pod however many events"
    );
    let report = state.reconcile(&store);
    assert_eq!(report.pods_rendered, 2);
    assert!(store.pod("uid-a-p2").is_none());
    assert_eq!(state.tally("team-a").unwrap().pods_selected, 1);
    assert!(state.pending().is_empty());
}

#[test]
fn entry_ids_are_the_same_in_a_fresh_state() {
    let (_, first) = cluster();
    let (_, second) = cluster();
    let ids = |store: &EntryStore| -> Vec<String> {
        store
            .all_pods()
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.id.clone()))
            .collect()
    };
    assert_eq!(ids(&first), ids(&second));
    assert_eq!(ids(&first).len(), 4);
}

#[test]
fn endpoint_slices_give_service_dns_names() {
    let (mut state, store) = cluster();
    let mut view = spec(
        "dns",
        5,
        "spiffe://example.org/dns/{{ .PodMeta.Name }}",
        Some(&[("team", "a")]),
    );
    if let Ok(v) = &mut view.view {
        v.auto_populate_dns_names = true;
    }
    state.apply_spec(view);
    state.apply_endpoint_slice(SliceInput {
        namespace: "a".into(),
        name: "web-abc".into(),
        service: "web".into(),
        pods: set(&["p1"]),
    });
    state.reconcile(&store);
    let record = store.pod("uid-a-p1").unwrap();
    let dns = record
        .entries
        .iter()
        .find(|e| e.owner.name == "dns")
        .unwrap();
    assert_eq!(
        dns.entry.dns_names,
        ["web", "web.a", "web.a.svc", "web.a.svc.cluster.local"]
    );
    state.delete_endpoint_slice("a", "web-abc");
    assert_eq!(pending_pods(&state), set(&["uid-a-p1"]));
    state.reconcile(&store);
    let record = store.pod("uid-a-p1").unwrap();
    assert!(record.entries.iter().all(|e| e.entry.dns_names.is_empty()));
}

#[test]
fn masking_and_render_failures_are_counted_per_spec() {
    let (mut state, store) = cluster();
    // Same template as team-a, newer: masked on team a's pods.
    state.apply_spec(spec(
        "copy",
        20,
        "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}",
        Some(&[("team", "a")]),
    ));
    state.apply_spec(spec(
        "broken",
        30,
        "spiffe://other.org/{{ .PodMeta.Name }}",
        Some(&[("team", "b")]),
    ));
    state.reconcile(&store);
    let copy = state.tally("copy").unwrap();
    assert_eq!(
        (copy.pods_selected, copy.entries_masked, copy.entries_to_set),
        (2, 2, 0)
    );
    assert!(copy.masked_by["a/p1"].contains("team-a"));
    let broken = state.tally("broken").unwrap();
    assert_eq!(broken.render_failures, 2);
    assert!(
        broken.failures["b/p3"].0.contains("other.org"),
        "{:?}",
        broken.failures
    );
    assert_eq!(store.pod("uid-a-p1").unwrap().entries.len(), 1);
}

#[test]
fn static_entries_oldest_wins() {
    let (mut state, store) = cluster();
    let entry = |name: &str, created: i64| StaticInput {
        meta: ResourceMeta {
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: Some(1),
            resource_version: None,
        },
        view: StaticEntryView {
            name: name.into(),
            uid: format!("uid-{name}"),
            creation_timestamp: created,
            spiffe_id: "spiffe://example.org/vm".into(),
            parent_id: "spiffe://example.org/spire/server".into(),
            selectors: vec!["unix:uid:0".into()],
            ..StaticEntryView::default()
        },
        status: None,
    };
    state.apply_static(entry("new", 20));
    state.apply_static(entry("old", 10));
    state.reconcile(&store);
    assert_eq!(store.static_entries().len(), 1);
    assert_eq!(store.static_entries()[0].owner.name, "old");
    assert!(matches!(
        state.statics["new"].outcome,
        Some(StaticOutcome::Masked { .. })
    ));
    assert!(matches!(
        state.statics["old"].outcome,
        Some(StaticOutcome::Set { .. })
    ));
}

#[test]
fn the_backends_refusals_and_outage_show_in_the_status_of_the_resource_that_declared_them() {
    use wimsey_core::entries::OwnerKind;

    use super::status::desired_statuses;
    use crate::backend::{EntryFailures, Feedback};

    let (mut state, _store) = cluster();
    let ready = |state: &ClusterState, name: &str| {
        let status = desired_statuses(state)
            .into_iter()
            .find(|s| s.name == name)
            .unwrap();
        let (ok, reason, message) = status.ready().unwrap();
        let failures = status.status["stats"]["entryFailures"].as_i64().unwrap();
        (ok, reason, message, failures)
    };
    assert_eq!(ready(&state, "team-a").1, "Reconciled");

    let refused = Feedback {
        unavailable: None,
        failures: BTreeMap::from([(
            (OwnerKind::ClusterSpiffeId, "team-a".to_owned()),
            EntryFailures {
                count: 1,
                first: "entry spiffe://example.org/ns/a/p1: InvalidArgument: bad".into(),
            },
        )]),
        relationships: None,
    };
    assert!(state.set_backend_feedback(refused.clone()));
    assert!(
        !state.set_backend_feedback(refused),
        "the same report changes nothing"
    );
    let (ok, reason, message, failures) = ready(&state, "team-a");
    assert_eq!(
        (ok.as_str(), reason.as_str(), failures),
        ("False", "EntryFailed", 1)
    );
    assert!(
        message.contains("refused 1 of 2 entries") && message.contains("InvalidArgument"),
        "{message}"
    );
    assert_eq!(
        ready(&state, "team-b").1,
        "Reconciled",
        "only the resource that declared it"
    );

    state.set_backend_feedback(Feedback {
        unavailable: Some("connection refused".into()),
        failures: BTreeMap::new(),
        relationships: None,
    });
    let (ok, reason, message, _) = ready(&state, "team-b");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "BackendUnavailable")
    );
    assert!(message.contains("connection refused"), "{message}");

    state.set_backend_feedback(Feedback::default());
    assert_eq!(ready(&state, "team-a").1, "Reconciled");
}

#[test]
fn with_the_spire_backend_a_federation_is_ready_when_spire_holds_its_relationship() {
    use super::federation::FederationInput;
    use super::status::desired_statuses;
    use crate::backend::{Feedback, RelationshipStatus};
    use crate::crd::{BundleEndpointProfile, ClusterFederatedTrustDomainSpec};

    let (mut state, store) = cluster();
    state.apply_federation(FederationInput {
        meta: ResourceMeta {
            name: "peer".into(),
            uid: "uid-peer".into(),
            generation: Some(1),
            resource_version: None,
        },
        created: 1,
        spec: ClusterFederatedTrustDomainSpec {
            trust_domain: "peer.test".into(),
            bundle_endpoint_url: "https://peer.example/bundle".into(),
            bundle_endpoint_profile: BundleEndpointProfile::default(),
            ..ClusterFederatedTrustDomainSpec::default()
        },
        status: None,
    });
    state.reconcile(&store);
    let mut ready = |feedback: Feedback| {
        state.set_backend_feedback(feedback);
        let status = desired_statuses(&state)
            .into_iter()
            .find(|s| s.name == "peer")
            .unwrap();
        let (ok, reason, message) = status.ready().unwrap();
        (ok, reason, message)
    };
    // embedded: the poller's fetch decides (none yet)
    assert_eq!(ready(Feedback::default()).1, "Pending");
    let spire =
        |relationships: &[(&str, RelationshipStatus)], unavailable: Option<&str>| Feedback {
            unavailable: unavailable.map(str::to_owned),
            relationships: Some(
                relationships
                    .iter()
                    .map(|(name, status)| ((*name).to_owned(), status.clone()))
                    .collect(),
            ),
            ..Feedback::default()
        };
    let (ok, reason, message) = ready(spire(&[], None));
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "Pending"));
    assert!(message.contains("SPIRE Server"), "{message}");
    let (ok, reason, message) = ready(spire(&[("peer", RelationshipStatus::Set)], None));
    assert_eq!((ok.as_str(), reason.as_str()), ("True", "Reconciled"));
    assert!(message.contains("peer.test"), "{message}");
    let refused = RelationshipStatus::Refused("InvalidArgument: bad URL".into());
    let (ok, reason, message) = ready(spire(&[("peer", refused)], None));
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "RelationshipFailed")
    );
    assert!(message.contains("bad URL"), "{message}");
    let (ok, reason, _) = ready(spire(
        &[("peer", RelationshipStatus::Set)],
        Some("connection refused"),
    ));
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "BackendUnavailable")
    );
}
