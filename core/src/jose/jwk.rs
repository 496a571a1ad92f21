//! JSON Web Keys (RFC 7517/7518/8037): public EC (P-256, P-384, P-521), RSA and OKP Ed25519 keys,
//! RFC 7638 thumbprints, and the private EC JWK a workload receives with its WIT-SVID.

use std::fmt::Write as _;

use aws_lc_rs::encoding::AsBigEndian as _;
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use der::Decode as _;
use der::asn1::{ObjectIdentifier, UintRef};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::{JoseError, JwsAlgorithm, b64url_decode, b64url_encode, sha256_b64url};
use crate::keys::{KeyAlgorithm, SigningKey};

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Members that only a private JWK carries (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Elliptic curves for `kty: EC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
    P521,
}

impl EcCurve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            EcCurve::P256 => "P-256",
            EcCurve::P384 => "P-384",
            EcCurve::P521 => "P-521",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(EcCurve::P256),
            "P-384" => Some(EcCurve::P384),
            "P-521" => Some(EcCurve::P521),
            _ => None,
        }
    }

    /// Length in bytes of one coordinate.
    pub fn coordinate_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
            EcCurve::P521 => 66,
        }
    }

    fn verification_alg(self) -> &'static signature::EcdsaVerificationAlgorithm {
        match self {
            EcCurve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
            EcCurve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
            EcCurve::P521 => &signature::ECDSA_P521_SHA512_FIXED,
        }
    }

    /// The ECDSA JWS algorithm that belongs to this curve.
    pub fn jws_alg(self) -> JwsAlgorithm {
        match self {
            EcCurve::P256 => JwsAlgorithm::Es256,
            EcCurve::P384 => JwsAlgorithm::Es384,
            EcCurve::P521 => JwsAlgorithm::Es512,
        }
    }
}

impl From<KeyAlgorithm> for EcCurve {
    fn from(algorithm: KeyAlgorithm) -> Self {
        match algorithm {
            KeyAlgorithm::EcdsaP256 => EcCurve::P256,
            KeyAlgorithm::EcdsaP384 => EcCurve::P384,
        }
    }
}

/// A public key as JOSE represents it. Byte fields are the decoded JWK members.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// `point` is the uncompressed SEC1 encoding, 0x04 || x || y.
    Ec { curve: EcCurve, point: Vec<u8> },
    /// Big-endian modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The 32-byte Ed25519 public key.
    Ed25519 { x: Vec<u8> },
}

impl PublicKey {
    /// The public half of one of our signing keys.
    pub fn from_signing_key(key: &SigningKey) -> Self {
        PublicKey::Ec {
            curve: key.algorithm().into(),
            point: key.public_key_sec1().to_vec(),
        }
    }

    /// Reads a DER SubjectPublicKeyInfo (as in a certificate) holding an EC, RSA or Ed25519 key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, JoseError> {
        let spki =
            spki::SubjectPublicKeyInfoRef::from_der(der).map_err(|_| JoseError::UnsupportedSpki)?;
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or(JoseError::UnsupportedSpki)?;
        let oid = spki.algorithm.oid;
        if oid == OID_EC_PUBLIC_KEY {
            let curve_oid = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or(JoseError::UnsupportedSpki)?;
            let curve = match curve_oid {
                c if c == OID_P256 => EcCurve::P256,
                c if c == OID_P384 => EcCurve::P384,
                c if c == OID_P521 => EcCurve::P521,
                _ => return Err(JoseError::UnsupportedSpki),
            };
            if key_bytes.len() != 1 + 2 * curve.coordinate_len() || key_bytes.first() != Some(&0x04)
            {
                return Err(JoseError::UnsupportedSpki);
            }
            Ok(PublicKey::Ec {
                curve,
                point: key_bytes.to_vec(),
            })
        } else if oid == OID_RSA_ENCRYPTION {
            let rsa =
                RsaPublicKeyDer::from_der(key_bytes).map_err(|_| JoseError::UnsupportedSpki)?;
            Ok(PublicKey::Rsa {
                n: rsa.modulus.as_bytes().to_vec(),
                e: rsa.public_exponent.as_bytes().to_vec(),
            })
        } else if oid == OID_ED25519 {
            if key_bytes.len() != 32 {
                return Err(JoseError::UnsupportedSpki);
            }
            Ok(PublicKey::Ed25519 {
                x: key_bytes.to_vec(),
            })
        } else {
            Err(JoseError::UnsupportedSpki)
        }
    }

    /// The DER SubjectPublicKeyInfo, as a certificate holds it (what [`Self::from_spki_der`]
    /// reads; SPIRE's API carries JWT authorities this way).
    pub fn to_spki_der(&self) -> Result<Vec<u8>, JoseError> {
        use der::Encode as _;
        use der::asn1::{AnyRef, BitStringRef};
        let encoding = |_| JoseError::UnsupportedSpki;
        let curve_oid;
        let rsa_key;
        let (algorithm, key) = match self {
            PublicKey::Ec { curve, point } => {
                curve_oid = match curve {
                    EcCurve::P256 => OID_P256,
                    EcCurve::P384 => OID_P384,
                    EcCurve::P521 => OID_P521,
                };
                let parameters = Some(AnyRef::from(&curve_oid));
                (
                    spki::AlgorithmIdentifierRef {
                        oid: OID_EC_PUBLIC_KEY,
                        parameters,
                    },
                    point.as_slice(),
                )
            }
            PublicKey::Rsa { n, e } => {
                rsa_key = RsaPublicKeyDer {
                    modulus: UintRef::new(n).map_err(encoding)?,
                    public_exponent: UintRef::new(e).map_err(encoding)?,
                }
                .to_der()
                .map_err(encoding)?;
                (
                    spki::AlgorithmIdentifierRef {
                        oid: OID_RSA_ENCRYPTION,
                        parameters: Some(AnyRef::NULL),
                    },
                    rsa_key.as_slice(),
                )
            }
            PublicKey::Ed25519 { x } => (
                spki::AlgorithmIdentifierRef {
                    oid: OID_ED25519,
                    parameters: None,
                },
                x.as_slice(),
            ),
        };
        spki::SubjectPublicKeyInfoRef {
            algorithm,
            subject_public_key: BitStringRef::from_bytes(key).map_err(encoding)?,
        }
        .to_der()
        .map_err(encoding)
    }

    /// The JWK `kty`.
    pub fn kty(&self) -> &'static str {
        match self {
            PublicKey::Ec { .. } => "EC",
            PublicKey::Rsa { .. } => "RSA",
            PublicKey::Ed25519 { .. } => "OKP",
        }
    }

    /// True if this key can verify signatures made with `alg`.
    pub fn supports(&self, alg: JwsAlgorithm) -> bool {
        use JwsAlgorithm::*;
        match self {
            PublicKey::Ec { curve, .. } => curve.jws_alg() == alg,
            PublicKey::Rsa { .. } => matches!(alg, Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512),
            PublicKey::Ed25519 { .. } => alg == EdDsa,
        }
    }

    /// The required members (RFC 7638 §3.2), in lexicographic order, as (name, value) pairs.
    fn required_members(&self) -> Vec<(&'static str, String)> {
        match self {
            PublicKey::Ec { curve, point } => {
                let (x, y) = split_point(*curve, point);
                vec![
                    ("crv", curve.name().to_owned()),
                    ("kty", "EC".to_owned()),
                    ("x", b64url_encode(x)),
                    ("y", b64url_encode(y)),
                ]
            }
            PublicKey::Rsa { n, e } => {
                vec![
                    ("e", b64url_encode(e)),
                    ("kty", "RSA".to_owned()),
                    ("n", b64url_encode(n)),
                ]
            }
            PublicKey::Ed25519 { x } => {
                vec![
                    ("crv", "Ed25519".to_owned()),
                    ("kty", "OKP".to_owned()),
                    ("x", b64url_encode(x)),
                ]
            }
        }
    }

    /// The RFC 7638 SHA-256 JWK thumbprint, base64url. Stable and unique per key, so we use it as
    /// the `kid` of every key we publish.
    pub fn thumbprint(&self) -> String {
        // Every member value is base64url or a fixed name: no JSON escaping is ever needed.
        let mut canonical = String::from("{");
        for (i, (name, value)) in self.required_members().iter().enumerate() {
            if i > 0 {
                canonical.push(',');
            }
            let _ = write!(canonical, "\"{name}\":\"{value}\"");
        }
        canonical.push('}');
        sha256_b64url(canonical.as_bytes())
    }

    /// The key's JWK members (kty and the key parameters only).
    pub fn to_jwk_members(&self) -> Map<String, Value> {
        self.required_members()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect()
    }

    /// Reads the key parameters of a public JWK. An unknown `kty` or curve gives
    /// [`JoseError::UnsupportedKeyType`] / [`JoseError::UnsupportedCurve`], which bundle parsing
    /// treats as "ignore this key"; any other error means a malformed key.
    pub fn from_jwk_members(jwk: &Map<String, Value>) -> Result<Self, JoseError> {
        let kty = string_member(jwk, "kty")?.ok_or(JoseError::MissingMember("kty"))?;
        match kty {
            "EC" => {
                let crv = string_member(jwk, "crv")?.ok_or(JoseError::MissingMember("crv"))?;
                let curve = EcCurve::from_name(crv)
                    .ok_or_else(|| JoseError::UnsupportedCurve(super::clip(crv)))?;
                let x = bytes_member(jwk, "x")?;
                let y = bytes_member(jwk, "y")?;
                // RFC 7518 §6.2.1.2: coordinates are always the full curve size.
                if x.len() != curve.coordinate_len() {
                    return Err(JoseError::InvalidMember("x"));
                }
                if y.len() != curve.coordinate_len() {
                    return Err(JoseError::InvalidMember("y"));
                }
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                // Refuse points off the curve here, as go-jose does, so a broken key fails the
                // bundle it arrives in rather than every later verification.
                signature::ParsedPublicKey::new(curve.verification_alg(), &point)
                    .map_err(|_| JoseError::InvalidPoint(curve.name()))?;
                Ok(PublicKey::Ec { curve, point })
            }
            "RSA" => {
                let n = bytes_member(jwk, "n")?;
                let e = bytes_member(jwk, "e")?;
                if n.is_empty() {
                    return Err(JoseError::InvalidMember("n"));
                }
                if e.is_empty() {
                    return Err(JoseError::InvalidMember("e"));
                }
                Ok(PublicKey::Rsa { n, e })
            }
            "OKP" => {
                let crv = string_member(jwk, "crv")?.ok_or(JoseError::MissingMember("crv"))?;
                if crv != "Ed25519" {
                    return Err(JoseError::UnsupportedCurve(super::clip(crv)));
                }
                let x = bytes_member(jwk, "x")?;
                if x.len() != 32 {
                    return Err(JoseError::InvalidMember("x"));
                }
                Ok(PublicKey::Ed25519 { x })
            }
            other => Err(JoseError::UnsupportedKeyType(super::clip(other))),
        }
    }
}

/// A public JWK: the key plus the optional `kid` and `alg` members.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicJwk {
    pub key: PublicKey,
    pub kid: Option<String>,
    /// The JWS algorithm the key is meant for. A WIT's `cnf.jwk` must carry it.
    pub alg: Option<String>,
}

impl PublicJwk {
    /// The public JWK of one of our signing keys, with `alg` set and no `kid`.
    pub fn for_signing_key(key: &SigningKey) -> Self {
        Self {
            key: PublicKey::from_signing_key(key),
            kid: None,
            alg: Some(key.algorithm().jws_alg().to_owned()),
        }
    }

    /// Parses a public JWK object. Private key members are refused: a trust bundle or a `cnf`
    /// that carries a private key is broken, and we will not pass the secret along.
    pub fn from_json_map(jwk: &Map<String, Value>) -> Result<Self, JoseError> {
        if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
            return Err(JoseError::PrivateMember(member));
        }
        let key = PublicKey::from_jwk_members(jwk)?;
        let kid = string_member(jwk, "kid")?.map(str::to_owned);
        let alg = string_member(jwk, "alg")?.map(str::to_owned);
        Ok(Self { key, kid, alg })
    }

    /// Parses a public JWK from JSON text (duplicate members are rejected).
    pub fn from_json(json: &str) -> Result<Self, JoseError> {
        Self::from_json_map(
            &super::parse_strict_object(json.as_bytes()).map_err(|e| strict_error("JWK", e))?,
        )
    }

    /// The JWK as a JSON object: key members, then `kid` and `alg` when set.
    pub fn to_json_map(&self) -> Map<String, Value> {
        let mut map = self.key.to_jwk_members();
        if let Some(kid) = &self.kid {
            map.insert("kid".to_owned(), Value::String(kid.clone()));
        }
        if let Some(alg) = &self.alg {
            map.insert("alg".to_owned(), Value::String(alg.clone()));
        }
        map
    }

    pub fn thumbprint(&self) -> String {
        self.key.thumbprint()
    }
}

pub(super) fn strict_error(part: &'static str, error: super::StrictJsonError) -> JoseError {
    match error {
        super::StrictJsonError::Duplicate(member) => JoseError::DuplicateMember { part, member },
        super::StrictJsonError::Syntax(reason) => JoseError::Json { part, reason },
    }
}

/// A string member, `None` if absent, an error if present with another type.
fn string_member<'a>(
    jwk: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, JoseError> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JoseError::InvalidMember(name)),
    }
}

/// A required base64url member, decoded.
fn bytes_member(jwk: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JoseError> {
    let text = string_member(jwk, name)?.ok_or(JoseError::MissingMember(name))?;
    b64url_decode(text, name).map_err(|_| JoseError::InvalidMember(name))
}

/// Splits an uncompressed point into (x, y); a malformed point gives empty slices.
fn split_point(curve: EcCurve, point: &[u8]) -> (&[u8], &[u8]) {
    let len = curve.coordinate_len();
    match point.get(1..) {
        Some(xy) if xy.len() == 2 * len => xy.split_at(len),
        _ => (&[], &[]),
    }
}

#[derive(der::Sequence)]
struct RsaPublicKeyDer<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

fn ecdsa_signing_alg(algorithm: KeyAlgorithm) -> &'static EcdsaSigningAlgorithm {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
    }
}

/// The private JWK (`kty` EC with `d`, plus `alg`) of a workload key, as the Workload API's
/// `wit_svid_key` carries it. The result is secret: never log it.
pub fn private_jwk_json(key: &SigningKey) -> Result<Zeroizing<String>, JoseError> {
    let algorithm = key.algorithm();
    let pair = EcdsaKeyPair::from_pkcs8(ecdsa_signing_alg(algorithm), &key.pkcs8_der())
        .map_err(|_| JoseError::Key(crate::keys::KeyError::InvalidPkcs8(algorithm)))?;
    let scalar = pair
        .private_key()
        .as_be_bytes()
        .map_err(|_| JoseError::Key(crate::keys::KeyError::InvalidPkcs8(algorithm)))?;
    let d = Zeroizing::new(b64url_encode(scalar.as_ref()));
    let curve = EcCurve::from(algorithm);
    let (x, y) = split_point(curve, pair.public_key().as_ref());
    // Written straight into one pre-sized buffer so no stray copy of `d` is left behind.
    let mut json = Zeroizing::new(String::with_capacity(320));
    let _ = write!(
        json,
        "{{\"alg\":\"{}\",\"crv\":\"{}\",\"d\":\"{}\",\"kty\":\"EC\",\"x\":\"{}\",\"y\":\"{}\"}}",
        algorithm.jws_alg(),
        curve.name(),
        d.as_str(),
        b64url_encode(x),
        b64url_encode(y),
    );
    Ok(json)
}

/// Loads a private EC JWK (P-256 or P-384, as from `wit_svid_key`) as a signing key.
pub fn signing_key_from_private_jwk(json: &str) -> Result<SigningKey, JoseError> {
    let jwk = super::parse_strict_object(json.as_bytes()).map_err(|e| strict_error("JWK", e))?;
    let PublicKey::Ec { curve, point } = PublicKey::from_jwk_members(&jwk)? else {
        return Err(JoseError::UnsupportedKeyType(
            string_member(&jwk, "kty")?.unwrap_or_default().to_owned(),
        ));
    };
    let algorithm = match curve {
        EcCurve::P256 => KeyAlgorithm::EcdsaP256,
        EcCurve::P384 => KeyAlgorithm::EcdsaP384,
        EcCurve::P521 => return Err(JoseError::UnsupportedCurve(curve.name().to_owned())),
    };
    if let Some(alg) = string_member(&jwk, "alg")?
        && alg != algorithm.jws_alg()
    {
        return Err(JoseError::JwkAlgMismatch {
            jwk_alg: super::clip(alg),
            alg: algorithm.jws_alg(),
        });
    }
    let d = Zeroizing::new(bytes_member(&jwk, "d")?);
    if d.len() != curve.coordinate_len() {
        return Err(JoseError::InvalidMember("d"));
    }
    let pair =
        EcdsaKeyPair::from_private_key_and_public_key(ecdsa_signing_alg(algorithm), &d, &point)
            .map_err(|_| JoseError::InvalidMember("d"))?;
    let pkcs8 = pair
        .to_pkcs8v1()
        .map_err(|_| JoseError::InvalidMember("d"))?;
    Ok(SigningKey::from_pkcs8(algorithm, pkcs8.as_ref())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(m) => m,
            _ => panic!("test input must be an object"),
        }
    }

    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn rfc7638_thumbprint_vector() {
        let jwk = PublicJwk::from_json_map(&map(json!({
            "kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"
        })))
        .expect("RFC 7638 example key parses");
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(jwk.kid.as_deref(), Some("2011-04-29"));
    }

    #[test]
    fn ec_jwk_round_trips_and_thumbprints_are_unique_per_key() {
        let a = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let b = SigningKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
        let ja = PublicJwk::for_signing_key(&a);
        let jb = PublicJwk::for_signing_key(&b);
        assert_ne!(ja.thumbprint(), jb.thumbprint());
        assert_eq!(ja.thumbprint(), ja.thumbprint());
        let again = PublicJwk::from_json_map(&ja.to_json_map()).expect("round trip");
        assert_eq!(again, ja);
        assert_eq!(ja.alg.as_deref(), Some("ES256"));
        assert_eq!(jb.to_json_map()["crv"], "P-384");
        // The SPKI form of the same key reads back as the same JWK key.
        assert_eq!(
            PublicKey::from_spki_der(&a.public_key_spki_der()).expect("spki"),
            ja.key
        );
    }

    #[test]
    fn spki_encoding_is_the_exact_inverse_of_reading_it() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SigningKey::generate(alg).expect("key");
            let spki = key.public_key_spki_der();
            let public = PublicKey::from_spki_der(&spki).expect("spki");
            assert_eq!(public.to_spki_der().expect("encode"), spki.to_vec());
        }
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
        let spki =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'static>>::as_der(
                rsa.public_key(),
            )
            .expect("rsa spki");
        let public = PublicKey::from_spki_der(spki.as_ref()).expect("rsa public key");
        assert_eq!(
            public.to_spki_der().expect("encode"),
            spki.as_ref().to_vec()
        );
        let ed = PublicKey::Ed25519 { x: vec![7; 32] };
        assert_eq!(
            PublicKey::from_spki_der(&ed.to_spki_der().expect("encode")).expect("read"),
            ed
        );
    }

    #[test]
    fn private_jwk_round_trips_to_the_same_key() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = SigningKey::generate(alg).expect("key");
            let json = private_jwk_json(&key).expect("export");
            let parsed: Value = serde_json::from_str(&json).expect("json");
            assert_eq!(parsed["alg"], alg.jws_alg());
            assert_eq!(parsed["kty"], "EC");
            let loaded = signing_key_from_private_jwk(&json).expect("import");
            assert_eq!(loaded.public_key_sec1(), key.public_key_sec1());
            assert_eq!(loaded.algorithm(), alg);
            // A private JWK is never accepted where a public one is expected.
            assert_eq!(
                PublicJwk::from_json(&json),
                Err(JoseError::PrivateMember("d"))
            );
        }
    }

    #[test]
    fn private_jwk_with_mismatched_public_part_is_rejected() {
        let a = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let b = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let mut ja: Map<String, Value> =
            serde_json::from_str(&private_jwk_json(&a).expect("export")).expect("json");
        let jb = PublicJwk::for_signing_key(&b).to_json_map();
        ja.insert("x".into(), jb["x"].clone());
        ja.insert("y".into(), jb["y"].clone());
        let text = Value::Object(ja).to_string();
        assert_eq!(
            signing_key_from_private_jwk(&text).err(),
            Some(JoseError::InvalidMember("d"))
        );
    }

    #[test]
    fn malformed_and_unknown_jwks() {
        let cases = [
            (json!({"crv": "P-256"}), JoseError::MissingMember("kty")),
            (
                json!({"kty": "oct", "k": "AA"}),
                JoseError::PrivateMember("k"),
            ),
            (
                json!({"kty": "oct"}),
                JoseError::UnsupportedKeyType("oct".into()),
            ),
            (
                json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}),
                JoseError::UnsupportedCurve("secp256k1".into()),
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
                JoseError::InvalidMember("x"),
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": 5, "y": "AA"}),
                JoseError::InvalidMember("x"),
            ),
            (
                json!({"kty": "RSA", "e": "AQAB"}),
                JoseError::MissingMember("n"),
            ),
            (
                json!({"kty": "RSA", "n": "", "e": "AQAB"}),
                JoseError::InvalidMember("n"),
            ),
            (
                json!({"kty": "OKP", "crv": "X25519", "x": "AA"}),
                JoseError::UnsupportedCurve("X25519".into()),
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"}),
                JoseError::InvalidMember("x"),
            ),
            (json!({"kty": 7}), JoseError::InvalidMember("kty")),
            (
                json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": 3}),
                JoseError::InvalidMember("kid"),
            ),
        ];
        for (jwk, expected) in cases {
            assert_eq!(
                PublicJwk::from_json_map(&map(jwk.clone())),
                Err(expected),
                "{jwk}"
            );
        }
        assert!(matches!(
            PublicJwk::from_json(r#"{"kty":"EC","kty":"RSA"}"#),
            Err(JoseError::DuplicateMember { .. })
        ));
        assert!(matches!(
            PublicJwk::from_json("not json"),
            Err(JoseError::Json { .. })
        ));
    }

    #[test]
    fn ed25519_jwk_from_the_wimse_draft() {
        let jwk = PublicJwk::from_json(
            r#"{"alg":"EdDSA","crv":"Ed25519","kty":"OKP","x":"1CXXvflN_LVVsIsYXsUvB03JmlGWeCHqQVuouCF92bg"}"#,
        )
        .expect("draft cnf key");
        assert!(jwk.key.supports(JwsAlgorithm::EdDsa));
        assert!(!jwk.key.supports(JwsAlgorithm::Es256));
        assert_eq!(jwk.key.thumbprint().len(), 43);
    }

    #[test]
    fn off_curve_points_are_refused() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let mut members = PublicJwk::for_signing_key(&key).to_json_map();
        let y = b64url_decode(members["y"].as_str().expect("y"), "y").expect("b64");
        let mut bent = y.clone();
        bent[31] ^= 1;
        members.insert("y".into(), Value::String(b64url_encode(&bent)));
        assert_eq!(
            PublicJwk::from_json_map(&members),
            Err(JoseError::InvalidPoint("P-256"))
        );
        assert_eq!(
            super::super::key_id(&key),
            PublicJwk::for_signing_key(&key).thumbprint()
        );
    }

    #[test]
    fn spki_garbage_is_an_error() {
        assert_eq!(
            PublicKey::from_spki_der(b"\x30\x03\x02\x01\x00"),
            Err(JoseError::UnsupportedSpki)
        );
        assert_eq!(
            PublicKey::from_spki_der(&[]),
            Err(JoseError::UnsupportedSpki)
        );
    }
}
