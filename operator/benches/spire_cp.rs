//! `make bench-spire` (the control-plane part): the real `wimsey-operator` binary (built
//! `--release`, run as a child process the way a user runs it: `run --backend spire` with a
//! kubeconfig) between a real kube-apiserver + etcd of its own and a real SPIRE Server v1.13.3
//! with its SQLite datastore. 500 namespaces, 100 fake nodes (Node objects, no kubelet), 10k and
//! 50k realistic pods (`support/mod.rs`, the shape `make bench-operator` uses) bound to them by
//! `spec.nodeName`, and the five ClusterSPIFFEIDs of `make bench-operator`.
//!
//! What is measured, per size, each on a fresh API server and SPIRE Server:
//! - convergence: from the first ClusterSPIFFEID POST (the pods are already in the API server
//!   and the operator is ready and Lease holder) to SPIRE's `CountEntries` answering the number
//!   of entries the pods render to (computed in this process with the product's renderer;
//!   polled every 50 ms on a client of our own, not through the operator's socket);
//! - the floor: the very same entries (listed back from SPIRE afterwards) created with a raw
//!   client's `BatchCreateEntry`, batches of 50 as the operator sends, into a fresh SPIRE
//!   Server with nothing else running; the ratio is floor / ours;
//! - single pod create: a pod POSTed to the API server -> its entry listed by SPIFFE ID in
//!   SPIRE (polled every 5 ms), p50/p99 over `SINGLES` pods (default 100), at that size;
//!   beside it one raw one-entry `BatchCreateEntry` at that size on the floor server;
//! - idle: SPIRE calls (every gRPC call the operator makes, counted at a proxy on its socket)
//!   and the operator's CPU time (utime + stime from /proc/<pid>/stat) over `IDLE_SECONDS`
//!   (default 60) after everything settled;
//! - memory: the operator's VmRSS on an empty cluster (the baseline: namespaces and nodes, no
//!   pods), after convergence, and its VmHWM; per 10k pods = (after - baseline) / (pods / 10k).
//!
//! Not timed: creating the pods in the API server (32 POSTs in flight, then a status patch
//! each, so the objects are as large as real Running pods); the operator's start and initial
//! list (before the ClusterSPIFFEIDs exist). spire-controller-manager's published figures are
//! printed beside ours, labelled as not measured here.

// A benchmark: a broken setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "support/call_counter.rs"]
mod call_counter;
#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "../tests/support/spire.rs"]
mod spire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use call_counter::CallCounter;
use control_plane::{ControlPlane, Proc, free_port, http_get};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{NAMESPACES, NODES, REPLICAS};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use wimsey_core::entries::RenderConfig;
use wimsey_core::spiffe_id::TrustDomain;
use wimsey_operator::crd::ClusterSPIFFEID;
use wimsey_operator::reconcile::ClusterState;
use wimsey_operator::reconcile::SpecInput;
use wimsey_operator::reconcile::resource_meta::ResourceMeta;
use wimsey_operator::spire_entries::{BatchLimits, Outcome, SpireEntries};
use wimsey_operator::store::EntryStore;
use wimsey_operator::views;
use wimsey_proto::spire::entry::v1::entry_client::EntryClient;
use wimsey_proto::spire::entry::v1::list_entries_request::Filter;
use wimsey_proto::spire::entry::v1::{ListEntriesRequest, RegistrationEntry, SpiffeId};

const TD: &str = "example.org";
const CLUSTER: &str = "bench";
const PREFIX: &str = "wimsey";
const PARTNER_TD: &str = "partner.example";
/// Pod creates in flight while the cluster is filled.
const CREATE_CONCURRENCY: usize = 32;

