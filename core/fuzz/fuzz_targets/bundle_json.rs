#![no_main]
//! SPIFFE bundle documents, Workload API key sets, bundle maps and X.509 authority encodings.

use libfuzzer_sys::fuzz_target;
use wimsey_core::TrustDomain;
use wimsey_core::bundle::{
    TrustDomainBundle, parse_bundle_map, parse_x509_authorities_der, parse_x509_authorities_pem,
};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").expect("td");
    if let Ok(b) = TrustDomainBundle::from_spiffe_jwks(td.clone(), data) {
        // What we accept we can emit again, and it parses to the same bundle.
        let again = b.to_spiffe_jwks().expect("emit");
        let back =
            TrustDomainBundle::from_spiffe_jwks(td.clone(), again.as_bytes()).expect("re-parse");
        assert_eq!(back.x509_authorities, b.x509_authorities);
        assert_eq!(back.jwt_authorities.len(), b.jwt_authorities.len());
    }
    let _ = TrustDomainBundle::from_jwt_bundle_json(td.clone(), data);
    let _ = TrustDomainBundle::from_wit_bundle_json(td, data);
    let _ = parse_bundle_map(data);
    let _ = parse_x509_authorities_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_x509_authorities_pem(text);
    }
});
