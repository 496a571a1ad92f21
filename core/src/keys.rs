//! Asymmetric signing keys shared by the X.509 authority and the JOSE token issuers.
//!
//! Keys are generated where they are used and only leave this type as PKCS#8 inside a
//! [`Zeroizing`] buffer, so a caller must ask for the secret explicitly.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use zeroize::Zeroizing;

/// Errors from key generation, loading and signing.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("private key is not a valid PKCS#8 {0} key")]
    InvalidPkcs8(KeyAlgorithm),
    #[error("signing failed")]
    Sign,
}

impl KeyError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            KeyError::Generate => "generate",
            KeyError::InvalidPkcs8(_) => "invalid_pkcs8",
            KeyError::Sign => "sign",
        }
    }
}

/// The key types the authority can hold. ECDSA P-256 is the default everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
}

impl KeyAlgorithm {
    /// The JOSE `alg` this key signs with.
    pub fn jws_alg(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ES256",
            KeyAlgorithm::EcdsaP384 => "ES384",
        }
    }

    /// The JOSE `crv` of the public key.
    pub fn jwk_curve(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "P-256",
            KeyAlgorithm::EcdsaP384 => "P-384",
        }
    }

    /// Byte length of one coordinate (and of r and s in a fixed-size signature).
    pub fn coordinate_len(self) -> usize {
        match self {
            KeyAlgorithm::EcdsaP256 => 32,
            KeyAlgorithm::EcdsaP384 => 48,
        }
    }

    fn fixed_signing(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        }
    }

    fn asn1_signing(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384",
        })
    }
}

/// A private signing key. It signs in both encodings: ASN.1 DER (X.509) and fixed r||s (JWS).
pub struct SigningKey {
    algorithm: KeyAlgorithm,
    pkcs8: Zeroizing<Vec<u8>>,
    fixed: EcdsaKeyPair,
    asn1: EcdsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key from the system's secure random source.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(algorithm.fixed_signing(), &rng)
            .map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(algorithm, doc.as_ref())
    }

    /// Loads an unencrypted PKCS#8 DER private key.
    pub fn from_pkcs8(algorithm: KeyAlgorithm, der: &[u8]) -> Result<Self, KeyError> {
        let fixed = EcdsaKeyPair::from_pkcs8(algorithm.fixed_signing(), der)
            .map_err(|_| KeyError::InvalidPkcs8(algorithm))?;
        let asn1 = EcdsaKeyPair::from_pkcs8(algorithm.asn1_signing(), der)
            .map_err(|_| KeyError::InvalidPkcs8(algorithm))?;
        Ok(Self {
            algorithm,
            pkcs8: Zeroizing::new(der.to_vec()),
            fixed,
            asn1,
        })
    }

    /// Loads a PKCS#8 key, trying each supported algorithm.
    pub fn from_pkcs8_any(der: &[u8]) -> Result<Self, KeyError> {
        Self::from_pkcs8(KeyAlgorithm::EcdsaP256, der)
            .or_else(|_| Self::from_pkcs8(KeyAlgorithm::EcdsaP384, der))
    }

    /// Loads an unencrypted private key of `algorithm` in PKCS#8 or SEC1 (RFC 5915
    /// `EC PRIVATE KEY`, what cert-manager and openssl write by default) DER.
    pub fn from_private_key_der(algorithm: KeyAlgorithm, der: &[u8]) -> Result<Self, KeyError> {
        let invalid = KeyError::InvalidPkcs8(algorithm);
        let pair = EcdsaKeyPair::from_private_key_der(algorithm.fixed_signing(), der)
            .map_err(|_| invalid.clone())?;
        let document = pair.to_pkcs8v1().map_err(|_| invalid)?;
        let pkcs8 = Zeroizing::new(document.as_ref().to_vec());
        Self::from_pkcs8(algorithm, &pkcs8)
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The private key as unencrypted PKCS#8 DER. Handle with care: never log it.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8.clone()
    }

    /// The public key as an uncompressed SEC1 point (0x04 || x || y).
    pub fn public_key_sec1(&self) -> &[u8] {
        self.fixed.public_key().as_ref()
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        spki_der_for_ec_point(self.algorithm, self.public_key_sec1())
    }

    /// Signs `message` and returns an ASN.1 DER `Ecdsa-Sig-Value`, as X.509 and CSRs use.
    pub fn sign_asn1(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        self.asn1
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| KeyError::Sign)
    }

    /// Signs `message` and returns the fixed-size r || s form that JWS uses.
    pub fn sign_fixed(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        self.fixed
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| KeyError::Sign)
    }
}

