//! Interop: SVIDs and bundles made by wimsey-core, checked by real SPIFFE libraries.
//!
//! - go-spiffe (the reference Go library), through our small checker program in
//!   kind-tests/clients/gospiffe-check: `x509svid.Load` + `x509svid.Verify`, `jwtsvid.ParseAndValidate`,
//!   `spiffebundle.Load`. `make test` builds it and sets `GOSPIFFE_CHECK`; run alone, the test builds
//!   it with `go build`.
//! - the `spiffe` crate: `X509Svid::parse_from_der` and `JwtSvid::parse_and_validate`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::jwk::PublicJwk;
use wimsey_core::jose::jwt_svid::{JwtSvidClaims, mint_jwt_svid};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::{
    Authority, CaParams, CertDer, IssuedSvid, SvidRequest, build_csr, concat_der, pem,
};
use wimsey_core::{SpiffeId, TrustDomain};

fn gospiffe_check() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("GOSPIFFE_CHECK") {
            return PathBuf::from(bin);
        }
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gospiffe-check");
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../kind-tests/clients/gospiffe-check");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .env("GOFLAGS", "-mod=mod")
            .status()
            .expect("run go build (Go is required for the interop tests)");
        assert!(status.success(), "building gospiffe-check failed");
        out
    })
}

