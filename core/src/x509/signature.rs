//! Public keys from SubjectPublicKeyInfo and signature checks over them, all through aws-lc-rs.
//!
//! Supported: ECDSA P-256/P-384 keys with ecdsa-with-SHA256/384/512, and RSA (2048-8192 bits)
//! with PKCS#1 v1.5 or PSS (SHA-256/384/512, MGF1 with the same hash, salt = hash length, the
//! only PSS parameters Go and SPIRE produce or accept). Anything else is an explicit error.

use aws_lc_rs::signature::{
    self as sig, ParsedPublicKey, UnparsedPublicKey, VerificationAlgorithm,
};

use super::X509Error;
use super::asn1::{self, TAG_BIT_STRING, TAG_INTEGER, TAG_NULL, TAG_OID, TAG_SEQUENCE, oid};
use crate::keys::KeyAlgorithm;

/// The kinds of subject public key we can verify with or certify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    EcP256,
    EcP384,
    Rsa,
}

/// A SubjectPublicKeyInfo split into what the rest of the module needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublicKeyRef<'a> {
    pub(crate) kind: KeyKind,
    /// The whole SubjectPublicKeyInfo element.
    pub(crate) spki_der: &'a [u8],
    /// The subjectPublicKey bits: a SEC1 point for EC, an RSAPublicKey for RSA.
    pub(crate) key_bits: &'a [u8],
}

impl<'a> PublicKeyRef<'a> {
    /// The encoding aws-lc parses first: SubjectPublicKeyInfo for EC, RSAPublicKey for RSA.
    /// Handing it the other form costs a failed parse (several microseconds) on every use.
    fn crypto_encoding(&self) -> &'a [u8] {
        match self.kind {
            KeyKind::EcP256 | KeyKind::EcP384 => self.spki_der,
            KeyKind::Rsa => self.key_bits,
        }
    }

    /// True when this is the public half of a key of `algorithm` with the given SEC1 point.
    pub(crate) fn matches_ec_key(&self, algorithm: KeyAlgorithm, sec1_point: &[u8]) -> bool {
        let kind_matches = matches!(
            (self.kind, algorithm),
            (KeyKind::EcP256, KeyAlgorithm::EcdsaP256) | (KeyKind::EcP384, KeyAlgorithm::EcdsaP384)
        );
        kind_matches && self.key_bits == sec1_point
    }
}

/// Splits a DER SubjectPublicKeyInfo and identifies its key type (structure only).
pub(crate) fn parse_spki(spki_der: &[u8]) -> Result<PublicKeyRef<'_>, X509Error> {
    const WHAT: &str = "SubjectPublicKeyInfo";
    let (spki, trailing) = asn1::expect_tlv(spki_der, TAG_SEQUENCE, WHAT)?;
    if !trailing.is_empty() {
        return Err(X509Error::Malformed(WHAT));
    }
    let (algorithm, rest) = asn1::expect_tlv(spki.content, TAG_SEQUENCE, WHAT)?;
    let (bits, rest) = asn1::expect_tlv(rest, TAG_BIT_STRING, WHAT)?;
    if !rest.is_empty() {
        return Err(X509Error::Malformed(WHAT));
    }
    let key_bits = asn1::bit_string_bytes(bits.content).ok_or(X509Error::Malformed(WHAT))?;
    let (algorithm_oid, params) = asn1::expect_tlv(algorithm.content, TAG_OID, WHAT)?;
    let kind = match algorithm_oid.content {
        oid::EC_PUBLIC_KEY => {
            let (curve, rest) = asn1::expect_tlv(params, TAG_OID, WHAT)?;
            if !rest.is_empty() {
                return Err(X509Error::Malformed(WHAT));
            }
            match curve.content {
                oid::CURVE_P256 => KeyKind::EcP256,
                oid::CURVE_P384 => KeyKind::EcP384,
                _ => {
                    return Err(X509Error::UnsupportedAlgorithm(
                        "elliptic curve other than P-256/P-384",
                    ));
                }
            }
        }
        oid::RSA_ENCRYPTION => {
            if !(params.is_empty() || params == [TAG_NULL, 0]) {
                return Err(X509Error::Malformed(WHAT));
            }
            KeyKind::Rsa
        }
        _ => {
            return Err(X509Error::UnsupportedAlgorithm(
                "public key type other than EC or RSA",
            ));
        }
    };
    let expected_point_len = match kind {
        KeyKind::EcP256 => Some(65),
        KeyKind::EcP384 => Some(97),
        KeyKind::Rsa => None,
    };
    if let Some(len) = expected_point_len {
        // Only uncompressed points: what every X.509 stack emits and Go requires.
        if key_bits.len() != len || key_bits.first() != Some(&0x04) {
            return Err(X509Error::Malformed("EC public key point"));
        }
    }
    Ok(PublicKeyRef {
        kind,
        spki_der: spki.raw,
        key_bits,
    })
}

