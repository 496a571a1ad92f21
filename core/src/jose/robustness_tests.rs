//! A cheap in-tree fuzz pass: thousands of mutated tokens and bundles through every parser and
//! validator. Each must return, never panic. Mutations are made both on the wire form and on the
//! JSON inside it (re-encoded and re-signed), so the claim checks behind the signature see
//! hostile input too.

use crate::jose::test_support::NOW;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::jws::encode_compact;
use super::jwt_svid::{JwtSvidClaims, JwtSvidValidation, mint_jwt_svid, validate_jwt_svid};
use super::wimse::{
    ValidatedWit, WitProfile, WitSvidClaims, WitValidation, WptClaims, WptExpectations,
    mint_wit_svid, mint_wpt, validate_wit, verify_wpt,
};
use super::{CompactJws, PublicJwk, b64url_encode, signing_key_from_private_jwk};
use crate::bundle::{
    TrustDomainBundle, parse_bundle_map, parse_x509_authorities_der, parse_x509_authorities_pem,
};
use crate::keys::{KeyAlgorithm, SigningKey};
use crate::spiffe_id::{SpiffeId, TrustDomain};

const ROUNDS: usize = 2000;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Characters that matter to the parsers: JSON and base64url syntax, dots, digits, escapes.
const ALPHABET: &[u8] = b"{}[]\":,.-_=+/\\ 0123456789eEaAzZtrufnl\t\n";

fn mutate(rng: &mut Rng, input: &str) -> String {
    let mut bytes = input.as_bytes().to_vec();
    for _ in 0..=rng.below(3) {
        let pos = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if pos < bytes.len() => bytes[pos] = ALPHABET[rng.below(ALPHABET.len())],
            1 if pos < bytes.len() => {
                bytes.remove(pos);
            }
            2 => bytes.insert(pos, ALPHABET[rng.below(ALPHABET.len())]),
            3 => bytes.truncate(pos),
            4 if pos < bytes.len() => {
                let end = (pos + rng.below(16)).min(bytes.len());
                let chunk = bytes[pos..end].to_vec();
                bytes.splice(pos..pos, chunk);
            }
            _ => {}
        }
    }
    // Every mutation is ASCII, and the inputs are ASCII.
    String::from_utf8(bytes).unwrap_or_default()
}

/// Hostile JSON values to splice into claims and headers.
fn hostile_value(rng: &mut Rng) -> Value {
    let choices = [
        json!(null),
        json!(-1),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(""),
        json!("spiffe://example.org/w"),
        json!("wimse://example.org/w"),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"jwk": {}}),
        json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "alg": "ES256"}}),
        json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA", "alg": "EdDSA"}}),
        json!({"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "RS256"}}),
        json!(["b64"]),
        json!("none"),
        json!("ES512"),
        json!("wit+jwt"),
    ];
    choices[rng.below(choices.len())].clone()
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn mutate_object(rng: &mut Rng, mut map: Map<String, Value>) -> Map<String, Value> {
    let names = [
        "alg", "kid", "typ", "crit", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf", "wth", "ath",
        "tth", "oth",
    ];
    for _ in 0..=rng.below(3) {
        let name = names[rng.below(names.len())];
        if rng.below(4) == 0 {
            map.remove(name);
        } else {
            map.insert(name.to_owned(), hostile_value(rng));
        }
    }
    map
}

/// Three validly signed tokens of one trust domain, and what validates each.
struct Tokens {
    authority: SigningKey,
    workload: SigningKey,
    bundle: TrustDomainBundle,
    jwt: String,
    wit_token: String,
    wit: ValidatedWit,
    wpt: String,
}

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

const WPT_OTHER_TOKENS: &[(&str, &str)] = &[("x-t", "v")];

fn wpt_expectations() -> WptExpectations<'static> {
    WptExpectations {
        access_token: Some("at"),
        other_tokens: WPT_OTHER_TOKENS,
        ..WptExpectations::new(&["svc"])
    }
}

fn wimse_profile() -> WitValidation {
    WitValidation {
        profile: WitProfile::Wimse,
        ..Default::default()
    }
}

