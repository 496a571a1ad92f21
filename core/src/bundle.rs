//! SPIFFE trust bundles (`SPIFFE_Trust_Domain_and_Bundle.md` §4-5): one value per trust domain
//! with its X.509 authorities (DER CA certificates), JWT-SVID and WIT-SVID authorities (kid ->
//! public JWK), sequence number and refresh hint, and every encoding we exchange it in:
//!
//! * the SPIFFE bundle JWKS (federation, bundle endpoint, files mode),
//! * the Workload API JWT bundle (`FetchJWTBundles`: JWT keys only, each with `kid`, no `use`
//!   and no `spiffe_*` members, as SPIRE marshals it) and WIT bundle (`FetchWITBundles`),
//! * X.509 authorities as concatenated DER (Workload API) and PEM (files),
//! * the bundle map (`{"trust_domains": {...}}`).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use der::{Decode as _, Reader as _};
use serde_json::{Map, Value};

use crate::jose::{JoseError, PublicJwk, PublicKey, StrictJsonError, parse_strict_object};
use crate::spiffe_id::{SpiffeIdError, TrustDomain};

/// The `use` of X.509 CA entries in a SPIFFE bundle.
pub const USE_X509_SVID: &str = "x509-svid";
/// The `use` of JWT-SVID signing keys.
pub const USE_JWT_SVID: &str = "jwt-svid";
/// The `use` of WIT-SVID signing keys (`WIT-SVID.md` §6.1).
pub const USE_WIT_SVID: &str = "wit-svid";

/// Why a bundle could not be parsed or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is not valid JSON: {0}")]
    Json(String),
    #[error("bundle JSON has duplicate member {0:?}")]
    DuplicateMember(String),
    #[error("bundle is missing the required \"keys\" member")]
    MissingKeys,
    #[error("bundle \"keys\" member must be an array")]
    KeysNotArray,
    #[error("bundle key {0} is not a JSON object")]
    KeyNotObject(usize),
    #[error("spiffe_sequence must be a non-negative integer")]
    InvalidSequence,
    #[error("spiffe_refresh_hint must be a non-negative integer number of seconds")]
    InvalidRefreshHint,
    #[error("keyID cannot be empty: {key_use} key {index} has no kid")]
    MissingKid { key_use: &'static str, index: usize },
    #[error("duplicate key ID {0:?}: a kid must be unique across the bundle")]
    DuplicateKid(String),
    #[error("x509-svid key {0} has an x5c value that is not a standard base64 string")]
    InvalidX5c(usize),
    #[error("X.509 authority is not a valid DER certificate: {0}")]
    InvalidCertificate(String),
    #[error("bundle key {index} is invalid: {source}")]
    Jwk { index: usize, source: JoseError },
    #[error("X.509 authority has an unsupported public key: {0}")]
    AuthorityKey(JoseError),
    #[error("PEM bundle is invalid: {0}")]
    Pem(String),
    #[error("PEM bundle holds a {0:?} block; only CERTIFICATE blocks are allowed")]
    PemLabel(String),
    #[error("bundle map is missing the required \"trust_domains\" member")]
    MissingTrustDomains,
    #[error("bundle map \"trust_domains\" must be an object of bundles")]
    TrustDomainsNotObject,
    #[error("bundle map key {name:?} is not a trust domain name: {source}")]
    InvalidTrustDomain { name: String, source: SpiffeIdError },
    #[error("bundle map has trust domain {0:?} more than once")]
    DuplicateTrustDomain(String),
}

impl BundleError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BundleError::Json(_) => "json",
            BundleError::DuplicateMember(_) => "duplicate_member",
            BundleError::MissingKeys => "missing_keys",
            BundleError::KeysNotArray => "keys_not_array",
            BundleError::KeyNotObject(_) => "key_not_object",
            BundleError::InvalidSequence => "invalid_sequence",
            BundleError::InvalidRefreshHint => "invalid_refresh_hint",
            BundleError::MissingKid { .. } => "missing_kid",
            BundleError::DuplicateKid(_) => "duplicate_kid",
            BundleError::InvalidX5c(_) => "invalid_x5c",
            BundleError::InvalidCertificate(_) => "invalid_certificate",
            BundleError::Jwk { .. } => "invalid_jwk",
            BundleError::AuthorityKey(_) => "authority_key",
            BundleError::Pem(_) => "pem",
            BundleError::PemLabel(_) => "pem_label",
            BundleError::MissingTrustDomains => "missing_trust_domains",
            BundleError::TrustDomainsNotObject => "trust_domains_not_object",
            BundleError::InvalidTrustDomain { .. } => "invalid_trust_domain",
            BundleError::DuplicateTrustDomain(_) => "duplicate_trust_domain",
        }
    }
}

