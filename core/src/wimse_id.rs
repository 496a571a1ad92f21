//! WIMSE workload identifiers (draft-ietf-wimse-identifier): `spiffe://` IDs and `wimse://` URIs.
//!
//! A workload identifier is an absolute URI whose authority is the trust domain, with no user
//! info, port, query or fragment, at most 2048 bytes. A SPIFFE ID is one; `wimse://` identifiers
//! follow the generic URI path rules. The trust domain of a `wimse://` identifier should be a DNS
//! name: IP addresses are refused (the draft allows them only for legacy deployments).

use std::fmt;

use crate::spiffe_id::{MAX_SPIFFE_ID_LEN, SpiffeId, SpiffeIdError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WimseIdError {
    #[error("workload identifier cannot be empty")]
    Empty,
    #[error("workload identifier scheme must be \"spiffe\" or \"wimse\"")]
    UnsupportedScheme,
    #[error("invalid SPIFFE ID: {0}")]
    Spiffe(#[from] SpiffeIdError),
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("workload identifier must not contain user info")]
    UserInfo,
    #[error("workload identifier must not contain a port")]
    Port,
    #[error("workload identifier must not contain a query")]
    Query,
    #[error("workload identifier must not contain a fragment")]
    Fragment,
    #[error("trust domain must be a DNS name, not an IP address")]
    IpTrustDomain,
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots and dashes (found {0:?})"
    )]
    TrustDomainChar(char),
    #[error("invalid character {0:?} in path")]
    PathChar(char),
    #[error("invalid percent-encoding in path")]
    BadPercentEncoding,
    #[error("workload identifier is {0} bytes long; the limit is 2048")]
    TooLong(usize),
}

impl WimseIdError {
    pub fn label(&self) -> &'static str {
        match self {
            WimseIdError::Empty => "empty",
            WimseIdError::UnsupportedScheme => "unsupported_scheme",
            WimseIdError::Spiffe(e) => e.label(),
            WimseIdError::MissingTrustDomain => "missing_trust_domain",
            WimseIdError::UserInfo => "user_info",
            WimseIdError::Port => "port",
            WimseIdError::Query => "query",
            WimseIdError::Fragment => "fragment",
            WimseIdError::IpTrustDomain => "ip_trust_domain",
            WimseIdError::TrustDomainChar(_) => "trust_domain_char",
            WimseIdError::PathChar(_) => "path_char",
            WimseIdError::BadPercentEncoding => "bad_percent_encoding",
            WimseIdError::TooLong(_) => "too_long",
        }
    }
}

/// A workload identifier of either scheme.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadIdentifier {
    Spiffe(SpiffeId),
    Wimse { uri: String, path_start: usize },
}

const WIMSE_PREFIX: &str = "wimse://";

impl WorkloadIdentifier {
    pub fn parse(input: &str) -> Result<Self, WimseIdError> {
        if input.is_empty() {
            return Err(WimseIdError::Empty);
        }
        if input.starts_with("spiffe://") {
            return Ok(WorkloadIdentifier::Spiffe(SpiffeId::parse(input)?));
        }
        let rest = input
            .strip_prefix(WIMSE_PREFIX)
            .ok_or(WimseIdError::UnsupportedScheme)?;
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(WimseIdError::TooLong(input.len()));
        }
        let td_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (td, tail) = rest.split_at(td_len);
        validate_dns_trust_domain(td)?;
        validate_uri_path(tail)?;
        Ok(WorkloadIdentifier::Wimse {
            uri: input.to_owned(),
            path_start: WIMSE_PREFIX.len() + td_len,
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            WorkloadIdentifier::Spiffe(id) => id.as_str(),
            WorkloadIdentifier::Wimse { uri, .. } => uri,
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            WorkloadIdentifier::Spiffe(_) => "spiffe",
            WorkloadIdentifier::Wimse { .. } => "wimse",
        }
    }

    pub fn trust_domain(&self) -> &str {
        match self {
            WorkloadIdentifier::Spiffe(id) => id.trust_domain_name(),
            WorkloadIdentifier::Wimse { uri, path_start } => &uri[WIMSE_PREFIX.len()..*path_start],
        }
    }

    pub fn path(&self) -> &str {
        match self {
            WorkloadIdentifier::Spiffe(id) => id.path(),
            WorkloadIdentifier::Wimse { uri, path_start } => &uri[*path_start..],
        }
    }

