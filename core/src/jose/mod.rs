//! JOSE building blocks (base64url, JWK, JWS compact) and the token profiles built on them:
//! JWT-SVIDs ([`jwt_svid`]) and WIMSE Workload Identity / Proof Tokens ([`wimse`]).
//!
//! Everything here parses hostile input: malformed tokens and keys come back as errors, never
//! panics. Key selection never uses key material carried in a token header (`jwk`, `jku`, `x5c`,
//! `x5u`); keys always come from a trust bundle or, for a WPT, from an already-validated WIT.

mod json;
pub mod jwk;
pub mod jws;
pub mod jwt_svid;
pub mod service_account;
pub mod wimse;

#[cfg(test)]
mod robustness_tests;
#[cfg(test)]
mod test_support;

#[cfg(test)]
mod conformance_tests;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::keys::KeyError;

pub(crate) use json::{StrictJsonError, parse_strict_object};
pub use jwk::{EcCurve, PublicJwk, PublicKey, private_jwk_json, signing_key_from_private_jwk};
pub use jws::{CompactJws, JwsAlgorithm, sign_compact};

/// The longest token any parser here accepts, in bytes. Real SVIDs are well under 4 KiB; the cap
/// bounds the work an attacker can make a validator do before any signature check.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why a JOSE object (base64url text, JWK or JWS) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    #[error("token is {0} bytes long; the limit is 65536")]
    TooLong(usize),
    #[error("JWS JSON serialization is not allowed; only JWS compact serialization is supported")]
    JsonSerialization,
    #[error("token has {0} parts; JWS compact serialization has exactly 3")]
    PartCount(usize),
    #[error("{0} is not valid unpadded base64url")]
    Base64(&'static str),
    #[error("{part} is not a valid JSON object ({reason})")]
    Json { part: &'static str, reason: String },
    #[error("{part} has duplicate member {member:?}")]
    DuplicateMember { part: &'static str, member: String },
    #[error("token header missing alg")]
    MissingAlg,
    #[error("token alg \"none\" is not allowed: tokens must be signed")]
    AlgNone,
    #[error("token alg {0} is symmetric (HMAC); only asymmetric signatures are accepted")]
    SymmetricAlg(String),
    #[error("unsupported token signature algorithm {0:?}")]
    UnsupportedAlg(String),
    #[error("header member {0} has the wrong type")]
    HeaderType(&'static str),
    #[error("crit header must be a non-empty array of strings")]
    MalformedCrit,
    #[error("crit header lists {0:?}, which this validator does not understand")]
    UnsupportedCrit(String),
    #[error("JWK is missing required member {0}")]
    MissingMember(&'static str),
    #[error("JWK member {0} is invalid")]
    InvalidMember(&'static str),
    #[error("unsupported JWK key type {0:?}")]
    UnsupportedKeyType(String),
    #[error("unsupported JWK curve {0:?}")]
    UnsupportedCurve(String),
    #[error("public JWK must not contain private key member {0}")]
    PrivateMember(&'static str),
    #[error("JWK public key is not a valid point on curve {0}")]
    InvalidPoint(&'static str),
    #[error("key of type {key} cannot verify alg {alg}")]
    KeyAlgMismatch {
        key: &'static str,
        alg: &'static str,
    },
    #[error("JWK alg {jwk_alg:?} does not match token alg {alg}")]
    JwkAlgMismatch { jwk_alg: String, alg: &'static str },
    #[error("signature verification failed")]
    BadSignature,
    #[error("public key is not a supported SubjectPublicKeyInfo")]
    UnsupportedSpki,
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl JoseError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            JoseError::TooLong(_) => "too_long",
            JoseError::JsonSerialization => "json_serialization",
            JoseError::PartCount(_) => "part_count",
            JoseError::Base64(_) => "base64",
            JoseError::Json { .. } => "json",
            JoseError::DuplicateMember { .. } => "duplicate_member",
            JoseError::MissingAlg => "missing_alg",
            JoseError::AlgNone => "alg_none",
            JoseError::SymmetricAlg(_) => "symmetric_alg",
            JoseError::UnsupportedAlg(_) => "unsupported_alg",
            JoseError::HeaderType(_) => "header_type",
            JoseError::MalformedCrit => "malformed_crit",
            JoseError::UnsupportedCrit(_) => "unsupported_crit",
            JoseError::MissingMember(_) => "jwk_missing_member",
            JoseError::InvalidMember(_) => "jwk_invalid_member",
            JoseError::UnsupportedKeyType(_) => "unsupported_key_type",
            JoseError::UnsupportedCurve(_) => "unsupported_curve",
            JoseError::PrivateMember(_) => "private_member",
            JoseError::InvalidPoint(_) => "invalid_point",
            JoseError::KeyAlgMismatch { .. } => "key_alg_mismatch",
            JoseError::JwkAlgMismatch { .. } => "jwk_alg_mismatch",
            JoseError::BadSignature => "bad_signature",
            JoseError::UnsupportedSpki => "unsupported_spki",
            JoseError::Key(e) => e.label(),
        }
    }
}

/// base64url without padding (RFC 7515 §2).
pub fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url decoding: URL alphabet only, no padding, no whitespace, and canonical
/// trailing bits, so each byte string has exactly one accepted encoding.
pub fn b64url_decode(text: &str, what: &'static str) -> Result<Vec<u8>, JoseError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| JoseError::Base64(what))
}

/// base64url(SHA-256(value)): the `wth`/`ath`/`tth`/`oth` hash and the RFC 7638 thumbprint form.
pub fn sha256_b64url(value: &[u8]) -> String {
    b64url_encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value).as_ref())
}

/// The `kid` we publish for one of our keys: its RFC 7638 thumbprint, stable and unique per key.
pub fn key_id(key: &crate::keys::SigningKey) -> String {
    PublicKey::from_signing_key(key).thumbprint()
}

/// Seconds since the Unix epoch, the JWT NumericDate. Times before 1970 clamp to 0.
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Shortens attacker-supplied text before it goes into an error message.
fn clip(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
        assert_eq!(b64url_decode("-_8", "x").expect("decodes"), b"\xfb\xff");
        // Padding, the standard alphabet, whitespace and non-canonical trailing bits are refused.
        for bad in ["-_8=", "+/8", "-_ 8", "-_9", "a", "AQ==", "é"] {
            assert_eq!(
                b64url_decode(bad, "x"),
                Err(JoseError::Base64("x")),
                "{bad:?}"
            );
        }
        assert_eq!(
            b64url_decode("", "x").expect("empty decodes"),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn access_token_hash_matches_the_wpt_draft_vector() {
        assert_eq!(
            sha256_b64url(b"16_mAd0GiwaZokU26_0902100"),
            "CL4wjfpRmNf-bdYIbYLnV9d5rMARGwKYE10wUwzC0jI"
        );
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let long = "é".repeat(100);
        let clipped = clip(&long);
        assert!(clipped.len() <= 67);
        assert!(clipped.ends_with("..."));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn unix_seconds_clamps_before_epoch() {
        assert_eq!(
            unix_seconds(UNIX_EPOCH - std::time::Duration::from_secs(5)),
            0
        );
        assert_eq!(
            unix_seconds(UNIX_EPOCH + std::time::Duration::from_secs(5)),
            5
        );
    }
}