fn tokens() -> Tokens {
    let authority = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let workload = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let kid = PublicJwk::for_signing_key(&authority).thumbprint();
    let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
    bundle
        .jwt_authorities
        .insert(kid.clone(), PublicJwk::for_signing_key(&authority));
    bundle
        .wit_authorities
        .insert(kid.clone(), PublicJwk::for_signing_key(&authority));
    let sub = SpiffeId::parse("spiffe://example.org/w").expect("id");
    let aud = vec!["svc".to_owned()];
    let jwt = mint_jwt_svid(
        &authority,
        &kid,
        &JwtSvidClaims {
            spiffe_id: &sub,
            audience: &aud,
            issued_at: at(NOW),
            expires_at: at(NOW + 60),
            jti: None,
            issuer: None,
        },
    )
    .expect("jwt");
    let wit_token = mint_wit_svid(
        &authority,
        &kid,
        &WitSvidClaims {
            spiffe_id: &sub,
            workload_key: &PublicJwk::for_signing_key(&workload),
            issued_at: at(NOW),
            expires_at: at(NOW + 60),
            jti: None,
        },
    )
    .expect("wit");
    let wit = validate_wit(&wit_token, &bundle, at(NOW), &WitValidation::default())
        .expect("wit validates");
    let wpt = mint_wpt(
        &workload,
        &WptClaims {
            wit: &wit_token,
            audience: "svc",
            expires_at: at(NOW + 30),
            access_token: Some("at"),
            txn_token: None,
            other_tokens: WPT_OTHER_TOKENS,
        },
    )
    .expect("wpt");
    Tokens {
        authority,
        workload,
        bundle,
        jwt,
        wit_token,
        wit,
        wpt,
    }
}

impl Tokens {
    /// Asserts that no validator accepts `token` unless it is, byte for byte, the token that
    /// validator was built for.
    fn assert_only_originals_validate(&self, token: &str, how: &str) {
        let jwt = validate_jwt_svid(
            token,
            "svc",
            &self.bundle,
            at(NOW),
            &JwtSvidValidation::default(),
        );
        assert!(
            jwt.is_err() || token == self.jwt,
            "JWT-SVID accepted {how}: {token}"
        );
        for profile in [WitValidation::default(), wimse_profile()] {
            let wit = validate_wit(token, &self.bundle, at(NOW), &profile);
            assert!(
                wit.is_err() || token == self.wit_token,
                "WIT ({:?}) accepted {how}: {token}",
                profile.profile
            );
        }
        let wpt = verify_wpt(token, &self.wit, &wpt_expectations(), at(NOW));
        assert!(
            wpt.is_err() || token == self.wpt,
            "WPT accepted {how}: {token}"
        );
    }
}

#[test]
fn the_originals_validate() {
    // Without this, "only the originals validate" would hold for validators that refuse all.
    let t = tokens();
    validate_jwt_svid(&t.jwt, "svc", &t.bundle, at(NOW), &Default::default()).expect("jwt");
    validate_wit(&t.wit_token, &t.bundle, at(NOW), &wimse_profile()).expect("wit");
    verify_wpt(&t.wpt, &t.wit, &wpt_expectations(), at(NOW)).expect("wpt");
}

