//! `make bench-csi-node` (part of `make bench-csi`): the CSI node plugin in process, run as root.
//! NodePublishVolume latency per mode over the real CSI Unix socket with real mounts into a temp
//! dir, then the Workload API of one published pod (through its bind-mounted socket): first-response
//! latency of FetchX509SVID on a new connection, fetches per second with 100 concurrent clients, and
//! FetchJWTSVID on one connection, cached (the same audiences again: answered from the pod's cache)
//! and cold (a new audience set each call: a mint).
//! Identities come from the tests' in-process issuer (real SVIDs from core's `Authority`), so the
//! figures are the plugin's own cost, not the node API's. As with the real node API client, a
//! pod's keys are generated and its SVIDs signed on a spawned task, not inside NodePublishVolume.
//! kubelet and the workloads run on their own thread and runtime, as the separate processes they
//! are; the plugin keeps its own worker threads.

// A benchmark: a broken setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::TestSource;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use wimsey_csi::csi::{ManagerConfig, SOCKET_NAME, VolumeManager, serve_csi};
use wimsey_csi::identity::{IdentitySnapshot, PodIdentity};
use wimsey_csi::socket::bind_unix_socket;
use wimsey_proto::csi::v1 as csi;
use wimsey_proto::csi::v1::node_client::NodeClient;
use wimsey_proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use wimsey_proto::workload as pb;

/// How much to sample: the measurement under `cargo bench`, a smoke run under `cargo test`.
#[derive(Clone, Copy)]
struct Plan {
    publishes_per_mode: usize,
    first_response_samples: usize,
    concurrent_duration: Duration,
    /// FetchJWTSVID calls per row (cached, cold).
    jwt_samples: usize,
    /// Whether figures are judged against the targets (never for an unoptimized smoke run).
    judge: bool,
}

const MEASURE: Plan = Plan {
    publishes_per_mode: 1000,
    first_response_samples: 500,
    concurrent_duration: Duration::from_secs(3),
    jwt_samples: 1000,
    judge: true,
};

const SMOKE: Plan = Plan {
    publishes_per_mode: 20,
    first_response_samples: 20,
    concurrent_duration: Duration::from_millis(300),
    jwt_samples: 20,
    judge: false,
};
const CONCURRENT_CLIENTS: usize = 100;

fn publish_request(volume_id: &str, target: &Path, mode: &str) -> csi::NodePublishVolumeRequest {
    let context: HashMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("csi.storage.k8s.io/pod.uid", &format!("uid-{volume_id}")),
        ("csi.storage.k8s.io/serviceAccount.name", "web"),
        ("csi.storage.k8s.io/ephemeral", "true"),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            r#"{"wimsey":{"token":"pod-token","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#,
        ),
        ("mode", mode),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

fn unpublish_request(volume_id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    measure: String,
    value: String,
    target: String,
    ok: Option<bool>,
}

/// Opens a FetchX509SVID stream and waits for its first message; returns the SVID count.
async fn first_x509_response(
    client: &mut pb::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>,
) -> usize {
    let mut stream = client
        .fetch_x509svid(support::with_header(pb::X509svidRequest {}))
        .await
        .expect("FetchX509SVID")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first message")
        .expect("a message");
    first.svids.len()
}

/// NodePublishVolume p50 and p99 for one mode, the p99 judged against `target_p99`. This is the
/// only place publish latency is judged: the tests assert what publishing does, not how fast.
async fn publish_latency(
    plan: Plan,
    node: &mut NodeClient<Channel>,
    dir: &Path,
    mode: &str,
    target_p99: Duration,
    rows: &mut Vec<Row>,
) {
    let publishes = plan.publishes_per_mode;
    let mut samples = Vec::with_capacity(publishes);
    for i in 0..publishes {
        let volume_id = format!("bench-{mode}-{i}");
        let target = dir.join(&volume_id);
        let request = publish_request(&volume_id, &target, mode);
        let start = Instant::now();
        node.node_publish_volume(request).await.expect("publish");
        samples.push(start.elapsed());
        node.node_unpublish_volume(unpublish_request(&volume_id, &target))
            .await
            .expect("unpublish");
    }
    samples.sort();
    let (p50, p99) = (percentile(&samples, 50), percentile(&samples, 99));
    rows.push(Row {
        measure: format!("NodePublishVolume {mode} p50 ({publishes} publishes)"),
        value: ms(p50),
        target: "-".into(),
        ok: None,
    });
    rows.push(Row {
        measure: format!("NodePublishVolume {mode} p99 ({publishes} publishes)"),
        value: ms(p99),
        target: format!("< {}", ms(target_p99)),
        ok: plan.judge.then_some(p99 < target_p99),
    });
}