impl From<StrictJsonError> for BundleError {
    fn from(error: StrictJsonError) -> Self {
        match error {
            StrictJsonError::Duplicate(member) => BundleError::DuplicateMember(member),
            StrictJsonError::Syntax(reason) => BundleError::Json(reason),
        }
    }
}

/// Everything one trust domain publishes for validating its SVIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainBundle {
    pub trust_domain: TrustDomain,
    /// CA certificates, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWT-SVID signing keys by kid. The map key is the kid we emit; a `kid` inside the JWK is
    /// ignored.
    pub jwt_authorities: BTreeMap<String, PublicJwk>,
    /// WIT-SVID signing keys by kid.
    pub wit_authorities: BTreeMap<String, PublicJwk>,
    /// `spiffe_sequence`: bumped whenever the contents change.
    pub sequence_number: Option<u64>,
    /// `spiffe_refresh_hint`, in seconds.
    pub refresh_hint_seconds: Option<u64>,
}

/// Which Workload API key-set form to parse or emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySet {
    Jwt,
    Wit,
}

impl TrustDomainBundle {
    /// An empty bundle (trusts nothing).
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: BTreeMap::new(),
            wit_authorities: BTreeMap::new(),
            sequence_number: None,
            refresh_hint_seconds: None,
        }
    }

    pub fn jwt_authority(&self, kid: &str) -> Option<&PublicJwk> {
        self.jwt_authorities.get(kid)
    }

    pub fn wit_authority(&self, kid: &str) -> Option<&PublicJwk> {
        self.wit_authorities.get(kid)
    }

    /// The SPIFFE bundle JWKS document (§4): x509-svid entries with exactly one `x5c` and no kid,
    /// then jwt-svid and wit-svid entries with kid, plus `spiffe_sequence` and
    /// `spiffe_refresh_hint` when set.
    pub fn to_spiffe_jwks(&self) -> Result<String, BundleError> {
        Ok(Value::Object(self.spiffe_jwks_object(true)?).to_string())
    }

    fn spiffe_jwks_object(
        &self,
        with_refresh_hint: bool,
    ) -> Result<Map<String, Value>, BundleError> {
        self.check_kids_unique()?;
        let mut keys = Vec::new();
        for der in &self.x509_authorities {
            let mut jwk = x509_authority_key(der)?.to_jwk_members();
            jwk.insert("use".into(), USE_X509_SVID.into());
            jwk.insert(
                "x5c".into(),
                Value::Array(vec![Value::String(STANDARD.encode(der))]),
            );
            keys.push(Value::Object(jwk));
        }
        for (authorities, key_use) in [
            (&self.jwt_authorities, USE_JWT_SVID),
            (&self.wit_authorities, USE_WIT_SVID),
        ] {
            for (kid, jwk) in authorities {
                let mut member = jwk_with_kid(kid, jwk);
                member.insert("use".into(), key_use.into());
                keys.push(Value::Object(member));
            }
        }
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        if let Some(sequence) = self.sequence_number {
            doc.insert("spiffe_sequence".into(), sequence.into());
        }
        if let (true, Some(hint)) = (with_refresh_hint, self.refresh_hint_seconds) {
            doc.insert("spiffe_refresh_hint".into(), hint.into());
        }
        Ok(doc)
    }

    /// The Workload API JWT bundle (`JWTBundlesResponse` value): JWT keys only, each with kid;
    /// no `use` and no `spiffe_*` members, exactly as SPIRE emits it.
    pub fn to_jwt_bundle_json(&self) -> Result<String, BundleError> {
        self.key_set_json(KeySet::Jwt)
    }

    /// The Workload API WIT bundle (`WITBundlesResponse` value): WIT keys only, each with kid,
    /// in the same plain-JWKS form as the JWT bundle.
    pub fn to_wit_bundle_json(&self) -> Result<String, BundleError> {
        self.key_set_json(KeySet::Wit)
    }

    fn key_set_json(&self, which: KeySet) -> Result<String, BundleError> {
        let authorities = match which {
            KeySet::Jwt => &self.jwt_authorities,
            KeySet::Wit => &self.wit_authorities,
        };
        let mut keys = Vec::with_capacity(authorities.len());
        for (kid, jwk) in authorities {
            if kid.is_empty() {
                return Err(BundleError::MissingKid {
                    key_use: key_set_use(which),
                    index: keys.len(),
                });
            }
            keys.push(Value::Object(jwk_with_kid(kid, jwk)));
        }
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        Ok(Value::Object(doc).to_string())
    }

    /// The X.509 authorities as concatenated DER, the Workload API's `bundle` encoding.
    pub fn x509_authorities_der(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// The X.509 authorities as PEM CERTIFICATE blocks (files mode).
    pub fn x509_authorities_pem(&self) -> String {
        let mut pem = String::new();
        for der in &self.x509_authorities {
            // Encoding only fails for labels or lengths that cannot occur here.
            if let Ok(block) =
                pem_rfc7468::encode_string("CERTIFICATE", pem_rfc7468::LineEnding::LF, der)
            {
                pem.push_str(&block);
            }
        }
        pem
    }

    /// Parses a SPIFFE bundle JWKS document with the spec's consumer rules: keys with an unknown
    /// or missing `kty` or `use` are ignored; x509-svid entries without `x5c` are ignored and only
    /// the first `x5c` certificate is used; jwt-svid and wit-svid entries need a kid that is
    /// unique across the bundle; `keys` must be present but may be empty; unknown set-level
    /// members are ignored; duplicate JSON members are rejected.
    pub fn from_spiffe_jwks(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let doc = parse_strict_object(json)?;
        Self::from_jwks_object(trust_domain, &doc)
    }

    fn from_jwks_object(
        trust_domain: TrustDomain,
        doc: &Map<String, Value>,
    ) -> Result<Self, BundleError> {
        let keys = keys_array(doc)?;
        let mut bundle = Self::new(trust_domain);
        bundle.sequence_number =
            non_negative(doc.get("spiffe_sequence")).map_err(|_| BundleError::InvalidSequence)?;
        bundle.refresh_hint_seconds = non_negative(doc.get("spiffe_refresh_hint"))
            .map_err(|_| BundleError::InvalidRefreshHint)?;
        for (index, entry) in keys.iter().enumerate() {
            let Value::Object(jwk) = entry else {
                return Err(BundleError::KeyNotObject(index));
            };
            if !known_kty(jwk) {
                continue;
            }
            match jwk.get("use").and_then(Value::as_str) {
                Some(USE_X509_SVID) => {
                    if let Some(der) = first_x5c(jwk, index)? {
                        bundle.x509_authorities.push(der);
                    }
                }
                Some(USE_JWT_SVID) => bundle.add_keyed(KeySet::Jwt, index, jwk)?,
                Some(USE_WIT_SVID) => bundle.add_keyed(KeySet::Wit, index, jwk)?,
                _ => {}
            }
        }
        Ok(bundle)
    }

    /// Parses a Workload API JWT bundle. Keys without `use` or with `use: jwt-svid` are JWT
    /// authorities (SPIRE omits `use` here); other uses and unknown key types are ignored. Like
    /// go-spiffe, a key without kid fails the whole bundle.
    pub fn from_jwt_bundle_json(
        trust_domain: TrustDomain,
        json: &[u8],
    ) -> Result<Self, BundleError> {
        Self::from_key_set(trust_domain, json, KeySet::Jwt)
    }

    /// Parses a Workload API WIT bundle (same rules, `use` absent or `wit-svid`).
    pub fn from_wit_bundle_json(
        trust_domain: TrustDomain,
        json: &[u8],
    ) -> Result<Self, BundleError> {
        Self::from_key_set(trust_domain, json, KeySet::Wit)
    }

    fn from_key_set(
        trust_domain: TrustDomain,
        json: &[u8],
        which: KeySet,
    ) -> Result<Self, BundleError> {
        let doc = parse_strict_object(json)?;
        let keys = keys_array(&doc)?;
        let mut bundle = Self::new(trust_domain);
        for (index, entry) in keys.iter().enumerate() {
            let Value::Object(jwk) = entry else {
                return Err(BundleError::KeyNotObject(index));
            };
            if !known_kty(jwk) {
                continue;
            }
            match jwk.get("use") {
                None => {}
                Some(Value::String(u)) if u == key_set_use(which) => {}
                Some(_) => continue,
            }
            bundle.add_keyed(which, index, jwk)?;
        }
        Ok(bundle)
    }

    fn add_keyed(
        &mut self,
        which: KeySet,
        index: usize,
        jwk: &Map<String, Value>,
    ) -> Result<(), BundleError> {
        let kid = match jwk.get("kid") {
            Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
            _ => {
                return Err(BundleError::MissingKid {
                    key_use: key_set_use(which),
                    index,
                });
            }
        };
        let parsed = match PublicJwk::from_json_map(jwk) {
            Ok(parsed) => parsed,
            // An EC or OKP key on a curve we do not know is an unknown key type: ignore it.
            Err(JoseError::UnsupportedCurve(_) | JoseError::UnsupportedKeyType(_)) => return Ok(()),
            Err(source) => return Err(BundleError::Jwk { index, source }),
        };
        if self.jwt_authorities.contains_key(&kid) || self.wit_authorities.contains_key(&kid) {
            return Err(BundleError::DuplicateKid(kid));
        }
        let target = match which {
            KeySet::Jwt => &mut self.jwt_authorities,
            KeySet::Wit => &mut self.wit_authorities,
        };
        target.insert(kid, parsed);
        Ok(())
    }

    fn check_kids_unique(&self) -> Result<(), BundleError> {
        for kid in self.jwt_authorities.keys() {
            if self.wit_authorities.contains_key(kid) {
                return Err(BundleError::DuplicateKid(kid.clone()));
            }
        }
        for (which, authorities) in [
            (KeySet::Jwt, &self.jwt_authorities),
            (KeySet::Wit, &self.wit_authorities),
        ] {
            if let Some(index) = authorities.keys().position(String::is_empty) {
                return Err(BundleError::MissingKid {
                    key_use: key_set_use(which),
                    index,
                });
            }
        }
        Ok(())
    }
}

