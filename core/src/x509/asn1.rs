//! Just enough DER to assemble certificates fast and to walk untrusted input safely.
//!
//! Writing: small helpers that append tag-length-value triples, so the authority can keep
//! precomputed byte templates and splice in the few fields that change per certificate.
//! Reading: a bounds-checked TLV reader used where we need the exact bytes that were signed
//! (the TBS of a certificate, the info of a CSR). Every read is checked; nothing indexes blindly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::X509Error;

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_PRINTABLE_STRING: u8 = 0x13;
pub(crate) const TAG_UTC_TIME: u8 = 0x17;
pub(crate) const TAG_GENERALIZED_TIME: u8 = 0x18;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;

/// OID contents (without tag and length) that we write or compare against.
pub(crate) mod oid {
    pub(crate) const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub(crate) const CURVE_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub(crate) const CURVE_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    pub(crate) const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    pub(crate) const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    pub(crate) const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    pub(crate) const RSA_ENCRYPTION: &[u8] =
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    pub(crate) const RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    pub(crate) const RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    pub(crate) const RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    pub(crate) const RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    pub(crate) const MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
    pub(crate) const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    pub(crate) const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    pub(crate) const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
    pub(crate) const EXTENSION_REQUEST: &[u8] =
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];

    pub(crate) const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
    pub(crate) const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    pub(crate) const SERIAL_NUMBER: &[u8] = &[0x55, 0x04, 0x05];

    pub(crate) const SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
    pub(crate) const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    pub(crate) const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    pub(crate) const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    pub(crate) const NAME_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x1e];
    pub(crate) const AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
    pub(crate) const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];

    pub(crate) const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    pub(crate) const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
}

/// Appends a DER length. Lengths here are bounded by memory, so four bytes always suffice.
pub(crate) fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or(&[]);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

/// Bytes taken by a DER length field for `len`.
pub(crate) fn len_size(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize
    }
}

/// Bytes taken by a whole element whose content is `content_len` bytes.
pub(crate) fn tlv_size(content_len: usize) -> usize {
    1 + len_size(content_len) + content_len
}

/// Appends `tag || len` for content that the caller writes next.
pub(crate) fn push_header(out: &mut Vec<u8>, tag: u8, content_len: usize) {
    out.push(tag);
    push_len(out, content_len);
}

/// Appends `tag || len || content`.
pub(crate) fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    push_len(out, content.len());
    out.extend_from_slice(content);
}

/// `tag || len || content` as a new buffer.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    push_tlv(&mut out, tag, content);
    out
}

/// A constructed value (SEQUENCE, SET, context tag) from already-encoded parts.
pub(crate) fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    push_len(&mut out, len);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    constructed(TAG_SEQUENCE, parts)
}

/// A non-negative INTEGER from big-endian magnitude bytes, minimally encoded.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let trimmed = magnitude.get(skip..).unwrap_or(&[]);
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    match trimmed.first() {
        None => content.push(0),
        Some(first) if *first >= 0x80 => {
            content.push(0);
            content.extend_from_slice(trimmed);
        }
        Some(_) => content.extend_from_slice(trimmed),
    }
    tlv(TAG_INTEGER, &content)
}

/// `AlgorithmIdentifier` for an OID with absent parameters (the ECDSA signature form).
pub(crate) fn algorithm_without_params(oid_content: &[u8]) -> Vec<u8> {
    sequence(&[&tlv(TAG_OID, oid_content)])
}

/// `AlgorithmIdentifier` for an OID with NULL parameters (the RSA and hash form).
pub(crate) fn algorithm_with_null(oid_content: &[u8]) -> Vec<u8> {
    sequence(&[&tlv(TAG_OID, oid_content), &[TAG_NULL, 0x00]])
}

/// One `Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }`.
pub(crate) fn extension(oid_content: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let id = tlv(TAG_OID, oid_content);
    let wrapped = tlv(TAG_OCTET_STRING, value);
    if critical {
        sequence(&[&id, &[TAG_BOOLEAN, 0x01, 0xff], &wrapped])
    } else {
        sequence(&[&id, &wrapped])
    }
}

