//! A certificate parsed just far enough for SVID and path validation.
//!
//! We walk the TBS ourselves so issuer and subject stay as the exact DER bytes (names chain by
//! byte equality, as Go does) and the signed bytes are the ones we verify; the extension values
//! we act on are decoded with x509-cert's types. Unknown critical extensions are remembered, not
//! ignored, so path validation can reject them.

use std::time::SystemTime;

use der::Decode;
use x509_cert::ext::pkix::constraints::name::{GeneralSubtrees, NameConstraints};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, SubjectAltName, name::GeneralName};
use x509_cert::time::Time;

use super::X509Error;
use super::asn1::{self, TAG_BOOLEAN, TAG_INTEGER, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, oid};
use super::signature::{self, PublicKeyRef};

const WHAT: &str = "certificate";

/// The facts about one certificate that the rules in this module look at.
#[derive(Debug, Clone)]
pub(crate) struct ParsedCert<'a> {
    pub(crate) der: &'a [u8],
    pub(crate) tbs: &'a [u8],
    pub(crate) signature_algorithm: &'a [u8],
    pub(crate) signature: &'a [u8],
    pub(crate) issuer: &'a [u8],
    pub(crate) subject: &'a [u8],
    pub(crate) public_key: PublicKeyRef<'a>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// basicConstraints present with cA = TRUE.
    pub(crate) is_ca: bool,
    pub(crate) path_len: Option<u8>,
    /// `None` when the keyUsage extension is absent.
    pub(crate) key_usage: Option<KeyUsage>,
    pub(crate) uris: Vec<String>,
    pub(crate) dns_names: Vec<String>,
    pub(crate) subject_key_id: Option<&'a [u8]>,
    pub(crate) name_constraints: Option<NameRules>,
    /// The first critical extension we do not process, as a dotted OID.
    pub(crate) unhandled_critical: Option<String>,
}

/// A CA's name constraints (RFC 5280 §4.2.1.10) for the name types SVIDs use: URI (matched on
/// the host, i.e. the trust domain) and DNS. A constraint on any other type sets
/// `unsupported_type`, and path validation then refuses the CA rather than ignore a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NameRules {
    pub(crate) permitted_uri_hosts: Vec<String>,
    pub(crate) excluded_uri_hosts: Vec<String>,
    pub(crate) permitted_dns: Vec<String>,
    pub(crate) excluded_dns: Vec<String>,
    pub(crate) unsupported_type: bool,
}

impl ParsedCert<'_> {
    pub(crate) fn has_key_cert_sign(&self) -> bool {
        self.key_usage.is_some_and(|ku| ku.key_cert_sign())
    }

    pub(crate) fn has_crl_sign(&self) -> bool {
        self.key_usage.is_some_and(|ku| ku.crl_sign())
    }

    pub(crate) fn has_digital_signature(&self) -> bool {
        self.key_usage.is_some_and(|ku| ku.digital_signature())
    }

    pub(crate) fn is_self_issued(&self) -> bool {
        self.issuer == self.subject
    }

    /// Whether `issuer` signed this certificate (the signature only; names are checked apart).
    pub(crate) fn is_signed_by(&self, issuer: &ParsedCert<'_>) -> Result<(), X509Error> {
        signature::verify_signature(
            &issuer.public_key,
            self.signature_algorithm,
            self.tbs,
            self.signature,
        )
    }

    pub(crate) fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Parses one DER certificate. Any structural problem is an error, never a panic.
/// A certificate's notBefore and notAfter (for deciding when a stored CA may sign).
pub fn certificate_validity(der: &[u8]) -> Result<(SystemTime, SystemTime), X509Error> {
    let cert = parse_certificate(der)?;
    Ok((cert.not_before, cert.not_after))
}

