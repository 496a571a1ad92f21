//! Behaviour checked against Go's text/template documentation and spire-controller-manager usage.

use super::*;

fn pod_data() -> Value {
    let pod_meta = Value::structure(
        "*v1.ObjectMeta",
        [
            ("Name", Value::from("web-0")),
            ("Namespace", Value::from("default")),
            ("UID", Value::from("1f0c-uid")),
            (
                "Labels",
                Value::string_map([("app", "web"), ("tier", "frontend")]),
            ),
            ("Annotations", Value::Map(Default::default())),
        ],
    );
    let pod_spec = Value::structure(
        "*v1.PodSpec",
        [
            ("ServiceAccountName", Value::from("web-sa")),
            ("NodeName", Value::from("node-1")),
            (
                "Containers",
                Value::List(vec![Value::structure(
                    "v1.Container",
                    [("Name", Value::from("app"))],
                )]),
            ),
        ],
    );
    Value::structure(
        "main.templateData",
        [
            ("TrustDomain", Value::from("example.org")),
            ("ClusterName", Value::from("prod")),
            ("ClusterDomain", Value::from("cluster.local")),
            ("PodMeta", pod_meta),
            ("PodSpec", pod_spec),
            (
                "NodeMeta",
                Value::structure(
                    "*v1.ObjectMeta",
                    [
                        ("UID", Value::from("node-uid")),
                        ("Name", Value::from("node-1")),
                    ],
                ),
            ),
            (
                "NodeSpec",
                Value::structure("*v1.NodeSpec", [("PodCIDR", Value::from("10.0.0.0/24"))]),
            ),
        ],
    )
}