/// A `Name` made of single-valued RDNs, each `(attribute OID, string tag, value)`.
pub(crate) fn name(attributes: &[(&[u8], u8, &str)]) -> Vec<u8> {
    let rdns: Vec<Vec<u8>> = attributes
        .iter()
        .map(|(oid_content, string_tag, value)| {
            let atv = sequence(&[
                &tlv(TAG_OID, oid_content),
                &tlv(*string_tag, value.as_bytes()),
            ]);
            constructed(TAG_SET, &[&atv])
        })
        .collect();
    let parts: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
    sequence(&parts)
}

/// Whole seconds since the epoch; certificates carry no sub-second precision.
pub(crate) fn truncate_to_seconds(time: SystemTime) -> Result<SystemTime, X509Error> {
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| X509Error::TimeOutOfRange)?;
    Ok(UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs()))
}

/// RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, both in UTC with seconds.
pub(crate) fn push_time(out: &mut Vec<u8>, time: SystemTime) -> Result<(), X509Error> {
    let (buffer, len) = encode_time(time)?;
    out.extend_from_slice(buffer.get(..len).unwrap_or(&[]));
    Ok(())
}

/// The whole Time element (tag, length, digits) on the stack: 15 bytes for UTCTime, 17 for
/// GeneralizedTime. Issuing a leaf encodes two of these, so no formatting machinery.
pub(crate) fn encode_time(time: SystemTime) -> Result<([u8; 17], usize), X509Error> {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| X509Error::TimeOutOfRange)?
        .as_secs();
    let days = i64::try_from(secs / 86_400).map_err(|_| X509Error::TimeOutOfRange)?;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    if !(1970..=9999).contains(&year) {
        return Err(X509Error::TimeOutOfRange);
    }
    // All fields are now in range, so the narrowing below cannot lose information.
    let year = year as u32;
    let (hour, minute, second) = (
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    );
    let mut out = [0u8; 17];
    let generalized = year >= 2050;
    let (digits, count) = if generalized {
        (
            [year / 100, year % 100, month, day, hour, minute, second],
            7,
        )
    } else {
        ([year % 100, month, day, hour, minute, second, 0], 6)
    };
    let text_len = count * 2 + 1;
    out[0] = if generalized {
        TAG_GENERALIZED_TIME
    } else {
        TAG_UTC_TIME
    };
    out[1] = text_len as u8;
    for (slot, value) in out[2..].chunks_exact_mut(2).zip(digits.iter().take(count)) {
        slot[0] = b'0' + (value / 10 % 10) as u8;
        slot[1] = b'0' + (value % 10) as u8;
    }
    out[text_len + 1] = b'Z';
    Ok((out, text_len + 2))
}