/// The plugin under test: its volume manager and CSI server, on the runtime that `main` keeps
/// running in the background (the plugin's own worker threads, as in the real process).
struct Plugin {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    csi_socket: std::path::PathBuf,
    source: Arc<TestSource>,
    manager: Arc<VolumeManager<TestSource>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: CancellationToken,
}

async fn start_plugin() -> Plugin {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = TestSource::issuing_in_background();
    let manager = Arc::new(
        VolumeManager::new(
            Arc::clone(&source),
            ManagerConfig {
                state_dir: dir.path().join("state"),
                spire_agent_socket_dir: None,
                files_tmpfs_size: "1m".into(),
                files_tmpfs_inodes: wimsey_csi::csi::manager::DEFAULT_FILES_TMPFS_INODES,
                workload_api: Default::default(),
            },
        )
        .expect("manager"),
    );
    manager.restore().await.expect("restore");
    let csi_socket = dir.path().join("csi.sock");
    let listener = bind_unix_socket(&csi_socket, 0o600).expect("bind CSI socket");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_csi(
        listener,
        Arc::clone(&manager),
        "bench-node".into(),
        wimsey_runtime::readiness::always_ready(),
        shutdown.clone(),
    ));
    Plugin {
        root: dir.path().to_owned(),
        _dir: dir,
        csi_socket,
        source,
        manager,
        server,
        shutdown,
    }
}

/// Everything kubelet and the workloads do, from their own thread and runtime: kubelet and the
/// pods are other processes, so their scheduling must not share the plugin's worker threads.
async fn measure(plan: Plan, root: &Path, csi_socket: &Path, source: &TestSource) -> Vec<Row> {
    let dir = root;
    let mut node = NodeClient::new(support::unix_channel(csi_socket).await);
    let mut rows = Vec::new();

    // Warm-up: first mount, first tmpfs, lazy statics; not counted.
    for mode in ["workload-api", "files"] {
        let target = dir.join(format!("warm-{mode}"));
        node.node_publish_volume(publish_request(&format!("warm-{mode}"), &target, mode))
            .await
            .expect("warm-up publish");
        node.node_unpublish_volume(unpublish_request(&format!("warm-{mode}"), &target))
            .await
            .expect("warm-up unpublish");
    }
    publish_latency(
        plan,
        &mut node,
        dir,
        "workload-api",
        Duration::from_millis(5),
        &mut rows,
    )
    .await;
    publish_latency(
        plan,
        &mut node,
        dir,
        "files",
        Duration::from_millis(20),
        &mut rows,
    )
    .await;

    // One published pod; clients go through its bind mount, as a workload would.
    let target = dir.join("pod-target");
    node.node_publish_volume(publish_request("bench-pod", &target, "workload-api"))
        .await
        .expect("publish pod volume");
    let pod_socket = target.join(SOCKET_NAME);
    // The source issues on a spawned task, as the node API client does: wait for it.
    let mut snapshots = source.pod("uid-bench-pod").current();
    tokio::time::timeout(
        Duration::from_secs(10),
        snapshots.wait_for(|s| matches!(**s, IdentitySnapshot::Issued(_))),
    )
    .await
    .expect("the bench pod's identities within 10 s")
    .expect("source open");

    let first_response_samples = plan.first_response_samples;
    let mut samples = Vec::with_capacity(first_response_samples);
    for _ in 0..first_response_samples {
        let start = Instant::now();
        let mut client = support::raw_client(&pod_socket).await;
        assert_eq!(first_x509_response(&mut client).await, 1);
        samples.push(start.elapsed());
    }
    samples.sort();
    let p50 = percentile(&samples, 50);
    rows.push(Row {
        measure: format!(
            "FetchX509SVID first response p50 (new connection, {first_response_samples} samples)"
        ),
        value: ms(p50),
        target: "< 1.000 ms".into(),
        ok: plan.judge.then_some(p50 < Duration::from_millis(1)),
    });
    rows.push(Row {
        measure: "FetchX509SVID first response p99".into(),
        value: ms(percentile(&samples, 99)),
        target: "-".into(),
        ok: None,
    });

    // 100 clients, each on its own connection, each opening stream after stream and taking the
    // first response, for a fixed window.
    let fetches = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(CONCURRENT_CLIENTS);
    for _ in 0..CONCURRENT_CLIENTS {
        clients.push(support::raw_client(&pod_socket).await);
    }
    let start = Instant::now();
    let deadline = start + plan.concurrent_duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let fetches = Arc::clone(&fetches);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    assert_eq!(first_x509_response(&mut client).await, 1);
                    fetches.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    let elapsed = start.elapsed();
    let total = fetches.load(Ordering::Relaxed);
    rows.push(Row {
        measure: format!(
            "FetchX509SVID/s, {CONCURRENT_CLIENTS} concurrent clients ({total} in {:.2} s)",
            elapsed.as_secs_f64()
        ),
        value: format!("{:.0}", total as f64 / elapsed.as_secs_f64()),
        target: "-".into(),
        ok: None,
    });

    jwt_svid_latency(plan, &pod_socket, &mut rows).await;

    node.node_unpublish_volume(unpublish_request("bench-pod", &target))
        .await
        .expect("unpublish pod volume");
    rows
}

