//! WIMSE Workload Identity Tokens (WIT, `draft-ietf-wimse-workload-creds`), their SPIFFE profile
//! WIT-SVID (`standards/WIT-SVID.md`), and Workload Proof Tokens (WPT, `draft-ietf-wimse-wpt`).
//!
//! A WIT binds a workload's public key (`cnf.jwk`) to its identifier; it is never a bearer token.
//! Each request carries the WIT plus a WPT signed with the workload's private key over the
//! request's audience and a hash of the WIT (`wth`) and of any other tokens sent with it.
//!
//! Two validation profiles share one validator ([`WitProfile`]):
//! * `WitSvid` (default): `sub` is a SPIFFE ID, `kid` required, `alg` and `cnf.jwk.alg` limited to
//!   RS/ES/PS 256/384/512, `aud` forbidden.
//! * `Wimse`: `sub` may also be `wimse://`, EdDSA is allowed, `kid` is optional (without it the
//!   trust domain must publish exactly one WIT key: the draft asks for an unambiguous key), and
//!   `aud` is ignored.
//!
//! Both require `typ` `wit+jwt` (the current drafts; `wimse-id+jwt` from s2s-protocol-06 and
//! earlier is refused), `cnf.jwk` with `alg`, and an unexpired `exp`; `nbf` is honoured.

use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Map, Value};

use super::jwt_svid::{JwtSvidError, audience_values, check_time_claims};
use super::{
    CompactJws, JoseError, JwsAlgorithm, PublicJwk, b64url_encode, clip, sha256_b64url,
    sign_compact, unix_seconds,
};
use crate::bundle::BundleSource;
use crate::keys::SigningKey;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::wimse_id::{WimseIdError, WorkloadIdentifier};

/// The WIT `typ` (media type `application/wit+jwt`).
pub const WIT_TYP: &str = "wit+jwt";
/// The WPT `typ` (media type `application/wpt+jwt`).
pub const WPT_TYP: &str = "wpt+jwt";

/// Why a WIT or WPT could not be minted or was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WimseError {
    #[error(transparent)]
    Jose(#[from] JoseError),
    #[error("token alg {0} is not allowed for WIT-SVIDs (RS/ES/PS 256/384/512 only)")]
    AlgNotAllowed(JwsAlgorithm),
    #[error("token header typ must be {0}")]
    BadTyp(&'static str),
    #[error("token header missing key id")]
    MissingKid,
    #[error("token missing subject claim")]
    MissingSubject,
    #[error("token subject is not a valid workload identifier: {0}")]
    InvalidSubject(WimseIdError),
    #[error("WIT-SVID subject must be a SPIFFE ID")]
    NotSpiffeSubject,
    #[error("no bundle found for trust domain \"{0}\"")]
    NoBundle(String),
    #[error("no WIT authority \"{kid}\" found for trust domain \"{trust_domain}\"")]
    NoAuthority { kid: String, trust_domain: String },
    #[error("token has no kid and trust domain \"{0}\" does not publish exactly one WIT authority")]
    AmbiguousKey(String),
    #[error("token missing cnf claim")]
    MissingCnf,
    #[error("cnf claim must be an object with a jwk member")]
    MalformedCnf,
    #[error("cnf.jwk is not a valid public JWK: {0}")]
    InvalidCnfKey(JoseError),
    #[error("cnf.jwk must carry alg")]
    MissingCnfAlg,
    #[error("cnf.jwk alg is not an allowed signature algorithm: {0}")]
    CnfAlgNotAllowed(String),
    #[error("cnf.jwk key type cannot sign with its alg {0}")]
    CnfKeyAlgMismatch(JwsAlgorithm),
    #[error("WIT-SVID must not contain an aud claim")]
    AudienceNotAllowed,
    #[error("token missing exp claim")]
    MissingExp,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("claim {0} has the wrong type")]
    ClaimType(&'static str),
    #[error("WPT alg {wpt} does not equal the WIT's cnf.jwk alg {cnf}")]
    WptAlgMismatch {
        wpt: JwsAlgorithm,
        cnf: JwsAlgorithm,
    },
    #[error("WPT exp is unreasonably far in the future")]
    ExpTooFar,
    #[error("WPT audience does not match this service (audience={0:?})")]
    AudienceMismatch(Vec<String>),
    #[error("WPT missing jti claim")]
    MissingJti,
    #[error("WPT jti has been used before")]
    Replay,
    #[error("WPT missing wth claim")]
    MissingWth,
    #[error("WPT wth does not match the Workload-Identity-Token")]
    WthMismatch,
    #[error("WPT missing {0} claim although the request carries that token")]
    MissingTokenHash(&'static str),
    #[error("WPT {0} does not match the token in the request")]
    TokenHashMismatch(&'static str),
    #[error("WPT has {0} but the request carries no such token")]
    UnexpectedTokenHash(&'static str),
    #[error(
        "WPT oth names {0:?}, which the request does not carry or this verifier does not understand"
    )]
    UnknownOth(String),
    #[error("the signing key does not match the WIT's cnf.jwk")]
    WorkloadKeyMismatch,
    #[error("a WIT needs a non-empty kid")]
    EmptyKid,
    #[error("a WPT needs a non-empty audience")]
    EmptyAudience,
    #[error("expiry must be after issuance")]
    ExpiryBeforeIssuance,
    #[error("random source failed")]
    Random,
}

impl WimseError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            WimseError::Jose(e) => e.label(),
            WimseError::AlgNotAllowed(_) => "alg_not_allowed",
            WimseError::BadTyp(_) => "bad_typ",
            WimseError::MissingKid => "missing_kid",
            WimseError::MissingSubject => "missing_subject",
            WimseError::InvalidSubject(_) => "invalid_subject",
            WimseError::NotSpiffeSubject => "not_spiffe_subject",
            WimseError::NoBundle(_) => "no_bundle",
            WimseError::NoAuthority { .. } => "no_authority",
            WimseError::AmbiguousKey(_) => "ambiguous_key",
            WimseError::MissingCnf => "missing_cnf",
            WimseError::MalformedCnf => "malformed_cnf",
            WimseError::InvalidCnfKey(_) => "invalid_cnf_key",
            WimseError::MissingCnfAlg => "missing_cnf_alg",
            WimseError::CnfAlgNotAllowed(_) => "cnf_alg_not_allowed",
            WimseError::CnfKeyAlgMismatch(_) => "cnf_key_alg_mismatch",
            WimseError::AudienceNotAllowed => "audience_not_allowed",
            WimseError::MissingExp => "missing_exp",
            WimseError::Expired => "expired",
            WimseError::NotYetValid => "not_yet_valid",
            WimseError::ClaimType(_) => "claim_type",
            WimseError::WptAlgMismatch { .. } => "wpt_alg_mismatch",
            WimseError::ExpTooFar => "exp_too_far",
            WimseError::AudienceMismatch(_) => "audience_mismatch",
            WimseError::MissingJti => "missing_jti",
            WimseError::Replay => "replay",
            WimseError::MissingWth => "missing_wth",
            WimseError::WthMismatch => "wth_mismatch",
            WimseError::MissingTokenHash(_) => "missing_token_hash",
            WimseError::TokenHashMismatch(_) => "token_hash_mismatch",
            WimseError::UnexpectedTokenHash(_) => "unexpected_token_hash",
            WimseError::UnknownOth(_) => "unknown_oth",
            WimseError::WorkloadKeyMismatch => "workload_key_mismatch",
            WimseError::EmptyKid => "empty_kid",
            WimseError::EmptyAudience => "empty_audience",
            WimseError::ExpiryBeforeIssuance => "expiry_before_issuance",
            WimseError::Random => "random",
        }
    }
}

