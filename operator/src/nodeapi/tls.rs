//! TLS for the node API: the operator's rotating serving SVID, and client certificates checked
//! as X.509-SVIDs against our current bundle (optional, because Attest comes before a node has
//! a certificate).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use wimsey_core::x509::verify_svid;
use wimsey_runtime::svid_tls;

use super::NodeApiError;
use super::conn::{ConnInfo, LimitedTcp};
use super::verdict::node_from_id;
use crate::authority::SigningMaterial;

/// The node a connection authenticated as, and until when (the node SVID's notAfter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_name: String,
    pub valid_until: SystemTime,
}

/// Verifies client certificates as node SVIDs of our trust domain and cluster.
#[derive(Debug)]
pub(super) struct NodeCertVerifier {
    material: watch::Receiver<Arc<SigningMaterial>>,
    cluster: String,
}

impl NodeCertVerifier {
    pub(super) fn new(material: watch::Receiver<Arc<SigningMaterial>>, cluster: String) -> Self {
        Self { material, cluster }
    }

    /// The node a client chain (leaf first) authenticates, and until when.
    pub(super) fn identity_of(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<NodeIdentity, NodeApiError> {
        let material = self.material.borrow().clone();
        let roots = &material.bundle.x509_authorities;
        let trust_domain = &material.bundle.trust_domain;
        let verified = verify_svid(
            chain,
            |td| (td == trust_domain).then_some(roots.as_slice()),
            now,
        )
        .map_err(|_| {
            NodeApiError::Unauthenticated("the client certificate is not a valid node SVID")
        })?;
        let node_name = node_from_id(trust_domain, &self.cluster, &verified.spiffe_id).ok_or(
            NodeApiError::Unauthenticated("the client certificate is not a node SVID"),
        )?;
        Ok(NodeIdentity {
            node_name,
            valid_until: verified.not_after,
        })
    }
}

impl ClientCertVerifier for NodeCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    // Attest is called without a certificate; the other RPCs check for one.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        self.identity_of(&chain, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|_| {
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                )
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        svid_tls::verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        svid_tls::verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        svid_tls::supported_verify_schemes()
    }
}

/// One accepted TLS connection, carrying the node it authenticated as (if any), the peer's
/// address and its call counter into every request's extensions.
pub(super) struct NodeConn {
    pub(super) inner: TlsStream<LimitedTcp>,
    pub(super) info: ConnInfo,
}

impl Connected for NodeConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for NodeConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for NodeConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
