#![no_main]
//! The template parser and evaluator: any input either fails with a positioned error or renders,
//! and never panics, overflows the stack or renders unbounded output.

use libfuzzer_sys::fuzz_target;
use wimsey_core::template::{Template, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = Template::parse("fuzz", src) else {
        return;
    };
    let meta = Value::structure(
        "*v1.ObjectMeta",
        [
            ("Name", Value::from("pod")),
            ("Labels", Value::string_map([("app", "x")])),
            ("UID", Value::from("uid")),
        ],
    );
    let data = Value::structure(
        "templateData",
        [
            ("TrustDomain", Value::from("example.org")),
            ("PodMeta", meta),
            (
                "List",
                Value::List(vec![Value::Int(1), Value::from("a"), Value::Nil]),
            ),
            ("NodeMeta", Value::Nil),
        ],
    );
    if let Ok(out) = t.render(&data) {
        assert!(out.len() <= 1 << 20);
    }
});
