//! The Helm chart's life cycle on the real cluster, with workloads that keep their identity
//! through it: `helm install` -> pods get SVIDs -> `helm upgrade` to a new image tag (every
//! operator and plugin pod replaced) while the workloads keep receiving SVIDs, none ever left
//! holding only an expired one -> `helm uninstall` leaves nothing of wimsey but the CRDs and the
//! authority Secret -> the rendered chart applied with `kubectl apply --server-side` twice (the
//! GitOps path) changes nothing the second time, even with the operator running in between.
//!
//! One test, run alone (its own test binary): it takes wimsey away from the cluster for a while.
//! It leaves wimsey installed from the chart again for the suites that follow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::PostParams;
use wimsey_kind_tests::cluster::image_tag;
use wimsey_kind_tests::identity::{
    POD_TIMEOUT, SVID_TIMEOUT, create_cluster_spiffe_id, delete_cluster_spiffe_id, expected_id,
    files_pod, logs, read_pod_file, start_probe_pod, wait_for_svids,
};
use wimsey_kind_tests::svid_timeline::{expiry_gaps, now_ms, svid_timeline};
use wimsey_kind_tests::wait::{pod_ready, poll_until, wait_for};
use wimsey_kind_tests::wimsey::{
    self, NAMESPACE, RELEASE, chart_dir, helm_upgrade, image_tag_values, run_helm, run_kubectl,
    wait_until_serving,
};
use wimsey_kind_tests::{Cluster, TestNamespace};

/// Rotation at half-life: a new SVID every ~15 s, so the upgrade happens across rotations and a
/// stalled plugin or node API shows up as an expired SVID within the test.
const TTL: &str = "30s";
const WATCHERS: usize = 3;
const UNINSTALL_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn helm_install_upgrade_uninstall_and_apply_keep_every_workload_served() -> Result<()> {
    let Some(cluster) = Cluster::connect_node(
        "helm_install_upgrade_uninstall_and_apply_keep_every_workload_served",
    )
    .await?
    else {
        return Ok(());
    };
    let tag = image_tag()?;
    wimsey::ensure_installed(&cluster).await?;

    let ns = TestNamespace::create(&cluster, "chart").await?;
    let csid = create_cluster_spiffe_id(&cluster, &ns, Some(TTL)).await?;
    let upgraded = upgrade_keeps_identities(&cluster, &ns, &tag).await;
    let deleted = delete_cluster_spiffe_id(&cluster, &csid).await;
    let namespace = ns.name().to_owned();
    ns.finish(upgraded.and(deleted)).await?;
    // The workloads' volumes are unpublished by the plugin: it must outlive them.
    namespace_gone(&cluster, &namespace).await?;

    uninstall_leaves_only_the_crds_and_the_authority(&cluster).await?;
    server_side_apply_is_idempotent(&cluster, &tag).await?;

    // Back to the chart, for the suites that run next.
    helm_upgrade(&cluster, &tag, &[])?;
    wait_until_serving(&cluster).await
}

async fn namespace_gone(cluster: &Cluster, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    poll_until(
        &format!("namespace {name} deleted"),
        UNINSTALL_TIMEOUT,
        || async { Ok(namespaces.get_opt(name).await?.is_none().then_some(())) },
    )
    .await
}

