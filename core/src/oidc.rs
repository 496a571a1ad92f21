//! OpenID Connect discovery for JWT-SVIDs: the documents a relying party that speaks OIDC (a
//! cloud's workload identity federation, an OIDC client library) fetches to verify our JWT-SVIDs
//! without knowing SPIFFE.
//!
//! * [`IssuerUrl`]: the issuer, validated once. Its text is, byte for byte, the JWT-SVID `iss`
//!   claim and the discovery document's `issuer`: clients compare the two as strings.
//! * [`discovery_document`]: `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0
//!   §3), with the signing algorithms of the JWT authorities actually in the bundle.
//! * [`jwks`]: the JWT authorities as a plain JWKS (RFC 7517 §5). Every JWT authority in the
//!   bundle is published, the outgoing key and its successor alike, so a token stays verifiable
//!   across a key rotation.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::bundle::TrustDomainBundle;
use crate::jose::{JwsAlgorithm, PublicJwk, PublicKey};

/// Where the discovery document lives, below the issuer (OpenID Connect Discovery 1.0 §4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where we serve the JWKS, below the issuer.
pub const JWKS_PATH: &str = "/keys";

/// The claims a JWT-SVID can carry (`iss` only when an issuer is configured).
const CLAIMS_SUPPORTED: [&str; 5] = ["sub", "aud", "exp", "iat", "iss"];

/// Why an issuer URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("issuer URL {url:?} is not a URL: {reason}")]
    NotUrl { url: String, reason: String },
    #[error("issuer URL must use https, not {0:?}")]
    NotHttps(String),
    #[error("issuer URL must have a host")]
    NoHost,
    #[error("issuer URL must not carry a user name or password")]
    UserInfo,
    #[error("issuer URL must not have a query")]
    Query,
    #[error("issuer URL must not have a fragment")]
    Fragment,
    #[error("issuer URL {written:?} is not in canonical form; write it as {canonical:?}")]
    NotCanonical { written: String, canonical: String },
    #[error(
        "issuer URL path {0:?} must be non-empty segments of letters, digits, '-', '.', '_' and '~'"
    )]
    Path(String),
}

/// A validated OIDC issuer: `https`, a host, optionally a port and a path; no user info, query
/// or fragment (OpenID Connect Discovery 1.0 §3, `issuer`). Kept exactly as written, since the
/// `iss` claim and the discovery `issuer` must equal what a relying party has registered. The
/// path is limited to unreserved characters: it is matched literally by our HTTP router and
/// compared as a string by relying parties, and escapes or `:`/`*` segments would break either.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IssuerUrl(String);

impl IssuerUrl {
    /// Validates `text`. A URL that a URL parser would rewrite (an upper-case host, `:443`, a
    /// `..` segment, a Unicode host) is refused with its canonical form rather than rewritten:
    /// silently emitting another string than the operator registered with a cloud would make
    /// every token fail there.
    pub fn parse(text: &str) -> Result<Self, OidcError> {
        let url = url::Url::parse(text).map_err(|e| OidcError::NotUrl {
            url: text.to_owned(),
            reason: e.to_string(),
        })?;
        if url.scheme() != "https" {
            return Err(OidcError::NotHttps(url.scheme().to_owned()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(OidcError::NoHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OidcError::UserInfo);
        }
        if url.query().is_some() {
            return Err(OidcError::Query);
        }
        if url.fragment().is_some() {
            return Err(OidcError::Fragment);
        }
        let canonical = url.as_str();
        // The parser always gives a bare host the path "/"; both spellings are common issuers.
        let bare_host = url.path() == "/" && canonical.strip_suffix('/') == Some(text);
        if text != canonical && !bare_host {
            return Err(OidcError::NotCanonical {
                written: text.to_owned(),
                canonical: canonical.to_owned(),
            });
        }
        let issuer = Self(text.to_owned());
        let plain_segment = |segment: &str| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        };
        if !issuer.base_path().split('/').skip(1).all(plain_segment) {
            return Err(OidcError::Path(url.path().to_owned()));
        }
        Ok(issuer)
    }

    /// The issuer as written: the `iss` claim and the discovery `issuer`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The issuer's path without its trailing `/` (`""` for a bare host): what the discovery
    /// and JWKS paths are appended to, as clients append them (Discovery 1.0 §4.1).
    pub fn base_path(&self) -> &str {
        let after_scheme = self.0.get("https://".len()..).unwrap_or_default();
        let path = after_scheme.find('/').map_or("", |at| &after_scheme[at..]);
        path.strip_suffix('/').unwrap_or(path)
    }

    /// The path the discovery document is served at.
    pub fn discovery_path(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base_path())
    }

