//! One fetch of a bundle endpoint (`SPIFFE_Federation.md` §5): an HTTPS GET authenticated per
//! profile, redirects followed for this fetch only, the response capped in size and time, and
//! the body parsed as the bundle of the one trust domain we asked for (never merged with another).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;
use wimsey_core::bundle::{BundleError, TrustDomainBundle};
use wimsey_core::federation::{
    EndpointUrlError, MAX_REDIRECTS, check_endpoint_url, is_followed_redirect,
};
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_runtime::svid_tls::{SvidServerVerifier, provider};

use crate::crd::reasons;

/// Why a fetch failed. Each maps to a condition reason and a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("TLS with {url} failed: {reason}")]
    Tls { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("more than {MAX_REDIRECTS} redirects from {url}")]
    TooManyRedirects { url: String },
    #[error("{url} redirected to an invalid location: {reason}")]
    BadRedirect { url: String, reason: String },
    #[error("the bundle from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("the bundle from {url} is invalid: {source}")]
    InvalidBundle { url: String, source: BundleError },
    #[error("no bundle is known for {trust_domain}, the trust domain of the endpoint's SPIFFE ID")]
    NoBundleForEndpoint { trust_domain: String },
}

impl FetchError {
    /// The `BundleFetched` condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Unreachable { .. } | FetchError::Timeout { .. } => {
                reasons::ENDPOINT_UNREACHABLE
            }
            FetchError::Tls { .. } => reasons::TLS_VERIFY_FAILED,
            FetchError::HttpStatus { .. }
            | FetchError::TooManyRedirects { .. }
            | FetchError::BadRedirect { .. } => reasons::HTTP_ERROR,
            FetchError::TooLarge { .. } | FetchError::InvalidBundle { .. } => {
                reasons::INVALID_BUNDLE
            }
            FetchError::NoBundleForEndpoint { .. } => reasons::TRUST_DOMAIN_MISMATCH,
        }
    }

    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Unreachable { .. } => "unreachable",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Tls { .. } => "tls",
            FetchError::HttpStatus { .. } => "http_status",
            FetchError::TooManyRedirects { .. } => "too_many_redirects",
            FetchError::BadRedirect { .. } => "bad_redirect",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::InvalidBundle { .. } => "invalid_bundle",
            FetchError::NoBundleForEndpoint { .. } => "no_bundle_for_endpoint",
        }
    }
}

/// How the endpoint must authenticate itself.
#[derive(Debug, Clone)]
pub enum EndpointAuth {
    /// Web PKI against these roots (`https_web`).
    Web(Arc<RootCertStore>),
    /// An X.509-SVID of `id`, verified with the X.509 authorities of its trust domain
    /// (`https_spiffe`).
    Spiffe {
        id: SpiffeId,
        authorities: Vec<Vec<u8>>,
    },
}

/// Bounds of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// The largest response body accepted.
    pub max_bundle_bytes: usize,
    /// The whole fetch, redirects included.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_bundle_bytes: 256 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Fetches the bundle of `trust_domain` from `url`.
pub async fn fetch_bundle(
    url: &Url,
    trust_domain: &TrustDomain,
    auth: &EndpointAuth,
    limits: FetchLimits,
) -> Result<TrustDomainBundle, FetchError> {
    let tls = Arc::new(client_config(auth).map_err(|reason| FetchError::Tls {
        url: url.to_string(),
        reason,
    })?);
    let body = tokio::time::timeout(limits.timeout, follow(url, tls, limits.max_bundle_bytes))
        .await
        .map_err(|_| FetchError::Timeout {
            url: url.to_string(),
            seconds: limits.timeout.as_secs(),
        })??;
    TrustDomainBundle::from_spiffe_jwks(trust_domain.clone(), &body).map_err(|source| {
        FetchError::InvalidBundle {
            url: url.to_string(),
            source,
        }
    })
}

fn client_config(auth: &EndpointAuth) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match auth {
        EndpointAuth::Web(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        EndpointAuth::Spiffe { id, authorities } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(spiffe_verifier(
                id.clone(),
                authorities.clone(),
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts a server whose chain is an X.509-SVID of `expected`, issued by one of `authorities`
/// (the latest bundle of `expected`'s trust domain). Host names play no part.
fn spiffe_verifier(expected: SpiffeId, authorities: Vec<Vec<u8>>) -> SvidServerVerifier {
    SvidServerVerifier::new(
        "bundle endpoint",
        expected.trust_domain(),
        expected,
        Arc::new(std::sync::RwLock::new(authorities)),
    )
}

/// GETs `url`, following redirects to valid endpoint URLs; returns the body.
async fn follow(url: &Url, tls: Arc<ClientConfig>, max_bytes: usize) -> Result<Bytes, FetchError> {
    let mut current = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        match get_once(&current, tls.clone(), max_bytes).await? {
            Answer::Body(body) => return Ok(body),
            Answer::Redirect(location) => {
                let next = current
                    .join(&location)
                    .map_err(|e| bad_redirect(&current, e.to_string()))?;
                check_endpoint_url(&next)
                    .map_err(|e: EndpointUrlError| bad_redirect(&current, e.to_string()))?;
                tracing::debug!(from = %current, to = %next, "following a bundle endpoint redirect");
                current = next;
            }
        }
    }
    Err(FetchError::TooManyRedirects {
        url: url.to_string(),
    })
}

fn bad_redirect(url: &Url, reason: String) -> FetchError {
    FetchError::BadRedirect {
        url: url.to_string(),
        reason,
    }
}

enum Answer {
    Body(Bytes),
    Redirect(String),
}

async fn get_once(
    url: &Url,
    tls: Arc<ClientConfig>,
    max_bytes: usize,
) -> Result<Answer, FetchError> {
    let unreachable = |reason: String| FetchError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let (server_name, tcp) = match url.host() {
        Some(url::Host::Domain(domain)) => (
            ServerName::try_from(domain.to_owned()).map_err(|e| unreachable(e.to_string()))?,
            TcpStream::connect((domain, port)).await,
        ),
        Some(url::Host::Ipv4(ip)) => (
            ServerName::IpAddress(IpAddr::V4(ip).into()),
            TcpStream::connect(SocketAddr::new(IpAddr::V4(ip), port)).await,
        ),
        Some(url::Host::Ipv6(ip)) => (
            ServerName::IpAddress(IpAddr::V6(ip).into()),
            TcpStream::connect(SocketAddr::new(IpAddr::V6(ip), port)).await,
        ),
        None => return Err(unreachable("no host".to_owned())),
    };
    let tcp = tcp.map_err(|e| unreachable(e.to_string()))?;
    // A TLS handshake and a request are several small writes: without this, Nagle and the peer's
    // delayed ACK add tens of milliseconds per fetch.
    let _ = tcp.set_nodelay(true);
    let stream = TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(tls_error) => FetchError::Tls {
                    url: url.to_string(),
                    reason: tls_error.to_string(),
                },
                None => unreachable(e.to_string()),
            },
        )?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let request = http::Request::get(&url[url::Position::BeforePath..])
        .header(http::header::HOST, host)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        if is_followed_redirect(status) {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| bad_redirect(url, format!("HTTP {status} without a Location")))?;
            return Ok(Answer::Redirect(location.to_owned()));
        }
        if status != 200 {
            return Err(FetchError::HttpStatus {
                url: url.to_string(),
                status,
            });
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge {
                        url: url.to_string(),
                        limit: max_bytes,
                    }
                } else {
                    unreachable(e.to_string())
                }
            })?;
        Ok(Answer::Body(body.to_bytes()))
    }
    .await;
    driver.abort();
    answer
}
