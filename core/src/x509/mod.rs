//! The signing authority and X.509-SVIDs (SPIFFE X509-SVID standard; reference §2).
//!
//! - [`Authority`]: a CA, either a self-signed root or an intermediate loaded from an upstream
//!   chain, that issues X.509-SVIDs from a CSR ([`Authority::issue_from_csr`]) or from a public
//!   key ([`Authority::issue_for_public_key`]). Everything that does not change per certificate is
//!   encoded once when the authority is built.
//! - [`verify_svid`]: peer validation in go-spiffe's order, using only the bundle of the peer's
//!   own trust domain, with an RFC 5280 path validation subset.
//! - [`parse_svid_with_key`]: checks an SVID received together with its private key.
//! - [`build_csr`]: the node side (the CSI plugin) makes keys and CSRs.
//! - [`pem`]: PEM helpers for certificates and PKCS#8 keys.
//!
//! The current time is always a parameter; nothing here reads the clock.

mod asn1;
mod authority;
mod cert;
mod csr;
pub mod pem;
mod san;
mod signature;
pub mod upstream;
mod verify;

#[cfg(test)]
mod test_builder;

pub use authority::{Authority, CLOCK_SKEW_BACKDATE, CaParams, IssuedSvid, SvidRequest};
pub use cert::certificate_validity;
pub use csr::{VerifiedCsr, build_csr, verify_csr};
pub use verify::{SvidWithKey, VerifiedSvid, parse_svid_with_key, verify_svid, verify_svid_der};

use crate::keys::KeyError;
use crate::spiffe_id::{SpiffeIdError, TrustDomain};

/// The most certificates we accept in a chain or path (leaf, intermediates, root).
pub const MAX_CHAIN_LEN: usize = 16;

/// One DER-encoded certificate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CertDer(Vec<u8>);

impl CertDer {
    pub fn new(der: Vec<u8>) -> Self {
        Self(der)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl AsRef<[u8]> for CertDer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for CertDer {
    fn from(der: Vec<u8>) -> Self {
        Self(der)
    }
}

impl std::fmt::Debug for CertDer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertDer({} bytes)", self.0.len())
    }
}

/// Concatenates certificates into one buffer: the Workload API's chain and bundle format.
pub fn concat_der<C: AsRef<[u8]>>(certs: &[C]) -> Vec<u8> {
    let mut out = Vec::with_capacity(certs.iter().map(|c| c.as_ref().len()).sum());
    for cert in certs {
        out.extend_from_slice(cert.as_ref());
    }
    out
}

/// Splits concatenated DER certificates into single certificates (structure only; each one is
/// fully parsed where it is used).
pub fn split_der(concatenated: &[u8]) -> Result<Vec<CertDer>, X509Error> {
    Ok(asn1::split_concatenated(concatenated)?
        .into_iter()
        .map(|c| CertDer(c.to_vec()))
        .collect())
}