/// The shared claim checks report JWT-SVID errors; map them to ours.
fn claim_error(error: JwtSvidError) -> WimseError {
    match error {
        JwtSvidError::MissingExp => WimseError::MissingExp,
        JwtSvidError::Expired => WimseError::Expired,
        JwtSvidError::NotYetValid => WimseError::NotYetValid,
        JwtSvidError::ClaimType(name) => WimseError::ClaimType(name),
        JwtSvidError::Jose(e) => WimseError::Jose(e),
        // The helpers used here return nothing else.
        _ => WimseError::ClaimType("unknown"),
    }
}

/// RFC 7515 §4.1.9: `typ` is a media type, compared case-insensitively, `application/` optional.
fn typ_is(typ: Option<&str>, expected: &str) -> bool {
    let Some(typ) = typ else {
        return false;
    };
    let bare = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => {
            typ.get(12..).unwrap_or_default()
        }
        _ => typ,
    };
    bare.eq_ignore_ascii_case(expected)
}

/// What goes into a new WIT-SVID.
#[derive(Debug, Clone)]
pub struct WitSvidClaims<'a> {
    pub spiffe_id: &'a SpiffeId,
    /// The workload's public key; its `alg` is required (see [`PublicJwk::for_signing_key`]).
    pub workload_key: &'a PublicJwk,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub jti: Option<&'a str>,
}

/// Signs a WIT-SVID: header `alg` (from the authority key), `kid`, `typ` `wit+jwt`; claims `sub`,
/// `exp`, `iat`, optional `jti`, and `cnf.jwk` with `alg`. Never `aud`.
pub fn mint_wit_svid(
    authority: &SigningKey,
    kid: &str,
    claims: &WitSvidClaims<'_>,
) -> Result<String, WimseError> {
    if kid.is_empty() {
        return Err(WimseError::EmptyKid);
    }
    let cnf_alg = claims
        .workload_key
        .alg
        .as_deref()
        .ok_or(WimseError::MissingCnfAlg)?;
    let cnf_alg = JwsAlgorithm::from_name(cnf_alg)
        .map_err(|_| WimseError::CnfAlgNotAllowed(clip(cnf_alg)))?;
    if !cnf_alg.is_spiffe_alg() {
        return Err(WimseError::CnfAlgNotAllowed(cnf_alg.name().to_owned()));
    }
    if !claims.workload_key.key.supports(cnf_alg) {
        return Err(WimseError::CnfKeyAlgMismatch(cnf_alg));
    }
    let iat = unix_seconds(claims.issued_at);
    let exp = unix_seconds(claims.expires_at);
    if exp <= iat {
        return Err(WimseError::ExpiryBeforeIssuance);
    }
    let mut header = Map::new();
    header.insert("kid".into(), kid.into());
    header.insert("typ".into(), WIT_TYP.into());
    let mut cnf = Map::new();
    cnf.insert(
        "jwk".into(),
        Value::Object(claims.workload_key.to_json_map()),
    );
    let mut body = Map::new();
    body.insert("sub".into(), claims.spiffe_id.as_str().into());
    body.insert("exp".into(), exp.into());
    body.insert("iat".into(), iat.into());
    if let Some(jti) = claims.jti {
        body.insert("jti".into(), jti.into());
    }
    body.insert("cnf".into(), Value::Object(cnf));
    Ok(sign_compact(&header, &body, authority)?)
}

/// Which rules a WIT must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WitProfile {
    /// SPIFFE WIT-SVID: stricter, the default.
    #[default]
    WitSvid,
    /// Generic WIMSE WIT: `wimse://` subjects, EdDSA, optional kid.
    Wimse,
}

/// WIT validator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitValidation {
    pub profile: WitProfile,
    /// Clock skew allowed for `exp` and `nbf` (WIT-SVID: "seconds to at most a couple of minutes").
    pub leeway: Duration,
}

impl Default for WitValidation {
    fn default() -> Self {
        Self {
            profile: WitProfile::WitSvid,
            leeway: Duration::from_secs(60),
        }
    }
}

/// A WIT that passed validation: the identity, the key its WPTs must be signed with, and the
/// hash WPTs must carry as `wth`.
#[derive(Clone, PartialEq)]
pub struct ValidatedWit {
    pub subject: WorkloadIdentifier,
    /// The confirmation key from `cnf.jwk`; its `alg` is always set.
    pub cnf_key: PublicJwk,
    pub cnf_alg: JwsAlgorithm,
    pub expires_at: i64,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    wit_hash: String,
}

impl std::fmt::Debug for ValidatedWit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatedWit")
            .field("subject", &self.subject)
            .field("cnf_alg", &self.cnf_alg)
            .field("expires_at", &self.expires_at)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ValidatedWit {
    /// The SPIFFE ID, for a `spiffe://` subject.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.subject.as_spiffe_id()
    }

    /// base64url(SHA-256(WIT)): the `wth` every WPT presented with this WIT must carry.
    pub fn wit_hash(&self) -> &str {
        &self.wit_hash
    }
}

/// Validates a WIT (or WIT-SVID, per `options.profile`) with WIT authorities from `bundles`.
pub fn validate_wit(
    token: &str,
    bundles: &(impl BundleSource + ?Sized),
    now: SystemTime,
    options: &WitValidation,
) -> Result<ValidatedWit, WimseError> {
    let strict = options.profile == WitProfile::WitSvid;
    let jws = CompactJws::parse(token)?;
    if strict && !jws.alg().is_spiffe_alg() {
        return Err(WimseError::AlgNotAllowed(jws.alg()));
    }
    if !typ_is(jws.typ()?, WIT_TYP) {
        return Err(WimseError::BadTyp(WIT_TYP));
    }
    let kid = jws.kid()?;
    if strict && kid.is_none() {
        return Err(WimseError::MissingKid);
    }
    let subject = match jws.claims().get("sub") {
        None => return Err(WimseError::MissingSubject),
        Some(Value::String(sub)) => {
            WorkloadIdentifier::parse(sub).map_err(WimseError::InvalidSubject)?
        }
        Some(_) => return Err(WimseError::ClaimType("sub")),
    };
    if strict && subject.as_spiffe_id().is_none() {
        return Err(WimseError::NotSpiffeSubject);
    }
    // A wimse:// trust domain is a DNS name, which is also a valid SPIFFE trust domain name.
    let trust_domain = TrustDomain::new(subject.trust_domain())
        .map_err(|e| WimseError::InvalidSubject(WimseIdError::Spiffe(e)))?;
    let bundle = bundles
        .bundle_for(&trust_domain)
        .ok_or_else(|| WimseError::NoBundle(trust_domain.name().to_owned()))?;
    let authority = match kid {
        Some(kid) => bundle
            .wit_authority(kid)
            .ok_or_else(|| WimseError::NoAuthority {
                kid: clip(kid),
                trust_domain: trust_domain.name().to_owned(),
            })?,
        None => {
            let mut keys = bundle.wit_authorities.values();
            match (keys.next(), keys.next()) {
                (Some(only), None) => only,
                _ => return Err(WimseError::AmbiguousKey(trust_domain.name().to_owned())),
            }
        }
    };
    jws.verify(authority)?;
    let (cnf_key, cnf_alg) = confirmation_key(jws.claims(), strict)?;
    if strict && jws.claims().contains_key("aud") {
        return Err(WimseError::AudienceNotAllowed);
    }
    let expires_at = check_time_claims(jws.claims(), now, options.leeway).map_err(claim_error)?;
    let kid = kid.map(str::to_owned);
    Ok(ValidatedWit {
        subject,
        cnf_key,
        cnf_alg,
        expires_at,
        kid,
        claims: jws.into_claims(),
        wit_hash: sha256_b64url(token.as_bytes()),
    })
}

