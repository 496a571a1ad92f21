//! PKCS#10 certificate signing requests (RFC 2986).
//!
//! The authority verifies the CSR's signature as proof that the requester holds the private key
//! and then takes only the public key: identities come from the operator's registration entries,
//! never from the node's request.

use super::X509Error;
use super::asn1::{self, TAG_INTEGER, TAG_OID, TAG_SEQUENCE, TAG_SET, oid};
use super::authority::encode_san;
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

    #[test]
    fn truncations_and_bit_flips_never_panic() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let csr = build_csr(&key, &id(), &["a.example".to_owned()]).expect("csr");
        for len in 0..csr.len() {
            assert!(verify_csr(&csr[..len]).is_err());
        }
        for index in 0..csr.len() {
            let mut flipped = csr.clone();
            flipped[index] ^= 0x41;
            // A flip may still parse (e.g. inside the ignored subject), but must never panic,
            // and a flip inside the signed part must not verify.
            let _ = verify_csr(&flipped);
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
