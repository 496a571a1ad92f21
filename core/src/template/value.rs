//! The data a template sees: a small dynamic value that keeps Go's struct/map distinction.

use std::collections::BTreeMap;
use std::fmt;

/// A template data value.
///
/// `Struct` and `Map` differ exactly as in Go: a missing struct field is an error, a missing map
/// key is "no value". `Missing` is Go's invalid `reflect.Value`, printed as `<no value>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Value {
    /// A nil pointer, map, slice or interface. Prints as `<nil>`.
    #[default]
    Nil,
    /// No value at all (a missing map key). Prints as `<no value>`.
    Missing,
    Bool(bool),
    Int(i64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
    /// A Go struct: named fields, `type_name` (e.g. `*v1.ObjectMeta`) for error messages.
    Struct {
        type_name: String,
        fields: BTreeMap<String, Value>,
    },
}

impl Value {
    pub fn string(s: impl Into<String>) -> Self {
        Value::String(s.into())
    }

    /// A struct value from `(field, value)` pairs.
    pub fn structure<K: Into<String>>(
        type_name: &str,
        fields: impl IntoIterator<Item = (K, Value)>,
    ) -> Self {
        Value::Struct {
            type_name: type_name.to_owned(),
            fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }

    /// A `map[string]string`, the shape of labels and annotations.
    pub fn string_map<K: Into<String>, V: Into<String>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.into(), Value::String(v.into())))
                .collect(),
        )
    }

    /// Go's notion of truth: false, 0, nil, and empty strings, lists and maps are false.
    pub fn is_true(&self) -> bool {
        match self {
            Value::Nil | Value::Missing => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::String(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::Struct { .. } => true,
        }
    }

    /// A short Go-like type name for error messages.
    pub fn type_name(&self) -> &str {
        match self {
            Value::Nil => "nil",
            Value::Missing => "invalid",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::String(_) => "string",
            Value::List(_) => "[]interface {}",
            Value::Map(_) => "map[string]interface {}",
            Value::Struct { type_name, .. } => type_name,
        }
    }
}

impl fmt::Display for Value {
    /// Formats as Go's `fmt.Print` does for these kinds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("<nil>"),
            Value::Missing => f.write_str("<no value>"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::String(s) => f.write_str(s),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Map(map) => {
                f.write_str("map[")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{k}:{v}")?;
                }
                f.write_str("]")
            }
            Value::Struct { fields, .. } => {
                f.write_str("{")?;
                for (i, v) in fields.values().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
