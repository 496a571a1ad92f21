//! Installing wimsey itself into the e2e cluster from the repository's manifests: the CRDs from
//! `crds/`, then `config/default` through a temporary kustomize overlay that points the images at
//! the tag `make images` built. Idempotent (server-side apply), and done once per test process.

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

use crate::cluster::Cluster;
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
    if let Some(k) = std::env::var_os("KUBECTL") {
        return k.into();
    }
    let cache = std::env::var("WIMSEY_CACHE").unwrap_or_else(|_| "/var/cache/wimsey".into());
    let built = std::fs::read_dir(&cache).ok().and_then(|dir| {
        dir.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("k8s-v"))
            .map(|e| e.path().join("bin/kubectl"))
            .find(|p| p.is_file())
    });
    built.unwrap_or_else(|| "kubectl".into())
}

/// Runs kubectl against the cluster and returns its stdout; a failure carries its stderr.
pub fn run_kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .output()
        .with_context(|| format!("running kubectl {args:?}"))?;
    if !out.status.success() {
        bail!(
            "kubectl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The overlay the e2e tests apply: `config/default` with our images at `tag`. kustomize takes no
/// absolute base, so the overlay lives in `<repo>/target/kustomize/<name>` and names the base
/// relative to it.
pub fn overlay_kustomization(tag: &str) -> String {
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         resources:\n  - ../../../config/default\n\
         images:\n  - name: localhost/wimsey/operator\n    newTag: \"{tag}\"\n  \
         - name: localhost/wimsey/csi\n    newTag: \"{tag}\"\n"
    )
}

static INSTALLED: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

/// Installs (or updates) wimsey in the cluster and waits until it serves: CRDs Established, the
/// operator Deployment 2/2 ready, the CSI DaemonSet ready and the driver registered with kubelet on
/// every node. The first caller in a test process does the work; the others wait for it.
pub async fn ensure_installed(cluster: &Cluster) -> Result<()> {
    let mut installed = INSTALLED.lock().await;
    if *installed {
        return Ok(());
    }
    let root = repo_root();
    run_kubectl(
        cluster,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &root.join("crds").display().to_string(),
        ],
    )?;
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

    let tag = std::env::var("WIMSEY_IMAGE_TAG")
        .ok()
        .filter(|t| !t.is_empty())
        .context("WIMSEY_IMAGE_TAG is not set (make e2e sets it from `make images`)")?;
    let overlay = root
        .join("target/kustomize")
        .join(format!("e2e-{}", std::process::id()));
    std::fs::create_dir_all(&overlay)?;
    std::fs::write(
        overlay.join("kustomization.yaml"),
        overlay_kustomization(&tag),
    )?;
    let applied = run_kubectl(
        cluster,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            &overlay.display().to_string(),
        ],
    );
    let _ = std::fs::remove_dir_all(&overlay);
    applied?;

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
    fn overlay_points_both_images_at_the_tag() {
        let k = overlay_kustomization("abc123-dirty");
        assert!(k.contains("  - ../../../config/default\n"), "{k}");
        assert_eq!(k.matches("newTag: \"abc123-dirty\"").count(), 2, "{k}");
        assert!(k.contains("name: localhost/wimsey/operator"), "{k}");
        assert!(k.contains("name: localhost/wimsey/csi"), "{k}");
    }
}
