//! Kubernetes objects to the plain views `wimsey_core::entries` renders.

use std::collections::BTreeMap;
use std::sync::LazyLock;

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

/// JSON names whose Go field name is not the JSON name with its first letter capitalized.
const GO_FIELD_EXCEPTIONS: &[(&str, &str)] = &[
    ("uid", "UID"),
    ("apiVersion", "APIVersion"),
    ("dnsPolicy", "DNSPolicy"),
    ("dnsConfig", "DNSConfig"),
    ("tty", "TTY"),
    ("seLinuxOptions", "SELinuxOptions"),
    ("seLinuxChangePolicy", "SELinuxChangePolicy"),
    ("fsGroup", "FSGroup"),
    ("fsGroupChangePolicy", "FSGroupChangePolicy"),
    ("httpGet", "HTTPGet"),
    ("httpHeaders", "HTTPHeaders"),
    ("tcpSocket", "TCPSocket"),
    ("grpc", "GRPC"),
    ("hostIP", "HostIP"),
    ("podIP", "PodIP"),
    ("iscsi", "ISCSI"),
    ("nfs", "NFS"),
    ("rbd", "RBD"),
    ("fc", "FC"),
    ("csi", "CSI"),
    ("cephfs", "CephFS"),
    ("externalID", "DoNotUseExternalID"),
];

/// JSON fields (of PodSpec, NodeSpec and ObjectMeta trees) that are Go maps: their keys stay as
/// written, and a missing key is `<no value>` rather than an error.
const GO_MAP_FIELDS: &[&str] = &[
    "labels",
    "annotations",
    "nodeSelector",
    "overhead",
    "limits",
    "requests",
    "volumeAttributes",
    "options",
];

fn go_field_name(json_name: &str) -> String {
    if let Some((_, go)) = GO_FIELD_EXCEPTIONS.iter().find(|(j, _)| *j == json_name) {
        return (*go).to_owned();
    }
    let mut chars = json_name.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// A Kubernetes object serialized to JSON, as Go's `text/template` sees the Go struct: objects
/// are structs whose fields carry Go names (`serviceAccountName` -> `ServiceAccountName`, `uid`
/// -> `UID`), except the fields that are Go maps, whose keys stay as they are.
pub fn go_template_value(type_name: &str, json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Value::String(n.to_string()), Value::Int),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::List(
            items
                .iter()
                .map(|item| go_template_value("struct", item))
                .collect(),
        ),
        serde_json::Value::Object(fields) => Value::Struct {
            type_name: type_name.to_owned(),
            fields: fields
                .iter()
                .map(|(name, value)| schemaless_field(name, value))
                .collect(),
        },
    }
}

/// One struct field converted without a schema: Go name, and a Go map for `GO_MAP_FIELDS`.
fn schemaless_field(name: &str, value: &serde_json::Value) -> (String, Value) {
    let converted = match value {
        serde_json::Value::Object(map) if GO_MAP_FIELDS.contains(&name) => Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), go_template_value("struct", v)))
                .collect(),
        ),
        other => go_template_value("struct", other),
    };
    (go_field_name(name), converted)
}

/// A Go field's type as far as its zero value and conversion go, read from the k8s-openapi JSON
/// schema. An unset Go field still exists with its zero value, so a template naming it renders
/// that zero value instead of failing.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    String,
    /// `integer` and `number`.
    Int,
    Bool,
    /// A slice of the element shape; zero is an empty slice (Go prints a nil slice as `[]`).
    List(Box<Shape>),
    /// A map (`additionalProperties`); zero is an empty map (`map[]`, missing keys `<no value>`).
    Map(Box<Shape>),
    /// A struct (index into `Shapes::structs`); zero is a nil pointer.
    Struct(usize),
    /// Anything else (IntOrString, Quantity, untyped objects); zero is nil.
    Other,
}

impl Shape {
    fn zero(&self) -> Value {
        match self {
            Shape::String => Value::String(String::new()),
            Shape::Int => Value::Int(0),
            Shape::Bool => Value::Bool(false),
            Shape::List(_) => Value::List(Vec::new()),
            Shape::Map(_) => Value::Map(BTreeMap::new()),
            Shape::Struct(_) | Shape::Other => Value::Nil,
        }
    }
}