fn key_set_use(which: KeySet) -> &'static str {
    match which {
        KeySet::Jwt => USE_JWT_SVID,
        KeySet::Wit => USE_WIT_SVID,
    }
}

fn jwk_with_kid(kid: &str, jwk: &PublicJwk) -> Map<String, Value> {
    let mut member = jwk.to_json_map();
    member.insert("kid".into(), Value::String(kid.to_owned()));
    member
}

fn keys_array(doc: &Map<String, Value>) -> Result<&Vec<Value>, BundleError> {
    match doc.get("keys") {
        None => Err(BundleError::MissingKeys),
        Some(Value::Array(keys)) => Ok(keys),
        Some(_) => Err(BundleError::KeysNotArray),
    }
}

fn known_kty(jwk: &Map<String, Value>) -> bool {
    matches!(
        jwk.get("kty").and_then(Value::as_str),
        Some("EC" | "RSA" | "OKP")
    )
}

/// An optional non-negative integer member.
fn non_negative(value: Option<&Value>) -> Result<Option<u64>, ()> {
    match value {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(()),
    }
}

/// The first `x5c` certificate of an x509-svid entry, `None` if `x5c` is missing or empty.
fn first_x5c(jwk: &Map<String, Value>, index: usize) -> Result<Option<Vec<u8>>, BundleError> {
    let first = match jwk.get("x5c") {
        Some(Value::Array(chain)) => chain.first(),
        _ => None,
    };
    let Some(first) = first else {
        return Ok(None);
    };
    let text = first.as_str().ok_or(BundleError::InvalidX5c(index))?;
    let der = STANDARD
        .decode(text)
        .map_err(|_| BundleError::InvalidX5c(index))?;
    check_certificate(&der)?;
    Ok(Some(der))
}

