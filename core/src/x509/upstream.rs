//! An upstream CA the user owns, handed over the way cert-manager writes a CA certificate's
//! Secret (`kubernetes.io/tls` plus `ca.crt`): `tls.crt` is the CA certificate wimsey signs with,
//! optionally followed by the intermediates above it; `tls.key` its private key (PKCS#8 or
//! SEC1); `ca.crt` the root(s) relying parties trust, which become the bundle's X.509
//! authorities. [`load_upstream_ca`] reads all of it with explicit bounds and says precisely
//! what is wrong with a Secret it cannot use.

use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::asn1::rfc3339;
use super::authority::Authority;
use super::cert::parse_certificate;
use super::pem::decode_certificates;
use super::signature::KeyKind;
use super::{CertDer, MAX_CHAIN_LEN, X509Error};
use crate::keys::{KeyAlgorithm, SigningKey};
use crate::spiffe_id::TrustDomain;

/// The Secret keys, as cert-manager names them.
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
/// The most bytes read from any one of them; a CA chain or a key is a few KiB.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;
/// The most roots `ca.crt` may list.
pub const MAX_ROOTS: usize = 16;

/// The Secret's three values as found (None: the key is absent).
#[derive(Clone, Copy, Default)]
pub struct UpstreamFiles<'a> {
    pub tls_crt: Option<&'a [u8]>,
    pub tls_key: Option<&'a [u8]>,
    pub ca_crt: Option<&'a [u8]>,
}

impl std::fmt::Debug for UpstreamFiles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Sizes only: tls.key is a private key.
        let size = |v: Option<&[u8]>| v.map(<[u8]>::len);
        f.debug_struct("UpstreamFiles")
            .field("tls_crt", &size(self.tls_crt))
            .field("tls_key", &size(self.tls_key))
            .field("ca_crt", &size(self.ca_crt))
            .finish()
    }
}

/// Why an upstream CA Secret cannot be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum UpstreamCaError {
    #[error("the Secret has no {0:?}")]
    Missing(&'static str),
    #[error("{field:?} is {size} bytes; the limit is {MAX_FIELD_BYTES}")]
    TooLarge { field: &'static str, size: usize },
    #[error("{field:?} cannot be read: {reason}")]
    Unreadable { field: &'static str, reason: String },
    #[error("{CA_CRT:?} lists {0} certificates; the limit is {MAX_ROOTS}")]
    TooManyRoots(usize),
    #[error("{TLS_CRT:?} holds {0} certificates; the limit is {limit}", limit = MAX_CHAIN_LEN - 1)]
    ChainTooLong(usize),
    #[error("the CA key is {0}; wimsey signs with ECDSA P-256 or P-384 keys")]
    UnsupportedKey(String),
    #[error("{TLS_KEY:?} is not the private key of the certificate in {TLS_CRT:?}")]
    KeyMismatch,
    #[error("{TLS_CRT:?} is not a CA certificate: {0}")]
    NotCa(String),
    #[error("{TLS_CRT:?} expired at {0}")]
    Expired(String),
    #[error("{TLS_CRT:?} is not valid before {0}")]
    NotYetValid(String),
    #[error(
        "{TLS_CRT:?} ends at {not_after}, sooner than the longest lifetime it signs ({needed_seconds}s) from now"
    )]
    EndsTooSoon {
        not_after: String,
        needed_seconds: u64,
    },
    #[error("{TLS_CRT:?} is for another trust domain: {0}")]
    OtherTrustDomain(String),
    #[error("{TLS_CRT:?} does not chain to a root in {CA_CRT:?}: {0}")]
    NotChained(String),
}

impl UpstreamCaError {
    /// A stable, low-cardinality label for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamCaError::Missing(_) => "missing",
            UpstreamCaError::TooLarge { .. } => "too_large",
            UpstreamCaError::Unreadable { .. } => "unreadable",
            UpstreamCaError::TooManyRoots(_) => "too_many_roots",
            UpstreamCaError::ChainTooLong(_) => "chain_too_long",
            UpstreamCaError::UnsupportedKey(_) => "unsupported_key",
            UpstreamCaError::KeyMismatch => "key_mismatch",
            UpstreamCaError::NotCa(_) => "not_ca",
            UpstreamCaError::Expired(_) => "expired",
            UpstreamCaError::NotYetValid(_) => "not_yet_valid",
            UpstreamCaError::EndsTooSoon { .. } => "ends_too_soon",
            UpstreamCaError::OtherTrustDomain(_) => "other_trust_domain",
            UpstreamCaError::NotChained(_) => "not_chained",
        }
    }
}

