//! JWT-SVIDs (`standards/JWT-SVID.md`): minting and validation.
//!
//! Validation policy, decided to match go-spiffe and SPIRE where the spec leaves room:
//!
//! * JWS compact only; `alg` one of RS/ES/PS 256/384/512 (`none`, HS*, EdDSA are refused).
//! * Header members: `alg`, `kid` and `typ` are checked. Other members are *ignored*, as
//!   go-spiffe (go-jose) ignores them, rather than rejected; the spec's "MUST NOT be included" binds
//!   issuers. Keys are never taken from the header (`jwk`, `jku`, `x5c`, `x5u`). `crit` is
//!   rejected, since we implement no JWS extension (RFC 7515 §4.1.11).
//! * `typ`, if present, is exactly `JWT` or `JOSE`.
//! * `kid` is required by default (go-spiffe: "token header missing key id"). With
//!   [`JwtSvidValidation::require_kid`] off, a token without kid is tried against every JWT
//!   authority of its trust domain (conformance JV-22).
//! * The key comes only from the bundle of the `sub`'s trust domain; no bundle means untrusted.
//! * `exp` is required and must not be past; `nbf`, when present, must not be in the future; both
//!   with [`JwtSvidValidation::leeway`] (default 60 s, go-jose's default that go-spiffe uses).
//!   `iat` is not a validity condition.
//! * `aud` may be a string or an array; the expected audience must be one of its values.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::{CompactJws, JoseError, JwsAlgorithm, clip, sign_compact, unix_seconds};
use crate::bundle::BundleSource;
use crate::keys::SigningKey;
use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why a JWT-SVID could not be minted or was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtSvidError {
    #[error(transparent)]
    Jose(#[from] JoseError),
    #[error("token alg {0} is not allowed for JWT-SVIDs (RS/ES/PS 256/384/512 only)")]
    AlgNotAllowed(JwsAlgorithm),
    #[error("token header missing key id")]
    MissingKid,
    #[error("token header type not equal to either JWT or JOSE")]
    BadTyp,
    #[error("token missing subject claim")]
    MissingSubject,
    #[error("token subject is not a valid SPIFFE ID: {0}")]
    InvalidSubject(SpiffeIdError),
    #[error("no bundle found for trust domain \"{0}\"")]
    NoBundle(String),
    #[error("no JWT authority \"{kid}\" found for trust domain \"{trust_domain}\"")]
    NoAuthority { kid: String, trust_domain: String },
    #[error("token missing exp claim")]
    MissingExp,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("expected audience in [{expected:?}] (audience={actual:?})")]
    AudienceMismatch {
        expected: String,
        actual: Vec<String>,
    },
    #[error("claim {0} has the wrong type")]
    ClaimType(&'static str),
    #[error("a JWT-SVID needs at least one non-empty audience")]
    NoAudience,
    #[error("a JWT-SVID needs a non-empty kid")]
    EmptyKid,
    #[error("expiry must be after issuance")]
    ExpiryBeforeIssuance,
}

impl JwtSvidError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            JwtSvidError::Jose(e) => e.label(),
            JwtSvidError::AlgNotAllowed(_) => "alg_not_allowed",
            JwtSvidError::MissingKid => "missing_kid",
            JwtSvidError::BadTyp => "bad_typ",
            JwtSvidError::MissingSubject => "missing_subject",
            JwtSvidError::InvalidSubject(_) => "invalid_subject",
            JwtSvidError::NoBundle(_) => "no_bundle",
            JwtSvidError::NoAuthority { .. } => "no_authority",
            JwtSvidError::MissingExp => "missing_exp",
            JwtSvidError::Expired => "expired",
            JwtSvidError::NotYetValid => "not_yet_valid",
            JwtSvidError::AudienceMismatch { .. } => "audience_mismatch",
            JwtSvidError::ClaimType(_) => "claim_type",
            JwtSvidError::NoAudience => "no_audience",
            JwtSvidError::EmptyKid => "empty_kid",
            JwtSvidError::ExpiryBeforeIssuance => "expiry_before_issuance",
        }
    }
}

