//! The identity source of a plugin started without a node API: every pod is entitled to
//! nothing, so `workload-api` sockets answer PermissionDenied "no identity issued" and `files`
//! volumes stay empty. `spire-agent` volumes need no source and work normally.

use std::sync::Arc;

use tokio::sync::watch;
use wimsey_core::SpiffeId;
use zeroize::Zeroizing;

use super::snapshot::{IdentitySnapshot, MintError, PodIdentity};
use super::source::{IdentitySource, PodInfo};

/// Issues no identity to any pod.
#[derive(Debug, Clone)]
pub struct NoIdentitySource {
    snapshot: watch::Sender<Arc<IdentitySnapshot>>,
}

impl Default for NoIdentitySource {
    fn default() -> Self {
        Self {
            snapshot: watch::Sender::new(Arc::new(IdentitySnapshot::NoIdentity)),
        }
    }
}

/// A pod of [`NoIdentitySource`].
#[derive(Debug, Clone)]
pub struct NoIdentityPod {
    snapshot: watch::Receiver<Arc<IdentitySnapshot>>,
}

impl PodIdentity for NoIdentityPod {
    fn current(&self) -> watch::Receiver<Arc<IdentitySnapshot>> {
        self.snapshot.clone()
    }

    async fn mint_jwt_svid(
        &self,
        _spiffe_id: &SpiffeId,
        _audience: &[String],
    ) -> Result<Zeroizing<String>, MintError> {
        Err(MintError::NoIdentity)
    }
}

impl IdentitySource for NoIdentitySource {
    type Pod = NoIdentityPod;

    fn attach(&self, _pod: PodInfo) -> NoIdentityPod {
        NoIdentityPod {
            snapshot: self.snapshot.subscribe(),
        }
    }

    fn detach(&self, _pod_uid: &str) {}
}
