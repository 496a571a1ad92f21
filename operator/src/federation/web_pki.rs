//! Web PKI material of the `https_web` profile, both sides: the roots a fetched endpoint is
//! verified against, and the PEM certificate and key we serve (from a `kubernetes.io/tls`
//! Secret, as cert-manager writes it; `web_cert.rs` follows the Secret), swapped in place.

use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use wimsey_runtime::svid_tls::provider;

/// Why Web PKI material could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebTlsError {
    #[error("{what} holds no PEM certificate")]
    NoCertificate { what: String },
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: String, reason: String },
    #[error("the private key in {what} cannot be used: {reason}")]
    Key { what: String, reason: String },
    #[error("reading {what}: {reason}")]
    Read { what: String, reason: String },
}

/// The roots an `https_web` endpoint is verified against: the Mozilla root program (compiled
/// in, as our images carry no system store), the system's roots when there are any, and an
/// optional PEM bundle from the configuration (a private CA).
pub fn web_roots(extra_pem: Option<&[u8]>) -> Result<RootCertStore, WebTlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_pem {
        let certs = pem_certificates(pem, "the federation CA bundle")?;
        for cert in certs {
            roots.add(cert).map_err(|e| WebTlsError::Pem {
                what: "the federation CA bundle".to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

fn pem_certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, WebTlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebTlsError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(WebTlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// A certificate chain and key from PEM (`tls.crt`, `tls.key`), ready for rustls.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<CertifiedKey, WebTlsError> {
    let certs = pem_certificates(cert_pem, what)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| WebTlsError::Key {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    let signing_key =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| WebTlsError::Key {
                what: what.to_owned(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| WebTlsError::Key {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// The `https_web` serving certificate, replaced whenever the Secret changes; a broken update
/// keeps the previous one.
#[derive(Debug, Default)]
pub struct WebServingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl WebServingCert {
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key));
    }

    /// The certificate served now (none before the Secret was first loaded).
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for WebServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}
