//! OIDC discovery for JWT-SVIDs, served next to the bundle endpoint when `--jwt-issuer-url` is
//! set: `GET <issuer path>/.well-known/openid-configuration` and `GET <issuer path>/keys`, from
//! the authority's current signing material (documents from `wimsey_core::oidc`).
//!
//! Each request reads the material afresh, so a key that rotation adds to the bundle is served
//! at once; the two documents are serialized once per material and shared until it changes.

use std::sync::{Arc, Mutex, Weak};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::watch;
use wimsey_core::oidc::{IssuerUrl, discovery_document, jwks};

use crate::authority::SigningMaterial;

/// How long relying parties may cache either document. A new JWT key is in the bundle for the
/// key propagation delay (1h by default) before it signs, so a few minutes of staleness never
/// leaves a token unverifiable, and a removed key stops being trusted soon after.
pub const CACHE_CONTROL: &str = "max-age=300";

/// The discovery document and the JWKS of one signing material.
#[derive(Debug)]
struct Documents {
    discovery: Bytes,
    jwks: Bytes,
}

#[derive(Debug)]
struct OidcState {
    material: watch::Receiver<Arc<SigningMaterial>>,
    issuer: IssuerUrl,
    /// Keyed by the material's allocation; the [`Weak`] keeps the address from being reused,
    /// so a hit is always the same material (as in `nodeapi::bundles`).
    cached: Mutex<Option<(Weak<SigningMaterial>, Arc<Documents>)>>,
}

impl OidcState {
    fn documents(&self) -> Arc<Documents> {
        let material = self.material.borrow().clone();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, documents)) = cached.as_ref()
            && std::ptr::eq(from.as_ptr(), Arc::as_ptr(&material))
        {
            return documents.clone();
        }
        let documents = Arc::new(Documents {
            discovery: discovery_document(&self.issuer, &material.bundle).into(),
            jwks: jwks(&material.bundle).into(),
        });
        *cached = Some((Arc::downgrade(&material), documents.clone()));
        documents
    }
}

/// The discovery document and the JWKS for `issuer`, under the issuer's path. Other methods on
/// these paths get 405. The caller serves this over HTTPS at the issuer's host.
pub fn routes(material: watch::Receiver<Arc<SigningMaterial>>, issuer: IssuerUrl) -> Router {
    let discovery_path = issuer.discovery_path();
    let jwks_path = issuer.jwks_path();
    let state = Arc::new(OidcState {
        material,
        issuer,
        cached: Mutex::new(None),
    });
    Router::new()
        .route(&discovery_path, get(serve_discovery))
        .route(&jwks_path, get(serve_jwks))
        .with_state(state)
}

async fn serve_discovery(State(state): State<Arc<OidcState>>) -> Response {
    json_document(state.documents().discovery.clone())
}

async fn serve_jwks(State(state): State<Arc<OidcState>>) -> Response {
    json_document(state.documents().jwks.clone())
}

fn json_document(body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use http_body_util::BodyExt as _;
    use serde_json::Value;
    use tower::ServiceExt as _;
    use wimsey_core::TrustDomain;
    use wimsey_core::jose::PublicJwk;
    use wimsey_core::jose::jwt_svid::{JwtSvidClaims, mint_jwt_svid};

    use super::*;
    use crate::authority::test_support::fresh_material;

    fn material() -> Arc<SigningMaterial> {
        fresh_material(&TrustDomain::new("example.org").unwrap())
    }

    async fn call(router: &Router, method: Method, path: &str) -> (StatusCode, Response) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        (response.status(), response)
    }

    async fn get_json(router: &Router, path: &str) -> Value {
        let (status, response) = call(router, Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::CACHE_CONTROL], CACHE_CONTROL);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    fn kids(jwks: &Value) -> Vec<String> {
        let keys = jwks["keys"].as_array().unwrap();
        keys.iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn serves_discovery_and_keys_that_verify_our_jwt_svids() {
        let first = material();
        let (material_tx, material_rx) = watch::channel(first.clone());
        let issuer = IssuerUrl::parse("https://oidc.example.org").unwrap();
        let router = routes(material_rx, issuer);

        let discovery = get_json(&router, "/.well-known/openid-configuration").await;
        assert_eq!(discovery["issuer"], "https://oidc.example.org");
        assert_eq!(discovery["jwks_uri"], "https://oidc.example.org/keys");
        assert_eq!(
            discovery["id_token_signing_alg_values_supported"],
            serde_json::json!(["ES256"])
        );
        assert_eq!(discovery["authorization_endpoint"], "");

        let jwks = get_json(&router, "/keys").await;
        assert_eq!(kids(&jwks), vec![first.jwt.kid.clone()]);
        let key = &jwks["keys"][0];
        assert_eq!((&key["use"], &key["alg"]), (&"sig".into(), &"ES256".into()));
        // A JWT-SVID signed with the material verifies with the published key.
        let published = PublicJwk::from_json_map(key.as_object().unwrap()).unwrap();
        let id = wimsey_core::SpiffeId::parse("spiffe://example.org/w").unwrap();
        let now = SystemTime::now();
        let token = mint_jwt_svid(
            &first.jwt.key,
            &first.jwt.kid,
            &JwtSvidClaims {
                spiffe_id: &id,
                audience: &["aud".into()],
                issued_at: now,
                expires_at: now + std::time::Duration::from_secs(60),
                jti: None,
                issuer: Some("https://oidc.example.org"),
            },
        )
        .unwrap();
        wimsey_core::jose::CompactJws::parse(&token)
            .unwrap()
            .verify(&published)
            .unwrap();

        // New material (a rotation) is served on the next request.
        let second = material();
        material_tx.send(second.clone()).unwrap();
        let jwks = get_json(&router, "/keys").await;
        assert_eq!(kids(&jwks), vec![second.jwt.kid.clone()]);
    }

    #[tokio::test]
    async fn other_methods_and_paths_are_refused() {
        let (_material_tx, material_rx) = watch::channel(material());
        let issuer = IssuerUrl::parse("https://oidc.example.org").unwrap();
        let router = routes(material_rx, issuer);
        for path in ["/keys", "/.well-known/openid-configuration"] {
            for method in [Method::POST, Method::PUT, Method::DELETE] {
                let (status, _) = call(&router, method.clone(), path).await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
        let (status, _) = call(&router, Method::GET, "/keys/extra").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn an_issuer_with_a_path_serves_below_it() {
        let (_material_tx, material_rx) = watch::channel(material());
        let issuer = IssuerUrl::parse("https://idp.example.org/clusters/blue").unwrap();
        let router = routes(material_rx, issuer);
        let discovery = get_json(&router, "/clusters/blue/.well-known/openid-configuration").await;
        assert_eq!(discovery["issuer"], "https://idp.example.org/clusters/blue");
        assert_eq!(
            discovery["jwks_uri"],
            "https://idp.example.org/clusters/blue/keys"
        );
        let jwks = get_json(&router, "/clusters/blue/keys").await;
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        let (status, _) = call(&router, Method::GET, "/keys").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn documents_are_serialized_once_per_material() {
        let first = material();
        let (material_tx, material_rx) = watch::channel(first);
        let state = OidcState {
            material: material_rx,
            issuer: IssuerUrl::parse("https://oidc.example.org").unwrap(),
            cached: Mutex::new(None),
        };
        let a = state.documents();
        assert!(
            Arc::ptr_eq(&a, &state.documents()),
            "same material, same bytes"
        );
        material_tx.send(material()).unwrap();
        let b = state.documents();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_ne!(a.jwks, b.jwks);
    }
}
