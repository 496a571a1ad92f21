//! Every way a Workload API call can fail, and the gRPC status each one maps to
//! (spiffe-specs §4.2 Appendix A and SPIRE's wording, which clients such as the `spiffe` crate
//! match on).

use tonic::{Code, Status};
use wimsey_core::SpiffeIdError;
use wimsey_core::bundle::BundleError;
use wimsey_core::jose::jwt_svid::JwtSvidError;

use crate::identity::MintError;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("security header missing from request")]
    MissingSecurityHeader,
    #[error("workload identity is not available yet")]
    NotReady,
    #[error("no identity issued")]
    NoIdentity,
    /// A requested SPIFFE ID the pod is not entitled to. The message names no identity.
    #[error("no identity issued for the requested SPIFFE ID")]
    NotEntitled,
    #[error("audience must be specified")]
    MissingAudience,
    #[error("svid must be specified")]
    MissingSvid,
    #[error("invalid requested SPIFFE ID: {0}")]
    InvalidRequestedId(SpiffeIdError),
    #[error("{0}")]
    InvalidJwtSvid(JwtSvidError),
    #[error("the WIT-SVID profile is not served to this workload")]
    WitNotServed,
    #[error("could not mint a JWT-SVID: {0}")]
    MintFailed(String),
    #[error("could not encode a bundle: {0}")]
    Bundle(BundleError),
    #[error("the Workload API server is shutting down")]
    ShuttingDown,
    #[error("too many audiences: at most {max} per request")]
    TooManyAudiences { max: usize },
    #[error("audience too long: at most {max} bytes")]
    AudienceTooLong { max: usize },
    #[error("svid too long: at most {max} bytes")]
    SvidTooLong { max: usize },
    #[error("request message of {len} bytes is over the limit of {max} bytes")]
    RequestTooLarge { len: usize, max: usize },
    #[error("too many concurrent calls to this pod's Workload API: at most {max}")]
    TooManyStreams { max: usize },
}

impl WorkloadApiError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            WorkloadApiError::MissingSecurityHeader => "missing_security_header",
            WorkloadApiError::NotReady => "not_ready",
            WorkloadApiError::NoIdentity => "no_identity",
            WorkloadApiError::NotEntitled => "not_entitled",
            WorkloadApiError::MissingAudience => "missing_audience",
            WorkloadApiError::MissingSvid => "missing_svid",
            WorkloadApiError::InvalidRequestedId(_) => "invalid_requested_id",
            WorkloadApiError::InvalidJwtSvid(_) => "invalid_jwt_svid",
            WorkloadApiError::WitNotServed => "wit_not_served",
            WorkloadApiError::MintFailed(_) => "mint_failed",
            WorkloadApiError::Bundle(_) => "bundle",
            WorkloadApiError::ShuttingDown => "shutting_down",
            WorkloadApiError::TooManyAudiences { .. } => "too_many_audiences",
            WorkloadApiError::AudienceTooLong { .. } => "audience_too_long",
            WorkloadApiError::SvidTooLong { .. } => "svid_too_long",
            WorkloadApiError::RequestTooLarge { .. } => "request_too_large",
            WorkloadApiError::TooManyStreams { .. } => "too_many_streams",
        }
    }

    /// The gRPC code clients act on: InvalidArgument is not retried; Unavailable and
    /// PermissionDenied are retried with backoff; Unimplemented is not retried. A limit on sizes
    /// of fields is InvalidArgument (the request is wrong as it is); a limit on the whole message
    /// or on concurrent calls is ResourceExhausted (go-spiffe retries it with backoff).
    pub fn code(&self) -> Code {
        match self {
            WorkloadApiError::MissingSecurityHeader
            | WorkloadApiError::MissingAudience
            | WorkloadApiError::MissingSvid
            | WorkloadApiError::InvalidRequestedId(_)
            | WorkloadApiError::InvalidJwtSvid(_)
            | WorkloadApiError::TooManyAudiences { .. }
            | WorkloadApiError::AudienceTooLong { .. }
            | WorkloadApiError::SvidTooLong { .. } => Code::InvalidArgument,
            WorkloadApiError::RequestTooLarge { .. } | WorkloadApiError::TooManyStreams { .. } => {
                Code::ResourceExhausted
            }
            WorkloadApiError::NoIdentity | WorkloadApiError::NotEntitled => Code::PermissionDenied,
            WorkloadApiError::NotReady
            | WorkloadApiError::MintFailed(_)
            | WorkloadApiError::ShuttingDown => Code::Unavailable,
            WorkloadApiError::WitNotServed => Code::Unimplemented,
            WorkloadApiError::Bundle(_) => Code::Internal,
        }
    }
}

impl From<MintError> for WorkloadApiError {
    fn from(error: MintError) -> Self {
        match error {
            MintError::NotReady => WorkloadApiError::NotReady,
            MintError::NoIdentity => WorkloadApiError::NoIdentity,
            MintError::NotEntitled => WorkloadApiError::NotEntitled,
            MintError::Failed(reason) => WorkloadApiError::MintFailed(reason),
        }
    }
}

impl From<WorkloadApiError> for Status {
    fn from(error: WorkloadApiError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_match_the_spec_and_spire() {
        let status = Status::from(WorkloadApiError::MissingSecurityHeader);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "security header missing from request");
        let status = Status::from(WorkloadApiError::NoIdentity);
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "no identity issued");
        assert!(
            Status::from(WorkloadApiError::NotEntitled)
                .message()
                .contains("no identity issued")
        );
        assert_eq!(
            Status::from(WorkloadApiError::NotReady).code(),
            Code::Unavailable
        );
        assert_eq!(
            Status::from(WorkloadApiError::WitNotServed).code(),
            Code::Unimplemented
        );
        assert_eq!(
            Status::from(WorkloadApiError::MissingAudience).message(),
            "audience must be specified"
        );
    }
}
