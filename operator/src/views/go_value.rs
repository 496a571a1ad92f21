//! Kubernetes objects as Go's `text/template` sees the Go structs: JSON names to Go field names,
//! Go maps kept as maps, and every field the Go struct declares present (unset ones with their
//! zero value). Conversion keeps only the parts a [`FieldTree`] reaches, so what the operator holds
//! per object is what its templates can read (issue 10), not the whole object.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use wimsey_core::template::{FieldTree, Value};

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
pub(super) struct RootShapes {
    shapes: Shapes,
    pub(super) pod_spec: usize,
    pub(super) node_spec: usize,
    pub(super) object_meta: usize,
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

    /// A JSON value converted with its schema's shape, keeping what `keep` reaches; without a
    /// matching shape, the schema-less conversion of all of it (scalars, IntOrString, Quantity).
    fn convert(
        &self,
        field_name: &str,
        json: &serde_json::Value,
        shape: &Shape,
        keep: &FieldTree,
    ) -> Value {
        match (shape, json) {
            (Shape::Struct(index), serde_json::Value::Object(map)) => {
                self.struct_value(&self.structs[*index], None, map, keep)
            }
            // Every element stays (length and order are observable); each keeps what is reached.
            (Shape::List(element), serde_json::Value::Array(items)) => {
                let keep = keep.element().unwrap_or(&NOTHING);
                Value::List(
                    items
                        .iter()
                        .map(|item| self.convert("", item, element, keep))
                        .collect(),
                )
            }
            (Shape::Map(element), serde_json::Value::Object(map)) => {
                let mut kept: BTreeMap<String, Value> = map
                    .iter()
                    .filter(|(k, _)| keep.keeps_key(k))
                    .map(|(k, v)| {
                        let below = keep.child(k).unwrap_or(&NOTHING);
                        (k.clone(), self.convert("", v, element, below))
                    })
                    .collect();
                // `index` on a missing key gives the zero of the map's element type, which the
                // engine infers from the first element: keep it when it is not a string.
                if let Some((k, v)) = map.iter().next()
                    && !v.is_string()
                    && !kept.contains_key(k)
                {
                    kept.insert(k.clone(), self.convert("", v, element, &NOTHING));
                }
                Value::Map(kept)
            }
            _ => schemaless_field(field_name, json).1,
        }
    }

    /// Every field the struct declares that `keep` reaches: present ones converted, absent ones
    /// Go's zero value.
    fn struct_value(
        &self,
        shape: &StructShape,
        type_name: Option<&str>,
        json: &serde_json::Map<String, serde_json::Value>,
        keep: &FieldTree,
    ) -> Value {
        let mut present = 0;
        let mut fields: BTreeMap<String, Value> = shape
            .fields
            .iter()
            .filter_map(|field| {
                let found = json.get(&field.json_name);
                present += usize::from(found.is_some());
                let below = keep.field(&field.go_name)?;
                let value = match found {
                    Some(value) => self.convert(&field.json_name, value, &field.shape, below),
                    None => field.shape.zero(),
                };
                Some((field.go_name.clone(), value))
            })
            .collect();
        if present < json.len() {
            // Properties the schema does not declare keep the schema-less conversion.
            fields.extend(
                json.iter()
                    .filter(|(name, _)| !shape.fields.iter().any(|f| f.json_name == **name))
                    .map(|(name, value)| schemaless_field(name, value))
                    .filter(|(go_name, _)| keep.field(go_name).is_some()),
            );
        }
        Value::Struct {
            type_name: type_name.unwrap_or(&shape.type_name).to_owned(),
            fields,
        }
    }
}

/// Nothing reached: a struct keeps no field, a map no key.
static NOTHING: FieldTree = FieldTree::new();

/// The fields of a struct that `keep` reaches, with every such field its schema declares (`root`
/// in `ROOT_SHAPES`). Reaching nothing costs no conversion at all.
pub(super) fn go_fields<T: serde::Serialize>(
    type_name: &str,
    value: &T,
    root: impl Fn(&RootShapes) -> usize,
    keep: &FieldTree,
) -> BTreeMap<String, Value> {
    if keep.is_empty() {
        return BTreeMap::new();
    }
    let roots = &*ROOT_SHAPES;
    let shape = &roots.shapes.structs[root(roots)];
    let empty = serde_json::Map::new();
    let json = serde_json::to_value(value);
    let object = match &json {
        Ok(serde_json::Value::Object(map)) => map,
        _ => &empty,
    };
    match roots
        .shapes
        .struct_value(shape, Some(type_name), object, keep)
    {
        Value::Struct { fields, .. } => fields,
        _ => BTreeMap::new(),
    }
}
