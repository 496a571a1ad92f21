//! OIDC discovery checked by a relying party that is not our code: `oidc-verify`
//! (kind-tests/clients/oidc-verify, go-oidc) gets nothing but the issuer URL, discovers the JWKS
//! through `/.well-known/openid-configuration` served by our bundle endpoint (https_web, a private
//! CA for `localhost`), and verifies a JWT-SVID our authority minted with that issuer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use wimsey_core::SpiffeId;
use wimsey_core::entries::{Entry, Selector};
use wimsey_core::issuance::TtlPolicy;
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::oidc::IssuerUrl;
use wimsey_core::x509::SvidRequest;
use wimsey_operator::authority::issuer::{Issuer, IssuerLifetimes};
use wimsey_operator::federation::endpoint::{self, EndpointLimits};
use wimsey_operator::federation::oidc;
use wimsey_operator::federation::web_pki::{WebServingCert, certified_key};

#[path = "support/domain.rs"]
mod domain;

use domain::{Domain, HOUR};

fn oidc_verify() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("OIDC_VERIFY") {
            return PathBuf::from(bin);
        }
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("oidc-verify");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kind-tests/clients/oidc-verify");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .status()
            .expect("run go build (Go is required for the interop tests)");
        assert!(status.success(), "building oidc-verify failed");
        out
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap()
}

fn workload(id: &SpiffeId) -> Entry {
    Entry {
        spiffe_id: id.clone(),
        parent_id: SpiffeId::parse("spiffe://wimsey.test/spire/agent/wimsey/c/n").unwrap(),
        selectors: vec![Selector::new("k8s", "ns:default")],
        x509_svid_ttl: HOUR,
        jwt_svid_ttl: Duration::from_secs(300),
        federates_with: Vec::new(),
        admin: false,
        downstream: false,
        dns_names: Vec::new(),
        hint: String::new(),
        store_svid: false,
    }
}

fn issuer_with(domain: &Domain, url: Option<IssuerUrl>) -> Issuer {
    Issuer::new(
        domain.current(),
        IssuerLifetimes {
            workload: TtlPolicy {
                default_x509_svid_ttl: HOUR,
                default_jwt_svid_ttl: Duration::from_secs(300),
                max_x509_svid_ttl: HOUR,
                max_jwt_svid_ttl: HOUR,
            },
            node_svid_ttl: HOUR,
            serving_svid_ttl: HOUR,
        },
        url,
    )
}

/// Runs oidc-verify; (exit success, stdout + stderr).
fn verify(issuer: &str, audience: &str, token: &str, ca: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let out = Command::new(oidc_verify())
        .args(["-issuer", issuer, "-audience", audience, "-token-file"])
        .arg(&token_file)
        .arg("-ca")
        .arg(ca)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_oidc_client_verifies_a_jwt_svid_from_the_issuer_url_alone() {
    let ours = Domain::new("wimsey.test");
    // A Web PKI certificate for localhost from a private CA (as cert-manager would write it).
    let web_ca = Domain::new("ca.test");
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let cert = web_ca
        .current()
        .ca
        .issue_for_public_key(
            &key.public_key_spki_der(),
            &SvidRequest {
                spiffe_id: &SpiffeId::parse("spiffe://ca.test/oidc").unwrap(),
                dns_names: &["localhost".to_owned()],
                ttl: HOUR,
            },
            SystemTime::now(),
        )
        .unwrap();
    let chain: String = cert
        .chain
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_bytes()))
        .collect();
    let serving = Arc::new(WebServingCert::default());
    serving.replace(
        certified_key(
            chain.as_bytes(),
            pem("PRIVATE KEY", &key.pkcs8_der()).as_bytes(),
            "test",
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let roots: String = web_ca
        .authorities()
        .iter()
        .map(|c| pem("CERTIFICATE", c))
        .collect();
    std::fs::write(&ca_file, roots).unwrap();

    let listener = endpoint::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let issuer_url = IssuerUrl::parse(&format!("https://localhost:{port}/clusters/blue")).unwrap();
    let routes = endpoint::router(
        ours.material.subscribe(),
        Some(oidc::routes(ours.material.subscribe(), issuer_url.clone())),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(endpoint::serve(
        listener,
        serving,
        routes,
        EndpointLimits::default(),
        shutdown.clone(),
    ));

    let id = SpiffeId::parse("spiffe://wimsey.test/ns/default/sa/billing").unwrap();
    let mint = |issuer: Option<IssuerUrl>| {
        issuer_with(&ours, issuer)
            .jwt_svid(
                &workload(&id),
                &["sts.example".to_owned()],
                SystemTime::now(),
            )
            .unwrap()
            .token
    };
    let check = |audience: &'static str, token: String| {
        let (issuer, ca) = (issuer_url.as_str().to_owned(), ca_file.clone());
        tokio::task::spawn_blocking(move || verify(&issuer, audience, &token, &ca))
    };

    let (ok, out) = check("sts.example", mint(Some(issuer_url.clone())))
        .await
        .unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains(id.as_str()),
        "oidc-verify prints the verified sub: {out}"
    );
    println!("oidc-verify (go-oidc): {}", out.trim());

    // Another audience, and a token without `iss`: refused.
    let (ok, out) = check("other", mint(Some(issuer_url.clone())))
        .await
        .unwrap();
    assert!(!ok, "wrong audience accepted: {out}");
    let (ok, out) = check("sts.example", mint(None)).await.unwrap();
    assert!(!ok, "a token without iss accepted: {out}");
    shutdown.cancel();
}
