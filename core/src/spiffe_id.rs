//! SPIFFE IDs and trust domain names, parsed and validated exactly per the SPIFFE-ID standard.
//!
//! The policy is go-spiffe's strict one (the spec's "MUST be lowercase"): the scheme must be the
//! literal `spiffe://` and an uppercase trust domain is rejected, not folded. We also enforce the
//! length limits (2048 bytes for the URI, 255 for the trust domain) so we never issue an ID that a
//! conforming peer may refuse. Each error names the rule that failed.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID we accept or produce, in bytes (SPIFFE-ID §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name, in bytes (RFC 3986 host limit as the spec applies it).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a SPIFFE ID, trust domain name or path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID cannot be empty")]
    Empty,
    #[error("scheme is missing or invalid: a SPIFFE ID starts with \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain must not contain user info ('@')")]
    UserInfo,
    #[error("trust domain must not contain a port (':')")]
    Port,
    #[error("percent-encoded characters are not allowed")]
    PercentEncoded,
    #[error("trust domain must be lowercase (found {0:?})")]
    UppercaseTrustDomain(char),
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores (found {0:?})"
    )]
    TrustDomainChar(char),
    #[error("trust domain is {0} bytes long; the limit is 255")]
    TrustDomainTooLong(usize),
    #[error("SPIFFE ID must not contain a query ('?')")]
    Query,
    #[error("SPIFFE ID must not contain a fragment ('#')")]
    Fragment,
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores (found {0:?})"
    )]
    PathChar(char),
    #[error("path cannot contain empty segments")]
    EmptySegment,
    #[error("path cannot contain dot segments ('.' or '..')")]
    DotSegment,
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    #[error("path must have a leading slash")]
    NoLeadingSlash,
    #[error("SPIFFE ID is {0} bytes long; the limit is 2048")]
    TooLong(usize),
    #[error("SPIFFE ID {id} is not in trust domain {trust_domain}")]
    NotInTrustDomain { id: String, trust_domain: String },
    #[error("SPIFFE ID {0} has no path; a workload ID needs one")]
    RootPath(String),
    #[error(
        "SPIFFE ID {id} is reserved: paths under {namespace} are the system's own identities (see wimsey_core::reserved)"
    )]
    ReservedPath { id: String, namespace: &'static str },
}

impl SpiffeIdError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SpiffeIdError::Empty => "empty",
            SpiffeIdError::WrongScheme => "wrong_scheme",
            SpiffeIdError::MissingTrustDomain => "missing_trust_domain",
            SpiffeIdError::UserInfo => "user_info",
            SpiffeIdError::Port => "port",
            SpiffeIdError::PercentEncoded => "percent_encoded",
            SpiffeIdError::UppercaseTrustDomain(_) => "uppercase_trust_domain",
            SpiffeIdError::TrustDomainChar(_) => "trust_domain_char",
            SpiffeIdError::TrustDomainTooLong(_) => "trust_domain_too_long",
            SpiffeIdError::Query => "query",
            SpiffeIdError::Fragment => "fragment",
            SpiffeIdError::PathChar(_) => "path_char",
            SpiffeIdError::EmptySegment => "empty_segment",
            SpiffeIdError::DotSegment => "dot_segment",
            SpiffeIdError::TrailingSlash => "trailing_slash",
            SpiffeIdError::NoLeadingSlash => "no_leading_slash",
            SpiffeIdError::TooLong(_) => "too_long",
            SpiffeIdError::NotInTrustDomain { .. } => "not_in_trust_domain",
            SpiffeIdError::RootPath(_) => "root_path",
            SpiffeIdError::ReservedPath { .. } => "reserved_path",
        }
    }
}

