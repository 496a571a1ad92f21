//! What the identity tests share: a ClusterSPIFFEID per test namespace, the pods that read their
//! identity (spiffe-probe over the Workload API, the test app over files), and the parsing of
//! spiffe-probe's output.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Pod, VolumeMount};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, LogParams, PostParams,
};
use kube::{Api, Client};
use serde_json::json;

use crate::cluster::{Cluster, image};
use crate::exec::exec;
use crate::namespace::TestNamespace;
use crate::wait::{pod_ready, poll_until, wait_for};
use crate::wimsey;
use crate::workloads::{csi_volume, pod, probe_pod, restricted};

pub const TRUST_DOMAIN: &str = "example.org";
pub const POD_TIMEOUT: Duration = Duration::from_secs(120);
pub const SVID_TIMEOUT: Duration = Duration::from_secs(60);
/// spiffe-probe's path in its image.
pub const PROBE: &str = "/spiffe-probe";
/// The test app's path in its image.
pub const APP: &str = "/wimsey-test-app";
/// Where files-mode pods mount their volume.
pub const FILES_DIR: &str = "/var/run/spiffe";

fn cluster_spiffe_id_api(client: Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", "ClusterSPIFFEID");
    Api::all_with(client, &ApiResource::from_gvk(&gvk))
}

/// The SPIFFE ID our ClusterSPIFFEIDs give a pod of `ns` running as the default ServiceAccount.
pub fn expected_id(ns: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/default")
}

/// A ClusterSPIFFEID named after the test namespace that selects every pod in it.
pub async fn create_cluster_spiffe_id(
    cluster: &Cluster,
    ns: &TestNamespace,
    ttl: Option<&str>,
) -> Result<String> {
    let name = ns.name().to_string();
    let mut spec = json!({
        "spiffeIDTemplate":
            "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}},
    });
    if let Some(ttl) = ttl {
        spec["ttl"] = json!(ttl);
    }
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    cluster_spiffe_id_api(cluster.client())
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("create ClusterSPIFFEID {name}"))?;
    Ok(name)
}

pub async fn delete_cluster_spiffe_id(cluster: &Cluster, name: &str) -> Result<()> {
    match cluster_spiffe_id_api(cluster.client())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A pod of one container on a files-mode volume mounted (read-only) at [`FILES_DIR`].
pub fn files_mode_pod(name: &str, image_name: &str, args: &[&str]) -> Result<Pod> {
    let container = Container {
        name: "app".into(),
        image: Some(image(image_name)?),
        image_pull_policy: Some("Never".into()),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        security_context: Some(restricted()),
        volume_mounts: Some(vec![VolumeMount {
            name: "spiffe".into(),
            mount_path: FILES_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Ok(pod(name, container, csi_volume("files")))
}

/// A pod of the test app (which can `cat`) with a files-mode volume.
pub fn files_pod(name: &str) -> Result<Pod> {
    files_mode_pod(name, "test-app", &["serve", "--port", "8080"])
}

/// One `x509 <id> serial=<hex> ...` line of spiffe-probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Line {
    pub id: String,
    pub serial: String,
}

pub fn parse_x509_lines(out: &str) -> Vec<X509Line> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "x509").then_some(())?;
            let id = words.next()?.to_string();
            let serial = words.find_map(|w| w.strip_prefix("serial="))?.to_string();
            Some(X509Line { id, serial })
        })
        .collect()
}

pub async fn logs(pods: &Api<Pod>, name: &str) -> Result<String> {
    Ok(pods.logs(name, &LogParams::default()).await?)
}

/// Waits until the pod's `spiffe-probe watch` has logged at least `n` distinct SVIDs.
pub async fn wait_for_svids(
    pods: &Api<Pod>,
    name: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<X509Line>> {
    poll_until(
        &format!("{n} X.509-SVID(s) in the log of {name}"),
        timeout,
        || async {
            let mut seen = parse_x509_lines(&logs(pods, name).await?);
            seen.dedup_by(|a, b| a.serial == b.serial);
            Ok((seen.len() >= n).then_some(seen))
        },
    )
    .await
}

/// A file of a files-mode pod's volume (the test app's `cat`).
pub async fn read_pod_file(pods: &Api<Pod>, pod: &str, file: &str) -> Result<String> {
    let out = exec(
        pods,
        pod,
        None,
        &[APP, "cat", &format!("{FILES_DIR}/{file}")],
    )
    .await?;
    anyhow::ensure!(out.success(), "cat {file}: {}", out.stderr);
    Ok(out.stdout)
}

/// Runs spiffe-probe in the pod and returns its stdout, whatever the exit status.
pub async fn probe(pods: &Api<Pod>, name: &str, args: &[&str]) -> Result<String> {
    let mut cmd = vec![PROBE];
    cmd.extend_from_slice(args);
    Ok(exec(pods, name, None, &cmd).await?.stdout)
}

/// Creates `pod` in the namespace and waits until it is Ready.
pub async fn start_pod(ns: &TestNamespace, pod: Pod) -> Result<Api<Pod>> {
    let pods: Api<Pod> = ns.api();
    let name = pod.metadata.name.clone().unwrap_or_default();
    pods.create(&PostParams::default(), &pod).await?;
    wait_for(&pods, &name, "pod Ready", POD_TIMEOUT, pod_ready()).await?;
    Ok(pods)
}

/// A `spiffe-probe watch` pod on a Workload API volume, Ready.
pub async fn start_probe_pod(ns: &TestNamespace, name: &str) -> Result<Api<Pod>> {
    start_pod(ns, probe_pod(name)?).await
}

/// Runs `body` in a fresh namespace with a ClusterSPIFFEID for it; cleans both up.
pub async fn with_identity<F, Fut>(
    test: &str,
    prefix: &str,
    ttl: Option<&str>,
    body: F,
) -> Result<()>
where
    F: FnOnce(Cluster, TestNamespace, String) -> Fut,
    Fut: std::future::Future<Output = (TestNamespace, Result<()>)>,
{
    let Some(cluster) = Cluster::connect_node(test).await? else {
        return Ok(());
    };
    wimsey::ensure_installed(&cluster).await?;
    let ns = TestNamespace::create(&cluster, prefix).await?;
    let csid = match create_cluster_spiffe_id(&cluster, &ns, ttl).await {
        Ok(name) => name,
        Err(err) => return ns.finish(Err(err)).await,
    };
    let (ns, result) = body(cluster.clone(), ns, csid.clone()).await;
    let cleanup = delete_cluster_spiffe_id(&cluster, &csid).await;
    ns.finish(result.and(cleanup)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_output() {
        let out = "x509 spiffe://example.org/ns/a/sa/default serial=1f not_after=2026-01-01T00:00:00Z at_ms=1 start_ms=0\n\
                   error code=Unavailable msg=x\n\
                   x509 spiffe://example.org/ns/a/sa/default serial=20 not_after=2026-01-01T00:00:00Z\n";
        let lines = parse_x509_lines(out);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].id, "spiffe://example.org/ns/a/sa/default");
        assert_eq!(lines[0].serial, "1f");
        assert_eq!(lines[1].serial, "20");
    }
}