/// Everything that can go wrong in this module. Messages name the rule that failed, in go-spiffe's
/// words where it has them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    // ---- input structure ----
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("PEM: {0}")]
    Pem(String),
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(&'static str),
    #[error("certificate has more than one {0} extension")]
    DuplicateExtension(&'static str),
    #[error("time is outside the range a certificate can encode")]
    TimeOutOfRange,
    #[error("chain has {0} certificates; the limit is {MAX_CHAIN_LEN}")]
    ChainTooLong(usize),

    // ---- SVID leaf rules (go-spiffe x509svid wording) ----
    #[error("empty certificates chain")]
    EmptyChain,
    #[error("could not get SPIFFE ID: leaf certificate contains no URI SAN")]
    NoUriSan,
    #[error("could not get SPIFFE ID: leaf certificate contains more than one URI SAN")]
    MultipleUriSans,
    #[error("could not get SPIFFE ID: {0}")]
    InvalidSpiffeId(SpiffeIdError),
    #[error("leaf certificate with CA flag set to true")]
    LeafIsCa,
    #[error("leaf certificate with KeyCertSign key usage")]
    LeafKeyCertSign,
    #[error("leaf certificate with KeyCrlSign key usage")]
    LeafCrlSign,
    #[error("leaf certificate must have 'digitalSignature' set as key usage")]
    LeafMissingDigitalSignature,
    #[error("leaf certificate SPIFFE ID must have a non-root path")]
    LeafRootPath,
    #[error("signing certificate must have CA flag set to true")]
    SigningCertNotCa,
    #[error("signing certificate must have 'keyCertSign' set as key usage")]
    SigningCertNoKeyCertSign,
    #[error("leaf certificate does not match private key")]
    KeyMismatch,

    // ---- trust ----
    #[error("could not get X509 bundle: no X.509 bundle found for trust domain: \"{0}\"")]
    NoBundle(TrustDomain),
    #[error("could not verify leaf certificate: x509: certificate signed by unknown authority")]
    UnknownAuthority,
    #[error("could not verify leaf certificate: x509: certificate signature is invalid")]
    BadSignature,
    #[error(
        "could not verify leaf certificate: x509: certificate has expired (chain position {0})"
    )]
    Expired(usize),
    #[error(
        "could not verify leaf certificate: x509: certificate is not yet valid (chain position {0})"
    )]
    NotYetValid(usize),
    #[error(
        "could not verify leaf certificate: x509: too many intermediates for path length constraint"
    )]
    PathLenExceeded,
    #[error(
        "could not verify leaf certificate: x509: the leaf name {0:?} violates a name constraint of a CA in the chain"
    )]
    NameConstraintViolation(String),
    #[error(
        "could not verify leaf certificate: x509: a CA in the chain has name constraints on name types other than URI and DNS, which this verifier does not evaluate"
    )]
    UnsupportedNameConstraint,
    #[error("could not verify leaf certificate: x509: unhandled critical extension {0}")]
    UnhandledCriticalExtension(String),

    // ---- authority and issuance ----
    #[error("CSR signature does not verify: no proof of possession of the private key")]
    CsrSignature,
    #[error("CA private key does not match the CA certificate's public key")]
    CaKeyMismatch,
    #[error("CA certificate is not a CA: basicConstraints cA must be true")]
    CaNotCa,
    #[error("CA certificate lacks the keyCertSign key usage")]
    CaNoKeyCertSign,
    #[error("CA certificate is not valid at this time (notBefore/notAfter)")]
    CaNotValidNow,
    #[error("CA chain is broken: certificate {0} is not issued by certificate {next}", next = .0 + 1)]
    CaChainBroken(usize),
    #[error("CA chain does not end at a self-signed root")]
    CaChainNotRooted,
    #[error(
        "CA certificate's SPIFFE ID {0} is not the trust domain ID of {1} (it must have no path)"
    )]
    CaTrustDomainMismatch(String, TrustDomain),
    #[error("the CA's path length constraint does not allow issuing another CA")]
    CaPathLenForbidsIntermediate,
    #[error("SPIFFE ID {0} is not in the authority's trust domain {1}")]
    IdNotInTrustDomain(String, TrustDomain),
    #[error("an X.509-SVID needs a SPIFFE ID with a non-root path, got {0}")]
    RequestedRootPath(String),
    #[error("invalid DNS name {0:?} for a DNS SAN")]
    InvalidDnsName(String),
    #[error("requested TTL must be at least one second")]
    ZeroTtl,
    #[error("invalid subject name: {0}")]
    InvalidSubjectName(&'static str),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl X509Error {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            X509Error::Malformed(_) => "malformed",
            X509Error::Pem(_) => "pem",
            X509Error::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            X509Error::DuplicateExtension(_) => "duplicate_extension",
            X509Error::TimeOutOfRange => "time_out_of_range",
            X509Error::ChainTooLong(_) => "chain_too_long",
            X509Error::EmptyChain => "empty_chain",
            X509Error::NoUriSan => "no_uri_san",
            X509Error::MultipleUriSans => "multiple_uri_sans",
            X509Error::InvalidSpiffeId(_) => "invalid_spiffe_id",
            X509Error::LeafIsCa => "leaf_is_ca",
            X509Error::LeafKeyCertSign => "leaf_key_cert_sign",
            X509Error::LeafCrlSign => "leaf_crl_sign",
            X509Error::LeafMissingDigitalSignature => "leaf_missing_digital_signature",
            X509Error::LeafRootPath => "leaf_root_path",
            X509Error::SigningCertNotCa => "signing_cert_not_ca",
            X509Error::SigningCertNoKeyCertSign => "signing_cert_no_key_cert_sign",
            X509Error::KeyMismatch => "key_mismatch",
            X509Error::NoBundle(_) => "no_bundle",
            X509Error::UnknownAuthority => "unknown_authority",
            X509Error::BadSignature => "bad_signature",
            X509Error::Expired(_) => "expired",
            X509Error::NotYetValid(_) => "not_yet_valid",
            X509Error::PathLenExceeded => "path_len_exceeded",
            X509Error::NameConstraintViolation(_) => "name_constraint_violation",
            X509Error::UnsupportedNameConstraint => "unsupported_name_constraint",
            X509Error::UnhandledCriticalExtension(_) => "unhandled_critical_extension",
            X509Error::CsrSignature => "csr_signature",
            X509Error::CaKeyMismatch => "ca_key_mismatch",
            X509Error::CaNotCa => "ca_not_ca",
            X509Error::CaNoKeyCertSign => "ca_no_key_cert_sign",
            X509Error::CaNotValidNow => "ca_not_valid_now",
            X509Error::CaChainBroken(_) => "ca_chain_broken",
            X509Error::CaChainNotRooted => "ca_chain_not_rooted",
            X509Error::CaTrustDomainMismatch(..) => "ca_trust_domain_mismatch",
            X509Error::CaPathLenForbidsIntermediate => "ca_path_len_forbids_intermediate",
            X509Error::IdNotInTrustDomain(..) => "id_not_in_trust_domain",
            X509Error::RequestedRootPath(_) => "requested_root_path",
            X509Error::InvalidDnsName(_) => "invalid_dns_name",
            X509Error::ZeroTtl => "zero_ttl",
            X509Error::InvalidSubjectName(_) => "invalid_subject_name",
            X509Error::Key(e) => e.label(),
        }
    }
}

#[cfg(test)]
mod tests;
