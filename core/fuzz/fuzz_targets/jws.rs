#![no_main]
//! JWS compact parsing and signature checking on arbitrary input.

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wimsey_core::jose::jwk::PublicJwk;
use wimsey_core::jose::jws::CompactJws;
use wimsey_core::keys::{KeyAlgorithm, SigningKey};

fn key() -> &'static PublicJwk {
    static KEY: OnceLock<PublicJwk> = OnceLock::new();
    KEY.get_or_init(|| {
        PublicJwk::for_signing_key(&SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(jws) = CompactJws::parse(s) {
        let _ = jws.kid();
        let _ = jws.typ();
        let _ = jws.header_str("crit");
        let _ = jws.claims().len();
        assert!(
            jws.verify(key()).is_err(),
            "a fuzzed token cannot carry our key's signature"
        );
    }
    let _ = PublicJwk::from_json(s);
});
