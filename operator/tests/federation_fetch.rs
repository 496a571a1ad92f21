//! The bundle endpoint and the fetcher against each other over real TLS on loopback: what
//! https_spiffe accepts and refuses (wrong ID, another trust domain, expired), https_web with a
//! private root, redirects, size caps and malformed bundles, GET only, and rotation followed at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wimsey_core::SpiffeId;
use wimsey_core::bundle::BundleError;
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::reserved::bundle_endpoint_id;
use wimsey_operator::authority::serving::ServingCert;
use wimsey_operator::federation::endpoint;
use wimsey_operator::federation::fetch::{EndpointAuth, FetchError, FetchLimits, fetch_bundle};
use wimsey_operator::federation::web_pki::{WebServingCert, certified_key, web_roots};

#[path = "support/domain.rs"]
mod domain;

use domain::*;

#[tokio::test]
async fn https_spiffe_serves_our_bundle_and_follows_rotation_at_once() {
    let mut ours = Domain::new("wimsey.test");
    let (url, _stop) = bundle_endpoint(&ours).await;
    let fetched = fetch_bundle(&url, &ours.td, &spiffe_auth(&ours), FetchLimits::default())
        .await
        .unwrap();
    assert_same_bundle(&fetched, &ours.current().bundle);
    assert!(fetched.sequence_number.is_some() && fetched.refresh_hint_seconds.is_some());

    let before = fetched.sequence_number.unwrap();
    ours.rotate_later(14 * HOUR);
    let after = fetch_bundle(&url, &ours.td, &spiffe_auth(&ours), FetchLimits::default())
        .await
        .unwrap();
    assert!(after.sequence_number.unwrap() > before, "{after:?}");
    assert_eq!(
        after.x509_authorities,
        ours.current().bundle.x509_authorities
    );
    assert_eq!(after.x509_authorities.len(), 2, "the new CA is published");
}

#[tokio::test]
async fn https_spiffe_refuses_the_wrong_id_another_trust_domain_and_an_expired_svid() {
    let ours = Domain::new("wimsey.test");
    let other = Domain::new("other.test");
    let (url, _stop) = bundle_endpoint(&ours).await;
    let limits = FetchLimits::default();

    let wrong_id = EndpointAuth::Spiffe {
        id: SpiffeId::parse("spiffe://wimsey.test/spire/server").unwrap(),
        authorities: ours.authorities(),
    };
    let error = fetch_bundle(&url, &ours.td, &wrong_id, limits)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Tls { .. }), "{error}");
    assert_eq!(error.reason(), "TLSVerifyFailed");
    assert!(
        error
            .to_string()
            .contains("expected spiffe://wimsey.test/spire/server"),
        "{error}"
    );

    // The right ID, but checked against another trust domain's CA.
    let other_roots = EndpointAuth::Spiffe {
        id: bundle_endpoint_id(&ours.td).unwrap(),
        authorities: other.authorities(),
    };
    let error = fetch_bundle(&url, &ours.td, &other_roots, limits)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Tls { .. }), "{error}");

    // A server presenting an SVID of another trust domain for the expected path.
    let (other_url, _other_stop) = bundle_endpoint(&other).await;
    let error = fetch_bundle(&other_url, &ours.td, &spiffe_auth(&ours), limits)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Tls { .. }), "{error}");

    // An expired serving SVID (from a CA made three hours ago, valid for an hour two hours ago).
    let old = Domain::created_at("wimsey.test", SystemTime::now() - 3 * HOUR);
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let long_ago = SystemTime::now() - 2 * HOUR;
    let svid = old
        .issuer()
        .serving_svid(
            &bundle_endpoint_id(&ours.td).unwrap(),
            &key.public_key_spki_der(),
            long_ago,
        )
        .unwrap();
    let expired = FixedCert(Arc::new(CertifiedKey::new(
        svid.chain
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect(),
        rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.pkcs8_der().to_vec(),
            )))
            .unwrap(),
    )));
    let (addr, _stop_expired) = serve(
        Arc::new(expired),
        endpoint::router(ours.material.subscribe(), None),
    )
    .await;
    let expired_url = url::Url::parse(&format!("https://{addr}/")).unwrap();
    let error = fetch_bundle(&expired_url, &ours.td, &spiffe_auth(&old), limits)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Tls { .. }), "{error}");
    assert!(
        error.to_string().to_lowercase().contains("expired") || error.to_string().contains("valid"),
        "{error}"
    );
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A Web PKI certificate for `localhost` and 127.0.0.1 from a private CA (`ca`'s), as PEM.
fn web_cert(ca: &Domain) -> (String, String, String) {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let svid = ca.current().ca.issue_for_public_key(
        &key.public_key_spki_der(),
        &wimsey_core::x509::SvidRequest {
            spiffe_id: &SpiffeId::parse("spiffe://ca.test/web").unwrap(),
            dns_names: &["localhost".to_owned()],
            ttl: HOUR,
        },
        SystemTime::now(),
    );
    let svid = svid.unwrap();
    let pem = |label: &str, der: &[u8]| {
        pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap()
    };
    let chain: String = svid
        .chain
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_bytes()))
        .collect();
    let roots: String = ca
        .authorities()
        .iter()
        .map(|c| pem("CERTIFICATE", c))
        .collect();
    (chain, pem("PRIVATE KEY", &key.pkcs8_der()), roots)
}

