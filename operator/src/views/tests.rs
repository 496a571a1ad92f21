//! Object views: Go names, Go zero values, and keeping only what templates reach.

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

fn try_render(view_source: &str, pod: &Pod, node: &Node) -> Result<String, String> {
    use wimsey_core::entries::{RenderConfig, pod_template_data};
    use wimsey_core::spiffe_id::TrustDomain;
    use wimsey_core::template::Template;
    let config = RenderConfig::new(
        TrustDomain::new("example.org").unwrap(),
        "c1",
        "cluster.local",
    );
    let data = pod_template_data(&config, &pod_view(pod), &node_view(node));
    Template::parse("t", view_source)
        .unwrap()
        .render(&data)
        .map_err(|e| e.to_string())
}

fn render(view_source: &str, pod: &Pod, node: &Node) -> String {
    try_render(view_source, pod, node).unwrap()
}

fn sample() -> (Pod, Node) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                     "labels": {"app": "web"}, "resourceVersion": "77",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-rs", "uid": "rs-1"}]},
        "spec": {"serviceAccountName": "web-sa", "nodeName": "n1", "dnsPolicy": "ClusterFirst",
                 "nodeSelector": {"disk": "ssd"},
                 "containers": [{"name": "app", "image": "registry/app:1",
                                 "resources": {"limits": {"cpu": "500m"}}}]}
    })).unwrap();
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1", "uid": "node-uid", "labels": {"zone": "a"}},
        "spec": {"providerID": "aws:///eu-west-1a/i-123", "podCIDR": "10.0.0.0/24"}
    }))
    .unwrap();
    (pod, node)
}

#[test]
fn pod_and_node_fields_have_go_names() {
    let (pod, node) = sample();
    assert_eq!(
        render("{{ .PodSpec.ServiceAccountName }}", &pod, &node),
        "web-sa"
    );
    assert_eq!(
        render("{{ (index .PodSpec.Containers 0).Image }}", &pod, &node),
        "registry/app:1"
    );
    assert_eq!(
        render(
            "{{ range .PodSpec.Containers }}{{ .Name }}{{ end }}",
            &pod,
            &node
        ),
        "app"
    );
    assert_eq!(
        render("{{ .PodSpec.DNSPolicy }}", &pod, &node),
        "ClusterFirst"
    );
    assert_eq!(render("{{ .PodMeta.Labels.app }}", &pod, &node), "web");
    assert_eq!(
        render("{{ (index .PodMeta.OwnerReferences 0).UID }}", &pod, &node),
        "rs-1"
    );
    assert_eq!(
        render("{{ .NodeSpec.ProviderID }}", &pod, &node),
        "aws:///eu-west-1a/i-123"
    );
    assert_eq!(
        render("{{ .NodeSpec.PodCIDR }}", &pod, &node),
        "10.0.0.0/24"
    );
    assert_eq!(
        render(
            "{{ .NodeMeta.UID }}/{{ .NodeMeta.Labels.zone }}",
            &pod,
            &node
        ),
        "node-uid/a"
    );
}

#[test]
fn go_maps_keep_their_keys_and_missing_keys_have_no_value() {
    let (pod, node) = sample();
    assert_eq!(
        render("{{ .PodSpec.NodeSelector.disk }}", &pod, &node),
        "ssd"
    );
    assert_eq!(
        render(
            "{{ (index .PodSpec.Containers 0).Resources.Limits.cpu }}",
            &pod,
            &node
        ),
        "500m"
    );
    assert_eq!(
        render("{{ .PodMeta.Labels.missing }}", &pod, &node),
        "<no value>"
    );
    // resourceVersion changes on every status update; it is left out so those do not re-render.
    assert_eq!(render("{{ .PodMeta.ResourceVersion }}", &pod, &node), "");
}

