//! Conditions shared by the three resources.

/// The one condition every resource carries: `True` when everything it declares is in effect.
pub const CONDITION_READY: &str = "Ready";

/// ClusterFederatedTrustDomain: whether the last fetch from the bundle endpoint succeeded.
pub const CONDITION_BUNDLE_FETCHED: &str = "BundleFetched";

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
    /// The backend's server (SPIRE Server) cannot be reached; entries wait for it.
    pub const BACKEND_UNAVAILABLE: &str = "BackendUnavailable";
    /// The SPIRE Server refused the federation relationship (spire backend).
    pub const RELATIONSHIP_FAILED: &str = "RelationshipFailed";
    /// The trust domain is declared by an older ClusterFederatedTrustDomain.
    pub const DUPLICATE_TRUST_DOMAIN: &str = "DuplicateTrustDomain";
    /// The bundle endpoint could not be reached or returned no valid bundle.
    pub const BUNDLE_FETCH_FAILED: &str = "BundleFetchFailed";
    /// A bundle was fetched from the bundle endpoint.
    pub const BUNDLE_FETCHED: &str = "Fetched";
    /// The bundle endpoint could not be reached (connection, DNS, timeout).
    pub const ENDPOINT_UNREACHABLE: &str = "EndpointUnreachable";
    /// The endpoint's certificate did not verify for the profile (wrong SPIFFE ID, expired,
    /// another trust domain, untrusted Web PKI chain).
    pub const TLS_VERIFY_FAILED: &str = "TLSVerifyFailed";
    /// The endpoint answered with something that is not a valid SPIFFE bundle (or too large).
    pub const INVALID_BUNDLE: &str = "InvalidBundle";
    /// The endpoint answered with an HTTP error or too many redirects.
    pub const HTTP_ERROR: &str = "HTTPError";
    /// No bundle is known for the trust domain of the endpoint's SPIFFE ID.
    pub const TRUST_DOMAIN_MISMATCH: &str = "TrustDomainMismatch";
    /// The reasons of a failed fetch: the poller's `BundleFetched` Event already reports them.
    pub const FETCH_FAILURES: [&str; 5] = [
        ENDPOINT_UNREACHABLE,
        TLS_VERIFY_FAILED,
        INVALID_BUNDLE,
        HTTP_ERROR,
        TRUST_DOMAIN_MISMATCH,
    ];
    /// Not reconciled yet.
    pub const PENDING: &str = "Pending";
}
