//! The full SPIRE stack on the node-level cluster (local provider; `make test-spire-stack` builds
//! spire-server, the static spire-agent and its image, and the operator binary, and sets
//! `WIMSEY_SPIRE_SERVER` and `WIMSEY_OPERATOR_BIN`).
//!
//! - SPIRE Server v1.13.3 runs on this host (the harness of operator/tests/support/spire.rs) with
//!   SQLite, a disk key manager (its CA survives a restart) and the `k8s_psat` node attestor for
//!   the cluster [`CLUSTER_NAME`], doing TokenReview with the cluster's admin kubeconfig.
//! - SPIRE Agent v1.13.3 runs as a DaemonSet of our own image (`localhost/wimsey/spire-agent`, the
//!   static binary packed by our OCI writer) in the test namespace: hostNetwork (the server is on
//!   127.0.0.1), hostPID (the `k8s` workload attestor reads /proc/<pid>/cgroup), `k8s_psat` with a
//!   projected token of audience `spire-server`, the `k8s` workload attestor against kubelet's
//!   authenticated port 10250 on the node IP (its ServiceAccount may get `nodes/proxy`), and its Workload API
//!   socket in the host directory [`AGENT_SOCKET_DIR`].
//! - wimsey-operator runs on this host with `--backend spire` against the server's admin socket,
//!   its own className (the installed operator ignores our ClusterSPIFFEID), an entry ID prefix
//!   and the cluster name of the k8s_psat config, so the parent IDs it writes are the agent's ID.
//! - The installed wimsey-csi DaemonSet gets the agent socket directory (server-side apply of an
//!   env var, a hostPath volume and its mount under this suite's own field manager, removed at the
//!   end by applying nothing under that manager).
//! - go-spiffe pods (`spiffe-probe watch`) mount a `mode: spire-agent` volume.
//!
//! Asserted, in order: the agent attests with the ID the operator uses as parent; a pod gets the
//! X.509-SVID of its ClusterSPIFFEID from the agent; a new spiffeIDTemplate reaches SPIRE and the
//! pod; while SPIRE Server is down a new pod turns the ClusterSPIFFEID Ready=False
//! (BackendUnavailable) and the first pod still fetches from the agent; after the restart no entry
//! is lost, the resource is Ready again, the first pod fetches anew and the pod created while the
//! server was down gets its entry and SVID; deleting the ClusterSPIFFEID removes every entry of
//! ours; an entry made with `spire-server entry create` is untouched throughout.

#[path = "../../operator/tests/support/spire.rs"]
mod spire;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};
use spire::{KeyManager, SpireOptions, SpireServer};
use wimsey_kind_tests::cluster::{Provider, image};
use wimsey_kind_tests::exec::{ExecOutput, exec};
use wimsey_kind_tests::identity::{PROBE, logs, parse_x509_lines, start_pod};
use wimsey_kind_tests::wait::{poll_until, wait_for};
use wimsey_kind_tests::wimsey::{self, NAMESPACE, PLUGIN};
use wimsey_kind_tests::workloads::{SOCKET_DIR, csi_volume, probe_pod};
use wimsey_kind_tests::{Cluster, TestNamespace};

const TRUST_DOMAIN: &str = "spire-stack.test";
/// The k8s_psat cluster name in SPIRE and the operator's clusterName: parent IDs depend on both.
const CLUSTER_NAME: &str = "wimsey-e2e";
/// Our operator handles only ClusterSPIFFEIDs of this class; the installed one ignores them.
const CLASS: &str = "wimsey-spire-stack-e2e";
/// Our entries' IDs start with `<prefix>.`; anything else in SPIRE is not ours.
const ENTRY_PREFIX: &str = "e2e";
/// The agent's socket directory on the host (hostPath of the agent and of the plugin).
const AGENT_SOCKET_DIR: &str = "/run/wimsey-e2e/spire-agent";
/// The socket's name in it, and so in every `mode: spire-agent` volume.
const AGENT_SOCKET: &str = "spire-agent.sock";
/// Where the plugin sees [`AGENT_SOCKET_DIR`].
const PLUGIN_AGENT_DIR: &str = "/spire-agent-sockets";
const FIELD_MANAGER: &str = "wimsey-e2e-spire-stack";
const PROBE_LABEL: &str = "spire-stack-probe";
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
/// Agent start and node attestation (TokenReview, pod and node lookups by the server).
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);
/// A change reaching SPIRE through the operator (watch event, render, batched call).
const ENTRY_TIMEOUT: Duration = Duration::from_secs(60);
/// An entry reaching a workload: the agent syncs with the server every 5 s, and go-spiffe
/// retries a refused stream with a backoff that grows to 30 s.
const SVID_TIMEOUT: Duration = Duration::from_secs(90);
const SPIRE_ENTRY_TEMPLATE: &str =
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}";

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn csid_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "spire.spiffe.io",
        "v1alpha1",
        "ClusterSPIFFEID",
    ))
}

