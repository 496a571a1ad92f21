//! The JWT-SVID cases of the SPIFFE conformance suite (`arndt-s/spiffe-conformance-test-suite`,
//! `docs/TEST_CATALOGUE.md` §6: JV-1..25, JB-4..8), run against our validator and bundle parser.
//! Tokens are ES256 with `aud` `["conformance"]`, a 5-minute `exp` and a known `kid` unless a
//! case says otherwise; the validator runs with audience `conformance`.
//!
//! One deliberate deviation: JV-22 (accept a token without `kid`) fails under the default policy,
//! exactly as go-spiffe and SPIRE do; it passes with `require_kid: false`.

use crate::jose::test_support::{NOW, at};
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::jws::encode_compact;
use super::jws::test_signers::TestKey;
use super::jwt_svid::{JwtSvidError, JwtSvidValidation, ValidatedJwtSvid, validate_jwt_svid};
use super::{JoseError, JwsAlgorithm, PublicJwk, b64url_decode, b64url_encode};
use crate::bundle::TrustDomainBundle;
use crate::keys::{KeyAlgorithm, SigningKey};
use crate::spiffe_id::TrustDomain;

const AUD: &str = "conformance";

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).expect("trust domain")
}

/// Signers for every allowed algorithm, plus their bundles.
struct Suite {
    p256: SigningKey,
    p384: SigningKey,
    p521: TestKey,
    rsa: TestKey,
    ed: TestKey,
    federated: SigningKey,
    bundles: BTreeMap<TrustDomain, TrustDomainBundle>,
}

fn suite() -> Suite {
    let p256 = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let p384 = SigningKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
    let p521 = TestKey::p521();
    let rsa = TestKey::rsa();
    let ed = TestKey::ed25519();
    let federated = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let plain = |key| PublicJwk {
        key,
        kid: None,
        alg: None,
    };
    let mut local = TrustDomainBundle::new(td("example.org"));
    local.jwt_authorities.insert(
        "p256".into(),
        plain(super::PublicKey::from_signing_key(&p256)),
    );
    local.jwt_authorities.insert(
        "p384".into(),
        plain(super::PublicKey::from_signing_key(&p384)),
    );
    local
        .jwt_authorities
        .insert("p521".into(), plain(p521.public_key()));
    local
        .jwt_authorities
        .insert("rsa".into(), plain(rsa.public_key()));
    local
        .jwt_authorities
        .insert("ed".into(), plain(ed.public_key()));
    let mut fed = TrustDomainBundle::new(td("fed.example.org"));
    fed.jwt_authorities.insert(
        "fed".into(),
        plain(super::PublicKey::from_signing_key(&federated)),
    );
    let bundles = [
        (local.trust_domain.clone(), local),
        (fed.trust_domain.clone(), fed),
    ]
    .into();
    Suite {
        p256,
        p384,
        p521,
        rsa,
        ed,
        federated,
        bundles,
    }
}

fn claims() -> Value {
    json!({"sub": "spiffe://example.org/workload", "aud": [AUD], "exp": NOW + 300, "iat": NOW})
}

fn with(mut value: Value, patch: Value) -> Value {
    for (k, v) in obj(patch) {
        if v.is_null() {
            if let Some(m) = value.as_object_mut() {
                m.remove(&k);
            }
        } else {
            value[k] = v;
        }
    }
    value
}

impl Suite {
    /// Signs with the key that fits `alg`.
    fn sign(&self, alg: JwsAlgorithm, header: Value, claims: Value) -> String {
        let mut header = obj(header);
        header.insert("alg".into(), alg.name().into());
        let claims = obj(claims);
        match alg {
            JwsAlgorithm::Es256 => {
                encode_compact(&header, &claims, |i| Ok(self.p256.sign_fixed(i)?))
            }
            JwsAlgorithm::Es384 => {
                encode_compact(&header, &claims, |i| Ok(self.p384.sign_fixed(i)?))
            }
            JwsAlgorithm::Es512 => Ok(self.p521.token(alg, &header, &claims)),
            JwsAlgorithm::EdDsa => Ok(self.ed.token(alg, &header, &claims)),
            _ => Ok(self.rsa.token(alg, &header, &claims)),
        }
        .expect("sign")
    }

    fn es256(&self, header: Value, claims: Value) -> String {
        self.sign(JwsAlgorithm::Es256, header, claims)
    }

    fn validate(&self, token: &str) -> Result<ValidatedJwtSvid, JwtSvidError> {
        validate_jwt_svid(
            token,
            AUD,
            &self.bundles,
            at(NOW),
            &JwtSvidValidation::default(),
        )
    }