/// The five ClusterSPIFFEIDs of `make bench-operator` (`reconcile.rs`, `specs(&INITIAL)`), as
/// the resources a user applies, oldest first (the masked pair: `web-copy` is the newer copy).
fn cluster_spiffe_ids() -> Vec<serde_json::Value> {
    let ns_sa =
        "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}";
    let cr = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
               "metadata": {"name": name}, "spec": spec})
    };
    vec![
        cr(
            "web",
            json!({"spiffeIDTemplate": ns_sa, "podSelector": {"matchLabels": {"tier": "web"}}}),
        ),
        cr(
            "web-copy",
            json!({"spiffeIDTemplate": ns_sa, "podSelector": {"matchLabels": {"tier": "web"}}}),
        ),
        cr(
            "fallback",
            json!({"spiffeIDTemplate": "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}",
                   "fallback": true}),
        ),
        cr(
            "team-1",
            json!({"spiffeIDTemplate": "spiffe://example.org/team/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}",
            "namespaceSelector": {"matchLabels": {"team": "t1"}},
            "dnsNameTemplates": [
                "{{ .PodSpec.ServiceAccountName }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}",
                "{{ (index .PodSpec.Containers 0).Name }}.{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.pod.{{ .ClusterDomain }}",
            ]}),
        ),
        cr(
            "prod-api",
            json!({"spiffeIDTemplate": "spiffe://example.org/prod/{{ .PodMeta.Labels.app }}/{{ .PodMeta.Name }}",
                   "namespaceSelector": {"matchLabels": {"env": "prod"}},
                   "podSelector": {"matchLabels": {"app": "app3"}},
                   "federatesWith": [PARTNER_TD],
                   "workloadSelectorTemplates": ["k8s:sa:{{ .PodSpec.ServiceAccountName }}"]}),
        ),
    ]
}

/// How a size is laid out: pods per namespace and how many namespaces that fills.
#[derive(Debug, Clone, Copy)]
struct Layout {
    pods: usize,
    per_namespace: usize,
    namespaces: usize,
}

impl Layout {
    fn new(pods: usize) -> Self {
        let per_namespace = pods.div_ceil(NAMESPACES).max(1);
        Self {
            pods,
            per_namespace,
            namespaces: pods.div_ceil(per_namespace).min(NAMESPACES),
        }
    }
}

/// What the API server is sent for pod `index`: the realistic pod without what the server
/// assigns (uid, resourceVersion, creationTimestamp, managedFields).
fn pod_to_create(index: usize, layout: Layout, suffix: Option<&str>) -> Pod {
    let mut pod = support::pod(index, layout.per_namespace, 0);
    let meta = &mut pod.metadata;
    meta.uid = None;
    meta.resource_version = None;
    meta.creation_timestamp = None;
    meta.managed_fields = None;
    if let Some(suffix) = suffix {
        meta.name = Some(format!("{}-{suffix}", meta.name.as_deref().unwrap()));
    }
    pod
}

/// Whether pod `index` gets only the fallback entry (`spiffe://<td>/ns/<ns>/pod/<name>`): a
/// worker (not `tier=web`), outside team 1's namespaces, not an app3 pod in a prod namespace.
fn fallback_only(index: usize, layout: Layout) -> bool {
    let ns = index / layout.per_namespace;
    let deployment = index / REPLICAS;
    let web = deployment.is_multiple_of(2);
    let team1 = ns % 10 == 1;
    let prod_app3 = ns.is_multiple_of(2) && deployment % 20 == 3;
    !web && !team1 && !prod_app3
}

/// The number of entries the cluster renders to, with the product's renderer (what the
/// operator should end up writing to SPIRE).
fn expected_entries(layout: Layout) -> usize {
    let config = RenderConfig::new(TrustDomain::new(TD).unwrap(), CLUSTER, "cluster.local");
    let mut state = ClusterState::new(config, &format!("{PREFIX}."));
    for n in 0..layout.namespaces {
        state.apply_namespace(views::namespace_view(&support::namespace(n)));
    }
    for (created, cr) in cluster_spiffe_ids().into_iter().enumerate() {
        let resource: ClusterSPIFFEID = serde_json::from_value(cr).unwrap();
        let mut view = views::cluster_spiffe_id_view(&resource).unwrap();
        view.creation_timestamp = created as i64;
        view.uid = format!("uid-{}", view.name);
        state.apply_spec(SpecInput {
            meta: ResourceMeta {
                name: view.name.clone(),
                uid: view.uid.clone(),
                generation: Some(1),
                resource_version: None,
            },
            class_name: String::new(),
            view: Ok(view),
            status: None,
        });
    }
    for n in 0..NODES {
        state.apply_node(views::node_view(&support::node(n)));
    }
    for index in 0..layout.pods {
        state.apply_pod(views::pod_view(&support::pod(
            index,
            layout.per_namespace,
            0,
        )));
    }
    let store = EntryStore::new();
    state.reconcile(&store);
    store.entry_count()
}

