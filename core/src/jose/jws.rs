//! JWS compact serialization (RFC 7515 §7.1) with JSON header and claims: strict parsing,
//! signing with a [`SigningKey`], and verification with a public JWK.

use std::fmt;

use aws_lc_rs::signature::{
    self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm,
};
use serde_json::{Map, Value};

use super::jwk::strict_error;
use super::{JoseError, MAX_TOKEN_LEN, PublicJwk, PublicKey, b64url_decode, b64url_encode, clip};
use crate::keys::SigningKey;

/// The asymmetric JWS algorithms we verify. `none` and HMAC are not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
    Es512,
    Ps256,
    Ps384,
    Ps512,
    EdDsa,
}

impl JwsAlgorithm {
    /// The nine algorithms JWT-SVID and WIT-SVID allow (everything here but EdDSA).
    pub const SPIFFE: [JwsAlgorithm; 9] = [
        JwsAlgorithm::Rs256,
        JwsAlgorithm::Rs384,
        JwsAlgorithm::Rs512,
        JwsAlgorithm::Es256,
        JwsAlgorithm::Es384,
        JwsAlgorithm::Es512,
        JwsAlgorithm::Ps256,
        JwsAlgorithm::Ps384,
        JwsAlgorithm::Ps512,
    ];

    /// The registered `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::Rs256 => "RS256",
            JwsAlgorithm::Rs384 => "RS384",
            JwsAlgorithm::Rs512 => "RS512",
            JwsAlgorithm::Es256 => "ES256",
            JwsAlgorithm::Es384 => "ES384",
            JwsAlgorithm::Es512 => "ES512",
            JwsAlgorithm::Ps256 => "PS256",
            JwsAlgorithm::Ps384 => "PS384",
            JwsAlgorithm::Ps512 => "PS512",
            JwsAlgorithm::EdDsa => "EdDSA",
        }
    }

    /// Parses an `alg` value (case-sensitive, RFC 7515 §4.1.1). `none` and `HS*` get their own
    /// errors so metrics show downgrade attempts.
    pub fn from_name(name: &str) -> Result<Self, JoseError> {
        Ok(match name {
            "RS256" => JwsAlgorithm::Rs256,
            "RS384" => JwsAlgorithm::Rs384,
            "RS512" => JwsAlgorithm::Rs512,
            "ES256" => JwsAlgorithm::Es256,
            "ES384" => JwsAlgorithm::Es384,
            "ES512" => JwsAlgorithm::Es512,
            "PS256" => JwsAlgorithm::Ps256,
            "PS384" => JwsAlgorithm::Ps384,
            "PS512" => JwsAlgorithm::Ps512,
            "EdDSA" => JwsAlgorithm::EdDsa,
            "none" => return Err(JoseError::AlgNone),
            hs if hs.starts_with("HS") => return Err(JoseError::SymmetricAlg(clip(hs))),
            other => return Err(JoseError::UnsupportedAlg(clip(other))),
        })
    }

    /// True for the algorithms JWT-SVID and WIT-SVID allow.
    pub fn is_spiffe_alg(self) -> bool {
        self != JwsAlgorithm::EdDsa
    }
}