/// Reads `cnf.jwk` and its required `alg`.
fn confirmation_key(
    claims: &Map<String, Value>,
    strict: bool,
) -> Result<(PublicJwk, JwsAlgorithm), WimseError> {
    let cnf = claims.get("cnf").ok_or(WimseError::MissingCnf)?;
    let Some(Value::Object(jwk)) = cnf.get("jwk") else {
        return Err(WimseError::MalformedCnf);
    };
    let key = PublicJwk::from_json_map(jwk).map_err(WimseError::InvalidCnfKey)?;
    let alg_name = key.alg.as_deref().ok_or(WimseError::MissingCnfAlg)?;
    let alg = JwsAlgorithm::from_name(alg_name)
        .map_err(|_| WimseError::CnfAlgNotAllowed(clip(alg_name)))?;
    if strict && !alg.is_spiffe_alg() {
        return Err(WimseError::CnfAlgNotAllowed(alg.name().to_owned()));
    }
    if !key.key.supports(alg) {
        return Err(WimseError::CnfKeyAlgMismatch(alg));
    }
    Ok((key, alg))
}

/// What goes into a new WPT.
#[derive(Clone)]
pub struct WptClaims<'a> {
    /// The WIT sent alongside (hashed into `wth`).
    pub wit: &'a str,
    /// The target URI without query or fragment, or a deployment-specific value.
    pub audience: &'a str,
    pub expires_at: SystemTime,
    /// An OAuth access token sent with the request (hashed into `ath`).
    pub access_token: Option<&'a str>,
    /// A Txn-Token sent with the request (hashed into `tth`).
    pub txn_token: Option<&'a str>,
    /// Other token headers sent with the request, as (header name, value): hashed into `oth`
    /// under the lower-cased name.
    pub other_tokens: &'a [(&'a str, &'a str)],
}

impl std::fmt::Debug for WptClaims<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The WIT and the access tokens are credentials: never print them.
        f.debug_struct("WptClaims")
            .field("audience", &self.audience)
            .field("expires_at", &self.expires_at)
            .field("access_token", &self.access_token.is_some())
            .field("txn_token", &self.txn_token.is_some())
            .field("other_tokens", &self.other_tokens.len())
            .finish_non_exhaustive()
    }
}

/// Signs a WPT with the workload's private key: header `alg` (= the WIT's `cnf.jwk.alg`), `typ`
/// `wpt+jwt`; claims `aud`, `exp`, a random 128-bit `jti`, `wth`, and `ath`/`tth`/`oth` for the
/// tokens given. The key must be the one in the WIT's `cnf` (checked, to fail early).
pub fn mint_wpt(workload_key: &SigningKey, claims: &WptClaims<'_>) -> Result<String, WimseError> {
    if claims.audience.is_empty() {
        return Err(WimseError::EmptyAudience);
    }
    let wit = CompactJws::parse(claims.wit)?;
    let (cnf_key, cnf_alg) = confirmation_key(wit.claims(), false)?;
    if cnf_key.key != super::PublicKey::from_signing_key(workload_key) {
        return Err(WimseError::WorkloadKeyMismatch);
    }
    let key_alg = JwsAlgorithm::from_name(workload_key.algorithm().jws_alg())?;
    if key_alg != cnf_alg {
        return Err(WimseError::WptAlgMismatch {
            wpt: key_alg,
            cnf: cnf_alg,
        });
    }
    let mut jti = [0u8; 16];
    SystemRandom::new()
        .fill(&mut jti)
        .map_err(|_| WimseError::Random)?;
    let mut header = Map::new();
    header.insert("typ".into(), WPT_TYP.into());
    let mut body = Map::new();
    body.insert("aud".into(), claims.audience.into());
    body.insert("exp".into(), unix_seconds(claims.expires_at).into());
    body.insert("jti".into(), b64url_encode(&jti).into());
    body.insert("wth".into(), sha256_b64url(claims.wit.as_bytes()).into());
    if let Some(token) = claims.access_token {
        body.insert("ath".into(), sha256_b64url(token.as_bytes()).into());
    }
    if let Some(token) = claims.txn_token {
        body.insert("tth".into(), sha256_b64url(token.as_bytes()).into());
    }
    if !claims.other_tokens.is_empty() {
        let oth: Map<String, Value> = claims
            .other_tokens
            .iter()
            .map(|(name, value)| {
                (
                    name.to_ascii_lowercase(),
                    sha256_b64url(value.trim().as_bytes()).into(),
                )
            })
            .collect();
        body.insert("oth".into(), Value::Object(oth));
    }
    Ok(sign_compact(&header, &body, workload_key)?)
}

/// A `jti` replay cache. Implementations use interior mutability and forget entries after
/// `expires_at` (seconds since the epoch).
pub trait JtiReplayCache {
    /// Records `jti` and returns true if it was not seen before.
    fn first_use(&self, jti: &str, expires_at: i64) -> bool;
}

/// What the verifier knows about the request a WPT arrived with.
#[derive(Clone, Copy)]
pub struct WptExpectations<'a> {
    /// Accepted `aud` values: the target URI (without query or fragment) and trusted aliases,
    /// decided by configuration, never from `Host` or `X-Forwarded-Host`.
    pub audiences: &'a [&'a str],
    /// The request's access token, if any: `ath` must then be present and match.
    pub access_token: Option<&'a str>,
    /// The request's Txn-Token, if any: `tth` must then be present and match.
    pub txn_token: Option<&'a str>,
    /// Other token headers of the request this verifier understands, as (name, value). Every
    /// `oth` entry must name one of them and match its hash; headers not covered by `oth` are
    /// reported in [`VerifiedWpt::covered_other_tokens`] by omission and must not be used.
    pub other_tokens: &'a [(&'a str, &'a str)],
    /// Refuse `exp` further than this from now (the draft: "unreasonably far in the future").
    pub max_lifetime: Duration,
    /// Clock skew allowed for `exp`.
    pub leeway: Duration,
    /// The RECOMMENDED `jti` replay check.
    pub replay_cache: Option<&'a dyn JtiReplayCache>,
}