fn strip_server_fields<T: kube::Resource>(mut object: T) -> T {
    let meta = object.meta_mut();
    meta.uid = None;
    meta.resource_version = None;
    meta.creation_timestamp = None;
    meta.managed_fields = None;
    object
}

async fn apply_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("wimsey-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        names.push(name);
    }
    for name in names {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let crd = crds.get(&name).await.unwrap();
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} not established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs `f(i)` for every `i < count`, `concurrency` at a time.
async fn for_each_concurrent<F, Fut>(count: usize, concurrency: usize, f: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(count.max(1)) {
        let (next, f) = (next.clone(), f.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                f(i).await;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
}

/// Namespaces (and the operator's own), nodes.
async fn create_base(client: &kube::Client, layout: Layout) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let post = PostParams::default();
    let mut own = support::namespace(0);
    own.metadata.name = Some("wimsey-system".into());
    own.metadata.labels = None;
    namespaces
        .create(&post, &strip_server_fields(own))
        .await
        .unwrap();
    let c = client.clone();
    for_each_concurrent(layout.namespaces, CREATE_CONCURRENCY, move |n| {
        let api: Api<Namespace> = Api::all(c.clone());
        async move {
            let ns = strip_server_fields(support::namespace(n));
            api.create(&PostParams::default(), &ns).await.unwrap();
        }
    })
    .await;
    let c = client.clone();
    for_each_concurrent(NODES, CREATE_CONCURRENCY, move |n| {
        let api: Api<Node> = Api::all(c.clone());
        async move {
            let node = strip_server_fields(support::node(n));
            api.create(&PostParams::default(), &node).await.unwrap();
        }
    })
    .await;
}

/// Every pod: a create, then its status (Running, conditions, IPs, container statuses) as the
/// kubelet would write it.
async fn create_pods(client: &kube::Client, layout: Layout) {
    let c = client.clone();
    for_each_concurrent(layout.pods, CREATE_CONCURRENCY, move |index| {
        let c = c.clone();
        async move {
            let pod = pod_to_create(index, layout, None);
            let api: Api<Pod> = Api::namespaced(c, pod.metadata.namespace.as_deref().unwrap());
            let name = pod.metadata.name.clone().unwrap();
            let status = json!({"status": pod.status.clone()});
            api.create(&PostParams::default(), &pod).await.unwrap();
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
        }
    })
    .await;
}

fn entry_client(socket: &Path) -> EntryClient<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::from_static("http://spire-server.local").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }),
    );
    EntryClient::new(channel)
}