#[test]
fn a_status_update_does_not_change_the_view() {
    let (mut pod, node) = sample();
    let before = pod_view(&pod);
    pod.metadata.resource_version = Some("78".into());
    pod.status = Some(Default::default());
    assert_eq!(pod_view(&pod), before);
    assert_eq!(
        node_view(&node).extra_spec["ProviderID"],
        Value::from("aws:///eu-west-1a/i-123")
    );
}

/// A pod and node with nothing but names: every other field is unset.
fn bare() -> (Pod, Node) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bare", "namespace": "shop", "uid": "u-2"},
        "spec": {"containers": [{"name": "app"}]}
    }))
    .unwrap();
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n2"}, "spec": {}
    }))
    .unwrap();
    (pod, node)
}

#[test]
fn unset_fields_render_go_zero_values() {
    let (pod, node) = bare();
    // Asserted on the views too: core's own defaults must not be what makes these pass.
    let pod_spec = pod_view(&pod).extra_spec;
    assert_eq!(pod_spec["Hostname"], Value::from(""));
    assert_eq!(pod_spec["Subdomain"], Value::from(""));
    assert_eq!(pod_spec["HostNetwork"], Value::Bool(false));
    assert_eq!(pod_spec["Volumes"], Value::List(Vec::new()));
    assert_eq!(pod_spec["NodeSelector"], Value::Map(BTreeMap::new()));
    assert_eq!(node_view(&node).extra_spec["ProviderID"], Value::from(""));

    assert_eq!(render("[{{ .PodSpec.Hostname }}]", &pod, &node), "[]");
    assert_eq!(render("[{{ .PodSpec.Subdomain }}]", &pod, &node), "[]");
    assert_eq!(render("[{{ .PodSpec.RestartPolicy }}]", &pod, &node), "[]");
    assert_eq!(render("{{ .PodSpec.HostNetwork }}", &pod, &node), "false");
    assert_eq!(render("{{ .PodSpec.Volumes }}", &pod, &node), "[]");
    assert_eq!(render("{{ .PodSpec.NodeSelector }}", &pod, &node), "map[]");
    assert_eq!(render("[{{ .NodeSpec.ProviderID }}]", &pod, &node), "[]");
    assert_eq!(render("{{ .NodeSpec.Taints }}", &pod, &node), "[]");
    assert_eq!(render("{{ .PodMeta.Generation }}", &pod, &node), "0");
    // Structs inside lists get their zero fields as well.
    assert_eq!(
        render(
            "[{{ (index .PodSpec.Containers 0).WorkingDir }}]{{ (index .PodSpec.Containers 0).Ports }}",
            &pod,
            &node
        ),
        "[][]"
    );
}

#[test]
fn unset_pointer_structs_are_nil() {
    let (pod, node) = bare();
    assert_eq!(pod_view(&pod).extra_spec["SecurityContext"], Value::Nil);
    assert_eq!(render("{{ .PodSpec.Affinity }}", &pod, &node), "<nil>");
    assert_eq!(render("{{ .NodeSpec.ConfigSource }}", &pod, &node), "<nil>");
    assert_eq!(
        render(
            "{{ if .PodSpec.SecurityContext }}set{{ else }}unset{{ end }}",
            &pod,
            &node
        ),
        "unset"
    );
    let err = try_render("{{ .PodSpec.SecurityContext.RunAsUser }}", &pod, &node).unwrap_err();
    assert!(err.contains("nil pointer evaluating"), "{err}");
}

#[test]
fn misspelled_fields_are_still_errors() {
    let (pod, node) = sample();
    let err = try_render("{{ .PodSpec.Hostnme }}", &pod, &node).unwrap_err();
    assert!(err.contains("can't evaluate field Hostnme"), "{err}");
    let err = try_render("{{ (index .PodSpec.Containers 0).Imag }}", &pod, &node).unwrap_err();
    assert!(
        err.contains("can't evaluate field Imag in type v1.Container"),
        "{err}"
    );
    let err = try_render("{{ .NodeSpec.ProviderId }}", &pod, &node).unwrap_err();
    assert!(err.contains("can't evaluate field ProviderId"), "{err}");
}

