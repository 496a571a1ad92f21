//! A trust domain's authority in-process, and our bundle endpoint serving it over real TLS on
//! loopback: shared by the federation tests. Include with `#[path = "support/domain.rs"] mod domain;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use rustls::server::ResolvesServerCert;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::TrustDomain;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::issuance::TtlPolicy;
use wimsey_core::reserved::bundle_endpoint_id;
use wimsey_operator::authority::issuer::{Issuer, IssuerLifetimes};
use wimsey_operator::authority::serving::ServingCert;
use wimsey_operator::authority::state::rotate;
use wimsey_operator::authority::{Lifetimes, SigningMaterial, StoredAuthority};
use wimsey_operator::federation::endpoint::{self, EndpointLimits};
use wimsey_operator::federation::fetch::EndpointAuth;

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

pub(crate) fn lifetimes() -> Lifetimes {
    Lifetimes {
        ca_ttl: 24 * HOUR,
        jwt_key_ttl: 24 * HOUR,
        propagation_delay: HOUR,
        max_x509_svid_ttl: HOUR,
        max_jwt_svid_ttl: HOUR,
        node_svid_ttl: HOUR,
        server_svid_ttl: HOUR,
    }
}

/// A trust domain's authority: its stored keys and the material published from them.
pub(crate) struct Domain {
    pub(crate) td: TrustDomain,
    stored: StoredAuthority,
    pub(crate) material: watch::Sender<Arc<SigningMaterial>>,
}

impl Domain {
    pub(crate) fn new(name: &str) -> Self {
        Self::created_at(name, SystemTime::now())
    }

    pub(crate) fn created_at(name: &str, now: SystemTime) -> Self {
        let td = TrustDomain::new(name).unwrap();
        let mut stored = StoredAuthority::empty(&td);
        rotate(&mut stored, &td, &lifetimes(), now).unwrap();
        let material =
            Arc::new(SigningMaterial::from_stored(&stored, &td, &lifetimes(), now).unwrap());
        Self {
            td,
            stored,
            material: watch::channel(material).0,
        }
    }

    pub(crate) fn current(&self) -> Arc<SigningMaterial> {
        self.material.borrow().clone()
    }

    /// Rotates as the authority would later in the CA's life: a new CA joins the bundle.
    pub(crate) fn rotate_later(&mut self, by: Duration) {
        let at = SystemTime::now() + by;
        rotate(&mut self.stored, &self.td, &lifetimes(), at).unwrap();
        let material =
            SigningMaterial::from_stored(&self.stored, &self.td, &lifetimes(), at).unwrap();
        self.material.send_replace(Arc::new(material));
    }

    pub(crate) fn issuer(&self) -> Issuer {
        issuer(self.current())
    }

    pub(crate) fn authorities(&self) -> Vec<Vec<u8>> {
        self.current().bundle.x509_authorities.clone()
    }
}

/// The same trust domain, keys and sequence (a parsed JWK carries its kid; ours keeps it as the
/// map key only).
pub(crate) fn assert_same_bundle(fetched: &TrustDomainBundle, expected: &TrustDomainBundle) {
    assert_eq!(fetched.trust_domain, expected.trust_domain);
    assert_eq!(fetched.x509_authorities, expected.x509_authorities);
    assert_eq!(
        fetched.jwt_authorities.keys().collect::<Vec<_>>(),
        expected.jwt_authorities.keys().collect::<Vec<_>>()
    );
    assert_eq!(fetched.sequence_number, expected.sequence_number);
    assert_eq!(fetched.refresh_hint_seconds, expected.refresh_hint_seconds);
}

pub(crate) fn issuer(material: Arc<SigningMaterial>) -> Issuer {
    Issuer::new(
        material,
        IssuerLifetimes {
            workload: TtlPolicy {
                default_x509_svid_ttl: HOUR,
                default_jwt_svid_ttl: HOUR,
                max_x509_svid_ttl: HOUR,
                max_jwt_svid_ttl: HOUR,
            },
            node_svid_ttl: HOUR,
            serving_svid_ttl: HOUR,
        },
        None,
    )
}

/// Serves `routes` over TLS with `resolver` on a loopback port until the token is cancelled.
pub(crate) async fn serve(
    resolver: Arc<dyn ResolvesServerCert>,
    routes: Router,
) -> (SocketAddr, CancellationToken) {
    let listener = endpoint::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(endpoint::serve(
        listener,
        resolver,
        routes,
        EndpointLimits::default(),
        shutdown.clone(),
    ));
    (addr, shutdown)
}

/// Our bundle endpoint for `domain` over https_spiffe, as `run` starts it.
pub(crate) async fn bundle_endpoint(domain: &Domain) -> (url::Url, CancellationToken) {
    let serving = Arc::new(ServingCert::new(bundle_endpoint_id(&domain.td).unwrap()));
    let shutdown = CancellationToken::new();
    serving
        .keep_renewed(domain.material.subscribe(), issuer, shutdown.clone())
        .unwrap();
    let (addr, stop) = serve(serving, endpoint::router(domain.material.subscribe(), None)).await;
    let url = url::Url::parse(&format!("https://{addr}/")).unwrap();
    let stop_both = stop.clone();
    tokio::spawn(async move {
        stop_both.cancelled().await;
        shutdown.cancel();
    });
    (url, stop)
}

pub(crate) fn spiffe_auth(domain: &Domain) -> EndpointAuth {
    EndpointAuth::Spiffe {
        id: bundle_endpoint_id(&domain.td).unwrap(),
        authorities: domain.authorities(),
    }
}