fn render(src: &str) -> String {
    Template::parse("t", src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .render(&pod_data())
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn exec_err(src: &str) -> TemplateError {
    Template::parse("t", src)
        .expect("parses")
        .render(&pod_data())
        .expect_err("should fail")
}

fn parse_err(src: &str) -> TemplateError {
    Template::parse("t", src).expect_err("should not parse")
}

#[test]
fn spire_controller_manager_examples_render() {
    assert_eq!(
        render(
            "spiffe://domain.test/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
        ),
        "spiffe://domain.test/ns/default/sa/web-sa"
    );
    assert_eq!(
        render("{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.{{ .ClusterDomain }}"),
        "web-0.default.cluster.local"
    );
    assert_eq!(
        render(
            "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}"
        ),
        "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid"
    );
    assert_eq!(
        render("k8s:pod-uid:{{ .PodMeta.UID }}"),
        "k8s:pod-uid:1f0c-uid"
    );
}

#[test]
fn missing_map_key_is_no_value_by_field_and_zero_by_index() {
    assert_eq!(render("{{ .PodMeta.Labels.missing }}"), "<no value>");
    assert_eq!(render("{{ .PodMeta.Labels.missing.deeper }}"), "<no value>");
    assert_eq!(render("[{{ index .PodMeta.Labels \"missing\" }}]"), "[]");
    assert_eq!(render("{{ index .PodMeta.Labels \"app\" }}"), "web");
    assert_eq!(render("{{ .PodMeta.Labels.app }}"), "web");
    assert_eq!(render("[{{ index .PodMeta.Annotations \"x\" }}]"), "[]");
    // A missing value passed to a function becomes a nil interface, as in Go.
    assert_eq!(
        render("{{ printf \"%s\" .PodMeta.Labels.missing }}"),
        "%!s(<nil>)"
    );
    assert_eq!(
        render("{{ printf \"%v\" .PodMeta.Labels.missing }}"),
        "<nil>"
    );
}

#[test]
fn missing_struct_field_is_an_error_with_position_and_context() {
    let err = exec_err("spiffe://x/{{ .PodMeta.Foo }}");
    assert_eq!(err.pos(), Pos { line: 1, col: 15 });
    assert_eq!(
        err.to_string(),
        "template: t:1:15: executing \"t\" at <.PodMeta.Foo>: can't evaluate field Foo in type *v1.ObjectMeta"
    );
    let nil_node = Value::structure("d", [("NodeMeta", Value::Nil)]);
    let err = Template::parse("parent", "{{ .NodeMeta.UID }}")
        .expect("parse")
        .render(&nil_node)
        .expect_err("nil");
    assert!(
        err.to_string().contains("nil pointer evaluating UID"),
        "{err}"
    );
}

#[test]
fn functions_follow_go_semantics() {
    assert_eq!(render("{{ printf \"%s-%d\" .PodMeta.Name 3 }}"), "web-0-3");
    assert_eq!(render("{{ .PodMeta.Name | printf \"%s-x\" }}"), "web-0-x");
    assert_eq!(render("{{ printf \"%d\" \"x\" }}"), "%!d(string=x)");
    assert_eq!(render("{{ printf \"%s %s\" \"a\" }}"), "a %!s(MISSING)");
    assert_eq!(
        render("{{ printf \"%s\" \"a\" \"b\" }}"),
        "a%!(EXTRA string=b)"
    );
    assert_eq!(
        render("{{ printf \"%05d|%-4s|%4s|%x|%q|%%\" 42 \"ab\" \"cd\" 255 \"q\" }}"),
        "00042|ab  |  cd|ff|\"q\"|%"
    );
    assert_eq!(render("{{ print 1 2 \"a\" 3 }}"), "1 2a3");
    assert_eq!(
        render("{{ len .PodMeta.Labels }} {{ len .PodMeta.Name }}"),
        "2 5"
    );
    assert_eq!(
        render("{{ and 1 0 }} {{ and 1 \"x\" }} {{ or 0 \"\" \"y\" }} {{ or 0 \"\" }}"),
        "0 x y "
    );
    assert_eq!(
        render("{{ not 0 }} {{ not .PodMeta.Labels }}"),
        "true false"
    );
    assert_eq!(
        render("{{ eq .PodMeta.Namespace \"kube-system\" \"default\" }}"),
        "true"
    );
    assert_eq!(
        render("{{ ne 1 2 }} {{ lt 1 2 }} {{ ge \"b\" \"a\" }} {{ le 2 2 }} {{ gt 1 2 }}"),
        "true true true true false"
    );
    assert_eq!(
        render("{{ index .PodSpec.Containers 0 | printf \"%v\" }}"),
        "{app}"
    );
    assert_eq!(render("{{ (index .PodSpec.Containers 0).Name }}"), "app");
    assert_eq!(render("{{ slice .PodMeta.Name 0 3 }}"), "web");
    assert!(
        exec_err("{{ eq .PodMeta.Labels.nope \"x\" }}")
            .to_string()
            .contains("invalid type for comparison")
    );
    assert!(
        exec_err("{{ eq 1 \"x\" }}")
            .to_string()
            .contains("incompatible types")
    );
    assert!(
        exec_err("{{ index .PodSpec.Containers 5 }}")
            .to_string()
            .contains("index out of range: 5")
    );
    assert!(
        exec_err("{{ not 1 2 }}")
            .to_string()
            .contains("wrong number of args")
    );
}

#[test]
fn control_flow_variables_and_whitespace() {
    assert_eq!(
        render("{{ if eq .PodMeta.Namespace \"default\" }}d{{ else }}o{{ end }}"),
        "d"
    );
    assert_eq!(
        render(
            "{{ if .PodMeta.Labels.nope }}a{{ else if .PodMeta.Labels.app }}b{{ else }}c{{ end }}"
        ),
        "b"
    );
    assert_eq!(
        render("{{ with .PodMeta.Labels.tier }}{{ . }}{{ else }}none{{ end }}"),
        "frontend"
    );
    assert_eq!(
        render("{{ with .PodMeta.Labels.nope }}{{ . }}{{ else }}none{{ end }}"),
        "none"
    );
    assert_eq!(
        render("{{ $ns := .PodMeta.Namespace }}{{ $ns }}/{{ $.ClusterName }}"),
        "default/prod"
    );
    assert_eq!(render("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}"), "2");
    assert_eq!(
        render("{{ range $k, $v := .PodMeta.Labels }}{{ $k }}={{ $v }};{{ end }}"),
        "app=web;tier=frontend;"
    );
    assert_eq!(
        render("{{ range .PodSpec.Containers }}{{ .Name }}{{ else }}none{{ end }}"),
        "app"
    );
    assert_eq!(
        render("{{ range .PodMeta.Annotations }}x{{ else }}empty{{ end }}"),
        "empty"
    );
    assert_eq!(render("a  {{- \"b\" -}}  \n c"), "abc");
    assert_eq!(
        render("a{{/* a comment */}}b{{- /* trimmed */ -}}  c"),
        "abc"
    );
    assert_eq!(render("{{ `raw \"quoted\"` }}"), "raw \"quoted\"");
    assert_eq!(render("{{ \"esc\\t\\\"q\\\"\" }}"), "esc\t\"q\"");
    assert_eq!(render("{{ -5 }} {{ 0x1F }} {{ true }}"), "-5 31 true");
    assert_eq!(
        render("{{ .PodMeta.Labels }}"),
        "map[app:web tier:frontend]"
    );
}

#[test]
fn parse_errors_carry_positions() {
    let cases: &[(&str, Pos, &str)] = &[
        (
            "spiffe://x/{{ .PodMeta.Name",
            Pos { line: 1, col: 12 },
            "unclosed action",
        ),
        (
            "{{ foo .X }}",
            Pos { line: 1, col: 4 },
            "function \"foo\" not defined",
        ),
        (
            "a\n  {{ $y }}",
            Pos { line: 2, col: 6 },
            "undefined variable \"$y\"",
        ),
        ("{{ if .A }}x", Pos { line: 1, col: 4 }, "unexpected EOF"),
        ("x{{ end }}", Pos { line: 1, col: 5 }, "unexpected {{end}}"),
        (
            "{{ }}",
            Pos { line: 1, col: 4 },
            "missing value for command",
        ),
        (
            "{{ \"a\" \"b\" }}",
            Pos { line: 1, col: 4 },
            "can't give argument to non-function",
        ),
        (
            "{{ .A | \"b\" }}",
            Pos { line: 1, col: 9 },
            "non executable command in pipeline stage 2",
        ),
        (
            "{{ (index .A }}",
            Pos { line: 1, col: 14 },
            "unexpected \"}}\" in parenthesized pipeline",
        ),
        (
            "{{ \"abc }}",
            Pos { line: 1, col: 4 },
            "unterminated quoted string",
        ),
        ("{{ 1.5 }}", Pos { line: 1, col: 4 }, "bad number syntax"),
        ("{{/* open", Pos { line: 1, col: 1 }, "unclosed comment"),
        (
            "{{ if 1 }}{{ else }}{{ else }}{{ end }}",
            Pos { line: 1, col: 24 },
            "expected end; found {{else}}",
        ),
        (
            "{{ template \"x\" }}",
            Pos { line: 1, col: 4 },
            "not supported",
        ),
    ];
    for (src, pos, needle) in cases {
        let err = parse_err(src);
        assert_eq!(err.pos(), *pos, "{src}: {err}");
        assert!(err.to_string().contains(needle), "{src}: {err}");
        assert_eq!(err.label(), "parse");
    }
}

#[test]
fn hostile_input_is_bounded() {
    let deep = format!("{{{{ {}1{} }}}}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(parse_err(&deep).to_string().contains("nesting deeper"));
    let nested_ifs = "{{ if 1 }}".repeat(10_000);
    assert!(
        parse_err(&nested_ifs)
            .to_string()
            .contains("nesting deeper")
    );
    let blowup = Value::structure("d", [("L", Value::List(vec![Value::Int(0); 2000]))]);
    let t = Template::parse(
        "t",
        "{{ range .L }}{{ range $.L }}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{{ end }}{{ end }}",
    )
    .expect("parse");
    assert!(
        t.render(&blowup)
            .expect_err("too big")
            .to_string()
            .contains("exceeds 1 MiB")
    );
}

#[test]
fn parse_once_render_many() {
    let t = Template::parse("id", "spiffe://td/ns/{{ .Namespace }}").expect("parse");
    for ns in ["a", "b", "c"] {
        let data = Value::structure("d", [("Namespace", Value::from(ns))]);
        assert_eq!(
            t.render(&data).expect("render"),
            format!("spiffe://td/ns/{ns}")
        );
    }
}