/// The base64url alphabet.
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Systematic wire edits of one segment (0 header, 1 payload, 2 signature) of a compact token:
/// every character replaced by its alphabet neighbour, by its other case, by the standard
/// alphabet's `+` and `/`, by padding and by whitespace, or deleted; then the whole-segment edits
/// lenient decoders accept: padding appended, standard alphabet, line breaks, non-canonical
/// trailing bits, emptied, dropped, duplicated.
fn segment_mutations(token: &str, segment: usize) -> Vec<(String, String)> {
    let mut parts: Vec<&str> = token.split('.').collect();
    let original = parts[segment].to_owned();
    let with = |parts: &[&str], replaced: &str| {
        let mut p = parts.to_vec();
        p[segment] = replaced;
        p.join(".")
    };
    let mut out = Vec::new();
    for (pos, c) in original.char_indices() {
        let index = B64URL
            .iter()
            .position(|b| char::from(*b) == c)
            .expect("base64url");
        let neighbour = char::from(B64URL[(index + 1) % B64URL.len()]);
        let other_case = if c.is_ascii_uppercase() {
            c.to_ascii_lowercase()
        } else {
            c.to_ascii_uppercase()
        };
        for replacement in [neighbour, other_case, '+', '/', '=', ' ', '.'] {
            if replacement == c {
                continue;
            }
            let mut edited = original.clone();
            edited.replace_range(pos..=pos, &replacement.to_string());
            out.push((
                with(&parts, &edited),
                format!("{c:?} at {pos} -> {replacement:?}"),
            ));
        }
        let mut deleted = original.clone();
        deleted.remove(pos);
        out.push((with(&parts, &deleted), format!("{c:?} at {pos} deleted")));
    }
    for (edited, how) in [
        (format!("{original}="), "padding '='"),
        (format!("{original}=="), "padding '=='"),
        (
            original.replace('-', "+").replace('_', "/"),
            "standard alphabet",
        ),
        (format!("{original}\n"), "trailing newline"),
        (format!(" {original}"), "leading space"),
        (
            format!(
                "{}\r\n{}",
                &original[..original.len() / 2],
                &original[original.len() / 2..]
            ),
            "CRLF inside",
        ),
        (String::new(), "emptied"),
        (format!("{original}{original}"), "doubled"),
    ] {
        // (A segment without `-` or `_` has no standard-alphabet twin.)
        if edited != original {
            out.push((with(&parts, &edited), how.to_owned()));
        }
    }
    // The unused low bits of the last character (2 or 4 of its 6 bits when the segment's length
    // is not a multiple of 4): every other value of them decodes to the same bytes in a lenient
    // decoder.
    let unused_bits = match original.len() % 4 {
        2 => 4,
        3 => 2,
        _ => 0,
    };
    let last = original.len() - 1;
    let value = B64URL
        .iter()
        .position(|b| *b == original.as_bytes()[last])
        .expect("base64url");
    for low in 1..(1usize << unused_bits) {
        let mut edited = original.clone();
        let replacement = char::from(B64URL[value ^ low]);
        edited.replace_range(last.., &replacement.to_string());
        out.push((with(&parts, &edited), format!("trailing bits ^{low}")));
    }
    let dropped = {
        let mut p = parts.clone();
        p.remove(segment);
        p.join(".")
    };
    out.push((dropped, "segment dropped".to_owned()));
    parts.insert(segment, &original);
    out.push((parts.join("."), "segment repeated".to_owned()));
    out.into_iter()
        .map(|(token, how)| (token, format!("segment {segment}: {how}")))
        .collect()
}

#[test]
fn wire_mutations_of_every_segment_never_validate() {
    let t = tokens();
    let mut tried = 0;
    for token in [&t.jwt, &t.wit_token, &t.wpt] {
        for segment in 0..3 {
            for (mutated, how) in segment_mutations(token, segment) {
                assert_ne!(&mutated, token, "a mutation changes the token ({how})");
                t.assert_only_originals_validate(&mutated, &how);
                tried += 1;
            }
        }
        // Whole-token edits: header and payload swapped, a trailing dot, a fourth segment.
        let parts: Vec<&str> = token.split('.').collect();
        for (mutated, how) in [
            (
                format!("{}.{}.{}", parts[1], parts[0], parts[2]),
                "header and payload swapped",
            ),
            (format!("{token}."), "trailing dot"),
            (format!("{token}.{}", parts[2]), "fourth segment"),
        ] {
            t.assert_only_originals_validate(&mutated, how);
        }
    }
    // Per token, every character of every segment gets several edits.
    assert!(tried > 3 * 5 * (t.jwt.len() - 2), "{tried} mutations");
}

