//! The signing authority: a CA that issues X.509-SVIDs (X509-SVID §3-4).
//!
//! Per-CA work (issuer name, AKI, algorithm identifier, the extensions every leaf shares, the
//! chain to send on the wire) is encoded once in [`Authority::from_chain`]. Issuing a leaf then
//! costs a random serial, two times, the SAN, a SHA-1 for the SKI, one DER assembly and one
//! signature.

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use super::asn1::{
    self, TAG_BIT_STRING, TAG_OCTET_STRING, TAG_PRINTABLE_STRING, TAG_SEQUENCE, TAG_UTF8_STRING,
    oid,
};
use super::cert::{ParsedCert, parse_certificate};
use super::csr::{VerifiedCsr, verify_csr};
use super::san::validate_dns_name;
use super::signature::{self, PublicKeyRef};
use super::{CertDer, MAX_CHAIN_LEN, X509Error};
use crate::keys::{KeyAlgorithm, SigningKey};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// How far back notBefore is set, so peers with slightly slow clocks accept a fresh certificate.
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(10);

/// Subject and lifetime of a CA certificate we create (a root, or an intermediate we sign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaParams {
    /// Subject O.
    pub organization: String,
    /// Subject CN. Without one, the subject carries serialNumber = the certificate's serial, so
    /// successive CAs (rotation) never share a subject name.
    pub common_name: Option<String>,
    pub ttl: Duration,
    /// basicConstraints pathLenConstraint; `None` = unlimited.
    pub path_len: Option<u8>,
}

impl CaParams {
    pub fn new(organization: impl Into<String>, ttl: Duration) -> Self {
        Self {
            organization: organization.into(),
            common_name: None,
            ttl,
            path_len: None,
        }
    }
}

/// What to put in an X.509-SVID. The operator decides these; a CSR contributes only its key.
#[derive(Debug, Clone, Copy)]
pub struct SvidRequest<'a> {
    pub spiffe_id: &'a SpiffeId,
    pub dns_names: &'a [String],
    /// Requested lifetime; capped by the CA's own notAfter.
    pub ttl: Duration,
}

/// An issued X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSvid {
    pub spiffe_id: SpiffeId,
    /// What goes on the wire: the leaf first, then intermediates, without the root.
    pub chain: Vec<CertDer>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl IssuedSvid {
    /// The leaf certificate (always present in what the authority returns).
    pub fn leaf(&self) -> Option<&CertDer> {
        self.chain.first()
    }

    /// The chain as concatenated DER (the Workload API's `x509_svid` field).
    pub fn chain_der(&self) -> Vec<u8> {
        super::concat_der(&self.chain)
    }
}

/// A CA able to issue X.509-SVIDs for one trust domain.
pub struct Authority {
    key: SigningKey,
    trust_domain: TrustDomain,
    /// Our CA certificate first, then up to and including the root.
    chain: Vec<CertDer>,
    not_before: SystemTime,
    not_after: SystemTime,
    path_len: Option<u8>,
    template: IssuerTemplate,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("key", &self.key)
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Everything per-CA that goes into each leaf, already DER-encoded.
#[derive(Debug, Clone)]
struct IssuerTemplate {
    signature_algorithm: Vec<u8>,
    issuer_name: Vec<u8>,
    subject_key_id: Vec<u8>,
    /// basicConstraints, keyUsage, extKeyUsage and authorityKeyIdentifier, concatenated.
    leaf_static_extensions: Vec<u8>,
    /// Our certificate and any intermediates above it, without the root.
    wire_intermediates: Vec<CertDer>,
}

/// The fields that differ between two leaves from the same CA.
struct LeafFields<'a> {
    serial: &'a [u8],
    not_before: SystemTime,
    not_after: SystemTime,
    spki: &'a [u8],
    subject_key_id: &'a [u8],
    spiffe_id: &'a SpiffeId,
    dns_names: &'a [String],
}

/// Leaves carry a small fixed subject (as SPIRE and csi-driver-spiffe do); the identity is the URI SAN.
const LEAF_SUBJECT_ORGANIZATION: &str = "SPIFFE";