// ---------------------------------------------------------------------------------------------
// SPIRE's view: `spire-server entry show` / `agent list` on the admin socket

/// One registration entry as `spire-server entry show -output json` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: String,
    spiffe_id: String,
    parent_id: String,
    selectors: BTreeSet<String>,
}

impl Entry {
    fn is_ours(&self) -> bool {
        self.id.starts_with(&format!("{ENTRY_PREFIX}."))
    }
}

/// `{"trust_domain": "td", "path": "/p"}` -> `spiffe://td/p`.
fn spiffe_id(v: &Value) -> Option<String> {
    let td = v.get("trust_domain")?.as_str()?;
    let path = v.get("path").and_then(Value::as_str).unwrap_or("");
    Some(format!("spiffe://{td}{path}"))
}

fn parse_entries(json: &str) -> Result<Vec<Entry>> {
    let v: Value = serde_json::from_str(json).context("entry show -output json")?;
    let Some(items) = v.get("entries").and_then(Value::as_array) else {
        // no entries at all: SPIRE prints `{}` or an empty list
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|e| {
            let selectors = e
                .get("selectors")
                .and_then(Value::as_array)
                .map(|s| {
                    s.iter()
                        .filter_map(|s| {
                            Some(format!(
                                "{}:{}",
                                s.get("type")?.as_str()?,
                                s.get("value")?.as_str()?
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Entry {
                id: e
                    .get("id")
                    .and_then(Value::as_str)
                    .context("an entry without id")?
                    .to_string(),
                spiffe_id: e
                    .get("spiffe_id")
                    .and_then(spiffe_id)
                    .context("an entry without spiffe_id")?,
                parent_id: e
                    .get("parent_id")
                    .and_then(spiffe_id)
                    .context("an entry without parent_id")?,
                selectors,
            })
        })
        .collect()
}

fn entries(spire: &SpireServer) -> Result<Vec<Entry>> {
    parse_entries(&blocking(|| {
        spire.cli(&["entry", "show", "-output", "json"], None)
    })?)
}

fn agent_ids(spire: &SpireServer) -> Result<Vec<String>> {
    let out = blocking(|| spire.cli(&["agent", "list", "-output", "json"], None))?;
    let v: Value = serde_json::from_str(&out).context("agent list -output json")?;
    Ok(v.get("agents")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|a| a.get("id").and_then(spiffe_id))
                .collect()
        })
        .unwrap_or_default())
}

fn show(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "  {} {} parent={} {:?}",
                e.id, e.spiffe_id, e.parent_id, e.selectors
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until SPIRE's entries satisfy `check`; on timeout the error lists them and the
/// operator's log tail.
async fn wait_for_entries<T>(
    run: &mut Run,
    what: &str,
    timeout: Duration,
    check: impl Fn(&[Entry]) -> Option<T>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        run.operator.check_alive()?;
        let now = entries(&run.spire)?;
        if let Some(v) = check(&now) {
            println!(
                "spire-stack: {what} ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            return Ok(v);
        }
        if started.elapsed() >= timeout {
            bail!(
                "timed out after {timeout:?} waiting for {what}; SPIRE's entries:\n{}\noperator log tail:\n{}",
                show(&now),
                run.operator.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// wimsey-operator on this host

struct Operator {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start(cluster: &Cluster, socket: &Path, namespace: &str) -> Result<Self> {
        let bin = std::env::var_os("WIMSEY_OPERATOR_BIN").context(
            "WIMSEY_OPERATOR_BIN is not set: `make test-spire-stack` builds wimsey-operator and sets it",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("wimsey-spire-stack-")
            .tempdir()?;
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["run", "--backend", "spire", "--spire-server-socket"])
            .arg(socket)
            .args([
                "--trust-domain",
                TRUST_DOMAIN,
                "--cluster-name",
                CLUSTER_NAME,
            ])
            .args(["--class-name", CLASS, "--entry-id-prefix", ENTRY_PREFIX])
            // its Lease lives in the test namespace, apart from the installed operator's
            .args(["--namespace", namespace, "--pod-name", "spire-stack-e2e"])
            .args(["--admin-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
            .args(["--log-format", "plain", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", PathBuf::from(&bin).display()))?;
        println!(
            "spire-stack: wimsey-operator (backend spire) pid {}",
            child.id()
        );
        Ok(Self {
            child,
            log,
            _dir: dir,
        })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "wimsey-operator exited ({status}); log tail:\n{}",
                self.log_tail(40)
            );
        }
        Ok(())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- wimsey-operator log tail ---\n{}", self.log_tail(60));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// wimsey-csi with the agent socket directory

fn plugin_patch(enable: bool) -> Value {
    let mut body = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": PLUGIN, "namespace": NAMESPACE},
    });
    if enable {
        body["spec"] = json!({"template": {"spec": {
            "containers": [{
                "name": "csi",
                "env": [{"name": "WIMSEY_SPIRE_AGENT_SOCKET_DIR", "value": PLUGIN_AGENT_DIR}],
                "volumeMounts": [{
                    "name": "e2e-spire-agent-sockets",
                    "mountPath": PLUGIN_AGENT_DIR,
                    "readOnly": true,
                }],
            }],
            "volumes": [{
                "name": "e2e-spire-agent-sockets",
                "hostPath": {"path": AGENT_SOCKET_DIR, "type": "DirectoryOrCreate"},
            }],
        }}});
    }
    body
}

async fn apply_plugin_patch(client: &Client, enable: bool) -> Result<()> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    daemonsets
        .patch(
            PLUGIN,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(plugin_patch(enable)),
        )
        .await
        .context("server-side apply of the wimsey-csi DaemonSet")?;
    Ok(())
}

fn has_agent_dir(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| {
            env.iter()
                .any(|e| e.name == "WIMSEY_SPIRE_AGENT_SOCKET_DIR")
        })
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until every Ready node runs only plugin pods of the wanted kind (pods being deleted
/// aside), one of them Ready; then for the driver's registration with kubelet.
async fn plugin_rolled_out(cluster: &Cluster, enabled: bool) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let nodes: Api<Node> = Api::all(cluster.client());
    let selector = ListParams::default().labels("app.kubernetes.io/name=wimsey-csi");
    let what = if enabled {
        "wimsey-csi pods with the agent socket directory, Ready, on every Ready node"
    } else {
        "wimsey-csi pods without the agent socket directory, Ready, on every Ready node"
    };
    poll_until(what, ROLLOUT_TIMEOUT, || async {
        let list = pods.list(&selector).await?.items;
        // other suites create Node objects with no kubelet behind them: only Ready nodes count
        let ready_nodes: Vec<String> = nodes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|n| n.metadata.name)
            .collect();
        let done = !ready_nodes.is_empty()
            && ready_nodes.iter().all(|node| {
                let live: Vec<&Pod> = list
                    .iter()
                    .filter(|p| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                            && p.metadata.deletion_timestamp.is_none()
                    })
                    .collect();
                live.iter().any(|p| is_ready(p)) && live.iter().all(|p| has_agent_dir(p) == enabled)
            });
        Ok(done.then_some(()))
    })
    .await?;
    wimsey::wait_until_serving(cluster).await
}

/// The plugin's agent socket directory, removed again by `restore` or `Drop`.
struct PluginAgentMode {
    config: kube::Config,
    restored: bool,
}

impl PluginAgentMode {
    async fn enable(cluster: &Cluster) -> Result<Self> {
        let this = Self {
            config: cluster.config().clone(),
            restored: false,
        };
        apply_plugin_patch(&cluster.client(), true).await?;
        plugin_rolled_out(cluster, true).await?;
        Ok(this)
    }

    async fn restore(mut self, cluster: &Cluster) -> Result<()> {
        self.restored = true;
        apply_plugin_patch(&cluster.client(), false).await?;
        plugin_rolled_out(cluster, false).await
    }
}

impl Drop for PluginAgentMode {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        let config = self.config.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async { apply_plugin_patch(&Client::try_from(config)?, false).await })
        });
        match handle.join() {
            Ok(Ok(())) => eprintln!("wimsey-csi DaemonSet: agent socket directory removed"),
            Ok(Err(err)) => eprintln!("warning: restoring the wimsey-csi DaemonSet: {err:#}"),
            Err(_) => eprintln!("warning: restoring the wimsey-csi DaemonSet: thread panicked"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The SPIRE agent DaemonSet and its cluster-scoped RBAC

/// Owned by the test namespace, so the garbage collector removes cluster-scoped objects with it
/// even when the test dies before its own cleanup.
fn owned_by(ns: &Namespace) -> Value {
    json!([{
        "apiVersion": "v1",
        "kind": "Namespace",
        "name": ns.metadata.name,
        "uid": ns.metadata.uid,
    }])
}

fn agent_config(server_port: u16) -> String {
    format!(
        r#"agent {{
    data_dir = "/var/lib/spire-agent"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "{server_port}"
    socket_path = "/run/spire/agent-sockets/{AGENT_SOCKET}"
    trust_bundle_path = "/run/spire/config/bundle.crt"
    trust_domain = "{TRUST_DOMAIN}"
}}

plugins {{
    NodeAttestor "k8s_psat" {{
        plugin_data {{
            cluster = "{CLUSTER_NAME}"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "k8s" {{
        plugin_data {{
            # the host it calls kubelet at: the local provider's kubelet listens on the node IP
            # only (not 127.0.0.1, the attestor's default), set from status.hostIP
            node_name_env = "KUBELET_HOST"
            # kubelet's serving certificate names the node, not its address
            skip_kubelet_verification = true
        }}
    }}
}}
"#
    )
}

async fn deploy_agent(
    cluster: &Cluster,
    ns: &TestNamespace,
    server_port: u16,
    bundle_pem: &str,
) -> Result<()> {
    let client = cluster.client();
    let namespace: Namespace = Api::all(client.clone()).get(ns.name()).await?;
    let role_name = format!("{}-spire-agent", ns.name());
    let owners = owned_by(&namespace);
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": role_name, "ownerReferences": owners},
        "rules": [
            // the k8s workload attestor reads kubelet's /pods
            {"apiGroups": [""], "resources": ["nodes/proxy", "nodes/pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]},
        ],
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .context("create the agent's ClusterRole")?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": role_name, "ownerReferences": owners},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": "spire-agent", "namespace": ns.name()}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .context("create the agent's ClusterRoleBinding")?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "spire-agent"}}))?;
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "spire-agent"},
        "data": {"agent.conf": agent_config(server_port), "bundle.crt": bundle_pem},
    }))?;
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await?;
    let socket = format!("/run/spire/agent-sockets/{AGENT_SOCKET}");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "spire-agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "spire-agent"}},
            "template": {
                "metadata": {"labels": {"app": "spire-agent"}},
                "spec": {
                    "serviceAccountName": "spire-agent",
                    "hostNetwork": true,
                    "hostPID": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "spire-agent",
                        "image": image("spire-agent")?,
                        "imagePullPolicy": "Never",
                        "args": ["run", "-config", "/run/spire/config/agent.conf"],
                        "env": [{"name": "KUBELET_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
                        "readinessProbe": {
                            "exec": {"command": ["/spire-agent", "healthcheck", "-socketPath", socket]},
                            "periodSeconds": 1,
                            "timeoutSeconds": 5,
                        },
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/run/spire/config", "readOnly": true},
                            {"name": "sockets", "mountPath": "/run/spire/agent-sockets"},
                            {"name": "token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                            {"name": "data", "mountPath": "/var/lib/spire-agent"},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "spire-agent"}},
                        {"name": "sockets", "hostPath": {"path": AGENT_SOCKET_DIR, "type": "DirectoryOrCreate"}},
                        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                            "path": "spire-agent", "audience": "spire-server", "expirationSeconds": 7200,
                        }}]}},
                        {"name": "data", "emptyDir": {}},
                    ],
                },
            },
        },
    }))?;
    ns.api::<DaemonSet>()
        .create(&PostParams::default(), &ds)
        .await
        .context("create the spire-agent DaemonSet")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// `spiffe-probe watch` on a `mode: spire-agent` volume: the SPIRE agent's own socket.
