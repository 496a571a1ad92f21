//! HPACK (RFC 7541) for the front: a decoder with explicit bounds and a stateless encoder.
//!
//! Our own decoder rather than `fluke_hpack`'s: that one takes no limit on the dynamic table or
//! on what a block decodes to (one ~65 KB block of references to a 4 KB entry decoded to
//! hundreds of MB) and panics on some truncated input. Every count and length here is checked
//! before it is used, so any byte sequence gives a header list within [`HeaderLimits`] or an
//! error. The encoder never indexes, so the server behind us keeps an empty dynamic table.

use std::collections::VecDeque;

use thiserror::Error;

use super::huffman::{self, HuffmanError};

/// The dynamic table size the server behind us allows: h2 leaves SETTINGS_HEADER_TABLE_SIZE at
/// the protocol's default, so a client's encoder may use at most this much (RFC 7541 4.2).
pub const MAX_TABLE_SIZE: usize = 4096;

/// Bytes counted per header on top of its name and value (RFC 7541 4.1; RFC 9113 6.5.2 uses the
/// same count for SETTINGS_MAX_HEADER_LIST_SIZE).
const ENTRY_OVERHEAD: usize = 32;

/// An integer's continuation bytes beyond which it cannot fit the sizes we accept (4 bytes
/// carry 28 bits).
const MAX_INTEGER_BYTES: usize = 4;

/// What one header block may decode to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Sum over the headers of name + value + 32 bytes, counted as h2 counts it.
    pub max_list_size: usize,
    /// Number of header fields, pseudo-headers included.
    pub max_headers: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("header block truncated")]
    Truncated,
    #[error("HPACK integer too large")]
    IntegerTooLarge,
    #[error("header index {0} is not in the static or dynamic table")]
    BadIndex(usize),
    #[error("dynamic table size update to {requested} above the {MAX_TABLE_SIZE} allowed")]
    TableSizeTooLarge { requested: usize },
    #[error("dynamic table size update after a header field")]
    TableSizeUpdateLate,
    #[error("header list larger than {0} bytes")]
    ListTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error(transparent)]
    Huffman(#[from] HuffmanError),
}

pub type Header = (Vec<u8>, Vec<u8>);

/// The decoding side of one connection's compression context.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first, as HPACK indexes it.
    table: VecDeque<Header>,
    table_size: usize,
    max_table_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            table: VecDeque::new(),
            table_size: 0,
            max_table_size: MAX_TABLE_SIZE,
        }
    }
}

impl Decoder {
    /// Bytes the dynamic table holds, counted as HPACK counts them (32 per entry besides its
    /// name and value).
    pub fn table_size(&self) -> usize {
        self.table_size
    }