async fn entries_with_id(client: &EntryClient<Channel>, path: &str) -> Vec<RegistrationEntry> {
    client
        .clone()
        .list_entries(ListEntriesRequest {
            filter: Some(Filter {
                by_spiffe_id: Some(SpiffeId {
                    trust_domain: TD.into(),
                    path: path.into(),
                }),
                ..Filter::default()
            }),
            output_mask: None,
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
}

/// A SPIRE Server for `TD` that also holds a bundle for `PARTNER_TD` (one ClusterSPIFFEID
/// federates with it; SPIRE refuses entries federating with a trust domain it has no bundle of).
fn start_spire() -> spire::SpireServer {
    let server = spire::SpireServer::start(spire::SpireOptions::new(TD)).unwrap();
    let own = server.bundle_show_spiffe().unwrap();
    server.bundle_set_spiffe(PARTNER_TD, &own).unwrap();
    server
}

/// The operator binary as a child process.
struct Operator {
    proc: Proc,
    admin_port: u16,
}

impl Operator {
    fn start(binary: &Path, kubeconfig: &Path, socket: &Path, log: PathBuf) -> Self {
        let admin_port = free_port();
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .args(["--backend", "spire", "--spire-server-socket"])
            .arg(socket)
            .args(["--trust-domain", TD, "--cluster-name", CLUSTER])
            .args(["--entry-id-prefix", PREFIX, "--namespace", "wimsey-system"])
            .args(["--pod-name", "bench-operator"])
            .arg(format!("--admin-addr=127.0.0.1:{admin_port}"))
            .arg(format!("--debug-addr=127.0.0.1:{}", free_port()))
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST");
        Self {
            proc: Proc::spawn("wimsey-operator", cmd, log),
            admin_port,
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Ready (caches synced) and the Lease holder, so the SPIRE sync runs.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            self.proc.check_running();
            let port = self.admin_port;
            let ready = tokio::task::spawn_blocking(move || {
                http_get(port, "/readyz").is_some_and(|(code, _)| code == 200)
                    && http_get(port, "/metrics").is_some_and(|(_, body)| {
                        body.lines().any(|l| l == "wimsey_operator_is_leader 1")
                    })
            })
            .await
            .unwrap();
            if ready {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the operator is not ready:\n{}",
                self.proc.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A field of /proc/<pid>/status, in MiB.
    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
            / 1024.0
    }

    /// utime + stime so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces): state is field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// SIGTERM (by PID) so it releases its Lease, then waits for it.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Dropping `proc` kills it.
    }
}

fn clock_ticks() -> u64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

struct Params {
    idle: Duration,
    singles: usize,
}

/// One size; its figures by key.
async fn run(pods: usize, params: &Params) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    let layout = Layout::new(pods);
    let (etcd, apiserver) = control_plane::binaries().unwrap();
    let operator_bin = PathBuf::from(env!("CARGO_BIN_EXE_wimsey-operator"));
    let expected = tokio::task::spawn_blocking(move || expected_entries(layout));

    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&etcd, &apiserver))
        .await
        .unwrap();
    let server = tokio::task::spawn_blocking(start_spire).await.unwrap();
    let client = cp.client().await;
    apply_crds(&client).await;
    create_base(&client, layout).await;

    // The baseline: the operator on the cluster without pods.
    let mut baseline = Operator::start(
        &operator_bin,
        &cp.kubeconfig,
        server.socket_path(),
        cp.dir().join("operator-baseline.log"),
    );
    baseline.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_baseline = baseline.status_mib("VmRSS:");
    tokio::task::spawn_blocking(move || baseline.stop())
        .await
        .unwrap();

    let started = Instant::now();
    create_pods(&client, layout).await;
    let fill = started.elapsed();
    out.insert(
        "fill",
        format!(
            "{:.0} s ({:.0}/s)",
            fill.as_secs_f64(),
            pods as f64 / fill.as_secs_f64()
        ),
    );
    let expected = expected.await.unwrap();

    let stop = CancellationToken::new();
    let proxy = CallCounter::start(
        &cp.dir().join("spire-proxy.sock"),
        server.socket_path(),
        stop.clone(),
    );
    let mut operator = Operator::start(
        &operator_bin,
        &cp.kubeconfig,
        &proxy.socket,
        cp.dir().join("operator.log"),
    );
    let started = Instant::now();
    operator.wait_ready().await;
    out.insert("start", format!("{:.1} s", started.elapsed().as_secs_f64()));
    let rss_started = operator.status_mib("VmRSS:");
    let direct = SpireEntries::connect_lazy(server.socket_path(), BatchLimits::default());
    assert_eq!(direct.count().await.unwrap(), 0);

    // Convergence: the ClusterSPIFFEIDs applied -> every entry in SPIRE.
    let specs: Api<ClusterSPIFFEID> = Api::all(client.clone());
    let (calls_before, cpu_before) = (proxy.calls(), operator.cpu());
    let started = Instant::now();
    for cr in cluster_spiffe_ids() {
        let resource: ClusterSPIFFEID = serde_json::from_value(cr).unwrap();
        specs
            .create(&PostParams::default(), &resource)
            .await
            .unwrap();
    }
    loop {
        let count = direct.count().await.unwrap() as usize;
        if count == expected {
            break;
        }
        assert!(
            count < expected,
            "SPIRE holds {count} entries, {expected} expected"
        );
        operator.proc.check_running();
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "not converged: {count} of {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converge = started.elapsed();
    out.insert("entries", expected.to_string());
    out.insert("converge", format!("{:.2}", converge.as_secs_f64()));
    out.insert("converge_calls", (proxy.calls() - calls_before).to_string());
    out.insert(
        "converge_cpu",
        format!("{:.1}", (operator.cpu() - cpu_before).as_secs_f64()),
    );
    // What the floor creates: the same entries, as SPIRE holds them.
    let converged: Vec<RegistrationEntry> = direct
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|e| RegistrationEntry {
            revision_number: 0,
            ..e
        })
        .collect();
    assert_eq!(converged.len(), expected);
    let rss_steady = operator.status_mib("VmRSS:");

    // Single pods: POST -> its entry in SPIRE.
    let raw = entry_client(server.socket_path());
    // Spread over the cluster: every k-th pod that renders to the fallback entry alone.
    let candidates: Vec<usize> = (0..pods).filter(|i| fallback_only(*i, layout)).collect();
    let picks: Vec<usize> = candidates
        .iter()
        .copied()
        .step_by((candidates.len() / params.singles.max(1)).max(1))
        .take(params.singles)
        .collect();
    assert_eq!(picks.len(), params.singles, "not enough fallback-only pods");
    let mut latencies = Vec::new();
    // The parts of it that are not the operator's: the POST, and each poll of SPIRE.
    let (mut posts, mut polls) = (Vec::new(), Vec::new());
    let mut single_entries = Vec::new();
    for (n, index) in picks.iter().enumerate() {
        let pod = pod_to_create(*index, layout, Some(&format!("s{n}")));
        let namespace = pod.metadata.namespace.clone().unwrap();
        let path = format!(
            "/ns/{namespace}/pod/{}",
            pod.metadata.name.as_deref().unwrap()
        );
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let at = Instant::now();
        api.create(&PostParams::default(), &pod).await.unwrap();
        posts.push(at.elapsed());
        let entry = loop {
            let poll = Instant::now();
            let found = entries_with_id(&raw, &path).await.pop();
            polls.push(poll.elapsed());
            if let Some(entry) = found {
                break entry;
            }
            assert!(
                at.elapsed() < Duration::from_secs(30),
                "no entry for {path}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        latencies.push(at.elapsed());
        single_entries.push(RegistrationEntry {
            revision_number: 0,
            ..entry
        });
    }
    latencies.sort();
    out.insert("single_p50", ms(quantile(&latencies, 0.5)));
    out.insert("single_p99", ms(quantile(&latencies, 0.99)));
    posts.sort();
    polls.sort();
    out.insert("post_p50", ms(quantile(&posts, 0.5)));
    out.insert("post_p99", ms(quantile(&posts, 0.99)));
    out.insert("poll_p50", ms(quantile(&polls, 0.5)));
    out.insert("poll_p99", ms(quantile(&polls, 0.99)));

    // Idle: nothing changes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (calls_before, cpu_before) = (proxy.calls(), operator.cpu());
    tokio::time::sleep(params.idle).await;
    let idle_calls = proxy.calls() - calls_before;
    let idle_cpu = operator.cpu() - cpu_before;
    let per_minute = 60.0 / params.idle.as_secs_f64();
    out.insert(
        "idle_calls",
        format!(
            "{:.1}/min ({idle_calls} in {} s)",
            idle_calls as f64 * per_minute,
            params.idle.as_secs()
        ),
    );
    out.insert("idle_calls_n", idle_calls.to_string());
    out.insert(
        "idle_cpu",
        format!(
            "{:.2} s/min ({:.2} s in {} s)",
            idle_cpu.as_secs_f64() * per_minute,
            idle_cpu.as_secs_f64(),
            params.idle.as_secs()
        ),
    );
    assert_eq!(
        direct.count().await.unwrap() as usize,
        expected + params.singles
    );

    let rss_end = operator.status_mib("VmRSS:");
    let hwm = operator.status_mib("VmHWM:");
    let per_10k = |mib: f64| (mib - rss_baseline) / (pods as f64 / 10_000.0);
    out.insert("rss_baseline", format!("{rss_baseline:.1}"));
    out.insert("rss_started", format!("{rss_started:.1}"));
    out.insert("rss_steady", format!("{rss_steady:.1}"));
    out.insert("rss_end", format!("{rss_end:.1}"));
    out.insert("rss_hwm", format!("{hwm:.1}"));
    out.insert("per_10k", format!("{:.1}", per_10k(rss_steady)));
    out.insert("per_10k_hwm", format!("{:.1}", per_10k(hwm)));

    // Nothing else runs while the floor is measured.
    tokio::task::spawn_blocking(move || operator.stop())
        .await
        .unwrap();
    stop.cancel();
    drop(server);
    drop(client);
    tokio::task::spawn_blocking(move || drop(cp)).await.unwrap();

    let floor_server = tokio::task::spawn_blocking(start_spire).await.unwrap();
    let floor_client =
        SpireEntries::connect_lazy(floor_server.socket_path(), BatchLimits::default());
    let started = Instant::now();
    let outcomes = floor_client.create(converged).await.unwrap();
    let floor = started.elapsed();
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Done(_))),
        "the floor's creates were refused"
    );
    let mut floor_singles = Vec::new();
    for entry in single_entries {
        let at = Instant::now();
        floor_client.create(vec![entry]).await.unwrap();
        floor_singles.push(at.elapsed());
    }
    floor_singles.sort();
    drop(floor_server);
    out.insert("floor", format!("{:.2}", floor.as_secs_f64()));
    out.insert(
        "ratio",
        format!("{:.2}", floor.as_secs_f64() / converge.as_secs_f64()),
    );
    out.insert("floor_p50", ms(quantile(&floor_singles, 0.5)));
    out.insert("floor_p99", ms(quantile(&floor_singles, 0.99)));
    out
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    // `cargo test --all-targets` runs this binary too, unoptimized and without `--bench`: a
    // small run when SPIRE, etcd and kube-apiserver are at hand, else nothing.
    if !bench {
        call_counter::self_check();
        if std::env::var_os(spire::SPIRE_SERVER_ENV).is_none()
            || control_plane::binaries().is_none()
        {
            println!(
                "bench-spire (control plane): not run here (needs {}, {} and {}); `make bench-spire` runs it",
                spire::SPIRE_SERVER_ENV,
                control_plane::ETCD_ENV,
                control_plane::APISERVER_ENV
            );
            return;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if !bench {
        let params = Params {
            idle: Duration::from_secs(2),
            singles: 3,
        };
        let f = runtime.block_on(run(200, &params));
        eprintln!("{f:?}");
        assert_eq!(f["idle_calls_n"], "0", "{f:?}");
        println!(
            "bench-spire (control plane) smoke run (200 pods) ok; `make bench-spire` measures"
        );
        return;
    }
    let params = Params {
        idle: Duration::from_secs(env_or("IDLE_SECONDS", 60)),
        singles: env_or("SINGLES", 100),
    };
    let sizes: Vec<usize> = std::env::var("PODS")
        .ok()
        .map(|s| s.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![10_000, 50_000]);
    let figures: Vec<_> = sizes
        .iter()
        .map(|pods| {
            let f = runtime.block_on(run(*pods, &params));
            eprintln!("{pods} pods: {f:?}");
            f
        })
        .collect();

    println!();
    println!(
        "wimsey-operator --backend spire (release binary, a child process) between a real kube-apiserver v1.34 + etcd and SPIRE Server v1.13.3 (SQLite); {NAMESPACES} namespaces, {NODES} fake nodes, realistic pods, 5 ClusterSPIFFEIDs (make bench-operator's); this machine"
    );
    println!();
    let mut header = format!("| {:<52} |", "measure");
    let mut rule = format!("|{}|", "-".repeat(54));
    for pods in &sizes {
        header.push_str(&format!(" {:>24} |", format!("{}k pods", pods / 1000)));
        rule.push_str(&format!("{}|", "-".repeat(26)));
    }
    header.push_str(&format!(
        " {:<22} | spire-controller-manager (published, not measured here) |",
        "target"
    ));
    rule.push_str(&format!("{}|{}|", "-".repeat(24), "-".repeat(57)));
    println!("{header}");
    println!("{rule}");
    let row = |label: &str,
               value: &dyn Fn(&BTreeMap<&'static str, String>) -> String,
               target: &str,
               scm: &str| {
        let mut line = format!("| {label:<52} |");
        for f in &figures {
            line.push_str(&format!(" {:>24} |", value(f)));
        }
        line.push_str(&format!(" {target:<22} | {scm:<55} |"));
        println!("{line}");
    };
    let key = |k: &'static str, unit: &'static str| {
        move |f: &BTreeMap<&'static str, String>| format!("{}{unit}", f[k])
    };
    row(
        "pods created in the API server (not timed below)",
        &key("fill", ""),
        "",
        "",
    );
    row(
        "operator start to ready + Lease (initial list)",
        &key("start", ""),
        "",
        "",
    );
    row(
        "entries in SPIRE",
        &key("entries", ""),
        "",
        "15,950 entries at 10k pods",
    );
    row(
        "CRs applied -> all entries in SPIRE: wimsey",
        &key("converge", " s"),
        "",
        "37.7 s at 10k pods (cold start)",
    );
    row(
        "  raw BatchCreateEntry, same entries (floor)",
        &key("floor", " s"),
        "",
        "",
    );
    row("  ratio floor / wimsey", &key("ratio", ""), ">= 0.8", "");
    row(
        "  SPIRE calls during convergence",
        &key("converge_calls", ""),
        "",
        "",
    );
    row(
        "  operator CPU during convergence",
        &key("converge_cpu", " s"),
        "",
        "",
    );
    row(
        "single pod create -> entry in SPIRE p50 / p99",
        &|f| format!("{} / {} ms", f["single_p50"], f["single_p99"]),
        "p99 < 100 ms at 50k",
        "p50 1.09 s",
    );
    row(
        "  of which the POST to the API server p50 / p99",
        &|f| format!("{} / {} ms", f["post_p50"], f["post_p99"]),
        "",
        "",
    );
    row(
        "  one poll of SPIRE (ListEntries by ID) p50 / p99",
        &|f| format!("{} / {} ms", f["poll_p50"], f["poll_p99"]),
        "",
        "",
    );
    row(
        "  raw one-entry BatchCreateEntry p50 / p99 (floor)",
        &|f| format!("{} / {} ms", f["floor_p50"], f["floor_p99"]),
        "",
        "",
    );
    row(
        "idle: SPIRE calls",
        &key("idle_calls", ""),
        "0",
        "list calls: SPIRE CPU 31.8 s / 3 min",
    );
    row("idle: operator CPU", &key("idle_cpu", ""), "", "");
    row(
        "operator RSS, empty cluster (baseline)",
        &key("rss_baseline", " MiB"),
        "",
        "",
    );
    row(
        "operator RSS after convergence",
        &key("rss_steady", " MiB"),
        "",
        "",
    );
    row("operator RSS at the end", &key("rss_end", " MiB"), "", "");
    row("operator peak RSS (VmHWM)", &key("rss_hwm", " MiB"), "", "");
    row(
        "operator RSS per 10k pods (after conv. - baseline)",
        &key("per_10k", " MiB"),
        "< 60 MiB",
        ">= 512 MiB at ~4k pods",
    );
    row(
        "operator peak RSS per 10k pods (VmHWM - baseline)",
        &key("per_10k_hwm", " MiB"),
        "",
        "",
    );
    if let (Some(first), Some(last)) = (figures.first(), figures.last())
        && sizes.len() > 1
    {
        // What each further 10k pods cost, without the fixed part the baseline does not hold.
        let mib = |f: &BTreeMap<&'static str, String>, k: &str| f[k].parse::<f64>().unwrap();
        let tens = (sizes[sizes.len() - 1] - sizes[0]) as f64 / 10_000.0;
        println!(
            "| {:<52} | {:>w$} | {:<22} | {:<55} |",
            "operator RSS per further 10k pods (between sizes)",
            format!(
                "{:.1} MiB after convergence, {:.1} MiB peak",
                (mib(last, "rss_steady") - mib(first, "rss_steady")) / tens,
                (mib(last, "rss_hwm") - mib(first, "rss_hwm")) / tens
            ),
            "< 60 MiB",
            "",
            w = 27 * sizes.len() - 3
        );
    }
    println!();
    println!(
        "spire-controller-manager v0.6.6 figures are as published in issue 14, on other hardware; not measured here."
    );
}