pub(crate) fn parse_certificate(der: &[u8]) -> Result<ParsedCert<'_>, X509Error> {
    let signed = asn1::split_signed(der, WHAT)?;
    let mut rest = signed.to_be_signed.content;

    // version [0] EXPLICIT INTEGER DEFAULT v1
    let (first, after) = asn1::read_tlv(rest).map_err(|_| X509Error::Malformed(WHAT))?;
    if first.tag == 0xa0 {
        let (version, trailing) = asn1::expect_tlv(first.content, TAG_INTEGER, WHAT)?;
        if !trailing.is_empty() || !matches!(version.content, [0] | [1] | [2]) {
            return Err(X509Error::Malformed("certificate version"));
        }
        rest = after;
    }
    let (serial, rest) = asn1::expect_tlv(rest, TAG_INTEGER, WHAT)?;
    if serial.content.is_empty() || serial.content.len() > 21 {
        return Err(X509Error::Malformed("certificate serial number"));
    }
    let (inner_algorithm, rest) = asn1::expect_tlv(rest, TAG_SEQUENCE, WHAT)?;
    // RFC 5280 §4.1.1.2: the outer and inner signature algorithms must be identical.
    if inner_algorithm.raw != signed.algorithm {
        return Err(X509Error::Malformed(
            "certificate: signature algorithms differ inside and outside the TBS",
        ));
    }
    let (issuer, rest) = asn1::expect_tlv(rest, TAG_SEQUENCE, WHAT)?;
    let (validity, rest) = asn1::expect_tlv(rest, TAG_SEQUENCE, WHAT)?;
    let (subject, rest) = asn1::expect_tlv(rest, TAG_SEQUENCE, WHAT)?;
    let (spki, mut rest) = asn1::expect_tlv(rest, TAG_SEQUENCE, WHAT)?;
    let (not_before, not_after) = parse_validity(validity.content)?;
    let public_key = signature::parse_spki(spki.raw)?;

    let mut facts = Extensions::default();
    while !rest.is_empty() {
        let (element, after) = asn1::read_tlv(rest).map_err(|_| X509Error::Malformed(WHAT))?;
        match element.tag {
            // issuerUniqueID / subjectUniqueID: allowed, unused.
            0x81 | 0x82 | 0xa1 | 0xa2 => {}
            0xa3 if after.is_empty() => {
                let (list, trailing) = asn1::expect_tlv(element.content, TAG_SEQUENCE, WHAT)?;
                if !trailing.is_empty() || list.content.is_empty() {
                    return Err(X509Error::Malformed("certificate extensions"));
                }
                facts = parse_extensions(list.content)?;
            }
            _ => return Err(X509Error::Malformed(WHAT)),
        }
        rest = after;
    }

    Ok(ParsedCert {
        der,
        tbs: signed.to_be_signed.raw,
        signature_algorithm: signed.algorithm,
        signature: signed.signature,
        issuer: issuer.raw,
        subject: subject.raw,
        public_key,
        not_before,
        not_after,
        is_ca: facts.basic_constraints.as_ref().is_some_and(|bc| bc.ca),
        path_len: facts
            .basic_constraints
            .as_ref()
            .and_then(|bc| bc.path_len_constraint),
        key_usage: facts.key_usage,
        uris: facts.uris,
        dns_names: facts.dns_names,
        subject_key_id: facts.subject_key_id,
        name_constraints: facts.name_constraints,
        unhandled_critical: facts.unhandled_critical,
    })
}

fn parse_validity(content: &[u8]) -> Result<(SystemTime, SystemTime), X509Error> {
    let (not_before, rest) =
        asn1::read_tlv(content).map_err(|_| X509Error::Malformed("validity"))?;
    let (not_after, rest) = asn1::read_tlv(rest).map_err(|_| X509Error::Malformed("validity"))?;
    if !rest.is_empty() {
        return Err(X509Error::Malformed("validity"));
    }
    let decode = |raw: &[u8]| {
        Time::from_der(raw)
            .map(|t| t.to_system_time())
            .map_err(|_| X509Error::Malformed("validity time"))
    };
    Ok((decode(not_before.raw)?, decode(not_after.raw)?))
}

#[derive(Default)]
struct Extensions<'a> {
    basic_constraints: Option<BasicConstraints>,
    key_usage: Option<KeyUsage>,
    uris: Vec<String>,
    dns_names: Vec<String>,
    subject_key_id: Option<&'a [u8]>,
    name_constraints: Option<NameRules>,
    unhandled_critical: Option<String>,
}