    fn rejects(&self, case: &str, token: &str) -> JwtSvidError {
        match self.validate(token) {
            Ok(_) => panic!("{case}: accepted an invalid token"),
            Err(e) => e,
        }
    }
}

fn kid(name: &str) -> Value {
    json!({"kid": name, "typ": "JWT"})
}

#[test]
fn jv_1_to_6_algorithms() {
    let s = suite();
    // JV-1: positive control.
    let ok = s.validate(&s.es256(kid("p256"), claims())).expect("JV-1");
    assert_eq!(ok.spiffe_id.as_str(), "spiffe://example.org/workload");
    // JV-2: every allowed alg.
    for (alg, k) in [
        (JwsAlgorithm::Rs256, "rsa"),
        (JwsAlgorithm::Rs384, "rsa"),
        (JwsAlgorithm::Rs512, "rsa"),
        (JwsAlgorithm::Es256, "p256"),
        (JwsAlgorithm::Es384, "p384"),
        (JwsAlgorithm::Es512, "p521"),
        (JwsAlgorithm::Ps256, "rsa"),
        (JwsAlgorithm::Ps384, "rsa"),
        (JwsAlgorithm::Ps512, "rsa"),
    ] {
        s.validate(&s.sign(alg, kid(k), claims()))
            .unwrap_or_else(|e| panic!("JV-2/{alg}: {e}"));
    }
    // JV-3: alg none.
    let body = b64url_encode(claims().to_string().as_bytes());
    let none = format!(
        "{}.{body}.",
        b64url_encode(br#"{"alg":"none","kid":"p256"}"#)
    );
    assert_eq!(
        s.rejects("JV-3", &none),
        JwtSvidError::Jose(JoseError::AlgNone)
    );
    // JV-4: HMAC keyed with the bundle key's public key (algorithm confusion).
    let spki = s.p256.public_key_spki_der();
    let pem =
        pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, &spki).expect("pem");
    for (alg, hmac_alg) in [
        ("HS256", aws_lc_rs::hmac::HMAC_SHA256),
        ("HS384", aws_lc_rs::hmac::HMAC_SHA384),
        ("HS512", aws_lc_rs::hmac::HMAC_SHA512),
    ] {
        let input = format!(
            "{}.{body}",
            b64url_encode(json!({"alg": alg, "kid": "p256"}).to_string().as_bytes())
        );
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(hmac_alg, pem.as_bytes()),
            input.as_bytes(),
        );
        let token = format!("{input}.{}", b64url_encode(tag.as_ref()));
        assert!(matches!(
            s.rejects("JV-4", &token),
            JwtSvidError::Jose(JoseError::SymmetricAlg(_))
        ));
    }
    // JV-5: EdDSA, with the Ed25519 key in the bundle.
    assert_eq!(
        s.rejects("JV-5", &s.sign(JwsAlgorithm::EdDsa, kid("ed"), claims())),
        JwtSvidError::AlgNotAllowed(JwsAlgorithm::EdDsa)
    );
    // JV-6: alg that does not fit the key type.
    let rs_on_ec = s
        .rsa
        .token(JwsAlgorithm::Rs256, &obj(kid("p256")), &obj(claims()));
    assert!(matches!(
        s.rejects("JV-6/RS256-EC", &rs_on_ec),
        JwtSvidError::Jose(JoseError::KeyAlgMismatch { .. })
    ));
    let es384_on_p256 = s.sign(JwsAlgorithm::Es384, kid("p256"), claims());
    assert!(matches!(
        s.rejects("JV-6/ES384-P256", &es384_on_p256),
        JwtSvidError::Jose(JoseError::KeyAlgMismatch { .. })
    ));
}

#[test]
fn jv_7_to_13_claims() {
    let s = suite();
    let token = |patch: Value| s.es256(kid("p256"), with(claims(), patch));
    assert!(matches!(
        s.rejects("JV-7", &token(json!({"aud": null}))),
        JwtSvidError::AudienceMismatch { .. }
    ));
    assert!(matches!(
        s.rejects("JV-8", &token(json!({"aud": ["other"]}))),
        JwtSvidError::AudienceMismatch { .. }
    ));
    s.validate(&token(json!({"aud": ["other", AUD]})))
        .expect("JV-9");
    s.validate(&token(json!({"aud": AUD}))).expect("JV-10");
    assert_eq!(
        s.rejects("JV-11", &token(json!({"exp": null}))),
        JwtSvidError::MissingExp
    );
    assert_eq!(
        s.rejects("JV-12", &token(json!({"exp": NOW - 300}))),
        JwtSvidError::Expired
    );
    assert_eq!(
        s.rejects("JV-13", &token(json!({"nbf": NOW + 300}))),
        JwtSvidError::NotYetValid
    );
}

