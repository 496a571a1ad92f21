//! The CSI node plugin: Identity and Node services, the volume manager behind them, and kubelet
//! plugin registration.
//!
//! - [`request`]: validation of CSI requests into plain values (pure).
//! - [`manager`]: publish/unpublish/restore per mode (`workload-api`, `files`, `spire-agent`).
//! - [`files`]: the files-mode contents and the atomic writer.
//! - [`records`]: per-volume JSON records so a restarted plugin serves every volume again.
//! - [`mounts`]: bind/tmpfs mounts and mount-point detection.
//! - [`services`]: the tonic Identity and Node services; [`serve_csi`] runs them on a socket.
//! - [`registration`]: `pluginregistration.Registration` for kubelet, behind
//!   [`crate::socket::authority`]'s rewrite of the socket-path `:authority` kubelet sends.

pub mod error;
pub mod files;
pub mod manager;
pub mod mounts;
pub mod records;
pub mod registration;
pub mod request;
pub mod services;

pub use crate::volume_mode::VolumeMode;
pub use error::CsiError;
pub use manager::{ManagerConfig, SOCKET_NAME, VolumeManager};
pub use registration::{RegistrationService, registration_socket, serve_registration};
pub use services::{DRIVER_NAME, IdentityService, NodeService, serve_csi};
