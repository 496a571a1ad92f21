//! TLS to the operator's node API: the server must present an X.509-SVID for the configured
//! operator ID, checked against the bundle we currently trust (first the mounted bundle file,
//! later the bundles the operator sends). The client certificate is the node SVID.
//!
//! A TLS failure on a session's channel is remembered in its [`TlsRefusal`]: after the operator
//! replaced its CA it refuses our node certificate and presents one our old roots do not cover,
//! and only a fresh attestation (with the kubelet-refreshed bundle file) gets the node back.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint};
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_runtime::svid_tls::{SharedRoots, SvidServerVerifier, provider};
use zeroize::Zeroizing;

use super::NodeClientError;
use super::transport::NodeApiTransport;

/// A client certificate: DER chain (leaf first) and PKCS#8 key.
pub(super) struct ClientCert {
    pub(super) chain: Vec<Vec<u8>>,
    pub(super) key_pkcs8: Zeroizing<Vec<u8>>,
}

/// Whether TLS on a channel failed since it was last asked: a handshake the operator or we
/// rejected, or a TLS alert on an open connection (TLS 1.3 reports a refused client certificate
/// only after the client's side of the handshake is done). Resets and timeouts do not count.
#[derive(Debug, Clone, Default)]
pub(super) struct TlsRefusal(Arc<AtomicBool>);

impl TlsRefusal {
    /// True once per run of failures: the caller acts on it, later failures set it again.
    pub(super) fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }

    fn note(&self, error: &io::Error) {
        // tokio-rustls wraps every rustls error (our verifier's, a received alert) in an
        // io::Error; transport failures carry no rustls error.
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// A connection whose read and write errors are noted in a [`TlsRefusal`].
struct Watched<S> {
    inner: S,
    refusal: TlsRefusal,
}

impl<S> Watched<S> {
    fn noted<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(error)) = &poll {
            self.refusal.note(error);
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.noted(poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.noted(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.noted(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.noted(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A lazily connecting gRPC channel to `endpoint` (`host:port`) over TLS, verifying the server
/// as `server_id` and presenting `client_cert` when given, with `transport`'s settings. TLS
/// failures on it are noted in `refusal`.
pub(super) fn channel(
    endpoint: &str,
    roots: SharedRoots,
    trust_domain: &TrustDomain,
    server_id: &SpiffeId,
    client_cert: Option<&ClientCert>,
    transport: &NodeApiTransport,
    refusal: TlsRefusal,
) -> Result<Channel, NodeClientError> {
    let verifier = SvidServerVerifier::new(
        "node API server",
        trust_domain.clone(),
        server_id.clone(),
        roots,
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NodeClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client_cert {
        Some(cert) => builder
            .with_client_auth_cert(
                cert.chain
                    .iter()
                    .map(|c| CertificateDer::from(c.clone()))
                    .collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8.to_vec())),
            )
            .map_err(|e| NodeClientError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|_| NodeClientError::Endpoint(endpoint.to_owned()))?;
    let address = endpoint.to_owned();
    let uri = transport.configure(
        Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|_| NodeClientError::Endpoint(endpoint.to_owned()))?,
    );
    let transport = transport.clone();
    Ok(uri.connect_with_connector_lazy(tower::service_fn(move |_| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let address = address.clone();
        let transport = transport.clone();
        let refusal = refusal.clone();
        async move {
            let tcp = transport.dial(&address).await?;
            let tls = connector
                .connect(server_name, tcp)
                .await
                .inspect_err(|error| refusal.note(error))?;
            Ok::<_, io::Error>(TokioIo::new(Watched {
                inner: tls,
                refusal,
            }))
        }
    })))
}