fn check_certificate(der: &[u8]) -> Result<x509_cert::Certificate, BundleError> {
    x509_cert::Certificate::from_der(der)
        .map_err(|e| BundleError::InvalidCertificate(e.to_string()))
}

/// The public key of a CA certificate, for its JWK members.
fn x509_authority_key(der: &[u8]) -> Result<PublicKey, BundleError> {
    let cert = check_certificate(der)?;
    let spki = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)
        .map_err(|e| BundleError::InvalidCertificate(e.to_string()))?;
    PublicKey::from_spki_der(&spki).map_err(BundleError::AuthorityKey)
}

/// Splits concatenated DER certificates (the Workload API bundle encoding).
pub fn parse_x509_authorities_der(bytes: &[u8]) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut reader =
        der::SliceReader::new(bytes).map_err(|e| BundleError::InvalidCertificate(e.to_string()))?;
    let mut certs = Vec::new();
    while !reader.is_finished() {
        let start = usize::try_from(reader.position()).unwrap_or(usize::MAX);
        reader
            .decode::<x509_cert::Certificate>()
            .map_err(|e| BundleError::InvalidCertificate(e.to_string()))?;
        let end = usize::try_from(reader.position()).unwrap_or(usize::MAX);
        let der = bytes
            .get(start..end)
            .ok_or_else(|| BundleError::InvalidCertificate("bad length".into()))?;
        certs.push(der.to_vec());
    }
    Ok(certs)
}

/// Reads PEM CERTIFICATE blocks. Text between blocks is ignored; any other block label (a private
/// key in a bundle file, say) is an error.
pub fn parse_x509_authorities_pem(text: &str) -> Result<Vec<Vec<u8>>, BundleError> {
    const BEGIN: &str = "-----BEGIN ";
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = rest.get(start..).unwrap_or_default();
        let after_begin = block.get(BEGIN.len()..).unwrap_or_default();
        let label_len = after_begin
            .find("-----")
            .ok_or_else(|| BundleError::Pem("malformed BEGIN line".into()))?;
        let label = after_begin.get(..label_len).unwrap_or_default();
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or_else(|| BundleError::Pem(format!("missing END line for {label:?}")))?
            + end_marker.len();
        let pem = block.get(..end).unwrap_or_default();
        let (decoded_label, der) =
            pem_rfc7468::decode_vec(pem.as_bytes()).map_err(|e| BundleError::Pem(e.to_string()))?;
        if decoded_label != "CERTIFICATE" {
            return Err(BundleError::PemLabel(
                decoded_label.chars().take(64).collect(),
            ));
        }
        check_certificate(&der)?;
        certs.push(der);
        rest = block.get(end..).unwrap_or_default();
    }
    Ok(certs)
}

