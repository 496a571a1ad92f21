//! What a node API call can fail with, its gRPC code, and its metrics label.

use tonic::{Code, Status};

use super::cluster;
use crate::authority::issuer::IssueError;

#[derive(Debug, thiserror::Error)]
pub enum NodeApiError {
    #[error("missing or invalid {0}")]
    InvalidArgument(&'static str),
    #[error("invalid CSR for entry {entry}: {reason}")]
    InvalidCsr { entry: String, reason: String },
    #[error("invalid public_jwk: {0}")]
    InvalidJwk(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("no identity issued")]
    NoIdentity,
    #[error("the operator is shutting down; reconnect")]
    ShuttingDown,
    #[error("entry {0} is not an entry of this pod")]
    UnknownEntry(String),
    #[error("{0}")]
    OverLimit(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the operator's caches have not synced yet; retry")]
    NotSynced,
    #[error("{0}; retry")]
    NotYetVisible(String),
    #[error("{0}; retry")]
    ReviewUnavailable(#[from] cluster::ReviewUnavailable),
    #[error("{0}")]
    Internal(String),
}

impl NodeApiError {
    pub fn label(&self) -> &'static str {
        match self {
            NodeApiError::InvalidArgument(_) => "invalid_argument",
            NodeApiError::InvalidCsr { .. } => "invalid_csr",
            NodeApiError::InvalidJwk(_) => "invalid_jwk",
            NodeApiError::Unauthenticated(_) => "unauthenticated",
            NodeApiError::PermissionDenied(_) => "permission_denied",
            NodeApiError::NoIdentity => "no_identity",
            NodeApiError::ShuttingDown => "shutting_down",
            NodeApiError::UnknownEntry(_) => "unknown_entry",
            NodeApiError::OverLimit(_) => "over_limit",
            NodeApiError::ResourceExhausted(_) => "resource_exhausted",
            NodeApiError::Kube(_) => "kube",
            NodeApiError::NotSynced => "not_synced",
            NodeApiError::NotYetVisible(_) => "not_yet_visible",
            NodeApiError::ReviewUnavailable(_) => "review_unavailable",
            NodeApiError::Internal(_) => "internal",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            NodeApiError::InvalidArgument(_)
            | NodeApiError::InvalidCsr { .. }
            | NodeApiError::InvalidJwk(_) => Code::InvalidArgument,
            NodeApiError::Unauthenticated(_) => Code::Unauthenticated,
            NodeApiError::PermissionDenied(_) | NodeApiError::NoIdentity => Code::PermissionDenied,
            NodeApiError::UnknownEntry(_) => Code::NotFound,
            NodeApiError::OverLimit(_) => Code::InvalidArgument,
            NodeApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            // Transient: the caller keeps what it has and retries.
            NodeApiError::Kube(_)
            | NodeApiError::ShuttingDown
            | NodeApiError::NotSynced
            | NodeApiError::NotYetVisible(_)
            | NodeApiError::ReviewUnavailable(_) => Code::Unavailable,
            NodeApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<IssueError> for NodeApiError {
    fn from(error: IssueError) -> Self {
        match error {
            IssueError::WorkloadKey(reason) => NodeApiError::InvalidJwk(reason),
            IssueError::Signing(reason) => NodeApiError::Internal(reason),
        }
    }
}

impl From<IssueError> for Status {
    fn from(error: IssueError) -> Self {
        NodeApiError::from(error).into()
    }
}

impl From<NodeApiError> for Status {
    fn from(error: NodeApiError) -> Self {
        match error.code() {
            Code::Internal | Code::Unavailable => {
                tracing::warn!(%error, label = error.label(), "node API call failed")
            }
            _ => tracing::debug!(%error, label = error.label(), "node API call refused"),
        }
        Status::new(error.code(), error.to_string())
    }
}