/// A validated trust domain name such as `example.org` (lowercase, `[a-z0-9._-]`, 1-255 bytes).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain_name(name)?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// Accepts either a bare name or a SPIFFE ID (`spiffe://example.org/...`), as go-spiffe's
    /// `TrustDomainFromString` does; bundle maps use both forms as keys.
    pub fn from_name_or_id(input: &str) -> Result<Self, SpiffeIdError> {
        if input.contains(":/") {
            Ok(SpiffeId::parse(input)?.trust_domain())
        } else {
            Self::new(input)
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trust domain's own ID, `spiffe://<name>`, the form used as bundle-map keys.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.name)
    }

    /// The trust domain's own SPIFFE ID (no path).
    pub fn to_spiffe_id(&self) -> SpiffeId {
        SpiffeId {
            uri: self.id_string(),
            path_start: SCHEME_PREFIX.len() + self.name.len(),
        }
    }

    /// Builds `spiffe://<td>/<seg>/<seg>...` from unescaped path segments.
    pub fn id_from_segments<S: AsRef<str>>(
        &self,
        segments: &[S],
    ) -> Result<SpiffeId, SpiffeIdError> {
        let mut uri = self.id_string();
        let path_start = uri.len();
        for segment in segments {
            let segment = segment.as_ref();
            validate_path_segment(segment)?;
            uri.push('/');
            uri.push_str(segment);
        }
        check_total_len(&uri)?;
        Ok(SpiffeId { uri, path_start })
    }

    /// Builds `spiffe://<td><path>` from a path that starts with `/` (or is empty).
    pub fn id_from_path(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        validate_path(path)?;
        let uri = format!("{}{path}", self.id_string());
        check_total_len(&uri)?;
        Ok(SpiffeId {
            path_start: uri.len() - path.len(),
            uri,
        })
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.name)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name_or_id(s)
    }
}

/// A validated SPIFFE ID. Stored as its canonical URI string; accessors slice into it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    uri: String,
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID URI.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        validate_trust_domain_name(td)?;
        validate_path(path)?;
        check_total_len(input)?;
        Ok(Self {
            uri: input.to_owned(),
            path_start: SCHEME_PREFIX.len() + td_len,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len()..self.path_start]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain {
            name: self.trust_domain_name().to_owned(),
        }
    }

    /// The path, `""` for a trust domain ID, otherwise starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// True for a trust domain's own ID (`spiffe://td`), which no leaf SVID may carry.
    pub fn is_root(&self) -> bool {
        self.path_start == self.uri.len()
    }

    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain_name() == trust_domain.name()
    }

    pub fn into_string(self) -> String {
        self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.uri
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TrustDomain::from_name_or_id(&s).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain_name(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            '@' => return Err(SpiffeIdError::UserInfo),
            ':' => return Err(SpiffeIdError::Port),
            '%' => return Err(SpiffeIdError::PercentEncoded),
            '?' => return Err(SpiffeIdError::Query),
            '#' => return Err(SpiffeIdError::Fragment),
            'A'..='Z' => return Err(SpiffeIdError::UppercaseTrustDomain(c)),
            other => return Err(SpiffeIdError::TrustDomainChar(other)),
        }
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(name.len()));
    }
    Ok(())
}

/// Validates a SPIFFE ID path: empty, or `/`-separated non-empty, non-dot segments.
pub fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or(SpiffeIdError::NoLeadingSlash)?;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        validate_path_segment(segment)?;
    }
    Ok(())
}

/// Validates one unescaped path segment.
pub fn validate_path_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => return Err(SpiffeIdError::EmptySegment),
        "." | ".." => return Err(SpiffeIdError::DotSegment),
        _ => {}
    }
    for c in segment.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
            '%' => return Err(SpiffeIdError::PercentEncoded),
            '?' => return Err(SpiffeIdError::Query),
            '#' => return Err(SpiffeIdError::Fragment),
            other => return Err(SpiffeIdError::PathChar(other)),
        }
    }
    Ok(())
}