impl std::fmt::Debug for WptExpectations<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are credentials: show only whether they are present.
        f.debug_struct("WptExpectations")
            .field("audiences", &self.audiences)
            .field("access_token", &self.access_token.is_some())
            .field("txn_token", &self.txn_token.is_some())
            .field("other_tokens", &self.other_tokens.len())
            .field("max_lifetime", &self.max_lifetime)
            .field("leeway", &self.leeway)
            .field("replay_cache", &self.replay_cache.is_some())
            .finish()
    }
}

impl<'a> WptExpectations<'a> {
    /// Expectations for a request with no other tokens: 5 minute maximum lifetime, 10 s leeway,
    /// no replay cache.
    pub fn new(audiences: &'a [&'a str]) -> Self {
        Self {
            audiences,
            access_token: None,
            txn_token: None,
            other_tokens: &[],
            max_lifetime: Duration::from_secs(300),
            leeway: Duration::from_secs(10),
            replay_cache: None,
        }
    }
}

/// A WPT that passed verification.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedWpt {
    pub jti: String,
    pub audience: Vec<String>,
    pub expires_at: i64,
    /// Lower-cased names of the `other_tokens` that `oth` covers; only these may be used.
    pub covered_other_tokens: Vec<String>,
    pub claims: Map<String, Value>,
}

/// Verifies a WPT against an already-validated WIT, per every MUST of the WPT draft's
/// verification list. The HTTP layer must already have checked that the request carries exactly
/// one `Workload-Proof-Token` header, and must answer failures with 400, not 401.
pub fn verify_wpt(
    wpt: &str,
    wit: &ValidatedWit,
    expect: &WptExpectations<'_>,
    now: SystemTime,
) -> Result<VerifiedWpt, WimseError> {
    let jws = CompactJws::parse(wpt)?;
    if !typ_is(jws.typ()?, WPT_TYP) {
        return Err(WimseError::BadTyp(WPT_TYP));
    }
    if jws.alg() != wit.cnf_alg {
        return Err(WimseError::WptAlgMismatch {
            wpt: jws.alg(),
            cnf: wit.cnf_alg,
        });
    }
    jws.verify(&wit.cnf_key)?;
    let claims = jws.claims();
    let expires_at = check_time_claims(claims, now, expect.leeway).map_err(claim_error)?;
    let horizon = unix_seconds(now)
        .saturating_add(i64::try_from(expect.max_lifetime.as_secs()).unwrap_or(i64::MAX))
        .saturating_add(i64::try_from(expect.leeway.as_secs()).unwrap_or(i64::MAX));
    if expires_at > horizon {
        return Err(WimseError::ExpTooFar);
    }
    let audience = audience_values(claims)
        .map_err(claim_error)?
        .unwrap_or_default();
    if !audience
        .iter()
        .any(|a| expect.audiences.contains(&a.as_str()))
    {
        return Err(WimseError::AudienceMismatch(
            audience.iter().take(8).map(|a| clip(a)).collect(),
        ));
    }
    match string_claim(claims, "wth")? {
        None => return Err(WimseError::MissingWth),
        Some(wth) if wth != wit.wit_hash() => return Err(WimseError::WthMismatch),
        Some(_) => {}
    }
    check_token_hash(claims, "ath", expect.access_token)?;
    check_token_hash(claims, "tth", expect.txn_token)?;
    let covered_other_tokens = check_oth(claims, expect.other_tokens)?;
    let jti = match string_claim(claims, "jti")? {
        Some(jti) if !jti.is_empty() => jti.to_owned(),
        _ => return Err(WimseError::MissingJti),
    };
    // Last, so a token that fails any other check never consumes its jti.
    if let Some(cache) = expect.replay_cache
        && !cache.first_use(&jti, expires_at)
    {
        return Err(WimseError::Replay);
    }
    Ok(VerifiedWpt {
        jti,
        audience,
        expires_at,
        covered_other_tokens,
        claims: jws.into_claims(),
    })
}

fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, WimseError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(WimseError::ClaimType(name)),
    }
}

/// `ath`/`tth`: required and equal when the request carries the token, absent otherwise.
fn check_token_hash(
    claims: &Map<String, Value>,
    name: &'static str,
    token: Option<&str>,
) -> Result<(), WimseError> {
    match (string_claim(claims, name)?, token) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(WimseError::MissingTokenHash(name)),
        (Some(_), None) => Err(WimseError::UnexpectedTokenHash(name)),
        (Some(hash), Some(token)) if hash == sha256_b64url(token.as_bytes()) => Ok(()),
        (Some(_), Some(_)) => Err(WimseError::TokenHashMismatch(name)),
    }
}

