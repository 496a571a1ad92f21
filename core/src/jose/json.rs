//! JSON parsing that refuses duplicate object members at any depth.
//!
//! serde_json keeps the last of two equal keys, so `{"alg":"ES256","alg":"none"}` would mean
//! different things to different parsers. RFC 7515 §4 lets a JWS parser reject such input, and
//! the SPIFFE bundle map spec requires it; we reject it everywhere. serde_json's recursion limit
//! (128) still applies, so deep nesting is an error, not a stack overflow.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why strict parsing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrictJsonError {
    /// A member name appeared twice in one object.
    Duplicate(String),
    /// Not JSON, or not an object at the top level. Carries a description without input text.
    Syntax(String),
}

const DUPLICATE_PREFIX: &str = "\u{0}duplicate member:";

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let StrictValue(value) = access.next_value()?;
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!("{DUPLICATE_PREFIX}{key}")));
            }
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Parses `bytes` as a JSON object, rejecting duplicate member names at any depth.
pub(crate) fn parse_strict_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictJsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = match StrictValue::deserialize(&mut deserializer) {
        Ok(StrictValue(v)) => v,
        Err(e) => return Err(classify(&e)),
    };
    if let Err(e) = deserializer.end() {
        return Err(classify(&e));
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(StrictJsonError::Syntax("not a JSON object".to_owned())),
    }
}

fn classify(error: &serde_json::Error) -> StrictJsonError {
    let message = error.to_string();
    if let Some(rest) = message.strip_prefix(DUPLICATE_PREFIX) {
        // serde_json appends " at line L column C"; keep only the member name.
        let name = rest.rsplit_once(" at line ").map_or(rest, |(name, _)| name);
        return StrictJsonError::Duplicate(super::clip(name));
    }
    // The category and position describe the fault without echoing input text.
    let category = match error.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    StrictJsonError::Syntax(format!(
        "{category} at line {} column {}",
        error.line(),
        error.column()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects_and_keeps_every_value_type() {
        let map = parse_strict_object(br#"{"a":1,"b":[true,null,-2,1.5,"s"],"c":{"d":{}}}"#)
            .expect("valid object");
        assert_eq!(map.len(), 3);
        assert_eq!(map["b"], serde_json::json!([true, null, -2, 1.5, "s"]));
    }

    #[test]
    fn rejects_duplicates_at_any_depth() {
        assert_eq!(
            parse_strict_object(br#"{"alg":"ES256","alg":"none"}"#),
            Err(StrictJsonError::Duplicate("alg".to_owned()))
        );
        assert_eq!(
            parse_strict_object(br#"{"a":[{"x":1,"x":2}]}"#),
            Err(StrictJsonError::Duplicate("x".to_owned()))
        );
    }

    #[test]
    fn rejects_non_objects_trailing_data_and_deep_nesting() {
        for bad in [&b"[1]"[..], b"\"s\"", b"{} {}", b"{", b"", b"{\"a\":1,}"] {
            assert!(
                matches!(parse_strict_object(bad), Err(StrictJsonError::Syntax(_))),
                "{bad:?}"
            );
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse_strict_object(deep.as_bytes()),
            Err(StrictJsonError::Syntax(_))
        ));
    }
}
