//! X.509-SVID validation (X509-SVID §5, reference §2.2) in go-spiffe's order:
//! chain non-empty -> exactly one URI SAN holding a valid SPIFFE ID -> leaf is not a CA, has no
//! keyCertSign/cRLSign, has digitalSignature, has a non-root path -> the bundle of the ID's own
//! trust domain only (never a pool of bundles) -> RFC 5280 path validation subset.

use std::time::SystemTime;

use super::authority::check_signing_cert;
use super::cert::{NameRules, ParsedCert, parse_certificate};
use super::{CertDer, MAX_CHAIN_LEN, X509Error, asn1};
use crate::keys::SigningKey;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// A peer's X.509-SVID that validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    pub spiffe_id: SpiffeId,
    /// The leaf's DNS SANs, if any.
    pub dns_names: Vec<String>,
    /// The validated path: the leaf, the intermediates used, then the bundle root.
    pub chain: Vec<CertDer>,
    /// The leaf's notAfter: when this identity ends.
    pub not_after: SystemTime,
}

/// Validates a peer's chain (leaf first, then intermediates in any order) using only the bundle
/// that `bundle_for` returns for the leaf's trust domain. `now` is the validation time.
pub fn verify_svid<'b, C, R, B>(
    chain: &[C],
    bundle_for: B,
    now: SystemTime,
) -> Result<VerifiedSvid, X509Error>
where
    C: AsRef<[u8]>,
    R: AsRef<[u8]> + 'b,
    B: Fn(&TrustDomain) -> Option<&'b [R]>,
{
    let Some((leaf_der, intermediate_ders)) = chain.split_first() else {
        return Err(X509Error::EmptyChain);
    };
    if chain.len() > MAX_CHAIN_LEN {
        return Err(X509Error::ChainTooLong(chain.len()));
    }
    let leaf = parse_certificate(leaf_der.as_ref())?;
    let spiffe_id = check_leaf(&leaf)?;

    let trust_domain = spiffe_id.trust_domain();
    let roots = bundle_for(&trust_domain).ok_or(X509Error::NoBundle(trust_domain))?;

    let intermediates = intermediate_ders
        .iter()
        .map(|c| parse_certificate(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let roots = roots
        .iter()
        .map(|c| parse_certificate(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;

    check_validity(&leaf, 0, now)?;
    if let Some(oid) = &leaf.unhandled_critical {
        return Err(X509Error::UnhandledCriticalExtension(oid.clone()));
    }
    let mut search = PathSearch {
        leaf_trust_domain: spiffe_id.trust_domain_name(),
        leaf_dns_names: &leaf.dns_names,
        intermediates: &intermediates,
        roots: &roots,
        now,
        first_error: None,
    };
    let mut used = vec![false; intermediates.len()];
    let mut path = Vec::new();
    if !search.extend(&leaf, &mut used, &mut path) {
        return Err(search.first_error.unwrap_or(X509Error::UnknownAuthority));
    }
    let mut verified = Vec::with_capacity(path.len() + 1);
    verified.push(CertDer(leaf.der.to_vec()));
    for step in &path {
        let der = match *step {
            Step::Intermediate(i) => intermediates.get(i).map(|c| c.der),
            Step::Root(i) => roots.get(i).map(|c| c.der),
        };
        verified.push(CertDer(der.ok_or(X509Error::UnknownAuthority)?.to_vec()));
    }
    Ok(VerifiedSvid {
        spiffe_id,
        dns_names: leaf.dns_names,
        chain: verified,
        not_after: leaf.not_after,
    })
}

/// [`verify_svid`] for a chain in the Workload API format (concatenated DER).
pub fn verify_svid_der<'b, R, B>(
    chain_der: &[u8],
    bundle_for: B,
    now: SystemTime,
) -> Result<VerifiedSvid, X509Error>
where
    R: AsRef<[u8]> + 'b,
    B: Fn(&TrustDomain) -> Option<&'b [R]>,
{
    let certs = asn1::split_concatenated(chain_der)?;
    verify_svid(&certs, bundle_for, now)
}

/// The SPIFFE ID of a leaf, after the leaf rules (X509-SVID §5.2, go-spiffe wording).
fn check_leaf(leaf: &ParsedCert<'_>) -> Result<SpiffeId, X509Error> {
    let uri = match leaf.uris.as_slice() {
        [] => return Err(X509Error::NoUriSan),
        [only] => only,
        _ => return Err(X509Error::MultipleUriSans),
    };
    let spiffe_id = SpiffeId::parse(uri).map_err(X509Error::InvalidSpiffeId)?;
    if leaf.is_ca {
        return Err(X509Error::LeafIsCa);
    }
    if leaf.has_key_cert_sign() {
        return Err(X509Error::LeafKeyCertSign);
    }
    if leaf.has_crl_sign() {
        return Err(X509Error::LeafCrlSign);
    }
    if !leaf.has_digital_signature() {
        return Err(X509Error::LeafMissingDigitalSignature);
    }
    if spiffe_id.is_root() {
        return Err(X509Error::LeafRootPath);
    }
    Ok(spiffe_id)
}

fn check_validity(
    cert: &ParsedCert<'_>,
    position: usize,
    now: SystemTime,
) -> Result<(), X509Error> {
    if now < cert.not_before {
        return Err(X509Error::NotYetValid(position));
    }
    if now > cert.not_after {
        return Err(X509Error::Expired(position));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Intermediate(usize),
    Root(usize),
}

/// Depth-first path building from the leaf to a bundle root, trying roots first. Candidate
/// issuers are matched by exact subject/issuer name bytes; a candidate that fails a rule is
/// skipped (another may fit) and its error kept to explain a failure.
struct PathSearch<'s, 'c> {
    /// The leaf's names, checked against every CA's name constraints.
    leaf_trust_domain: &'s str,
    leaf_dns_names: &'s [String],
    intermediates: &'s [ParsedCert<'c>],
    roots: &'s [ParsedCert<'c>],
    now: SystemTime,
    first_error: Option<X509Error>,
}

impl PathSearch<'_, '_> {
    fn extend(
        &mut self,
        current: &ParsedCert<'_>,
        used: &mut [bool],
        path: &mut Vec<Step>,
    ) -> bool {
        let cas_below = path.len();
        for (index, root) in self.roots.iter().enumerate() {
            if root.subject == current.issuer {
                match self.accept_issuer(root, current, cas_below) {
                    Ok(()) => {
                        path.push(Step::Root(index));
                        return true;
                    }
                    Err(e) => self.remember(e),
                }
            }
        }
        // The leaf, the path so far, this intermediate and a root must fit the limit.
        if cas_below + 3 > MAX_CHAIN_LEN {
            return false;
        }
        let intermediates = self.intermediates;
        for (index, candidate) in intermediates.iter().enumerate() {
            let free = used.get(index).is_some_and(|u| !*u);
            if !free || candidate.subject != current.issuer {
                continue;
            }
            if let Err(e) = self.accept_issuer(candidate, current, cas_below) {
                self.remember(e);
                continue;
            }
            if let Some(slot) = used.get_mut(index) {
                *slot = true;
            }
            path.push(Step::Intermediate(index));
            if self.extend(candidate, used, path) {
                return true;
            }
            path.pop();
            if let Some(slot) = used.get_mut(index) {
                *slot = false;
            }
        }
        false
    }

    /// RFC 5280 §6.1 subset for one issuer: valid now, a CA with keyCertSign, no unknown
    /// critical extension, pathLenConstraint respected, and its signature on `child` verifies.
    fn accept_issuer(
        &self,
        issuer: &ParsedCert<'_>,
        child: &ParsedCert<'_>,
        cas_below: usize,
    ) -> Result<(), X509Error> {
        check_validity(issuer, cas_below + 1, self.now)?;
        check_signing_cert(issuer)?;
        if issuer
            .path_len
            .is_some_and(|limit| cas_below > usize::from(limit))
        {
            return Err(X509Error::PathLenExceeded);
        }
        if let Some(rules) = &issuer.name_constraints {
            check_name_constraints(rules, self.leaf_trust_domain, self.leaf_dns_names)?;
        }
        child.is_signed_by(issuer)
    }

    fn remember(&mut self, error: X509Error) {
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }
}

/// RFC 5280 §4.2.1.10 for the leaf's names. A URI constraint matches the URI's host (the trust
/// domain): `example.org` exactly, `.example.org` any subdomain. A DNS constraint matches the
/// name and its subdomains (`.example.org`: subdomains only). Comparison ignores ASCII case.
fn check_name_constraints(
    rules: &NameRules,
    trust_domain: &str,
    dns_names: &[String],
) -> Result<(), X509Error> {
    if rules.unsupported_type {
        return Err(X509Error::UnsupportedNameConstraint);
    }
    let uri_matches = |constraint: &String| uri_host_matches(trust_domain, constraint);
    let uri_permitted =
        rules.permitted_uri_hosts.is_empty() || rules.permitted_uri_hosts.iter().any(uri_matches);
    if !uri_permitted || rules.excluded_uri_hosts.iter().any(uri_matches) {
        return Err(X509Error::NameConstraintViolation(format!(
            "spiffe://{trust_domain}"
        )));
    }
    for name in dns_names {
        let dns_matches = |constraint: &String| dns_name_matches(name, constraint);
        let permitted =
            rules.permitted_dns.is_empty() || rules.permitted_dns.iter().any(dns_matches);
        if !permitted || rules.excluded_dns.iter().any(dns_matches) {
            return Err(X509Error::NameConstraintViolation(name.clone()));
        }
    }
    Ok(())
}

fn uri_host_matches(host: &str, constraint: &str) -> bool {
    if constraint.starts_with('.') {
        ends_with_ignore_case(host, constraint)
    } else {
        host.eq_ignore_ascii_case(constraint)
    }
}

fn dns_name_matches(name: &str, constraint: &str) -> bool {
    if constraint.is_empty() {
        return true;
    }
    if constraint.starts_with('.') {
        return ends_with_ignore_case(name, constraint);
    }
    name.eq_ignore_ascii_case(constraint)
        || (name.len() > constraint.len()
            && ends_with_ignore_case(name, constraint)
            && name.as_bytes().get(name.len() - constraint.len() - 1) == Some(&b'.'))
}

fn ends_with_ignore_case(value: &str, suffix: &str) -> bool {
    value.len() >= suffix.len()
        && value
            .as_bytes()
            .get(value.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes()))
}

/// An X.509-SVID received together with its private key (e.g. from the Workload API).
#[derive(Debug)]
pub struct SvidWithKey {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertDer>,
    pub key: SigningKey,
}

/// Checks an SVID received with its key, as go-spiffe's `ParseRaw` does: the leaf rules, every
/// further certificate is a CA with keyCertSign, and the leaf's public key matches the private
/// key (PKCS#8 DER, ECDSA P-256/P-384). No path validation: the sender is the trusted source.
pub fn parse_svid_with_key(
    chain_der: &[u8],
    key_pkcs8_der: &[u8],
) -> Result<SvidWithKey, X509Error> {
    let certs = asn1::split_concatenated(chain_der)?;
    let Some((leaf_der, signing_ders)) = certs.split_first() else {
        return Err(X509Error::EmptyChain);
    };
    if certs.len() > MAX_CHAIN_LEN {
        return Err(X509Error::ChainTooLong(certs.len()));
    }
    let leaf = parse_certificate(leaf_der)?;
    let spiffe_id = check_leaf(&leaf)?;
    for der in signing_ders {
        check_signing_cert(&parse_certificate(der)?)?;
    }
    let key = SigningKey::from_pkcs8_any(key_pkcs8_der)?;
    if !leaf
        .public_key
        .matches_ec_key(key.algorithm(), key.public_key_sec1())
    {
        return Err(X509Error::KeyMismatch);
    }
    let chain = certs.iter().map(|c| CertDer(c.to_vec())).collect();
    Ok(SvidWithKey {
        spiffe_id,
        chain,
        key,
    })
}
