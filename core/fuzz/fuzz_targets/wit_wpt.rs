#![no_main]
//! WIT validation (both profiles) and WPT verification against a real, valid WIT.

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::jwk::PublicJwk;
use wimsey_core::jose::wimse::{
    ValidatedWit, WitProfile, WitSvidClaims, WitValidation, WptExpectations, mint_wit_svid,
    validate_wit, verify_wpt,
};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::{SpiffeId, TrustDomain};

struct Setup {
    bundle: TrustDomainBundle,
    wit: ValidatedWit,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let authority = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let workload = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        bundle
            .wit_authorities
            .insert("w1".into(), PublicJwk::for_signing_key(&authority));
        let id = SpiffeId::parse("spiffe://example.org/w").expect("id");
        let now = SystemTime::now();
        let workload_jwk = PublicJwk::for_signing_key(&workload);
        let token = mint_wit_svid(
            &authority,
            "w1",
            &WitSvidClaims {
                spiffe_id: &id,
                workload_key: &workload_jwk,
                issued_at: now,
                expires_at: now + Duration::from_secs(86400 * 365),
                jti: None,
            },
        )
        .expect("mint");
        let wit = validate_wit(&token, &bundle, now, &WitValidation::default()).expect("valid WIT");
        Setup { bundle, wit }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let s_ = setup();
    let now = SystemTime::now();
    for profile in [WitProfile::WitSvid, WitProfile::Wimse] {
        let options = WitValidation {
            profile,
            ..WitValidation::default()
        };
        assert!(validate_wit(s, &s_.bundle, now, &options).is_err());
    }
    let audiences = ["https://svc.example.org/path"];
    let mut expect = WptExpectations::new(&audiences);
    let others = [("txn-token", "abc")];
    expect.access_token = Some("at");
    expect.other_tokens = &others;
    assert!(verify_wpt(s, &s_.wit, &expect, now).is_err());
});
