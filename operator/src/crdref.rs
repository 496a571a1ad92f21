//! docs/crd-reference.md, generated from the same CRDs as `crds/` (so from the Rust types): every
//! field of the three kinds with its type, default, whether it is required, its meaning and the
//! validation rules the API server enforces (`wimsey-operator crd --reference`, `make generate`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

const HEADER: &str = "# CRD reference\n\n\
Generated from operator/src/crd by `make generate` (the same schemas as `crds/`); do not edit.\n\
The three kinds are `spire.spiffe.io/v1alpha1`, cluster-scoped, with spire-controller-manager's fields\n\
and meanings (docs/migrating-from-spire-controller-manager.md), plus `status.conditions` and\n\
`status.observedGeneration`. Rules are CEL the API server checks on every write.\n";

/// The whole document for these CRDs, in their order.
pub fn reference_markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(HEADER);
    for crd in crds {
        let kind = &crd.spec.names.kind;
        for version in &crd.spec.versions {
            let Some(schema) = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
            else {
                continue;
            };
            out.push_str(&format!(
                "\n## {kind} (`{}/{}`)\n\n",
                crd.spec.group, version.name
            ));
            if let Some(description) = &schema.description {
                out.push_str(&one_line(description));
                out.push_str("\n\n");
            }
            if let Some(columns) = &version.additional_printer_columns {
                let names: Vec<String> = columns.iter().map(|c| format!("`{}`", c.name)).collect();
                out.push_str(&format!("`kubectl get` columns: {}.\n\n", names.join(", ")));
            }
            out.push_str("| field | type | default | meaning |\n| --- | --- | --- | --- |\n");
            let mut rows = Vec::new();
            for part in ["spec", "status"] {
                if let Some(child) = schema.properties.as_ref().and_then(|p| p.get(part)) {
                    let required = is_required(schema, part);
                    walk(child, part, required, &mut rows);
                }
            }
            for row in rows {
                out.push_str(&row);
                out.push('\n');
            }
        }
    }
    out
}

fn is_required(parent: &JSONSchemaProps, name: &str) -> bool {
    parent
        .required
        .as_ref()
        .is_some_and(|r| r.iter().any(|n| n == name))
}

/// A row for this field, then rows for its fields (objects) or its items' fields (arrays).
fn walk(schema: &JSONSchemaProps, path: &str, required: bool, rows: &mut Vec<String>) {
    rows.push(row(schema, path, required));
    if let Some(properties) = &schema.properties {
        for (name, child) in properties {
            walk(
                child,
                &format!("{path}.{name}"),
                is_required(schema, name),
                rows,
            );
        }
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items
        && items.properties.is_some()
    {
        for (name, child) in items.properties.iter().flatten() {
            walk(
                child,
                &format!("{path}[].{name}"),
                is_required(items, name),
                rows,
            );
        }
    }
}

fn row(schema: &JSONSchemaProps, path: &str, required: bool) -> String {
    let mut meaning = schema
        .description
        .as_deref()
        .map(one_line)
        .unwrap_or_default();
    if required {
        meaning = format!("**Required.** {meaning}");
    }
    for rule in schema.x_kubernetes_validations.iter().flatten() {
        let message = rule.message.as_deref().unwrap_or(&rule.rule);
        meaning.push_str(&format!(" Rule: {}.", message.trim_end_matches('.')));
    }
    let default = schema
        .default
        .as_ref()
        .map(|d| format!("`{}`", d.0))
        .unwrap_or_default();
    format!(
        "| `{path}` | {} | {default} | {} |",
        type_name(schema),
        meaning.trim().replace('|', "\\|")
    )
}

fn type_name(schema: &JSONSchemaProps) -> String {
    if let Some(choices) = &schema.enum_ {
        let names: Vec<String> = choices.iter().map(|c| format!("`{}`", c.0)).collect();
        return format!("one of {}", names.join(", "));
    }
    let base = schema.type_.clone().unwrap_or_else(|| "any".to_owned());
    match base.as_str() {
        "array" => match &schema.items {
            Some(JSONSchemaPropsOrArray::Schema(items)) => format!("[]{}", type_name(items)),
            _ => "array".to_owned(),
        },
        "object" => match &schema.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(values)) => {
                format!("map of {}", type_name(values))
            }
            _ => "object".to_owned(),
        },
        _ => match &schema.format {
            Some(format) => format!("{base} ({format})"),
            None => base,
        },
    }
}

/// Markdown table cells hold one line: paragraphs joined by spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::all_crds;

    #[test]
    fn every_kind_and_its_fields_are_documented() {
        let doc = reference_markdown(&all_crds());
        for kind in [
            "ClusterSPIFFEID",
            "ClusterStaticEntry",
            "ClusterFederatedTrustDomain",
        ] {
            assert!(
                doc.contains(&format!("## {kind} (`spire.spiffe.io/v1alpha1`)")),
                "{kind}"
            );
        }
        // spire-controller-manager's only required field, with its meaning
        let line = doc
            .lines()
            .find(|l| l.starts_with("| `spec.spiffeIDTemplate` |"))
            .unwrap();
        assert!(line.contains("**Required.**"), "{line}");
        // nested fields of arrays and the status
        assert!(doc.contains("| `status.conditions[].type` |"), "{doc}");
        assert!(
            doc.contains("| `spec.namespaceSelector.matchLabels` | map of string |"),
            "{doc}"
        );
    }
}
