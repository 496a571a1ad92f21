//! Small helpers shared by the JOSE test modules.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::spiffe_id::SpiffeId;

/// The fixed "now" of the JOSE tests.
pub(crate) const NOW: u64 = 1_800_000_000;

pub(crate) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub(crate) fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => panic!("object expected"),
    }
}

pub(crate) fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("spiffe id")
}
