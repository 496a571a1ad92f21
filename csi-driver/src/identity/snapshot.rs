//! The identity state of one pod.
//!
//! The source (the operator's node API client) publishes a new [`IdentitySnapshot`] on a
//! `tokio::sync::watch` channel whenever anything changes; every open Workload API stream and the
//! files writer re-render from it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::x509::CertDer;
use wimsey_core::{SpiffeId, TrustDomain};
use zeroize::Zeroizing;

/// Everything the Workload API knows about one pod at one moment.
#[derive(Debug, Clone)]
pub enum IdentitySnapshot {
    /// The source has not synced yet: callers get `Unavailable` and retry.
    NotReady,
    /// The pod is entitled to no identity: callers get `PermissionDenied` "no identity issued".
    NoIdentity,
    /// The pod's current identities and the bundles it trusts.
    Issued(IssuedIdentities),
}

/// The identities issued to a pod and the bundles that go with them.
#[derive(Debug, Clone)]
pub struct IssuedIdentities {
    /// The bundle of our own trust domain (X.509 roots, JWT and WIT authorities).
    pub bundle: TrustDomainBundle,
    /// Bundles of federated trust domains, by trust domain.
    pub federated_bundles: BTreeMap<TrustDomain, TrustDomainBundle>,
    /// X.509-SVIDs; the first is the default identity. Each identity here may also get JWT-SVIDs.
    pub x509_svids: Vec<X509SvidEntry>,
    /// WIT-SVIDs. `None` means the WIT-SVID profile is not served to this pod (`Unimplemented`).
    pub wit_svids: Option<Vec<WitSvidEntry>>,
}

impl IssuedIdentities {
    /// The bundle for `trust_domain`, our own or a federated one.
    pub fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&TrustDomainBundle> {
        if self.bundle.trust_domain == *trust_domain {
            Some(&self.bundle)
        } else {
            self.federated_bundles.get(trust_domain)
        }
    }

    /// Every bundle, ours first.
    pub fn all_bundles(&self) -> impl Iterator<Item = &TrustDomainBundle> {
        std::iter::once(&self.bundle).chain(
            self.federated_bundles
                .values()
                .filter(|b| b.trust_domain != self.bundle.trust_domain),
        )
    }

    /// The identities the pod may get JWT-SVIDs for, in order (default first).
    pub fn spiffe_ids(&self) -> impl Iterator<Item = &SpiffeId> {
        self.x509_svids.iter().map(|svid| &svid.spiffe_id)
    }
}

/// One X.509-SVID with its private key. Debug never prints the key.
#[derive(Clone)]
pub struct X509SvidEntry {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates, without the root.
    pub chain: Vec<CertDer>,
    /// Unencrypted PKCS#8 DER.
    pub private_key_pkcs8: Zeroizing<Vec<u8>>,
    /// Operator-chosen hint ("" for none).
    pub hint: String,
}

impl std::fmt::Debug for X509SvidEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509SvidEntry")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// One WIT-SVID with its private key. Debug prints neither the token nor the key.
#[derive(Clone)]
pub struct WitSvidEntry {
    pub spiffe_id: SpiffeId,
    /// The WIT-SVID, JWS compact serialization.
    pub token: Zeroizing<String>,
    /// The workload's private key as a JWK JSON object.
    pub private_jwk: Zeroizing<String>,
    pub hint: String,
}

impl std::fmt::Debug for WitSvidEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitSvidEntry")
            .field("spiffe_id", &self.spiffe_id)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// Why a JWT-SVID could not be minted for a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("workload identity is not available yet")]
    NotReady,
    #[error("no identity issued")]
    NoIdentity,
    /// The pod is not entitled to the requested identity.
    #[error("no identity issued for the requested SPIFFE ID")]
    NotEntitled,
    #[error("could not mint a JWT-SVID: {0}")]
    Failed(String),
}

/// The source of one pod's identity state.
pub trait PodIdentity: Send + Sync + 'static {
    /// A receiver of the current snapshot; it changes whenever the pod's identities, keys or
    /// bundles change.
    fn current(&self) -> watch::Receiver<Arc<IdentitySnapshot>>;

    /// Mints a JWT-SVID for `spiffe_id`, one of the pod's identities, with `audience` (non-empty).
    fn mint_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
    ) -> impl Future<Output = Result<Zeroizing<String>, MintError>> + Send;
}
