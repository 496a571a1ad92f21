//! The attack suite (`make test-attacks`, part of `make test`): hostile pods on the node-level
//! cluster attack their own Workload API socket, the node API and their files-mode volume. Each
//! attack must stay inside the attacker's own connection: a victim pod on the same node keeps
//! fetching its SVID, the plugin is never restarted, and its memory stays flat.
//!
//! The attacks run from inside pods, as `spiffe-probe attack ...` (kind-tests/clients/spiffe-probe/
//! attacks.go), so they pass through exactly what a real pod reaches: the bind-mounted socket and
//! the cluster network.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use wimsey_kind_tests::cluster::Provider;
use wimsey_kind_tests::identity::{
    SVID_TIMEOUT, expected_id, files_mode_pod, parse_x509_lines, probe, start_pod, start_probe_pod,
    wait_for_svids, with_identity,
};
use wimsey_kind_tests::wimsey::NAMESPACE;
use wimsey_kind_tests::{Cluster, TestNamespace};

const PLUGIN_SELECTOR: &str = "app.kubernetes.io/name=wimsey-csi";
/// How much the plugin's resident memory may grow over one attack. The bomb of the report expands
/// to about 240 MB per connection once decoded; a bounded decoder keeps each connection to a few KB.
const MAX_RSS_GROWTH: u64 = 32 << 20;

#[tokio::test]
async fn a_hostile_pod_affects_only_its_own_connections() -> Result<()> {
    with_identity(
        "a_hostile_pod_affects_only_its_own_connections",
        "attack",
        None,
        |cluster, ns, _| async move {
            let r = attacks(&cluster, &ns).await;
            (ns, r)
        },
    )
    .await
}

