//! Every rule of spire-controller-manager's entry rendering that the reference documents.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::dns_name::validate_dns_name;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
use crate::template::{Template, Value};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn config() -> RenderConfig {
    RenderConfig::new(
        TrustDomain::new("example.org").unwrap(),
        "prod",
        "cluster.local",
    )
}

fn pod() -> PodView {
    PodView {
        name: "web-0".into(),
        namespace: "shop".into(),
        uid: "pod-uid-1".into(),
        labels: labels(&[("app", "web")]),
        annotations: labels(&[("team", "payments")]),
        service_account: "web-sa".into(),
        node_name: "node-1".into(),
        ..PodView::default()
    }
}

fn node() -> NodeView {
    NodeView {
        name: "node-1".into(),
        uid: "node-uid-1".into(),
        labels: labels(&[("zone", "a")]),
        ..NodeView::default()
    }
}

fn namespace() -> NamespaceView {
    NamespaceView {
        name: "shop".into(),
        labels: labels(&[("env", "prod")]),
    }
}

const SA_TEMPLATE: &str =
    "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}";

fn view(name: &str, created: i64) -> ClusterSpiffeIdView {
    ClusterSpiffeIdView {
        name: name.into(),
        uid: format!("uid-{name}"),
        creation_timestamp: created,
        spiffe_id_template: SA_TEMPLATE.into(),
        ..ClusterSpiffeIdView::default()
    }
}

fn compile(view: &ClusterSpiffeIdView) -> CompiledSpec {
    CompiledSpec::compile(view).unwrap_or_else(|e| panic!("{}: {e}", view.name))
}

fn render(specs: &[ClusterSpiffeIdView]) -> PodEntries {
    render_with(&pod(), specs, &config())
}

fn render_with(pod: &PodView, specs: &[ClusterSpiffeIdView], config: &RenderConfig) -> PodEntries {
    let compiled: Vec<_> = specs.iter().map(compile).collect();
    render_pod_entries(pod, Some(&node()), &namespace(), &compiled, config)
}

fn only_entry(result: &PodEntries) -> &Entry {
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert_eq!(result.entries.len(), 1, "{result:?}");
    &result.entries[0].entry
}

fn only_error(result: &PodEntries) -> &EntryError {
    assert!(result.entries.is_empty(), "{result:?}");
    assert_eq!(result.errors.len(), 1, "{result:?}");
    &result.errors[0].error
}

fn outcome(result: &PodEntries, spec: &str) -> SpecOutcome {
    result
        .results
        .iter()
        .find(|r| r.spec == spec)
        .unwrap_or_else(|| panic!("no result for {spec}: {result:?}"))
        .outcome
        .clone()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

// ---- label selectors --------------------------------------------------------------------

fn expr(key: &str, op: LabelSelectorOperator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_expressions: vec![LabelSelectorRequirement::new(key, op, values)],
        ..LabelSelector::default()
    }
}

#[test]
fn empty_selector_matches_everything() {
    assert!(LabelSelector::default().matches(&labels(&[])));
    assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
}

#[test]
fn match_labels_require_every_pair() {
    let selector = LabelSelector {
        match_labels: labels(&[("app", "web"), ("tier", "front")]),
        ..LabelSelector::default()
    };
    assert!(selector.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
    assert!(!selector.matches(&labels(&[("app", "web")])));
    assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "back")])));
    // an empty value is a value: it must be present and empty
    let empty = LabelSelector {
        match_labels: labels(&[("flag", "")]),
        ..LabelSelector::default()
    };
    assert!(empty.matches(&labels(&[("flag", "")])));
    assert!(!empty.matches(&labels(&[])));
}

#[test]
fn in_requires_the_label_with_a_listed_value() {
    let s = expr("env", LabelSelectorOperator::In, &["prod", "staging"]);
    assert!(s.matches(&labels(&[("env", "prod")])));
    assert!(s.matches(&labels(&[("env", "staging")])));
    assert!(!s.matches(&labels(&[("env", "dev")])));
    assert!(!s.matches(&labels(&[])));
}

#[test]
fn not_in_matches_absent_labels_as_kubernetes_does() {
    let s = expr("env", LabelSelectorOperator::NotIn, &["prod"]);
    assert!(s.matches(&labels(&[])));
    assert!(s.matches(&labels(&[("env", "dev")])));
    assert!(!s.matches(&labels(&[("env", "prod")])));
}

#[test]
fn exists_and_does_not_exist_look_at_the_key_only() {
    let exists = expr("env", LabelSelectorOperator::Exists, &[]);
    let absent = expr("env", LabelSelectorOperator::DoesNotExist, &[]);
    for present in [labels(&[("env", "")]), labels(&[("env", "x")])] {
        assert!(exists.matches(&present));
        assert!(!absent.matches(&present));
    }
    assert!(!exists.matches(&labels(&[("other", "x")])));
    assert!(absent.matches(&labels(&[("other", "x")])));
}

#[test]
fn match_labels_and_expressions_are_anded() {
    let selector = LabelSelector {
        match_labels: labels(&[("app", "web")]),
        match_expressions: vec![
            LabelSelectorRequirement::new("env", LabelSelectorOperator::In, &["prod"]),
            LabelSelectorRequirement::new("canary", LabelSelectorOperator::DoesNotExist, &[]),
        ],
    };
    assert!(selector.matches(&labels(&[("app", "web"), ("env", "prod")])));
    assert!(!selector.matches(&labels(&[("app", "web"), ("env", "prod"), ("canary", "1")])));
    assert!(!selector.matches(&labels(&[("app", "api"), ("env", "prod")])));
}

