//! The upstream CA path with certificates made by the openssl CLI, the way a user's PKI (or
//! cert-manager) makes them: a root, an intermediate it issues, the intermediate's key in SEC1 or
//! PKCS#8. SVIDs issued under the intermediate carry it in their chain, validate against the
//! user's root alone (in wimsey's verifier and in `openssl verify`), and every unusable Secret
//! is refused with its own error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::pem::{decode_certificates, encode_certificates};
use wimsey_core::x509::upstream::{
    MAX_FIELD_BYTES, UpstreamCaError, UpstreamFiles, load_upstream_ca,
};
use wimsey_core::x509::{SvidRequest, verify_svid};
use wimsey_core::{SpiffeId, TrustDomain};

const TWELVE_HOURS: Duration = Duration::from_secs(12 * 3600);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch PKI: `root.crt`/`root.key` and helpers to issue intermediates under it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        pki.self_signed("root", "prime256v1", 3650);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read")
    }

    fn self_signed(&self, name: &str, curve: &str, days: u32) {
        let dir = self.dir.path();
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                curve,
                "-genkey",
                "-noout",
                "-out",
                &format!("{name}.key"),
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                &days.to_string(),
                "-subj",
                &format!("/O=Example/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    /// `name.crt` issued by `issuer` for a fresh key made by `genkey` (openssl arguments),
    /// with `extensions` (an openssl extension section body).
    fn issue(&self, name: &str, issuer: &str, genkey: &[&str], extensions: &str) {
        let dir = self.dir.path();
        let key = format!("{name}.key");
        let mut args: Vec<&str> = genkey.to_vec();
        args.extend(["-out", &key]);
        openssl(dir, &args);
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!("[ext]\n{extensions}\n"),
        )
        .expect("write extensions");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/O=Example/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{issuer}.crt"),
                "-CAkey",
                &format!("{issuer}.key"),
                "-set_serial",
                "7",
                "-days",
                "90",
                "-extfile",
                &format!("{name}.ext"),
                "-extensions",
                "ext",
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    fn intermediate(&self, name: &str, san: &str) {
        self.issue(
            name,
            "root",
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            &format!(
                "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectAltName=URI:{san}"
            ),
        );
    }
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").expect("td")
}

fn load(
    tls_crt: &[u8],
    tls_key: &[u8],
    ca_crt: &[u8],
) -> Result<wimsey_core::x509::upstream::UpstreamCa, UpstreamCaError> {
    let files = UpstreamFiles {
        tls_crt: Some(tls_crt),
        tls_key: Some(tls_key),
        ca_crt: Some(ca_crt),
    };
    load_upstream_ca(files, &td(), TWELVE_HOURS, SystemTime::now())
}

#[test]
fn svids_under_an_openssl_intermediate_chain_to_the_users_root() {
    let pki = Pki::new();
    pki.intermediate("int", "spiffe://example.org");
    // openssl's ecparam writes SEC1 ("EC PRIVATE KEY"), as cert-manager does by default.
    assert!(String::from_utf8_lossy(&pki.read("int.key")).contains("BEGIN EC PRIVATE KEY"));
    let upstream = load(
        &pki.read("int.crt"),
        &pki.read("int.key"),
        &pki.read("root.crt"),
    )
    .expect("a usable upstream CA");
    let root = decode_certificates(&String::from_utf8_lossy(&pki.read("root.crt"))).expect("root");
    assert_eq!(
        upstream.roots(),
        root.as_slice(),
        "the bundle is the user's root"
    );
    assert_eq!(upstream.anchor(), &root[0]);

    let now = SystemTime::now();
    let authority = upstream.authority(&td(), now).expect("authority");
    let workload = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").expect("id");
    let svid = authority
        .issue_for_public_key(
            &workload.public_key_spki_der(),
            &SvidRequest {
                spiffe_id: &id,
                dns_names: &[],
                ttl: Duration::from_secs(3600),
            },
            now,
        )
        .expect("issue");
    let intermediate =
        decode_certificates(&String::from_utf8_lossy(&pki.read("int.crt"))).expect("int");
    assert_eq!(svid.chain.len(), 2, "leaf and the intermediate, no root");
    assert_eq!(svid.chain[1], intermediate[0]);

    let roots: Vec<Vec<u8>> = root.iter().map(|c| c.as_bytes().to_vec()).collect();
    let verified = verify_svid(
        &svid.chain,
        |t| (t == &td()).then_some(roots.as_slice()),
        now,
    )
    .expect("valid against the user's root alone");
    assert_eq!(verified.spiffe_id, id);

    // openssl agrees: leaf + untrusted intermediate, trusting only the root.
    std::fs::write(
        pki.path("leaf.pem"),
        encode_certificates(&svid.chain[..1]).expect("pem"),
    )
    .expect("write");
    openssl(
        pki.dir.path(),
        &[
            "verify",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "int.crt",
            "leaf.pem",
        ],
    );
}

#[test]
fn a_pkcs8_key_and_a_chain_in_tls_crt_are_read_too() {
    let pki = Pki::new();
    pki.intermediate("int", "spiffe://example.org");
    openssl(
        pki.dir.path(),
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "int.key", "-out", "int.p8",
        ],
    );
    assert!(String::from_utf8_lossy(&pki.read("int.p8")).contains("BEGIN PRIVATE KEY"));
    let mut chain_with_root = pki.read("int.crt");
    chain_with_root.extend(pki.read("root.crt"));
    let upstream =
        load(&chain_with_root, &pki.read("int.p8"), &pki.read("root.crt")).expect("usable");
    assert_eq!(upstream.roots().len(), 1, "the root is not published twice");
}

