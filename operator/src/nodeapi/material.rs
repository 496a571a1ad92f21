//! The node API's handle on the authority: the current signing material and the lifetimes to
//! sign with. Built from the running [`SigningAuthority`], or from material alone (in-process
//! tests, which have no authority Secret to load).

use std::sync::Arc;

use tokio::sync::watch;

use wimsey_core::issuance::TtlPolicy;

use crate::authority::issuer::{Issuer, IssuerLifetimes};
use crate::authority::{AuthorityArgs, SigningAuthority, SigningMaterial};
use crate::config::Settings;

/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeAuthority {
    material: watch::Receiver<Arc<SigningMaterial>>,
    args: AuthorityArgs,
}

impl NodeAuthority {
    /// `material` changes whenever the keys or the bundle change; the sender must outlive the
    /// node API (a closed channel ends open WatchPod streams).
    pub fn new(material: watch::Receiver<Arc<SigningMaterial>>, args: AuthorityArgs) -> Self {
        Self { material, args }
    }

    /// What to sign with now.
    pub fn current(&self) -> Arc<SigningMaterial> {
        self.material.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<SigningMaterial>> {
        self.material.clone()
    }

    pub fn args(&self) -> &AuthorityArgs {
        &self.args
    }

    /// What signs with `material`: lifetimes default to the cluster's `settings` and are capped
    /// by the authority's flags, which also give the JWT-SVID issuer URL.
    pub fn issuer(&self, material: Arc<SigningMaterial>, settings: &Settings) -> Issuer {
        let workload = TtlPolicy {
            default_x509_svid_ttl: settings.default_x509_svid_ttl,
            default_jwt_svid_ttl: settings.default_jwt_svid_ttl,
            max_x509_svid_ttl: self.args.max_x509_svid_ttl,
            max_jwt_svid_ttl: self.args.max_jwt_svid_ttl,
        };
        let lifetimes = IssuerLifetimes {
            workload,
            node_svid_ttl: self.args.node_svid_ttl,
            serving_svid_ttl: self.args.server_svid_ttl,
        };
        Issuer::new(material, lifetimes, self.args.jwt_issuer_url.clone())
    }
}

impl From<&SigningAuthority> for NodeAuthority {
    fn from(authority: &SigningAuthority) -> Self {
        Self::new(authority.subscribe(), authority.args().clone())
    }
}
