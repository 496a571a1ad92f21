//! PKCS#10 certificate signing requests (RFC 2986).
//!
//! The authority verifies the CSR's signature as proof that the requester holds the private key
//! and then takes only the public key: identities come from the operator's registration entries,
//! never from the node's request.

use super::X509Error;
use super::asn1::{self, TAG_INTEGER, TAG_OID, TAG_SEQUENCE, TAG_SET, oid};
use super::san::encode_san;
use super::signature;
use crate::keys::SigningKey;
use crate::spiffe_id::SpiffeId;

const WHAT: &str = "CSR";

/// A CSR whose signature verified: its public key is proven to be held by the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    public_key_der: Vec<u8>,
}

impl VerifiedCsr {
    /// The requester's SubjectPublicKeyInfo (DER).
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }
}

/// Parses a DER CSR and verifies its self-signature (ECDSA P-256/P-384 or RSA). The subject and
/// requested extensions are deliberately ignored.
pub fn verify_csr(csr_der: &[u8]) -> Result<VerifiedCsr, X509Error> {
    let signed = asn1::split_signed(csr_der, WHAT)?;
    // CertificationRequestInfo ::= SEQUENCE { version INTEGER (v1 = 0), subject Name,
    //   subjectPKInfo SubjectPublicKeyInfo, attributes [0] IMPLICIT SET OF Attribute }
    let (version, rest) = asn1::expect_tlv(signed.to_be_signed.content, TAG_INTEGER, WHAT)?;
    if version.content != [0] {
        return Err(X509Error::Malformed("CSR version (must be v1)"));
    }
    let (_subject, rest) = asn1::expect_tlv(rest, TAG_SEQUENCE, WHAT)?;
    let (spki, rest) = asn1::expect_tlv(rest, TAG_SEQUENCE, WHAT)?;
    let (_attributes, rest) = asn1::expect_tlv(rest, 0xa0, WHAT)?;
    if !rest.is_empty() {
        return Err(X509Error::Malformed(WHAT));
    }
    let key = signature::parse_spki(spki.raw)?;
    // Verifying parses the key into the crypto library, which checks it (EC point on the curve,
    // RSA modulus size); a key that fails that cannot produce a valid signature.
    signature::verify_signature(
        &key,
        signed.algorithm,
        signed.to_be_signed.raw,
        signed.signature,
    )
    .map_err(|e| match e {
        X509Error::BadSignature => X509Error::CsrSignature,
        other => other,
    })?;
    Ok(VerifiedCsr {
        public_key_der: key.spki_der.to_vec(),
    })
}