/// DER SubjectPublicKeyInfo for an uncompressed EC point on the given curve.
pub fn spki_der_for_ec_point(algorithm: KeyAlgorithm, point: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { id-ecPublicKey, namedCurve } is fixed per curve.
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let curve = match algorithm {
        KeyAlgorithm::EcdsaP256 => P256,
        KeyAlgorithm::EcdsaP384 => P384,
    };
    let mut alg_id = Vec::with_capacity(2 + EC_PUBLIC_KEY.len() + curve.len());
    alg_id.push(0x30);
    push_der_len(&mut alg_id, EC_PUBLIC_KEY.len() + curve.len());
    alg_id.extend_from_slice(EC_PUBLIC_KEY);
    alg_id.extend_from_slice(curve);
    let mut bit_string = Vec::with_capacity(point.len() + 4);
    bit_string.push(0x03);
    push_der_len(&mut bit_string, point.len() + 1);
    bit_string.push(0);
    bit_string.extend_from_slice(point);
    let mut out = Vec::with_capacity(alg_id.len() + bit_string.len() + 4);
    out.push(0x30);
    push_der_len(&mut out, alg_id.len() + bit_string.len());
    out.extend_from_slice(&alg_id);
    out.extend_from_slice(&bit_string);
    out
}

fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::UnparsedPublicKey;

    #[test]
    fn generated_key_round_trips_through_pkcs8_and_signs_both_forms() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SigningKey::generate(alg).expect("generate");
            let again = SigningKey::from_pkcs8_any(&key.pkcs8_der()).expect("reload");
            assert_eq!(again.algorithm(), alg);
            assert_eq!(again.public_key_sec1(), key.public_key_sec1());
            let (fixed_alg, asn1_alg): (
                &dyn signature::VerificationAlgorithm,
                &dyn signature::VerificationAlgorithm,
            ) = match alg {
                KeyAlgorithm::EcdsaP256 => (
                    &signature::ECDSA_P256_SHA256_FIXED,
                    &signature::ECDSA_P256_SHA256_ASN1,
                ),
                KeyAlgorithm::EcdsaP384 => (
                    &signature::ECDSA_P384_SHA384_FIXED,
                    &signature::ECDSA_P384_SHA384_ASN1,
                ),
            };
            let fixed = key.sign_fixed(b"msg").expect("sign");
            assert_eq!(fixed.len(), 2 * alg.coordinate_len());
            UnparsedPublicKey::new(fixed_alg, key.public_key_sec1())
                .verify(b"msg", &fixed)
                .expect("fixed verifies");
            let asn1 = key.sign_asn1(b"msg").expect("sign");
            UnparsedPublicKey::new(asn1_alg, key.public_key_sec1())
                .verify(b"msg", &asn1)
                .expect("asn1 verifies");
            assert!(
                UnparsedPublicKey::new(asn1_alg, key.public_key_sec1())
                    .verify(b"other", &asn1)
                    .is_err()
            );
        }
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert_eq!(
            SigningKey::from_pkcs8(KeyAlgorithm::EcdsaP256, b"nope").unwrap_err(),
            KeyError::InvalidPkcs8(KeyAlgorithm::EcdsaP256)
        );
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("generate");
        let shown = format!("{key:?}");
        assert!(!shown.contains("pkcs8"));
    }
}
