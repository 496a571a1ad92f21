//! Keeps the `https_web` serving certificate in step with its `kubernetes.io/tls` Secret: every
//! change is parsed and swapped in; a Secret that does not parse is logged and the previous
//! certificate stays (a half-written renewal must not take the endpoint down).

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::web_pki::{WebServingCert, WebTlsError, certified_key};

/// Loads `tls.crt` and `tls.key` of `secret` into a [`rustls::sign::CertifiedKey`].
pub fn load_secret(secret: &Secret) -> Result<rustls::sign::CertifiedKey, WebTlsError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let what = format!("Secret {name}");
    let data = secret.data.as_ref();
    let field = |key: &str| {
        data.and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .ok_or_else(|| WebTlsError::Read {
                what: what.clone(),
                reason: format!("no {key}"),
            })
    };
    certified_key(&field("tls.crt")?, &field("tls.key")?, &what)
}

/// Watches `namespace/name` until `shutdown`, replacing `cert` on every good version.
pub async fn follow_secret(
    client: Client,
    namespace: String,
    name: String,
    cert: Arc<WebServingCert>,
    shutdown: CancellationToken,
) {
    let api = Api::<Secret>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).boxed();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let secret = match event {
            Ok(Event::Apply(secret) | Event::InitApply(secret)) => secret,
            Ok(_) => continue,
            Err(error) => {
                // The watcher retries by itself; the current certificate keeps serving.
                tracing::warn!(%error, secret = %name, "watching the bundle endpoint Secret");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        match load_secret(&secret) {
            Ok(key) => {
                cert.replace(key);
                tracing::info!(secret = %name, "bundle endpoint serving certificate loaded");
            }
            Err(error) => {
                tracing::error!(%error, "the bundle endpoint Secret is unusable; keeping the previous certificate");
            }
        }
    }
}