#[test]
fn unusable_secrets_are_refused_with_what_is_wrong() {
    let pki = Pki::new();
    pki.intermediate("int", "spiffe://example.org");
    let (crt, key, root) = (
        pki.read("int.crt"),
        pki.read("int.key"),
        pki.read("root.crt"),
    );

    // Not a CA.
    pki.issue(
        "leafish",
        "root",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature",
    );
    let error = load(&pki.read("leafish.crt"), &pki.read("leafish.key"), &root).unwrap_err();
    assert!(matches!(error, UpstreamCaError::NotCa(_)), "{error}");

    // Another trust domain.
    pki.intermediate("other", "spiffe://other.example");
    let error = load(&pki.read("other.crt"), &pki.read("other.key"), &root).unwrap_err();
    assert!(
        matches!(error, UpstreamCaError::OtherTrustDomain(_)),
        "{error}"
    );
    assert!(
        error.to_string().contains("spiffe://other.example"),
        "{error}"
    );

    // The wrong key type.
    pki.issue(
        "rsa",
        "root",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign",
    );
    let error = load(&pki.read("rsa.crt"), &pki.read("rsa.key"), &root).unwrap_err();
    assert_eq!(error, UpstreamCaError::UnsupportedKey("RSA".to_owned()));

    // Another CA's key.
    let error = load(&crt, &pki.read("other.key"), &root).unwrap_err();
    assert_eq!(error, UpstreamCaError::KeyMismatch);

    // A root that did not issue it.
    pki.self_signed("stranger", "prime256v1", 30);
    let error = load(&crt, &key, &pki.read("stranger.crt")).unwrap_err();
    assert!(matches!(error, UpstreamCaError::NotChained(_)), "{error}");

    // Expired, and too close to its end for the longest SVID it would sign.
    let files = UpstreamFiles {
        tls_crt: Some(&crt),
        tls_key: Some(&key),
        ca_crt: Some(&root),
    };
    let later = SystemTime::now() + Duration::from_secs(91 * 86400);
    let error = load_upstream_ca(files, &td(), TWELVE_HOURS, later).unwrap_err();
    assert!(matches!(error, UpstreamCaError::Expired(_)), "{error}");
    let almost = SystemTime::now() + Duration::from_secs(90 * 86400 - 3600);
    let error = load_upstream_ca(files, &td(), TWELVE_HOURS, almost).unwrap_err();
    assert!(
        matches!(error, UpstreamCaError::EndsTooSoon { .. }),
        "{error}"
    );

    // Missing, oversized and garbled values.
    let missing = UpstreamFiles {
        ca_crt: None,
        ..files
    };
    let error = load_upstream_ca(missing, &td(), TWELVE_HOURS, SystemTime::now()).unwrap_err();
    assert_eq!(error, UpstreamCaError::Missing("ca.crt"));
    let huge = vec![b'A'; MAX_FIELD_BYTES + 1];
    let error = load(&huge, &key, &root).unwrap_err();
    assert!(
        matches!(
            error,
            UpstreamCaError::TooLarge {
                field: "tls.crt",
                ..
            }
        ),
        "{error}"
    );
    let error = load(&crt, b"not a key", &root).unwrap_err();
    assert!(
        matches!(
            error,
            UpstreamCaError::Unreadable {
                field: "tls.key",
                ..
            }
        ),
        "{error}"
    );
    let error = load(&crt, &key, &[0xff, 0xfe]).unwrap_err();
    assert!(
        matches!(
            error,
            UpstreamCaError::Unreadable {
                field: "ca.crt",
                ..
            }
        ),
        "{error}"
    );
}
