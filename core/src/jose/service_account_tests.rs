use super::*;
use crate::jose::sign_compact;
use crate::jose::test_support::{NOW, at, obj};
use crate::keys::{KeyAlgorithm, SigningKey};
use serde_json::json;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

struct Issuer {
    key: SigningKey,
    keys: IssuerKeys,
}

fn issuer() -> Issuer {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let mut jwk = PublicJwk::for_signing_key(&key).to_json_map();
    jwk.insert("kid".into(), json!("k1"));
    jwk.insert("use".into(), json!("sig"));
    let jwks = json!({"keys": [jwk]}).to_string();
    let keys = IssuerKeys::from_jwks(ISSUER, jwks.as_bytes()).expect("jwks");
    Issuer { key, keys }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": ["wimsey"],
        "sub": "system:serviceaccount:team:app",
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "kubernetes.io": {
            "namespace": "team",
            "serviceaccount": {"name": "app", "uid": "sa-uid"},
            "pod": {"name": "app-0", "uid": "pod-uid"},
        },
    })
}

fn sign(issuer: &Issuer, kid: Option<&str>, claims: Value) -> String {
    let mut header = obj(json!({"typ": "JWT"}));
    if let Some(kid) = kid {
        header.insert("kid".into(), json!(kid));
    }
    sign_compact(&header, &obj(claims), &issuer.key).expect("sign")
}

fn verify(issuer: &Issuer, token: &str) -> Result<PodBoundToken, ServiceAccountTokenError> {
    verify_pod_token(token, &issuer.keys, "wimsey", at(NOW))
}

#[test]
fn a_pod_bound_token_names_its_pod_and_service_account() {
    let issuer = issuer();
    let token = verify(&issuer, &sign(&issuer, Some("k1"), claims())).expect("verifies");
    assert_eq!(
        token,
        PodBoundToken {
            namespace: "team".into(),
            service_account: "app".into(),
            pod_name: "app-0".into(),
            pod_uid: "pod-uid".into(),
            expires_at: at(NOW + 600),
        }
    );
}

#[test]
fn a_token_signed_by_a_key_published_later_is_noticed() {
    let issuer = issuer();
    assert!(issuer.keys.has_key("k1"));
    assert!(
        !issuer
            .keys
            .lacks_key_of(&sign(&issuer, Some("k1"), claims()))
    );
    assert!(
        issuer
            .keys
            .lacks_key_of(&sign(&issuer, Some("k2"), claims()))
    );
    assert!(!issuer.keys.lacks_key_of(&sign(&issuer, None, claims())));
    assert!(!issuer.keys.lacks_key_of("not a token"));
}

#[test]
fn a_token_without_kid_is_tried_against_every_key() {
    let issuer = issuer();
    assert!(verify(&issuer, &sign(&issuer, None, claims())).is_ok());
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let issuer = issuer();
    let other = self::issuer();
    let forged = sign(&other, Some("k1"), claims());
    assert!(matches!(
        verify(&issuer, &forged),
        Err(ServiceAccountTokenError::Jose(JoseError::BadSignature))
    ));
    let unknown = sign(&issuer, Some("k2"), claims());
    assert_eq!(
        verify(&issuer, &unknown),
        Err(ServiceAccountTokenError::UnknownKey("k2".into()))
    );
}