    /// The headers of one whole header block. After an error the context is unusable (HPACK
    /// errors are connection errors).
    pub fn decode(
        &mut self,
        mut block: &[u8],
        limits: HeaderLimits,
    ) -> Result<Vec<Header>, HpackError> {
        let mut headers = Vec::new();
        let mut list_size = 0usize;
        while let Some(&first) = block.first() {
            // What this field may still add to the list (its 32 bytes of overhead included).
            let budget = limits.max_list_size.saturating_sub(list_size);
            let header = if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (name, value) = self.get(index)?;
                check_size(name.len() + value.len(), budget, limits)?;
                (name.to_vec(), value.to_vec())
            } else if first & 0xe0 == 0x20 {
                if !headers.is_empty() {
                    return Err(HpackError::TableSizeUpdateLate);
                }
                let requested = integer(&mut block, 5)?;
                if requested > MAX_TABLE_SIZE {
                    return Err(HpackError::TableSizeTooLarge { requested });
                }
                self.max_table_size = requested;
                self.evict_to(requested);
                continue;
            } else {
                // 01: with incremental indexing; 0001: never indexed; 0000: without indexing.
                let indexing = first & 0xc0 == 0x40;
                let index = integer(&mut block, if indexing { 6 } else { 4 })?;
                let header = self.literal(&mut block, index, budget, limits)?;
                if indexing {
                    self.insert(header.clone());
                }
                header
            };
            list_size += header.0.len() + header.1.len() + ENTRY_OVERHEAD;
            headers.push(header);
            if headers.len() > limits.max_headers {
                return Err(HpackError::TooManyHeaders(limits.max_headers));
            }
        }
        Ok(headers)
    }

    /// A literal field's name (from `index`, or a string when 0) and value.
    fn literal(
        &self,
        block: &mut &[u8],
        index: usize,
        budget: usize,
        limits: HeaderLimits,
    ) -> Result<Header, HpackError> {
        let mut name = Vec::new();
        if index == 0 {
            string(block, budget, limits, &mut name)?;
        } else {
            let (indexed, _) = self.get(index)?;
            check_size(indexed.len(), budget, limits)?;
            name.extend_from_slice(indexed);
        }
        let mut value = Vec::new();
        string(block, budget.saturating_sub(name.len()), limits, &mut value)?;
        Ok((name, value))
    }

    /// The entry at a 1-based HPACK index: the static table, then the dynamic one.
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        let found = match index.checked_sub(1) {
            Some(at) if at < STATIC_TABLE.len() => Some(STATIC_TABLE[at]),
            Some(at) => self
                .table
                .get(at - STATIC_TABLE.len())
                .map(|(name, value)| (name.as_slice(), value.as_slice())),
            None => None,
        };
        found.ok_or(HpackError::BadIndex(index))
    }

    fn insert(&mut self, header: Header) {
        let size = header.0.len() + header.1.len() + ENTRY_OVERHEAD;
        // An entry larger than the table empties it and is not added (RFC 7541 4.4).
        self.evict_to(self.max_table_size.saturating_sub(size));
        if size <= self.max_table_size {
            self.table_size += size;
            self.table.push_front(header);
        }
    }

    fn evict_to(&mut self, size: usize) {
        while self.table_size > size {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.table_size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }
}

/// Refuses a field whose `len` bytes of name and value would not fit the list's `budget`.
fn check_size(len: usize, budget: usize, limits: HeaderLimits) -> Result<(), HpackError> {
    if len.saturating_add(ENTRY_OVERHEAD) > budget {
        return Err(HpackError::ListTooLarge(limits.max_list_size));
    }
    Ok(())
}

/// Reads an integer with an `prefix`-bit prefix (RFC 7541 5.1) off the front of `block`.
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let max_prefix = (1usize << prefix) - 1;
    let mut value = usize::from(first) & max_prefix;
    if value == max_prefix {
        let mut shift = 0;
        loop {
            let (&byte, tail) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = tail;
            if shift == 7 * MAX_INTEGER_BYTES {
                return Err(HpackError::IntegerTooLarge);
            }
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value)
}

/// Reads a string literal (RFC 7541 5.2) off the front of `block` into `out`, refusing one whose
/// decoding would not fit the list's `budget`.
fn string(
    block: &mut &[u8],
    budget: usize,
    limits: HeaderLimits,
    out: &mut Vec<u8>,
) -> Result<(), HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Truncated);
    }
    let (encoded, rest) = block.split_at(len);
    *block = rest;
    // `budget` covers this string and the field's overhead.
    let room = budget.saturating_sub(ENTRY_OVERHEAD);
    if huffman {
        huffman::decode(encoded, room, out).map_err(|error| match error {
            HuffmanError::TooLong(_) => HpackError::ListTooLarge(limits.max_list_size),
            other => HpackError::Huffman(other),
        })
    } else {
        check_size(len, budget, limits)?;
        out.extend_from_slice(encoded);
        Ok(())
    }
}

/// Appends `headers` as a header block that does not touch the decoder's dynamic table: a static
/// table index where one matches, literals without indexing and without Huffman otherwise.
pub fn encode(headers: &[Header], out: &mut Vec<u8>) {
    for (name, value) in headers {
        let name = name.as_slice();
        let value = value.as_slice();
        if let Some(at) = STATIC_TABLE
            .iter()
            .position(|&entry| entry == (name, value))
        {
            put_integer(at + 1, 7, 0x80, out);
            continue;
        }
        let name_index = STATIC_TABLE
            .iter()
            .position(|&(static_name, _)| static_name == name)
            .map_or(0, |at| at + 1);
        put_integer(name_index, 4, 0x00, out);
        if name_index == 0 {
            put_string(name, out);
        }
        put_string(value, out);
    }
}

