#![no_main]
//! The front's HPACK decoder over any header blocks on one connection: never panics, every
//! decoded list is within the limits, the table within 4096 bytes, and the front's re-encoding
//! of a list decodes back to the same list.
//!
//! Input: one byte choosing the block size, then the blocks back to back.

use libfuzzer_sys::fuzz_target;
use wimsey_csi::socket::authority::hpack::{Decoder, HeaderLimits, encode};

const LIMITS: HeaderLimits = HeaderLimits {
    max_list_size: 16 * 1024,
    max_headers: 128,
};

fuzz_target!(|data: &[u8]| {
    let Some((&block_size, blocks)) = data.split_first() else {
        return;
    };
    let block_size = usize::from(block_size).max(1) * 16;
    let mut decoder = Decoder::default();
    for block in blocks.chunks(block_size) {
        let Ok(headers) = decoder.decode(block, LIMITS) else {
            return;
        };
        assert!(headers.len() <= LIMITS.max_headers);
        let size: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        assert!(size <= LIMITS.max_list_size, "list of {size} bytes");
        assert!(decoder.table_size() <= 4096);
        let mut encoded = Vec::new();
        encode(&headers, &mut encoded);
        let again = Decoder::default()
            .decode(&encoded, LIMITS)
            .expect("the re-encoding decodes");
        assert_eq!(again, headers);
    }
});
