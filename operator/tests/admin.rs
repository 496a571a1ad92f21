//! The admin server over real HTTP on a loopback port: probes, metrics, `/debug/entries` and the
//! client `wimsey-operator entries` uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::entries::{Entry, EntryOwner, OwnerKind, Selector};
use wimsey_core::spiffe_id::SpiffeId;
use wimsey_operator::admin::client::{entries_table, fetch_entries};
use wimsey_operator::admin::{AdminState, Metrics, serve, serve_debug};
use wimsey_operator::store::{EntryStore, PodRecord, StoredEntry};

fn stored(id: &str, spiffe_id: &str, uid: &str) -> StoredEntry {
    StoredEntry {
        id: id.into(),
        entry: Entry {
            spiffe_id: SpiffeId::parse(spiffe_id).unwrap(),
            parent_id: SpiffeId::parse("spiffe://example.org/spire/agent/k8s_psat/c/node-uid")
                .unwrap(),
            selectors: vec![Selector::new("k8s", &format!("pod-uid:{uid}"))],
            x509_svid_ttl: Duration::ZERO,
            jwt_svid_ttl: Duration::ZERO,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            dns_names: vec!["web.shop.svc".into()],
            hint: String::new(),
            store_svid: false,
        },
        owner: EntryOwner {
            kind: OwnerKind::ClusterSpiffeId,
            name: "web".into(),
            uid: "spec-uid".into(),
            creation_timestamp: 1,
            deletion_timestamp: None,
        },
    }
}

fn record(uid: &str, name: &str, node: &str) -> PodRecord {
    PodRecord {
        uid: uid.into(),
        namespace: "shop".into(),
        name: name.into(),
        service_account: "web".into(),
        node_name: node.into(),
        entries: vec![stored(
            &format!("wimsey.{uid}"),
            &format!("spiffe://example.org/shop/{name}"),
            uid,
        )],
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn probes_metrics_and_entries_over_http() {
    let store = EntryStore::new();
    store.set_pod("u1", Some(record("u1", "web-1", "n1")));
    store.set_pod("u2", Some(record("u2", "web-2", "n2")));
    let metrics = Arc::new(Metrics::new());
    metrics.set_entries(2, 0, 0);
    metrics.set_leader(true);
    metrics.observe_phase("render", 0.001);
    let (ready_tx, ready) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let state = AdminState {
        store,
        metrics,
        ready,
    };
    let server = tokio::spawn(serve(listener, state.clone(), shutdown.clone()));
    let debug_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let debug_addr = debug_listener.local_addr().unwrap();
    let debug_server = tokio::spawn(serve_debug(debug_listener, state, shutdown.clone()));

    assert_eq!(get(addr, "/livez").await.0, 200);
    assert_eq!(
        get(addr, "/readyz").await.0,
        503,
        "not ready before the caches sync"
    );
    ready_tx.send_replace(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "wimsey_operator_entries{state=\"set\"} 2",
        "wimsey_operator_is_leader 1",
        "wimsey_operator_reconcile_duration_seconds_count{phase=\"render\"} 1",
        "wimsey_operator_queue_depth",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }

    // The entries are not on the admin address (which the pod network reaches), only on the
    // loopback debug address.
    assert_eq!(get(addr, "/debug/entries").await.0, 404);
    let (status, body) = get(debug_addr, "/debug/entries").await;
    assert_eq!(status, 200);
    assert!(body.contains("web-1"), "{body}");
    assert_eq!(
        get(debug_addr, "/metrics").await.0,
        404,
        "debug serves entries only"
    );
    let admin = format!("http://{debug_addr}");
    let all = fetch_entries(&admin, None, None).await.unwrap();
    assert_eq!(all["pods"].as_array().unwrap().len(), 2);
    let by_name = fetch_entries(&admin, Some("shop/web-2"), None)
        .await
        .unwrap();
    assert_eq!(by_name["pods"][0]["uid"], "u2");
    assert_eq!(
        by_name["pods"][0]["entries"][0]["selectors"][0],
        "k8s:pod-uid:u2"
    );
    let by_uid = fetch_entries(&admin, Some("u1"), None).await.unwrap();
    assert_eq!(by_uid["pods"][0]["name"], "web-1");
    let by_node = fetch_entries(&admin, None, Some("n2")).await.unwrap();
    assert_eq!(by_node["pods"].as_array().unwrap().len(), 1);
    assert_eq!(
        by_node["pods"][0]["entries"][0]["spiffeID"],
        "spiffe://example.org/shop/web-2"
    );

    let table = entries_table(&all);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("POD"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].contains("shop/web-1") && lines[1].contains("wimsey.u1"),
        "{table}"
    );

    assert!(fetch_entries("ftp://x", None, None).await.is_err());
    shutdown.cancel();
    server.await.unwrap().unwrap();
    debug_server.await.unwrap().unwrap();
}