/// Checks that a public key is well-formed (EC point on its curve, RSA modulus 2048-8192 bits),
/// so the authority never certifies garbage.
pub(crate) fn validate_public_key(key: &PublicKeyRef<'_>) -> Result<(), X509Error> {
    let algorithm: &'static dyn VerificationAlgorithm = match key.kind {
        KeyKind::EcP256 => &sig::ECDSA_P256_SHA256_ASN1,
        KeyKind::EcP384 => &sig::ECDSA_P384_SHA384_ASN1,
        KeyKind::Rsa => &sig::RSA_PKCS1_2048_8192_SHA256,
    };
    ParsedPublicKey::new(algorithm, key.crypto_encoding())
        .map(|_| ())
        .map_err(|_| X509Error::Malformed("public key (rejected by the crypto library)"))
}

/// The signature algorithm named by an AlgorithmIdentifier element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignatureAlgorithm {
    Ecdsa(Hash),
    RsaPkcs1(Hash),
    RsaPss(Hash),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    const ALL: [Hash; 3] = [Hash::Sha256, Hash::Sha384, Hash::Sha512];

    fn oid(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => oid::SHA256,
            Hash::Sha384 => oid::SHA384,
            Hash::Sha512 => oid::SHA512,
        }
    }

    fn output_len(self) -> u8 {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
}

/// `RSASSA-PSS-params` for `hash` with MGF1(hash) and salt = hash length, with or without NULL
/// parameters inside the hash AlgorithmIdentifiers (both forms occur in the wild).
fn pss_params(hash: Hash, null_params: bool) -> Vec<u8> {
    let hash_alg = if null_params {
        asn1::algorithm_with_null(hash.oid())
    } else {
        asn1::algorithm_without_params(hash.oid())
    };
    let mgf = asn1::sequence(&[&asn1::tlv(TAG_OID, oid::MGF1), &hash_alg]);
    let salt = asn1::tlv(TAG_INTEGER, &[hash.output_len()]);
    asn1::sequence(&[
        &asn1::constructed(0xa0, &[&hash_alg]),
        &asn1::constructed(0xa1, &[&mgf]),
        &asn1::constructed(0xa2, &[&salt]),
    ])
}

fn parse_signature_algorithm(algorithm_der: &[u8]) -> Result<SignatureAlgorithm, X509Error> {
    const WHAT: &str = "signature AlgorithmIdentifier";
    let (algorithm, trailing) = asn1::expect_tlv(algorithm_der, TAG_SEQUENCE, WHAT)?;
    if !trailing.is_empty() {
        return Err(X509Error::Malformed(WHAT));
    }
    let (algorithm_oid, params) = asn1::expect_tlv(algorithm.content, TAG_OID, WHAT)?;
    let no_params_or_null = params.is_empty() || params == [TAG_NULL, 0];
    let parsed = match algorithm_oid.content {
        // RFC 5758: ECDSA parameters MUST be absent.
        oid::ECDSA_SHA256 if params.is_empty() => SignatureAlgorithm::Ecdsa(Hash::Sha256),
        oid::ECDSA_SHA384 if params.is_empty() => SignatureAlgorithm::Ecdsa(Hash::Sha384),
        oid::ECDSA_SHA512 if params.is_empty() => SignatureAlgorithm::Ecdsa(Hash::Sha512),
        oid::RSA_SHA256 if no_params_or_null => SignatureAlgorithm::RsaPkcs1(Hash::Sha256),
        oid::RSA_SHA384 if no_params_or_null => SignatureAlgorithm::RsaPkcs1(Hash::Sha384),
        oid::RSA_SHA512 if no_params_or_null => SignatureAlgorithm::RsaPkcs1(Hash::Sha512),
        oid::RSA_PSS => Hash::ALL
            .into_iter()
            .find(|hash| params == pss_params(*hash, true) || params == pss_params(*hash, false))
            .map(SignatureAlgorithm::RsaPss)
            .ok_or(X509Error::UnsupportedAlgorithm("RSA-PSS parameters"))?,
        oid::ECDSA_SHA256 | oid::ECDSA_SHA384 | oid::ECDSA_SHA512 => {
            return Err(X509Error::Malformed(WHAT));
        }
        oid::RSA_SHA256 | oid::RSA_SHA384 | oid::RSA_SHA512 => {
            return Err(X509Error::Malformed(WHAT));
        }
        _ => return Err(X509Error::UnsupportedAlgorithm("signature algorithm")),
    };
    Ok(parsed)
}