/// A usable upstream CA: the chain wimsey signs under and the roots it publishes.
pub struct UpstreamCa {
    key_pkcs8: Zeroizing<Vec<u8>>,
    /// The CA certificate first, then up to and including the root it chains to.
    chain: Vec<CertDer>,
    /// `ca.crt`: every root to publish (the chain's root among them).
    roots: Vec<CertDer>,
    /// The earliest notAfter of the chain: nothing signed may outlive it.
    not_after: SystemTime,
}

impl std::fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("UpstreamCa")
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamCa {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain && self.roots == other.roots && self.key_pkcs8 == other.key_pkcs8
    }
}

impl UpstreamCa {
    /// The CA certificate wimsey signs with.
    pub fn certificate(&self) -> &CertDer {
        &self.chain[0]
    }

    /// The root this CA chains to.
    pub fn anchor(&self) -> &CertDer {
        &self.chain[self.chain.len() - 1]
    }

    pub fn roots(&self) -> &[CertDer] {
        &self.roots
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether it may still sign something that lives `longest`: it is valid now and until then.
    pub fn usable_at(&self, longest: Duration, now: SystemTime) -> bool {
        now.checked_add(longest)
            .is_some_and(|end| end <= self.not_after)
    }

    /// The error for a CA that can no longer sign `longest` (it ends before).
    pub fn ends_too_soon(&self, longest: Duration) -> UpstreamCaError {
        UpstreamCaError::EndsTooSoon {
            not_after: rfc3339(self.not_after),
            needed_seconds: longest.as_secs(),
        }
    }

    /// The signing [`Authority`]; SVIDs it issues carry the chain without the root.
    pub fn authority(
        &self,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<Authority, X509Error> {
        let key = SigningKey::from_pkcs8_any(&self.key_pkcs8)?;
        Authority::from_chain(key, self.chain.clone(), trust_domain, now)
    }
}

/// Reads an upstream CA Secret's values: every certificate parsed, the key of a supported type
/// and matching `tls.crt`'s first certificate, which must be a CA for `trust_domain` (its SPIFFE
/// ID, if any, the trust domain's), valid now and for `longest` more (the longest lifetime it
/// will sign), and chain through `tls.crt` to a root in `ca.crt` (or to a self-signed last
/// certificate of `tls.crt`, which is then published too).
pub fn load_upstream_ca(
    files: UpstreamFiles<'_>,
    trust_domain: &TrustDomain,
    longest: Duration,
    now: SystemTime,
) -> Result<UpstreamCa, UpstreamCaError> {
    let chain_pem = text(TLS_CRT, files.tls_crt)?;
    let key_pem = Zeroizing::new(text(TLS_KEY, files.tls_key)?.to_owned());
    let roots_pem = text(CA_CRT, files.ca_crt)?;
    let unreadable = |field: &'static str| {
        move |e: X509Error| UpstreamCaError::Unreadable {
            field,
            reason: e.to_string(),
        }
    };
    let mut chain = decode_certificates(chain_pem).map_err(unreadable(TLS_CRT))?;
    if chain.len() >= MAX_CHAIN_LEN {
        return Err(UpstreamCaError::ChainTooLong(chain.len()));
    }
    let mut roots = decode_certificates(roots_pem).map_err(unreadable(CA_CRT))?;
    if roots.len() > MAX_ROOTS {
        return Err(UpstreamCaError::TooManyRoots(roots.len()));
    }
    for root in &roots {
        parse_certificate(root.as_bytes()).map_err(unreadable(CA_CRT))?;
    }

    let (algorithm, not_before, not_after) = {
        let ca = parse_certificate(chain[0].as_bytes()).map_err(|e| match e {
            X509Error::UnsupportedAlgorithm(what) => UpstreamCaError::UnsupportedKey(what.into()),
            other => unreadable(TLS_CRT)(other),
        })?;
        let algorithm = match ca.public_key.kind {
            KeyKind::EcP256 => KeyAlgorithm::EcdsaP256,
            KeyKind::EcP384 => KeyAlgorithm::EcdsaP384,
            KeyKind::Rsa => return Err(UpstreamCaError::UnsupportedKey("RSA".to_owned())),
        };
        (algorithm, ca.not_before, ca.not_after)
    };
    if now < not_before {
        return Err(UpstreamCaError::NotYetValid(rfc3339(not_before)));
    }
    if now > not_after {
        return Err(UpstreamCaError::Expired(rfc3339(not_after)));
    }
    if now.checked_add(longest).is_none_or(|end| end > not_after) {
        return Err(UpstreamCaError::EndsTooSoon {
            not_after: rfc3339(not_after),
            needed_seconds: longest.as_secs(),
        });
    }
    let key = load_key(&key_pem, algorithm)?;

    let anchor = anchor_of(&chain, &roots)?;
    if let Some(root) = anchor {
        chain.push(root);
    } else if let Some(last) = chain.last()
        && !roots.contains(last)
    {
        roots.push(last.clone());
    }
    // Every certificate above ours must be valid as long as what we sign: the earliest end in
    // the chain is the CA's end, and the path length must leave room for our leaves.
    let mut not_after = not_after;
    for (depth, cert) in chain.iter().enumerate().skip(1) {
        let parsed =
            parse_certificate(cert.as_bytes()).map_err(|e| UpstreamCaError::Unreadable {
                field: TLS_CRT,
                reason: e.to_string(),
            })?;
        let name = if depth + 1 == chain.len() {
            "the root".to_owned()
        } else {
            format!("intermediate {depth} of tls.crt")
        };
        if now < parsed.not_before || now > parsed.not_after {
            return Err(UpstreamCaError::NotChained(format!(
                "{name} is not valid now (notBefore {}, notAfter {})",
                rfc3339(parsed.not_before),
                rfc3339(parsed.not_after)
            )));
        }
        // A CA `depth` levels up may have at most pathLen CAs below it; ours is one of them.
        if parsed
            .path_len
            .is_some_and(|limit| usize::from(limit) < depth)
        {
            return Err(UpstreamCaError::NotChained(format!(
                "{name} allows {} CA certificate(s) below it; tls.crt's CA is {depth} level(s) down",
                parsed.path_len.unwrap_or_default()
            )));
        }
        not_after = not_after.min(parsed.not_after);
    }
    if now.checked_add(longest).is_none_or(|end| end > not_after) {
        return Err(UpstreamCaError::EndsTooSoon {
            not_after: rfc3339(not_after),
            needed_seconds: longest.as_secs(),
        });
    }
    let key_pkcs8 = key.pkcs8_der();
    Authority::from_chain(key, chain.clone(), trust_domain, now).map_err(|e| match e {
        X509Error::CaKeyMismatch => UpstreamCaError::KeyMismatch,
        X509Error::CaNotCa | X509Error::CaNoKeyCertSign => UpstreamCaError::NotCa(e.to_string()),
        X509Error::CaTrustDomainMismatch(id, _) => UpstreamCaError::OtherTrustDomain(format!(
            "its SPIFFE ID is {id}, the trust domain is {trust_domain}"
        )),
        X509Error::CaChainBroken(_) | X509Error::CaChainNotRooted => {
            UpstreamCaError::NotChained(e.to_string())
        }
        other => UpstreamCaError::NotCa(other.to_string()),
    })?;
    Ok(UpstreamCa {
        key_pkcs8,
        chain,
        roots,
        not_after,
    })
}

/// A field's text, bounded.
fn text<'a>(field: &'static str, value: Option<&'a [u8]>) -> Result<&'a str, UpstreamCaError> {
    let value = value.ok_or(UpstreamCaError::Missing(field))?;
    if value.len() > MAX_FIELD_BYTES {
        return Err(UpstreamCaError::TooLarge {
            field,
            size: value.len(),
        });
    }
    std::str::from_utf8(value).map_err(|_| UpstreamCaError::Unreadable {
        field,
        reason: "not UTF-8 text".to_owned(),
    })
}

/// The one private key block of `tls.key`: PKCS#8 or SEC1 of the certificate's curve.
fn load_key(pem: &str, algorithm: KeyAlgorithm) -> Result<SigningKey, UpstreamCaError> {
    let unreadable = |reason: String| UpstreamCaError::Unreadable {
        field: TLS_KEY,
        reason,
    };
    let mut blocks = pem_blocks(pem).map_err(unreadable)?.into_iter();
    let (label, der) = match (blocks.next(), blocks.next()) {
        (Some(block), None) => block,
        (None, _) => return Err(unreadable("no private key block".to_owned())),
        (Some(_), Some(_)) => return Err(unreadable("more than one PEM block".to_owned())),
    };
    match label.as_str() {
        "PRIVATE KEY" | "EC PRIVATE KEY" => SigningKey::from_private_key_der(algorithm, &der)
            .map_err(|_| UpstreamCaError::KeyMismatch),
        "RSA PRIVATE KEY" => Err(UpstreamCaError::UnsupportedKey("RSA".to_owned())),
        "ENCRYPTED PRIVATE KEY" => Err(unreadable("the key is encrypted".to_owned())),
        other => Err(unreadable(format!(
            "a {other:?} block is not a private key"
        ))),
    }
}

fn pem_blocks(text: &str) -> Result<Vec<super::pem::PemBlock>, String> {
    super::pem::decode_blocks(text).map_err(|e| e.to_string())
}

/// The root in `roots` that issued the last certificate of `chain`, or None when that
/// certificate is itself self-signed.
fn anchor_of(chain: &[CertDer], roots: &[CertDer]) -> Result<Option<CertDer>, UpstreamCaError> {
    let Some(last) = chain.last() else {
        return Err(UpstreamCaError::Missing(TLS_CRT));
    };
    let last_parsed =
        parse_certificate(last.as_bytes()).map_err(|e| UpstreamCaError::Unreadable {
            field: TLS_CRT,
            reason: e.to_string(),
        })?;
    if last_parsed.is_self_issued() && last_parsed.is_signed_by(&last_parsed).is_ok() {
        return Ok(None);
    }
    for root in roots {
        let Ok(parsed) = parse_certificate(root.as_bytes()) else {
            continue;
        };
        if last_parsed.issuer == parsed.subject && last_parsed.is_signed_by(&parsed).is_ok() {
            if !(parsed.is_self_issued() && parsed.is_signed_by(&parsed).is_ok()) {
                return Err(UpstreamCaError::NotChained(
                    "the issuing certificate in ca.crt is not a self-signed root; put the intermediates in tls.crt".to_owned(),
                ));
            }
            return Ok(Some(root.clone()));
        }
    }
    Err(UpstreamCaError::NotChained(
        "no certificate in ca.crt issued the last certificate of tls.crt".to_owned(),
    ))
}

/// A user's PKI for tests (this crate's and, with the `test-pki` feature, others'): a root, and
/// intermediates under it as the values of an upstream CA Secret.
#[cfg(any(test, feature = "test-pki"))]
pub mod test_pki {
    use std::time::{Duration, SystemTime};