    /// The "Workload Identifier Origin": scheme and trust domain, e.g. `wimse://example.com`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme(), self.trust_domain())
    }

    pub fn as_spiffe_id(&self) -> Option<&SpiffeId> {
        match self {
            WorkloadIdentifier::Spiffe(id) => Some(id),
            WorkloadIdentifier::Wimse { .. } => None,
        }
    }
}

impl fmt::Display for WorkloadIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for WorkloadIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkloadIdentifier({})", self.as_str())
    }
}

impl From<SpiffeId> for WorkloadIdentifier {
    fn from(id: SpiffeId) -> Self {
        WorkloadIdentifier::Spiffe(id)
    }
}

fn validate_dns_trust_domain(td: &str) -> Result<(), WimseIdError> {
    if td.is_empty() {
        return Err(WimseIdError::MissingTrustDomain);
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' => {}
            '@' => return Err(WimseIdError::UserInfo),
            ':' => return Err(WimseIdError::Port),
            '[' => return Err(WimseIdError::IpTrustDomain),
            other => return Err(WimseIdError::TrustDomainChar(other)),
        }
    }
    let looks_ipv4 = td.split('.').count() == 4
        && td
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if looks_ipv4 {
        return Err(WimseIdError::IpTrustDomain);
    }
    Ok(())
}

/// RFC 3986 `path-abempty`: `/`-prefixed segments of pchars with well-formed percent-encoding.
fn validate_uri_path(path: &str) -> Result<(), WimseIdError> {
    let bytes = path.as_bytes();
    if let Some(&first) = bytes.first().filter(|b| **b != b'/') {
        return Err(match first {
            b'?' => WimseIdError::Query,
            b'#' => WimseIdError::Fragment,
            _ => WimseIdError::PathChar(char::from(first)),
        });
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':'
            | b'@' | b'/' => {}
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(WimseIdError::BadPercentEncoding)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(WimseIdError::BadPercentEncoding);
                }
                i += 2;
            }
            b'?' => return Err(WimseIdError::Query),
            b'#' => return Err(WimseIdError::Fragment),
            _ => {
                let c = path
                    .get(i..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('\u{fffd}');
                return Err(WimseIdError::PathChar(c));
            }
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        let w = WorkloadIdentifier::parse("wimse://example.com/specific-workload").expect("wimse");
        assert_eq!(w.scheme(), "wimse");
        assert_eq!(w.trust_domain(), "example.com");
        assert_eq!(w.path(), "/specific-workload");
        assert_eq!(w.origin(), "wimse://example.com");
        assert!(w.as_spiffe_id().is_none());
        let s = WorkloadIdentifier::parse("spiffe://example.com/my-workload").expect("spiffe");
        assert_eq!(s.origin(), "spiffe://example.com");
        assert_eq!(s.as_spiffe_id().map(|i| i.path()), Some("/my-workload"));
        WorkloadIdentifier::parse("wimse://prod.trust.domain").expect("no path");
        WorkloadIdentifier::parse("wimse://example.com/a:b@c/%41~x").expect("generic pchars");
    }

    #[test]
    fn rejects_what_the_draft_forbids() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("https://example.com/x", "unsupported_scheme"),
            ("wimse://", "missing_trust_domain"),
            ("wimse:///x", "missing_trust_domain"),
            ("wimse://u@example.com/x", "user_info"),
            ("wimse://example.com:443/x", "port"),
            ("wimse://example.com/x?q=1", "query"),
            ("wimse://example.com?q", "query"),
            ("wimse://example.com/x#f", "fragment"),
            ("wimse://10.0.0.1/x", "ip_trust_domain"),
            ("wimse://[::1]/x", "ip_trust_domain"),
            ("wimse://Example.com/x", "trust_domain_char"),
            ("wimse://example.com/a b", "path_char"),
            ("wimse://example.com/%4", "bad_percent_encoding"),
            ("wimse://example.com/%zz", "bad_percent_encoding"),
            ("spiffe://example.com/a/", "trailing_slash"),
        ];
        for (input, label) in cases {
            let err = WorkloadIdentifier::parse(input).expect_err(input);
            assert_eq!(err.label(), *label, "{input}: {err}");
        }
        let long = format!("wimse://example.com/{}", "a".repeat(2048));
        assert_eq!(
            WorkloadIdentifier::parse(&long).expect_err("long").label(),
            "too_long"
        );
    }
}
