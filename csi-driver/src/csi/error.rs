//! The CSI plugin's one error type, mapped to CSI status codes (csi-contract.md §3.5).

use std::io;
use std::path::PathBuf;

use tonic::{Code, Status};

use crate::socket::SocketError;

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A missing or malformed request field; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume is already published at this target with different arguments.
    #[error("{0}")]
    AlreadyExists(String),
    /// The volume is published at another target.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No such volume at that path (NodeGetVolumeStats).
    #[error("{0}")]
    NotFound(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{action} {path}: {source}")]
    Mount {
        action: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("volume record {path}: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("volume socket: {0}")]
    Socket(#[from] SocketError),
    /// A symlink where the files writer expects its own directory or a new file: not followed.
    #[error("{0} is a symlink the plugin did not make; refusing to write through it")]
    Symlink(PathBuf),
    #[error("rendering volume files: {0}")]
    Render(String),
    #[error("minting a JWT-SVID for the volume files: {0}")]
    MintJwt(String),
}

impl CsiError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CsiError::InvalidArgument(_) => "invalid_argument",
            CsiError::AlreadyExists(_) => "already_exists",
            CsiError::FailedPrecondition(_) => "failed_precondition",
            CsiError::NotFound(_) => "not_found",
            CsiError::Io { .. } => "io",
            CsiError::Mount { .. } => "mount",
            CsiError::Record { .. } => "record",
            CsiError::Socket(_) => "socket",
            CsiError::Symlink(_) => "symlink",
            CsiError::Render(_) => "render",
            CsiError::MintJwt(_) => "mint_jwt",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::Io { .. }
            | CsiError::Mount { .. }
            | CsiError::Record { .. }
            | CsiError::Socket(_)
            | CsiError::Symlink(_)
            | CsiError::Render(_)
            | CsiError::MintJwt(_) => Code::Internal,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        CsiError::InvalidArgument(message.into())
    }

    pub(crate) fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| CsiError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn mount(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(nix::Error) -> Self {
        let path = path.to_owned();
        move |source| CsiError::Mount {
            action,
            path,
            source,
        }
    }
}

impl From<CsiError> for Status {
    fn from(error: CsiError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}
