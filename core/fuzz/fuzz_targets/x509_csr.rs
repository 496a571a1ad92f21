#![no_main]
//! PKCS#10 CSR parsing and proof-of-possession check on arbitrary DER.

use libfuzzer_sys::fuzz_target;
use wimsey_core::x509::verify_csr;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = verify_csr(data) {
        assert!(!csr.public_key_der().is_empty());
    }
});