/// Parses a bundle map (§5): `{"trust_domains": {"<name>": <bundle>, ...}}`. Keys may be bare
/// names or `spiffe://` IDs; a trust domain named twice (in either form) is rejected.
pub fn parse_bundle_map(
    json: &[u8],
) -> Result<BTreeMap<TrustDomain, TrustDomainBundle>, BundleError> {
    let doc = parse_strict_object(json)?;
    let domains = match doc.get("trust_domains") {
        None => return Err(BundleError::MissingTrustDomains),
        Some(Value::Object(domains)) => domains,
        Some(_) => return Err(BundleError::TrustDomainsNotObject),
    };
    let mut bundles = BTreeMap::new();
    for (name, value) in domains {
        let trust_domain = TrustDomain::from_name_or_id(name).map_err(|source| {
            BundleError::InvalidTrustDomain {
                name: name.chars().take(256).collect(),
                source,
            }
        })?;
        let Value::Object(bundle_doc) = value else {
            return Err(BundleError::TrustDomainsNotObject);
        };
        let mut bundle = TrustDomainBundle::from_jwks_object(trust_domain.clone(), bundle_doc)?;
        // §5: the map's own refresh behaviour wins; a per-bundle hint is not used.
        bundle.refresh_hint_seconds = None;
        if bundles.insert(trust_domain.clone(), bundle).is_some() {
            return Err(BundleError::DuplicateTrustDomain(
                trust_domain.name().to_owned(),
            ));
        }
    }
    Ok(bundles)
}

/// Emits a bundle map keyed by trust domain name, without per-bundle refresh hints (§5).
pub fn bundle_map_json<'a>(
    bundles: impl IntoIterator<Item = &'a TrustDomainBundle>,
) -> Result<String, BundleError> {
    let mut domains = Map::new();
    for bundle in bundles {
        let name = bundle.trust_domain.name().to_owned();
        if domains.contains_key(&name) {
            return Err(BundleError::DuplicateTrustDomain(name));
        }
        domains.insert(name, Value::Object(bundle.spiffe_jwks_object(false)?));
    }
    let mut doc = Map::new();
    doc.insert("trust_domains".into(), Value::Object(domains));
    Ok(Value::Object(doc).to_string())
}

/// Where validators find the bundle of a trust domain. Only the bundle of the credential's own
/// trust domain is ever consulted; `None` means that trust domain is not trusted.
pub trait BundleSource {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&TrustDomainBundle>;
}

impl BundleSource for TrustDomainBundle {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&TrustDomainBundle> {
        (self.trust_domain == *trust_domain).then_some(self)
    }
}

impl BundleSource for [TrustDomainBundle] {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&TrustDomainBundle> {
        self.iter().find(|b| b.trust_domain == *trust_domain)
    }
}

impl<B: Borrow<TrustDomainBundle>> BundleSource for BTreeMap<TrustDomain, B> {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&TrustDomainBundle> {
        self.get(trust_domain).map(Borrow::borrow)
    }
}

impl<B: Borrow<TrustDomainBundle>, S: BuildHasher> BundleSource for HashMap<TrustDomain, B, S> {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&TrustDomainBundle> {
        self.get(trust_domain).map(Borrow::borrow)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::{KeyAlgorithm, SigningKey};
    use serde_json::json;

    pub(crate) fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect("trust domain")
    }

    /// A self-signed P-256 CA certificate (openssl, 100-year validity), DER.
    pub(crate) const CA_EC_DER: &[u8] = include_bytes!("jose/testdata/ca-ec.der");
    /// A self-signed RSA-2048 CA certificate, DER.
    pub(crate) const CA_RSA_DER: &[u8] = include_bytes!("jose/testdata/ca-rsa.der");

    fn ca_der() -> Vec<u8> {
        CA_EC_DER.to_vec()
    }

    fn jwk(kid: &str) -> PublicJwk {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        PublicJwk {
            kid: Some(kid.into()),
            alg: None,
            ..PublicJwk::for_signing_key(&key)
        }
    }