/// Every `oth` entry must name a token header of the request that we understand and match its
/// trimmed value's hash. Returns the covered header names.
fn check_oth(
    claims: &Map<String, Value>,
    other_tokens: &[(&str, &str)],
) -> Result<Vec<String>, WimseError> {
    let oth = match claims.get("oth") {
        None => return Ok(Vec::new()),
        Some(Value::Object(oth)) => oth,
        Some(_) => return Err(WimseError::ClaimType("oth")),
    };
    let mut covered = Vec::with_capacity(oth.len());
    for (name, hash) in oth {
        let Value::String(hash) = hash else {
            return Err(WimseError::ClaimType("oth"));
        };
        let value = other_tokens
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| *value)
            .ok_or_else(|| WimseError::UnknownOth(clip(name)))?;
        if *hash != sha256_b64url(value.trim().as_bytes()) {
            return Err(WimseError::TokenHashMismatch("oth"));
        }
        covered.push(name.to_ascii_lowercase());
    }
    Ok(covered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::TrustDomainBundle;
    use crate::jose::jws::encode_compact;
    use crate::jose::jws::test_signers::TestKey;
    use crate::jose::test_support::{NOW, at, id, obj};
    use crate::jose::{PublicKey, b64url_decode};
    use crate::keys::KeyAlgorithm;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashSet};

    /// The draft's example WIT (`includes/wit.txt` of ietf-wg-wimse/draft-ietf-wimse-s2s-protocol
    /// at 1be2e3c), the public half of the authority key ("June 5") from the repository's example
    /// generator that produced it (`includes/authority-key.txt.out` holds a newer key that does
    /// not verify this WIT), and the matching WPT (`includes/wpt.txt.out`, RFC 8792 line wrapping
    /// removed).
    const DRAFT_WIT: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6Ikp1bmUgNSIsInR5cCI6IndpdCtqd3QifQ.eyJjbmYiOnsiandrIjp7ImFsZyI6IkVkRFNBIiwiY3J2IjoiRWQyNTUxOSIsImt0eSI6Ik9LUCIsIngiOiIxQ1hYdmZsTl9MVlZzSXNZWHNVdkIwM0ptbEdXZUNIcVFWdW91Q0Y5MmJnIn19LCJleHAiOjE3NDU1MTI1MTAsImlhdCI6MTc0NTUwODkxMCwianRpIjoieC1fMUNUTDJjY2EzQ1NFNGN3Yl9sIiwic3ViIjoid2ltc2U6Ly9leGFtcGxlLmNvbS9zcGVjaWZpYy13b3JrbG9hZCJ9.6KraSQUxWdl9dxFQ3Fj6dPY0Vi88OkwFwZpAIOhLeq6AbXAnLLQgOp8U9UDGcBuYF3KiNv6oKQD1ZWAzrMZOJw";
    const DRAFT_AUTHORITY_JWK: &str = r#"{"kty":"EC","kid":"June 5","crv":"P-256","x":"kXqnA2Op7hgd4zRMbw0iFcc_hDxUxhojxOFVGjE2gks","y":"n__VndPMR021-59UAs0b9qDTFT-EZtT6xSNs_xFskLo"}"#;
    const DRAFT_WPT: &str = concat!(
        "eyJhbGciOiJFZERTQSIsInR5cCI6IndwdCtqd3QifQ.eyJhdGgiOiJDTDR3amZwUm1OZ",
        "i1iZFlJYllMblY5ZDVyTUFSR3dLWUUxMHdVd3pDMGpJIiwiYXVkIjoiaHR0cHM6Ly93b",
        "3JrbG9hZC5leGFtcGxlLmNvbS9wYXRoIiwiZXhwIjoxNzQ1NTEwMDE2LCJqdGkiOiJfX",
        "2J3YzRFU0MzYWNjMkxUQzEtX3giLCJ3dGgiOiJBYVlVZkMzNEQxZGkyRnhRTHBpSUpKN",
        "1NnOFZaNm84T0Nkd1NmOUlUb0xnIn0.PI7d9AcYhLoEgPgbJvcM132lkBKnM1NXU-5hZ",
        "UzVTIyj2dRJaTLFs6e5NYv5gg6AqcV7NvkYCwfgMgWasWQzCA",
    );
    const DRAFT_ACCESS_TOKEN: &str = "16_mAd0GiwaZokU26_0902100";

    #[test]
    fn draft_wit_hashes_to_the_published_wth() {
        assert_eq!(
            sha256_b64url(DRAFT_WIT.as_bytes()),
            "AaYUfC34D1di2FxQLpiIJJ7Sg8VZ6o8OCdwSf9IToLg"
        );
        assert_eq!(
            sha256_b64url(DRAFT_ACCESS_TOKEN.as_bytes()),
            "CL4wjfpRmNf-bdYIbYLnV9d5rMARGwKYE10wUwzC0jI"
        );
    }

    fn draft_bundle() -> TrustDomainBundle {
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.com").expect("td"));
        let jwk = PublicJwk::from_json(DRAFT_AUTHORITY_JWK).expect("authority jwk");
        bundle.wit_authorities.insert("June 5".into(), jwk);
        bundle
    }

    #[test]
    fn draft_wit_and_wpt_verify_in_the_generic_wimse_profile() {
        let bundle = draft_bundle();
        let now = at(1_745_509_900);
        let wimse = WitValidation {
            profile: WitProfile::Wimse,
            ..Default::default()
        };
        let wit = validate_wit(DRAFT_WIT, &bundle, now, &wimse).expect("draft WIT validates");
        assert_eq!(
            wit.subject.as_str(),
            "wimse://example.com/specific-workload"
        );
        assert_eq!(wit.cnf_alg, JwsAlgorithm::EdDsa);
        assert_eq!(wit.kid.as_deref(), Some("June 5"));
        assert_eq!(
            wit.wit_hash(),
            "AaYUfC34D1di2FxQLpiIJJ7Sg8VZ6o8OCdwSf9IToLg"
        );
        let expect = WptExpectations {
            access_token: Some(DRAFT_ACCESS_TOKEN),
            ..WptExpectations::new(&["https://workload.example.com/path"])
        };
        let wpt = verify_wpt(DRAFT_WPT, &wit, &expect, now).expect("draft WPT verifies (EdDSA)");
        assert_eq!(wpt.jti, "__bwc4ESC3acc2LTC1-_x");
        assert_eq!(wpt.expires_at, 1_745_510_016);
        // Without the access token the WPT's ath has nothing to cover.
        assert_eq!(
            verify_wpt(
                DRAFT_WPT,
                &wit,
                &WptExpectations::new(&["https://workload.example.com/path"]),
                now
            )
            .err(),
            Some(WimseError::UnexpectedTokenHash("ath"))
        );
        // The WIT-SVID profile refuses the same token: wimse:// subject... and EdDSA cnf.
        assert_eq!(
            validate_wit(DRAFT_WIT, &bundle, now, &WitValidation::default()).err(),
            Some(WimseError::NotSpiffeSubject)
        );
        // And it is expired an hour later.
        assert_eq!(
            validate_wit(DRAFT_WIT, &bundle, at(1_745_512_510 + 61), &wimse).err(),
            Some(WimseError::Expired)
        );
    }

    struct Fixture {
        authority: SigningKey,
        kid: String,
        workload: SigningKey,
        bundles: BTreeMap<TrustDomain, TrustDomainBundle>,
    }

    fn fixture() -> Fixture {
        let authority = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let kid = PublicJwk::for_signing_key(&authority).thumbprint();
        let workload = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        bundle
            .wit_authorities
            .insert(kid.clone(), PublicJwk::for_signing_key(&authority));
        // A JWT authority with the same key material must not make JWT keys usable for WITs.
        let other = TrustDomainBundle::new(TrustDomain::new("other.org").expect("td"));
        let bundles = [
            (bundle.trust_domain.clone(), bundle),
            (other.trust_domain.clone(), other),
        ]
        .into();
        Fixture {
            authority,
            kid,
            workload,
            bundles,
        }
    }

    impl Fixture {
        fn mint(&self) -> String {
            mint_wit_svid(
                &self.authority,
                &self.kid,
                &WitSvidClaims {
                    spiffe_id: &id("spiffe://example.org/workload"),
                    workload_key: &PublicJwk::for_signing_key(&self.workload),
                    issued_at: at(NOW - 10),
                    expires_at: at(NOW + 3600),
                    jti: Some("wit-1"),
                },
            )
            .expect("mint")
        }

        fn claims(&self) -> Value {
            json!({
                "sub": "spiffe://example.org/workload",
                "exp": NOW + 3600,
                "iat": NOW - 10,
                "cnf": {"jwk": Value::Object(PublicJwk::for_signing_key(&self.workload).to_json_map())},
            })
        }

        fn custom(&self, header: Value, claims: Value) -> String {
            let mut header = obj(header);
            header.entry("alg").or_insert("ES256".into());
            encode_compact(&header, &obj(claims), |i| {
                Ok(self.authority.sign_fixed(i)?)
            })
            .expect("encode")
        }

        fn validate(&self, token: &str) -> Result<ValidatedWit, WimseError> {
            validate_wit(token, &self.bundles, at(NOW), &WitValidation::default())
        }

        fn header(&self) -> Value {
            json!({"kid": self.kid, "typ": "wit+jwt"})
        }
    }

    /// What the node API's MintWitSvid does with a plugin's request, end to end in process (the
    /// operator's identity test checks the same on a real server): the workload's public JWK
    /// arrives as JSON text, the WIT is minted for it, and a relying party holding the published
    /// bundle validates it.
    #[test]
    fn wit_minted_for_a_submitted_jwk_confirms_that_key_under_the_wit_authority() {
        let f = fixture();
        let submitted =
            Value::Object(PublicJwk::for_signing_key(&f.workload).to_json_map()).to_string();
        let workload_key = PublicJwk::from_json(&submitted).expect("submitted JWK");
        let subject = id("spiffe://example.org/ns/default/sa/web");
        let token = mint_wit_svid(
            &f.authority,
            &f.kid,
            &WitSvidClaims {
                spiffe_id: &subject,
                workload_key: &workload_key,
                issued_at: at(NOW),
                expires_at: at(NOW + 600),
                jti: None,
            },
        )
        .expect("mint");
        // The bundle as published (SPIFFE JWKS), read back.
        let td = TrustDomain::new("example.org").expect("td");
        let published = f.bundles[&td].to_spiffe_jwks().expect("jwks");
        let bundle =
            TrustDomainBundle::from_spiffe_jwks(td.clone(), published.as_bytes()).expect("bundle");
        let wit = validate_wit(&token, &bundle, at(NOW), &WitValidation::default())
            .expect("validates against the bundle's WIT authority");
        assert_eq!(wit.spiffe_id(), Some(&subject));
        assert_eq!(wit.cnf_key, workload_key, "cnf.jwk is the submitted key");
        assert_eq!(wit.cnf_alg, JwsAlgorithm::Es256);
        assert_eq!(wit.kid.as_deref(), Some(f.kid.as_str()));
        assert_eq!(wit.expires_at, i64::try_from(NOW + 600).expect("i64"));
        // The same key published only as a JWT authority does not validate WITs.
        let mut jwt_only = TrustDomainBundle::new(td);
        jwt_only
            .jwt_authorities
            .insert(f.kid.clone(), PublicJwk::for_signing_key(&f.authority));
        assert!(matches!(
            validate_wit(&token, &jwt_only, at(NOW), &WitValidation::default()),
            Err(WimseError::NoAuthority { .. })
        ));
        // Nor does another WIT authority under the same kid.
        let mut impostor = bundle.clone();
        let other = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        impostor
            .wit_authorities
            .insert(f.kid.clone(), PublicJwk::for_signing_key(&other));
        assert!(validate_wit(&token, &impostor, at(NOW), &WitValidation::default()).is_err());
    }

    #[test]
    fn minted_wit_svid_has_the_profile_shape_and_validates() {
        let f = fixture();
        let token = f.mint();
        let jws = CompactJws::parse(&token).expect("parse");
        assert_eq!(jws.header()["typ"], "wit+jwt");
        assert_eq!(jws.header()["kid"], f.kid.as_str());
        assert!(!jws.claims().contains_key("aud"));
        assert_eq!(jws.claims()["cnf"]["jwk"]["alg"], "ES256");
        let wit = f.validate(&token).expect("valid");
        assert_eq!(wit.spiffe_id(), Some(&id("spiffe://example.org/workload")));
        assert_eq!(wit.cnf_key.key, PublicKey::from_signing_key(&f.workload));
        assert_eq!(wit.wit_hash(), sha256_b64url(token.as_bytes()));
        assert_eq!(wit.claims["jti"], "wit-1");
        assert!(!format!("{wit:?}").contains(&token[..20]));
    }

    #[test]
    fn wit_svid_rejections() {
        let f = fixture();
        let with = |patch: Value| {
            let mut claims = f.claims();
            for (k, v) in obj(patch) {
                if v.is_null() {
                    claims.as_object_mut().expect("obj").remove(&k);
                } else {
                    claims[k] = v;
                }
            }
            f.validate(&f.custom(f.header(), claims))
        };
        f.validate(&f.custom(f.header(), f.claims()))
            .expect("baseline");
        assert_eq!(
            with(json!({"cnf": null})).err(),
            Some(WimseError::MissingCnf)
        );
        assert_eq!(
            with(json!({"cnf": {"jwk": "x"}})).err(),
            Some(WimseError::MalformedCnf)
        );
        assert_eq!(
            with(json!({"aud": "svc"})).err(),
            Some(WimseError::AudienceNotAllowed)
        );
        assert_eq!(
            with(json!({"exp": NOW - 3600})).err(),
            Some(WimseError::Expired)
        );
        assert_eq!(
            with(json!({"exp": null})).err(),
            Some(WimseError::MissingExp)
        );
        assert_eq!(
            with(json!({"nbf": NOW + 600})).err(),
            Some(WimseError::NotYetValid)
        );
        assert_eq!(
            with(json!({"sub": "wimse://example.org/w"})).err(),
            Some(WimseError::NotSpiffeSubject)
        );
        assert_eq!(
            with(json!({"sub": null})).err(),
            Some(WimseError::MissingSubject)
        );
        let mut no_alg = PublicJwk::for_signing_key(&f.workload);
        no_alg.alg = None;
        assert_eq!(
            with(json!({"cnf": {"jwk": Value::Object(no_alg.to_json_map())}})).err(),
            Some(WimseError::MissingCnfAlg)
        );
        let ed = TestKey::ed25519();
        let ed_jwk = PublicJwk {
            key: ed.public_key(),
            kid: None,
            alg: Some("EdDSA".into()),
        };
        assert_eq!(
            with(json!({"cnf": {"jwk": Value::Object(ed_jwk.to_json_map())}})).err(),
            Some(WimseError::CnfAlgNotAllowed("EdDSA".into()))
        );
        let mut wrong_alg = PublicJwk::for_signing_key(&f.workload);
        wrong_alg.alg = Some("RS256".into());
        assert_eq!(
            with(json!({"cnf": {"jwk": Value::Object(wrong_alg.to_json_map())}})).err(),
            Some(WimseError::CnfKeyAlgMismatch(JwsAlgorithm::Rs256))
        );
        // Header rules.
        for typ in [json!("JWT"), json!("wimse-id+jwt"), Value::Null] {
            let mut header = f.header();
            header["typ"] = typ.clone();
            if typ.is_null() {
                header.as_object_mut().expect("obj").remove("typ");
            }
            assert_eq!(
                f.validate(&f.custom(header, f.claims())).err(),
                Some(WimseError::BadTyp(WIT_TYP)),
                "{typ}"
            );
        }
        let mut header = f.header();
        header["typ"] = "application/WIT+JWT".into();
        f.validate(&f.custom(header, f.claims()))
            .expect("typ is a case-insensitive media type");
        assert_eq!(
            f.validate(&f.custom(json!({"typ": "wit+jwt"}), f.claims()))
                .err(),
            Some(WimseError::MissingKid)
        );
        let token =
            TestKey::ed25519().token(JwsAlgorithm::EdDsa, &obj(f.header()), &obj(f.claims()));
        assert_eq!(
            f.validate(&token).err(),
            Some(WimseError::AlgNotAllowed(JwsAlgorithm::EdDsa))
        );
    }

    #[test]
    fn wit_key_selection() {
        let f = fixture();
        let token = f.custom(json!({"kid": "nope", "typ": "wit+jwt"}), f.claims());
        assert_eq!(
            f.validate(&token).err(),
            Some(WimseError::NoAuthority {
                kid: "nope".into(),
                trust_domain: "example.org".into()
            })
        );
        let mut claims = f.claims();
        claims["sub"] = "spiffe://other.org/w".into();
        assert!(matches!(
            f.validate(&f.custom(f.header(), claims.clone())),
            Err(WimseError::NoAuthority { .. })
        ));
        claims["sub"] = "spiffe://unknown.org/w".into();
        assert_eq!(
            f.validate(&f.custom(f.header(), claims)).err(),
            Some(WimseError::NoBundle("unknown.org".into()))
        );
        // JWT authorities are not WIT authorities.
        let mut jwt_only = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        jwt_only
            .jwt_authorities
            .insert(f.kid.clone(), PublicJwk::for_signing_key(&f.authority));
        assert!(matches!(
            validate_wit(&f.mint(), &jwt_only, at(NOW), &WitValidation::default()),
            Err(WimseError::NoAuthority { .. })
        ));
        // Tampered claims.
        let token = f.mint();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = f.claims();
        claims["sub"] = "spiffe://example.org/admin".into();
        parts[1] = b64url_encode(claims.to_string().as_bytes());
        assert_eq!(
            f.validate(&parts.join(".")).err(),
            Some(WimseError::Jose(JoseError::BadSignature))
        );
        // Generic profile without kid: exactly one WIT key needed.
        let wimse = WitValidation {
            profile: WitProfile::Wimse,
            ..Default::default()
        };
        let no_kid = f.custom(json!({"typ": "wit+jwt"}), f.claims());
        validate_wit(&no_kid, &f.bundles, at(NOW), &wimse).expect("single key, no kid");
        let mut two = f.bundles[&TrustDomain::new("example.org").expect("td")].clone();
        two.wit_authorities
            .insert("second".into(), PublicJwk::for_signing_key(&f.workload));
        assert_eq!(
            validate_wit(&no_kid, &two, at(NOW), &wimse).err(),
            Some(WimseError::AmbiguousKey("example.org".into()))
        );
    }

    #[derive(Default)]
    struct SeenJtis(RefCell<HashSet<String>>);

    impl JtiReplayCache for SeenJtis {
        fn first_use(&self, jti: &str, _expires_at: i64) -> bool {
            self.0.borrow_mut().insert(jti.to_owned())
        }
    }

    const AUD: &str = "https://svc.example.org/path";

    #[test]
    fn wpt_round_trip_with_all_token_hashes_and_replay_check() {
        let f = fixture();
        let wit_token = f.mint();
        let wit = f.validate(&wit_token).expect("wit");
        let others = [("X-Custom-Token", "  abc  ")];
        let wpt = mint_wpt(
            &f.workload,
            &WptClaims {
                wit: &wit_token,
                audience: AUD,
                expires_at: at(NOW + 60),
                access_token: Some("at"),
                txn_token: Some("tt"),
                other_tokens: &others,
            },
        )
        .expect("mint wpt");
        let jws = CompactJws::parse(&wpt).expect("parse");
        assert_eq!(jws.header()["typ"], "wpt+jwt");
        assert_eq!(jws.header()["alg"], "ES256");
        let jti = jws.claims()["jti"].as_str().expect("jti");
        assert_eq!(b64url_decode(jti, "jti").expect("b64").len(), 16);
        assert_eq!(jws.claims()["wth"], wit.wit_hash());
        assert_eq!(jws.claims()["oth"]["x-custom-token"], sha256_b64url(b"abc"));
        let cache = SeenJtis::default();
        let request_others = [("x-custom-token", "abc")];
        let expect = WptExpectations {
            access_token: Some("at"),
            txn_token: Some("tt"),
            other_tokens: &request_others,
            replay_cache: Some(&cache),
            ..WptExpectations::new(&[AUD])
        };
        let ok = verify_wpt(&wpt, &wit, &expect, at(NOW)).expect("verifies");
        assert_eq!(ok.covered_other_tokens, ["x-custom-token"]);
        assert_eq!(ok.audience, [AUD]);
        assert_eq!(
            verify_wpt(&wpt, &wit, &expect, at(NOW)).err(),
            Some(WimseError::Replay)
        );
        // Each mismatch, with a fresh cache so replay does not mask it.
        let check = |e: WptExpectations<'_>| {
            verify_wpt(
                &wpt,
                &wit,
                &WptExpectations {
                    replay_cache: None,
                    ..e
                },
                at(NOW),
            )
        };
        assert_eq!(
            check(WptExpectations {
                access_token: Some("other"),
                ..expect
            })
            .err(),
            Some(WimseError::TokenHashMismatch("ath"))
        );
        assert_eq!(
            check(WptExpectations {
                access_token: None,
                ..expect
            })
            .err(),
            Some(WimseError::UnexpectedTokenHash("ath"))
        );
        assert_eq!(
            check(WptExpectations {
                txn_token: Some("x"),
                ..expect
            })
            .err(),
            Some(WimseError::TokenHashMismatch("tth"))
        );
        assert_eq!(
            check(WptExpectations {
                other_tokens: &[],
                ..expect
            })
            .err(),
            Some(WimseError::UnknownOth("x-custom-token".into()))
        );
        assert_eq!(
            check(WptExpectations {
                other_tokens: &[("X-Custom-Token", "abd")],
                ..expect
            })
            .err(),
            Some(WimseError::TokenHashMismatch("oth"))
        );
        assert_eq!(
            check(WptExpectations {
                audiences: &["https://evil.example"],
                ..expect
            })
            .err(),
            Some(WimseError::AudienceMismatch(vec![AUD.into()]))
        );
        assert_eq!(
            verify_wpt(
                &wpt,
                &wit,
                &WptExpectations {
                    replay_cache: None,
                    ..expect
                },
                at(NOW + 120)
            )
            .err(),
            Some(WimseError::Expired)
        );
        // Presented with a different WIT (same workload key, different token): wth mismatch.
        let other_wit = f
            .validate(&f.custom(f.header(), f.claims()))
            .expect("other wit");
        assert_eq!(
            verify_wpt(
                &wpt,
                &other_wit,
                &WptExpectations {
                    replay_cache: None,
                    ..expect
                },
                at(NOW)
            )
            .err(),
            Some(WimseError::WthMismatch)
        );
    }

    #[test]
    fn wpt_rejections() {
        let f = fixture();
        let wit_token = f.mint();
        let wit = f.validate(&wit_token).expect("wit");
        let base = json!({"aud": AUD, "exp": NOW + 60, "jti": "j", "wth": wit.wit_hash()});
        let sign = |header: Value, claims: Value| {
            let mut header = obj(header);
            header.entry("alg").or_insert("ES256".into());
            encode_compact(&header, &obj(claims), |i| Ok(f.workload.sign_fixed(i)?))
                .expect("encode")
        };
        let verify = |token: &str| verify_wpt(token, &wit, &WptExpectations::new(&[AUD]), at(NOW));
        let with = |patch: Value| {
            let mut claims = base.clone();
            for (k, v) in obj(patch) {
                if v.is_null() {
                    claims.as_object_mut().expect("obj").remove(&k);
                } else {
                    claims[k] = v;
                }
            }
            verify(&sign(json!({"typ": "wpt+jwt"}), claims))
        };
        with(json!({})).expect("baseline");
        with(json!({"aud": ["x", AUD]})).expect("array audience");
        assert_eq!(
            with(json!({"wth": null})).err(),
            Some(WimseError::MissingWth)
        );
        assert_eq!(
            with(json!({"wth": "AAAA"})).err(),
            Some(WimseError::WthMismatch)
        );
        assert_eq!(
            with(json!({"jti": null})).err(),
            Some(WimseError::MissingJti)
        );
        assert_eq!(
            with(json!({"exp": null})).err(),
            Some(WimseError::MissingExp)
        );
        assert_eq!(
            with(json!({"exp": NOW + 3600})).err(),
            Some(WimseError::ExpTooFar)
        );
        assert_eq!(
            with(json!({"aud": null})).err(),
            Some(WimseError::AudienceMismatch(vec![]))
        );
        assert_eq!(
            with(json!({"oth": {"x-unknown": "AAAA"}})).err(),
            Some(WimseError::UnknownOth("x-unknown".into()))
        );
        assert_eq!(
            with(json!({"oth": "x"})).err(),
            Some(WimseError::ClaimType("oth"))
        );
        assert_eq!(
            with(json!({"ath": sha256_b64url(b"t")})).err(),
            Some(WimseError::UnexpectedTokenHash("ath"))
        );
        assert_eq!(
            verify(&sign(json!({"typ": "JWT"}), base.clone())).err(),
            Some(WimseError::BadTyp(WPT_TYP))
        );
        assert_eq!(
            verify(&sign(json!({"typ": "wimse-proof+jwt"}), base.clone())).err(),
            Some(WimseError::BadTyp(WPT_TYP))
        );
        // Missing ath when the request has an access token.
        let token = sign(json!({"typ": "wpt+jwt"}), base.clone());
        assert_eq!(
            verify_wpt(
                &token,
                &wit,
                &WptExpectations {
                    access_token: Some("t"),
                    ..WptExpectations::new(&[AUD])
                },
                at(NOW)
            )
            .err(),
            Some(WimseError::MissingTokenHash("ath"))
        );
        // Signed by the authority instead of the workload key.
        let mut header = Map::new();
        header.insert("typ".into(), "wpt+jwt".into());
        let forged = sign_compact(&header, &obj(base.clone()), &f.authority).expect("sign");
        assert_eq!(
            verify(&forged).err(),
            Some(WimseError::Jose(JoseError::BadSignature))
        );
        // alg must equal cnf.jwk.alg even when the key could verify it.
        let p384 = SigningKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
        let forged = sign_compact(&header, &obj(base), &p384).expect("sign");
        assert_eq!(
            verify(&forged).err(),
            Some(WimseError::WptAlgMismatch {
                wpt: JwsAlgorithm::Es384,
                cnf: JwsAlgorithm::Es256
            })
        );
    }

    #[test]
    fn mint_argument_checks() {
        let f = fixture();
        let wit = f.mint();
        let stranger = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let claims = WptClaims {
            wit: &wit,
            audience: AUD,
            expires_at: at(NOW + 60),
            access_token: None,
            txn_token: None,
            other_tokens: &[],
        };
        assert_eq!(
            mint_wpt(&stranger, &claims).err(),
            Some(WimseError::WorkloadKeyMismatch)
        );
        assert_eq!(
            mint_wpt(
                &f.workload,
                &WptClaims {
                    audience: "",
                    ..claims.clone()
                }
            )
            .err(),
            Some(WimseError::EmptyAudience)
        );
        assert!(matches!(
            mint_wpt(&f.workload, &WptClaims { wit: "x", ..claims }),
            Err(WimseError::Jose(_))
        ));
        let sub = id("spiffe://example.org/w");
        let key = PublicJwk::for_signing_key(&f.workload);
        let wit_claims = WitSvidClaims {
            spiffe_id: &sub,
            workload_key: &key,
            issued_at: at(NOW),
            expires_at: at(NOW + 1),
            jti: None,
        };
        assert_eq!(
            mint_wit_svid(&f.authority, "", &wit_claims).err(),
            Some(WimseError::EmptyKid)
        );
        let no_alg = PublicJwk {
            alg: None,
            ..key.clone()
        };
        assert_eq!(
            mint_wit_svid(
                &f.authority,
                "k",
                &WitSvidClaims {
                    workload_key: &no_alg,
                    ..wit_claims.clone()
                }
            )
            .err(),
            Some(WimseError::MissingCnfAlg)
        );
        assert_eq!(
            mint_wit_svid(
                &f.authority,
                "k",
                &WitSvidClaims {
                    expires_at: at(NOW),
                    ..wit_claims
                }
            )
            .err(),
            Some(WimseError::ExpiryBeforeIssuance)
        );
    }

    #[test]
    fn p384_workload_keys_work_end_to_end() {
        let authority = SigningKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
        let workload = SigningKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        bundle
            .wit_authorities
            .insert("a".into(), PublicJwk::for_signing_key(&authority));
        let sub = id("spiffe://example.org/w");
        let wit_token = mint_wit_svid(
            &authority,
            "a",
            &WitSvidClaims {
                spiffe_id: &sub,
                workload_key: &PublicJwk::for_signing_key(&workload),
                issued_at: at(NOW),
                expires_at: at(NOW + 60),
                jti: None,
            },
        )
        .expect("mint");
        let wit =
            validate_wit(&wit_token, &bundle, at(NOW), &WitValidation::default()).expect("wit");
        assert_eq!(wit.cnf_alg, JwsAlgorithm::Es384);
        // The workload key travels as a private JWK and comes back as the same signer.
        let private = crate::jose::private_jwk_json(&workload).expect("export");
        let loaded = crate::jose::signing_key_from_private_jwk(&private).expect("import");
        let wpt = mint_wpt(
            &loaded,
            &WptClaims {
                wit: &wit_token,
                audience: AUD,
                expires_at: at(NOW + 30),
                access_token: None,
                txn_token: None,
                other_tokens: &[],
            },
        )
        .expect("wpt");
        verify_wpt(&wpt, &wit, &WptExpectations::new(&[AUD]), at(NOW)).expect("verifies");
    }

    #[test]
    fn typ_matching() {
        assert!(typ_is(Some("wit+jwt"), WIT_TYP));
        assert!(typ_is(Some("application/wit+jwt"), WIT_TYP));
        assert!(typ_is(Some("Application/WIT+JWT"), WIT_TYP));
        assert!(!typ_is(Some("application/"), WIT_TYP));
        assert!(!typ_is(Some("x-wit+jwt"), WIT_TYP));
        assert!(!typ_is(None, WIT_TYP));
        assert!(!typ_is(Some("éééééééé"), WIT_TYP));
    }
}