#[test]
fn missing_labels_are_a_nil_map() {
    let (pod, node) = bare();
    assert_eq!(
        render("{{ .PodMeta.Labels.app }}", &pod, &node),
        "<no value>"
    );
    assert_eq!(
        render("[{{ index .PodMeta.Labels \"app\" }}]", &pod, &node),
        "[]"
    );
    assert_eq!(
        render("{{ .PodSpec.NodeSelector.disk }}", &pod, &node),
        "<no value>"
    );
    assert_eq!(render("{{ .PodMeta.ResourceVersion }}", &pod, &node), "");
    // Present fields convert as before, next to the zero ones.
    let (pod, node) = sample();
    assert_eq!(
        render(
            "{{ (index .PodSpec.Containers 0).Resources.Requests }}",
            &pod,
            &node
        ),
        "map[]"
    );
    assert_eq!(
        render(
            "{{ (index .PodSpec.Containers 0).Resources.Limits.cpu }}",
            &pod,
            &node
        ),
        "500m"
    );
}

/// Every template above (and a few more shapes), rendered from a view that keeps only what
/// the template reaches, gives the same bytes, or the same error, as from the whole view.
#[test]
fn views_keeping_reached_fields_render_byte_identical() {
    use wimsey_core::entries::{RenderConfig, pod_template_data, reached_fields};
    use wimsey_core::spiffe_id::TrustDomain;
    use wimsey_core::template::Template;
    const TEMPLATES: &[&str] = &[
        "{{ .PodSpec.ServiceAccountName }}",
        "{{ (index .PodSpec.Containers 0).Image }}",
        "{{ range .PodSpec.Containers }}{{ .Name }}{{ end }}",
        "{{ range .PodSpec.Containers }}x{{ end }}",
        "{{ .PodSpec.DNSPolicy }}",
        "{{ .PodMeta.Labels.app }}",
        "{{ (index .PodMeta.OwnerReferences 0).UID }}",
        "{{ .NodeSpec.ProviderID }}",
        "{{ .NodeSpec.PodCIDR }}",
        "{{ .NodeMeta.UID }}/{{ .NodeMeta.Labels.zone }}",
        "{{ .PodSpec.NodeSelector.disk }}",
        "{{ (index .PodSpec.Containers 0).Resources.Limits.cpu }}",
        "{{ index (index .PodSpec.Containers 0).Resources.Limits \"memory\" }}",
        "{{ (index .PodSpec.Containers 0).Resources.Limits }}",
        "{{ (index .PodSpec.Containers 0).Resources.Requests }}",
        "{{ .PodMeta.Labels.missing }}",
        "{{ .PodMeta.ResourceVersion }}",
        "[{{ .PodSpec.Hostname }}][{{ .PodSpec.Subdomain }}][{{ .PodSpec.RestartPolicy }}]",
        "{{ .PodSpec.HostNetwork }}",
        "{{ .PodSpec.Volumes }}",
        "{{ .PodSpec.NodeSelector }}",
        "{{ .NodeSpec.Taints }}",
        "{{ .PodMeta.Generation }}",
        "[{{ (index .PodSpec.Containers 0).WorkingDir }}]{{ (index .PodSpec.Containers 0).Ports }}",
        "{{ .PodSpec.Affinity }}",
        "{{ .NodeSpec.ConfigSource }}",
        "{{ if .PodSpec.SecurityContext }}set{{ else }}unset{{ end }}",
        "{{ .PodSpec.SecurityContext.RunAsUser }}",
        "{{ .PodSpec.Hostnme }}",
        "{{ (index .PodSpec.Containers 0).Imag }}",
        "{{ .NodeSpec.ProviderId }}",
        "[{{ index .PodMeta.Labels \"app\" }}]",
        "{{ .PodMeta.Annotations.team }}|{{ index .PodMeta.Annotations \"team\" }}|{{ .PodMeta.Annotations.gone }}",
        "{{ .PodMeta.Annotations }}",
        "{{ .NodeMeta.Annotations }}",
        "{{ .PodMeta }}",
        "{{ .PodSpec }}",
        "{{ .NodeMeta }}",
        "{{ . }}",
        "{{ len .PodSpec.Containers }}",
        "{{ with .PodMeta.OwnerReferences }}{{ (index . 0).Kind }}{{ end }}",
        "{{ range $k, $v := .PodMeta.Labels }}{{ $k }}={{ $v }};{{ end }}",
        "{{ $c := index .PodSpec.Containers 0 }}{{ $c.Image }}",
        "{{ printf \"%v\" (index .PodSpec.Containers 0) }}",
        "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
    ];
    let config = RenderConfig::new(
        TrustDomain::new("example.org").unwrap(),
        "c1",
        "cluster.local",
    );
    let (mut annotated, node) = sample();
    annotated.metadata.annotations = Some(BTreeMap::from([
        ("team".to_owned(), "payments".to_owned()),
        ("checksum/config".to_owned(), "abc".to_owned()),
    ]));
    let (bare_pod, bare_node) = bare();
    for (pod, node) in [(&annotated, &node), (&bare_pod, &bare_node)] {
        let whole = pod_template_data(&config, &pod_view(pod), &node_view(node));
        for source in TEMPLATES {
            let template = Template::parse("t", source).unwrap();
            let spec = wimsey_core::entries::CompiledSpec::compile(
                &wimsey_core::entries::ClusterSpiffeIdView {
                    name: "s".into(),
                    spiffe_id_template: (*source).into(),
                    ..Default::default()
                },
            )
            .unwrap();
            let keep = reached_fields([&spec], &config);
            let kept = pod_template_data(
                &config,
                &pod_view_keeping(pod, &keep),
                &node_view_keeping(node, &keep),
            );
            assert_eq!(
                template.render(&kept).map_err(|e| e.to_string()),
                template.render(&whole).map_err(|e| e.to_string()),
                "{source}"
            );
        }
    }
}