impl fmt::Display for JwsAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed, not yet verified, JWS in compact serialization with JSON header and payload.
///
/// Parsing already enforces what holds for every token we accept: three strict base64url parts,
/// JSON objects without duplicate members, an asymmetric `alg`, and no `crit` (we implement no
/// JWS extensions, so RFC 7515 §4.1.11 says any `crit` must be refused).
#[derive(Clone)]
pub struct CompactJws {
    alg: JwsAlgorithm,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

impl fmt::Debug for CompactJws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token itself may be a bearer credential: show the header only.
        f.debug_struct("CompactJws")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl CompactJws {
    /// Parses a compact JWS. Does not verify the signature: call [`CompactJws::verify`].
    pub fn parse(token: &str) -> Result<Self, JoseError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JoseError::TooLong(token.len()));
        }
        if token.trim_start().starts_with('{') {
            return Err(JoseError::JsonSerialization);
        }
        let parts = token.split('.').count();
        let mut split = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (split.next(), split.next(), split.next(), split.next())
        else {
            return Err(JoseError::PartCount(parts));
        };
        let header_bytes = b64url_decode(header_b64, "token header")?;
        let header = super::parse_strict_object(&header_bytes)
            .map_err(|e| strict_error("token header", e))?;
        let alg = match header.get("alg") {
            None => return Err(JoseError::MissingAlg),
            Some(Value::String(alg)) => JwsAlgorithm::from_name(alg)?,
            Some(_) => return Err(JoseError::HeaderType("alg")),
        };
        check_crit(&header, &[])?;
        let payload = b64url_decode(payload_b64, "token payload")?;
        let claims =
            super::parse_strict_object(&payload).map_err(|e| strict_error("token claims", e))?;
        let signature = b64url_decode(signature_b64, "token signature")?;
        let signing_input_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = token
            .get(..signing_input_len)
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            alg,
            header,
            claims,
            signing_input,
            signature,
        })
    }

    pub fn alg(&self) -> JwsAlgorithm {
        self.alg
    }

    pub fn header(&self) -> &Map<String, Value> {
        &self.header
    }

    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    pub fn into_claims(self) -> Map<String, Value> {
        self.claims
    }

    /// A header member that must be a string when present.
    pub fn header_str(&self, name: &'static str) -> Result<Option<&str>, JoseError> {
        match self.header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(JoseError::HeaderType(name)),
        }
    }

    /// The `kid` header, if present (must be a string).
    pub fn kid(&self) -> Result<Option<&str>, JoseError> {
        self.header_str("kid")
    }

    /// The `typ` header, if present (must be a string).
    pub fn typ(&self) -> Result<Option<&str>, JoseError> {
        self.header_str("typ")
    }

    /// Verifies the signature with `jwk`. The key must fit the token's `alg`, and the JWK's own
    /// `alg` member, when present, must equal it (RFC 7517 §4.4).
    pub fn verify(&self, jwk: &PublicJwk) -> Result<(), JoseError> {
        if let Some(jwk_alg) = &jwk.alg
            && jwk_alg != self.alg.name()
        {
            return Err(JoseError::JwkAlgMismatch {
                jwk_alg: clip(jwk_alg),
                alg: self.alg.name(),
            });
        }
        verify_signature(
            &jwk.key,
            self.alg,
            self.signing_input.as_bytes(),
            &self.signature,
        )
    }
}

/// RFC 7515 §4.1.11: `crit` must be a non-empty array of names that are present in the header and
/// that this implementation understands.
fn check_crit(header: &Map<String, Value>, understood: &[&str]) -> Result<(), JoseError> {
    let Some(crit) = header.get("crit") else {
        return Ok(());
    };
    let Value::Array(names) = crit else {
        return Err(JoseError::MalformedCrit);
    };
    if names.is_empty() {
        return Err(JoseError::MalformedCrit);
    }
    for name in names {
        let Value::String(name) = name else {
            return Err(JoseError::MalformedCrit);
        };
        if !understood.contains(&name.as_str()) || !header.contains_key(name) {
            return Err(JoseError::UnsupportedCrit(clip(name)));
        }
    }
    Ok(())
}

/// Checks a raw JWS signature. ECDSA signatures are the fixed r || s form (RFC 7518 §3.4).
pub fn verify_signature(
    key: &PublicKey,
    alg: JwsAlgorithm,
    message: &[u8],
    sig: &[u8],
) -> Result<(), JoseError> {
    use JwsAlgorithm::*;
    let mismatch = || JoseError::KeyAlgMismatch {
        key: key.kty(),
        alg: alg.name(),
    };
    if !key.supports(alg) {
        return Err(mismatch());
    }
    let result = match key {
        PublicKey::Ec { point, .. } => {
            let algorithm: &'static dyn VerificationAlgorithm = match alg {
                Es256 => &signature::ECDSA_P256_SHA256_FIXED,
                Es384 => &signature::ECDSA_P384_SHA384_FIXED,
                Es512 => &signature::ECDSA_P521_SHA512_FIXED,
                _ => return Err(mismatch()),
            };
            UnparsedPublicKey::new(algorithm, point).verify(message, sig)
        }
        PublicKey::Rsa { n, e } => {
            let params: &'static RsaParameters = match alg {
                Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return Err(mismatch()),
            };
            RsaPublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            }
            .verify(params, message, sig)
        }
        PublicKey::Ed25519 { x } => {
            UnparsedPublicKey::new(&signature::ED25519, x).verify(message, sig)
        }
    };
    result.map_err(|_| JoseError::BadSignature)
}

