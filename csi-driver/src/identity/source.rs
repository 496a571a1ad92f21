//! Where a pod's identities come from: the seam between the volume manager (CSI side) and the
//! operator's node API client.
//!
//! The volume manager calls [`IdentitySource::attach`] when it publishes a volume and
//! [`IdentitySource::detach`] when the last volume of the pod is unpublished. The returned
//! [`PodIdentity`] is what the Workload API server and the files writer read.

use std::fmt;

use zeroize::Zeroizing;

use super::snapshot::PodIdentity;

/// The pod a volume belongs to, from `NodePublishVolume`'s volume context (podInfoOnMount and
/// tokenRequests).
#[derive(Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// The pod's own service-account token for audience `wimsey` (from
    /// `csi.storage.k8s.io/serviceAccount.tokens`), if kubelet sent one.
    pub token: Option<Zeroizing<String>>,
}

impl fmt::Debug for PodInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("PodInfo")
            .field("uid", &self.uid)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("service_account", &self.service_account)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A supplier of per-pod identities.
pub trait IdentitySource: Send + Sync + 'static {
    type Pod: PodIdentity + Clone;

    /// Starts keeping `pod`'s identities fresh (or joins the existing watch for the same UID,
    /// refreshing the token) and returns the handle to read them. Never blocks on the network:
    /// the handle starts `NotReady` and fills in.
    fn attach(&self, pod: PodInfo) -> Self::Pod;

    /// Stops keeping `pod_uid`'s identities fresh and forgets its keys.
    fn detach(&self, pod_uid: &str);
}
