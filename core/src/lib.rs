//! wimsey-core: the SPIFFE and WIMSE identity domain as plain functions over plain values.
//!
//! Nothing here does network or file I/O, talks to Kubernetes, or reads the clock: callers pass
//! the current time in, so every rule is testable with fixed inputs.

pub mod backoff;
pub mod bundle;
pub mod dns_name;
pub mod entries;
pub mod entry_sync;
pub mod federation;
pub mod issuance;
pub mod jose;
pub mod keys;
pub mod oidc;
pub mod renewal;
pub mod reserved;
pub mod rotation;
pub mod spiffe_id;
pub mod template;
pub mod token_bucket;
pub mod wimse_id;
pub mod x509;

pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