/// Builds `b64(header).b64(claims)` and signs it with `sign`. Used by [`sign_compact`] and by
/// tests that need tokens from other key types.
pub(crate) fn encode_compact(
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, JoseError>,
) -> Result<String, JoseError> {
    let header_json = serde_json::to_vec(header).map_err(|e| JoseError::Json {
        part: "token header",
        reason: e.to_string(),
    })?;
    let claims_json = serde_json::to_vec(claims).map_err(|e| JoseError::Json {
        part: "token claims",
        reason: e.to_string(),
    })?;
    let mut token = b64url_encode(&header_json);
    token.push('.');
    token.push_str(&b64url_encode(&claims_json));
    let signature = sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&b64url_encode(&signature));
    Ok(token)
}

/// Signs `claims` with `key`. `header` supplies `kid`, `typ` and the like; `alg` is always set
/// from the key, overriding anything in `header`.
pub fn sign_compact(
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
    key: &SigningKey,
) -> Result<String, JoseError> {
    let mut header = header.clone();
    header.insert(
        "alg".to_owned(),
        Value::String(key.algorithm().jws_alg().to_owned()),
    );
    encode_compact(&header, claims, |input| Ok(key.sign_fixed(input)?))
}

/// Test-only signers for key types our [`SigningKey`] does not hold (RSA, P-521, Ed25519).
#[cfg(test)]
pub(crate) mod test_signers {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};

    /// A key pair that signs for one JWS algorithm.
    pub(crate) enum TestKey {
        Rsa(RsaKeyPair),
        P521(EcdsaKeyPair),
        Ed25519(Ed25519KeyPair),
    }

    impl TestKey {
        pub(crate) fn rsa() -> Self {
            TestKey::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa key"))
        }
        pub(crate) fn p521() -> Self {
            TestKey::P521(
                EcdsaKeyPair::generate(&signature::ECDSA_P521_SHA512_FIXED_SIGNING)
                    .expect("p521 key"),
            )
        }
        pub(crate) fn ed25519() -> Self {
            TestKey::Ed25519(Ed25519KeyPair::generate().expect("ed25519 key"))
        }

        pub(crate) fn public_key(&self) -> PublicKey {
            match self {
                TestKey::Rsa(k) => {
                    let spki = aws_lc_rs::encoding::AsDer::<
                        aws_lc_rs::encoding::PublicKeyX509Der<'static>,
                    >::as_der(k.public_key())
                    .expect("rsa spki");
                    PublicKey::from_spki_der(spki.as_ref()).expect("rsa public key")
                }
                TestKey::P521(k) => PublicKey::Ec {
                    curve: super::super::EcCurve::P521,
                    point: k.public_key().as_ref().to_vec(),
                },
                TestKey::Ed25519(k) => PublicKey::Ed25519 {
                    x: k.public_key().as_ref().to_vec(),
                },
            }
        }

        pub(crate) fn sign(&self, alg: JwsAlgorithm, input: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match self {
                TestKey::Rsa(k) => {
                    let padding: &'static dyn signature::RsaEncoding = match alg {
                        JwsAlgorithm::Rs256 => &signature::RSA_PKCS1_SHA256,
                        JwsAlgorithm::Rs384 => &signature::RSA_PKCS1_SHA384,
                        JwsAlgorithm::Rs512 => &signature::RSA_PKCS1_SHA512,
                        JwsAlgorithm::Ps256 => &signature::RSA_PSS_SHA256,
                        JwsAlgorithm::Ps384 => &signature::RSA_PSS_SHA384,
                        JwsAlgorithm::Ps512 => &signature::RSA_PSS_SHA512,
                        _ => panic!("not an RSA alg"),
                    };
                    let mut sig = vec![0; k.public_modulus_len()];
                    k.sign(padding, &rng, input, &mut sig).expect("rsa sign");
                    sig
                }
                TestKey::P521(k) => k.sign(&rng, input).expect("p521 sign").as_ref().to_vec(),
                TestKey::Ed25519(k) => k.sign(input).as_ref().to_vec(),
            }
        }

        /// Signs a token with `alg`, which the test chooses freely (even a wrong one).
        pub(crate) fn token(
            &self,
            alg: JwsAlgorithm,
            header: &Map<String, Value>,
            claims: &Map<String, Value>,
        ) -> String {
            let mut header = header.clone();
            header.insert("alg".into(), Value::String(alg.name().into()));
            encode_compact(&header, claims, |input| Ok(self.sign(alg, input))).expect("encode")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_signers::TestKey;
    use super::*;
    use crate::jose::test_support::obj;
    use crate::keys::KeyAlgorithm;
    use serde_json::json;

    fn b64json(value: &Value) -> String {
        b64url_encode(value.to_string().as_bytes())
    }

    #[test]
    fn sign_and_verify_with_our_keys() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SigningKey::generate(alg).expect("key");
            let token = sign_compact(
                &obj(json!({"kid": "k1", "alg": "none"})),
                &obj(json!({"sub": "x"})),
                &key,
            )
            .expect("sign");
            let jws = CompactJws::parse(&token).expect("parse");
            assert_eq!(jws.alg().name(), alg.jws_alg());
            assert_eq!(jws.kid().expect("kid"), Some("k1"));
            assert_eq!(jws.claims()["sub"], "x");
            jws.verify(&PublicJwk::for_signing_key(&key))
                .expect("verifies");
            let other = SigningKey::generate(alg).expect("key");
            assert_eq!(
                jws.verify(&PublicJwk::for_signing_key(&other)),
                Err(JoseError::BadSignature)
            );
        }
    }

    #[test]
    fn every_allowed_algorithm_verifies() {
        let rsa = TestKey::rsa();
        let p521 = TestKey::p521();
        let ed = TestKey::ed25519();
        let claims = obj(json!({"sub": "spiffe://example.org/w"}));
        let header = obj(json!({"kid": "k"}));
        let cases = [
            (&rsa, JwsAlgorithm::Rs256),
            (&rsa, JwsAlgorithm::Rs384),
            (&rsa, JwsAlgorithm::Rs512),
            (&rsa, JwsAlgorithm::Ps256),
            (&rsa, JwsAlgorithm::Ps384),
            (&rsa, JwsAlgorithm::Ps512),
            (&p521, JwsAlgorithm::Es512),
            (&ed, JwsAlgorithm::EdDsa),
        ];
        for (key, alg) in cases {
            let token = key.token(alg, &header, &claims);
            let jws = CompactJws::parse(&token).expect("parse");
            let jwk = PublicJwk {
                key: key.public_key(),
                kid: None,
                alg: None,
            };
            jws.verify(&jwk).unwrap_or_else(|e| panic!("{alg}: {e}"));
            // The JWK's alg member must match when present.
            let pinned = PublicJwk {
                alg: Some("ES256".into()),
                ..jwk.clone()
            };
            assert!(matches!(
                jws.verify(&pinned),
                Err(JoseError::JwkAlgMismatch { .. })
            ));
        }
        // RS256 token presented with PS256 in the header is a bad signature, not a crash.
        let token = rsa.token(JwsAlgorithm::Rs256, &header, &claims);
        let mut parts: Vec<&str> = token.split('.').collect();
        let ps_header = b64json(&json!({"alg": "PS256", "kid": "k"}));
        parts[0] = &ps_header;
        let jws = CompactJws::parse(&parts.join(".")).expect("parse");
        assert_eq!(
            jws.verify(&PublicJwk {
                key: rsa.public_key(),
                kid: None,
                alg: None
            }),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn key_type_must_fit_alg() {
        let ec = SigningKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
        let token = sign_compact(&Map::new(), &Map::new(), &ec).expect("sign");
        let jws = CompactJws::parse(&token).expect("parse");
        let p256 = PublicJwk::for_signing_key(
            &SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key"),
        );
        assert_eq!(
            jws.verify(&PublicJwk { alg: None, ..p256 }),
            Err(JoseError::KeyAlgMismatch {
                key: "EC",
                alg: "ES384"
            })
        );
        let ed = TestKey::ed25519();
        assert!(matches!(
            jws.verify(&PublicJwk {
                key: ed.public_key(),
                kid: None,
                alg: None
            }),
            Err(JoseError::KeyAlgMismatch { .. })
        ));
    }

    #[test]
    fn structural_rejections() {
        let h = b64json(&json!({"alg": "ES256"}));
        let c = b64json(&json!({"sub": "x"}));
        let cases: Vec<(String, JoseError)> = vec![
            (format!("{h}.{c}"), JoseError::PartCount(2)),
            (format!("{h}.{c}.AA.AA"), JoseError::PartCount(4)),
            (format!("{h}.{c}.AA.AA.AA"), JoseError::PartCount(5)),
            (String::new(), JoseError::PartCount(1)),
            (
                r#"{"payload":"x","signatures":[]}"#.into(),
                JoseError::JsonSerialization,
            ),
            (format!("{h}=.{c}.AA"), JoseError::Base64("token header")),
            (format!("{h}.{c}=.AA"), JoseError::Base64("token payload")),
            (format!("{h}.{c}.A+A"), JoseError::Base64("token signature")),
            (
                format!("{}.{c}.AA", b64url_encode(b"[1]")),
                JoseError::Json {
                    part: "token header",
                    reason: "not a JSON object".into(),
                },
            ),
            (
                format!("{}.{c}.AA", b64json(&json!({"typ": "JWT"}))),
                JoseError::MissingAlg,
            ),
            (
                format!("{}.{c}.AA", b64json(&json!({"alg": 1}))),
                JoseError::HeaderType("alg"),
            ),
            (
                format!("{}.{c}.", b64json(&json!({"alg": "none"}))),
                JoseError::AlgNone,
            ),
            (
                format!("{}.{c}.AA", b64json(&json!({"alg": "HS256"}))),
                JoseError::SymmetricAlg("HS256".into()),
            ),
            (
                format!("{}.{c}.AA", b64json(&json!({"alg": "ES256K"}))),
                JoseError::UnsupportedAlg("ES256K".into()),
            ),
            (
                format!("{}.{c}.AA", b64json(&json!({"alg": "es256"}))),
                JoseError::UnsupportedAlg("es256".into()),
            ),
            (
                format!(
                    "{}.{c}.AA",
                    b64json(&json!({"alg": "ES256", "crit": ["exp"], "exp": 1}))
                ),
                JoseError::UnsupportedCrit("exp".into()),
            ),
            (
                format!("{}.{c}.AA", b64json(&json!({"alg": "ES256", "crit": []}))),
                JoseError::MalformedCrit,
            ),
            (
                format!(
                    "{}.{c}.AA",
                    b64json(&json!({"alg": "ES256", "crit": "b64"}))
                ),
                JoseError::MalformedCrit,
            ),
            (
                format!(
                    "{}.{c}.AA",
                    b64url_encode(br#"{"alg":"ES256","alg":"none"}"#)
                ),
                JoseError::DuplicateMember {
                    part: "token header",
                    member: "alg".into(),
                },
            ),
            (
                format!("{h}.{}.AA", b64url_encode(b"\"str\"")),
                JoseError::Json {
                    part: "token claims",
                    reason: "not a JSON object".into(),
                },
            ),
            (
                "a".repeat(MAX_TOKEN_LEN + 1),
                JoseError::TooLong(MAX_TOKEN_LEN + 1),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(
                CompactJws::parse(&token).err(),
                Some(expected),
                "{:.80}",
                token
            );
        }
    }

    #[test]
    fn tampered_token_fails_verification() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let token = sign_compact(&Map::new(), &obj(json!({"sub": "a"})), &key).expect("sign");
        let jwk = PublicJwk::for_signing_key(&key);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = b64json(&json!({"sub": "b"}));
        let tampered = parts.join(".");
        assert_eq!(
            CompactJws::parse(&tampered).expect("parse").verify(&jwk),
            Err(JoseError::BadSignature)
        );
        // Empty and truncated signatures.
        for sig in ["", "AA"] {
            let t = format!("{}.{}.{sig}", parts[0], parts[1]);
            assert_eq!(
                CompactJws::parse(&t).expect("parse").verify(&jwk),
                Err(JoseError::BadSignature)
            );
        }
    }

    #[test]
    fn debug_does_not_show_claims_or_signature() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let token =
            sign_compact(&Map::new(), &obj(json!({"secret": "claim"})), &key).expect("sign");
        let shown = format!("{:?}", CompactJws::parse(&token).expect("parse"));
        assert!(!shown.contains("claim"));
    }
}