impl Authority {
    /// Creates a self-signed root CA with a fresh key of `algorithm`.
    pub fn generate_root(
        trust_domain: &TrustDomain,
        algorithm: KeyAlgorithm,
        params: &CaParams,
        now: SystemTime,
    ) -> Result<Self, X509Error> {
        Self::self_signed_root(SigningKey::generate(algorithm)?, trust_domain, params, now)
    }

    /// Creates a self-signed root CA for `key`: subject O plus CN or serialNumber, URI SAN
    /// `spiffe://<td>`, basicConstraints cA (critical), keyUsage keyCertSign+cRLSign (critical), SKI.
    pub fn self_signed_root(
        key: SigningKey,
        trust_domain: &TrustDomain,
        params: &CaParams,
        now: SystemTime,
    ) -> Result<Self, X509Error> {
        let serial = random_serial()?;
        let subject = ca_subject(params, &serial)?;
        let (not_before, not_after) = lifetime(now, params.ttl, None)?;
        let spki = key.public_key_spki_der();
        let subject_key_id = key_identifier(key.public_key_sec1());
        let signature_algorithm = signature::ecdsa_signature_algorithm_der(key.algorithm());
        let extensions = ca_extensions(trust_domain, params.path_len, &subject_key_id, None);
        let tbs = encode_tbs(&TbsParts {
            serial: &asn1::unsigned_integer(&serial),
            signature_algorithm: &signature_algorithm,
            issuer: &subject,
            not_before,
            not_after,
            subject: &subject,
            spki: &spki,
            extensions: &[&extensions],
        })?;
        let cert = sign_tbs(&key, &signature_algorithm, &tbs)?;
        Self::from_chain(key, vec![cert], trust_domain, now)
    }