#[test]
fn operator_names_parse_case_sensitively() {
    for op in [
        LabelSelectorOperator::In,
        LabelSelectorOperator::NotIn,
        LabelSelectorOperator::Exists,
        LabelSelectorOperator::DoesNotExist,
    ] {
        assert_eq!(LabelSelectorOperator::parse(op.as_str()), Some(op));
    }
    assert_eq!(LabelSelectorOperator::parse("in"), None);
    assert_eq!(LabelSelectorOperator::parse("Equals"), None);
}

#[test]
fn selector_validation_follows_label_selector_as_selector() {
    let ok = [
        expr("app", LabelSelectorOperator::In, &["a"]),
        expr(
            "example.com/app",
            LabelSelectorOperator::NotIn,
            &["a-b_c.d"],
        ),
        expr("k", LabelSelectorOperator::Exists, &[]),
        expr("k", LabelSelectorOperator::In, &[""]),
    ];
    for s in ok {
        s.validate("podSelector")
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
    let bad = [
        expr("app", LabelSelectorOperator::In, &[]),
        expr("app", LabelSelectorOperator::NotIn, &[]),
        expr("app", LabelSelectorOperator::Exists, &["x"]),
        expr("app", LabelSelectorOperator::DoesNotExist, &["x"]),
        expr("-app", LabelSelectorOperator::Exists, &[]),
        expr("Example.com/app", LabelSelectorOperator::Exists, &[]),
        expr("/app", LabelSelectorOperator::Exists, &[]),
        expr("a/", LabelSelectorOperator::Exists, &[]),
        expr("app", LabelSelectorOperator::In, &["bad value"]),
        expr(&"k".repeat(64), LabelSelectorOperator::Exists, &[]),
        expr("app", LabelSelectorOperator::In, &[&"v".repeat(64)]),
        LabelSelector {
            match_labels: labels(&[("app", "-x")]),
            ..LabelSelector::default()
        },
    ];
    for s in bad {
        let err = s.validate("podSelector").expect_err(&format!("{s:?}"));
        assert_eq!(err.label(), "invalid_label_selector");
        assert!(err.to_string().contains("podSelector"), "{err}");
    }
}

// ---- Go durations -----------------------------------------------------------------------

#[test]
fn go_durations_parse_like_time_parse_duration() {
    let cases = [
        ("0", Duration::ZERO),
        ("1h", Duration::from_secs(3600)),
        ("90s", Duration::from_secs(90)),
        ("1h30m", Duration::from_secs(5400)),
        ("1.5h", Duration::from_secs(5400)),
        (".5s", Duration::from_millis(500)),
        ("1.s", Duration::from_secs(1)),
        ("300ms", Duration::from_millis(300)),
        ("2us", Duration::from_micros(2)),
        ("2µs", Duration::from_micros(2)),
        ("7ns", Duration::from_nanos(7)),
        ("+5m", Duration::from_secs(300)),
        ("1h0m0s", Duration::from_secs(3600)),
    ];
    for (input, expected) in cases {
        assert_eq!(parse_go_duration(input), Ok(expected), "{input}");
    }
    for bad in [
        "",
        "1",
        "h",
        "1d",
        "1hh",
        ".",
        "-1h",
        "1h-1m",
        "9999999999h",
    ] {
        assert!(parse_go_duration(bad).is_err(), "{bad}");
    }
}

// ---- template data ----------------------------------------------------------------------

#[test]
fn template_data_keeps_go_field_names() {
    let data = pod_template_data(&config(), &pod(), &node());
    let render = |src: &str| Template::parse("t", src).unwrap().render(&data).unwrap();
    assert_eq!(render("{{ .TrustDomain }}"), "example.org");
    assert_eq!(render("{{ .ClusterName }}"), "prod");
    assert_eq!(render("{{ .ClusterDomain }}"), "cluster.local");
    assert_eq!(render("{{ .PodMeta.Name }}"), "web-0");
    assert_eq!(render("{{ .PodMeta.Namespace }}"), "shop");
    assert_eq!(render("{{ .PodMeta.UID }}"), "pod-uid-1");
    assert_eq!(render("{{ .PodMeta.Labels.app }}"), "web");
    assert_eq!(
        render("{{ index .PodMeta.Annotations \"team\" }}"),
        "payments"
    );
    assert_eq!(render("{{ .PodSpec.ServiceAccountName }}"), "web-sa");
    assert_eq!(render("{{ .PodSpec.NodeName }}"), "node-1");
    assert_eq!(render("{{ .NodeMeta.Name }}"), "node-1");
    assert_eq!(render("{{ .NodeMeta.UID }}"), "node-uid-1");
    assert_eq!(render("{{ .NodeMeta.Labels.zone }}"), "a");
    assert_eq!(render("[{{ .NodeSpec.PodCIDR }}]"), "[]");
}

#[test]
fn missing_labels_are_an_empty_map_not_a_missing_field() {
    let unlabelled = PodView {
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        ..pod()
    };
    let data = pod_template_data(&config(), &unlabelled, &node());
    let render = |src: &str| Template::parse("t", src).unwrap().render(&data);
    assert_eq!(render("{{ .PodMeta.Labels.app }}").unwrap(), "<no value>");
    assert_eq!(render("{{ index .PodMeta.Labels \"app\" }}").unwrap(), "");
    assert_eq!(render("{{ len .PodMeta.Annotations }}").unwrap(), "0");
    // a struct field that does not exist is still an error, as in Go
    assert!(render("{{ .PodMeta.NoSuchField }}").is_err());
}

#[test]
fn extra_fields_reach_the_templates() {
    let mut p = pod();
    p.extra_spec
        .insert("Hostname".into(), Value::from("web-0-host"));
    p.extra_meta
        .insert("GenerateName".into(), Value::from("web-"));
    let mut n = node();
    n.extra_spec
        .insert("ProviderID".into(), Value::from("aws:///i-1"));
    let data = pod_template_data(&config(), &p, &n);
    let render = |src: &str| Template::parse("t", src).unwrap().render(&data).unwrap();
    assert_eq!(render("{{ .PodSpec.Hostname }}"), "web-0-host");
    assert_eq!(render("{{ .PodMeta.GenerateName }}"), "web-");
    assert_eq!(render("{{ .NodeSpec.ProviderID }}"), "aws:///i-1");
}

#[test]
fn parent_template_sees_no_pod() {
    let data = parent_template_data(&config(), &node());
    let t = Template::parse("p", "{{ .PodMeta.Name }}").unwrap();
    assert!(t.render(&data).is_err());
    let t = Template::parse("p", "{{ .NodeMeta.Name }}/{{ .ClusterName }}").unwrap();
    assert_eq!(t.render(&data).unwrap(), "node-1/prod");
}

// ---- one pod, one spec ------------------------------------------------------------------

#[test]
fn renders_the_documented_entry() {
    let result = render(&[view("sa", 1)]);
    let entry = only_entry(&result);
    assert_eq!(
        entry.spiffe_id,
        id("spiffe://example.org/ns/shop/sa/web-sa")
    );
    assert_eq!(
        entry.parent_id,
        id("spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-1")
    );
    assert_eq!(
        entry.selectors,
        vec![Selector::new("k8s", "pod-uid:pod-uid-1")]
    );
    assert_eq!(entry.x509_svid_ttl, Duration::ZERO);
    assert_eq!(entry.jwt_svid_ttl, Duration::ZERO);
    assert!(entry.federates_with.is_empty());
    assert!(entry.dns_names.is_empty());
    assert!(!entry.admin && !entry.downstream && !entry.store_svid);
    assert_eq!(entry.hint, "");
    assert_eq!(result.entries[0].owner.name, "sa");
    assert_eq!(result.entries[0].owner.kind, OwnerKind::ClusterSpiffeId);
    assert_eq!(outcome(&result, "sa"), SpecOutcome::Set);
}

#[test]
fn every_spec_field_reaches_the_entry() {
    let spec = ClusterSpiffeIdView {
        ttl: "1h".into(),
        jwt_ttl: "5m".into(),
        federates_with: vec!["partner.org".into(), "spiffe://other.org".into()],
        admin: true,
        downstream: true,
        hint: "external".into(),
        ..view("full", 1)
    };
    let result = render(&[spec]);
    let entry = only_entry(&result);
    assert_eq!(entry.x509_svid_ttl, Duration::from_secs(3600));
    assert_eq!(entry.jwt_svid_ttl, Duration::from_secs(300));
    assert_eq!(
        entry.federates_with,
        vec![
            TrustDomain::new("partner.org").unwrap(),
            TrustDomain::new("other.org").unwrap()
        ]
    );
    assert!(entry.admin && entry.downstream);
    assert!(!entry.store_svid, "ClusterSPIFFEID has no storeSVID");
    assert_eq!(entry.hint, "external");
}

#[test]
fn workload_selectors_follow_the_pod_uid_selector() {
    let spec = ClusterSpiffeIdView {
        workload_selector_templates: vec![
            "k8s:ns:{{ .PodMeta.Namespace }}".into(),
            "k8s:container-image:docker.io/app:{{ .PodMeta.Labels.app }}".into(),
        ],
        ..view("sel", 1)
    };
    let result = render(&[spec]);
    assert_eq!(
        only_entry(&result).selectors,
        vec![
            Selector::new("k8s", "pod-uid:pod-uid-1"),
            Selector::new("k8s", "ns:shop"),
            Selector::new("k8s", "container-image:docker.io/app:web"),
        ]
    );
}

#[test]
fn rendered_selectors_must_be_type_colon_value() {
    for (template, reason) in [
        ("no-colon", "expected at least one colon"),
        (":value", "type cannot be empty"),
        ("k8s:", "value cannot be empty"),
        (
            "k8s:{{ index .PodMeta.Labels \"missing\" }}",
            "value cannot be empty",
        ),
    ] {
        let spec = ClusterSpiffeIdView {
            workload_selector_templates: vec![template.into()],
            ..view("bad", 1)
        };
        let result = render(&[spec]);
        let error = only_error(&result);
        assert_eq!(error.label(), "invalid_selector", "{template}");
        assert!(error.to_string().contains(reason), "{template}: {error}");
        assert!(!error.is_spec_error());
    }
}

#[test]
fn spiffe_id_must_be_a_workload_id_in_the_trust_domain() {
    let cases = [
        ("spiffe://other.org/ns/x", "not in trust domain"),
        ("spiffe://example.org", "no path"),
        ("spiffe://example.org/spire/agent/x", "reserved"),
        ("https://example.org/x", "scheme"),
        (
            "spiffe://example.org/ns/{{ .PodMeta.Labels.missing }}",
            "path segment",
        ),
        (
            "spiffe://example.org/ns/{{ index .PodMeta.Labels \"missing\" }}/x",
            "empty segments",
        ),
    ];
    for (template, message) in cases {
        let result = render(&[ClusterSpiffeIdView {
            spiffe_id_template: template.into(),
            ..view("bad", 1)
        }]);
        let error = only_error(&result);
        assert_eq!(error.label(), "invalid_spiffe_id", "{template}");
        assert!(error.to_string().contains(message), "{template}: {error}");
        assert!(matches!(outcome(&result, "bad"), SpecOutcome::Failed(_)));
    }
}

#[test]
fn render_errors_carry_the_template_error() {
    let result = render(&[ClusterSpiffeIdView {
        spiffe_id_template: "spiffe://example.org/{{ .PodMeta.Nope }}".into(),
        ..view("bad", 1)
    }]);
    let error = only_error(&result);
    assert_eq!(error.label(), "render");
    assert!(error.to_string().contains("spiffeIDTemplate"), "{error}");
}

#[test]
fn dns_names_are_deduplicated_in_order() {
    let spec = ClusterSpiffeIdView {
        dns_name_templates: vec![
            "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.{{ .ClusterDomain }}".into(),
            "{{ .PodMeta.Labels.app }}.example.com".into(),
            "web-0.shop.cluster.local".into(),
        ],
        ..view("dns", 1)
    };
    assert_eq!(
        only_entry(&render(&[spec])).dns_names,
        vec!["web-0.shop.cluster.local", "web.example.com"]
    );
}

#[test]
fn auto_populated_dns_names_follow_the_templates_sorted_and_deduplicated() {
    let mut p = pod();
    p.service_dns_names = service_dns_names("web", "shop", "cluster.local");
    p.service_dns_names
        .extend(service_dns_names("api", "shop", "cluster.local"));
    p.service_dns_names.push("web".into());
    let spec = ClusterSpiffeIdView {
        dns_name_templates: vec!["web.shop".into(), "first.example".into()],
        auto_populate_dns_names: true,
        ..view("auto", 1)
    };
    let result = render_with(&p, std::slice::from_ref(&spec), &config());
    assert_eq!(
        only_entry(&result).dns_names,
        vec![
            "web.shop",
            "first.example",
            "api",
            "api.shop",
            "api.shop.svc",
            "api.shop.svc.cluster.local",
            "web",
            "web.shop.svc",
            "web.shop.svc.cluster.local",
        ]
    );
    // without the flag the service names are not used
    let result = render_with(
        &p,
        &[ClusterSpiffeIdView {
            auto_populate_dns_names: false,
            ..spec
        }],
        &config(),
    );
    assert_eq!(
        only_entry(&result).dns_names,
        vec!["web.shop", "first.example"]
    );
}

#[test]
fn service_dns_names_are_the_four_scm_forms() {
    assert_eq!(
        service_dns_names("svc", "ns", "cluster.local"),
        vec!["svc", "svc.ns", "svc.ns.svc", "svc.ns.svc.cluster.local"]
    );
    assert_eq!(
        service_dns_names("svc", "ns", ""),
        vec!["svc", "svc.ns", "svc.ns.svc"]
    );
}

#[test]
fn a_missing_label_in_a_dns_name_fails_the_entry() {
    let spec = ClusterSpiffeIdView {
        dns_name_templates: vec!["{{ .PodMeta.Labels.missing }}.example.com".into()],
        ..view("dns", 1)
    };
    let error = only_error(&render(&[spec])).clone();
    assert_eq!(error.label(), "invalid_dns_name");
    assert!(error.to_string().contains("<no value>"), "{error}");
}

#[test]
fn dns_name_syntax() {
    for ok in ["a", "a.b", "*.example.com", "x-1.y", "A.B"] {
        validate_dns_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let long_label = "a".repeat(64);
    let long_name = ["a"; 130].join(".");
    for bad in [
        "",
        "a..b",
        ".a",
        "a.",
        "a.*.b",
        "-a",
        "a-",
        "a_b",
        "a b",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        assert!(validate_dns_name(bad).is_err(), "{bad}");
    }
}

// ---- parent ID --------------------------------------------------------------------------

#[test]
fn custom_parent_template_is_rendered_per_node() {
    let config = config()
        .with_parent_id_template("spiffe://{{ .TrustDomain }}/agent/{{ .NodeMeta.Name }}")
        .unwrap();
    let result = render_with(&pod(), &[view("sa", 1)], &config);
    assert_eq!(
        only_entry(&result).parent_id,
        id("spiffe://example.org/agent/node-1")
    );
}

#[test]
fn parent_template_must_parse_and_stay_in_the_trust_domain() {
    let error = config()
        .with_parent_id_template("{{ .Broken")
        .expect_err("does not parse");
    assert_eq!(error.label(), "invalid_template");

    let outside = config()
        .with_parent_id_template("spiffe://elsewhere.org/agent/{{ .NodeMeta.Name }}")
        .unwrap();
    let result = render_with(&pod(), &[view("sa", 1)], &outside);
    let error = only_error(&result);
    assert_eq!(error.label(), "invalid_spiffe_id");
    assert!(error.to_string().contains("parentIDTemplate"), "{error}");

    let uses_pod = config()
        .with_parent_id_template("spiffe://example.org/{{ .PodMeta.Name }}")
        .unwrap();
    let result = render_with(&pod(), &[view("sa", 1)], &uses_pod);
    assert_eq!(only_error(&result).label(), "render");
}

#[test]
fn pods_without_a_known_node_are_render_failures() {
    let compiled = vec![compile(&view("sa", 1))];
    let unscheduled = PodView {
        node_name: String::new(),
        ..pod()
    };
    let result = render_pod_entries(&unscheduled, None, &namespace(), &compiled, &config());
    assert_eq!(only_error(&result), &EntryError::PodNotScheduled);

    let result = render_pod_entries(&pod(), None, &namespace(), &compiled, &config());
    assert_eq!(
        only_error(&result),
        &EntryError::NodeNotFound("node-1".into())
    );

    let other_node = NodeView {
        name: "node-2".into(),
        ..node()
    };
    let result = render_pod_entries(
        &pod(),
        Some(&other_node),
        &namespace(),
        &compiled,
        &config(),
    );
    assert_eq!(only_error(&result).label(), "node_not_found");
}

// ---- selection --------------------------------------------------------------------------

#[test]
fn namespace_and_pod_selectors_choose_pods() {
    let select = |ns: Option<LabelSelector>, pod_sel: Option<LabelSelector>| {
        render(&[ClusterSpiffeIdView {
            namespace_selector: ns,
            pod_selector: pod_sel,
            ..view("s", 1)
        }])
    };
    let env_prod = LabelSelector {
        match_labels: labels(&[("env", "prod")]),
        ..LabelSelector::default()
    };
    let env_dev = LabelSelector {
        match_labels: labels(&[("env", "dev")]),
        ..LabelSelector::default()
    };
    let app_web = LabelSelector {
        match_labels: labels(&[("app", "web")]),
        ..LabelSelector::default()
    };
    assert_eq!(select(None, None).entries.len(), 1);
    assert_eq!(
        select(
            Some(LabelSelector::default()),
            Some(LabelSelector::default())
        )
        .entries
        .len(),
        1
    );
    assert_eq!(
        select(Some(env_prod.clone()), Some(app_web.clone()))
            .entries
            .len(),
        1
    );

    let result = select(Some(env_dev), Some(app_web));
    assert!(result.entries.is_empty() && result.errors.is_empty());
    assert_eq!(outcome(&result, "s"), SpecOutcome::NamespaceNotSelected);

    let result = select(
        Some(env_prod),
        Some(expr("app", LabelSelectorOperator::NotIn, &["web"])),
    );
    assert!(result.entries.is_empty() && result.errors.is_empty());
    assert_eq!(outcome(&result, "s"), SpecOutcome::PodNotSelected);
}

#[test]
fn ignored_namespaces_get_no_pod_entries() {
    let ignore: Arc<dyn NamespaceFilter> =
        Arc::new(ExactNamespaces(BTreeSet::from(["shop".to_owned()])));
    let config = config().with_ignored_namespaces(ignore);
    let compiled = vec![compile(&view("sa", 1))];
    let result = render_pod_entries(&pod(), Some(&node()), &namespace(), &compiled, &config);
    assert!(result.entries.is_empty() && result.errors.is_empty());
    assert_eq!(outcome(&result, "sa"), SpecOutcome::NamespaceIgnored);
    assert_eq!(
        namespace_selection(&compiled[0], &namespace(), &config),
        NamespaceSelection::Ignored
    );

    // the selector is applied first: an unselected ignored namespace is "not selected"
    let picky = compile(&ClusterSpiffeIdView {
        namespace_selector: Some(expr("env", LabelSelectorOperator::In, &["dev"])),
        ..view("picky", 1)
    });
    assert_eq!(
        namespace_selection(&picky, &namespace(), &config),
        NamespaceSelection::NotSelected
    );
    let other = NamespaceView {
        name: "shop-2".into(),
        ..namespace()
    };
    assert_eq!(
        namespace_selection(&compiled[0], &other, &config),
        NamespaceSelection::Selected
    );
}

// ---- className --------------------------------------------------------------------------

#[test]
fn class_name_filtering_is_scm_reconcile_class() {
    let classless = view("classless", 1);
    let class_a = ClusterSpiffeIdView {
        class_name: "a".into(),
        spiffe_id_template: "spiffe://example.org/a/{{ .PodMeta.Name }}".into(),
        ..view("class-a", 1)
    };
    let specs = [classless, class_a];
    let names = |config: &RenderConfig| -> Vec<String> {
        let result = render_with(&pod(), &specs, config);
        result
            .entries
            .iter()
            .map(|e| e.owner.name.clone())
            .collect()
    };
    assert_eq!(names(&config()), vec!["classless"]);
    assert_eq!(names(&config().with_class("", true)), vec!["classless"]);
    assert_eq!(names(&config().with_class("a", false)), vec!["class-a"]);
    let mut both = names(&config().with_class("a", true));
    both.sort();
    assert_eq!(both, vec!["class-a", "classless"]);
    assert!(names(&config().with_class("b", false)).is_empty());
    // specs of another class do not appear in the results at all
    let result = render_with(&pod(), &specs, &config().with_class("b", false));
    assert!(result.results.is_empty());
}

// ---- fallback ---------------------------------------------------------------------------

fn fallback(name: &str, created: i64) -> ClusterSpiffeIdView {
    ClusterSpiffeIdView {
        fallback: true,
        spiffe_id_template: format!("spiffe://example.org/default/{name}/{{{{ .PodMeta.Name }}}}"),
        ..view(name, created)
    }
}

#[test]
fn fallback_applies_only_without_a_non_fallback_entry() {
    // listed first, but fallback specs are evaluated last
    let result = render(&[fallback("default", 0), view("specific", 5)]);
    assert_eq!(
        only_entry(&result).spiffe_id,
        id("spiffe://example.org/ns/shop/sa/web-sa")
    );
    assert_eq!(outcome(&result, "default"), SpecOutcome::FallbackSkipped);
    assert_eq!(outcome(&result, "specific"), SpecOutcome::Set);

    // the non-fallback spec does not select the pod: the fallback applies
    let unselected = ClusterSpiffeIdView {
        pod_selector: Some(expr("app", LabelSelectorOperator::In, &["api"])),
        ..view("specific", 5)
    };
    let result = render(&[fallback("default", 0), unselected]);
    assert_eq!(
        only_entry(&result).spiffe_id,
        id("spiffe://example.org/default/default/web-0")
    );
}

#[test]
fn fallback_applies_when_the_non_fallback_spec_failed_to_render() {
    let failing = ClusterSpiffeIdView {
        spiffe_id_template: "spiffe://other.org/x".into(),
        ..view("specific", 5)
    };
    let result = render(&[failing, fallback("default", 0)]);
    assert_eq!(result.entries.len(), 1);
    assert_eq!(result.entries[0].owner.name, "default");
    assert_eq!(result.errors.len(), 1);
    assert_eq!(result.errors[0].spec, "specific");
}

#[test]
fn several_fallbacks_all_apply_and_several_non_fallbacks_all_apply() {
    let result = render(&[fallback("d1", 0), fallback("d2", 0)]);
    assert_eq!(result.entries.len(), 2);
    let second = ClusterSpiffeIdView {
        spiffe_id_template: "spiffe://example.org/second/{{ .PodMeta.Name }}".into(),
        ..view("second", 2)
    };
    let result = render(&[view("first", 1), second, fallback("d", 0)]);
    assert_eq!(result.entries.len(), 2, "a pod may get two SVIDs");
    assert_eq!(outcome(&result, "d"), SpecOutcome::FallbackSkipped);
}

#[test]
fn a_masked_non_fallback_entry_still_suppresses_the_fallback() {
    let result = render(&[view("old", 1), view("new", 2), fallback("d", 0)]);
    assert_eq!(result.entries.len(), 1);
    assert_eq!(
        outcome(&result, "new"),
        SpecOutcome::Masked {
            by: result.entries[0].owner.clone()
        }
    );
    assert_eq!(outcome(&result, "d"), SpecOutcome::FallbackSkipped);
}

// ---- masking ----------------------------------------------------------------------------

#[test]
fn the_oldest_spec_wins_a_key_conflict() {
    let newer = ClusterSpiffeIdView {
        ttl: "1h".into(),
        ..view("newer", 200)
    };
    let older = view("older", 100);
    let result = render(&[newer, older]);
    assert_eq!(result.entries.len(), 1);
    assert_eq!(result.entries[0].owner.name, "older");
    assert_eq!(
        result.entries[0].entry.x509_svid_ttl,
        Duration::ZERO,
        "fields are not merged"
    );
    assert_eq!(result.masked.len(), 1);
    assert_eq!(result.masked[0].owner.name, "newer");
    assert_eq!(result.masked[0].masked_by.name, "older");
    assert_eq!(outcome(&result, "older"), SpecOutcome::Set);
    assert!(matches!(outcome(&result, "newer"), SpecOutcome::Masked { by } if by.name == "older"));
}

#[test]
fn different_selectors_are_different_keys() {
    let with_selector = ClusterSpiffeIdView {
        workload_selector_templates: vec!["k8s:ns:shop".into()],
        ..view("with", 2)
    };
    let result = render(&[view("plain", 1), with_selector]);
    assert_eq!(result.entries.len(), 2);
    assert!(result.masked.is_empty());
}

#[test]
fn conflict_order_is_creation_then_deletion_then_uid() {
    let owner = |uid: &str, created: i64, deleted: Option<i64>| EntryOwner {
        kind: OwnerKind::ClusterSpiffeId,
        name: uid.into(),
        uid: uid.into(),
        creation_timestamp: created,
        deletion_timestamp: deleted,
    };
    use std::cmp::Ordering::*;
    assert_eq!(owner("b", 1, None).preference(&owner("a", 2, None)), Less);
    assert_eq!(
        owner("a", 1, Some(9)).preference(&owner("b", 1, None)),
        Greater
    );
    assert_eq!(
        owner("a", 1, Some(5)).preference(&owner("b", 1, Some(9))),
        Greater
    );
    assert_eq!(owner("a", 1, None).preference(&owner("b", 1, None)), Less);
    assert_eq!(
        owner("b", 1, Some(3)).preference(&owner("a", 1, Some(3))),
        Greater
    );
}

fn static_view(name: &str, created: i64) -> StaticEntryView {
    StaticEntryView {
        name: name.into(),
        uid: format!("uid-{name}"),
        creation_timestamp: created,
        spiffe_id: "spiffe://example.org/ns/shop/sa/web-sa".into(),
        parent_id: "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-1".into(),
        selectors: vec!["k8s:pod-uid:pod-uid-1".into()],
        ..StaticEntryView::default()
    }
}

#[test]
fn static_entries_and_pod_entries_share_one_key_space() {
    let pod_entries = render(&[view("sa", 100)]);
    let older_static = render_static_entry(&static_view("static", 50)).unwrap();
    let resolved = resolve_conflicts(pod_entries.entries.into_iter().chain([older_static]));
    assert_eq!(resolved.entries.len(), 1);
    assert_eq!(
        resolved.entries[0].owner.kind,
        OwnerKind::ClusterStaticEntry
    );
    assert_eq!(resolved.masked.len(), 1);
    assert_eq!(resolved.masked[0].owner.name, "sa");
}

#[test]
fn entry_keys_sort_selectors() {
    let mut a = render_static_entry(&StaticEntryView {
        selectors: vec!["unix:uid:0".into(), "k8s:ns:a".into(), "k8s:sa:b".into()],
        ..static_view("a", 1)
    })
    .unwrap()
    .entry;
    let b = render_static_entry(&StaticEntryView {
        selectors: vec!["k8s:sa:b".into(), "unix:uid:0".into(), "k8s:ns:a".into()],
        ..static_view("b", 1)
    })
    .unwrap()
    .entry;
    assert_eq!(a.key(), b.key());
    assert_eq!(
        a.key().selectors,
        vec![
            Selector::new("k8s", "ns:a"),
            Selector::new("k8s", "sa:b"),
            Selector::new("unix", "uid:0")
        ]
    );
    // non-key fields do not change the key
    a.dns_names.push("x".into());
    a.admin = true;
    assert_eq!(a.key(), b.key());
    a.parent_id = id("spiffe://example.org/other");
    assert_ne!(a.key(), b.key());
}

// ---- static entries ---------------------------------------------------------------------

#[test]
fn static_entry_fields_are_copied() {
    let declared = render_static_entry(&StaticEntryView {
        spiffe_id: "spiffe://remote.org/db".into(),
        parent_id: "spiffe://example.org/spire/server".into(),
        selectors: vec!["unix:uid:1000".into(), "docker:label:a:b".into()],
        federates_with: vec!["partner.org".into()],
        x509_svid_ttl: "24h".into(),
        jwt_svid_ttl: "10m".into(),
        dns_names: vec!["db.example.com".into()],
        hint: "db".into(),
        admin: true,
        downstream: true,
        store_svid: true,
        ..static_view("db", 7)
    })
    .unwrap();
    let entry = declared.entry;
    assert_eq!(
        entry.spiffe_id,
        id("spiffe://remote.org/db"),
        "any trust domain"
    );
    assert_eq!(entry.parent_id, id("spiffe://example.org/spire/server"));
    assert_eq!(
        entry.selectors,
        vec![
            Selector::new("unix", "uid:1000"),
            Selector::new("docker", "label:a:b")
        ]
    );
    assert_eq!(
        entry.federates_with,
        vec![TrustDomain::new("partner.org").unwrap()]
    );
    assert_eq!(entry.x509_svid_ttl, Duration::from_secs(86400));
    assert_eq!(entry.jwt_svid_ttl, Duration::from_secs(600));
    assert_eq!(entry.dns_names, vec!["db.example.com"]);
    assert_eq!(entry.hint, "db");
    assert!(entry.admin && entry.downstream && entry.store_svid);
    assert_eq!(declared.owner.kind, OwnerKind::ClusterStaticEntry);
    assert_eq!(declared.owner.creation_timestamp, 7);
}

#[test]
fn static_entry_errors() {
    let cases = [
        (
            StaticEntryView {
                spiffe_id: "not-an-id".into(),
                ..static_view("s", 1)
            },
            "invalid_spiffe_id",
            "spiffeID",
        ),
        (
            StaticEntryView {
                parent_id: "spiffe://UPPER.org/x".into(),
                ..static_view("s", 1)
            },
            "invalid_spiffe_id",
            "parentID",
        ),
        (
            StaticEntryView {
                selectors: vec!["nocolon".into()],
                ..static_view("s", 1)
            },
            "invalid_selector",
            "nocolon",
        ),
        (
            StaticEntryView {
                federates_with: vec!["Bad TD".into()],
                ..static_view("s", 1)
            },
            "invalid_federates_with",
            "Bad TD",
        ),
        (
            StaticEntryView {
                x509_svid_ttl: "1 day".into(),
                ..static_view("s", 1)
            },
            "invalid_duration",
            "x509SVIDTTL",
        ),
        (
            StaticEntryView {
                jwt_svid_ttl: "-5m".into(),
                ..static_view("s", 1)
            },
            "invalid_duration",
            "jwtSVIDTTL",
        ),
        (
            StaticEntryView {
                dns_names: vec!["bad name".into()],
                ..static_view("s", 1)
            },
            "invalid_dns_name",
            "bad name",
        ),
    ];
    for (view, label, mention) in cases {
        let error = render_static_entry(&view).expect_err(label);
        assert_eq!(error.label(), label);
        assert!(error.to_string().contains(mention), "{error}");
    }
}

#[test]
fn handles_class_for_static_entries_too() {
    assert!(handles_class(&config(), ""));
    assert!(!handles_class(&config(), "x"));
    assert!(handles_class(&config().with_class("x", false), "x"));
    assert!(!handles_class(&config().with_class("x", false), ""));
    assert!(handles_class(&config().with_class("x", true), ""));
}

// ---- compiling specs --------------------------------------------------------------------

#[test]
fn compile_reports_what_admission_would() {
    let cases = [
        (
            ClusterSpiffeIdView {
                spiffe_id_template: String::new(),
                ..view("s", 1)
            },
            "empty_spiffe_id_template",
            "spiffeIDTemplate",
        ),
        (
            ClusterSpiffeIdView {
                spiffe_id_template: "spiffe://x/{{ .PodMeta.Name".into(),
                ..view("s", 1)
            },
            "invalid_template",
            "spiffeIDTemplate",
        ),
        (
            ClusterSpiffeIdView {
                dns_name_templates: vec!["ok".into(), "{{ end }}".into()],
                ..view("s", 1)
            },
            "invalid_template",
            "dnsNameTemplates[1]",
        ),
        (
            ClusterSpiffeIdView {
                workload_selector_templates: vec!["{{ if }}".into()],
                ..view("s", 1)
            },
            "invalid_template",
            "workloadSelectorTemplates[0]",
        ),
        (
            ClusterSpiffeIdView {
                federates_with: vec!["spiffe://UPPER".into()],
                ..view("s", 1)
            },
            "invalid_federates_with",
            "UPPER",
        ),
        (
            ClusterSpiffeIdView {
                namespace_selector: Some(expr("k", LabelSelectorOperator::In, &[])),
                ..view("s", 1)
            },
            "invalid_label_selector",
            "namespaceSelector",
        ),
        (
            ClusterSpiffeIdView {
                pod_selector: Some(expr("k", LabelSelectorOperator::Exists, &["v"])),
                ..view("s", 1)
            },
            "invalid_label_selector",
            "podSelector",
        ),
        (
            ClusterSpiffeIdView {
                ttl: "1y".into(),
                ..view("s", 1)
            },
            "invalid_duration",
            "ttl",
        ),
        (
            ClusterSpiffeIdView {
                jwt_ttl: "soon".into(),
                ..view("s", 1)
            },
            "invalid_duration",
            "jwtTtl",
        ),
    ];
    for (view, label, mention) in cases {
        let error = CompiledSpec::compile(&view).expect_err(label);
        assert_eq!(error.label(), label, "{error}");
        assert!(error.to_string().contains(mention), "{error}");
        assert!(error.is_spec_error(), "{error}");
    }
}

#[test]
fn results_follow_the_given_spec_order() {
    let result = render(&[fallback("d", 0), view("a", 1)]);
    let order: Vec<_> = result.results.iter().map(|r| r.spec.as_str()).collect();
    assert_eq!(order, vec!["d", "a"]);
}

#[test]
fn the_scm_documented_examples_render() {
    // docs/clusterspiffeid-crd.md
    let spec = ClusterSpiffeIdView {
        spiffe_id_template:
            "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
                .into(),
        dns_name_templates: vec![
            "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.{{ .ClusterDomain }}".into(),
        ],
        ..view("doc", 1)
    };
    let entry = only_entry(&render(&[spec])).clone();
    assert_eq!(
        entry.spiffe_id,
        id("spiffe://example.org/ns/shop/sa/web-sa")
    );
    assert_eq!(entry.dns_names, vec!["web-0.shop.cluster.local"]);
    // the Helm chart's default identity
    let helm_default = ClusterSpiffeIdView {
        spiffe_id_template: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}".into(),
        fallback: true,
        ..view("default", 1)
    };
    assert_eq!(
        only_entry(&render(&[helm_default])).spiffe_id,
        id("spiffe://example.org/ns/shop/sa/web-sa")
    );
}

#[test]
fn error_labels_are_stable() {
    let td_error = SpiffeIdError::Empty;
    let template_error = Template::parse("t", "{{").unwrap_err();
    let all = [
        (
            EntryError::EmptySpiffeIdTemplate,
            "empty_spiffe_id_template",
        ),
        (
            EntryError::InvalidTemplate {
                field: "f".into(),
                source: template_error.clone(),
            },
            "invalid_template",
        ),
        (
            EntryError::InvalidLabelSelector {
                field: "f".into(),
                reason: "r".into(),
            },
            "invalid_label_selector",
        ),
        (
            EntryError::InvalidFederatesWith {
                value: "v".into(),
                source: td_error.clone(),
            },
            "invalid_federates_with",
        ),
        (
            EntryError::InvalidDuration {
                field: "f".into(),
                value: "v".into(),
                reason: "r".into(),
            },
            "invalid_duration",
        ),
        (
            EntryError::Render {
                field: "f".into(),
                source: template_error,
            },
            "render",
        ),
        (
            EntryError::InvalidSpiffeId {
                field: "f".into(),
                value: "v".into(),
                source: td_error,
            },
            "invalid_spiffe_id",
        ),
        (
            EntryError::InvalidSelector {
                value: "v".into(),
                reason: "r",
            },
            "invalid_selector",
        ),
        (
            EntryError::InvalidDnsName {
                value: "v".into(),
                reason: "r",
            },
            "invalid_dns_name",
        ),
        (EntryError::PodNotScheduled, "pod_not_scheduled"),
        (EntryError::NodeNotFound("n".into()), "node_not_found"),
    ];
    for (error, label) in all {
        assert_eq!(error.label(), label);
    }
}

// ---- reserved identities ------------------------------------------------------------------

/// Every ID the system itself uses, as built by `crate::reserved`, with a template rendering it.
fn reserved_ids() -> Vec<(SpiffeId, &'static str)> {
    let td = TrustDomain::new("example.org").unwrap();
    vec![
        (
            crate::reserved::operator_id(&td).unwrap(),
            "spiffe://{{ .TrustDomain }}/wimsey/operator",
        ),
        (
            crate::reserved::bundle_endpoint_id(&td).unwrap(),
            "spiffe://example.org/wimsey/bundle-endpoint",
        ),
        (
            crate::reserved::node_csr_placeholder_id(&td).unwrap(),
            "spiffe://example.org/wimsey/node",
        ),
        (
            crate::reserved::node_id(&td, "prod", "node-1").unwrap(),
            "spiffe://{{ .TrustDomain }}/spire/agent/wimsey/{{ .ClusterName }}/{{ .PodSpec.NodeName }}",
        ),
        (
            td.id_from_path("/spire/server").unwrap(),
            "spiffe://example.org/spire/server",
        ),
    ]
}

#[test]
fn cluster_spiffe_id_cannot_render_a_reserved_id() {
    for (reserved, template) in reserved_ids() {
        let result = render(&[ClusterSpiffeIdView {
            spiffe_id_template: template.into(),
            ..view("grab", 1)
        }]);
        let error = only_error(&result);
        assert_eq!(error.label(), "invalid_spiffe_id", "{template}");
        let message = error.to_string();
        assert!(message.contains(reserved.as_str()), "{message}");
        assert!(message.contains("reserved"), "{message}");
        assert!(matches!(outcome(&result, "grab"), SpecOutcome::Failed(_)));
    }
}

#[test]
fn cluster_static_entry_cannot_claim_a_reserved_id_in_any_trust_domain() {
    let mut ids: Vec<SpiffeId> = reserved_ids().into_iter().map(|(id, _)| id).collect();
    ids.push(id("spiffe://remote.org/wimsey/operator"));
    for reserved in ids {
        let error = render_static_entry(&StaticEntryView {
            spiffe_id: reserved.to_string(),
            ..static_view("grab", 1)
        })
        .expect_err(reserved.as_str());
        assert_eq!(error.label(), "invalid_spiffe_id");
        let message = error.to_string();
        assert!(message.contains("spiffeID"), "{message}");
        assert!(message.contains(reserved.as_str()), "{message}");
        assert!(message.contains("reserved"), "{message}");
    }
    // A reserved parent is fine: entries hang off nodes and the server.
    render_static_entry(&StaticEntryView {
        parent_id: "spiffe://example.org/spire/agent/wimsey/prod/node-1".into(),
        ..static_view("child", 1)
    })
    .expect("a node may be a parent");
}