#[test]
fn views_keep_only_what_templates_reach() {
    use wimsey_core::template::{FieldTree, Step};
    let (mut pod, _) = sample();
    pod.metadata.annotations = Some(BTreeMap::from([
        ("team".to_owned(), "payments".to_owned()),
        ("checksum/config".to_owned(), "abc".to_owned()),
    ]));
    // Nothing reached: the identity fields and labels, nothing else.
    let bare = pod_view_keeping(&pod, &FieldTree::new());
    assert_eq!(bare.name, "web-1");
    assert_eq!(bare.service_account, "web-sa");
    assert_eq!(bare.labels["app"], "web");
    assert!(bare.annotations.is_empty());
    assert!(bare.extra_meta.is_empty() && bare.extra_spec.is_empty());

    let mut keep = FieldTree::new();
    let step = |s: &str| Step::Name(s.to_owned());
    keep.insert(&[step("PodMeta"), step("Annotations"), step("team")], true);
    keep.insert(
        &[
            step("PodSpec"),
            step("Containers"),
            Step::Element,
            step("Image"),
        ],
        true,
    );
    let view = pod_view_keeping(&pod, &keep);
    assert_eq!(view.annotations.keys().collect::<Vec<_>>(), ["team"]);
    assert!(view.extra_meta.is_empty(), "{:?}", view.extra_meta);
    assert_eq!(view.extra_spec.keys().collect::<Vec<_>>(), ["Containers"]);
    assert_eq!(
        view.extra_spec["Containers"],
        Value::List(vec![Value::structure(
            "v1.Container",
            [("Image", Value::from("registry/app:1"))]
        )])
    );
}
