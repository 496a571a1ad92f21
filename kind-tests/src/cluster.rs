//! Finding the cluster the tests run against.
//!
//! `make e2e` sets `WIMSEY_E2E=1`, `KUBECONFIG` (the kubeconfig `make cluster-up` printed),
//! `CLUSTER_LEVEL` (`control-plane` or `node`), `CLUSTER_PROVIDER` (`local` or `kind`) and
//! `WIMSEY_IMAGE_TAG` (the tag `make images` gave our images). Without `WIMSEY_E2E=1` every cluster
//! test prints `SKIPPED: <test> needs <what>` and passes, so `cargo test --workspace` works on a
//! machine with no cluster; `make test` runs `make e2e`, where a missing cluster is an error. Under CI
//! (`CI` set) a skip fails the test instead: a CI run never passes on a test that did not run.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// How much of a cluster is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// etcd and kube-apiserver only: API tests; no pod ever runs.
    ControlPlane,
    /// A full node: controller-manager, scheduler, kubelet, containerd.
    Node,
}

impl Level {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "control-plane" => Ok(Self::ControlPlane),
            "node" => Ok(Self::Node),
            other => bail!("CLUSTER_LEVEL must be control-plane or node, not {other:?}"),
        }
    }
}

/// The provider that brought the cluster up (decides how a test reaches the node's filesystem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Upstream binaries on this machine: the node's filesystem is ours.
    Local,
    /// A kind node container named `<cluster>-control-plane`.
    Kind,
}

/// A connection to the e2e cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    config: Config,
    level: Level,
    provider: Provider,
    kubeconfig: PathBuf,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("kubeconfig", &self.kubeconfig)
            .field("level", &self.level)
            .field("provider", &self.provider)
            .field("server", &self.config.cluster_url.to_string())
            .finish()
    }
}

fn e2e_enabled() -> bool {
    std::env::var("WIMSEY_E2E").is_ok_and(|v| v == "1")
}

/// Whether this is a CI run: CI systems set `CI` (to `true`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The one way a cluster test skips: a `SKIPPED:` line on stderr (libtest shows it with
/// `--show-output` or `--nocapture`, as `make e2e` passes), and under CI a panic, so the test fails.
fn skip(test: &str, needs: &str) {
    eprintln!("SKIPPED: {test} needs {needs}");
    assert!(
        !in_ci(),
        "{test} was skipped under CI (CI is set): it needs {needs}"
    );
}

impl Cluster {
    /// Connects for a test that needs only the API server. `Ok(None)` (skipped, see [`skip`]) when no
    /// e2e run is configured.
    pub async fn connect(test: &str) -> Result<Option<Self>> {
        if !e2e_enabled() {
            skip(
                test,
                "an e2e cluster (WIMSEY_E2E=1 and KUBECONFIG; `make e2e` sets both)",
            );
            return Ok(None);
        }
        let kubeconfig: PathBuf = std::env::var_os("KUBECONFIG")
            .context("WIMSEY_E2E=1 but KUBECONFIG is not set: run `make e2e` or `make cluster-up`")?
            .into();
        let cluster = Self::from_kubeconfig(&kubeconfig).await?;
        Ok(Some(cluster))
    }

    /// Connects for a test that runs pods. `Ok(None)` (skipped, see [`skip`]) when no e2e run is
    /// configured or the cluster is only a control plane.
    pub async fn connect_node(test: &str) -> Result<Option<Self>> {
        let Some(cluster) = Self::connect(test).await? else {
            return Ok(None);
        };
        if cluster.level == Level::ControlPlane {
            skip(
                test,
                "a node, and the cluster is CLUSTER_LEVEL=control-plane (`make e2e` raises it)",
            );
            return Ok(None);
        }
        Ok(Some(cluster))
    }

    /// Connects with the given kubeconfig; the level comes from `CLUSTER_LEVEL`, or else from whether the
    /// cluster has a node.
    pub async fn from_kubeconfig(path: &Path) -> Result<Self> {
        let kc = Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("kubeconfig {}", path.display()))?;
        let client = Client::try_from(config.clone()).context("building the kube client")?;
        let level = match std::env::var("CLUSTER_LEVEL") {
            Ok(l) if !l.is_empty() => Level::parse(&l)?,
            _ => {
                let nodes = Api::<Node>::all(client.clone())
                    .list(&ListParams::default().limit(1))
                    .await?;
                if nodes.items.is_empty() {
                    Level::ControlPlane
                } else {
                    Level::Node
                }
            }
        };
        let provider = match std::env::var("CLUSTER_PROVIDER").as_deref() {
            Ok("kind") => Provider::Kind,
            _ => Provider::Local,
        };
        Ok(Self {
            client,
            config,
            level,
            provider,
            kubeconfig: path.to_path_buf(),
        })
    }

    /// A client for this cluster.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The client configuration (to build another client, e.g. on another runtime).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The kubeconfig this connection was made from (for kubectl).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Writes a file on the node's filesystem (for hostPath tests): directly with the local provider,
    /// through `docker exec` into the node container with kind.
    pub fn write_node_file(&self, path: &Path, contents: &[u8]) -> Result<()> {
        match self.provider {
            Provider::Local => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("mkdir {}", dir.display()))?;
                }
                std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
            }
            Provider::Kind => {
                use std::io::Write;
                let node = format!(
                    "{}-control-plane",
                    std::env::var("KIND_CLUSTER").unwrap_or_else(|_| "wimsey".into())
                );
                let script = format!(
                    "mkdir -p \"$(dirname '{0}')\" && cat > '{0}'",
                    path.display()
                );
                let mut child = std::process::Command::new("docker")
                    .args(["exec", "-i", &node, "sh", "-c", &script])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .context("docker exec into the kind node")?;
                child.stdin.take().context("stdin")?.write_all(contents)?;
                let status = child.wait()?;
                if !status.success() {
                    bail!("docker exec {node}: {status}");
                }
                Ok(())
            }
        }
    }

    /// Removes a directory tree written with [`Cluster::write_node_file`] (best effort).
    pub fn remove_node_dir(&self, path: &Path) {
        match self.provider {
            Provider::Local => {
                let _ = std::fs::remove_dir_all(path);
            }
            Provider::Kind => {
                let node = format!(
                    "{}-control-plane",
                    std::env::var("KIND_CLUSTER").unwrap_or_else(|_| "wimsey".into())
                );
                let _ = std::process::Command::new("docker")
                    .args(["exec", &node, "rm", "-rf", &path.display().to_string()])
                    .status();
            }
        }
    }
}

/// The full reference of one of our locally built images, e.g. `image("test-app")` ->
/// `localhost/wimsey/test-app:<WIMSEY_IMAGE_TAG>`.
pub fn image(name: &str) -> Result<String> {
    Ok(format!("localhost/wimsey/{name}:{}", image_tag()?))
}

/// The tag `make images` built (the e2e targets pass it in `WIMSEY_IMAGE_TAG`).
pub fn image_tag() -> Result<String> {
    std::env::var("WIMSEY_IMAGE_TAG")
        .ok()
        .filter(|t| !t.is_empty())
        .context("WIMSEY_IMAGE_TAG is not set (make e2e sets it from `make images`)")
}
