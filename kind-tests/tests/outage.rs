//! Identities outlive an API server outage (node-level cluster, local provider only: the test
//! signals the kube-apiserver process on this machine).
//!
//! A workload with a short SVID TTL streams its X.509 contexts (`spiffe-probe watch`); the API
//! server is taken away for three TTLs while it does:
//! - frozen: SIGSTOP, then SIGCONT;
//! - stopped: SIGTERM (SIGKILL if it has not exited after a minute), then the local provider's
//!   idempotent `up.sh` starts it again. During this outage the operator replica the plugin is
//!   connected to (found in this host's conntrack table) is also killed (SIGKILL to its
//!   container's processes, as a crash or an OOM kill would end it): the plugin must fail over to
//!   the other replica, which never reviewed its tokens and verifies them against the
//!   service-account issuer's keys; the killed replica, restarted by kubelet with no API server
//!   to load the authority from, must wait rather than crash-loop, and be Ready again once the
//!   API server is back.
//!
//! The probe's log cannot be read through the API server meanwhile, so it is read from kubelet's
//! pod log directory on this host (`/var/log/pods/<ns>_<pod>_<uid>/probe/`). The test asserts
//! that the SVIDs kept rotating during the outage, that none expired (every SVID's not_after is
//! later than the arrival of its successor, and the last one outlives the outage), and that
//! everything converges once the API server is back. Whatever happens, a guard resumes (or
//! restarts) the API server.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use kube::{Api, Client};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use wimsey_kind_tests::cluster::Provider;
use wimsey_kind_tests::exec::exec;
use wimsey_kind_tests::wait::{pod_ready, poll_until, wait_for};
use wimsey_kind_tests::wimsey::{self, NAMESPACE, repo_root};
use wimsey_kind_tests::workloads::probe_pod;
use wimsey_kind_tests::{Cluster, TestNamespace};

/// The SVID TTL of the workload; the outage lasts three of them.
const SVID_TTL: Duration = Duration::from_secs(30);
const OUTAGE: Duration = Duration::from_secs(3 * 30);
const POD_TIMEOUT: Duration = Duration::from_secs(120);
const SVID_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the API server and the workload get to settle after the outage.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
const PROBE: &str = "/spiffe-probe";

/// Only one test at a time may take the API server away.
static OUTAGE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The local provider's run directory (pid files), as in `cluster/local/common.sh`.
fn run_dir() -> PathBuf {
    std::env::var_os("WIMSEY_CLUSTER_RUN")
        .map_or_else(|| PathBuf::from("/run/wimsey-cluster"), PathBuf::from)
}

fn apiserver_pid() -> Result<Pid> {
    let file = run_dir().join("kube-apiserver.pid");
    let pid: i32 = std::fs::read_to_string(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("pid in {}", file.display()))?;
    ensure!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "kube-apiserver (pid {pid}) is not running"
    );
    Ok(Pid::from_raw(pid))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutageKind {
    /// SIGSTOP; ended by SIGCONT.
    Frozen,
    /// SIGTERM; ended by starting it again with `up.sh`.
    Stopped,
}

/// The API server taken away; brought back by [`ApiServerOutage::end`] or, on any failure, by
/// `Drop`.
struct ApiServerOutage {
    kind: OutageKind,
    pid: Pid,
    ended: bool,
}

impl ApiServerOutage {
    fn begin(kind: OutageKind) -> Result<Self> {
        let pid = apiserver_pid()?;
        // The guard exists before the signal, so even a failing signal is undone.
        let outage = Self {
            kind,
            pid,
            ended: false,
        };
        let signal = match kind {
            OutageKind::Frozen => Signal::SIGSTOP,
            OutageKind::Stopped => Signal::SIGTERM,
        };
        kill(pid, signal).with_context(|| format!("{signal} kube-apiserver ({pid})"))?;
        if kind == OutageKind::Stopped {
            // kube-apiserver drains its watches before it exits, which can take longer than the
            // outage is worth waiting for: past a minute it is killed, as a crash would end it.
            if !exited_within(pid, Duration::from_secs(60)) {
                kill(pid, Signal::SIGKILL)
                    .with_context(|| format!("SIGKILL kube-apiserver ({pid})"))?;
                ensure!(
                    exited_within(pid, Duration::from_secs(10)),
                    "kube-apiserver ({pid}) did not exit after SIGTERM and SIGKILL"
                );
            }
        }
        println!("kube-apiserver {kind:?} (pid {pid})");
        Ok(outage)
    }