fn parse_extensions(mut list: &[u8]) -> Result<Extensions<'_>, X509Error> {
    const EXT: &str = "certificate extension";
    let mut facts = Extensions::default();
    let mut seen: Vec<&[u8]> = Vec::new();
    while !list.is_empty() {
        let (extension, after) = asn1::expect_tlv(list, TAG_SEQUENCE, EXT)?;
        list = after;
        let (id, rest) = asn1::expect_tlv(extension.content, TAG_OID, EXT)?;
        let (critical, rest) = match asn1::read_tlv(rest) {
            Ok((flag, after_flag)) if flag.tag == TAG_BOOLEAN => match flag.content {
                // DER forbids encoding the DEFAULT FALSE, but it is common; accept both.
                [0xff] => (true, after_flag),
                [0x00] => (false, after_flag),
                _ => return Err(X509Error::Malformed(EXT)),
            },
            _ => (false, rest),
        };
        let (value, trailing) = asn1::expect_tlv(rest, TAG_OCTET_STRING, EXT)?;
        if !trailing.is_empty() {
            return Err(X509Error::Malformed(EXT));
        }
        // RFC 5280 §4.2: at most one instance of each extension.
        if seen.contains(&id.content) {
            return Err(X509Error::DuplicateExtension(extension_name(id.content)));
        }
        seen.push(id.content);
        let value = value.content;
        match id.content {
            oid::BASIC_CONSTRAINTS => {
                let bc = BasicConstraints::from_der(value)
                    .map_err(|_| X509Error::Malformed("basicConstraints extension"))?;
                facts.basic_constraints = Some(bc);
            }
            oid::KEY_USAGE => {
                let ku = KeyUsage::from_der(value)
                    .map_err(|_| X509Error::Malformed("keyUsage extension"))?;
                facts.key_usage = Some(ku);
            }
            oid::SUBJECT_ALT_NAME => {
                let san = SubjectAltName::from_der(value)
                    .map_err(|_| X509Error::Malformed("subjectAltName extension"))?;
                for general_name in san.0 {
                    match general_name {
                        GeneralName::UniformResourceIdentifier(uri) => {
                            facts.uris.push(uri.to_string())
                        }
                        GeneralName::DnsName(dns) => facts.dns_names.push(dns.to_string()),
                        _ => {}
                    }
                }
            }
            oid::SUBJECT_KEY_ID => {
                let (ski, trailing) =
                    asn1::expect_tlv(value, TAG_OCTET_STRING, "subjectKeyIdentifier")?;
                if !trailing.is_empty() {
                    return Err(X509Error::Malformed("subjectKeyIdentifier"));
                }
                facts.subject_key_id = Some(ski.content);
            }
            oid::NAME_CONSTRAINTS => {
                let constraints = NameConstraints::from_der(value)
                    .map_err(|_| X509Error::Malformed("nameConstraints extension"))?;
                let mut rules = NameRules::default();
                collect_subtrees(
                    constraints.permitted_subtrees,
                    &mut rules.permitted_uri_hosts,
                    &mut rules.permitted_dns,
                    &mut rules.unsupported_type,
                );
                collect_subtrees(
                    constraints.excluded_subtrees,
                    &mut rules.excluded_uri_hosts,
                    &mut rules.excluded_dns,
                    &mut rules.unsupported_type,
                );
                facts.name_constraints = Some(rules);
            }
            // Structure is enough: EKU is not checked (go-spiffe verifies with ExtKeyUsageAny)
            // and AKI only helps path building, which we do by name and signature.
            oid::AUTHORITY_KEY_ID | oid::EXT_KEY_USAGE => {
                asn1::expect_tlv(value, TAG_SEQUENCE, extension_name(id.content))?;
            }
            other => {
                if critical && facts.unhandled_critical.is_none() {
                    facts.unhandled_critical = Some(dotted_oid(other));
                }
            }
        }
    }
    Ok(facts)
}

fn collect_subtrees(
    subtrees: Option<GeneralSubtrees>,
    uri_hosts: &mut Vec<String>,
    dns_names: &mut Vec<String>,
    unsupported_type: &mut bool,
) {
    for subtree in subtrees.unwrap_or_default() {
        // RFC 5280: minimum is always 0 and maximum absent for these name forms.
        if subtree.minimum != 0 || subtree.maximum.is_some() {
            *unsupported_type = true;
            continue;
        }
        match subtree.base {
            GeneralName::UniformResourceIdentifier(host) => uri_hosts.push(host.to_string()),
            GeneralName::DnsName(name) => dns_names.push(name.to_string()),
            _ => *unsupported_type = true,
        }
    }
}

fn extension_name(oid_content: &[u8]) -> &'static str {
    match oid_content {
        oid::BASIC_CONSTRAINTS => "basicConstraints",
        oid::KEY_USAGE => "keyUsage",
        oid::SUBJECT_ALT_NAME => "subjectAltName",
        oid::SUBJECT_KEY_ID => "subjectKeyIdentifier",
        oid::AUTHORITY_KEY_ID => "authorityKeyIdentifier",
        oid::EXT_KEY_USAGE => "extKeyUsage",
        oid::NAME_CONSTRAINTS => "nameConstraints",
        _ => "same",
    }
}

/// Renders OID contents as dotted decimal for error messages; never fails.
fn dotted_oid(content: &[u8]) -> String {
    match const_oid::ObjectIdentifier::from_bytes(content) {
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(malformed OID)".to_owned(),
    }
}
