//! The node API's handle on the authority: the current signing material and the lifetimes to
//! sign with. Built from the running [`SigningAuthority`], or from material alone (in-process
//! tests, which have no authority Secret to load).

use std::sync::Arc;

use tokio::sync::watch;

use crate::authority::{AuthorityArgs, SigningAuthority, SigningMaterial};

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
}

impl From<&SigningAuthority> for NodeAuthority {
    fn from(authority: &SigningAuthority) -> Self {
        Self::new(authority.subscribe(), authority.args().clone())
    }
}