    fn end(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        match self.kind {
            OutageKind::Frozen => kill(self.pid, Signal::SIGCONT)
                .with_context(|| format!("SIGCONT kube-apiserver ({})", self.pid)),
            OutageKind::Stopped => {
                let up = repo_root().join("kind-tests/cluster/local/up.sh");
                let status = std::process::Command::new(&up)
                    .status()
                    .with_context(|| format!("running {}", up.display()))?;
                ensure!(status.success(), "{} failed: {status}", up.display());
                Ok(())
            }
        }
    }
}

/// Whether process `pid` is gone (no `/proc/<pid>`) within `timeout`.
fn exited_within(pid: Pid, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl Drop for ApiServerOutage {
    fn drop(&mut self) {
        if let Err(error) = self.end() {
            eprintln!("could not bring kube-apiserver back: {error:#}");
        }
    }
}

/// One SVID the probe received: `x509 <id> serial=<hex> not_after=<RFC3339> at_ms=<ms> ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    serial: String,
    not_after: SystemTime,
    at: SystemTime,
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ` (the probe's format).
fn parse_utc(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The distinct SVIDs in a probe log (CRI log lines or plain), in order of receipt.
fn parse_received(log: &str) -> Vec<Received> {
    let mut out: Vec<Received> = Vec::new();
    for line in log.lines() {
        let Some(start) = line.find("x509 ") else {
            continue;
        };
        let words: Vec<&str> = line[start..].split_whitespace().collect();
        let field = |key: &str| words.iter().find_map(|w| w.strip_prefix(key));
        let (Some(serial), Some(not_after), Some(at_ms)) =
            (field("serial="), field("not_after="), field("at_ms="))
        else {
            continue;
        };
        let (Some(not_after), Ok(at_ms)) = (parse_utc(not_after), at_ms.parse::<u64>()) else {
            continue;
        };
        if out.last().is_some_and(|last| last.serial == serial) {
            continue;
        }
        out.push(Received {
            serial: serial.to_owned(),
            not_after,
            at: UNIX_EPOCH + Duration::from_millis(at_ms),
        });
    }
    out
}

/// Every SVID was still valid when its successor arrived: the smallest such margin (negative:
/// an SVID expired first), and the pair it was found at.
fn smallest_margin(received: &[Received]) -> Option<(f64, usize)> {
    received
        .windows(2)
        .enumerate()
        .map(|(i, pair)| {
            let margin = match pair[0].not_after.duration_since(pair[1].at) {
                Ok(ahead) => ahead.as_secs_f64(),
                Err(behind) => -behind.duration().as_secs_f64(),
            };
            (margin, i)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

/// The probe's log as kubelet writes it on this host, readable without the API server.
fn host_log(namespace: &str, pod: &str, uid: &str) -> Result<String> {
    let dir = PathBuf::from(format!("/var/log/pods/{namespace}_{pod}_{uid}/probe"));
    let mut text = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    for file in files {
        text.push_str(
            &std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?,
        );
    }
    Ok(text)
}

/// The operator replica chosen to be killed, as seen before the outage.
#[derive(Debug)]
struct Replica {
    pod: String,
    container_id: String,
    restarts: i32,
}

/// The operator's node API port (the Service's and the pods').
const NODE_API_PORT: u16 = 8443;

/// The pod IP in the reply direction of this host's conntrack entries for established TCP
/// connections from `client_ip` to `port`: where kube-proxy sent them.
fn connected_servers(conntrack: &str, client_ip: &str, port: u16) -> Vec<String> {
    let client = format!("src={client_ip}");
    let port = format!("dport={port}");
    conntrack
        .lines()
        .filter(|line| line.contains(" tcp ") && line.contains(" ESTABLISHED "))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mut sources = fields.iter().filter(|f| f.starts_with("src="));
            let original = sources.next()?;
            let reply = sources.next()?;
            let original_port = fields.iter().find(|f| f.starts_with("dport="))?;
            (*original == client && *original_port == port)
                .then(|| reply["src=".len()..].to_owned())
        })
        .collect()
}

async fn pods_labelled(cluster: &Cluster, name: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/name={name}"));
    Ok(pods.list(&selector).await?.items)
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.pod_ip.as_deref()
}

/// The operator replica the plugin's node API connection goes to.
async fn plugins_replica(cluster: &Cluster) -> Result<Replica> {
    let plugin = pods_labelled(cluster, "wimsey-csi").await?;
    let plugin_ip = plugin
        .iter()
        .find_map(pod_ip)
        .context("no wimsey-csi pod with an IP")?;
    let conntrack = std::fs::read_to_string("/proc/net/nf_conntrack")
        .context("reading this host's conntrack table")?;
    let servers = connected_servers(&conntrack, plugin_ip, NODE_API_PORT);
    let operators = pods_labelled(cluster, "wimsey-operator").await?;
    let pod = operators
        .into_iter()
        .find(|p| pod_ip(p).is_some_and(|ip| servers.iter().any(|s| s == ip)))
        .with_context(|| {
            format!("no operator replica among the plugin's ({plugin_ip}) connections {servers:?}")
        })?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .with_context(|| format!("{name} has no container status"))?;
    let container_id = status
        .container_id
        .as_deref()
        .and_then(|id| id.rsplit_once("://").map(|(_, id)| id.to_owned()))
        .with_context(|| format!("{name} has no container ID"))?;
    Ok(Replica {
        pod: name,
        container_id,
        restarts: status.restart_count,
    })
}

/// SIGKILLs every process on this host whose cgroup names `container_id`; returns their PIDs.
fn kill_container(container_id: &str) -> Result<Vec<i32>> {
    let mut killed = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if cgroup.contains(container_id) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed.push(pid);
        }
    }
    ensure!(
        !killed.is_empty(),
        "no process of container {container_id} on this host"
    );
    Ok(killed)
}

/// The replica came back by itself: restarted once (the kill), not crash-looping, and Ready.
async fn replica_recovered(cluster: &Cluster, killed: &Replica) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let status = poll_until(
        "the killed operator replica Ready again",
        CONVERGE_TIMEOUT,
        || async {
            let pod = pods.get(&killed.pod).await?;
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let status = pod
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|cs| cs.into_iter().next());
            Ok(status.filter(|s| ready && s.restart_count > killed.restarts))
        },
    )
    .await?;
    ensure!(
        status.restart_count == killed.restarts + 1,
        "operator replica {} restarted {} times after one kill: a crash loop while the API server \
         was away",
        killed.pod,
        status.restart_count - killed.restarts
    );
    Ok(())
}

fn cluster_spiffe_id_api(client: Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", "ClusterSPIFFEID");
    Api::all_with(client, &ApiResource::from_gvk(&gvk))
}

async fn create_cluster_spiffe_id(cluster: &Cluster, ns: &TestNamespace) -> Result<String> {
    let name = ns.name().to_string();
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": name},
        "spec": {
            "spiffeIDTemplate":
                "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}},
            "ttl": format!("{}s", SVID_TTL.as_secs()),
        },
    }))?;
    cluster_spiffe_id_api(cluster.client())
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("create ClusterSPIFFEID {name}"))?;
    Ok(name)
}

async fn delete_cluster_spiffe_id(cluster: &Cluster, name: &str) -> Result<()> {
    match cluster_spiffe_id_api(cluster.client())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn outage_test(test: &str, kind: OutageKind) -> Result<()> {
    let _one_at_a_time = OUTAGE_LOCK.lock().await;
    let Some(cluster) = Cluster::connect_node(test).await? else {
        return Ok(());
    };
    if cluster.provider() != Provider::Local {
        println!("SKIP {test}: needs the local provider (it signals kube-apiserver on this host)");
        return Ok(());
    }
    wimsey::ensure_installed(&cluster).await?;
    let ns = TestNamespace::create(&cluster, "outage").await?;
    let csid = match create_cluster_spiffe_id(&cluster, &ns).await {
        Ok(name) => name,
        Err(err) => return ns.finish(Err(err)).await,
    };
    let result = ride_out(&cluster, &ns, kind).await;
    let cleanup = delete_cluster_spiffe_id(&cluster, &csid).await;
    ns.finish(result.and(cleanup)).await
}

async fn ride_out(cluster: &Cluster, ns: &TestNamespace, kind: OutageKind) -> Result<()> {
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &probe_pod("probe")?)
        .await?;
    wait_for(&pods, "probe", "probe pod Ready", POD_TIMEOUT, pod_ready()).await?;
    let uid = pods
        .get("probe")
        .await?
        .metadata
        .uid
        .context("the probe pod has no UID")?;
    let read = || host_log(ns.name(), "probe", &uid).map(|log| parse_received(&log));
    let read = &read;
    poll_until(
        "the first SVID in the host log",
        SVID_TIMEOUT,
        || async move { Ok((!read()?.is_empty()).then_some(())) },
    )
    .await?;

    let replica = match kind {
        OutageKind::Stopped => Some(plugins_replica(cluster).await?),
        OutageKind::Frozen => None,
    };
    let mut outage = ApiServerOutage::begin(kind)?;
    let began = SystemTime::now();
    if let Some(replica) = &replica {
        let pids = kill_container(&replica.container_id)?;
        println!(
            "killed operator replica {} (the plugin's node API peer; pids {pids:?})",
            replica.pod
        );
    }
    tokio::time::sleep(OUTAGE).await;
    let during = read()?;
    let ended_at = SystemTime::now();
    outage.end()?;

    let rotated = during
        .iter()
        .filter(|svid| svid.at > began && svid.at < ended_at)
        .count();
    // Renewal at half-life: about two per TTL.
    ensure!(
        rotated >= 3,
        "only {rotated} SVID(s) arrived during the {OUTAGE:?} outage; log: {during:?}"
    );
    if let Some((margin, at)) = smallest_margin(&during) {
        ensure!(
            margin > 0.0,
            "SVID {} expired {:.1} s before its successor arrived: {during:?}",
            during[at].serial,
            -margin
        );
    }
    let last = during.last().context("no SVID at all")?;
    ensure!(
        last.not_after > ended_at,
        "the workload's SVID had expired by the end of the outage: {last:?}"
    );

    // Converged: the API server answers, the probe keeps rotating, and a one-shot fetch works.
    poll_until("the API server to answer", CONVERGE_TIMEOUT, || async {
        Ok(pods.get_opt("probe").await.ok().flatten().map(|_| ()))
    })
    .await?;
    let seen = during.len();
    poll_until(
        "an SVID after the outage",
        CONVERGE_TIMEOUT,
        || async move { Ok((read()?.len() > seen).then_some(())) },
    )
    .await?;
    let after = read()?;
    if let Some((margin, at)) = smallest_margin(&after) {
        ensure!(
            margin > 0.0,
            "SVID {} expired before its successor arrived: {after:?}",
            after[at].serial
        );
    }
    let fetched = poll_until("a fetch after the outage", CONVERGE_TIMEOUT, || async {
        let out = exec(&pods, "probe", None, &[PROBE, "fetch", "-timeout", "5s"])
            .await?
            .stdout;
        Ok(out.starts_with("x509 ").then_some(out))
    })
    .await?;
    if !fetched.contains("serial=") {
        bail!("unexpected fetch output: {fetched:?}");
    }
    // New pods are served again: the operator's watches are back (and the next test starts
    // from a converged cluster).
    let served = SystemTime::now();
    pods.create(&PostParams::default(), &probe_pod("late")?)
        .await?;
    wait_for(
        &pods,
        "late",
        "late probe pod Ready",
        POD_TIMEOUT,
        pod_ready(),
    )
    .await?;
    let late_uid = pods
        .get("late")
        .await?
        .metadata
        .uid
        .context("the late probe pod has no UID")?;
    poll_until(
        "an SVID for a pod created after the outage",
        CONVERGE_TIMEOUT,
        || async {
            let log = host_log(ns.name(), "late", &late_uid)?;
            Ok((!parse_received(&log).is_empty()).then_some(()))
        },
    )
    .await?;
    println!(
        "a pod created after the outage got its SVID {:.0} s after it was created",
        served.elapsed().unwrap_or_default().as_secs_f64()
    );
    wimsey::wait_until_serving(cluster).await?;
    if let Some(replica) = &replica {
        replica_recovered(cluster, replica).await?;
        println!(
            "operator replica {} back and Ready, restarted once",
            replica.pod
        );
    }
    println!(
        "{kind:?}: {rotated} SVIDs during a {OUTAGE:?} outage, smallest margin {:.1} s",
        smallest_margin(&during).map_or(f64::NAN, |m| m.0)
    );
    Ok(())
}

#[tokio::test]
async fn svids_rotate_while_the_api_server_is_frozen() -> Result<()> {
    outage_test(
        "svids_rotate_while_the_api_server_is_frozen",
        OutageKind::Frozen,
    )
    .await
}

#[tokio::test]
async fn svids_rotate_while_the_api_server_is_stopped() -> Result<()> {
    outage_test(
        "svids_rotate_while_the_api_server_is_stopped",
        OutageKind::Stopped,
    )
    .await
}

#[test]
fn conntrack_names_the_pod_a_service_connection_went_to() {
    let table = "ipv4     2 tcp      6 86397 ESTABLISHED src=10.244.0.21 dst=10.96.0.46 sport=41264 dport=8443 src=10.244.0.22 dst=10.244.0.21 sport=8443 dport=41264 [ASSURED] mark=0 zone=0 use=2\n\
                 ipv4     2 tcp      6 22 TIME_WAIT src=10.244.0.21 dst=10.96.0.46 sport=41000 dport=8443 src=10.244.0.23 dst=10.244.0.21 sport=8443 dport=41000 [ASSURED] mark=0 zone=0 use=2\n\
                 ipv4     2 tcp      6 86397 ESTABLISHED src=10.244.0.210 dst=10.96.0.46 sport=41264 dport=8443 src=10.244.0.24 dst=10.244.0.210 sport=8443 dport=41264 [ASSURED] mark=0 zone=0 use=2\n";
    assert_eq!(
        connected_servers(table, "10.244.0.21", 8443),
        vec!["10.244.0.22"]
    );
    assert!(connected_servers(table, "10.244.0.21", 443).is_empty());
    assert!(connected_servers(table, "10.244.0.9", 8443).is_empty());
}

#[test]
fn parses_probe_lines_from_a_cri_log() {
    let log = "2026-12-03T10:00:00.1Z stdout F x509 spiffe://example.org/ns/a/sa/default serial=1f not_after=2026-12-03T10:00:30Z at_ms=1796292000100 start_ms=0\n\
               2026-12-03T10:00:15.1Z stdout F x509 spiffe://example.org/ns/a/sa/default serial=20 not_after=2026-12-03T10:00:45Z at_ms=1796292015100 start_ms=0\n\
               2026-12-03T10:00:15.2Z stdout F x509 spiffe://example.org/ns/a/sa/default serial=20 not_after=2026-12-03T10:00:45Z at_ms=1796292015200 start_ms=0\n\
               2026-12-03T10:00:16Z stdout F error code=Unavailable msg=x\n";
    let received = parse_received(log);
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].serial, "1f");
    assert_eq!(
        received[0].not_after,
        UNIX_EPOCH + Duration::from_secs(1_796_292_030)
    );
    let (margin, at) = smallest_margin(&received).unwrap();
    assert_eq!(at, 0);
    assert!((margin - 14.9).abs() < 1e-6, "{margin}");
}

#[test]
fn an_svid_that_expired_before_its_successor_shows_a_negative_margin() {
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    let received = [
        Received {
            serial: "1".into(),
            not_after: at(130),
            at: at(100),
        },
        Received {
            serial: "2".into(),
            not_after: at(170),
            at: at(140),
        },
    ];
    assert_eq!(smallest_margin(&received), Some((-10.0, 0)));
    assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
    assert_eq!(parse_utc("2000-02-29T12:00:00Z"), Some(at(951_825_600)));
    assert_eq!(parse_utc("2000-02-29 12:00:00"), None);
    assert_eq!(parse_utc("2000-13-01T00:00:00Z"), None);
}