/// Appends `value` as an integer with a `prefix`-bit prefix after `flags` (RFC 7541 5.1).
pub(super) fn put_integer(value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let max_prefix = (1usize << prefix) - 1;
    if value < max_prefix {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn put_string(bytes: &[u8], out: &mut Vec<u8>) {
    put_integer(bytes.len(), 7, 0x00, out);
    out.extend_from_slice(bytes);
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeaderLimits = HeaderLimits {
        max_list_size: 16 * 1024,
        max_headers: 128,
    };

    fn pairs(headers: &[Header]) -> Vec<(&str, &str)> {
        headers
            .iter()
            .map(|(n, v)| {
                (
                    std::str::from_utf8(n).expect("utf-8"),
                    std::str::from_utf8(v).expect("utf-8"),
                )
            })
            .collect()
    }

    #[test]
    fn decodes_the_rfc_examples_with_their_dynamic_table() {
        // RFC 7541 C.4.1 and C.4.2 (Huffman), one connection.
        let mut decoder = Decoder::default();
        let first = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let headers = decoder.decode(&first, LIMITS).expect("C.4.1");
        assert_eq!(
            pairs(&headers),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]
        );
        assert_eq!(decoder.table_size, 57);
        let second = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let headers = decoder.decode(&second, LIMITS).expect("C.4.2");
        assert_eq!(headers[3].1, b"www.example.com");
        assert_eq!(pairs(&headers[4..]), [("cache-control", "no-cache")]);
        assert_eq!(decoder.table_size, 110);
        // Index 64 does not exist yet (two dynamic entries: 62 and 63).
        assert_eq!(
            decoder.decode(&[0xc0], LIMITS),
            Err(HpackError::BadIndex(64))
        );
        assert_eq!(
            decoder.decode(&[0x80], LIMITS),
            Err(HpackError::BadIndex(0))
        );
    }

    #[test]
    fn the_table_evicts_to_its_size_and_a_smaller_update_shrinks_it() {
        let mut decoder = Decoder::default();
        // Three 2,000-byte entries: the table holds the newest two (4,064 of 4,096 bytes).
        let literal = |name: u8, value_len: usize| {
            let mut block = vec![0x40, 0x01, name];
            put_integer(value_len, 7, 0x00, &mut block);
            block.extend(std::iter::repeat_n(b'v', value_len));
            block
        };
        for name in [b'a', b'b', b'c'] {
            decoder
                .decode(&literal(name, 2000 - 32 - 1), LIMITS)
                .expect("literal");
        }
        assert_eq!(decoder.table.len(), 2);
        assert_eq!(decoder.table[0].0, b"c");
        assert_eq!(decoder.table_size, 4000);
        // An update to 2,500 keeps only the newest; then a field larger than the table empties it.
        let mut update = Vec::new();
        put_integer(2500, 5, 0x20, &mut update);
        decoder.decode(&update, LIMITS).expect("update to 2500");
        assert_eq!(decoder.table.len(), 1);
        decoder
            .decode(&literal(b'd', 2600), LIMITS)
            .expect("literal");
        assert!(decoder.table.is_empty());
        assert_eq!(decoder.table_size, 0);
    }

    #[test]
    fn integers_past_four_continuation_bytes_are_refused() {
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01], LIMITS),
            Err(HpackError::IntegerTooLarge)
        );
        assert_eq!(
            decoder.decode(&[0xff, 0xff], LIMITS),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            decoder.decode(&[0x00, 0x05, b'a'], LIMITS),
            Err(HpackError::Truncated)
        );
    }

    #[test]
    fn the_encoding_round_trips_without_touching_the_dynamic_table() {
        let headers: Vec<Header> = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("x-custom", &"y".repeat(300)),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let mut block = Vec::new();
        encode(&headers, &mut block);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&block, LIMITS).expect("decodes"), headers);
        assert!(decoder.table.is_empty());
        assert_eq!(block[..2], [0x83, 0x86], "static table indexes");
    }
}