    fn sample_bundle() -> TrustDomainBundle {
        let mut bundle = TrustDomainBundle::new(td("example.org"));
        bundle.x509_authorities.push(ca_der());
        bundle.jwt_authorities.insert("jwt-1".into(), jwk("jwt-1"));
        bundle
            .jwt_authorities
            .insert("jwt-2".into(), jwk("ignored-inner-kid"));
        bundle.wit_authorities.insert("wit-1".into(), jwk("wit-1"));
        bundle.sequence_number = Some(7);
        bundle.refresh_hint_seconds = Some(300);
        bundle
    }

    #[test]
    fn spiffe_jwks_round_trip_and_shape() {
        let bundle = sample_bundle();
        let json = bundle.to_spiffe_jwks().expect("emit");
        let doc: Value = serde_json::from_str(&json).expect("json");
        assert_eq!(doc["spiffe_sequence"], 7);
        assert_eq!(doc["spiffe_refresh_hint"], 300);
        let keys = doc["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 4);
        let x509 = &keys[0];
        assert_eq!(x509["use"], "x509-svid");
        assert_eq!(x509["kty"], "EC");
        assert!(
            x509.get("kid").is_none(),
            "x509-svid entries must not carry kid"
        );
        assert_eq!(x509["x5c"].as_array().expect("x5c").len(), 1);
        assert_eq!(keys[2]["kid"], "jwt-2", "the map key is the emitted kid");
        assert_eq!(keys[3]["use"], "wit-svid");
        let parsed =
            TrustDomainBundle::from_spiffe_jwks(td("example.org"), json.as_bytes()).expect("parse");
        assert_eq!(parsed.x509_authorities, bundle.x509_authorities);
        assert_eq!(
            parsed.jwt_authorities.keys().collect::<Vec<_>>(),
            ["jwt-1", "jwt-2"]
        );
        assert_eq!(
            parsed.jwt_authorities["jwt-1"].key,
            bundle.jwt_authorities["jwt-1"].key
        );
        assert_eq!(
            parsed.wit_authorities["wit-1"].key,
            bundle.wit_authorities["wit-1"].key
        );
        assert_eq!(parsed.sequence_number, Some(7));
        assert_eq!(parsed.refresh_hint_seconds, Some(300));
    }

    #[test]
    fn workload_api_forms() {
        let bundle = sample_bundle();
        let jwt: Value =
            serde_json::from_str(&bundle.to_jwt_bundle_json().expect("jwt")).expect("json");
        let keys = jwt["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 2, "JWT bundle carries JWT keys only");
        assert!(
            keys.iter()
                .all(|k| k["kid"].is_string() && k.get("use").is_none() && k.get("x5c").is_none())
        );
        assert!(jwt.get("spiffe_sequence").is_none());
        let wit: Value =
            serde_json::from_str(&bundle.to_wit_bundle_json().expect("wit")).expect("json");
        assert_eq!(wit["keys"].as_array().expect("keys").len(), 1);
        assert_eq!(wit["keys"][0]["kid"], "wit-1");
        // And back.
        let parsed =
            TrustDomainBundle::from_jwt_bundle_json(td("example.org"), jwt.to_string().as_bytes())
                .expect("parse jwt bundle");
        assert_eq!(parsed.jwt_authorities.len(), 2);
        let parsed =
            TrustDomainBundle::from_wit_bundle_json(td("example.org"), wit.to_string().as_bytes())
                .expect("parse wit bundle");
        assert_eq!(parsed.wit_authorities.len(), 1);
        // X.509 forms.
        let der = bundle.x509_authorities_der();
        assert_eq!(
            parse_x509_authorities_der(&der).expect("der"),
            bundle.x509_authorities
        );
        let pem = bundle.x509_authorities_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(
            parse_x509_authorities_pem(&pem).expect("pem"),
            bundle.x509_authorities
        );
    }

    #[test]
    fn multiple_x509_authorities_concatenate() {
        let mut bundle = TrustDomainBundle::new(td("example.org"));
        bundle.x509_authorities = vec![ca_der(), CA_RSA_DER.to_vec()];
        let doc: Value =
            serde_json::from_str(&bundle.to_spiffe_jwks().expect("emit")).expect("json");
        assert_eq!(doc["keys"][1]["kty"], "RSA");
        assert_eq!(doc["keys"][1]["e"], "AQAB");
        let der = bundle.x509_authorities_der();
        assert_eq!(
            parse_x509_authorities_der(&der).expect("der"),
            bundle.x509_authorities
        );
        let pem = format!("comment line\n{}trailing\n", bundle.x509_authorities_pem());
        assert_eq!(
            parse_x509_authorities_pem(&pem).expect("pem"),
            bundle.x509_authorities
        );
        assert!(parse_x509_authorities_der(&der[..der.len() - 1]).is_err());
        assert!(parse_x509_authorities_der(b"\x30\x03\x02\x01\x00").is_err());
        assert_eq!(
            parse_x509_authorities_der(&[]).expect("empty"),
            Vec::<Vec<u8>>::new()
        );
        assert!(matches!(
            parse_x509_authorities_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(BundleError::PemLabel(_))
        ));
        assert!(matches!(
            parse_x509_authorities_pem("-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(BundleError::Pem(_))
        ));
    }

    fn parse(doc: Value) -> Result<TrustDomainBundle, BundleError> {
        TrustDomainBundle::from_spiffe_jwks(td("example.org"), doc.to_string().as_bytes())
    }

    fn ec_members(kid: Option<&str>, key_use: Option<&str>) -> Value {
        let mut m = jwk("x").key.to_jwk_members();
        if let Some(kid) = kid {
            m.insert("kid".into(), kid.into());
        }
        if let Some(key_use) = key_use {
            m.insert("use".into(), key_use.into());
        }
        Value::Object(m)
    }

    #[test]
    fn consumer_rules_ignore_what_the_spec_says_to_ignore() {
        let cert = STANDARD.encode(ca_der());
        let bundle = parse(json!({
            "keys": [
                {"kty": "oct", "use": "jwt-svid", "kid": "sym", "k": "AAAA"},
                {"use": "jwt-svid", "kid": "no-kty"},
                {"kty": "EC", "use": "jwt-svid", "kid": "k256k", "crv": "secp256k1", "x": "AA", "y": "AA"},
                {"kty": "EC", "use": "x509-svid", "crv": "P-256", "x": "AA", "y": "AA"},
                {"kty": "EC", "use": "x509-svid", "x5c": []},
                {"kty": "EC", "use": "x509-svid", "x5c": [cert, "not even base64!"]},
                {"kty": "EC", "use": "enc", "kid": "other"},
                {"kty": "EC", "use": "JWT-SVID", "kid": "case-sensitive"},
                ec_members(Some("no-use"), None),
                ec_members(Some("good"), Some("jwt-svid")),
            ],
            "unknown_member": {"anything": [1, 2]},
        }))
        .expect("bundle parses");
        assert_eq!(
            bundle.x509_authorities.len(),
            1,
            "only the first x5c of the one usable entry"
        );
        assert_eq!(bundle.jwt_authorities.keys().collect::<Vec<_>>(), ["good"]);
        assert!(bundle.wit_authorities.is_empty());
        assert_eq!(bundle.sequence_number, None);
    }

    #[test]
    fn empty_keys_trusts_nothing_but_missing_keys_is_an_error() {
        let bundle = parse(json!({"keys": [], "spiffe_sequence": 3})).expect("empty bundle");
        assert!(bundle.x509_authorities.is_empty() && bundle.jwt_authorities.is_empty());
        assert_eq!(
            parse(json!({"spiffe_sequence": 3})),
            Err(BundleError::MissingKeys)
        );
        assert_eq!(parse(json!({"keys": {}})), Err(BundleError::KeysNotArray));
        assert_eq!(
            parse(json!({"keys": [1]})),
            Err(BundleError::KeyNotObject(0))
        );
    }

    #[test]
    fn kid_rules() {
        assert_eq!(
            parse(json!({"keys": [ec_members(None, Some("jwt-svid"))]})),
            Err(BundleError::MissingKid {
                key_use: "jwt-svid",
                index: 0
            })
        );
        assert_eq!(
            parse(json!({"keys": [ec_members(Some(""), Some("wit-svid"))]})),
            Err(BundleError::MissingKid {
                key_use: "wit-svid",
                index: 0
            })
        );
        assert_eq!(
            parse(
                json!({"keys": [ec_members(Some("a"), Some("jwt-svid")), ec_members(Some("a"), Some("wit-svid"))]})
            ),
            Err(BundleError::DuplicateKid("a".into()))
        );
        assert_eq!(
            parse(
                json!({"keys": [ec_members(Some("a"), Some("jwt-svid")), ec_members(Some("a"), Some("jwt-svid"))]})
            ),
            Err(BundleError::DuplicateKid("a".into()))
        );
        // Emitting refuses a kid shared between JWT and WIT keys.
        let mut bundle = TrustDomainBundle::new(td("example.org"));
        bundle.jwt_authorities.insert("same".into(), jwk("same"));
        bundle.wit_authorities.insert("same".into(), jwk("same"));
        assert_eq!(
            bundle.to_spiffe_jwks(),
            Err(BundleError::DuplicateKid("same".into()))
        );
    }

    #[test]
    fn malformed_members_are_errors() {
        assert_eq!(
            parse(json!({"keys": [], "spiffe_sequence": -1})),
            Err(BundleError::InvalidSequence)
        );
        assert_eq!(
            parse(json!({"keys": [], "spiffe_sequence": "1"})),
            Err(BundleError::InvalidSequence)
        );
        assert_eq!(
            parse(json!({"keys": [], "spiffe_refresh_hint": 1.5})),
            Err(BundleError::InvalidRefreshHint)
        );
        assert_eq!(
            parse(json!({"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["AAAA"]}]}))
                .map(|_| ())
                .map_err(|e| e.label()),
            Err("invalid_certificate")
        );
        assert_eq!(
            parse(json!({"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["AA-_"]}]})),
            Err(BundleError::InvalidX5c(0))
        );
        assert!(matches!(
            parse(
                json!({"keys": [{"kty": "EC", "use": "jwt-svid", "kid": "k", "crv": "P-256", "x": "AA", "y": "AA"}]})
            ),
            Err(BundleError::Jwk { index: 0, .. })
        ));
        assert_eq!(
            TrustDomainBundle::from_spiffe_jwks(td("example.org"), br#"{"keys":[],"keys":[]}"#),
            Err(BundleError::DuplicateMember("keys".into()))
        );
        assert!(matches!(
            TrustDomainBundle::from_spiffe_jwks(td("example.org"), b"[]"),
            Err(BundleError::Json(_))
        ));
    }

    #[test]
    fn jwt_bundle_form_rules() {
        // JB: kid selection, non-jwt-svid use ignored, unknown kty ignored, empty = trust nothing.
        let doc = json!({"keys": [
            ec_members(Some("a"), None),
            ec_members(Some("b"), Some("jwt-svid")),
            ec_members(Some("c"), Some("x509-svid")),
            ec_members(Some("d"), Some("wit-svid")),
            {"kty": "oct", "kid": "e", "k": "AAAA"},
        ]});
        let bundle =
            TrustDomainBundle::from_jwt_bundle_json(td("example.org"), doc.to_string().as_bytes())
                .expect("parse");
        assert_eq!(
            bundle.jwt_authorities.keys().collect::<Vec<_>>(),
            ["a", "b"]
        );
        let empty = TrustDomainBundle::from_jwt_bundle_json(td("example.org"), br#"{"keys":[]}"#)
            .expect("empty");
        assert!(empty.jwt_authorities.is_empty());
        assert_eq!(
            TrustDomainBundle::from_jwt_bundle_json(
                td("example.org"),
                json!({"keys": [ec_members(None, None)]})
                    .to_string()
                    .as_bytes()
            ),
            Err(BundleError::MissingKid {
                key_use: "jwt-svid",
                index: 0
            })
        );
    }

    #[test]
    fn bundle_map_round_trip_and_duplicates() {
        let a = sample_bundle();
        let mut b = TrustDomainBundle::new(td("other.org"));
        b.jwt_authorities.insert("k".into(), jwk("k"));
        let json = bundle_map_json([&a, &b]).expect("emit");
        let doc: Value = serde_json::from_str(&json).expect("json");
        assert!(
            doc["trust_domains"]["example.org"]
                .get("spiffe_refresh_hint")
                .is_none()
        );
        let parsed = parse_bundle_map(json.as_bytes()).expect("parse");
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[&td("example.org")].x509_authorities,
            a.x509_authorities
        );
        assert_eq!(parsed[&td("other.org")].jwt_authorities.len(), 1);
        assert_eq!(
            parse_bundle_map(br#"{"trust_domains":{}}"#)
                .expect("empty")
                .len(),
            0
        );
        assert_eq!(
            parse_bundle_map(b"{}"),
            Err(BundleError::MissingTrustDomains)
        );
        assert_eq!(
            parse_bundle_map(br#"{"trust_domains":{"a.org":{"keys":[]},"a.org":{"keys":[]}}}"#),
            Err(BundleError::DuplicateMember("a.org".into()))
        );
        assert_eq!(
            parse_bundle_map(
                br#"{"trust_domains":{"a.org":{"keys":[]},"spiffe://a.org":{"keys":[]}}}"#
            ),
            Err(BundleError::DuplicateTrustDomain("a.org".into()))
        );
        assert!(matches!(
            parse_bundle_map(br#"{"trust_domains":{"A.org":{"keys":[]}}}"#),
            Err(BundleError::InvalidTrustDomain { .. })
        ));
    }

    #[test]
    fn bundle_sources_only_answer_for_their_trust_domain() {
        let a = sample_bundle();
        assert!(a.bundle_for(&td("example.org")).is_some());
        assert!(a.bundle_for(&td("other.org")).is_none());
        let map: BTreeMap<TrustDomain, std::sync::Arc<TrustDomainBundle>> =
            [(td("example.org"), std::sync::Arc::new(a.clone()))].into();
        assert!(map.bundle_for(&td("example.org")).is_some());
        let list = [a];
        assert!(list[..].bundle_for(&td("other.org")).is_none());
    }
}
