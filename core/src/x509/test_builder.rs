//! Test-only certificate builder: makes well-formed and deliberately malformed certificates
//! (CA leaves, missing SANs, odd key usages...) that the authority would never issue.

use std::time::{Duration, SystemTime};

use super::CertDer;
use super::asn1::{self, TAG_BIT_STRING, TAG_OCTET_STRING, TAG_UTF8_STRING, oid};
use super::authority::{TbsParts, encode_tbs, key_identifier, random_serial, sign_tbs};
use super::signature::ecdsa_signature_algorithm_der;
use crate::keys::{KeyAlgorithm, SigningKey};

pub(crate) const DIGITAL_SIGNATURE: u8 = 0x80;
pub(crate) const KEY_CERT_SIGN: u8 = 0x04;
pub(crate) const CRL_SIGN: u8 = 0x02;

pub(crate) fn hour() -> Duration {
    Duration::from_secs(3600)
}

pub(crate) fn basic_constraints(ca: bool, path_len: Option<u8>) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    if ca {
        parts.push(vec![asn1::TAG_BOOLEAN, 0x01, 0xff]);
    }
    if let Some(n) = path_len {
        parts.push(asn1::unsigned_integer(&[n]));
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    asn1::extension(oid::BASIC_CONSTRAINTS, true, &asn1::sequence(&refs))
}

/// keyUsage with the first byte of bits (our constants), minimally encoded.
pub(crate) fn key_usage(bits: u8) -> Vec<u8> {
    let unused = if bits == 0 {
        0
    } else {
        bits.trailing_zeros() as u8
    };
    let value = if bits == 0 {
        vec![TAG_BIT_STRING, 0x01, 0x00]
    } else {
        vec![TAG_BIT_STRING, 0x02, unused, bits]
    };
    asn1::extension(oid::KEY_USAGE, true, &value)
}

pub(crate) fn san(uris: &[&str], dns_names: &[&str], critical: bool) -> Vec<u8> {
    let mut names = Vec::new();
    for uri in uris {
        asn1::push_tlv(&mut names, 0x86, uri.as_bytes());
    }
    for dns in dns_names {
        asn1::push_tlv(&mut names, 0x82, dns.as_bytes());
    }
    asn1::extension(
        oid::SUBJECT_ALT_NAME,
        critical,
        &asn1::tlv(asn1::TAG_SEQUENCE, &names),
    )
}

pub(crate) fn subject_key_id(key: &SigningKey) -> Vec<u8> {
    asn1::extension(
        oid::SUBJECT_KEY_ID,
        false,
        &asn1::tlv(TAG_OCTET_STRING, &key_identifier(key.public_key_sec1())),
    )
}

/// A critical extension with a private OID nobody understands.
pub(crate) fn unknown_critical() -> Vec<u8> {
    asn1::extension(
        &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x99, 0x01],
        true,
        &[0x05, 0x00],
    )
}

pub(crate) fn org_name(organization: &str) -> Vec<u8> {
    asn1::name(&[(oid::ORGANIZATION, TAG_UTF8_STRING, organization)])
}

/// A certificate for `subject_key` signed by `issuer_key` under `issuer_name`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_cert(
    issuer_key: &SigningKey,
    issuer_name: &[u8],
    subject_name: &[u8],
    subject_key: &SigningKey,
    not_before: SystemTime,
    not_after: SystemTime,
    extensions: &[Vec<u8>],
) -> CertDer {
    let algorithm = ecdsa_signature_algorithm_der(issuer_key.algorithm());
    let serial = asn1::unsigned_integer(&random_serial().expect("random"));
    let refs: Vec<&[u8]> = extensions.iter().map(Vec::as_slice).collect();
    let tbs = encode_tbs(&TbsParts {
        serial: &serial,
        signature_algorithm: &algorithm,
        issuer: issuer_name,
        not_before,
        not_after,
        subject: subject_name,
        spki: &subject_key.public_key_spki_der(),
        extensions: &refs,
    })
    .expect("encodable");
    sign_tbs(issuer_key, &algorithm, &tbs).expect("sign")
}

/// A CA made with the builder.
pub(crate) struct TestCa {
    pub(crate) key: SigningKey,
    pub(crate) name: Vec<u8>,
    pub(crate) cert: CertDer,
}

impl TestCa {
    /// A self-signed root valid from an hour before `now` to a day after.
    pub(crate) fn root(organization: &str, trust_domain: &str, now: SystemTime) -> Self {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let name = org_name(organization);
        let extensions = vec![
            basic_constraints(true, None),
            key_usage(KEY_CERT_SIGN | CRL_SIGN),
            subject_key_id(&key),
            san(&[&format!("spiffe://{trust_domain}")], &[], false),
        ];
        let cert = make_cert(
            &key,
            &name,
            &name,
            &key,
            now - hour(),
            now + 24 * hour(),
            &extensions,
        );
        Self { key, name, cert }
    }

    /// A CA below this one with the given extensions and validity.
    pub(crate) fn sub_ca(
        &self,
        organization: &str,
        not_before: SystemTime,
        not_after: SystemTime,
        extensions: &[Vec<u8>],
    ) -> Self {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let name = org_name(organization);
        let cert = make_cert(
            &self.key, &self.name, &name, &key, not_before, not_after, extensions,
        );
        Self { key, name, cert }
    }

    /// A standard intermediate valid around `now`.
    pub(crate) fn intermediate(&self, organization: &str, now: SystemTime) -> Self {
        self.sub_ca(
            organization,
            now - hour(),
            now + 12 * hour(),
            &[
                basic_constraints(true, None),
                key_usage(KEY_CERT_SIGN | CRL_SIGN),
            ],
        )
    }

    /// A leaf with a fresh key and exactly the given extensions.
    pub(crate) fn leaf_with(
        &self,
        subject_name: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
        extensions: &[Vec<u8>],
    ) -> (CertDer, SigningKey) {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let cert = make_cert(
            &self.key,
            &self.name,
            subject_name,
            &key,
            not_before,
            not_after,
            extensions,
        );
        (cert, key)
    }

    /// A leaf valid around `now` with the given extensions and a small subject.
    pub(crate) fn leaf(&self, now: SystemTime, extensions: &[Vec<u8>]) -> CertDer {
        self.leaf_with(&org_name("leaf"), now - hour(), now + hour(), extensions)
            .0
    }
}

/// The extensions of a correct SVID leaf for `uri`.
pub(crate) fn svid_leaf_extensions(uri: &str) -> Vec<Vec<u8>> {
    vec![
        basic_constraints(false, None),
        key_usage(DIGITAL_SIGNATURE),
        san(&[uri], &[], false),
    ]
}

/// GeneralSubtree bases as `(tag, value)`: 0x86 URI, 0x82 DNS, 0xa4 directoryName.
pub(crate) type Bases<'a> = &'a [(u8, &'a [u8])];

/// A critical nameConstraints extension.
pub(crate) fn name_constraints(permitted: Bases<'_>, excluded: Bases<'_>) -> Vec<u8> {
    let subtrees = |bases: Bases<'_>| -> Vec<u8> {
        bases
            .iter()
            .flat_map(|(tag, value)| asn1::sequence(&[&asn1::tlv(*tag, value)]))
            .collect()
    };
    let mut parts = Vec::new();
    if !permitted.is_empty() {
        parts.push(asn1::tlv(0xa0, &subtrees(permitted)));
    }
    if !excluded.is_empty() {
        parts.push(asn1::tlv(0xa1, &subtrees(excluded)));
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    asn1::extension(oid::NAME_CONSTRAINTS, true, &asn1::sequence(&refs))
}
