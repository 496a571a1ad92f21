//! The SPIFFE Workload API for one pod (spiffe-specs §4).
//!
//! What it serves is the pod's [`crate::identity::IdentitySnapshot`], read through
//! [`crate::identity::PodIdentity`].
//!
//! - [`responses`]: plain functions from a snapshot to Workload API messages.
//! - [`service`]: the tonic service (security header, streaming, error mapping).
//! - [`limits`]: the named bounds on what a pod may ask (streams, sizes, audiences) and their
//!   checks; [`admission`]: the layer that enforces the stream and request size bounds.
//! - [`call_metrics`]: the layer that counts calls by RPC and code, and open streams.
//! - [`jwt_cache`]: minted JWT-SVIDs reused per pod until their half-life.
//! - [`server`]: the pod's gRPC server (Workload API, reflection, limits) until shutdown.

pub mod admission;
pub mod call_metrics;
pub mod error;
pub mod jwt_cache;
pub mod limits;
pub mod responses;
pub mod server;
pub mod service;

pub use error::WorkloadApiError;
pub use limits::WorkloadApiLimits;
pub use server::{ServeError, serve_workload_api, serve_workload_api_service};
pub use service::WorkloadApiService;