#[test]
fn every_claim_is_checked() {
    let issuer = issuer();
    let cases: Vec<(&str, Value, ServiceAccountTokenError)> = vec![
        (
            "iss",
            json!("https://elsewhere"),
            ServiceAccountTokenError::WrongIssuer,
        ),
        (
            "aud",
            json!(["api"]),
            ServiceAccountTokenError::WrongAudience,
        ),
        ("aud", json!(7), ServiceAccountTokenError::ClaimType("aud")),
        ("exp", json!(NOW - 61), ServiceAccountTokenError::Expired),
        (
            "exp",
            json!("soon"),
            ServiceAccountTokenError::ClaimType("exp"),
        ),
        (
            "nbf",
            json!(NOW + 61),
            ServiceAccountTokenError::NotYetValid,
        ),
        (
            "sub",
            json!("system:serviceaccount:team:admin"),
            ServiceAccountTokenError::SubjectMismatch,
        ),
        (
            "kubernetes.io",
            json!({"namespace": "team", "serviceaccount": {"name": "app"}}),
            ServiceAccountTokenError::NotPodBound,
        ),
        (
            "kubernetes.io",
            json!({"namespace": "team", "serviceaccount": {"name": "app"}, "pod": {"name": "p"}}),
            ServiceAccountTokenError::ClaimType("kubernetes.io.pod.uid"),
        ),
        (
            "kubernetes.io",
            json!("team"),
            ServiceAccountTokenError::ClaimType("kubernetes.io"),
        ),
    ];
    for (claim, value, expected) in cases {
        let mut changed = claims();
        changed[claim] = value;
        let token = sign(&issuer, Some("k1"), changed);
        assert_eq!(verify(&issuer, &token), Err(expected), "{claim}");
    }
    for claim in ["iss", "exp", "sub"] {
        let mut changed = claims();
        changed.as_object_mut().expect("object").remove(claim);
        let token = sign(&issuer, Some("k1"), changed);
        assert_eq!(
            verify(&issuer, &token),
            Err(ServiceAccountTokenError::MissingClaim(claim))
        );
    }
}

#[test]
fn a_tampered_token_is_refused() {
    let issuer = issuer();
    let token = sign(&issuer, Some("k1"), claims());
    let mut other = claims();
    other["kubernetes.io"]["pod"]["uid"] = json!("another-pod");
    let swapped_payload = sign(&issuer, Some("k1"), other);
    let parts: Vec<&str> = token.split('.').collect();
    let other_parts: Vec<&str> = swapped_payload.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    assert!(matches!(
        verify(&issuer, &spliced),
        Err(ServiceAccountTokenError::Jose(JoseError::BadSignature))
    ));
}

#[test]
fn the_jwks_is_bounded_and_keeps_only_signature_keys() {
    let issuer = issuer();
    let mut jwk = PublicJwk::for_signing_key(&issuer.key).to_json_map();
    jwk.insert("use".into(), json!("enc"));
    let only_enc = json!({"keys": [jwk.clone()]}).to_string();
    assert_eq!(
        IssuerKeys::from_jwks(ISSUER, only_enc.as_bytes()),
        Err(ServiceAccountTokenError::NoKeys)
    );
    let many = json!({"keys": vec![jwk; MAX_ISSUER_KEYS + 1]}).to_string();
    assert_eq!(
        IssuerKeys::from_jwks(ISSUER, many.as_bytes()),
        Err(ServiceAccountTokenError::TooManyKeys(MAX_ISSUER_KEYS + 1))
    );
    let huge = vec![b' '; MAX_JWKS_BYTES + 1];
    assert_eq!(
        IssuerKeys::from_jwks(ISSUER, &huge),
        Err(ServiceAccountTokenError::JwksTooLarge(MAX_JWKS_BYTES + 1))
    );
    for garbage in [&b"[]"[..], b"{\"keys\": 3}", b"\xff", b""] {
        assert!(IssuerKeys::from_jwks(ISSUER, garbage).is_err());
    }
    assert_eq!(
        IssuerKeys::from_jwks("", b"{\"keys\": []}"),
        Err(ServiceAccountTokenError::EmptyIssuer)
    );
}

#[test]
fn the_issuer_comes_from_the_discovery_document() {
    let document = json!({"issuer": ISSUER, "jwks_uri": "https://x/openid/v1/jwks"}).to_string();
    assert_eq!(discovery_issuer(document.as_bytes()).as_deref(), Ok(ISSUER));
    assert_eq!(
        discovery_issuer(b"{\"issuer\": \"\"}"),
        Err(ServiceAccountTokenError::EmptyIssuer)
    );
    assert!(discovery_issuer(b"not json").is_err());
}

#[test]
fn arbitrary_bytes_never_panic() {
    let issuer = issuer();
    let token = sign(&issuer, Some("k1"), claims());
    let bytes = token.as_bytes();
    for cut in (0..bytes.len()).step_by(7) {
        let text = String::from_utf8_lossy(&bytes[..cut]);
        assert!(verify(&issuer, &text).is_err());
    }
}