fn agent_probe_pod(name: &str) -> Result<Pod> {
    let mut pod = probe_pod(name)?;
    pod.metadata.labels = Some([("app".to_string(), PROBE_LABEL.to_string())].into());
    let spec = pod.spec.as_mut().context("probe pod without spec")?;
    spec.volumes = Some(vec![csi_volume("spire-agent")]);
    let container = spec
        .containers
        .first_mut()
        .context("probe pod without container")?;
    container.env = Some(vec![EnvVar {
        name: "SPIFFE_ENDPOINT_SOCKET".into(),
        value: Some(format!("unix://{SOCKET_DIR}/{AGENT_SOCKET}")),
        ..EnvVar::default()
    }]);
    Ok(pod)
}

/// Waits until the probe's log shows an X.509-SVID for `id`; returns its serial.
async fn wait_for_svid(pods: &Api<Pod>, pod: &str, id: &str, timeout: Duration) -> Result<String> {
    let started = Instant::now();
    let found = poll_until(
        &format!("an X.509-SVID {id} in {pod}'s log"),
        timeout,
        || async {
            let log = logs(pods, pod).await?;
            Ok(parse_x509_lines(&log)
                .into_iter()
                .find(|l| l.id == id)
                .map(|l| l.serial))
        },
    )
    .await;
    match found {
        Ok(serial) => {
            println!(
                "spire-stack: {pod} got {id} from the SPIRE agent ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            Ok(serial)
        }
        Err(err) => {
            let log = logs(pods, pod).await.unwrap_or_default();
            Err(err.context(format!("{pod}'s log:\n{log}")))
        }
    }
}

/// `spiffe-probe fetch` in the pod: one new connection to the agent, one X.509-SVID.
async fn fetch(pods: &Api<Pod>, pod: &str) -> Result<ExecOutput> {
    exec(pods, pod, None, &[PROBE, "fetch"]).await
}

/// Waits until the ClusterSPIFFEID's `Ready` condition has `status` and `reason`.
async fn wait_for_ready(
    csids: &Api<DynamicObject>,
    name: &str,
    status: &'static str,
    reason: &'static str,
    what: &str,
) -> Result<()> {
    let started = Instant::now();
    let ready = move |obj: Option<&DynamicObject>| {
        let conditions = obj
            .and_then(|o| o.data.get("status")?.get("conditions")?.as_array())
            .cloned()
            .unwrap_or_default();
        conditions.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some(status)
                && c.get("reason").and_then(Value::as_str) == Some(reason)
        })
    };
    wait_for(csids, name, what, ENTRY_TIMEOUT, ready).await?;
    println!(
        "spire-stack: {what} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn pod_uid(pod: &Pod) -> Result<String> {
    pod.metadata.uid.clone().context("pod without uid")
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_server_agent_operator_and_csi_give_a_pod_its_identity() -> Result<()> {
    let test = "spire_server_agent_operator_and_csi_give_a_pod_its_identity";
    let Some(cluster) = Cluster::connect_node(test).await? else {
        return Ok(());
    };
    if cluster.provider() != Provider::Local {
        println!(
            "SKIP {test}: needs the local provider (SPIRE Server and the operator run on this host)"
        );
        return Ok(());
    }
    // Before anything changes in the cluster: `make test-spire-stack` sets both.
    spire::spire_server_binary()?;
    std::env::var_os("WIMSEY_OPERATOR_BIN")
        .context("WIMSEY_OPERATOR_BIN is not set: run `make test-spire-stack`")?;
    let started = Instant::now();
    wimsey::ensure_installed(&cluster).await?;
    let ns = TestNamespace::create(&cluster, "spire-stack").await?;
    let plugin = match PluginAgentMode::enable(&cluster).await {
        Ok(p) => p,
        Err(err) => return ns.finish(Err(err)).await,
    };
    println!(
        "spire-stack: wimsey-csi rolled out with the agent socket directory ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let result = stack(&cluster, &ns).await;
    let result = ns.finish(result).await;
    let restore = plugin.restore(&cluster).await;
    // the agent's socket, left behind on the host by its (deleted) pod, and the hostPath
    // directories kubelet made for it (best effort: removed only when empty)
    let dir = Path::new(AGENT_SOCKET_DIR);
    let _ = std::fs::remove_file(dir.join(AGENT_SOCKET));
    let _ = std::fs::remove_dir(dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    println!(
        "spire-stack: test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    result.and(restore)
}

/// What the steps share.
struct Run {
    spire: SpireServer,
    operator: Operator,
}

async fn stack(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let mut opts = SpireOptions::new(TRUST_DOMAIN);
    opts.key_manager = KeyManager::Disk;
    opts.extra_plugins = format!(
        r#"    NodeAttestor "k8s_psat" {{
        plugin_data {{
            clusters = {{
                "{CLUSTER_NAME}" = {{
                    service_account_allow_list = ["{}:spire-agent"]
                    kube_config_file = "{kubeconfig}"
                }}
            }}
        }}
    }}
"#,
        ns.name()
    );
    let spire = blocking(|| SpireServer::start(opts))?;
    println!(
        "spire-stack: spire-server pid {} on 127.0.0.1:{}, admin socket {}",
        spire.pid(),
        spire.server_port(),
        spire.socket_path().display()
    );

    let nodes: Api<Node> = Api::all(cluster.client());
    let node = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some("wimsey-node"))
        .context("no node wimsey-node (the local provider's node)")?;
    let node_uid = node.metadata.uid.clone().context("node without uid")?;
    let agent_id =
        format!("spiffe://{TRUST_DOMAIN}/spire/agent/k8s_psat/{CLUSTER_NAME}/{node_uid}");

    // Not ours: made by hand before the operator ever runs, under the agent so it is a live entry.
    let by_hand_id = format!("spiffe://{TRUST_DOMAIN}/by-hand");
    blocking(|| {
        spire.cli(
            &[
                "entry",
                "create",
                "-parentID",
                &agent_id,
                "-spiffeID",
                &by_hand_id,
                "-selector",
                "k8s:ns:nowhere",
            ],
            None,
        )
    })?;
    let by_hand = entries(&spire)?
        .into_iter()
        .find(|e| e.spiffe_id == by_hand_id)
        .context("the entry made by hand is not in SPIRE")?;
    ensure!(
        !by_hand.is_ours(),
        "the hand-made entry has our prefix: {by_hand:?}"
    );

    let operator = Operator::start(cluster, spire.socket_path(), ns.name())?;
    let mut run = Run { spire, operator };
    let result = steps(cluster, ns, &mut run, &agent_id, &by_hand).await;
    if result.is_err() {
        eprintln!(
            "--- spire-server log tail ---\n{}\n--- wimsey-operator log tail ---\n{}",
            run.spire.log_tail(40),
            run.operator.log_tail(60)
        );
    }
    result
}

/// The hand-made entry is still there, unchanged.
fn check_by_hand(now: &[Entry], by_hand: &Entry, when: &str) -> Result<()> {
    ensure!(
        now.contains(by_hand),
        "{when}: the entry made with `spire-server entry create` is gone or changed; entries:\n{}",
        show(now)
    );
    Ok(())
}

async fn steps(
    cluster: &Cluster,
    ns: &TestNamespace,
    run: &mut Run,
    agent_id: &str,
    by_hand: &Entry,
) -> Result<()> {
    let client = cluster.client();
    let pods: Api<Pod> = ns.api();
    let csids: Api<DynamicObject> = Api::all_with(client.clone(), &csid_resource());

    // 1. The agent attests (k8s_psat) with the ID our parent IDs name.
    let bundle_pem = blocking(|| run.spire.cli(&["bundle", "show"], None))?;
    deploy_agent(cluster, ns, run.spire.server_port(), &bundle_pem).await?;
    let agent_pods = ListParams::default().labels("app=spire-agent");
    let t = Instant::now();
    poll_until(
        "the spire-agent pod Ready (healthcheck)",
        AGENT_TIMEOUT,
        || async {
            let list = pods.list(&agent_pods).await?.items;
            Ok(list.iter().any(is_ready).then_some(()))
        },
    )
    .await?;
    let agents = agent_ids(&run.spire)?;
    ensure!(
        agents.iter().any(|a| a == agent_id),
        "SPIRE lists agents {agents:?}, not {agent_id} (k8s_psat cluster {CLUSTER_NAME}, node UID)"
    );
    println!(
        "spire-stack: spire-agent attested as {agent_id} ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    // 2. A ClusterSPIFFEID of our class; a pod gets its SVID from the agent.
    let namespace: Namespace = Api::all(client.clone()).get(ns.name()).await?;
    let csid_name = ns.name().to_string();
    let id_v1 = format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/default/v1", ns.name());
    let id_v2 = format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/default/v2", ns.name());
    let csid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": csid_name, "ownerReferences": owned_by(&namespace)},
        "spec": {
            "className": CLASS,
            "spiffeIDTemplate": format!("{SPIRE_ENTRY_TEMPLATE}/v1"),
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}},
            "podSelector": {"matchLabels": {"app": PROBE_LABEL}},
        },
    }))?;
    csids.create(&PostParams::default(), &csid).await?;
    start_pod(ns, agent_probe_pod("probe-1")?).await?;
    let uid1 = pod_uid(&pods.get("probe-1").await?)?;
    let pod_selector = |uid: &str| format!("k8s:pod-uid:{uid}");
    let (s1, p1) = (pod_selector(&uid1), agent_id.to_string());
    let want = id_v1.clone();
    let entry1 = wait_for_entries(run, "probe-1's entry in SPIRE", ENTRY_TIMEOUT, |now| {
        now.iter()
            .find(|e| e.is_ours() && e.spiffe_id == want && e.selectors.contains(&s1))
            .cloned()
    })
    .await?;
    ensure!(
        entry1.parent_id == p1,
        "probe-1's entry has parent {}, not the agent's ID {p1}",
        entry1.parent_id
    );
    wait_for_svid(&pods, "probe-1", &id_v1, SVID_TIMEOUT).await?;
    wait_for_ready(
        &csids,
        &csid_name,
        "True",
        "Reconciled",
        "the ClusterSPIFFEID Ready (status by our operator)",
    )
    .await?;
    check_by_hand(&entries(&run.spire)?, by_hand, "after the first pod")?;

    // 3. A new spiffeIDTemplate: the entry is replaced in SPIRE and the pod's stream moves on.
    csids
        .patch(
            &csid_name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"spiffeIDTemplate": format!("{SPIRE_ENTRY_TEMPLATE}/v2")}}),
            ),
        )
        .await?;
    let (want, old) = (id_v2.clone(), id_v1.clone());
    let s1 = pod_selector(&uid1);
    wait_for_entries(run, "probe-1's entry moved to /v2", ENTRY_TIMEOUT, |now| {
        let mine: Vec<&Entry> = now.iter().filter(|e| e.is_ours()).collect();
        (mine
            .iter()
            .any(|e| e.spiffe_id == want && e.selectors.contains(&s1))
            && !mine.iter().any(|e| e.spiffe_id == old))
        .then_some(())
    })
    .await?;
    wait_for_svid(&pods, "probe-1", &id_v2, SVID_TIMEOUT).await?;
    // Ready before the outage, so a BackendUnavailable below comes from it
    wait_for_ready(
        &csids,
        &csid_name,
        "True",
        "Reconciled",
        "the ClusterSPIFFEID Ready after the template change",
    )
    .await?;
    let before_restart: Vec<Entry> = entries(&run.spire)?;
    check_by_hand(&before_restart, by_hand, "after the template change")?;

    // 4. SPIRE Server restart: a pod created while it is down gets its entry once it is back.
    let t = Instant::now();
    blocking(|| run.spire.stop())?;
    println!("spire-stack: spire-server stopped");
    let pod2 = agent_probe_pod("probe-2")?;
    pods.create(&PostParams::default(), &pod2).await?;
    let uid2 = pod_uid(&pods.get("probe-2").await?)?;
    // the operator tried to write probe-2's entry and says so on the resource
    wait_for_ready(
        &csids,
        &csid_name,
        "False",
        "BackendUnavailable",
        "the ClusterSPIFFEID Ready=False BackendUnavailable while SPIRE Server is down",
    )
    .await?;
    // the agent keeps serving what it holds
    let out = fetch(&pods, "probe-1").await?;
    ensure!(
        parse_x509_lines(&out.stdout).iter().any(|l| l.id == id_v2),
        "probe-1 fetched no SVID from the agent while SPIRE Server was down: {}{}",
        out.stdout,
        out.stderr
    );
    blocking(|| run.spire.start_again())?;
    println!(
        "spire-stack: spire-server restarted, pid {} ({:.1} s down)",
        run.spire.pid(),
        t.elapsed().as_secs_f64()
    );
    let s2 = pod_selector(&uid2);
    let want = id_v2.clone();
    let kept: Vec<Entry> = before_restart.clone();
    wait_for_entries(
        run,
        "every entry from before the restart, and probe-2's",
        ENTRY_TIMEOUT,
        |now| {
            (kept.iter().all(|e| now.contains(e))
                && now
                    .iter()
                    .any(|e| e.is_ours() && e.spiffe_id == want && e.selectors.contains(&s2)))
            .then_some(())
        },
    )
    .await?;
    wait_for_ready(
        &csids,
        &csid_name,
        "True",
        "Reconciled",
        "the ClusterSPIFFEID Ready again after the restart",
    )
    .await?;
    wait_for_svid(&pods, "probe-2", &id_v2, SVID_TIMEOUT).await?;
    // probe-1 fetches anew after the restart (a new connection to the agent)
    let out = poll_until(
        "probe-1 fetches its SVID after the restart",
        SVID_TIMEOUT,
        || async {
            let out = fetch(&pods, "probe-1").await?;
            let lines = parse_x509_lines(&out.stdout);
            Ok(lines.iter().any(|l| l.id == id_v2).then_some(out.stdout))
        },
    )
    .await?;
    println!("spire-stack: probe-1 after the restart: {}", out.trim());
    check_by_hand(&entries(&run.spire)?, by_hand, "after the restart")?;

    // 5. Deleting the ClusterSPIFFEID removes every entry of ours, and only those.
    csids.delete(&csid_name, &DeleteParams::default()).await?;
    wait_for_entries(run, "no entry of ours left", ENTRY_TIMEOUT, |now| {
        (!now.iter().any(Entry::is_ours)).then_some(())
    })
    .await?;
    let end = entries(&run.spire)?;
    check_by_hand(&end, by_hand, "after the ClusterSPIFFEID was deleted")?;
    println!(
        "spire-stack: the hand-made entry {} ({}) survived every reconcile",
        by_hand.id, by_hand.spiffe_id
    );
    Ok(())
}

#[test]
fn entry_show_json_parses() {
    let json = r#"{"entries":[{"id":"e2e.abc","spiffe_id":{"trust_domain":"td","path":"/a"},
        "parent_id":{"trust_domain":"td","path":"/spire/agent/k8s_psat/c/n"},
        "selectors":[{"type":"k8s","value":"pod-uid:1"}],"x509_svid_ttl":3600}],"next_page_token":""}"#;
    let e = parse_entries(json).unwrap_or_default();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].spiffe_id, "spiffe://td/a");
    assert_eq!(e[0].parent_id, "spiffe://td/spire/agent/k8s_psat/c/n");
    assert!(e[0].is_ours());
    assert!(e[0].selectors.contains("k8s:pod-uid:1"));
    assert!(parse_entries("{}").unwrap_or_default().is_empty());
}
