//! The admin HTTP server: `/livez`, `/readyz` (after every cache synced) and `/metrics`
//! (Prometheus text); and the debug server, on a loopback-only address of its own, with
//! `GET /debug/entries` (the entry store as JSON, `?pod=<uid or ns/name>`, `?node=<name>`), plus
//! the client `wimsey-operator entries` uses. The entries list every workload identity and
//! where it runs, so they are reachable only from inside the pod (`kubectl port-forward`
//! connects through the pod's loopback).

pub mod client;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_runtime::AdminError;

use crate::store::{EntryStore, PodRecord, StoredEntry};
pub use metrics::Metrics;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: EntryStore,
    pub metrics: Arc<Metrics>,
    pub ready: watch::Receiver<bool>,
}

/// `/debug/entries` filters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct EntriesQuery {
    /// A pod UID or `namespace/name`.
    pub pod: Option<String>,
    pub node: Option<String>,
}

/// Probes (the shared runtime's `/livez`, and `/readyz` from `state.ready`) and metrics.
pub fn router(state: AdminState) -> Router {
    let ready = state.ready.clone();
    let metrics = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(state);
    wimsey_runtime::admin::router(ready, metrics)
}

/// `/debug/entries`, for the loopback-only debug address.
pub fn debug_router(state: AdminState) -> Router {
    Router::new()
        .route("/debug/entries", get(debug_entries))
        .with_state(state)
}

/// Serves probes and metrics until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    wimsey_runtime::admin::serve_router(listener, router(state), shutdown).await
}

/// Serves `/debug/entries` until `shutdown`. `listener` must be bound to a loopback address
/// (see [`loopback_addr`]).
pub async fn serve_debug(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    wimsey_runtime::admin::serve_router(listener, debug_router(state), shutdown).await
}

/// Parses the debug server's address, which must be a loopback one (`127.0.0.1:8081`, `[::1]:8081`).
pub fn loopback_addr(value: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = value
        .parse()
        .map_err(|e| format!("{value:?} is not an address: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{value:?} is not a loopback address: /debug/entries lists every workload identity, \
             use 127.0.0.1 or [::1] and `kubectl port-forward`"
        ));
    }
    Ok(addr)
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    wimsey_runtime::admin::metrics_response(state.metrics.encode())
}

async fn debug_entries(
    State(state): State<AdminState>,
    Query(query): Query<EntriesQuery>,
) -> Response {
    axum::Json(entries_json(&state.store, &query)).into_response()
}

fn entry_json(stored: &StoredEntry) -> Value {
    let entry = &stored.entry;
    json!({
        "id": stored.id,
        "spiffeID": entry.spiffe_id.as_str(),
        "parentID": entry.parent_id.as_str(),
        "selectors": entry.selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "x509SVIDTTLSeconds": entry.x509_svid_ttl.as_secs(),
        "jwtSVIDTTLSeconds": entry.jwt_svid_ttl.as_secs(),
        "federatesWith": entry.federates_with.iter().map(|td| td.name().to_owned()).collect::<Vec<_>>(),
        "admin": entry.admin,
        "downstream": entry.downstream,
        "dnsNames": entry.dns_names,
        "hint": entry.hint,
        "storeSVID": entry.store_svid,
        "owner": {"kind": stored.owner.kind.as_str(), "name": stored.owner.name},
    })
}

fn pod_json(pod: &PodRecord) -> Value {
    json!({
        "uid": pod.uid,
        "namespace": pod.namespace,
        "name": pod.name,
        "serviceAccount": pod.service_account,
        "nodeName": pod.node_name,
        "entries": pod.entries.iter().map(entry_json).collect::<Vec<_>>(),
    })
}

/// The store as JSON: `{"pods": [...], "static": [...]}`. A filter narrows the pods and leaves
/// out the static entries (they belong to no pod or node).
pub fn entries_json(store: &EntryStore, query: &EntriesQuery) -> Value {
    let pods: Vec<Value> = match (&query.pod, &query.node) {
        (None, None) => store.all_pods().iter().map(|p| pod_json(p)).collect(),
        (pod, node) => {
            let candidates = match node {
                Some(node) => store.pods_on_node(node),
                None => store.all_pods(),
            };
            candidates
                .iter()
                .filter(|p| {
                    pod.as_ref().is_none_or(|wanted| {
                        p.uid == *wanted || format!("{}/{}", p.namespace, p.name) == *wanted
                    })
                })
                .map(|p| pod_json(p))
                .collect()
        }
    };
    let statics: Vec<Value> = if query.pod.is_none() && query.node.is_none() {
        store.static_entries().iter().map(entry_json).collect()
    } else {
        Vec::new()
    };
    json!({"pods": pods, "static": statics})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_address_must_be_loopback() {
        assert_eq!(
            loopback_addr("127.0.0.1:8081").unwrap(),
            "127.0.0.1:8081".parse().unwrap()
        );
        assert!(loopback_addr("[::1]:8081").is_ok());
        for bad in [
            "0.0.0.0:8081",
            "[::]:8081",
            "10.0.0.5:8081",
            "localhost:8081",
        ] {
            assert!(loopback_addr(bad).is_err(), "{bad}");
        }
        assert!(loopback_addr("0.0.0.0:1").unwrap_err().contains("loopback"));
    }
}