fn check_total_len(uri: &str) -> Result<(), SpiffeIdError> {
    if uri.len() > MAX_SPIFFE_ID_LEN {
        return Err(SpiffeIdError::TooLong(uri.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError as E;

    /// spiffe-specs.md §1.4, valid vectors V1-V13: (input, trust domain, path).
    const VALID: &[(&str, &str, &str)] = &[
        ("spiffe://trustdomain", "trustdomain", ""),
        ("spiffe://trustdomain/path", "trustdomain", "/path"),
        ("spiffe://trustdomain/.path", "trustdomain", "/.path"),
        ("spiffe://trustdomain/..path", "trustdomain", "/..path"),
        ("spiffe://trustdomain/...", "trustdomain", "/..."),
        ("spiffe://trustdomain./path", "trustdomain.", "/path"),
        ("spiffe://trustdomain-/path", "trustdomain-", "/path"),
        ("spiffe://trustdomain_/path", "trustdomain_", "/path"),
        ("spiffe://trustdomain9/path", "trustdomain9", "/path"),
        ("spiffe://trustdomain/pathZ", "trustdomain", "/pathZ"),
        (
            "spiffe://test.example.org/Path.With-Mixed_Case/a.b-c_D/..x/x..",
            "test.example.org",
            "/Path.With-Mixed_Case/a.b-c_D/..x/x..",
        ),
        (
            "spiffe://td_1.example-2.org/id-2",
            "td_1.example-2.org",
            "/id-2",
        ),
        ("spiffe://192.168.1.1/id-2", "192.168.1.1", "/id-2"),
    ];

    #[test]
    fn valid_vectors_parse_into_trust_domain_and_path() {
        for (input, td, path) in VALID {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain_name(), *td, "{input}");
            assert_eq!(id.path(), *path, "{input}");
            assert_eq!(id.as_str(), *input);
            assert_eq!(id.is_root(), path.is_empty());
        }
    }

    #[test]
    fn v14_id_of_exactly_2048_bytes_is_accepted_and_one_more_is_not() {
        let mut id = String::from("spiffe://test.example.org");
        while id.len() + 101 <= MAX_SPIFFE_ID_LEN {
            id.push('/');
            id.push_str(&"a".repeat(100));
        }
        let pad = MAX_SPIFFE_ID_LEN - id.len() - 1;
        id.push('/');
        id.push_str(&"b".repeat(pad));
        assert_eq!(id.len(), 2048);
        SpiffeId::parse(&id).expect("2048 bytes is allowed");
        id.push('b');
        assert_eq!(SpiffeId::parse(&id).unwrap_err(), E::TooLong(2049));
    }

    #[test]
    fn v15_v16_trust_domain_from_name_or_id() {
        assert_eq!(
            TrustDomain::from_name_or_id("trustdomain")
                .expect("bare")
                .name(),
            "trustdomain"
        );
        assert_eq!(
            TrustDomain::from_name_or_id("spiffe://trustdomain/path")
                .expect("from id")
                .name(),
            "trustdomain"
        );
        assert_eq!(
            TrustDomain::from_name_or_id("spiffe:/trustdomain/path").unwrap_err(),
            E::WrongScheme
        );
        assert_eq!(
            TrustDomain::new("trustdomain").expect("td").id_string(),
            "spiffe://trustdomain"
        );
    }

    #[test]
    fn invalid_vectors_fail_with_the_rule_they_break() {
        let cases: &[(&str, E)] = &[
            ("", E::Empty),                                               // I1
            ("s", E::WrongScheme),                                        // I2
            ("spiffe:/", E::WrongScheme),                                 // I3
            ("Spiffe://", E::WrongScheme),                                // I4
            ("spiffe:/trustdomain/path", E::WrongScheme),                 // I5
            ("spiffe://", E::MissingTrustDomain),                         // I6
            ("spiffe:///", E::MissingTrustDomain),                        // I7
            ("spiffe:///path", E::MissingTrustDomain),                    // I8
            ("spiffe://trustdomain/", E::TrailingSlash),                  // I9
            ("spiffe://trustdomain/path/", E::TrailingSlash),             // I10
            ("spiffe://trustdomain//", E::EmptySegment),                  // I11
            ("spiffe://trustdomain//path", E::EmptySegment),              // I12
            ("spiffe://trustdomain/.", E::DotSegment),                    // I13
            ("spiffe://trustdomain/./path", E::DotSegment),               // I14
            ("spiffe://trustdomain/path/./other", E::DotSegment),         // I15
            ("spiffe://trustdomain/path/..", E::DotSegment),              // I16
            ("spiffe://trustdomain/..", E::DotSegment),                   // I17
            ("spiffe://trustdomain/../path", E::DotSegment),              // I18
            ("spiffe://trustdomain/path/../other", E::DotSegment),        // I19
            ("spiffe://%F0%9F%A4%AF/path", E::PercentEncoded),            // I20
            ("spiffe://trustdomain/%F0%9F%A4%AF", E::PercentEncoded),     // I21
            ("spiffe://%62%61%64/path", E::PercentEncoded),               // I22
            ("spiffe://trustdomain/%62%61%64", E::PercentEncoded),        // I23
            ("spiffe://trust$domain", E::TrustDomainChar('$')),           // I24
            ("spiffe://trustdomain/path$", E::PathChar('$')),             // I25
            ("spiffe://trustdomainA/path", E::UppercaseTrustDomain('A')), // I26
            ("spiffe://trustdomain:/path", E::Port),                      // I27
            ("spiffe://trustdomain@/path", E::UserInfo),                  // I28
            ("spiffe://trustdomain/path?", E::Query),                     // I29
            ("spiffe://trustdomain/path#", E::Fragment),                  // I30
            ("spiffe://trustdomain/path~", E::PathChar('~')),             // I31
            ("spiffe://trustdomain/pathé", E::PathChar('é')),             // I32
            ("spiffe:///a", E::MissingTrustDomain),                       // I33
            ("spiffe://test.example.org:8080/a", E::Port),                // I34
            ("spiffe://u@test.example.org/a", E::UserInfo),               // I35
            ("spiffe://test.example.org/a?x=1", E::Query),                // I36
            ("spiffe://test.example.org/a#f", E::Fragment),               // I37
            ("spiffe://test.example.org/%41", E::PercentEncoded),         // I38
            ("spiffe://test.example.org/a//b", E::EmptySegment),          // I39
            ("spiffe://test.example.org/a/./b", E::DotSegment),           // I40
            ("spiffe://test.example.org/a/../b", E::DotSegment),          // I40
            ("spiffe://test.example.org/a/", E::TrailingSlash),           // I41
            ("spiffe://test.example.org/a!b", E::PathChar('!')),          // I42
            ("spiffe://t$d/a", E::TrustDomainChar('$')),                  // I43
            ("spiffe://[::1]/a", E::TrustDomainChar('[')),                // IPv6 is excluded
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn every_byte_outside_the_charsets_is_rejected() {
        for b in 0u8..=127 {
            let c = b as char;
            let td_ok = c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
            let path_ok = c.is_ascii_alphanumeric() || "._-".contains(c);
            let in_td = format!("spiffe://trust{c}domain/path");
            let in_path = format!("spiffe://trustdomain/pa{c}th");
            if c == '/' {
                continue;
            }
            assert_eq!(SpiffeId::parse(&in_td).is_ok(), td_ok, "{in_td:?}");
            assert_eq!(SpiffeId::parse(&in_path).is_ok(), path_ok, "{in_path:?}");
        }
    }

    #[test]
    fn trust_domain_length_limit() {
        let long = "a".repeat(256);
        assert_eq!(
            TrustDomain::new(&long).unwrap_err(),
            E::TrustDomainTooLong(256)
        );
        TrustDomain::new(&"a".repeat(255)).expect("255 is fine");
    }

    #[test]
    fn path_builders_follow_go_spiffe_vectors() {
        let td = TrustDomain::new("trustdomain").expect("td");
        assert_eq!(td.id_from_segments(&[""]).unwrap_err(), E::EmptySegment);
        assert_eq!(td.id_from_segments(&["."]).unwrap_err(), E::DotSegment);
        assert_eq!(td.id_from_segments(&[".."]).unwrap_err(), E::DotSegment);
        assert_eq!(td.id_from_segments(&["/"]).unwrap_err(), E::PathChar('/'));
        assert_eq!(
            td.id_from_segments(&["/foo"]).unwrap_err(),
            E::PathChar('/')
        );
        assert_eq!(td.id_from_segments(&["$"]).unwrap_err(), E::PathChar('$'));
        assert_eq!(td.id_from_path("foo").unwrap_err(), E::NoLeadingSlash);
        assert_eq!(td.id_from_path("/").unwrap_err(), E::TrailingSlash);
        let id = td.id_from_segments(&["foo", "bar"]).expect("segments");
        assert_eq!(id.as_str(), "spiffe://trustdomain/foo/bar");
        assert_eq!(id.path(), "/foo/bar");
        let root = td.id_from_segments::<&str>(&[]).expect("no segments");
        assert_eq!(root.path(), "");
        assert_eq!(root, td.to_spiffe_id());
        assert_eq!(
            td.id_from_path("/a/b").expect("path").as_str(),
            "spiffe://trustdomain/a/b"
        );
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://example.org/a\"").expect("deserialize");
        assert_eq!(
            serde_json::to_string(&id).expect("serialize"),
            "\"spiffe://example.org/a\""
        );
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://example.org/a/\"").unwrap_err();
        assert!(err.to_string().contains("trailing slash"), "{err}");
    }
}