#[test]
fn token_parsers_and_validators_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t = tokens();
    let (authority, workload, bundle) = (&t.authority, &t.workload, &t.bundle);
    let (jwt, wit_token, wit, wpt) = (&t.jwt, &t.wit_token, &t.wit, &t.wpt);
    let jwt_options = JwtSvidValidation::default();
    let wimse = wimse_profile();
    let wpt_expect = wpt_expectations();

    for _ in 0..ROUNDS {
        // Wire-level mutations: they may leave the token as it was (a deleted byte reinserted),
        // and only then may it validate.
        for token in [jwt, wit_token, wpt] {
            let mutated = mutate(&mut rng, token);
            t.assert_only_originals_validate(&mutated, "after a random wire mutation");
            // Parsing checks no signature (it may succeed) and minting a WPT takes any WIT string:
            // both need only return.
            let _ = CompactJws::parse(&mutated);
            let _ = mint_wpt(
                workload,
                &WptClaims {
                    wit: &mutated,
                    audience: "svc",
                    expires_at: at(NOW + 30),
                    access_token: None,
                    txn_token: None,
                    other_tokens: &[],
                },
            );
        }
        // Validly signed tokens with hostile headers and claims.
        for (token, signer) in [(jwt, authority), (wit_token, authority), (wpt, workload)] {
            let jws = CompactJws::parse(token).expect("parse");
            let header = mutate_object(&mut rng, jws.header().clone());
            let claims = mutate_object(&mut rng, jws.claims().clone());
            let Ok(resigned) = encode_compact(&header, &claims, |i| Ok(signer.sign_fixed(i)?))
            else {
                continue;
            };
            let _ = validate_jwt_svid(&resigned, "svc", bundle, at(NOW), &jwt_options);
            let _ = validate_jwt_svid(
                &resigned,
                "svc",
                bundle,
                at(NOW),
                &JwtSvidValidation {
                    require_kid: false,
                    ..Default::default()
                },
            );
            let _ = validate_wit(&resigned, bundle, at(NOW), &WitValidation::default());
            let _ = validate_wit(&resigned, bundle, at(NOW), &wimse);
            let _ = verify_wpt(&resigned, wit, &wpt_expect, at(NOW));
        }
        // JSON text mutated behind valid base64url.
        let claims_text = mutate(
            &mut rng,
            &Value::Object(obj(
                json!({"sub": "spiffe://example.org/w", "exp": NOW + 9, "aud": ["svc"]}),
            ))
            .to_string(),
        );
        let token = format!(
            "{}.{}.AA",
            b64url_encode(br#"{"alg":"ES256","kid":"k"}"#),
            b64url_encode(claims_text.as_bytes())
        );
        let _ = validate_jwt_svid(&token, "svc", bundle, at(NOW), &jwt_options);
        let _ = signing_key_from_private_jwk(&claims_text);
        let _ = PublicJwk::from_json(&claims_text);
    }
}

#[test]
fn bundle_parsers_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut bundle = TrustDomainBundle::new(TrustDomain::new("example.org").expect("td"));
    bundle
        .x509_authorities
        .push(crate::bundle::tests::CA_EC_DER.to_vec());
    bundle
        .x509_authorities
        .push(crate::bundle::tests::CA_RSA_DER.to_vec());
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
    bundle
        .jwt_authorities
        .insert("j".into(), PublicJwk::for_signing_key(&key));
    bundle
        .wit_authorities
        .insert("w".into(), PublicJwk::for_signing_key(&key));
    bundle.sequence_number = Some(1);
    let jwks = bundle.to_spiffe_jwks().expect("jwks");
    let jwt_form = bundle.to_jwt_bundle_json().expect("jwt form");
    let map = crate::bundle::bundle_map_json([&bundle]).expect("map");
    let pem = bundle.x509_authorities_pem();
    let der = bundle.x509_authorities_der();
    let td = TrustDomain::new("example.org").expect("td");
    for _ in 0..ROUNDS {
        let m = mutate(&mut rng, &jwks);
        let _ = TrustDomainBundle::from_spiffe_jwks(td.clone(), m.as_bytes());
        let m = mutate(&mut rng, &jwt_form);
        let _ = TrustDomainBundle::from_jwt_bundle_json(td.clone(), m.as_bytes());
        let _ = TrustDomainBundle::from_wit_bundle_json(td.clone(), m.as_bytes());
        let _ = parse_bundle_map(mutate(&mut rng, &map).as_bytes());
        let _ = parse_x509_authorities_pem(&mutate(&mut rng, &pem));
        let mut d = der.clone();
        let pos = rng.below(d.len());
        match rng.below(3) {
            0 => d[pos] ^= 1 << rng.below(8),
            1 => d.truncate(pos),
            _ => d.insert(pos, rng.next() as u8),
        }
        let _ = parse_x509_authorities_der(&d);
    }
}