/// `helm upgrade` to `<tag>-next`: every operator and plugin pod is replaced while the workloads
/// keep fetching. Lost identity = a moment when a workload's newest SVID had expired.
async fn upgrade_keeps_identities(cluster: &Cluster, ns: &TestNamespace, tag: &str) -> Result<()> {
    let mut watchers = Vec::new();
    for i in 0..WATCHERS {
        let name = format!("watch-{i}");
        start_probe_pod(ns, &name).await?;
        watchers.push(name);
    }
    let pods: Api<Pod> = ns.api();
    for name in &watchers {
        wait_for_svids(&pods, name, 1, SVID_TIMEOUT).await?;
    }
    pods.create(&PostParams::default(), &files_pod("files")?)
        .await?;
    wait_for(&pods, "files", "files pod Ready", POD_TIMEOUT, pod_ready()).await?;

    let before = plugin_and_operator_pods(cluster).await?;
    let started = Instant::now();
    let next = format!("{tag}-next");
    helm_upgrade(cluster, &next, &[])?;
    wait_until_serving(cluster).await?;
    let after = plugin_and_operator_pods(cluster).await?;
    ensure!(
        after.iter().all(|uid| !before.contains(uid)),
        "helm upgrade left pods of the old release running: {before:?} -> {after:?}"
    );
    let upgrade_done = now_ms();
    println!(
        "helm upgrade to {next}: {} operator and plugin pods replaced, serving again after {:.1} s",
        after.len(),
        started.elapsed().as_secs_f64()
    );

    // Every workload receives an SVID from the upgraded release, and never held only an expired one.
    let mut lost = Vec::new();
    for name in &watchers {
        let timeline = poll_until(
            &format!("an SVID after the upgrade in the log of {name}"),
            SVID_TIMEOUT,
            || async {
                let timeline = svid_timeline(&logs(&pods, name).await?)?;
                Ok(timeline
                    .iter()
                    .any(|s| s.received_ms > upgrade_done)
                    .then_some(timeline))
            },
        )
        .await?;
        ensure!(
            timeline.iter().all(|s| s.id == expected_id(ns.name())),
            "{name} got another identity: {timeline:?}"
        );
        let gaps = expiry_gaps(&timeline, now_ms());
        println!(
            "{name}: {} SVIDs across the upgrade, {} gap(s) with only an expired SVID",
            timeline.len(),
            gaps.len()
        );
        if !gaps.is_empty() {
            lost.push(format!("{name}: {gaps:?}"));
        }
    }
    // The files-mode workload: its files are rewritten by the upgraded plugin.
    let at_upgrade = read_svid_file(&pods).await?;
    poll_until(
        "files-mode svid.pem rewritten after the upgrade",
        SVID_TIMEOUT,
        || async { Ok((read_svid_file(&pods).await? != at_upgrade).then_some(())) },
    )
    .await?;
    println!(
        "workloads that lost identity through helm upgrade: {} of {WATCHERS} watchers; the files-mode pod's svid.pem was rewritten by the upgraded plugin",
        lost.len()
    );
    ensure!(lost.is_empty(), "workloads lost their identity: {lost:?}");
    Ok(())
}

async fn read_svid_file(pods: &Api<Pod>) -> Result<String> {
    let pem = read_pod_file(pods, "files", "svid.pem").await?;
    ensure!(pem.contains("BEGIN CERTIFICATE"), "svid.pem: {pem:?}");
    Ok(pem)
}

/// UIDs of every operator and plugin pod.
async fn plugin_and_operator_pods(cluster: &Cluster) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let list = pods
        .list(
            &kube::api::ListParams::default()
                .labels("app.kubernetes.io/name in (wimsey-operator,wimsey-csi)"),
        )
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.uid)
        .collect())
}

/// What may remain in the release namespace after `helm uninstall`: the authority Secret (the
/// trust domain's CA, kept on purpose) and what Kubernetes itself puts in every namespace.
const KEPT_IN_NAMESPACE: [&str; 3] = [
    "secret/wimsey-authority",
    "configmap/kube-root-ca.crt",
    "serviceaccount/default",
];
const NAMESPACED_KINDS: &str = "deployments,daemonsets,replicasets,pods,services,configmaps,\
     serviceaccounts,roles,rolebindings,leases,secrets,networkpolicies,poddisruptionbudgets";

