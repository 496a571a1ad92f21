//! rustls on SPIFFE terms, for both binaries: the crypto provider, a server verifier that wants
//! an X.509-SVID of one SPIFFE ID (the CSI plugin's node API client, the operator's `https_spiffe`
//! federation client), and the handshake-signature checks every custom verifier delegates.

use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use wimsey_core::x509::verify_svid;
use wimsey_core::{SpiffeId, TrustDomain};

/// The crypto provider of every TLS config and key in wimsey: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The signature algorithms of [`provider`].
static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> =
    LazyLock::new(|| provider().signature_verification_algorithms);

/// [`rustls::crypto::verify_tls12_signature`] with [`provider`]'s algorithms: the body of a
/// verifier's `verify_tls12_signature`.
pub fn verify_tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
}

/// [`rustls::crypto::verify_tls13_signature`] with [`provider`]'s algorithms: the body of a
/// verifier's `verify_tls13_signature`.
pub fn verify_tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
}

/// The schemes [`provider`] verifies: the body of a verifier's `supported_verify_schemes`.
pub fn supported_verify_schemes() -> Vec<SignatureScheme> {
    ALGORITHMS.supported_schemes()
}

/// X.509 roots (DER) of one trust domain, replaced in place whenever a newer bundle arrives.
pub type SharedRoots = Arc<RwLock<Vec<Vec<u8>>>>;

/// Accepts a server whose chain is an X.509-SVID of `expected`, issued by one of the current
/// `roots` of `trust_domain`. The server is identified by its SPIFFE ID: host names play no part.
#[derive(Debug)]
pub struct SvidServerVerifier {
    what: &'static str,
    trust_domain: TrustDomain,
    expected: SpiffeId,
    roots: SharedRoots,
}

impl SvidServerVerifier {
    /// `what` names the server in errors ("node API server" gives "node API server
    /// certificate: …" and "node API server is X, expected Y").
    pub fn new(
        what: &'static str,
        trust_domain: TrustDomain,
        expected: SpiffeId,
        roots: SharedRoots,
    ) -> Self {
        Self {
            what,
            trust_domain,
            expected,
            roots,
        }
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let roots = self.roots.read().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let verified = verify_svid(
            &chain,
            |td| (*td == self.trust_domain).then_some(roots.as_slice()),
            now,
        )
        .map_err(|e| rustls::Error::General(format!("{} certificate: {e}", self.what)))?;
        if verified.spiffe_id != self.expected {
            return Err(rustls::Error::General(format!(
                "{} is {}, expected {}",
                self.what, verified.spiffe_id, self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use wimsey_core::keys::{KeyAlgorithm, SigningKey};
    use wimsey_core::x509::{Authority, CaParams, SvidRequest};

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn root(td: &TrustDomain) -> Authority {
        let params = CaParams::new("test", DAY);
        Authority::generate_root(td, KeyAlgorithm::EcdsaP256, &params, SystemTime::now()).unwrap()
    }

    /// The leaf and intermediates `authority` issues for `id`.
    fn svid(authority: &Authority, id: &SpiffeId) -> Vec<CertificateDer<'static>> {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let request = SvidRequest {
            spiffe_id: id,
            dns_names: &[],
            ttl: Duration::from_secs(3600),
        };
        let issued = authority
            .issue_for_public_key(&key.public_key_spki_der(), &request, SystemTime::now())
            .unwrap();
        issued
            .chain
            .into_iter()
            .map(|c| CertificateDer::from(c.into_vec()))
            .collect()
    }

    fn verify(verifier: &SvidServerVerifier, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let now = UnixTime::since_unix_epoch(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap(),
        );
        // Host names play no part: any name will do.
        let name = ServerName::try_from("unrelated.example").unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_the_expected_id_under_the_current_roots() {
        let td = TrustDomain::new("example.org").unwrap();
        let old = root(&td);
        let new = root(&td);
        let id = SpiffeId::parse("spiffe://example.org/server").unwrap();
        let roots: SharedRoots = Arc::new(RwLock::new(vec![old.certificate().as_bytes().to_vec()]));
        let verifier = SvidServerVerifier::new("test server", td, id.clone(), roots.clone());
        assert_eq!(verify(&verifier, &svid(&old, &id)), Ok(()));

        let err = verify(&verifier, &svid(&new, &id)).unwrap_err();
        assert!(err.contains("test server certificate: "), "{err}");

        // Roots replaced in place are used by the next handshake.
        *roots.write().unwrap() = vec![new.certificate().as_bytes().to_vec()];
        assert_eq!(verify(&verifier, &svid(&new, &id)), Ok(()));
    }

    #[test]
    fn refuses_another_id_and_another_trust_domain() {
        let td = TrustDomain::new("example.org").unwrap();
        let ca = root(&td);
        let expected = SpiffeId::parse("spiffe://example.org/server").unwrap();
        let other = SpiffeId::parse("spiffe://example.org/other").unwrap();
        let roots = Arc::new(RwLock::new(vec![ca.certificate().as_bytes().to_vec()]));
        let verifier = SvidServerVerifier::new("test server", td, expected, roots);
        let err = verify(&verifier, &svid(&ca, &other)).unwrap_err();
        assert!(
            err.contains(
                "test server is spiffe://example.org/other, expected spiffe://example.org/server"
            ),
            "{err}"
        );

        let elsewhere = TrustDomain::new("elsewhere.org").unwrap();
        let foreign = root(&elsewhere);
        let foreign_id = SpiffeId::parse("spiffe://elsewhere.org/server").unwrap();
        let roots = Arc::new(RwLock::new(vec![foreign.certificate().as_bytes().to_vec()]));
        let verifier = SvidServerVerifier::new(
            "test server",
            TrustDomain::new("example.org").unwrap(),
            foreign_id.clone(),
            roots,
        );
        let err = verify(&verifier, &svid(&foreign, &foreign_id)).unwrap_err();
        assert!(err.contains("test server certificate: "), "{err}");
    }

    #[test]
    fn signature_helpers_use_the_providers_schemes() {
        assert_eq!(
            supported_verify_schemes(),
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        );
    }
}
