//! Conditions shared by the three resources.

/// The one condition every resource carries: `True` when everything it declares is in effect.
pub const CONDITION_READY: &str = "Ready";

/// `Ready` reasons. Stable: users alert on them.
pub mod reasons {
    /// Everything the resource declares is in effect.
    pub const RECONCILED: &str = "Reconciled";
    /// A template does not parse or a field is invalid in a way admission could not see.
    pub const INVALID_TEMPLATE: &str = "InvalidTemplate";
    /// Another spec-level problem (label selector, federatesWith, duration).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Rendering failed for at least one selected pod.
    pub const RENDER_FAILED: &str = "RenderFailed";
    /// At least one entry lost a conflict to an older resource with the same entry key.
    pub const MASKED: &str = "Masked";
    /// The backend refused or failed to store at least one entry.
    pub const ENTRY_FAILED: &str = "EntryFailed";
    /// The trust domain is declared by an older ClusterFederatedTrustDomain.
    pub const DUPLICATE_TRUST_DOMAIN: &str = "DuplicateTrustDomain";
    /// The bundle endpoint could not be reached or returned no valid bundle.
    pub const BUNDLE_FETCH_FAILED: &str = "BundleFetchFailed";
    /// Not reconciled yet.
    pub const PENDING: &str = "Pending";
}