/// `time` as RFC 3339 in UTC with whole seconds (for messages); times before 1970 read as 1970.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (year, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2));
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`). Input is bounded by `u64` seconds / 86400.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One DER element read from untrusted input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    /// The whole element: tag, length and content.
    pub(crate) raw: &'a [u8],
    pub(crate) content: &'a [u8],
}

/// Reads one element from the front of `input`, returning it and the rest.
/// Accepts only low tag numbers and minimal definite lengths (DER).
pub(crate) fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), X509Error> {
    let malformed = || X509Error::Malformed("DER element");
    let (&tag, after_tag) = input.split_first().ok_or_else(malformed)?;
    if tag & 0x1f == 0x1f {
        return Err(malformed());
    }
    let (&first_len, after_len_byte) = after_tag.split_first().ok_or_else(malformed)?;
    let (len, after_len) = if first_len < 0x80 {
        (usize::from(first_len), after_len_byte)
    } else {
        let count = usize::from(first_len & 0x7f);
        if count == 0 || count > 4 {
            return Err(malformed());
        }
        let len_bytes = after_len_byte.get(..count).ok_or_else(malformed)?;
        if len_bytes.first() == Some(&0) {
            return Err(malformed());
        }
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return Err(malformed());
        }
        (len, after_len_byte.get(count..).ok_or_else(malformed)?)
    };
    let content = after_len.get(..len).ok_or_else(malformed)?;
    let rest = after_len.get(len..).ok_or_else(malformed)?;
    let header_len = input.len() - after_len.len();
    let raw = input.get(..header_len + len).ok_or_else(malformed)?;
    Ok((Tlv { tag, raw, content }, rest))
}

/// Reads one element that must have `tag`.
pub(crate) fn expect_tlv<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(Tlv<'a>, &'a [u8]), X509Error> {
    let (element, rest) = read_tlv(input).map_err(|_| X509Error::Malformed(what))?;
    if element.tag != tag {
        return Err(X509Error::Malformed(what));
    }
    Ok((element, rest))
}

/// The three parts of any signed structure: `SEQUENCE { toBeSigned, AlgorithmIdentifier, BIT STRING }`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignedParts<'a> {
    /// The exact bytes that were signed (the whole TBS element).
    pub(crate) to_be_signed: Tlv<'a>,
    /// The whole AlgorithmIdentifier element.
    pub(crate) algorithm: &'a [u8],
    /// The signature bits (BIT STRING content without the unused-bits byte).
    pub(crate) signature: &'a [u8],
}

pub(crate) fn split_signed<'a>(
    input: &'a [u8],
    what: &'static str,
) -> Result<SignedParts<'a>, X509Error> {
    let (outer, trailing) = expect_tlv(input, TAG_SEQUENCE, what)?;
    if !trailing.is_empty() {
        return Err(X509Error::Malformed(what));
    }
    let (to_be_signed, rest) = expect_tlv(outer.content, TAG_SEQUENCE, what)?;
    let (algorithm, rest) = expect_tlv(rest, TAG_SEQUENCE, what)?;
    let (signature, rest) = expect_tlv(rest, TAG_BIT_STRING, what)?;
    if !rest.is_empty() {
        return Err(X509Error::Malformed(what));
    }
    let signature = bit_string_bytes(signature.content).ok_or(X509Error::Malformed(what))?;
    Ok(SignedParts {
        to_be_signed,
        algorithm: algorithm.raw,
        signature,
    })
}

/// The bytes of a BIT STRING whose length is a whole number of octets.
pub(crate) fn bit_string_bytes(content: &[u8]) -> Option<&[u8]> {
    match content.split_first() {
        Some((0, bytes)) => Some(bytes),
        _ => None,
    }
}

/// Splits concatenated DER certificates (the Workload API's chain and bundle format).
pub(crate) fn split_concatenated(mut input: &[u8]) -> Result<Vec<&[u8]>, X509Error> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (element, rest) = expect_tlv(input, TAG_SEQUENCE, "certificate in concatenated DER")?;
        out.push(element.raw);
        input = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time_text(secs: u64) -> String {
        let mut out = Vec::new();
        push_time(&mut out, UNIX_EPOCH + Duration::from_secs(secs)).expect("encodable");
        String::from_utf8(out.get(2..).expect("tlv").to_vec()).expect("ascii")
    }

    #[test]
    fn rfc3339_reads_like_the_calendar() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(leap_day), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn times_use_utc_time_until_2049_and_generalized_after() {
        assert_eq!(time_text(0), "700101000000Z");
        assert_eq!(time_text(951_782_400), "000229000000Z"); // 2000-02-29
        assert_eq!(time_text(2_524_607_999), "491231235959Z");
        assert_eq!(time_text(2_524_608_000), "20500101000000Z");
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0, 0, 1]), vec![2, 1, 1]);
        assert_eq!(unsigned_integer(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[]), vec![2, 1, 0]);
    }

    #[test]
    fn lengths_round_trip_through_the_reader() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let element = tlv(TAG_OCTET_STRING, &vec![7u8; len]);
            let (read, rest) = read_tlv(&element).expect("reads");
            assert_eq!(read.content.len(), len);
            assert_eq!(read.raw.len(), element.len());
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn reader_rejects_truncated_and_non_minimal_input() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x00],
            &[0x30, 0x81, 0x05, 0, 0, 0, 0, 0],
            &[0x30, 0x82, 0x00, 0x80],
            &[0x1f, 0x01, 0x00],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x80],
        ] {
            assert!(read_tlv(bad).is_err(), "{bad:?}");
        }
    }
}
