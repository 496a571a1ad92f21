//! The values reference of docs/install.md, made from the chart's `values.schema.json` (names,
//! types, descriptions) and `values.yaml` (defaults), so the docs cannot drift from the chart.

use serde_json::Value;

pub const BEGIN: &str = "<!-- values:begin -->";
pub const END: &str = "<!-- values:end -->";

/// One markdown table row per leaf value (an object without listed properties is a leaf).
pub fn values_table(schema: &Value, defaults: &Value) -> String {
    let mut rows = Vec::new();
    walk(schema, defaults, "", &mut rows);
    let mut out = String::from("| value | type | default | meaning |\n| --- | --- | --- | --- |\n");
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    out
}

fn walk(schema: &Value, defaults: &Value, path: &str, rows: &mut Vec<String>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            walk(
                child,
                defaults.get(name).unwrap_or(&Value::Null),
                &child_path,
                rows,
            );
        }
        return;
    }
    rows.push(format!(
        "| `{path}` | {} | {} | {} |",
        type_of(schema),
        default_of(defaults),
        schema
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .replace('|', "\\|")
    ));
}

fn type_of(schema: &Value) -> String {
    if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = choices
            .iter()
            .map(|c| {
                format!(
                    "`{}`",
                    c.as_str().map_or_else(|| c.to_string(), str::to_owned)
                )
            })
            .collect();
        return names.join(", ");
    }
    match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_owned(),
    }
}

fn default_of(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) if s.is_empty() => "`\"\"`".to_owned(),
        Value::String(s) => format!("`{s}`"),
        other => format!("`{}`", other.to_string().replace('|', "\\|")),
    }
}

/// `document` with the text between the markers replaced by `table`; `None` without the markers.
pub fn replace_between_markers(document: &str, table: &str) -> Option<String> {
    let start = document.find(BEGIN)? + BEGIN.len();
    let end = document[start..].find(END)? + start;
    Some(format!(
        "{}\n{table}{}",
        &document[..start],
        &document[end..]
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn leaves_become_rows_with_their_defaults() {
        let schema = json!({"properties": {
            "trustDomain": {"type": "string", "description": "This trust domain."},
            "operator": {"properties": {
                "replicas": {"type": "integer", "description": "Replicas."},
                "resources": {"type": "object", "description": "Requests | limits."}
            }},
            "backend": {"enum": ["embedded"], "description": "Where entries go."}
        }});
        let defaults = json!({
            "trustDomain": "example.org",
            "operator": {"replicas": 2, "resources": {"limits": {"memory": "256Mi"}}},
            "backend": "embedded"
        });
        let table = values_table(&schema, &defaults);
        assert!(
            table.contains("| `trustDomain` | string | `example.org` | This trust domain. |"),
            "{table}"
        );
        assert!(
            table.contains("| `operator.replicas` | integer | `2` | Replicas. |"),
            "{table}"
        );
        assert!(table.contains(r#"| `operator.resources` | object | `{"limits":{"memory":"256Mi"}}` | Requests \| limits. |"#), "{table}");
        assert!(
            table.contains("| `backend` | `embedded` | `embedded` |"),
            "{table}"
        );
        assert!(!table.contains("| `operator` |"), "{table}");
    }

    #[test]
    fn only_the_text_between_the_markers_is_replaced() {
        let doc = format!("intro\n{BEGIN}\nold\n{END}\nafter\n");
        let new = replace_between_markers(&doc, "| new |\n").unwrap();
        assert_eq!(new, format!("intro\n{BEGIN}\n| new |\n{END}\nafter\n"));
        assert!(replace_between_markers("no markers", "x").is_none());
    }
}
