//! Serving certificates of the operator's own TLS listeners (the node API, the bundle endpoint):
//! an X.509-SVID of a reserved ID, with a key generated here, reissued at half-life and
//! whenever the signing material changes, so a CA rotation reaches every listener at once.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::SpiffeId;
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::renewal::half_life;

use super::SigningMaterial;
use super::issuer::{IssueError, Issuer};

/// The current serving SVID of one listener, for rustls.
#[derive(Debug)]
pub struct ServingCert {
    /// Which reserved ID the listener presents, in the material's trust domain.
    id: SpiffeId,
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServingCert {
    pub fn new(id: SpiffeId) -> Self {
        Self {
            id,
            current: RwLock::new(None),
        }
    }

    /// Issues a fresh serving SVID; returns when it should be renewed.
    pub fn renew(&self, issuer: &Issuer) -> Result<SystemTime, IssueError> {
        let now = SystemTime::now();
        let signing = |e: &dyn std::fmt::Display| IssueError::Signing(e.to_string());
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| signing(&e))?;
        let svid = issuer.serving_svid(&self.id, &key.public_key_spki_der(), now)?;
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
        let signing_key = wimsey_runtime::svid_tls::provider()
            .key_provider
            .load_private_key(pkcs8)
            .map_err(|e| signing(&e))?;
        let certs = svid
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(CertifiedKey::new(certs, signing_key)));
        Ok(half_life(now, svid.not_after))
    }

    /// Issues the first SVID now, then keeps it renewed until `shutdown` (or until the material
    /// stops changing because the authority is gone). `issuer_for` applies this cluster's
    /// lifetimes to a material.
    pub fn keep_renewed(
        self: &Arc<Self>,
        mut material: watch::Receiver<Arc<SigningMaterial>>,
        issuer_for: impl Fn(Arc<SigningMaterial>) -> Issuer + Send + 'static,
        shutdown: CancellationToken,
    ) -> Result<(), IssueError> {
        let mut renew_at = self.renew(&issuer_for(material.borrow_and_update().clone()))?;
        let serving = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                    changed = material.changed() => if changed.is_err() { return },
                }
                let current = material.borrow_and_update().clone();
                match serving.renew(&issuer_for(current)) {
                    Ok(next) => renew_at = next,
                    Err(error) => {
                        tracing::error!(%error, id = %serving.id, "renewing a serving certificate");
                        renew_at = SystemTime::now() + Duration::from_secs(5);
                    }
                }
            }
        });
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
