#![no_main]
//! Kubernetes service-account tokens (from any pod) and issuer JWKS documents (from the API
//! server): typed errors only, never a panic, and no token verifies (the issuer key is ours and
//! the fuzzer cannot sign with it).

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::SystemTime;
use wimsey_core::jose::jwk::PublicJwk;
use wimsey_core::jose::service_account::{IssuerKeys, discovery_issuer, verify_pod_token};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};

fn keys() -> &'static IssuerKeys {
    static K: OnceLock<IssuerKeys> = OnceLock::new();
    K.get_or_init(|| {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let mut jwk = PublicJwk::for_signing_key(&key).to_json_map();
        jwk.insert("kid".into(), "k1".into());
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        IssuerKeys::from_jwks("https://issuer", jwks.as_bytes()).expect("jwks")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = IssuerKeys::from_jwks("https://issuer", data);
    let _ = discovery_issuer(data);
    if let Ok(token) = std::str::from_utf8(data) {
        assert!(verify_pod_token(token, keys(), "wimsey", SystemTime::now()).is_err());
    }
});
