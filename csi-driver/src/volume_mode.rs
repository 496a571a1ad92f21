//! The three kinds of volume the plugin serves, shared by the CSI code and the metrics.

use serde::{Deserialize, Serialize};

/// How a volume gives its pod an identity (the volume attribute `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeMode {
    /// A per-pod Workload API socket in a directory bind-mounted read-only at the target.
    WorkloadApi,
    /// Rotating SVID files on a tmpfs, bind-mounted read-only at the target.
    Files,
    /// A read-only bind mount of the SPIRE agent socket directory.
    SpireAgent,
}

impl VolumeMode {
    /// Every mode, for per-mode metrics.
    pub const ALL: [Self; 3] = [Self::WorkloadApi, Self::Files, Self::SpireAgent];

    /// The mode named by the volume attribute `mode`; `None` for an unknown name.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkloadApi => "workload-api",
            Self::Files => "files",
            Self::SpireAgent => "spire-agent",
        }
    }
}