async fn attacks(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let want = expected_id(ns.name());
    let pods = start_probe_pod(ns, "victim").await?;
    wait_for_svids(&pods, "victim", 1, SVID_TIMEOUT).await?;
    start_probe_pod(ns, "attacker").await?;
    wait_for_svids(&pods, "attacker", 1, SVID_TIMEOUT).await?;
    start_pod(
        ns,
        files_mode_pod("files-attacker", "spiffe-probe", &["idle"])?,
    )
    .await?;

    let plugin = Plugin::on_cluster(cluster).await?;
    let victim = Victim {
        pods: &pods,
        want: &want,
    };

    // 1. The HPACK bomb of the report, on 50 connections in a row: each is refused on its own.
    let rss_before = plugin.rss_bytes()?;
    let bomb = attack(&pods, "attacker", &["hpack-bomb", "-n", "50"]).await?;
    let rss_after = plugin.rss_bytes()?;
    println!("{bomb}");
    report_rss("hpack-bomb x50", rss_before, rss_after);
    ensure!(
        field(&bomb, "open")? == 0,
        "a bomb connection was left open: {bomb}"
    );
    ensure!(
        field(&bomb, "goaway")? + field(&bomb, "closed")? == 50,
        "not every bomb connection was refused: {bomb}"
    );
    check_rss_growth(rss_before, rss_after)?;
    victim.still_served().await?;
    plugin.never_restarted().await?;

    // 2. Malformed HTTP/2: every connection ends (GOAWAY or closed), none hangs open.
    let garbage = attack(&pods, "attacker", &["h2-garbage"]).await?;
    println!("{garbage}");
    ensure!(
        !garbage.contains("=open"),
        "a malformed connection was left open: {garbage}"
    );
    victim.still_served().await?;
    plugin.never_restarted().await?;

    // 3. A flood of streams: 40 connections of 16 streams each (the per-connection limit), 640 in
    // all, past the per-pod limit (512). The excess is refused; the victim, on its own socket, is
    // not starved.
    let rss_before = plugin.rss_bytes()?;
    let flood = attack(
        &pods,
        "attacker",
        &["stream-flood", "-conns", "40", "-n", "16"],
    )
    .await?;
    let rss_after = plugin.rss_bytes()?;
    println!("{flood}");
    report_rss("stream-flood 40x16", rss_before, rss_after);
    ensure!(
        field(&flood, "ok")? < 640,
        "640 concurrent streams from one pod were all served: no per-pod limit: {flood}"
    );
    ensure!(
        flood.contains("ResourceExhausted"),
        "the streams over the per-pod limit were not refused with RESOURCE_EXHAUSTED: {flood}"
    );
    check_rss_growth(rss_before, rss_after)?;
    victim.still_served().await?;
    plugin.never_restarted().await?;

    // 4. Huge audiences: one 1 MiB audience, then 10,000 small ones; both refused with a clear code.
    for (size, count) in [("1048576", "1"), ("100000", "10000")] {
        let out = attack(
            &pods,
            "attacker",
            &["huge-audience", "-size", size, "-count", count],
        )
        .await?;
        println!("{out}");
        ensure!(
            out.contains("code=InvalidArgument") || out.contains("code=ResourceExhausted"),
            "huge audiences were not refused: {out}"
        );
    }
    victim.still_served().await?;
    plugin.never_restarted().await?;

    // 5. A workload's X.509-SVID presented as a node client certificate to the node API.
    let services: Api<Service> = Api::namespaced(cluster.client(), NAMESPACE);
    let node_api = services.get("wimsey-node-api").await?;
    let ip = node_api
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the node API Service has no ClusterIP")?;
    let addr = format!("{ip}:8443");
    let out = attack(&pods, "files-attacker", &["node-api", "-addr", &addr]).await?;
    println!("{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("attack node-api"))
        .collect();
    ensure!(lines.len() == 3, "node-api attack printed {out:?}");
    for line in lines {
        // Refused in the TLS handshake: the server's client-certificate check aborts it with the
        // access_denied alert, which the client reads as that alert or, when it was still writing,
        // as a broken pipe / reset; or, past the handshake, by the call's own authentication.
        let refused_in_handshake = ["tls: access denied", "broken pipe", "connection reset"]
            .iter()
            .any(|m| line.contains(m));
        ensure!(
            !line.contains("code=OK")
                && (refused_in_handshake
                    || line.contains("code=Unauthenticated")
                    || line.contains("code=PermissionDenied")),
            "the node API accepted a workload SVID as a node credential: {line}"
        );
    }

    // 6. Symlinks planted in the files-mode volume, for the plugin to write through: the volume is
    // read-only for the pod.
    let out = attack(&pods, "files-attacker", &["plant-symlink"]).await?;
    println!("{out}");
    ensure!(
        out.starts_with("attack plant-symlink") && !out.contains("=planted"),
        "a pod planted a symlink in its files-mode volume: {out}"
    );
    victim.still_served().await?;
    plugin.never_restarted().await?;
    Ok(())
}

/// Runs one attack in `pod` and returns its `attack ...` output.
async fn attack(pods: &Api<Pod>, pod: &str, args: &[&str]) -> Result<String> {
    let mut cmd = vec!["attack"];
    cmd.extend_from_slice(args);
    let out = probe(pods, pod, &cmd).await?;
    ensure!(out.contains("attack "), "attack {args:?} printed {out:?}");
    Ok(out.trim().to_string())
}

/// The number after `name=` in an attack's output line.
fn field(line: &str, name: &str) -> Result<u64> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .with_context(|| format!("no {name}= in {line:?}"))?
        .parse()
        .with_context(|| format!("{name}= in {line:?}"))
}

fn report_rss(what: &str, before: Option<u64>, after: Option<u64>) {
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "plugin RSS around {what}: before {:.1} MiB, after {:.1} MiB",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0
        ),
        _ => println!("plugin RSS around {what}: not measurable with this provider"),
    }
}

fn check_rss_growth(before: Option<u64>, after: Option<u64>) -> Result<()> {
    if let (Some(b), Some(a)) = (before, after) {
        ensure!(
            a <= b + MAX_RSS_GROWTH,
            "the plugin's memory grew from {b} to {a} bytes over one attack"
        );
    }
    Ok(())
}

/// A pod that is not attacking: it must keep getting its SVID.
struct Victim<'a> {
    pods: &'a Api<Pod>,
    want: &'a str,
}

