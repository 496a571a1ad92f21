//! `make bench-spire` (part of it): the `spire` backend's sync against a real SPIRE Server v1.13.3
//! with its SQLite datastore, at 10k and 50k pod entries, beside the floor SPIRE itself sets (a
//! raw client of ours sending the same entries with `BatchCreateEntry`, same batch size, to a
//! fresh server of its own):
//! - cold convergence: desired entries in the store -> all of them in SPIRE, and its ratio to
//!   the floor;
//! - a single pod added -> its entry in SPIRE, p50/p99 over 200 pods, at that size, beside one
//!   entry created by the raw client at the same size;
//! - SPIRE API calls while nothing changes (a 30 s window, `IDLE_SECONDS` to change it);
//! - this process's resident memory growth (store + sync mirror) per 10k entries.
//!
//! The sync alone, with no reconciler or API server in front: `spire_cp.rs` (also in `make
//! bench-spire`) measures the operator binary with both. spire-controller-manager's figures are
//! printed beside ours as published, not measured here.

// A benchmark: a broken setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::entries::{Entry, EntryOwner, OwnerKind, Selector};
use wimsey_core::entry_sync::Ownership;
use wimsey_core::entry_sync::Stored;
use wimsey_core::spiffe_id::SpiffeId;
use wimsey_operator::spire_entries::{BatchLimits, SpireEntries, from_stored};
use wimsey_operator::spire_sync::{BackendState, SpireSync, SyncSettings};
use wimsey_operator::store::{EntryStore, PodRecord, StoredEntry};

#[path = "../tests/support/spire.rs"]
mod spire;

const TD: &str = "bench.test";
const PREFIX: &str = "wimsey.";
const SINGLES: usize = 200;

fn entry(n: usize) -> Entry {
    let id = |p: &str| SpiffeId::parse(&format!("spiffe://{TD}{p}")).unwrap();
    Entry {
        spiffe_id: id(&format!("/ns/ns-{}/sa/app-{n}", n % 500)),
        parent_id: id(&format!("/spire/agent/k8s_psat/bench/node-{}", n % 100)),
        selectors: vec![
            Selector::new("k8s", &format!("pod-uid:00000000-0000-4000-8000-{n:012}")),
            Selector::new("k8s", &format!("ns:ns-{}", n % 500)),
        ],
        x509_svid_ttl: Duration::from_secs(3600),
        jwt_svid_ttl: Duration::from_secs(300),
        federates_with: Vec::new(),
        admin: false,
        downstream: false,
        dns_names: vec![format!("app-{n}.ns-{}.svc", n % 500)],
        hint: String::new(),
        store_svid: false,
    }
}