#[test]
fn jv_14_to_19_signature_and_key_selection() {
    let s = suite();
    let good = s.es256(kid("p256"), claims());
    // JV-14: one bit flipped in the signature.
    let (input, sig) = good.rsplit_once('.').expect("three parts");
    let mut sig = b64url_decode(sig, "sig").expect("sig");
    if let Some(byte) = sig.get_mut(10) {
        *byte ^= 0x01;
    }
    let flipped = format!("{input}.{}", b64url_encode(&sig));
    assert_eq!(
        s.rejects("JV-14", &flipped),
        JwtSvidError::Jose(JoseError::BadSignature)
    );
    // JV-15: sub changed, original signature.
    let parts: Vec<&str> = good.split('.').collect();
    let changed = with(claims(), json!({"sub": "spiffe://example.org/admin"}));
    let tampered = format!(
        "{}.{}.{}",
        parts.first().expect("header"),
        b64url_encode(changed.to_string().as_bytes()),
        parts.get(2).expect("signature")
    );
    assert_eq!(
        s.rejects("JV-15", &tampered),
        JwtSvidError::Jose(JoseError::BadSignature)
    );
    // JV-16: key not in the bundle.
    assert!(matches!(
        s.rejects("JV-16", &s.es256(kid("unknown"), claims())),
        JwtSvidError::NoAuthority { .. }
    ));
    // JV-17: sub in the federated trust domain, kid only in example.org's bundle.
    let cross = s.es256(
        kid("p256"),
        with(claims(), json!({"sub": "spiffe://fed.example.org/w"})),
    );
    assert!(matches!(
        s.rejects("JV-17", &cross),
        JwtSvidError::NoAuthority { .. }
    ));
    // JV-18: no bundle for the sub's trust domain.
    let orphan = s.es256(
        kid("p256"),
        with(claims(), json!({"sub": "spiffe://nowhere.org/w"})),
    );
    assert_eq!(
        s.rejects("JV-18", &orphan),
        JwtSvidError::NoBundle("nowhere.org".into())
    );
    // JV-19: sub not a SPIFFE ID.
    let not_spiffe = s.es256(
        kid("p256"),
        with(claims(), json!({"sub": "https://example.org/w"})),
    );
    assert!(matches!(
        s.rejects("JV-19", &not_spiffe),
        JwtSvidError::InvalidSubject(_)
    ));
}

#[test]
fn jv_20_to_25_header_and_serialization() {
    let s = suite();
    for typ in [json!("JWT"), json!("JOSE"), Value::Null] {
        let header = with(json!({"kid": "p256"}), json!({"typ": typ.clone()}));
        s.validate(&s.es256(header, claims()))
            .unwrap_or_else(|e| panic!("JV-20/{typ}: {e}"));
    }
    assert_eq!(
        s.rejects(
            "JV-21",
            &s.es256(json!({"kid": "p256", "typ": "at+jwt"}), claims())
        ),
        JwtSvidError::BadTyp
    );
    // JV-22: no kid. Rejected by default (go-spiffe/SPIRE behaviour), accepted when allowed.
    let no_kid = s.es256(json!({"typ": "JWT"}), claims());
    assert_eq!(
        s.rejects("JV-22/default", &no_kid),
        JwtSvidError::MissingKid
    );
    let lenient = JwtSvidValidation {
        require_kid: false,
        ..Default::default()
    };
    validate_jwt_svid(&no_kid, AUD, &s.bundles, at(NOW), &lenient)
        .expect("JV-22/require_kid=false");
    // JV-23: unknown crit.
    let crit = s.es256(
        json!({"kid": "p256", "crit": ["urn:x"], "urn:x": true}),
        claims(),
    );
    assert!(matches!(
        s.rejects("JV-23", &crit),
        JwtSvidError::Jose(JoseError::UnsupportedCrit(_))
    ));
    // JV-24: JWS JSON serialization of a valid token.
    let good = s.es256(kid("p256"), claims());
    let parts: Vec<&str> = good.split('.').collect();
    let general = json!({"payload": parts.get(1), "signatures": [{"protected": parts.first(), "signature": parts.get(2)}]});
    assert_eq!(
        s.rejects("JV-24", &general.to_string()),
        JwtSvidError::Jose(JoseError::JsonSerialization)
    );
    // JV-25: malformed compact tokens.
    let header = parts.first().copied().unwrap_or_default();
    let body = parts.get(1).copied().unwrap_or_default();
    for (variant, token) in [
        ("two-parts", format!("{header}.{body}")),
        ("four-parts", format!("{good}.x")),
        ("bad-base64", format!("{header}.{body}!.AA")),
        (
            "bad-json",
            format!("{header}.{}.AA", b64url_encode(b"{\"sub\":")),
        ),
        ("empty", String::new()),
    ] {
        assert!(
            matches!(s.rejects(variant, &token), JwtSvidError::Jose(_)),
            "JV-25/{variant}"
        );
    }
}