    /// The path the JWKS is served at.
    pub fn jwks_path(&self) -> String {
        format!("{}{JWKS_PATH}", self.base_path())
    }

    /// The discovery document's `jwks_uri`.
    pub fn jwks_uri(&self) -> String {
        let base = self.0.strip_suffix('/').unwrap_or(&self.0);
        format!("{base}{JWKS_PATH}")
    }
}

impl FromStr for IssuerUrl {
    type Err = OidcError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The discovery document for `issuer`, whose JWKS is at [`IssuerUrl::jwks_uri`] and holds the
/// JWT authorities of `bundle`.
pub fn discovery_document(issuer: &IssuerUrl, bundle: &TrustDomainBundle) -> String {
    let mut algs: Vec<JwsAlgorithm> = published_keys(bundle).map(|(_, _, alg)| alg).collect();
    algs.sort_by_key(|alg| JwsAlgorithm::SPIFFE.iter().position(|a| a == alg));
    algs.dedup();
    let algs: Vec<&str> = algs.into_iter().map(JwsAlgorithm::name).collect();
    json!({
        "issuer": issuer.as_str(),
        "jwks_uri": issuer.jwks_uri(),
        // There is no authorization endpoint: JWT-SVIDs are not obtained through OAuth flows.
        // The member is REQUIRED by Discovery 1.0, and AWS refuses a document without it.
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "claims_supported": CLAIMS_SUPPORTED,
    })
    .to_string()
}

/// The JWT authorities of `bundle` as a plain JWKS: each key with `kid` (the bundle's), `use`
/// `sig` and its `alg`. X.509 and WIT-SVID authorities are not included.
pub fn jwks(bundle: &TrustDomainBundle) -> String {
    let keys: Vec<Value> = published_keys(bundle)
        .map(|(kid, jwk, alg)| {
            let mut member: Map<String, Value> = jwk.key.to_jwk_members();
            member.insert("kid".into(), kid.into());
            member.insert("use".into(), "sig".into());
            member.insert("alg".into(), alg.name().into());
            Value::Object(member)
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// The JWT authorities a relying party can use: those with a kid (tokens name their key by it)
/// and an algorithm JWT-SVIDs may be signed with.
fn published_keys(
    bundle: &TrustDomainBundle,
) -> impl Iterator<Item = (&str, &PublicJwk, JwsAlgorithm)> {
    bundle
        .jwt_authorities
        .iter()
        .filter(|(kid, _)| !kid.is_empty())
        .filter_map(|(kid, jwk)| Some((kid.as_str(), jwk, signing_alg(jwk)?)))
}

/// The algorithm `jwk` verifies: its own `alg` when it states one, else the one its key implies.
/// `None` for a key that cannot verify a JWT-SVID (Ed25519, or an `alg` that does not fit).
fn signing_alg(jwk: &PublicJwk) -> Option<JwsAlgorithm> {
    let alg = match &jwk.alg {
        Some(name) => JwsAlgorithm::from_name(name).ok()?,
        None => match &jwk.key {
            PublicKey::Ec { curve, .. } => curve.jws_alg(),
            // What SPIRE signs JWT-SVIDs with when its JWT key is RSA.
            PublicKey::Rsa { .. } => JwsAlgorithm::Rs256,
            PublicKey::Ed25519 { .. } => return None,
        },
    };
    (alg.is_spiffe_alg() && jwk.key.supports(alg)).then_some(alg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrustDomain;
    use crate::bundle::tests::CA_EC_DER;
    use crate::keys::{KeyAlgorithm, SigningKey};

    fn issuer(text: &str) -> IssuerUrl {
        IssuerUrl::parse(text).expect("valid issuer")
    }

    fn ec_jwk(algorithm: KeyAlgorithm) -> PublicJwk {
        PublicJwk::for_signing_key(&SigningKey::generate(algorithm).expect("key"))
    }

    fn rsa_jwk(alg: Option<&str>) -> PublicJwk {
        PublicJwk {
            key: PublicKey::Rsa {
                n: vec![0xc5; 256],
                e: vec![1, 0, 1],
            },
            kid: None,
            alg: alg.map(str::to_owned),
        }
    }

    /// Outgoing P-256 and incoming P-384 JWT keys, an RSA key that states PS256, an RSA key
    /// with no `alg`, plus an X.509 and a WIT authority that must not be published.
    fn rotating_bundle() -> TrustDomainBundle {
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        bundle.x509_authorities.push(CA_EC_DER.to_vec());
        let jwt = &mut bundle.jwt_authorities;
        jwt.insert("old".into(), ec_jwk(KeyAlgorithm::EcdsaP256));
        jwt.insert("new".into(), ec_jwk(KeyAlgorithm::EcdsaP384));
        jwt.insert("rsa-pss".into(), rsa_jwk(Some("PS256")));
        jwt.insert("rsa-plain".into(), rsa_jwk(None));
        bundle
            .wit_authorities
            .insert("wit".into(), ec_jwk(KeyAlgorithm::EcdsaP256));
        bundle
    }

    fn parse(json: &str) -> Value {
        serde_json::from_str(json).expect("JSON")
    }

    #[test]
    fn discovery_document_names_issuer_jwks_and_the_bundles_algorithms() {
        let doc = parse(&discovery_document(
            &issuer("https://oidc.example.org"),
            &rotating_bundle(),
        ));
        assert_eq!(doc["issuer"], "https://oidc.example.org");
        assert_eq!(doc["jwks_uri"], "https://oidc.example.org/keys");
        assert_eq!(doc["authorization_endpoint"], "");
        assert_eq!(doc["response_types_supported"], json!(["id_token"]));
        assert_eq!(doc["subject_types_supported"], json!(["public"]));
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["RS256", "ES256", "ES384", "PS256"])
        );
        assert_eq!(
            doc["claims_supported"],
            json!(["sub", "aud", "exp", "iat", "iss"])
        );
    }

    #[test]
    fn algorithms_come_from_the_keys_present() {
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        let doc = parse(&discovery_document(&issuer("https://a.example"), &bundle));
        assert_eq!(doc["id_token_signing_alg_values_supported"], json!([]));
        bundle
            .jwt_authorities
            .insert("k".into(), ec_jwk(KeyAlgorithm::EcdsaP384));
        // A second key of the same algorithm does not repeat it.
        bundle
            .jwt_authorities
            .insert("l".into(), ec_jwk(KeyAlgorithm::EcdsaP384));
        let doc = parse(&discovery_document(&issuer("https://a.example"), &bundle));
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["ES384"])
        );
    }

    #[test]
    fn jwks_publishes_every_jwt_authority_and_nothing_else() {
        let bundle = rotating_bundle();
        let doc = parse(&jwks(&bundle));
        let keys = doc["keys"].as_array().expect("keys");
        let by_kid = |kid: &str| {
            keys.iter()
                .find(|k| k["kid"] == kid)
                .unwrap_or_else(|| panic!("no key {kid}"))
        };
        assert_eq!(keys.len(), 4, "every JWT authority, none of the others");
        for key in keys {
            assert_eq!(key["use"], "sig");
            assert!(key.get("x5c").is_none());
            assert!(key.get("d").is_none());
        }
        let old = by_kid("old");
        assert_eq!((&old["kty"], &old["crv"]), (&json!("EC"), &json!("P-256")));
        assert_eq!(old["alg"], "ES256");
        assert_eq!(by_kid("new")["alg"], "ES384");
        assert_eq!(by_kid("rsa-pss")["alg"], "PS256", "a stated alg is kept");
        assert_eq!(by_kid("rsa-plain")["alg"], "RS256");
        assert_eq!(by_kid("rsa-plain")["e"], "AQAB");
        assert!(keys.iter().all(|k| k["kid"] != "wit"), "no WIT authority");
        // The key members are the bundle's keys, readable back as the same key.
        let read = PublicJwk::from_json_map(old.as_object().expect("object")).expect("jwk");
        assert_eq!(read.key, bundle.jwt_authorities["old"].key);
    }

    #[test]
    fn keys_no_jwt_svid_can_be_verified_with_are_left_out() {
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        let authorities = &mut bundle.jwt_authorities;
        authorities.insert(
            "ed".into(),
            PublicJwk {
                key: PublicKey::Ed25519 { x: vec![7; 32] },
                kid: None,
                alg: None,
            },
        );
        let mismatched = PublicJwk {
            alg: Some("RS256".into()),
            ..ec_jwk(KeyAlgorithm::EcdsaP256)
        };
        authorities.insert("mismatched".into(), mismatched);
        authorities.insert("hmac".into(), rsa_jwk(Some("HS256")));
        authorities.insert(String::new(), ec_jwk(KeyAlgorithm::EcdsaP256));
        authorities.insert("good".into(), ec_jwk(KeyAlgorithm::EcdsaP256));
        let doc = parse(&jwks(&bundle));
        let kids: Vec<&Value> = doc["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| &k["kid"])
            .collect();
        assert_eq!(kids, [&json!("good")]);
        let discovery = parse(&discovery_document(&issuer("https://a.example"), &bundle));
        assert_eq!(
            discovery["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
    }

    #[test]
    fn issuer_paths_are_kept_and_documents_hang_below_them() {
        let bare = issuer("https://oidc.example.org");
        assert_eq!(bare.base_path(), "");
        assert_eq!(bare.discovery_path(), "/.well-known/openid-configuration");
        assert_eq!(bare.jwks_path(), "/keys");
        let slash = issuer("https://oidc.example.org/");
        assert_eq!(
            slash.as_str(),
            "https://oidc.example.org/",
            "kept as written"
        );
        assert_eq!(slash.jwks_uri(), "https://oidc.example.org/keys");
        assert_eq!(slash.discovery_path(), "/.well-known/openid-configuration");
        let tenant = issuer("https://idp.example.org:8443/tenants/blue/");
        assert_eq!(tenant.base_path(), "/tenants/blue");
        assert_eq!(
            tenant.discovery_path(),
            "/tenants/blue/.well-known/openid-configuration"
        );
        assert_eq!(
            tenant.jwks_uri(),
            "https://idp.example.org:8443/tenants/blue/keys"
        );
        assert_eq!(
            tenant.to_string(),
            "https://idp.example.org:8443/tenants/blue/"
        );
        assert_eq!(
            "https://10.0.0.1".parse::<IssuerUrl>(),
            Ok(issuer("https://10.0.0.1"))
        );
    }

    #[test]
    fn bad_issuer_urls_are_refused() {
        let refused = |text: &str| IssuerUrl::parse(text).expect_err(text);
        assert!(matches!(refused(""), OidcError::NotUrl { .. }));
        assert!(matches!(
            refused("oidc.example.org"),
            OidcError::NotUrl { .. }
        ));
        assert!(matches!(refused("https://"), OidcError::NotUrl { .. }));
        assert_eq!(
            refused("http://oidc.example.org"),
            OidcError::NotHttps("http".into())
        );
        assert_eq!(
            refused("spiffe://example.org"),
            OidcError::NotHttps("spiffe".into())
        );
        assert_eq!(
            refused("https://user@oidc.example.org"),
            OidcError::UserInfo
        );
        assert_eq!(refused("https://u:p@oidc.example.org"), OidcError::UserInfo);
        assert_eq!(refused("https://oidc.example.org/?a=b"), OidcError::Query);
        assert_eq!(refused("https://oidc.example.org?"), OidcError::Query);
        assert_eq!(refused("https://oidc.example.org#x"), OidcError::Fragment);
        for (written, canonical) in [
            ("https://OIDC.example.org", "https://oidc.example.org/"),
            ("https://oidc.example.org:443", "https://oidc.example.org/"),
            (
                "https://oidc.example.org/a/../b",
                "https://oidc.example.org/b",
            ),
            (" https://oidc.example.org", "https://oidc.example.org/"),
            ("https://oidc.example.org\n", "https://oidc.example.org/"),
            ("https://bücher.example", "https://xn--bcher-kva.example/"),
            ("https://x.example/a b", "https://x.example/a%20b"),
        ] {
            assert_eq!(
                refused(written),
                OidcError::NotCanonical {
                    written: written.into(),
                    canonical: canonical.into()
                },
                "{written:?}"
            );
        }
        // Paths our router could not match literally, or that clients would join differently.
        for path in ["/a%20b", "/:id", "/*", "//", "/a//b", "/t/;x", "/a:b", "/@"] {
            let written = format!("https://oidc.example.org{path}");
            assert_eq!(refused(&written), OidcError::Path(path.into()), "{written}");
        }
    }
}