/// What goes into a new JWT-SVID.
#[derive(Debug, Clone)]
pub struct JwtSvidClaims<'a> {
    pub spiffe_id: &'a SpiffeId,
    /// One value is emitted as a string (as go-jose and SPIRE do), several as an array.
    pub audience: &'a [String],
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// SPIRE's `jwt_svid_include_jti`: a fresh unique value when set.
    pub jti: Option<&'a str>,
    /// The `iss` claim: the OIDC issuer URL when OIDC discovery is on, so that relying parties
    /// that speak OIDC rather than SPIFFE can find the keys (`crate::oidc`).
    pub issuer: Option<&'a str>,
}

/// Signs a JWT-SVID: header `alg` (from the key; ES256 for the default P-256 key), `kid`, `typ`
/// `JWT`; claims `sub`, `aud`, `exp`, `iat` and optionally `jti` and `iss`.
pub fn mint_jwt_svid(
    key: &SigningKey,
    kid: &str,
    claims: &JwtSvidClaims<'_>,
) -> Result<String, JwtSvidError> {
    if kid.is_empty() {
        return Err(JwtSvidError::EmptyKid);
    }
    if claims.audience.is_empty() || claims.audience.iter().any(String::is_empty) {
        return Err(JwtSvidError::NoAudience);
    }
    let iat = unix_seconds(claims.issued_at);
    let exp = unix_seconds(claims.expires_at);
    if exp <= iat {
        return Err(JwtSvidError::ExpiryBeforeIssuance);
    }
    let mut header = Map::new();
    header.insert("kid".into(), kid.into());
    header.insert("typ".into(), "JWT".into());
    let mut body = Map::new();
    body.insert("sub".into(), claims.spiffe_id.as_str().into());
    body.insert(
        "aud".into(),
        match claims.audience {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        },
    );
    body.insert("exp".into(), exp.into());
    body.insert("iat".into(), iat.into());
    if let Some(jti) = claims.jti {
        body.insert("jti".into(), jti.into());
    }
    if let Some(issuer) = claims.issuer {
        body.insert("iss".into(), issuer.into());
    }
    Ok(sign_compact(&header, &body, key)?)
}

/// Validator settings. `Default` is the go-spiffe-compatible policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidValidation {
    /// Clock skew allowed for `exp` and `nbf`.
    pub leeway: Duration,
    /// Refuse tokens without `kid` (go-spiffe and SPIRE do).
    pub require_kid: bool,
}

impl Default for JwtSvidValidation {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(60),
            require_kid: true,
        }
    }
}

/// A JWT-SVID that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwtSvid {
    pub spiffe_id: SpiffeId,
    /// Every claim, for the Workload API's `ValidateJWTSVIDResponse.claims` Struct.
    pub claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
    /// The key ID that verified the token.
    pub kid: Option<String>,
}

/// Validates a JWT-SVID for `audience` at time `now`, with keys from `bundles`.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundles: &(impl BundleSource + ?Sized),
    now: SystemTime,
    options: &JwtSvidValidation,
) -> Result<ValidatedJwtSvid, JwtSvidError> {
    let jws = CompactJws::parse(token)?;
    if !jws.alg().is_spiffe_alg() {
        return Err(JwtSvidError::AlgNotAllowed(jws.alg()));
    }
    let kid = jws.kid()?;
    if kid.is_none() && options.require_kid {
        return Err(JwtSvidError::MissingKid);
    }
    match jws.typ()? {
        None | Some("JWT" | "JOSE") => {}
        Some(_) => return Err(JwtSvidError::BadTyp),
    }
    let spiffe_id = match jws.claims().get("sub") {
        None => return Err(JwtSvidError::MissingSubject),
        Some(Value::String(sub)) => SpiffeId::parse(sub).map_err(JwtSvidError::InvalidSubject)?,
        Some(_) => return Err(JwtSvidError::ClaimType("sub")),
    };
    let trust_domain = spiffe_id.trust_domain();
    let bundle = bundles
        .bundle_for(&trust_domain)
        .ok_or_else(|| JwtSvidError::NoBundle(trust_domain.name().to_owned()))?;
    match kid {
        Some(kid) => {
            let jwk = bundle
                .jwt_authority(kid)
                .ok_or_else(|| JwtSvidError::NoAuthority {
                    kid: clip(kid),
                    trust_domain: trust_domain.name().to_owned(),
                })?;
            jws.verify(jwk)?;
        }
        None => {
            // Only reachable when require_kid is off: any authority of this trust domain may match.
            let mut result = Err(JwtSvidError::NoAuthority {
                kid: String::new(),
                trust_domain: trust_domain.name().to_owned(),
            });
            for jwk in bundle.jwt_authorities.values() {
                result = jws.verify(jwk).map_err(JwtSvidError::from);
                if result.is_ok() {
                    break;
                }
            }
            result?;
        }
    }
    let kid = kid.map(str::to_owned);
    let claims = jws.into_claims();
    let expires_at = check_time_claims(&claims, now, options.leeway)?;
    check_audience(&claims, audience)?;
    Ok(ValidatedJwtSvid {
        spiffe_id,
        claims,
        expires_at,
        kid,
    })
}