/// One FetchJWTSVID call; returns the token.
async fn fetch_jwt_svid(
    client: &mut pb::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>,
    audience: &str,
) -> String {
    let response = client
        .fetch_jwtsvid(support::with_header(pb::JwtsvidRequest {
            audience: vec![audience.to_owned()],
            spiffe_id: String::new(),
        }))
        .await
        .expect("FetchJWTSVID")
        .into_inner();
    assert_eq!(response.svids.len(), 1);
    response.svids[0].svid.clone()
}

/// FetchJWTSVID p50/p99 on one connection to the pod's socket: the same audience again (from
/// the pod's JWT-SVID cache), and a new audience each call (a mint; with the in-process issuer,
/// so no node API round trip is in the figure).
async fn jwt_svid_latency(plan: Plan, pod_socket: &Path, rows: &mut Vec<Row>) {
    let samples_per_row = plan.jwt_samples;
    let mut client = support::raw_client(pod_socket).await;
    let warm = fetch_jwt_svid(&mut client, "bench-cached").await;
    let mut cached = Vec::with_capacity(samples_per_row);
    for _ in 0..samples_per_row {
        let start = Instant::now();
        let token = fetch_jwt_svid(&mut client, "bench-cached").await;
        cached.push(start.elapsed());
        assert_eq!(token, warm, "answered from the cache");
    }
    let mut cold = Vec::with_capacity(samples_per_row);
    for i in 0..samples_per_row {
        let audience = format!("bench-cold-{i}");
        let start = Instant::now();
        let token = fetch_jwt_svid(&mut client, &audience).await;
        cold.push(start.elapsed());
        assert_ne!(token, warm);
    }
    for (name, samples, target_p50) in [
        ("cached", &mut cached, Duration::from_millis(1)),
        ("cold", &mut cold, Duration::from_millis(5)),
    ] {
        samples.sort();
        let p50 = percentile(samples, 50);
        rows.push(Row {
            measure: format!("FetchJWTSVID {name} p50 ({samples_per_row} calls, one connection)"),
            value: ms(p50),
            target: format!("< {}", ms(target_p50)),
            ok: plan.judge.then_some(p50 < target_p50),
        });
        rows.push(Row {
            measure: format!("FetchJWTSVID {name} p99"),
            value: ms(percentile(samples, 99)),
            target: "-".into(),
            ok: None,
        });
    }
}

fn main() {
    // `cargo test --all-targets` runs this binary too, unoptimized and without `--bench`: then a
    // short smoke run checks that every step works, and judges nothing.
    let plan = if std::env::args().any(|a| a == "--bench") {
        MEASURE
    } else {
        SMOKE
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let plugin = runtime.block_on(start_plugin());
    let (root, csi_socket, source) = (
        plugin.root.clone(),
        plugin.csi_socket.clone(),
        Arc::clone(&plugin.source),
    );
    let rows = std::thread::spawn(move || {
        let clients = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        clients.block_on(measure(plan, &root, &csi_socket, &source))
    })
    .join()
    .expect("client thread");
    runtime.block_on(async {
        plugin.shutdown.cancel();
        plugin.server.await.expect("join").expect("CSI server");
        plugin.manager.shutdown().await;
    });
    let width = rows.iter().map(|r| r.measure.len()).max().unwrap_or(0);
    println!();
    println!(
        "{:<width$}  {:>12}  {:>12}  result",
        "measure", "value", "target"
    );
    for row in &rows {
        let result = match row.ok {
            Some(true) => "ok",
            Some(false) => "MISS",
            None => "-",
        };
        println!(
            "{:<width$}  {:>12}  {:>12}  {result}",
            row.measure, row.value, row.target
        );
    }
    println!(
        "(Workload API clients: raw tonic client of wimsey_proto::workload with the security header;"
    );
    println!(
        " JWT-SVIDs minted by the in-process test issuer: a cold call's node API round trip is not in it)"
    );
    if !plan.judge {
        println!(
            "smoke run (unoptimized, few samples): not a measurement; `make bench-csi-node` measures"
        );
    }
}
