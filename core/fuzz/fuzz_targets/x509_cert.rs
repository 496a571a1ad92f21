#![no_main]
//! X.509-SVID chain verification, SVID+key parsing and PEM decoding on arbitrary input.

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use wimsey_core::TrustDomain;
use wimsey_core::keys::KeyAlgorithm;
use wimsey_core::x509::{Authority, CaParams, CertDer, parse_svid_with_key, pem, verify_svid_der};

fn roots() -> &'static (TrustDomain, Vec<CertDer>) {
    static R: OnceLock<(TrustDomain, Vec<CertDer>)> = OnceLock::new();
    R.get_or_init(|| {
        let td = TrustDomain::new("example.org").expect("td");
        let ca = Authority::generate_root(
            &td,
            KeyAlgorithm::EcdsaP256,
            &CaParams::new("fuzz", Duration::from_secs(3600)),
            SystemTime::now(),
        )
        .expect("ca");
        (td, ca.trust_bundle_roots().to_vec())
    })
}

fuzz_target!(|data: &[u8]| {
    let (td, certs) = roots();
    let lookup = |t: &TrustDomain| (t == td).then_some(certs.as_slice());
    assert!(
        verify_svid_der(data, lookup, SystemTime::now()).is_err(),
        "fuzzed chains cannot reach our root"
    );
    let split = data.len() / 2;
    let _ = parse_svid_with_key(&data[..split], &data[split..]);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pem::decode_certificates(text);
        let _ = pem::decode_private_key(text);
    }
});