    use zeroize::Zeroizing;

    use crate::keys::{KeyAlgorithm, SigningKey};
    use crate::spiffe_id::TrustDomain;
    use crate::x509::pem::{encode_certificates, encode_private_key};
    use crate::x509::{Authority, CaParams, CertDer};

    /// The PEM values of one upstream CA Secret: `tls.crt`, `tls.key`, `ca.crt`.
    #[allow(missing_debug_implementations)] // holds a private key
    #[derive(Clone)]
    pub struct SecretValues {
        pub tls_crt: String,
        pub tls_key: Zeroizing<String>,
        pub ca_crt: String,
        /// The intermediate, DER.
        pub certificate: CertDer,
    }

    impl SecretValues {
        pub fn files(&self) -> super::UpstreamFiles<'_> {
            super::UpstreamFiles {
                tls_crt: Some(self.tls_crt.as_bytes()),
                tls_key: Some(self.tls_key.as_bytes()),
                ca_crt: Some(self.ca_crt.as_bytes()),
            }
        }
    }

    #[allow(missing_debug_implementations)] // holds the root's key
    pub struct UserPki {
        root: Authority,
    }

    impl UserPki {
        /// A root for `trust_domain` valid for a year.
        pub fn new(trust_domain: &TrustDomain) -> Self {
            let params = CaParams::new("user root", Duration::from_secs(365 * 86400));
            let root = Authority::generate_root(
                trust_domain,
                KeyAlgorithm::EcdsaP256,
                &params,
                SystemTime::now(),
            )
            .expect("root");
            Self { root }
        }

        pub fn root(&self) -> &CertDer {
            self.root.certificate()
        }

        /// A fresh 90-day intermediate under the root, as cert-manager writes a CA Certificate's
        /// Secret: the intermediate in `tls.crt`, its key in `tls.key`, the root in `ca.crt`.
        pub fn intermediate(&self) -> SecretValues {
            let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
            let params = CaParams::new("user intermediate", Duration::from_secs(90 * 86400));
            let chain = self
                .root
                .issue_intermediate(&key.public_key_spki_der(), &params, SystemTime::now())
                .expect("intermediate");
            let certificate = chain.first().cloned().expect("intermediate first");
            SecretValues {
                tls_crt: encode_certificates(std::slice::from_ref(&certificate)).expect("pem"),
                tls_key: encode_private_key(&key.pkcs8_der()).expect("pem"),
                ca_crt: encode_certificates(std::slice::from_ref(self.root())).expect("pem"),
                certificate,
            }
        }
    }
}
