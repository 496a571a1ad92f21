//! JSON schemas for kubeconform, made from a real API server's OpenAPI v2 document (`kubectl get
//! --raw /openapi/v2`), so manifests are checked against exactly the Kubernetes version the tests
//! run and nothing is downloaded. One standalone, strict schema per group/version/kind: every
//! `$ref` inlined, and every object that lists its properties refusing any other property.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// A schema per kind, keyed by the file name kubeconform is pointed at with
/// `-schema-location '<dir>/{{ .ResourceKind }}_{{ .Group }}_{{ .ResourceAPIVersion }}.json'`.
pub fn schemas_from_openapi(openapi: &Value) -> Result<BTreeMap<String, Value>, String> {
    let definitions = openapi
        .get("definitions")
        .and_then(Value::as_object)
        .ok_or("the document has no `definitions` (not an OpenAPI v2 document)")?;
    let mut out = BTreeMap::new();
    for (name, definition) in definitions {
        let Some(kinds) = definition
            .get("x-kubernetes-group-version-kind")
            .and_then(Value::as_array)
        else {
            continue;
        };
        let mut stack = vec![name.clone()];
        let schema = inline(definition, definitions, &mut stack);
        for gvk in kinds {
            let field = |key: &str| gvk.get(key).and_then(Value::as_str).unwrap_or_default();
            let (group, version, kind) = (field("group"), field("version"), field("kind"));
            if kind.is_empty() || version.is_empty() {
                continue;
            }
            let mut schema = schema.clone();
            pin_api_version_and_kind(&mut schema, group, version, kind);
            out.insert(schema_file_name(group, version, kind), schema);
        }
    }
    if out.is_empty() {
        return Err("no definition names a group/version/kind".to_owned());
    }
    Ok(out)
}

/// The file name kubeconform's template resolves to for this kind. Its `.Group` is the part of
/// `apiVersion` before the `/`, which for the core group (`v1`) is the version itself.
pub fn schema_file_name(group: &str, version: &str, kind: &str) -> String {
    let group = if group.is_empty() { version } else { group };
    format!("{}_{group}_{version}.json", kind.to_lowercase())
}

/// A definition with its references resolved. A reference back into a definition being inlined
/// (CRDs' JSONSchemaProps is recursive) accepts anything there.
fn inline(node: &Value, definitions: &Map<String, Value>, stack: &mut Vec<String>) -> Value {
    match node {
        Value::Object(object) => {
            if let Some(target) = object
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
            {
                if stack.iter().any(|s| s == target) {
                    return json!({});
                }
                let Some(definition) = definitions.get(target) else {
                    return json!({});
                };
                stack.push(target.to_owned());
                let resolved = inline(definition, definitions, stack);
                stack.pop();
                return resolved;
            }
            if object.get("format").and_then(Value::as_str) == Some("int-or-string") {
                return json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
            }
            let mut out = Map::new();
            for (key, value) in object {
                // Not JSON Schema: OpenAPI and Kubernetes annotations.
                if key.starts_with("x-kubernetes-") || key == "format" {
                    continue;
                }
                let value = if key == "properties" {
                    Value::Object(
                        value
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(k, v)| (k.clone(), inline(v, definitions, stack)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                } else {
                    inline(value, definitions, stack)
                };
                out.insert(key.clone(), value);
            }
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            if quantity_like(&out) {
                out.remove("type");
                out.insert(
                    "oneOf".to_owned(),
                    json!([{"type": "string"}, {"type": "number"}]),
                );
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| inline(item, definitions, stack))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `resource.Quantity` is a string in the document but YAML writes `cpu: 1` as a number.
fn quantity_like(object: &Map<String, Value>) -> bool {
    object
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.starts_with("Quantity is a fixed-point representation"))
}

fn pin_api_version_and_kind(schema: &mut Value, group: &str, version: &str, kind: &str) {
    let api_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert("apiVersion".to_owned(), json!({"enum": [api_version]}));
        properties.insert("kind".to_owned(), json!({"enum": [kind]}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        json!({"definitions": {
            "io.k8s.api.apps.v1.Deployment": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "apps", "kind": "Deployment", "version": "v1"}],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "spec": {"$ref": "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"}
                }
            },
            "io.k8s.api.apps.v1.DeploymentSpec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer", "format": "int32"},
                    "maxUnavailable": {"type": "string", "format": "int-or-string"},
                    "cpu": {"type": "string", "description": "Quantity is a fixed-point representation of a number."},
                    "schema": {"$ref": "#/definitions/io.k8s.Props"}
                }
            },
            "io.k8s.Props": {
                "type": "object",
                "properties": {"items": {"$ref": "#/definitions/io.k8s.Props"}}
            },
            "io.k8s.api.core.v1.Service": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "Service", "version": "v1"}],
                "properties": {"apiVersion": {"type": "string"}}
            }
        }})
    }

    #[test]
    fn every_kind_gets_a_standalone_strict_schema() {
        let schemas = schemas_from_openapi(&document()).unwrap();
        assert_eq!(
            schemas.keys().collect::<Vec<_>>(),
            ["deployment_apps_v1.json", "service_v1_v1.json"]
        );
        let deployment = &schemas["deployment_apps_v1.json"];
        let spec = &deployment["properties"]["spec"];
        assert_eq!(spec["additionalProperties"], json!(false));
        assert_eq!(deployment["additionalProperties"], json!(false));
        assert_eq!(spec["properties"]["replicas"], json!({"type": "integer"}));
        assert_eq!(
            spec["properties"]["maxUnavailable"]["oneOf"][1],
            json!({"type": "integer"})
        );
        assert_eq!(
            spec["properties"]["cpu"]["oneOf"][1],
            json!({"type": "number"})
        );
        // the recursive definition is inlined once, then accepts anything
        assert_eq!(
            spec["properties"]["schema"]["properties"]["items"],
            json!({})
        );
        assert_eq!(
            deployment["properties"]["apiVersion"],
            json!({"enum": ["apps/v1"]})
        );
        assert_eq!(
            schemas["service_v1_v1.json"]["properties"]["apiVersion"],
            json!({"enum": ["v1"]})
        );
    }

    #[test]
    fn a_document_without_kinds_is_refused() {
        assert!(schemas_from_openapi(&json!({"swagger": "2.0"})).is_err());
        assert!(schemas_from_openapi(&json!({"definitions": {"a": {"type": "object"}}})).is_err());
    }
}