/// Builds a DER CSR for `key` (node side), with an empty subject and an extensionRequest for
/// the SAN (the SPIFFE ID as URI, then DNS names). The authority ignores everything but the key,
/// but a self-describing CSR helps debugging and other CAs.
pub fn build_csr(
    key: &SigningKey,
    spiffe_id: &SpiffeId,
    dns_names: &[String],
) -> Result<Vec<u8>, X509Error> {
    let san = encode_san(spiffe_id, dns_names)?;
    let extensions = asn1::sequence(&[&asn1::extension(oid::SUBJECT_ALT_NAME, false, &san)]);
    let extension_request = asn1::sequence(&[
        &asn1::tlv(TAG_OID, oid::EXTENSION_REQUEST),
        &asn1::constructed(TAG_SET, &[&extensions]),
    ]);
    let info = asn1::sequence(&[
        &[TAG_INTEGER, 0x01, 0x00],
        &[TAG_SEQUENCE, 0x00],
        &key.public_key_spki_der(),
        &asn1::constructed(0xa0, &[&extension_request]),
    ]);
    let algorithm = signature::ecdsa_signature_algorithm_der(key.algorithm());
    let signature = key.sign_asn1(&info)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(&signature);
    Ok(asn1::sequence(&[
        &info,
        &algorithm,
        &asn1::tlv(asn1::TAG_BIT_STRING, &bits),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyAlgorithm;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/ns/default/sa/web").expect("id")
    }

    #[test]
    fn built_csrs_verify_and_yield_the_key() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SigningKey::generate(algorithm).expect("key");
            let csr = build_csr(&key, &id(), &["web.default.svc".to_owned()]).expect("csr");
            let verified = verify_csr(&csr).expect("verifies");
            assert_eq!(verified.public_key_der(), key.public_key_spki_der());
        }
    }

    #[test]
    fn csr_signed_by_another_key_fails_proof_of_possession() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let other = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let csr = build_csr(&key, &id(), &[]).expect("csr");
        let genuine = verify_csr(&csr).expect("verifies");
        // Swap in the other public key (same length): the signature no longer matches.
        let own = key.public_key_spki_der();
        let theirs = other.public_key_spki_der();
        let at = csr
            .windows(own.len())
            .position(|w| w == own.as_slice())
            .expect("key inside");
        let mut forged = csr.clone();
        forged.splice(at..at + own.len(), theirs.iter().copied());
        assert_eq!(verify_csr(&forged), Err(X509Error::CsrSignature));
        assert_ne!(genuine.public_key_der(), theirs);
    }

    /// Where a byte of a CSR sits, which decides the error a bit flipped in it must give.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Part {
        /// Tags, lengths, the version, the BIT STRING unused-bits counts and the EC point's
        /// format byte: the DER no longer has the CSR's shape.
        Structure,
        /// The OIDs naming the key type and curve.
        KeyOid,
        /// The OID naming the signature algorithm.
        SignatureOid,
        /// The length of one of those OIDs: read shorter or longer, the DER either loses its
        /// shape or names an algorithm nobody knows.
        OidLength,
        /// Signed bytes the parser does not interpret (the requested extensions) and the public
        /// key's coordinates: only the signature check catches a change there (a point moved off
        /// the curve fails inside it too).
        SignedContent,
        /// The signature value (a DER ECDSA-Sig-Value, parsed by the crypto library).
        Signature,
    }

    /// The [`Part`] of every byte of one of our own CSRs.
    fn layout(csr: &[u8]) -> Vec<Part> {
        fn mark(parts: &mut [Part], csr: &[u8], bytes: &[u8], part: Part) {
            let start = bytes.as_ptr() as usize - csr.as_ptr() as usize;
            parts[start..start + bytes.len()].fill(part);
        }
        let tlv = |input, tag| asn1::expect_tlv(input, tag, WHAT).expect("own CSR");
        // Every byte not marked below is a tag, a length, the version or an unused-bits count.
        let mut parts = vec![Part::Structure; csr.len()];
        let signed = asn1::split_signed(csr, WHAT).expect("own CSR");
        let (_version, rest) = tlv(signed.to_be_signed.content, TAG_INTEGER);
        let (_subject, rest) = tlv(rest, TAG_SEQUENCE);
        let (spki, rest) = tlv(rest, TAG_SEQUENCE);
        let (attributes, _) = tlv(rest, 0xa0);
        mark(&mut parts, csr, attributes.content, Part::SignedContent);
        let (key_algorithm, rest) = tlv(spki.content, TAG_SEQUENCE);
        let (key_type, curve) = tlv(key_algorithm.content, TAG_OID);
        let (curve, _) = tlv(curve, TAG_OID);
        for oid in [&key_type, &curve] {
            mark(&mut parts, csr, oid.content, Part::KeyOid);
            mark(&mut parts, csr, oid_length(oid), Part::OidLength);
        }
        let (key_bits, _) = tlv(rest, asn1::TAG_BIT_STRING);
        let point = asn1::bit_string_bytes(key_bits.content).expect("whole octets");
        // The point's first byte says "uncompressed" (the only form accepted): structure too.
        mark(&mut parts, csr, &point[1..], Part::SignedContent);
        let (signature_algorithm, _) = tlv(signed.algorithm, TAG_SEQUENCE);
        let (signature_oid, _) = tlv(signature_algorithm.content, TAG_OID);
        mark(&mut parts, csr, signature_oid.content, Part::SignatureOid);
        mark(&mut parts, csr, oid_length(&signature_oid), Part::OidLength);
        mark(&mut parts, csr, signed.signature, Part::Signature);
        parts
    }

    /// The length bytes of a TLV.
    fn oid_length<'a>(tlv: &asn1::Tlv<'a>) -> &'a [u8] {
        &tlv.raw[1..tlv.raw.len() - tlv.content.len()]
    }

    /// The signature algorithm OID of a CSR whose DER structure is intact.
    fn signature_oid(csr: &[u8]) -> &[u8] {
        let signed = asn1::split_signed(csr, WHAT).expect("structure intact");
        let (algorithm, _) = asn1::expect_tlv(signed.algorithm, TAG_SEQUENCE, WHAT).expect("alg");
        let (oid, _) = asn1::expect_tlv(algorithm.content, TAG_OID, WHAT).expect("oid");
        oid.content
    }

    #[test]
    fn truncations_are_malformed_and_every_bit_flip_is_refused_for_what_it_breaks() {
        let ecdsa_oids = [oid::ECDSA_SHA256, oid::ECDSA_SHA384, oid::ECDSA_SHA512];
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SigningKey::generate(algorithm).expect("key");
            let csr = build_csr(&key, &id(), &["a.example".to_owned()]).expect("csr");
            for len in 0..csr.len() {
                let result = verify_csr(&csr[..len]);
                assert!(
                    matches!(result, Err(X509Error::Malformed(_))),
                    "{algorithm:?} truncated to {len}: {result:?}"
                );
            }
            let parts = layout(&csr);
            for (index, part) in parts.iter().enumerate() {
                for bit in 0..8 {
                    let mut flipped = csr.clone();
                    flipped[index] ^= 1 << bit;
                    let error = verify_csr(&flipped).expect_err("a flipped CSR never verifies");
                    let expected = match part {
                        Part::Structure => matches!(error, X509Error::Malformed(_)),
                        // A flip inside the signature OID can name another ECDSA hash
                        // (ecdsa-with-SHA256 and -SHA384 differ in one bit): a supported
                        // algorithm, so the signature check is what refuses it.
                        Part::SignatureOid if ecdsa_oids.contains(&signature_oid(&flipped)) => {
                            error == X509Error::CsrSignature
                        }
                        Part::KeyOid | Part::SignatureOid => {
                            matches!(error, X509Error::UnsupportedAlgorithm(_))
                        }
                        Part::OidLength => matches!(
                            error,
                            X509Error::Malformed(_) | X509Error::UnsupportedAlgorithm(_)
                        ),
                        Part::SignedContent | Part::Signature => error == X509Error::CsrSignature,
                    };
                    assert!(
                        expected,
                        "{algorithm:?}: bit {bit} of byte {index} ({part:?}) gave {error:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn invalid_dns_names_are_refused() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        for bad in [
            "",
            "-a.example",
            "a..example",
            "a_b.example",
            "ex ample",
            "a.*.example",
        ] {
            assert!(matches!(
                build_csr(&key, &id(), &[bad.to_owned()]),
                Err(X509Error::InvalidDnsName(_))
            ));
        }
    }
}
