#![no_main]
//! The upstream CA Secret reader on arbitrary `tls.crt`, `tls.key` and `ca.crt` values: it
//! returns an error or a CA, and never panics.

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use wimsey_core::TrustDomain;
use wimsey_core::x509::upstream::{UpstreamFiles, load_upstream_ca};

fuzz_target!(|data: &[u8]| {
    // Three values split at the first two 0x00 bytes; a missing one stays absent.
    let mut parts = data.splitn(3, |b| *b == 0);
    let files = UpstreamFiles {
        tls_crt: parts.next(),
        tls_key: parts.next(),
        ca_crt: parts.next(),
    };
    let td = TrustDomain::new("example.org").expect("td");
    let _ = load_upstream_ca(files, &td, Duration::from_secs(3600), SystemTime::now());
});
