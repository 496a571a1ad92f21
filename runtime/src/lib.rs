//! wimsey-runtime: the I/O edges both binaries share, so the operator and the CSI plugin log,
//! stop and answer probes the same way.
//!
//! - [`logging`]: `--log-format` and `--log-level` ([`LogArgs`]) and the subscriber they set up.
//! - [`shutdown`]: SIGTERM/SIGINT as a future, and fanned out through a `CancellationToken`.
//! - [`readiness`]: combining readiness gates (`watch::Receiver<bool>`) into one.
//! - [`admin`]: the admin HTTP server: `/livez`, `/readyz` from a gate, plus the caller's routes
//!   (`/metrics`), until shutdown.

pub mod admin;
pub mod logging;
pub mod readiness;
pub mod shutdown;

pub use admin::AdminError;
pub use logging::{LogArgs, LogFormat, init_logging};
pub use readiness::all_ready;
pub use shutdown::{cancel_on_shutdown_signal, shutdown_signal};