/// Runs the checker; returns (success, combined output).
fn check(args: &[&str]) -> (bool, String) {
    let out = Command::new(gospiffe_check())
        .args(args)
        .output()
        .expect("run gospiffe-check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// go-spiffe's verdict on an X.509-SVID (PEM chain and key files) against a PEM bundle file.
fn check_x509(svid: &str, key: &str, bundle: &str) -> (bool, String) {
    check(&[
        "x509", "-td", TD, "-svid", svid, "-key", key, "-bundle", bundle,
    ])
}

/// go-spiffe's verdict on a JWT-SVID file against a JWT bundle file, for `audience`.
fn check_jwt(token: &str, bundle: &str, audience: &str) -> (bool, String) {
    check(&[
        "jwt",
        "-td",
        TD,
        "-token",
        token,
        "-bundle",
        bundle,
        "-audience",
        audience,
    ])
}

const TD: &str = "interop.example.org";

struct Fixture {
    dir: PathBuf,
    td: TrustDomain,
    id: SpiffeId,
    now: SystemTime,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("interop-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        Self {
            dir,
            td: TrustDomain::new("interop.example.org").expect("td"),
            id: SpiffeId::parse("spiffe://interop.example.org/ns/default/sa/web").expect("id"),
            now: SystemTime::now(),
        }
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path.to_str().expect("utf-8 path").to_owned()
    }

    fn root(&self) -> Authority {
        Authority::generate_root(
            &self.td,
            KeyAlgorithm::EcdsaP256,
            &CaParams::new("wimsey interop", Duration::from_secs(86400)),
            self.now,
        )
        .expect("root CA")
    }

    /// Issues an SVID the way the node plugin will get one: key and CSR made on the "node".
    fn issue(&self, ca: &Authority) -> (IssuedSvid, SigningKey) {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let dns = vec!["web.default.svc".to_owned()];
        let csr = build_csr(&key, &self.id, &dns).expect("csr");
        let request = SvidRequest {
            spiffe_id: &self.id,
            dns_names: &dns,
            ttl: Duration::from_secs(600),
        };
        (
            ca.issue_from_csr(&csr, &request, self.now).expect("issue"),
            key,
        )
    }

    fn write_x509(&self, svid: &IssuedSvid, key: &SigningKey, roots: &[CertDer]) -> [String; 3] {
        [
            self.write(
                "svid.pem",
                pem::encode_certificates(&svid.chain).expect("pem"),
            ),
            self.write(
                "key.pem",
                pem::encode_private_key(&key.pkcs8_der())
                    .expect("pem")
                    .as_bytes(),
            ),
            self.write("bundle.pem", pem::encode_certificates(roots).expect("pem")),
        ]
    }
}

#[test]
fn go_spiffe_accepts_x509_svid_from_self_signed_root() {
    let f = Fixture::new("x509-root");
    let ca = f.root();
    let (svid, key) = f.issue(&ca);
    let [s, k, b] = f.write_x509(&svid, &key, ca.trust_bundle_roots());
    let (ok, out) = check_x509(&s, &k, &b);
    assert!(ok, "go-spiffe rejected our SVID: {out}");
    assert!(
        out.contains("ok x509 spiffe://interop.example.org/ns/default/sa/web"),
        "{out}"
    );
}

#[test]
fn go_spiffe_accepts_x509_svid_from_intermediate() {
    let f = Fixture::new("x509-intermediate");
    let root = f.root();
    let inter_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let chain = root
        .issue_intermediate(
            &inter_key.public_key_spki_der(),
            &CaParams::new("wimsey intermediate", Duration::from_secs(3600)),
            f.now,
        )
        .expect("intermediate");
    let inter = Authority::from_chain(inter_key, chain, &f.td, f.now).expect("load intermediate");
    let (svid, key) = f.issue(&inter);
    assert_eq!(svid.chain.len(), 2, "leaf + intermediate on the wire");
    let [s, k, b] = f.write_x509(&svid, &key, root.trust_bundle_roots());
    let (ok, out) = check_x509(&s, &k, &b);
    assert!(ok, "go-spiffe rejected our intermediate-signed SVID: {out}");
}

#[test]
fn go_spiffe_rejects_x509_svid_from_another_ca_or_with_the_wrong_key() {
    let f = Fixture::new("x509-neg");
    let (svid, key) = f.issue(&f.root());
    let stranger = f.root();
    let [s, k, b] = f.write_x509(&svid, &key, stranger.trust_bundle_roots());
    let (ok, out) = check_x509(&s, &k, &b);
    assert!(
        !ok && out.contains("verify"),
        "an SVID from another CA must not verify: {out}"
    );
    let other_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let k2 = f.write(
        "other-key.pem",
        pem::encode_private_key(&other_key.pkcs8_der())
            .expect("pem")
            .as_bytes(),
    );
    let (ok, out) = check_x509(&s, &k2, &b);
    assert!(
        !ok && out.contains("does not match"),
        "a key mismatch must be caught: {out}"
    );
}

fn jwt_fixture(f: &Fixture, audience: &str, issued_at: SystemTime) -> (String, TrustDomainBundle) {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let jwk = PublicJwk::for_signing_key(&key);
    let kid = jwk.thumbprint();
    let mut bundle = TrustDomainBundle::new(f.td.clone());
    bundle.jwt_authorities.insert(kid.clone(), jwk);
    let audience = vec![audience.to_owned()];
    let claims = JwtSvidClaims {
        spiffe_id: &f.id,
        audience: &audience,
        issued_at,
        expires_at: issued_at + Duration::from_secs(300),
        jti: None,
        issuer: None,
    };
    (mint_jwt_svid(&key, &kid, &claims).expect("mint"), bundle)
}

#[test]
fn go_spiffe_accepts_jwt_svid_and_enforces_audience_and_expiry() {
    let f = Fixture::new("jwt");
    let (token, bundle) = jwt_fixture(&f, "spire-test", f.now);
    let t = f.write("token.jwt", &token);
    let b = f.write("jwks.json", bundle.to_jwt_bundle_json().expect("jwks"));
    let (ok, out) = check_jwt(&t, &b, "spire-test");
    assert!(ok, "go-spiffe rejected our JWT-SVID: {out}");
    assert!(
        out.contains("ok jwt spiffe://interop.example.org/ns/default/sa/web"),
        "{out}"
    );
    let (ok, out) = check_jwt(&t, &b, "other");
    assert!(
        !ok && out.contains("audience"),
        "wrong audience must be refused: {out}"
    );
    let (expired, bundle2) = jwt_fixture(&f, "spire-test", f.now - Duration::from_secs(3600));
    let t2 = f.write("expired.jwt", &expired);
    let b2 = f.write("jwks2.json", bundle2.to_jwt_bundle_json().expect("jwks"));
    let (ok, out) = check_jwt(&t2, &b2, "spire-test");
    assert!(
        !ok && out.contains("expired"),
        "expired token must be refused: {out}"
    );
}

#[test]
fn go_spiffe_parses_our_spiffe_bundle_document() {
    let f = Fixture::new("bundle");
    let ca = f.root();
    let (_, mut bundle) = jwt_fixture(&f, "x", f.now);
    bundle.x509_authorities = ca
        .trust_bundle_roots()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    bundle.sequence_number = Some(7);
    bundle.refresh_hint_seconds = Some(300);
    let b = f.write("bundle.json", bundle.to_spiffe_jwks().expect("jwks"));
    let (ok, out) = check(&["spiffe-bundle", "-td", "interop.example.org", "-bundle", &b]);
    assert!(ok, "go-spiffe rejected our SPIFFE bundle: {out}");
    assert!(
        out.contains("x509=1 jwt=1 sequence=7 refresh_hint=5m0s"),
        "{out}"
    );
}

#[test]
fn spiffe_crate_accepts_x509_svid_and_jwt_svid() {
    let f = Fixture::new("spiffe-crate");
    let ca = f.root();
    let (svid, key) = f.issue(&ca);
    let parsed = spiffe::X509Svid::parse_from_der(&concat_der(&svid.chain), &key.pkcs8_der())
        .expect("spiffe crate parses our SVID");
    assert_eq!(parsed.spiffe_id().to_string(), f.id.as_str());

    let (token, bundle) = jwt_fixture(&f, "spire-test", f.now);
    let td = spiffe::TrustDomain::new("interop.example.org").expect("td");
    let jwt_bundle = spiffe::JwtBundle::from_jwt_authorities(
        td,
        bundle.to_jwt_bundle_json().expect("jwks").as_bytes(),
    )
    .expect("spiffe crate parses our JWT bundle");
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(jwt_bundle);
    let validated = spiffe::JwtSvid::parse_and_validate(&token, &set, &["spire-test"])
        .expect("spiffe crate validates our JWT-SVID");
    assert_eq!(validated.spiffe_id().to_string(), f.id.as_str());
    match spiffe::JwtSvid::parse_and_validate(&token, &set, &["nope"]) {
        Err(spiffe::JwtSvidError::InvalidToken(e)) => {
            assert_eq!(
                e.kind(),
                spiffe::JwtVerificationErrorKind::AudienceMismatch,
                "{e}"
            )
        }
        other => panic!("wrong audience must be refused as a mismatch, got {other:?}"),
    }
}
