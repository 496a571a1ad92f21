//! What templates reach: the parts of the data the operator has to keep.

use super::{FieldTree, Step, Template};

fn reached(source: &str) -> FieldTree {
    let mut tree = FieldTree::new();
    Template::parse("t", source).unwrap().reach_into(&mut tree);
    tree
}

fn path(steps: &[&str]) -> Vec<Step> {
    steps
        .iter()
        .map(|s| match *s {
            "*" => Step::Element,
            name => Step::Name(name.to_owned()),
        })
        .collect()
}

/// A tree holding exactly `paths`, each reached whole.
fn tree(paths: &[&[&str]]) -> FieldTree {
    let mut tree = FieldTree::new();
    for p in paths {
        tree.insert(&path(p), true);
    }
    tree
}

#[test]
fn field_chains_reach_their_end_and_nothing_else() {
    let got = reached(
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
    );
    assert_eq!(
        got,
        tree(&[
            &["TrustDomain"],
            &["PodMeta", "Namespace"],
            &["PodSpec", "ServiceAccountName"],
        ])
    );
    let pod_spec = got.field("PodSpec").unwrap();
    assert!(pod_spec.field("ServiceAccountName").unwrap().is_whole());
    assert!(pod_spec.field("Containers").is_none());
    assert!(got.field("NodeSpec").is_none());
}

#[test]
fn index_with_constant_keys_reaches_one_element_or_key() {
    assert_eq!(
        reached("{{ (index .PodSpec.Containers 0).Image }}"),
        tree(&[&["PodSpec", "Containers", "*", "Image"]])
    );
    let got = reached(r#"{{ index .PodMeta.Annotations "example.com/owner" }}"#);
    assert_eq!(
        got,
        tree(&[&["PodMeta", "Annotations", "example.com/owner"]])
    );
    let annotations = got.field("PodMeta").unwrap().field("Annotations").unwrap();
    assert!(annotations.keeps_key("example.com/owner"));
    assert!(!annotations.keeps_key("checksum/config"));
    // A key that is not a constant may be any key: the whole map.
    assert_eq!(
        reached("{{ index .PodMeta.Labels .PodMeta.Name }}"),
        tree(&[&["PodMeta", "Labels"], &["PodMeta", "Name"]])
    );
}

#[test]
fn range_reaches_every_element_and_what_the_body_reads() {
    let got = reached("{{ range .PodSpec.Containers }}{{ .Name }},{{ end }}");
    assert_eq!(got, tree(&[&["PodSpec", "Containers", "*", "Name"]]));
    // Without reading anything, the body still runs once per element: the elements are kept.
    let got = reached("{{ range .PodSpec.Containers }}x{{ end }}");
    let containers = got
        .field("PodSpec")
        .and_then(|s| s.field("Containers"))
        .unwrap();
    assert!(containers.element().is_some());
    assert!(!containers.is_whole());
    // Variables follow their values; `$` is the root.
    assert_eq!(
        reached(
            "{{ range $i, $c := .PodSpec.Containers }}{{ $c.Image }}{{ $.PodMeta.Name }}{{ end }}"
        ),
        tree(&[
            &["PodSpec", "Containers", "*", "Image"],
            &["PodMeta", "Name"]
        ])
    );
    assert_eq!(
        reached("{{ $c := index .PodSpec.Containers 1 }}{{ $c.Image }}"),
        tree(&[&["PodSpec", "Containers", "*", "Image"]])
    );
}

#[test]
fn values_used_as_a_whole_are_reached_whole() {
    assert!(reached("{{ . }}").is_whole());
    assert!(reached("{{ $ }}").is_whole());
    assert_eq!(reached("{{ .PodSpec }}"), tree(&[&["PodSpec"]]));
    assert_eq!(
        reached("{{ with .PodSpec.SecurityContext }}{{ .RunAsUser }}{{ end }}"),
        tree(&[&["PodSpec", "SecurityContext"]])
    );
    assert_eq!(
        reached("{{ if .PodMeta.Labels }}{{ len .PodSpec.Volumes }}{{ end }}"),
        tree(&[&["PodMeta", "Labels"], &["PodSpec", "Volumes"]])
    );
    assert_eq!(
        reached(r#"{{ printf "%s-%v" .PodMeta.Name (eq .PodSpec.NodeName "n") }}"#),
        tree(&[&["PodMeta", "Name"], &["PodSpec", "NodeName"]])
    );
    assert_eq!(
        reached("{{ .PodMeta.Name | printf \"%s\" }}"),
        tree(&[&["PodMeta", "Name"]])
    );
}

#[test]
fn covers_tells_whether_a_tree_already_keeps_another() {
    let kept =
        reached("{{ .PodMeta.Namespace }}{{ range .PodSpec.Containers }}{{ .Name }}{{ end }}");
    assert!(kept.covers(&reached("{{ .PodMeta.Namespace }}")));
    assert!(kept.covers(&reached("{{ (index .PodSpec.Containers 0).Name }}")));
    assert!(!kept.covers(&reached("{{ (index .PodSpec.Containers 0).Image }}")));
    assert!(!kept.covers(&reached("{{ .PodSpec }}")));
    assert!(FieldTree::everything().covers(&reached("{{ . }}")));

    let mut merged = kept.clone();
    merged.merge(&reached("{{ (index .PodSpec.Containers 0).Image }}"));
    assert!(merged.covers(&kept));
    assert!(merged.covers(&reached("{{ (index .PodSpec.Containers 0).Image }}")));
    merged.merge(&reached("{{ .PodSpec }}"));
    assert!(merged.covers(&reached("{{ .PodSpec.Hostname }}")));
}
