//! Installing wimsey itself into the e2e cluster from the repository's Helm chart
//! (`config/charts/wimsey`, CRDs included), with the images at the tag `make images` built.
//! Idempotent (`helm upgrade --install`), and done once per test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use k8s_openapi::api::storage::v1::CSINode;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::wait::conditions::is_crd_established;

use crate::cluster::{Cluster, image_tag};
use crate::wait::{deployment_ready, poll_until, wait_for};

pub const NAMESPACE: &str = "wimsey-system";
pub const DRIVER: &str = "csi.wimsey.dev";
pub const OPERATOR: &str = "wimsey-operator";
pub const PLUGIN: &str = "wimsey-csi";
const CRDS: [&str; 3] = [
    "clusterspiffeids.spire.spiffe.io",
    "clusterstaticentries.spire.spiffe.io",
    "clusterfederatedtrustdomains.spire.spiffe.io",
];
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);

/// The repository root (this crate lives in `<root>/kind-tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `$KUBECTL`, else the kubectl `make cluster-tools` built into `$WIMSEY_CACHE`, else `kubectl`.
pub fn kubectl() -> PathBuf {
    cached_tool("KUBECTL", "k8s-v", "kubectl")
}

/// `$HELM`, else the helm `make helm-tools` built into `$WIMSEY_CACHE`, else `helm`.
pub fn helm() -> PathBuf {
    cached_tool("HELM", "helm-v", "helm")
}

/// `$<env>`, else `<cache>/<dir prefix>*/bin/<name>`, else `<name>` from PATH.
fn cached_tool(env: &str, dir_prefix: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let cache = std::env::var("WIMSEY_CACHE").unwrap_or_else(|_| "/var/cache/wimsey".into());
    let built = std::fs::read_dir(&cache).ok().and_then(|dir| {
        dir.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(dir_prefix))
            .map(|e| e.path().join("bin").join(name))
            .find(|p| p.is_file())
    });
    built.unwrap_or_else(|| name.into())
}

/// Runs kubectl against the cluster and returns its stdout; a failure carries its stderr.
pub fn run_kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    run_against(&kubectl(), "kubectl", cluster, args)
}

/// Runs a CLI that takes `--kubeconfig` against the cluster; its stdout, or its stderr as the error.
fn run_against(program: &Path, name: &str, cluster: &Cluster, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .output()
        .with_context(|| format!("running {name} {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{name} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Helm release the e2e tests install, from the repository's chart.
pub const RELEASE: &str = "wimsey";

pub fn chart_dir() -> PathBuf {
    repo_root().join("config/charts/wimsey")
}

/// The values that point both images at `tag` (what `make images` built and loaded).
pub fn image_tag_values(tag: &str) -> [String; 4] {
    [
        "--set-string".to_owned(),
        format!("operator.image.tag={tag}"),
        "--set-string".to_owned(),
        format!("csi.image.tag={tag}"),
    ]
}

/// Runs helm against the cluster and returns its stdout; a failure carries its stderr.
pub fn run_helm(cluster: &Cluster, args: &[&str]) -> Result<String> {
    run_against(&helm(), "helm", cluster, args)
}

/// `helm upgrade --install` of the chart (CRDs included) with our images at `tag`, plus `extra`
/// arguments; returns without waiting.
pub fn helm_upgrade(cluster: &Cluster, tag: &str, extra: &[&str]) -> Result<String> {
    let chart = chart_dir().display().to_string();
    let images = image_tag_values(tag);
    let mut args = vec![
        "upgrade",
        "--install",
        RELEASE,
        chart.as_str(),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
    ];
    args.extend(images.iter().map(String::as_str));
    args.extend_from_slice(extra);
    run_helm(cluster, &args)
}

static INSTALLED: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

/// Installs (or updates) wimsey in the cluster from its Helm chart and waits until it serves: CRDs
/// Established, the operator Deployment 2/2 ready, the CSI DaemonSet ready and the driver
/// registered with kubelet on every node. The first caller in a test process does the work; the
/// others wait for it.
pub async fn ensure_installed(cluster: &Cluster) -> Result<()> {
    let mut installed = INSTALLED.lock().await;
    if *installed {
        return Ok(());
    }
    helm_upgrade(cluster, &image_tag()?, &[])?;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    for crd in CRDS {
        wait_for(
            &crds,
            crd,
            "CRD Established",
            Duration::from_secs(60),
            is_crd_established(),
        )
        .await?;
    }
    wait_until_serving(cluster).await?;
    *installed = true;
    Ok(())
}

/// Waits for the operator's rollout (all replicas ready), the plugin's rollout, and the driver's
/// registration on every node.
pub async fn wait_until_serving(cluster: &Cluster) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), NAMESPACE);
    wait_for(
        &deployments,
        OPERATOR,
        "operator Deployment ready",
        ROLLOUT_TIMEOUT,
        deployment_ready(),
    )
    .await?;
    // Not the DaemonSet's counters: other tests create Node objects with no kubelet behind them,
    // whose plugin pods never start. Every Ready node must run a Ready plugin pod of the current
    // template.
    let daemonsets: Api<DaemonSet> = Api::namespaced(cluster.client(), NAMESPACE);
    let plugin_pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let nodes: Api<Node> = Api::all(cluster.client());
    poll_until(
        "a Ready wimsey-csi pod of the current template on every Ready node",
        ROLLOUT_TIMEOUT,
        || async {
            let ds = daemonsets.get(PLUGIN).await?;
            let want_image = ds
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone());
            let selector = ListParams::default().labels("app.kubernetes.io/name=wimsey-csi");
            let pods = plugin_pods.list(&selector).await?.items;
            let ready_nodes: Vec<String> = nodes
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|n| {
                    has_condition(
                        n.status.as_ref().and_then(|s| s.conditions.as_ref()),
                        "Ready",
                    )
                })
                .filter_map(|n| n.metadata.name)
                .collect();
            let served = !ready_nodes.is_empty()
                && ready_nodes.iter().all(|node| {
                    pods.iter().any(|p| {
                        let spec = p.spec.as_ref();
                        spec.and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                            && p.metadata.deletion_timestamp.is_none()
                            && spec
                                .and_then(|s| s.containers.first())
                                .and_then(|c| c.image.clone())
                                == want_image
                            && has_pod_condition(p, "Ready")
                    })
                });
            Ok(served.then_some(()))
        },
    )
    .await?;
    let csinodes: Api<CSINode> = Api::all(cluster.client());
    poll_until(
        "csi.wimsey.dev registered with kubelet on every node",
        ROLLOUT_TIMEOUT,
        || async {
            let nodes = csinodes.list(&ListParams::default()).await?;
            let all = !nodes.items.is_empty()
                && nodes.items.iter().all(|n| {
                    n.spec
                        .drivers
                        .iter()
                        .any(|d| d.name == DRIVER && !d.node_id.is_empty())
                });
            Ok(all.then_some(()))
        },
    )
    .await
}

fn has_condition(conditions: Option<&Vec<NodeCondition>>, type_: &str) -> bool {
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn has_pod_condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_images_point_at_the_tag() {
        let values = image_tag_values("abc123-dirty");
        assert_eq!(values[1], "operator.image.tag=abc123-dirty");
        assert_eq!(values[3], "csi.image.tag=abc123-dirty");
    }

    #[test]
    fn the_chart_is_in_the_repository() {
        assert!(chart_dir().join("Chart.yaml").is_file());
    }
}