    /// Loads a CA from its certificate chain (DER; our CA certificate first, then up to the
    /// root) and its private key. Checks that the key matches the certificate, that the
    /// certificate is a CA with keyCertSign valid at `now`, that each certificate is issued by
    /// the next, and that the chain ends at a self-signed root. A one-element chain is a root.
    pub fn from_chain(
        key: SigningKey,
        chain: Vec<CertDer>,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<Self, X509Error> {
        if chain.is_empty() {
            return Err(X509Error::EmptyChain);
        }
        if chain.len() > MAX_CHAIN_LEN {
            return Err(X509Error::ChainTooLong(chain.len()));
        }
        let parsed = chain
            .iter()
            .map(|c| parse_certificate(c.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(ca) = parsed.first() else {
            return Err(X509Error::EmptyChain);
        };
        if !ca
            .public_key
            .matches_ec_key(key.algorithm(), key.public_key_sec1())
        {
            return Err(X509Error::CaKeyMismatch);
        }
        check_signing_cert(ca).map_err(|e| match e {
            X509Error::SigningCertNotCa => X509Error::CaNotCa,
            X509Error::SigningCertNoKeyCertSign => X509Error::CaNoKeyCertSign,
            other => other,
        })?;
        if !ca.is_valid_at(now) {
            return Err(X509Error::CaNotValidNow);
        }
        check_ca_trust_domain(ca, trust_domain)?;
        check_chain_links(&parsed)?;

        let subject_key_id = match ca.subject_key_id {
            Some(ski) => ski.to_vec(),
            None => key_identifier(ca.public_key.key_bits),
        };
        let signature_algorithm = signature::ecdsa_signature_algorithm_der(key.algorithm());
        let wire_len = chain.len().saturating_sub(1).max(1);
        let template = IssuerTemplate {
            leaf_static_extensions: leaf_static_extensions(&subject_key_id),
            signature_algorithm,
            issuer_name: ca.subject.to_vec(),
            subject_key_id,
            wire_intermediates: chain.iter().take(wire_len).cloned().collect(),
        };
        let (not_before, not_after, path_len) = (ca.not_before, ca.not_after, ca.path_len);
        drop(parsed);
        Ok(Self {
            key,
            trust_domain: trust_domain.clone(),
            chain,
            not_before,
            not_after,
            path_len,
            template,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Our CA certificate.
    pub fn certificate(&self) -> &CertDer {
        &self.chain[0]
    }

    /// Our CA certificate first, then up to and including the root.
    pub fn chain(&self) -> &[CertDer] {
        &self.chain
    }

    /// The root(s) to publish in the trust bundle: the last certificate of the chain.
    pub fn trust_bundle_roots(&self) -> &[CertDer] {
        let start = self.chain.len().saturating_sub(1);
        self.chain.get(start..).unwrap_or(&[])
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Verifies the CSR's signature (proof of possession), then issues for its public key.
    /// Nothing but the key is taken from the CSR.
    pub fn issue_from_csr(
        &self,
        csr_der: &[u8],
        request: &SvidRequest<'_>,
        now: SystemTime,
    ) -> Result<IssuedSvid, X509Error> {
        let csr = verify_csr(csr_der)?;
        self.issue_for_verified_csr(&csr, request, now)
    }

    /// Issues for a CSR already verified with [`verify_csr`] (e.g. on another thread).
    pub fn issue_for_verified_csr(
        &self,
        csr: &VerifiedCsr,
        request: &SvidRequest<'_>,
        now: SystemTime,
    ) -> Result<IssuedSvid, X509Error> {
        // verify_csr already parsed and validated the key while checking the signature.
        let key = signature::parse_spki(csr.public_key_der())?;
        self.issue_leaf(&key, request, now)
    }

    /// Issues an X.509-SVID for a DER SubjectPublicKeyInfo, without a CSR (node SVIDs, and keys
    /// whose possession was proven some other way). The key is validated, not just copied.
    pub fn issue_for_public_key(
        &self,
        spki_der: &[u8],
        request: &SvidRequest<'_>,
        now: SystemTime,
    ) -> Result<IssuedSvid, X509Error> {
        let key = signature::parse_spki(spki_der)?;
        signature::validate_public_key(&key)?;
        self.issue_leaf(&key, request, now)
    }

    /// Signs an intermediate CA for `spki_der` below this authority and returns its chain
    /// (the new certificate first, then this authority's chain, root included), ready for
    /// [`Authority::from_chain`].
    pub fn issue_intermediate(
        &self,
        spki_der: &[u8],
        params: &CaParams,
        now: SystemTime,
    ) -> Result<Vec<CertDer>, X509Error> {
        if self.path_len == Some(0) {
            return Err(X509Error::CaPathLenForbidsIntermediate);
        }
        let key = signature::parse_spki(spki_der)?;
        signature::validate_public_key(&key)?;
        let serial = random_serial()?;
        let subject = ca_subject(params, &serial)?;
        let (not_before, not_after) = lifetime(now, params.ttl, Some(self.not_after))?;
        let subject_key_id = key_identifier(key.key_bits);
        // Below a CA with pathLen n, a new CA may allow at most n - 1.
        let path_len = match (self.path_len, params.path_len) {
            (Some(ours), Some(asked)) => Some(asked.min(ours.saturating_sub(1))),
            (Some(ours), None) => Some(ours.saturating_sub(1)),
            (None, asked) => asked,
        };
        let extensions = ca_extensions(
            &self.trust_domain,
            path_len,
            &subject_key_id,
            Some(&self.template.subject_key_id),
        );
        let tbs = encode_tbs(&TbsParts {
            serial: &asn1::unsigned_integer(&serial),
            signature_algorithm: &self.template.signature_algorithm,
            issuer: &self.template.issuer_name,
            not_before,
            not_after,
            subject: &subject,
            spki: key.spki_der,
            extensions: &[&extensions],
        })?;
        let cert = sign_tbs(&self.key, &self.template.signature_algorithm, &tbs)?;
        let mut chain = Vec::with_capacity(self.chain.len() + 1);
        chain.push(cert);
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }

    /// The leaf TBSCertificate written in one pass into one buffer: sizes first, then bytes.
    /// Everything per-CA comes from the template; only the fields in `LeafFields` vary.
    fn encode_leaf_tbs(&self, leaf: &LeafFields<'_>) -> Result<Vec<u8>, X509Error> {
        const VERSION_V3: &[u8] = &[0xa0, 0x03, 0x02, 0x01, 0x02];
        let (not_before, not_before_len) = asn1::encode_time(leaf.not_before)?;
        let (not_after, not_after_len) = asn1::encode_time(leaf.not_after)?;
        let validity = not_before.get(..not_before_len).unwrap_or(&[]);
        let expiry = not_after.get(..not_after_len).unwrap_or(&[]);

        // INTEGER: leading zero bytes dropped, a 0x00 prefix when the top bit is set.
        let skip = leaf.serial.iter().take_while(|b| **b == 0).count();
        let magnitude = leaf.serial.get(skip..).unwrap_or(&[]);
        let sign_pad = usize::from(magnitude.first().is_some_and(|b| *b >= 0x80));
        let serial_content_len = sign_pad + magnitude.len();

        let uri = leaf.spiffe_id.as_str().as_bytes();
        let names_len = asn1::tlv_size(uri.len())
            + leaf
                .dns_names
                .iter()
                .map(|d| asn1::tlv_size(d.len()))
                .sum::<usize>();
        let san_value_len = asn1::tlv_size(names_len);
        let san_extension_content_len =
            asn1::tlv_size(oid::SUBJECT_ALT_NAME.len()) + asn1::tlv_size(san_value_len);
        let ski_value_len = asn1::tlv_size(leaf.subject_key_id.len());
        let ski_extension_content_len =
            asn1::tlv_size(oid::SUBJECT_KEY_ID.len()) + asn1::tlv_size(ski_value_len);
        let extensions_len = self.template.leaf_static_extensions.len()
            + asn1::tlv_size(ski_extension_content_len)
            + asn1::tlv_size(san_extension_content_len);
        let validity_len = validity.len() + expiry.len();
        let body_len = VERSION_V3.len()
            + asn1::tlv_size(serial_content_len)
            + self.template.signature_algorithm.len()
            + self.template.issuer_name.len()
            + asn1::tlv_size(validity_len)
            + leaf_subject().len()
            + leaf.spki.len()
            + asn1::tlv_size(asn1::tlv_size(extensions_len));

        let mut out = Vec::with_capacity(asn1::tlv_size(body_len));
        asn1::push_header(&mut out, TAG_SEQUENCE, body_len);
        out.extend_from_slice(VERSION_V3);
        asn1::push_header(&mut out, asn1::TAG_INTEGER, serial_content_len);
        if sign_pad == 1 {
            out.push(0);
        }
        out.extend_from_slice(magnitude);
        out.extend_from_slice(&self.template.signature_algorithm);
        out.extend_from_slice(&self.template.issuer_name);
        asn1::push_header(&mut out, TAG_SEQUENCE, validity_len);
        out.extend_from_slice(validity);
        out.extend_from_slice(expiry);
        out.extend_from_slice(leaf_subject());
        out.extend_from_slice(leaf.spki);
        asn1::push_header(&mut out, 0xa3, asn1::tlv_size(extensions_len));
        asn1::push_header(&mut out, TAG_SEQUENCE, extensions_len);
        out.extend_from_slice(&self.template.leaf_static_extensions);
        asn1::push_header(&mut out, TAG_SEQUENCE, ski_extension_content_len);
        asn1::push_tlv(&mut out, asn1::TAG_OID, oid::SUBJECT_KEY_ID);
        asn1::push_header(&mut out, TAG_OCTET_STRING, ski_value_len);
        asn1::push_tlv(&mut out, TAG_OCTET_STRING, leaf.subject_key_id);
        asn1::push_header(&mut out, TAG_SEQUENCE, san_extension_content_len);
        asn1::push_tlv(&mut out, asn1::TAG_OID, oid::SUBJECT_ALT_NAME);
        asn1::push_header(&mut out, TAG_OCTET_STRING, san_value_len);
        asn1::push_header(&mut out, TAG_SEQUENCE, names_len);
        asn1::push_tlv(&mut out, 0x86, uri);
        for dns in leaf.dns_names {
            asn1::push_tlv(&mut out, 0x82, dns.as_bytes());
        }
        debug_assert_eq!(out.len(), asn1::tlv_size(body_len));
        Ok(out)
    }

    fn issue_leaf(
        &self,
        key: &PublicKeyRef<'_>,
        request: &SvidRequest<'_>,
        now: SystemTime,
    ) -> Result<IssuedSvid, X509Error> {
        let id = request.spiffe_id;
        if !id.is_member_of(&self.trust_domain) {
            return Err(X509Error::IdNotInTrustDomain(
                id.to_string(),
                self.trust_domain.clone(),
            ));
        }
        if id.is_root() {
            return Err(X509Error::RequestedRootPath(id.to_string()));
        }
        if now < self.not_before {
            return Err(X509Error::CaNotValidNow);
        }
        let (not_before, not_after) = lifetime(now, request.ttl, Some(self.not_after))?;
        for dns in request.dns_names {
            validate_dns_name(dns)?;
        }
        let serial = random_serial()?;
        let subject_key_id = key_identifier(key.key_bits);
        let tbs = self.encode_leaf_tbs(&LeafFields {
            serial: &serial,
            not_before,
            not_after,
            spki: key.spki_der,
            subject_key_id: &subject_key_id,
            spiffe_id: id,
            dns_names: request.dns_names,
        })?;
        let leaf = sign_tbs(&self.key, &self.template.signature_algorithm, &tbs)?;
        let mut chain = Vec::with_capacity(1 + self.template.wire_intermediates.len());
        chain.push(leaf);
        // A root signs leaves directly: nothing else goes on the wire.
        if self.chain.len() > 1 {
            chain.extend(self.template.wire_intermediates.iter().cloned());
        }
        Ok(IssuedSvid {
            spiffe_id: id.clone(),
            chain,
            not_before,
            not_after,
        })
    }
}

/// Checks what every signing certificate needs: cA = TRUE and keyCertSign.
pub(crate) fn check_signing_cert(cert: &ParsedCert<'_>) -> Result<(), X509Error> {
    if !cert.is_ca {
        return Err(X509Error::SigningCertNotCa);
    }
    if !cert.has_key_cert_sign() {
        return Err(X509Error::SigningCertNoKeyCertSign);
    }
    if let Some(oid) = &cert.unhandled_critical {
        return Err(X509Error::UnhandledCriticalExtension(oid.clone()));
    }
    Ok(())
}

/// X509-SVID §3.2: a signing certificate's SPIFFE ID, if any, is the trust domain ID (no path).
fn check_ca_trust_domain(ca: &ParsedCert<'_>, trust_domain: &TrustDomain) -> Result<(), X509Error> {
    for uri in ca.uris.iter().filter(|u| u.starts_with("spiffe://")) {
        let matches =
            SpiffeId::parse(uri).is_ok_and(|id| id.is_root() && id.is_member_of(trust_domain));
        if !matches {
            return Err(X509Error::CaTrustDomainMismatch(
                uri.clone(),
                trust_domain.clone(),
            ));
        }
    }
    Ok(())
}

/// Each certificate must be issued (name and signature) by the next, and the last must be a
/// self-signed CA.
fn check_chain_links(parsed: &[ParsedCert<'_>]) -> Result<(), X509Error> {
    for (index, pair) in parsed.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.issuer != parent.subject || child.is_signed_by(parent).is_err() {
            return Err(X509Error::CaChainBroken(index));
        }
        check_signing_cert(parent)?;
    }
    let root = parsed.last().ok_or(X509Error::EmptyChain)?;
    if !root.is_self_issued() || root.is_signed_by(root).is_err() {
        return Err(X509Error::CaChainNotRooted);
    }
    Ok(())
}

/// The fields of a TBSCertificate, each already encoded except the times.
pub(crate) struct TbsParts<'a> {
    /// The whole INTEGER element.
    pub(crate) serial: &'a [u8],
    pub(crate) signature_algorithm: &'a [u8],
    pub(crate) issuer: &'a [u8],
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) subject: &'a [u8],
    pub(crate) spki: &'a [u8],
    /// Encoded Extension elements (each slice may hold several); empty = no extensions field.
    pub(crate) extensions: &'a [&'a [u8]],
}

/// DER-encodes a v3 TBSCertificate.
pub(crate) fn encode_tbs(parts: &TbsParts<'_>) -> Result<Vec<u8>, X509Error> {
    const VERSION_V3: &[u8] = &[0xa0, 0x03, 0x02, 0x01, 0x02];
    let mut validity = Vec::with_capacity(34);
    asn1::push_time(&mut validity, parts.not_before)?;
    asn1::push_time(&mut validity, parts.not_after)?;
    let extensions_len: usize = parts.extensions.iter().map(|e| e.len()).sum();
    let mut body = Vec::with_capacity(
        64 + parts.serial.len()
            + parts.signature_algorithm.len()
            + parts.issuer.len()
            + parts.subject.len()
            + parts.spki.len()
            + extensions_len,
    );
    body.extend_from_slice(VERSION_V3);
    body.extend_from_slice(parts.serial);
    body.extend_from_slice(parts.signature_algorithm);
    body.extend_from_slice(parts.issuer);
    asn1::push_tlv(&mut body, TAG_SEQUENCE, &validity);
    body.extend_from_slice(parts.subject);
    body.extend_from_slice(parts.spki);
    if !parts.extensions.is_empty() {
        let list = asn1::constructed(TAG_SEQUENCE, parts.extensions);
        asn1::push_tlv(&mut body, 0xa3, &list);
    }
    Ok(asn1::tlv(TAG_SEQUENCE, &body))
}

/// Signs a TBSCertificate and wraps it into a Certificate.
pub(crate) fn sign_tbs(
    key: &SigningKey,
    signature_algorithm: &[u8],
    tbs: &[u8],
) -> Result<CertDer, X509Error> {
    let signature = key.sign_asn1(tbs)?;
    let bit_string_len = signature.len() + 1;
    let body_len = tbs.len() + signature_algorithm.len() + asn1::tlv_size(bit_string_len);
    let mut out = Vec::with_capacity(asn1::tlv_size(body_len));
    asn1::push_header(&mut out, TAG_SEQUENCE, body_len);
    out.extend_from_slice(tbs);
    out.extend_from_slice(signature_algorithm);
    asn1::push_header(&mut out, TAG_BIT_STRING, bit_string_len);
    out.push(0);
    out.extend_from_slice(&signature);
    Ok(CertDer(out))
}

/// A random positive serial of 128 bits (RFC 5280 §4.1.2.2 allows up to 20 octets).
pub(crate) fn random_serial() -> Result<[u8; 16], X509Error> {
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| X509Error::Key(crate::keys::KeyError::Generate))?;
    // Zero is not a valid serial; with 128 random bits this is for form's sake.
    if serial.iter().all(|b| *b == 0) {
        serial[15] = 1;
    }
    Ok(serial)
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
pub(crate) fn key_identifier(key_bits: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key_bits)
        .as_ref()
        .to_vec()
}

/// notBefore = now - skew, notAfter = now + ttl capped by `cap`; whole seconds.
fn lifetime(
    now: SystemTime,
    ttl: Duration,
    cap: Option<SystemTime>,
) -> Result<(SystemTime, SystemTime), X509Error> {
    if ttl < Duration::from_secs(1) {
        return Err(X509Error::ZeroTtl);
    }
    let now = asn1::truncate_to_seconds(now)?;
    let not_before = now
        .checked_sub(CLOCK_SKEW_BACKDATE)
        .ok_or(X509Error::TimeOutOfRange)?;
    let requested_end = now
        .checked_add(Duration::from_secs(ttl.as_secs()))
        .ok_or(X509Error::TimeOutOfRange)?;
    let not_after = match cap {
        Some(cap) => requested_end.min(cap),
        None => requested_end,
    };
    if not_after <= now {
        return Err(X509Error::CaNotValidNow);
    }
    Ok((not_before, not_after))
}

fn ca_subject(params: &CaParams, serial: &[u8]) -> Result<Vec<u8>, X509Error> {
    check_name_value(&params.organization, "organization")?;
    let serial_hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let subject = match &params.common_name {
        Some(cn) => {
            check_name_value(cn, "common name")?;
            asn1::name(&[
                (oid::ORGANIZATION, TAG_UTF8_STRING, &params.organization),
                (oid::COMMON_NAME, TAG_UTF8_STRING, cn),
            ])
        }
        None => asn1::name(&[
            (oid::ORGANIZATION, TAG_UTF8_STRING, &params.organization),
            (oid::SERIAL_NUMBER, TAG_PRINTABLE_STRING, &serial_hex),
        ]),
    };
    Ok(subject)
}

/// RFC 5280 upper bounds are 64 characters for O and CN.
fn check_name_value(value: &str, what: &'static str) -> Result<(), X509Error> {
    if value.is_empty() || value.chars().count() > 64 || value.chars().any(char::is_control) {
        return Err(X509Error::InvalidSubjectName(what));
    }
    Ok(())
}

fn leaf_subject() -> &'static [u8] {
    // SEQUENCE { SET { SEQUENCE { O, UTF8String "SPIFFE" } } }
    const SUBJECT: &[u8] = &[
        0x30, 0x11, 0x31, 0x0f, 0x30, 0x0d, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x06, b'S', b'P',
        b'I', b'F', b'F', b'E',
    ];
    debug_assert_eq!(
        SUBJECT,
        asn1::name(&[(
            oid::ORGANIZATION,
            TAG_UTF8_STRING,
            LEAF_SUBJECT_ORGANIZATION
        )])
    );
    SUBJECT
}

/// basicConstraints cA=FALSE, keyUsage digitalSignature (both critical), EKU serverAuth+clientAuth, AKI.
fn leaf_static_extensions(authority_key_id: &[u8]) -> Vec<u8> {
    let basic_constraints = asn1::extension(oid::BASIC_CONSTRAINTS, true, &[TAG_SEQUENCE, 0x00]);
    let key_usage = asn1::extension(oid::KEY_USAGE, true, &[TAG_BIT_STRING, 0x02, 0x07, 0x80]);
    let ext_key_usage = asn1::extension(
        oid::EXT_KEY_USAGE,
        false,
        &asn1::sequence(&[
            &asn1::tlv(asn1::TAG_OID, oid::SERVER_AUTH),
            &asn1::tlv(asn1::TAG_OID, oid::CLIENT_AUTH),
        ]),
    );
    let aki = authority_key_id_extension(authority_key_id);
    [basic_constraints, key_usage, ext_key_usage, aki].concat()
}

fn authority_key_id_extension(authority_key_id: &[u8]) -> Vec<u8> {
    // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
    asn1::extension(
        oid::AUTHORITY_KEY_ID,
        false,
        &asn1::sequence(&[&asn1::tlv(0x80, authority_key_id)]),
    )
}

/// basicConstraints cA=TRUE (+pathLen), keyUsage keyCertSign+cRLSign (critical), SKI, AKI, URI SAN.
fn ca_extensions(
    trust_domain: &TrustDomain,
    path_len: Option<u8>,
    subject_key_id: &[u8],
    authority_key_id: Option<&[u8]>,
) -> Vec<u8> {
    let ca_true: &[u8] = &[asn1::TAG_BOOLEAN, 0x01, 0xff];
    let constraints = match path_len {
        Some(n) => asn1::sequence(&[ca_true, &asn1::unsigned_integer(&[n])]),
        None => asn1::sequence(&[ca_true]),
    };
    let mut out = asn1::extension(oid::BASIC_CONSTRAINTS, true, &constraints);
    out.extend(asn1::extension(
        oid::KEY_USAGE,
        true,
        &[TAG_BIT_STRING, 0x02, 0x01, 0x06],
    ));
    out.extend(asn1::extension(
        oid::SUBJECT_KEY_ID,
        false,
        &asn1::tlv(TAG_OCTET_STRING, subject_key_id),
    ));
    if let Some(aki) = authority_key_id {
        out.extend(authority_key_id_extension(aki));
    }
    let san = asn1::sequence(&[&asn1::tlv(0x86, trust_domain.id_string().as_bytes())]);
    out.extend(asn1::extension(oid::SUBJECT_ALT_NAME, false, &san));
    out
}