fn record(n: usize) -> (String, Option<PodRecord>) {
    let uid = format!("uid-{n}");
    let record = PodRecord {
        uid: uid.clone(),
        namespace: format!("ns-{}", n % 500),
        name: format!("app-{n}"),
        service_account: format!("app-{n}"),
        node_name: format!("node-{}", n % 100),
        entries: vec![StoredEntry {
            id: String::new(),
            entry: entry(n),
            owner: EntryOwner {
                kind: OwnerKind::ClusterSpiffeId,
                name: format!("spec-{}", n % 5),
                uid: "uid".into(),
                creation_timestamp: 0,
                deletion_timestamp: None,
            },
        }],
    };
    (uid, Some(record))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn start_server() -> spire::SpireServer {
    spire::SpireServer::start(spire::SpireOptions::new(TD)).expect("start spire-server")
}

async fn synced_with(state: &mut watch::Receiver<BackendState>, owned: usize) {
    state
        .wait_for(|s| matches!(s, BackendState::Synced { owned: o, .. } if *o == owned))
        .await
        .unwrap();
}

struct Figures {
    floor: Duration,
    converge: Duration,
    /// One entry created by the raw client at this size.
    floor_p50: Duration,
    floor_p99: Duration,
    p50: Duration,
    p99: Duration,
    idle_calls: u64,
    idle_seconds: u64,
    rss_per_10k: f64,
}

async fn run(size: usize, idle: Duration) -> Figures {
    // The floor: the same entries straight to a fresh server, same batch size.
    let floor_server = tokio::task::spawn_blocking(start_server).await.unwrap();
    let raw = SpireEntries::connect_lazy(floor_server.socket_path(), BatchLimits::default());
    let entries: Vec<_> = (0..size)
        .map(|n| {
            from_stored(&Stored {
                id: format!("{PREFIX}{n}"),
                entry: entry(n),
            })
        })
        .collect();
    let started = Instant::now();
    raw.create(entries).await.unwrap();
    let floor = started.elapsed();
    // SPIRE's own cost of one more entry at this size: a single BatchCreateEntry.
    let mut raw_singles = Vec::with_capacity(SINGLES);
    for n in size..size + SINGLES {
        let one = from_stored(&Stored {
            id: format!("{PREFIX}{n}"),
            entry: entry(n),
        });
        let at = Instant::now();
        raw.create(vec![one]).await.unwrap();
        raw_singles.push(at.elapsed());
    }
    raw_singles.sort();
    drop(floor_server);

    let server = tokio::task::spawn_blocking(start_server).await.unwrap();
    let client = SpireEntries::connect_lazy(server.socket_path(), BatchLimits::default());
    let store = EntryStore::new();
    let rss_before = rss_mib();
    let (_leader, leader) = watch::channel(true);
    let (sync, mut state) = SpireSync::new(
        client.clone(),
        store.clone(),
        SyncSettings::new(Ownership::new(PREFIX)),
        leader,
        watch::channel(true).1,
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sync.run(shutdown.clone()));
    synced_with(&mut state, 0).await;
    let started = Instant::now();
    store.set_pods((0..size).map(record));
    synced_with(&mut state, size).await;
    let converge = started.elapsed();
    let rss_per_10k = (rss_mib() - rss_before) * 10_000.0 / size as f64;

    let mut latencies = Vec::with_capacity(SINGLES);
    for n in size..size + SINGLES {
        let at = Instant::now();
        store.set_pods([record(n)]);
        synced_with(&mut state, n + 1).await;
        latencies.push(at.elapsed());
    }
    latencies.sort();

    let before: u64 = client.calls().snapshot().iter().sum();
    tokio::time::sleep(idle).await;
    let idle_calls = client.calls().snapshot().iter().sum::<u64>() - before;
    shutdown.cancel();
    task.await.unwrap();
    Figures {
        floor,
        converge,
        floor_p50: quantile(&raw_singles, 0.50),
        floor_p99: quantile(&raw_singles, 0.99),
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        idle_calls,
        idle_seconds: idle.as_secs(),
        rss_per_10k,
    }
}

fn main() {
    // `cargo test --all-targets` runs this binary too, unoptimized and without `--bench`: a small
    // run when a SPIRE Server is at hand, else nothing (`make test-spire-interop` covers the sync).
    if !std::env::args().any(|a| a == "--bench") {
        if std::env::var_os("WIMSEY_SPIRE_SERVER").is_none() {
            println!(
                "bench-spire: not run here (no WIMSEY_SPIRE_SERVER); `make bench-spire` runs it"
            );
            return;
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let f = runtime.block_on(run(300, Duration::from_secs(1)));
        assert_eq!(f.idle_calls, 0);
        println!("bench-spire smoke run (300 entries) ok; `make bench-spire` measures");
        return;
    }
    let idle = Duration::from_secs(
        std::env::var("IDLE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("spire backend sync vs SPIRE Server v1.13.3 (SQLite), batches of 50, this machine:");
    println!(
        "{:>8} | {:>9} | {:>9} | {:>6} | {:>21} | {:>21} | {:>12} | {:>9}",
        "entries",
        "floor",
        "wimsey",
        "ratio",
        "add one: floor p50/99",
        "add one: wimsey p50/99",
        "idle calls",
        "RSS/10k"
    );
    for size in [10_000, 50_000] {
        let f = runtime.block_on(run(size, idle));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>8} | {:>8.2}s | {:>8.2}s | {:>6.2} | {:>8.1} / {:>7.1} ms | {:>8.1} / {:>7.1} ms | {:>3} in {:>3} s | {:>5.1} MiB",
            size,
            f.floor.as_secs_f64(),
            f.converge.as_secs_f64(),
            f.floor.as_secs_f64() / f.converge.as_secs_f64(),
            ms(f.floor_p50),
            ms(f.floor_p99),
            ms(f.p50),
            ms(f.p99),
            f.idle_calls,
            f.idle_seconds,
            f.rss_per_10k,
        );
    }
    println!(
        "targets: ratio (floor/wimsey) >= 0.8; add p99 < 100 ms at 50k; 0 idle calls; < 60 MiB per 10k pods"
    );
    println!(
        "spire-controller-manager v0.6.6, as published in issue 14 (not measured here): 10k pods / 15,950 entries converged in 37.7 s from a cold start; pod create -> entry p50 1.09 s; idle, SPIRE Server burned 31.8 CPU s every 3 min on its list calls; >= 512 MiB at ~4k pods"
    );
}