#[derive(Debug)]
struct FieldShape {
    json_name: String,
    go_name: String,
    shape: Shape,
}

#[derive(Debug)]
struct StructShape {
    /// Go's name for the type in error messages, e.g. `v1.Container`.
    type_name: String,
    fields: Vec<FieldShape>,
}

/// Every struct reachable from PodSpec, NodeSpec and ObjectMeta, walked once.
#[derive(Debug, Default)]
struct Shapes {
    structs: Vec<StructShape>,
    by_schema_name: BTreeMap<String, usize>,
}

/// The root struct shapes templates see.
struct RootShapes {
    shapes: Shapes,
    pod_spec: usize,
    node_spec: usize,
    object_meta: usize,
}

static ROOT_SHAPES: LazyLock<RootShapes> = LazyLock::new(|| {
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec};
    use schemars::JsonSchema;
    let mut shapes = Shapes::default();
    let mut root = |name: std::borrow::Cow<'static, str>, schema: schemars::Schema| {
        let json = schema.to_value();
        let empty = serde_json::Map::new();
        let defs = json
            .get("$defs")
            .and_then(serde_json::Value::as_object)
            .unwrap_or(&empty);
        shapes.struct_index(&name, &json, defs)
    };
    let pod_spec = root(PodSpec::schema_name(), schemars::schema_for!(PodSpec));
    let node_spec = root(NodeSpec::schema_name(), schemars::schema_for!(NodeSpec));
    let object_meta = root(ObjectMeta::schema_name(), schemars::schema_for!(ObjectMeta));
    RootShapes {
        shapes,
        pod_spec,
        node_spec,
        object_meta,
    }
});

/// `io.k8s.api.core.v1.Container` -> `v1.Container`, as Go names the type.
fn go_type_name(schema_name: &str) -> String {
    let mut parts = schema_name.rsplit('.');
    match (parts.next(), parts.next()) {
        (Some(kind), Some(version)) => format!("{version}.{kind}"),
        _ => schema_name.to_owned(),
    }
}

impl Shapes {
    /// The struct for a named schema, walking its properties the first time it is seen.
    fn struct_index(
        &mut self,
        schema_name: &str,
        schema: &serde_json::Value,
        defs: &serde_json::Map<String, serde_json::Value>,
    ) -> usize {
        if let Some(&index) = self.by_schema_name.get(schema_name) {
            return index;
        }
        // Registered before walking the properties, so a self-referencing type terminates.
        let index = self.structs.len();
        self.structs.push(StructShape {
            type_name: go_type_name(schema_name),
            fields: Vec::new(),
        });
        self.by_schema_name.insert(schema_name.to_owned(), index);
        let fields = schema
            .get("properties")
            .and_then(serde_json::Value::as_object)
            .into_iter()
            .flatten()
            .map(|(json_name, property)| FieldShape {
                json_name: json_name.clone(),
                go_name: go_field_name(json_name),
                shape: self.shape(property, defs),
            })
            .collect();
        self.structs[index].fields = fields;
        index
    }

    fn shape(
        &mut self,
        schema: &serde_json::Value,
        defs: &serde_json::Map<String, serde_json::Value>,
    ) -> Shape {
        if let Some(reference) = schema.get("$ref").and_then(serde_json::Value::as_str) {
            let name = reference.rsplit('/').next().unwrap_or(reference);
            return match defs.get(name) {
                Some(target) if target.get("properties").is_some() => {
                    Shape::Struct(self.struct_index(name, target, defs))
                }
                Some(target) => self.shape(target, defs),
                None => Shape::Other,
            };
        }
        match schema.get("type").and_then(serde_json::Value::as_str) {
            Some("string") => Shape::String,
            Some("integer" | "number") => Shape::Int,
            Some("boolean") => Shape::Bool,
            Some("array") => Shape::List(Box::new(
                schema
                    .get("items")
                    .map_or(Shape::Other, |items| self.shape(items, defs)),
            )),
            Some("object") => match schema.get("additionalProperties") {
                Some(values) if values.is_object() => {
                    Shape::Map(Box::new(self.shape(values, defs)))
                }
                _ => Shape::Other,
            },
            _ => Shape::Other,
        }
    }

