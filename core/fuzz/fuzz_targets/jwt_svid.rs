#![no_main]
//! JWT-SVID validation on arbitrary tokens: typed errors only, never a panic, never success
//! (the bundle's key is ours and the fuzzer cannot sign with it).

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::SystemTime;
use wimsey_core::TrustDomain;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::jwk::PublicJwk;
use wimsey_core::jose::jwt_svid::{JwtSvidValidation, validate_jwt_svid};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};

fn bundle() -> &'static TrustDomainBundle {
    static B: OnceLock<TrustDomainBundle> = OnceLock::new();
    B.get_or_init(|| {
        let jwk = PublicJwk::for_signing_key(
            &SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key"),
        );
        let mut b = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        b.jwt_authorities.insert("k1".into(), jwk);
        b
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for require_kid in [true, false] {
        let options = JwtSvidValidation {
            require_kid,
            ..JwtSvidValidation::default()
        };
        assert!(validate_jwt_svid(s, "aud", bundle(), SystemTime::now(), &options).is_err());
    }
});