#[test]
fn jb_4_to_8_bundles() {
    let s = suite();
    // JB-4: three keys, the token uses the second.
    let keys: Vec<SigningKey> = (0..3)
        .map(|_| SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key"))
        .collect();
    let jwk_of = |k: &SigningKey, kid: &str, key_use: Option<&str>| {
        let mut m = super::PublicKey::from_signing_key(k).to_jwk_members();
        m.insert("kid".into(), kid.into());
        if let Some(u) = key_use {
            m.insert("use".into(), u.into());
        }
        Value::Object(m)
    };
    let mut header = Map::new();
    header.insert("alg".into(), "ES256".into());
    header.insert("kid".into(), "k1".into());
    let token = |k: &SigningKey, kid: &str| {
        let mut h = header.clone();
        h.insert("kid".into(), kid.into());
        encode_compact(&h, &obj(claims()), |i| Ok(k.sign_fixed(i)?)).expect("sign")
    };
    let parse = |doc: Value| {
        TrustDomainBundle::from_jwt_bundle_json(td("example.org"), doc.to_string().as_bytes())
            .expect("bundle")
    };
    let validate = |bundle: &TrustDomainBundle, token: &str| {
        validate_jwt_svid(token, AUD, bundle, at(NOW), &JwtSvidValidation::default())
    };
    let [k0, k1, k2] = [&keys[0], &keys[1], &keys[2]];
    let three = parse(
        json!({"keys": [jwk_of(k0, "k0", None), jwk_of(k1, "k1", None), jwk_of(k2, "k2", None)]}),
    );
    validate(&three, &token(k1, "k1")).expect("JB-4");
    // JB-5/x509-svid-use: a key with another use is ignored; the others keep working.
    let mixed = parse(
        json!({"keys": [jwk_of(k0, "k0", Some("x509-svid")), jwk_of(k1, "k1", Some("jwt-svid"))]}),
    );
    assert!(
        validate(&mixed, &token(k0, "k0")).is_err(),
        "JB-5/x509-svid-use"
    );
    validate(&mixed, &token(k1, "k1")).expect("JB-5 other keys still work");
    // JB-5/missing-use (OPT): in the SPIFFE bundle form a key without use is ignored.
    let spiffe_form = TrustDomainBundle::from_spiffe_jwks(
        td("example.org"),
        json!({"keys": [jwk_of(k0, "k0", None), jwk_of(k1, "k1", Some("jwt-svid"))]})
            .to_string()
            .as_bytes(),
    )
    .expect("bundle");
    assert!(
        validate(&spiffe_form, &token(k0, "k0")).is_err(),
        "JB-5/missing-use"
    );
    validate(&spiffe_form, &token(k1, "k1")).expect("JB-5/missing-use other keys");
    // JB-6: an unknown kty is skipped without discarding the rest.
    let unknown =
        parse(json!({"keys": [{"kty": "XYZ", "kid": "z", "foo": 1}, jwk_of(k1, "k1", None)]}));
    validate(&unknown, &token(k1, "k1")).expect("JB-6");
    // JB-7: empty keys trusts nothing.
    let empty = parse(json!({"keys": []}));
    assert!(
        matches!(
            validate(&empty, &token(k1, "k1")),
            Err(JwtSvidError::NoAuthority { .. })
        ),
        "JB-7"
    );
    // JB-8: a federated trust domain's token validates with that trust domain's bundle.
    let mut h = header.clone();
    h.insert("kid".into(), "fed".into());
    let fed_claims = with(claims(), json!({"sub": "spiffe://fed.example.org/w"}));
    let fed_token =
        encode_compact(&h, &obj(fed_claims), |i| Ok(s.federated.sign_fixed(i)?)).expect("sign");
    s.validate(&fed_token).expect("JB-8");
}