fn verification_algorithm(
    key: KeyKind,
    algorithm: SignatureAlgorithm,
) -> Result<&'static dyn VerificationAlgorithm, X509Error> {
    use SignatureAlgorithm::{Ecdsa, RsaPkcs1, RsaPss};
    let chosen: &'static dyn VerificationAlgorithm = match (key, algorithm) {
        (KeyKind::EcP256, Ecdsa(Hash::Sha256)) => &sig::ECDSA_P256_SHA256_ASN1,
        (KeyKind::EcP256, Ecdsa(Hash::Sha384)) => &sig::ECDSA_P256_SHA384_ASN1,
        (KeyKind::EcP256, Ecdsa(Hash::Sha512)) => &sig::ECDSA_P256_SHA512_ASN1,
        (KeyKind::EcP384, Ecdsa(Hash::Sha256)) => &sig::ECDSA_P384_SHA256_ASN1,
        (KeyKind::EcP384, Ecdsa(Hash::Sha384)) => &sig::ECDSA_P384_SHA384_ASN1,
        (KeyKind::EcP384, Ecdsa(Hash::Sha512)) => &sig::ECDSA_P384_SHA512_ASN1,
        (KeyKind::Rsa, RsaPkcs1(Hash::Sha256)) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (KeyKind::Rsa, RsaPkcs1(Hash::Sha384)) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (KeyKind::Rsa, RsaPkcs1(Hash::Sha512)) => &sig::RSA_PKCS1_2048_8192_SHA512,
        (KeyKind::Rsa, RsaPss(Hash::Sha256)) => &sig::RSA_PSS_2048_8192_SHA256,
        (KeyKind::Rsa, RsaPss(Hash::Sha384)) => &sig::RSA_PSS_2048_8192_SHA384,
        (KeyKind::Rsa, RsaPss(Hash::Sha512)) => &sig::RSA_PSS_2048_8192_SHA512,
        _ => {
            return Err(X509Error::UnsupportedAlgorithm(
                "signature algorithm does not fit the key type",
            ));
        }
    };
    Ok(chosen)
}

/// Verifies `signature` over `message` with `signer`, using the algorithm named by
/// `algorithm_der`. Any mismatch or failure is an error; there is no "unknown, accept".
pub(crate) fn verify_signature(
    signer: &PublicKeyRef<'_>,
    algorithm_der: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), X509Error> {
    let algorithm = verification_algorithm(signer.kind, parse_signature_algorithm(algorithm_der)?)?;
    UnparsedPublicKey::new(algorithm, signer.crypto_encoding())
        .verify(message, signature)
        .map_err(|_| X509Error::BadSignature)
}

/// The AlgorithmIdentifier a key of `algorithm` signs certificates and CSRs with.
pub(crate) fn ecdsa_signature_algorithm_der(algorithm: KeyAlgorithm) -> Vec<u8> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => asn1::algorithm_without_params(oid::ECDSA_SHA256),
        KeyAlgorithm::EcdsaP384 => asn1::algorithm_without_params(oid::ECDSA_SHA384),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    #[test]
    fn own_keys_parse_and_verify_their_signatures() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SigningKey::generate(algorithm).expect("key");
            let spki = key.public_key_spki_der();
            let parsed = parse_spki(&spki).expect("spki");
            assert!(parsed.matches_ec_key(algorithm, key.public_key_sec1()));
            validate_public_key(&parsed).expect("valid");
            let alg = ecdsa_signature_algorithm_der(algorithm);
            let signature = key.sign_asn1(b"message").expect("sign");
            verify_signature(&parsed, &alg, b"message", &signature).expect("verifies");
            assert_eq!(
                verify_signature(&parsed, &alg, b"other", &signature),
                Err(X509Error::BadSignature)
            );
        }
    }

    #[test]
    fn pss_parameters_match_the_canonical_sha256_encoding() {
        // What openssl and Go emit for RSASSA-PSS with SHA-256 (RFC 4055 §3.1).
        let expected = [
            0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
            0x04, 0x02, 0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48,
            0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
            0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
        ];
        assert_eq!(pss_params(Hash::Sha256, true), expected);
    }

    #[test]
    fn off_curve_point_is_rejected() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let mut point = key.public_key_sec1().to_vec();
        if let Some(last) = point.last_mut() {
            *last ^= 1;
        }
        let spki = crate::keys::spki_der_for_ec_point(KeyAlgorithm::EcdsaP256, &point);
        let parsed = parse_spki(&spki).expect("structure is fine");
        assert!(validate_public_key(&parsed).is_err());
    }
}