/// Reads a NumericDate claim (RFC 7519 §2: seconds, possibly fractional).
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, JwtSvidError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(number) = value else {
        return Err(JwtSvidError::ClaimType(name));
    };
    if let Some(i) = number.as_i64() {
        return Ok(Some(i));
    }
    match number.as_f64() {
        // Saturating float-to-int conversion: huge values just mean "far future".
        Some(f) if f.is_finite() => Ok(Some(f.floor() as i64)),
        _ => Err(JwtSvidError::ClaimType(name)),
    }
}

/// `exp` present and not past, `nbf` not in the future. Returns `exp`.
pub(crate) fn check_time_claims(
    claims: &Map<String, Value>,
    now: SystemTime,
    leeway: Duration,
) -> Result<i64, JwtSvidError> {
    let now = unix_seconds(now);
    let leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?.ok_or(JwtSvidError::MissingExp)?;
    if now.saturating_sub(leeway) >= exp {
        return Err(JwtSvidError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(JwtSvidError::NotYetValid);
    }
    Ok(exp)
}

/// The `aud` claim as a list; a string is a one-element list.
pub(crate) fn audience_values(
    claims: &Map<String, Value>,
) -> Result<Option<Vec<String>>, JwtSvidError> {
    match claims.get("aud") {
        None => Ok(None),
        Some(Value::String(one)) => Ok(Some(vec![one.clone()])),
        Some(Value::Array(many)) => many
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or(JwtSvidError::ClaimType("aud"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(JwtSvidError::ClaimType("aud")),
    }
}

fn check_audience(claims: &Map<String, Value>, expected: &str) -> Result<(), JwtSvidError> {
    let actual = audience_values(claims)?.unwrap_or_default();
    if actual.iter().any(|a| a == expected) {
        Ok(())
    } else {
        Err(JwtSvidError::AudienceMismatch {
            expected: clip(expected),
            actual: actual.iter().take(8).map(|a| clip(a)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::TrustDomainBundle;
    use crate::jose::jws::encode_compact;
    use crate::jose::jws::test_signers::TestKey;
    use crate::jose::test_support::{NOW, at, id, obj};
    use crate::jose::{PublicJwk, b64url_encode};
    use crate::keys::KeyAlgorithm;
    use crate::spiffe_id::TrustDomain;
    use serde_json::json;
    use std::collections::BTreeMap;

    struct Fixture {
        key: SigningKey,
        kid: String,
        bundles: BTreeMap<TrustDomain, TrustDomainBundle>,
    }

    fn fixture() -> Fixture {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let jwk = PublicJwk::for_signing_key(&key);
        let kid = jwk.thumbprint();
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        // A second, unrelated key, so selection by kid matters.
        let other = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        bundle
            .jwt_authorities
            .insert("other".into(), PublicJwk::for_signing_key(&other));
        bundle
            .jwt_authorities
            .insert(kid.clone(), PublicJwk { alg: None, ..jwk });
        let other_td = TrustDomainBundle::new(TrustDomain::new("other.org").expect("td"));
        let bundles = [
            (bundle.trust_domain.clone(), bundle),
            (other_td.trust_domain.clone(), other_td),
        ]
        .into();
        Fixture { key, kid, bundles }
    }

    impl Fixture {
        fn mint(&self, audience: &[&str]) -> String {
            let audience: Vec<String> = audience.iter().map(|a| a.to_string()).collect();
            mint_jwt_svid(
                &self.key,
                &self.kid,
                &JwtSvidClaims {
                    spiffe_id: &id("spiffe://example.org/workload"),
                    audience: &audience,
                    issued_at: at(NOW - 10),
                    expires_at: at(NOW + 300),
                    jti: Some("j1"),
                    issuer: None,
                },
            )
            .expect("mint")
        }

        /// A token with arbitrary header and claims, signed by the fixture key.
        fn custom(&self, header: Value, claims: Value) -> String {
            let mut header = obj(header);
            header.entry("alg").or_insert("ES256".into());
            encode_compact(&header, &obj(claims), |input| {
                Ok(self.key.sign_fixed(input)?)
            })
            .expect("encode")
        }

        fn claims(&self) -> Value {
            json!({"sub": "spiffe://example.org/workload", "aud": "svc", "exp": NOW + 300, "iat": NOW - 10})
        }

        fn validate(&self, token: &str, audience: &str) -> Result<ValidatedJwtSvid, JwtSvidError> {
            validate_jwt_svid(
                token,
                audience,
                &self.bundles,
                at(NOW),
                &JwtSvidValidation::default(),
            )
        }
    }

    #[test]
    fn minted_token_has_the_spec_shape_and_validates() {
        let f = fixture();
        let token = f.mint(&["svc"]);
        let jws = CompactJws::parse(&token).expect("parse");
        assert_eq!(jws.header().len(), 3);
        assert_eq!(jws.header()["alg"], "ES256");
        assert_eq!(jws.header()["typ"], "JWT");
        assert_eq!(jws.header()["kid"], f.kid.as_str());
        assert_eq!(
            jws.claims()["aud"],
            "svc",
            "a single audience is a string, as SPIRE emits it"
        );
        let ok = f.validate(&token, "svc").expect("valid");
        assert_eq!(ok.spiffe_id, id("spiffe://example.org/workload"));
        assert_eq!(ok.claims["jti"], "j1");
        assert_eq!(ok.expires_at, (NOW + 300) as i64);
        assert_eq!(ok.kid.as_deref(), Some(f.kid.as_str()));
    }

    #[test]
    fn audience_string_or_array() {
        let f = fixture();
        // JV-9 / JV-10.
        let many = f.mint(&["a", "svc", "b"]);
        assert!(CompactJws::parse(&many).expect("parse").claims()["aud"].is_array());
        f.validate(&many, "svc")
            .expect("array containing the audience");
        f.validate(&f.mint(&["svc"]), "svc")
            .expect("string audience");
        assert_eq!(
            f.validate(&many, "nope").err(),
            Some(JwtSvidError::AudienceMismatch {
                expected: "nope".into(),
                actual: vec!["a".into(), "svc".into(), "b".into()]
            })
        );
        let mut claims = f.claims();
        claims.as_object_mut().expect("obj").remove("aud");
        assert!(matches!(
            f.validate(&f.custom(json!({"kid": f.kid}), claims), "svc"),
            Err(JwtSvidError::AudienceMismatch { .. })
        ));
        let mut claims = f.claims();
        claims["aud"] = json!([1]);
        assert_eq!(
            f.validate(&f.custom(json!({"kid": f.kid}), claims), "svc")
                .err(),
            Some(JwtSvidError::ClaimType("aud"))
        );
    }

    #[test]
    fn time_claims() {
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
            f.validate(&f.custom(json!({"kid": f.kid}), claims), "svc")
        };
        assert_eq!(
            with(json!({"exp": NOW - 61})).err(),
            Some(JwtSvidError::Expired)
        );
        with(json!({"exp": NOW - 30})).expect("inside the 60 s leeway");
        assert_eq!(
            with(json!({"exp": null})).err(),
            Some(JwtSvidError::MissingExp)
        );
        assert_eq!(
            with(json!({"exp": "soon"})).err(),
            Some(JwtSvidError::ClaimType("exp"))
        );
        with(json!({"exp": (NOW + 100) as f64 + 0.5})).expect("fractional NumericDate");
        assert_eq!(
            with(json!({"nbf": NOW + 120})).err(),
            Some(JwtSvidError::NotYetValid)
        );
        with(json!({"nbf": NOW + 30})).expect("nbf within leeway");
        with(json!({"nbf": NOW - 30})).expect("nbf past");
        with(json!({"iat": NOW + 3600})).expect("iat is not a validity condition");
        with(json!({"exp": 1e300})).expect("far-future exp saturates");
        // Zero leeway.
        let strict = JwtSvidValidation {
            leeway: Duration::ZERO,
            ..Default::default()
        };
        let token = f.custom(
            json!({"kid": f.kid}),
            json!({"sub": "spiffe://example.org/w", "aud": "svc", "exp": NOW}),
        );
        assert_eq!(
            validate_jwt_svid(&token, "svc", &f.bundles, at(NOW), &strict).err(),
            Some(JwtSvidError::Expired)
        );
    }

    #[test]
    fn key_selection_by_kid_and_trust_domain() {
        let f = fixture();
        // Unknown kid.
        let token = f.custom(json!({"kid": "missing"}), f.claims());
        assert_eq!(
            f.validate(&token, "svc").err(),
            Some(JwtSvidError::NoAuthority {
                kid: "missing".into(),
                trust_domain: "example.org".into()
            })
        );
        // The other key's kid: selection is by kid, so the signature does not verify.
        let token = f.custom(json!({"kid": "other"}), f.claims());
        assert_eq!(
            f.validate(&token, "svc").err(),
            Some(JwtSvidError::Jose(JoseError::BadSignature))
        );
        // Subject in a trust domain whose bundle has no such key: the example.org key is not consulted.
        let mut claims = f.claims();
        claims["sub"] = "spiffe://other.org/workload".into();
        assert_eq!(
            f.validate(&f.custom(json!({"kid": f.kid}), claims.clone()), "svc")
                .err(),
            Some(JwtSvidError::NoAuthority {
                kid: f.kid.clone(),
                trust_domain: "other.org".into()
            })
        );
        // No bundle at all for the subject's trust domain.
        claims["sub"] = "spiffe://unknown.org/workload".into();
        assert_eq!(
            f.validate(&f.custom(json!({"kid": f.kid}), claims), "svc")
                .err(),
            Some(JwtSvidError::NoBundle("unknown.org".into()))
        );
        // A single bundle works as a source too.
        let bundle = &f.bundles[&TrustDomain::new("example.org").expect("td")];
        validate_jwt_svid(
            &f.mint(&["svc"]),
            "svc",
            bundle,
            at(NOW),
            &JwtSvidValidation::default(),
        )
        .expect("single bundle");
    }

    #[test]
    fn subject_rules() {
        let f = fixture();
        let mut claims = f.claims();
        claims.as_object_mut().expect("obj").remove("sub");
        assert_eq!(
            f.validate(&f.custom(json!({"kid": f.kid}), claims.clone()), "svc")
                .err(),
            Some(JwtSvidError::MissingSubject)
        );
        claims["sub"] = "https://example.org/w".into();
        assert!(matches!(
            f.validate(&f.custom(json!({"kid": f.kid}), claims.clone()), "svc"),
            Err(JwtSvidError::InvalidSubject(_))
        ));
        claims["sub"] = json!(["spiffe://example.org/w"]);
        assert_eq!(
            f.validate(&f.custom(json!({"kid": f.kid}), claims), "svc")
                .err(),
            Some(JwtSvidError::ClaimType("sub"))
        );
    }

    #[test]
    fn header_rules() {
        let f = fixture();
        for typ in ["JWT", "JOSE"] {
            f.validate(
                &f.custom(json!({"kid": f.kid, "typ": typ}), f.claims()),
                "svc",
            )
            .expect(typ);
        }
        for typ in ["jwt", "wit+jwt", "application/jwt"] {
            assert_eq!(
                f.validate(
                    &f.custom(json!({"kid": f.kid, "typ": typ}), f.claims()),
                    "svc"
                )
                .err(),
                Some(JwtSvidError::BadTyp)
            );
        }
        assert_eq!(
            f.validate(
                &f.custom(json!({"kid": f.kid, "typ": 1}), f.claims()),
                "svc"
            )
            .err(),
            Some(JwtSvidError::Jose(JoseError::HeaderType("typ")))
        );
        // Unknown header members are tolerated (as go-spiffe does), and never used for keys.
        let rogue = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let rogue_jwk = Value::Object(PublicJwk::for_signing_key(&rogue).to_json_map());
        f.validate(
            &f.custom(
                json!({"kid": f.kid, "x-extra": true, "jwk": rogue_jwk}),
                f.claims(),
            ),
            "svc",
        )
        .expect("extra header tolerated");
        // crit is refused unless understood (JV-23).
        assert_eq!(
            f.validate(
                &f.custom(
                    json!({"kid": f.kid, "crit": ["x-extra"], "x-extra": 1}),
                    f.claims()
                ),
                "svc"
            )
            .err(),
            Some(JwtSvidError::Jose(JoseError::UnsupportedCrit(
                "x-extra".into()
            )))
        );
    }

    #[test]
    fn missing_kid_policy() {
        let f = fixture();
        let token = f.custom(json!({}), f.claims());
        assert_eq!(
            f.validate(&token, "svc").err(),
            Some(JwtSvidError::MissingKid)
        );
        let lenient = JwtSvidValidation {
            require_kid: false,
            ..Default::default()
        };
        let ok = validate_jwt_svid(&token, "svc", &f.bundles, at(NOW), &lenient)
            .expect("JV-22 lenient mode");
        assert_eq!(ok.kid, None);
        let stranger = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let mut header = Map::new();
        header.insert("alg".into(), "ES256".into());
        let forged = encode_compact(&header, &obj(f.claims()), |i| Ok(stranger.sign_fixed(i)?))
            .expect("encode");
        assert_eq!(
            validate_jwt_svid(&forged, "svc", &f.bundles, at(NOW), &lenient).err(),
            Some(JwtSvidError::Jose(JoseError::BadSignature))
        );
    }

    #[test]
    fn algorithm_rules() {
        let f = fixture();
        let claims = obj(f.claims());
        let b64 = |v: Value| b64url_encode(v.to_string().as_bytes());
        let body = b64(f.claims());
        // alg none and HS256 (JV-5/JV-6), with and without a signature.
        for (alg, expected) in [
            ("none", JwtSvidError::Jose(JoseError::AlgNone)),
            (
                "HS256",
                JwtSvidError::Jose(JoseError::SymmetricAlg("HS256".into())),
            ),
        ] {
            let token = format!("{}.{body}.", b64(json!({"alg": alg, "kid": f.kid})));
            assert_eq!(f.validate(&token, "svc").err(), Some(expected.clone()));
            let token = format!("{}.{body}.c2ln", b64(json!({"alg": alg, "kid": f.kid})));
            assert_eq!(f.validate(&token, "svc").err(), Some(expected));
        }
        // EdDSA is a valid JOSE alg but not a JWT-SVID one.
        let ed = TestKey::ed25519();
        let token = ed.token(JwsAlgorithm::EdDsa, &obj(json!({"kid": "ed"})), &claims);
        assert_eq!(
            f.validate(&token, "svc").err(),
            Some(JwtSvidError::AlgNotAllowed(JwsAlgorithm::EdDsa))
        );
        // ES256 header over a key registered as another type.
        let token = f.custom(json!({"kid": f.kid, "alg": "ES384"}), f.claims());
        assert!(matches!(
            f.validate(&token, "svc"),
            Err(JwtSvidError::Jose(JoseError::KeyAlgMismatch { .. }))
        ));
    }

    #[test]
    fn rsa_and_p521_authorities() {
        let rsa = TestKey::rsa();
        let p521 = TestKey::p521();
        let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
        bundle.jwt_authorities.insert(
            "rsa".into(),
            PublicJwk {
                key: rsa.public_key(),
                kid: None,
                alg: None,
            },
        );
        bundle.jwt_authorities.insert(
            "p521".into(),
            PublicJwk {
                key: p521.public_key(),
                kid: None,
                alg: None,
            },
        );
        let claims = obj(json!({"sub": "spiffe://example.org/w", "aud": ["svc"], "exp": NOW + 60}));
        for (key, kid, alg) in [
            (&rsa, "rsa", JwsAlgorithm::Rs256),
            (&rsa, "rsa", JwsAlgorithm::Rs384),
            (&rsa, "rsa", JwsAlgorithm::Rs512),
            (&rsa, "rsa", JwsAlgorithm::Ps256),
            (&rsa, "rsa", JwsAlgorithm::Ps384),
            (&rsa, "rsa", JwsAlgorithm::Ps512),
            (&p521, "p521", JwsAlgorithm::Es512),
        ] {
            let token = key.token(alg, &obj(json!({"kid": kid, "typ": "JWT"})), &claims);
            validate_jwt_svid(
                &token,
                "svc",
                &bundle,
                at(NOW),
                &JwtSvidValidation::default(),
            )
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        }
    }

    #[test]
    fn tampered_and_malformed_tokens() {
        let f = fixture();
        let token = f.mint(&["svc"]);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = f.claims();
        claims["sub"] = "spiffe://example.org/admin".into();
        parts[1] = b64url_encode(claims.to_string().as_bytes());
        assert_eq!(
            f.validate(&parts.join("."), "svc").err(),
            Some(JwtSvidError::Jose(JoseError::BadSignature))
        );
        // Flip one signature bit.
        let mut sig =
            crate::jose::b64url_decode(token.rsplit('.').next().unwrap_or_default(), "sig")
                .expect("sig");
        sig[5] ^= 1;
        let (head, _) = token.rsplit_once('.').expect("dot");
        let flipped = format!("{head}.{}", b64url_encode(&sig));
        assert_eq!(
            f.validate(&flipped, "svc").err(),
            Some(JwtSvidError::Jose(JoseError::BadSignature))
        );
        assert!(matches!(
            f.validate("not a token", "svc"),
            Err(JwtSvidError::Jose(JoseError::PartCount(1)))
        ));
        assert!(matches!(
            f.validate(&format!("{token}.x.y"), "svc"),
            Err(JwtSvidError::Jose(JoseError::PartCount(5)))
        ));
    }

    #[test]
    fn mint_argument_checks() {
        let f = fixture();
        let sub = id("spiffe://example.org/w");
        let claims = |aud: &'static [String], exp: u64| JwtSvidClaims {
            spiffe_id: &sub,
            audience: aud,
            issued_at: at(NOW),
            expires_at: at(exp),
            jti: None,
            issuer: None,
        };
        assert_eq!(
            mint_jwt_svid(&f.key, "k", &claims(&[], NOW + 5)).err(),
            Some(JwtSvidError::NoAudience)
        );
        assert_eq!(
            mint_jwt_svid(&f.key, "", &claims(&[], NOW + 5)).err(),
            Some(JwtSvidError::EmptyKid)
        );
        static AUD: [String; 0] = [];
        let aud = vec!["a".to_string()];
        let c = JwtSvidClaims {
            audience: &aud,
            ..claims(&AUD, NOW)
        };
        assert_eq!(
            mint_jwt_svid(&f.key, "k", &c).err(),
            Some(JwtSvidError::ExpiryBeforeIssuance)
        );
        let token = mint_jwt_svid(
            &f.key,
            "k",
            &JwtSvidClaims {
                expires_at: at(NOW + 5),
                ..c
            },
        )
        .expect("mint");
        let claims = CompactJws::parse(&token).expect("parse").into_claims();
        assert!(!claims.contains_key("jti"));
        assert!(!claims.contains_key("iss"), "no issuer configured, no iss");
    }

    #[test]
    fn the_issuer_becomes_the_iss_claim_and_still_validates() {
        let f = fixture();
        let sub = id("spiffe://example.org/workload");
        let audience = vec!["sts.amazonaws.com".to_string()];
        let token = mint_jwt_svid(
            &f.key,
            &f.kid,
            &JwtSvidClaims {
                spiffe_id: &sub,
                audience: &audience,
                issued_at: at(NOW - 10),
                expires_at: at(NOW + 300),
                jti: None,
                issuer: Some("https://oidc.example.org"),
            },
        )
        .expect("mint");
        let ok = f.validate(&token, "sts.amazonaws.com").expect("valid");
        assert_eq!(ok.claims["iss"], "https://oidc.example.org");
        assert_eq!(ok.claims["sub"], "spiffe://example.org/workload");
    }

    #[test]
    fn error_labels_are_stable() {
        assert_eq!(JwtSvidError::Expired.label(), "expired");
        assert_eq!(JwtSvidError::Jose(JoseError::AlgNone).label(), "alg_none");
        assert_eq!(
            JwtSvidError::MissingKid.to_string(),
            "token header missing key id"
        );
    }
}
