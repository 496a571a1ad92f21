#![no_main]
//! SPIFFE ID, trust domain and WIMSE identifier parsers: never panic, and what parses re-parses
//! to the same value.

use libfuzzer_sys::fuzz_target;
use wimsey_core::wimse_id::WorkloadIdentifier;
use wimsey_core::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
        let td = id.trust_domain();
        assert_eq!(td.id_from_path(id.path()).as_ref(), Ok(&id));
    }
    let _ = TrustDomain::from_name_or_id(s);
    if let Ok(w) = WorkloadIdentifier::parse(s) {
        assert_eq!(w.as_str(), s);
        let _ = w.origin();
    }
});
