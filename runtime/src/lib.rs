//! wimsey-runtime: the I/O edges both binaries share, so the operator and the CSI plugin log,
//! stop, answer probes and verify SVIDs over TLS the same way.
//!
//! - [`logging`]: `--log-format` and `--log-level` ([`LogArgs`]) and the subscriber they set up.
//! - [`shutdown`]: SIGTERM/SIGINT as a future, and fanned out through a `CancellationToken`.
//! - [`readiness`]: combining readiness gates (`watch::Receiver<bool>`) into one.
//! - [`admin`]: the admin HTTP server: `/livez`, `/readyz` from a gate, plus the caller's routes
//!   (`/metrics`), until shutdown.
//! - [`svid_tls`]: the rustls crypto provider, [`SvidServerVerifier`] (a server must present an
//!   X.509-SVID of one SPIFFE ID) and the handshake-signature checks custom verifiers delegate.

pub mod admin;
pub mod logging;
pub mod readiness;
pub mod shutdown;
pub mod svid_tls;

pub use admin::AdminError;
pub use logging::{LogArgs, LogFormat, init_logging};
pub use readiness::all_ready;
pub use shutdown::{cancel_on_shutdown_signal, shutdown_signal};
pub use svid_tls::SvidServerVerifier;