async fn uninstall_leaves_only_the_crds_and_the_authority(cluster: &Cluster) -> Result<()> {
    let started = Instant::now();
    run_helm(
        cluster,
        &["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"],
    )?;
    // The garbage collector removes what the operator created (owned by its Deployment).
    let left = poll_until(
        "nothing of wimsey in its namespace but the authority Secret",
        UNINSTALL_TIMEOUT,
        || async {
            let left = namespaced_leftovers(cluster)?;
            Ok(left.is_empty().then_some(left))
        },
    )
    .await
    .or_else(|error| {
        let left = namespaced_leftovers(cluster).unwrap_or_default();
        bail!("{error:#}; left: {left:?}")
    })?;
    ensure!(left.is_empty());
    let names = run_kubectl(cluster, &["get", "-n", NAMESPACE, "secret", "-o", "name"])?;
    ensure!(
        names.lines().any(|l| l == "secret/wimsey-authority"),
        "the authority Secret was deleted by helm uninstall: {names}"
    );
    let cluster_wide = run_kubectl(
        cluster,
        &[
            "get",
            "clusterroles,clusterrolebindings,csidrivers",
            "-o",
            "name",
        ],
    )?;
    let ours: Vec<&str> = cluster_wide
        .lines()
        .filter(|l| l.contains("wimsey"))
        .collect();
    ensure!(ours.is_empty(), "left after helm uninstall: {ours:?}");
    let crds = run_kubectl(cluster, &["get", "crd", "-o", "name"])?;
    let kept = crds
        .lines()
        .filter(|l| l.ends_with(".spire.spiffe.io"))
        .count();
    ensure!(kept == 3, "the CRDs are not kept by helm uninstall: {crds}");
    println!(
        "helm uninstall: gone after {:.1} s; kept: 3 CRDs and secret/wimsey-authority",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn namespaced_leftovers(cluster: &Cluster) -> Result<Vec<String>> {
    let names = run_kubectl(
        cluster,
        &["get", "-n", NAMESPACE, NAMESPACED_KINDS, "-o", "name"],
    )?;
    Ok(names
        .lines()
        .map(without_group)
        .filter(|l| !KEPT_IN_NAMESPACE.contains(&l.as_str()))
        .collect())
}

/// `lease.coordination.k8s.io/x` -> `lease/x`, so every kind reads as `kind/name`.
fn without_group(line: &str) -> String {
    match line.split_once('/') {
        Some((kind, name)) => format!("{}/{name}", kind.split('.').next().unwrap_or(kind)),
        None => line.to_owned(),
    }
}

/// The rendered chart applied server-side, the operator given time to do its work, and applied
/// again: `kubectl diff` shows nothing and no object's spec generation or version moves.
async fn server_side_apply_is_idempotent(cluster: &Cluster, tag: &str) -> Result<()> {
    let chart = chart_dir().display().to_string();
    let images = image_tag_values(tag);
    let kube_version = cluster.client().apiserver_version().await?.git_version;
    let mut args = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version.as_str(),
        "--set",
        "crds.enabled=false",
    ];
    args.extend(images.iter().map(String::as_str));
    let rendered = run_helm(cluster, &args)?;
    let dir = wimsey::repo_root()
        .join("target/kustomize")
        .join(format!("ssa-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("wimsey.yaml");
    std::fs::write(&file, &rendered)?;
    let file = file.display().to_string();
    let result = async {
        let apply = ["apply", "--server-side", "-f", file.as_str()];
        run_kubectl(cluster, &apply)?;
        wait_until_serving(cluster).await?;
        let first = versions(cluster, &file)?;
        let diff = std::process::Command::new(wimsey::kubectl())
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .args(["diff", "--server-side", "-f", file.as_str()])
            .output()?;
        ensure!(
            diff.status.code() == Some(0),
            "kubectl diff after the operator ran shows changes:\n{}{}",
            String::from_utf8_lossy(&diff.stdout),
            String::from_utf8_lossy(&diff.stderr)
        );
        let second_apply = run_kubectl(cluster, &apply)?;
        let second = versions(cluster, &file)?;
        ensure!(
            first == second,
            "the second server-side apply changed objects:\n{first:?}\n{second:?}\n{second_apply}"
        );
        println!(
            "kubectl apply --server-side twice: {} objects, none changed by the second apply",
            first.len()
        );
        run_kubectl(cluster, &["delete", "--wait", "-f", file.as_str()])?;
        poll_until(
            "nothing of the applied manifests left",
            UNINSTALL_TIMEOUT,
            || async { Ok(namespaced_leftovers(cluster)?.is_empty().then_some(())) },
        )
        .await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Per object of `file`: its spec generation where it has one (a status write moves the
/// resourceVersion of a Deployment without anyone changing it), else its resourceVersion.
fn versions(cluster: &Cluster, file: &str) -> Result<BTreeMap<String, String>> {
    let out = run_kubectl(
        cluster,
        &[
            "get",
            "-f",
            file,
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name} {.metadata.generation} {.metadata.resourceVersion}{\"\\n\"}{end}",
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            let object = words.next()?.to_owned();
            let generation = words.next().unwrap_or_default();
            let version = words.next().unwrap_or_default();
            let stamp = if generation.is_empty() {
                format!("rv {version}")
            } else {
                format!("generation {generation}")
            };
            Some((object, stamp))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names_read_alike_across_groups() {
        assert_eq!(
            without_group("lease.coordination.k8s.io/wimsey-operator"),
            "lease/wimsey-operator"
        );
        assert_eq!(
            without_group("configmap/kube-root-ca.crt"),
            "configmap/kube-root-ca.crt"
        );
    }
}