#[tokio::test]
async fn https_web_verifies_the_host_name_against_the_configured_roots() {
    let ours = Domain::new("wimsey.test");
    let private_ca = Domain::new("ca.test");
    let (chain, key, roots) = web_cert(&private_ca);
    let cert = Arc::new(WebServingCert::default());
    cert.replace(certified_key(chain.as_bytes(), key.as_bytes(), "test").unwrap());
    let (addr, _stop) = serve(cert, endpoint::router(ours.material.subscribe(), None)).await;
    let url = url::Url::parse(&format!("https://localhost:{}/", addr.port())).unwrap();

    let trusted = EndpointAuth::Web(Arc::new(web_roots(Some(roots.as_bytes())).unwrap()));
    let fetched = fetch_bundle(&url, &ours.td, &trusted, FetchLimits::default())
        .await
        .unwrap();
    assert_same_bundle(&fetched, &ours.current().bundle);

    // Without the private root (Mozilla's and the system's only): refused.
    let public_only = EndpointAuth::Web(Arc::new(web_roots(None).unwrap()));
    let error = fetch_bundle(&url, &ours.td, &public_only, FetchLimits::default())
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "TLSVerifyFailed", "{error}");

    // The name in the URL must be in the certificate.
    let by_ip = url::Url::parse(&format!("https://127.0.0.1:{}/", addr.port())).unwrap();
    let error = fetch_bundle(&by_ip, &ours.td, &trusted, FetchLimits::default())
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "TLSVerifyFailed", "{error}");
}

#[tokio::test]
async fn redirects_size_caps_malformed_bundles_and_http_errors() {
    let ours = Domain::new("wimsey.test");
    let bundle_json = ours.current().bundle.to_spiffe_jwks().unwrap();
    let big = format!(
        "{{\"keys\":[],\"padding\":\"{}\"}}",
        "x".repeat(FetchLimits::default().max_bundle_bytes)
    );
    let routes = Router::new()
        .route("/bundle", get(move || async move { bundle_json.clone() }))
        .route(
            "/moved",
            get(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "/bundle")],
                )
            }),
        )
        .route(
            "/loop",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .route(
            "/to-http",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://127.0.0.1/bundle")],
                )
            }),
        )
        .route("/big", get(move || async move { big.clone() }))
        .route("/garbage", get(|| async { "<html>not a bundle</html>" }))
        .route(
            "/x5c",
            get(|| async { r#"{"keys":[{"kty":"EC","use":"x509-svid","x5c":["!!"]}]}"# }),
        )
        .route(
            "/missing",
            get(|| async { StatusCode::NOT_FOUND.into_response() }),
        );
    let serving = Arc::new(ServingCert::new(bundle_endpoint_id(&ours.td).unwrap()));
    serving.renew(&ours.issuer()).unwrap();
    let (addr, _stop) = serve(serving, routes).await;
    let at = |path: &str| url::Url::parse(&format!("https://{addr}{path}")).unwrap();
    let auth = spiffe_auth(&ours);
    let limits = FetchLimits::default();
    let fetch = |path: &'static str| {
        let (url, auth, td) = (at(path), auth.clone(), ours.td.clone());
        async move { fetch_bundle(&url, &td, &auth, limits).await }
    };

    assert_same_bundle(&fetch("/moved").await.unwrap(), &ours.current().bundle);
    let error = fetch("/loop").await.unwrap_err();
    assert!(
        matches!(error, FetchError::TooManyRedirects { .. }),
        "{error}"
    );
    let error = fetch("/to-http").await.unwrap_err();
    assert!(matches!(error, FetchError::BadRedirect { .. }), "{error}");
    assert!(error.to_string().contains("https"), "{error}");
    let error = fetch("/big").await.unwrap_err();
    assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
    assert_eq!(error.reason(), "InvalidBundle");
    let error = fetch("/garbage").await.unwrap_err();
    assert!(
        matches!(
            error,
            FetchError::InvalidBundle {
                source: BundleError::Json(_),
                ..
            }
        ),
        "{error}"
    );
    let error = fetch("/x5c").await.unwrap_err();
    assert!(
        matches!(
            error,
            FetchError::InvalidBundle {
                source: BundleError::InvalidX5c(0),
                ..
            }
        ),
        "{error}"
    );
    let error = fetch("/missing").await.unwrap_err();
    assert!(
        matches!(error, FetchError::HttpStatus { status: 404, .. }),
        "{error}"
    );
    assert_eq!(error.reason(), "HTTPError");

    // Nothing listening: unreachable, not a TLS error.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = url::Url::parse(&format!("https://{closed}/")).unwrap();
    let error = fetch_bundle(&url, &ours.td, &auth, limits)
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "EndpointUnreachable", "{error}");

    // A server that accepts and never answers: the whole fetch is bounded in time.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let url = url::Url::parse(&format!("https://{silent_addr}/")).unwrap();
    let short = FetchLimits {
        timeout: Duration::from_millis(300),
        ..limits
    };
    let error = fetch_bundle(&url, &ours.td, &auth, short)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Timeout { .. }), "{error}");
}

#[tokio::test]
async fn only_get_is_answered() {
    let ours = Domain::new("wimsey.test");
    let (url, _stop) = bundle_endpoint(&ours).await;
    let id = bundle_endpoint_id(&ours.td).unwrap();
    let verifier = wimsey_runtime::svid_tls::SvidServerVerifier::new(
        "bundle endpoint",
        id.trust_domain(),
        id,
        Arc::new(std::sync::RwLock::new(ours.authorities())),
    );
    let config = rustls::ClientConfig::builder_with_provider(wimsey_runtime::svid_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    for (method, want) in [
        ("POST", "405"),
        ("PUT", "405"),
        ("DELETE", "405"),
        ("GET", "200"),
    ] {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config.clone()))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(
            format!(
                "{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap_or_default();
        let status_line = answer.lines().next().unwrap_or_default().to_owned();
        assert!(status_line.contains(want), "{method}: {status_line}");
        if method == "GET" {
            assert!(
                answer
                    .to_lowercase()
                    .contains("content-type: application/json"),
                "{answer}"
            );
        }
    }
}