impl Victim<'_> {
    async fn still_served(&self) -> Result<()> {
        let out = probe(self.pods, "victim", &["fetch", "-timeout", "10s"]).await?;
        let lines = parse_x509_lines(&out);
        ensure!(
            lines.len() == 1 && lines[0].id == self.want,
            "the victim pod was not served after the attack: {out:?}"
        );
        Ok(())
    }
}

/// The node's wimsey-csi pod, watched for restarts and memory.
struct Plugin {
    pods: Api<Pod>,
    uid: String,
    provider: Provider,
}

impl Plugin {
    async fn on_cluster(cluster: &Cluster) -> Result<Self> {
        let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
        let list = pods
            .list(&ListParams::default().labels(PLUGIN_SELECTOR))
            .await?;
        let [plugin] = list.items.as_slice() else {
            bail!(
                "want one wimsey-csi pod on the one-node cluster, found {}",
                list.items.len()
            );
        };
        let plugin = Self {
            pods,
            uid: plugin
                .metadata
                .uid
                .clone()
                .context("plugin pod without a UID")?,
            provider: cluster.provider(),
        };
        plugin.never_restarted().await?;
        Ok(plugin)
    }

    /// The same plugin pod, with no container restarted.
    async fn never_restarted(&self) -> Result<()> {
        let list = self
            .pods
            .list(&ListParams::default().labels(PLUGIN_SELECTOR))
            .await?;
        let [pod] = list.items.as_slice() else {
            bail!("the plugin pod was replaced: {} pods now", list.items.len());
        };
        ensure!(
            pod.metadata.uid.as_deref() == Some(self.uid.as_str()),
            "the plugin pod was replaced"
        );
        let restarts: i32 = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        ensure!(restarts == 0, "the plugin restarted {restarts} time(s)");
        Ok(())
    }

    /// The resident (anonymous) memory of the plugin pod's cgroup, read on the node. `None` with
    /// a provider whose node filesystem this process does not see (kind).
    fn rss_bytes(&self) -> Result<Option<u64>> {
        if self.provider != Provider::Local {
            return Ok(None);
        }
        // the cgroup's memory settles within a moment of an attack's last connection closing
        let dir = find_pod_cgroup(&self.uid)
            .with_context(|| format!("no memory cgroup for pod {}", self.uid))?;
        let stat = std::fs::read_to_string(dir.join("memory.stat"))?;
        // cgroup v1 counts the hierarchy's anonymous memory as total_rss, cgroup v2 as anon
        for key in ["total_rss", "anon"] {
            if let Some(v) = stat
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
            {
                return Ok(Some(v.trim().parse()?));
            }
        }
        bail!(
            "no total_rss or anon in {}",
            dir.join("memory.stat").display()
        )
    }
}

/// The pod's cgroup directory under the memory controller (cgroupfs driver: `pod<uid>`).
fn find_pod_cgroup(uid: &str) -> Option<PathBuf> {
    let want = format!("pod{uid}");
    let want_systemd = format!("pod{}", uid.replace('-', "_"));
    let roots = [
        "/sys/fs/cgroup/memory/kubepods",
        "/sys/fs/cgroup/kubepods",
        "/sys/fs/cgroup/kubepods.slice",
    ];
    roots
        .iter()
        .find_map(|root| find_dir(Path::new(root), &want, &want_systemd, 3))
}

fn find_dir(dir: &Path, want: &str, want_systemd: &str, depth: u32) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name == want || name.contains(want_systemd) {
            return Some(e.path());
        }
        subdirs.push(e.path());
    }
    if depth == 0 {
        return None;
    }
    subdirs
        .iter()
        .find_map(|d| find_dir(d, want, want_systemd, depth - 1))
}

#[test]
fn reads_attack_fields() {
    let line = "attack hpack-bomb connections=50 goaway=48 closed=2 open=0";
    assert_eq!(field(line, "goaway").ok(), Some(48));
    assert_eq!(field(line, "open").ok(), Some(0));
    assert!(field(line, "missing").is_err());
}