    /// A JSON value converted with its schema's shape; without a matching shape, the
    /// schema-less conversion.
    fn convert(&self, field_name: &str, json: &serde_json::Value, shape: &Shape) -> Value {
        match (shape, json) {
            (Shape::Struct(index), serde_json::Value::Object(map)) => {
                self.struct_value(&self.structs[*index], None, map)
            }
            (Shape::List(element), serde_json::Value::Array(items)) => Value::List(
                items
                    .iter()
                    .map(|item| self.convert("", item, element))
                    .collect(),
            ),
            (Shape::Map(element), serde_json::Value::Object(map)) => Value::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.convert("", v, element)))
                    .collect(),
            ),
            _ => schemaless_field(field_name, json).1,
        }
    }

    /// Every field the struct declares: present ones converted, absent ones Go's zero value.
    fn struct_value(
        &self,
        shape: &StructShape,
        type_name: Option<&str>,
        json: &serde_json::Map<String, serde_json::Value>,
    ) -> Value {
        let mut present = 0;
        let mut fields: BTreeMap<String, Value> = shape
            .fields
            .iter()
            .map(|field| {
                let value = match json.get(&field.json_name) {
                    Some(value) => {
                        present += 1;
                        self.convert(&field.json_name, value, &field.shape)
                    }
                    None => field.shape.zero(),
                };
                (field.go_name.clone(), value)
            })
            .collect();
        if present < json.len() {
            // Properties the schema does not declare keep the schema-less conversion.
            fields.extend(
                json.iter()
                    .filter(|(name, _)| !shape.fields.iter().any(|f| f.json_name == **name))
                    .map(|(name, value)| schemaless_field(name, value)),
            );
        }
        Value::Struct {
            type_name: type_name.unwrap_or(&shape.type_name).to_owned(),
            fields,
        }
    }
}

/// The fields of a struct with every field its schema declares (`root` in `ROOT_SHAPES`).
fn go_fields<T: serde::Serialize>(
    type_name: &str,
    value: &T,
    root: impl Fn(&RootShapes) -> usize,
) -> BTreeMap<String, Value> {
    let roots = &*ROOT_SHAPES;
    let shape = &roots.shapes.structs[root(roots)];
    let empty = serde_json::Map::new();
    let json = serde_json::to_value(value);
    let object = match &json {
        Ok(serde_json::Value::Object(map)) => map,
        _ => &empty,
    };
    match roots.shapes.struct_value(shape, Some(type_name), object) {
        Value::Struct { fields, .. } => fields,
        _ => BTreeMap::new(),
    }
}

/// `.PodMeta`/`.NodeMeta` fields. `managedFields` is bookkeeping no template needs, and
/// `resourceVersion` changes on every status update, which would re-render the pod each time.
fn meta_fields(meta: &ObjectMeta) -> BTreeMap<String, Value> {
    let meta = ObjectMeta {
        managed_fields: None,
        resource_version: None,
        ..meta.clone()
    };
    go_fields("*v1.ObjectMeta", &meta, |r| r.object_meta)
}

/// A pod as templates see it: `.PodMeta` is the whole ObjectMeta and `.PodSpec` the whole
/// PodSpec, with Go field names.
pub fn pod_view(pod: &Pod) -> PodView {
    let spec = pod.spec.as_ref();
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
        extra_meta: meta_fields(&pod.metadata),
        extra_spec: spec
            .map(|s| go_fields("*v1.PodSpec", s, |r| r.pod_spec))
            .unwrap_or_default(),
        service_dns_names: Vec::new(),
    }
}

/// A node as templates see it (`.NodeMeta`, `.NodeSpec`); the node's status is not template data.
pub fn node_view(node: &Node) -> NodeView {
    NodeView {
        name: node.name_any(),
        uid: node.uid().unwrap_or_default(),
        labels: string_map(&node.metadata.labels),
        extra_meta: meta_fields(&node.metadata),
        extra_spec: node
            .spec
            .as_ref()
            .map(|s| go_fields("*v1.NodeSpec", s, |r| r.node_spec))
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
}
