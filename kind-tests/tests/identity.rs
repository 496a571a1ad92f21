//! Pods get identities on the real cluster: wimsey installed from its Helm chart
//! (operator with 2 replicas, CSI DaemonSet), a ClusterSPIFFEID per test, and workloads that read
//! their SVIDs through a `csi.wimsey.dev` volume: our go-spiffe client (`spiffe-probe`) over the
//! Workload API socket, and the files mode read with `cat` and checked with the openssl CLI.
//!
//! Tests run in parallel, each in its own namespace with its own ClusterSPIFFEID. The one that
//! restarts the plugin takes [`PLUGIN_LOCK`] for writing so no other test sees the restart.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use wimsey_kind_tests::identity::{
    POD_TIMEOUT, SVID_TIMEOUT, delete_cluster_spiffe_id, expected_id, files_pod, parse_x509_lines,
    probe, read_pod_file, start_probe_pod, wait_for_svids, with_identity,
};
use wimsey_kind_tests::plugin_admin::{admin_get, ensure_at_least, plugin_pod_on};
use wimsey_kind_tests::wait::{pod_ready, poll_until, wait_for};
use wimsey_kind_tests::wimsey::{self, NAMESPACE, PLUGIN};
use wimsey_kind_tests::{Cluster, TestNamespace};

/// Short enough that a rotation (at half-life) happens well inside a test.
const SHORT_TTL: &str = "20s";
const ROTATION_TIMEOUT: Duration = Duration::from_secs(90);

/// Readers of the plugin take it shared; the test that restarts the plugin takes it exclusively.
static PLUGIN_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[tokio::test]
async fn workload_gets_x509_and_jwt_svids_and_sees_rotation() -> Result<()> {
    let _shared = PLUGIN_LOCK.read().await;
    with_identity(
        "workload_gets_x509_and_jwt_svids_and_sees_rotation",
        "svid",
        Some(SHORT_TTL),
        |_, ns, _| async move {
            let r = workload_svids(&ns).await;
            (ns, r)
        },
    )
    .await
}

async fn workload_svids(ns: &TestNamespace) -> Result<()> {
    let want = expected_id(ns.name());
    let pods = start_probe_pod(ns, "probe").await?;

    // The streamed X.509-SVID (verified against the streamed bundle by the client) carries the ID
    // the ClusterSPIFFEID's template renders for this pod.
    let first = wait_for_svids(&pods, "probe", 1, SVID_TIMEOUT).await?;
    ensure!(first[0].id == want, "SVID {:?}, want {want}", first[0].id);

    // One-shot fetch: same identity.
    let fetched = probe(&pods, "probe", &["fetch"]).await?;
    let fetched = parse_x509_lines(&fetched);
    ensure!(
        fetched.len() == 1 && fetched[0].id == want,
        "fetch printed {fetched:?}"
    );

    // A JWT-SVID that validates offline against the JWT bundle and through ValidateJWTSVID.
    let jwt = probe(&pods, "probe", &["jwt", "-audience", "e2e-audience"]).await?;
    ensure!(
        jwt.trim() == format!("jwt {want} aud=e2e-audience validated=true"),
        "jwt printed {jwt:?}"
    );

    // Without the workload.spiffe.io header the server refuses with InvalidArgument.
    let bare = probe(&pods, "probe", &["no-header"]).await?;
    ensure!(
        bare.starts_with("status code=InvalidArgument"),
        "no-header printed {bare:?}"
    );

    // With a 20 s TTL the plugin renews at half-life and streams the new SVID.
    let rotated = wait_for_svids(&pods, "probe", 2, ROTATION_TIMEOUT).await?;
    ensure!(
        rotated.iter().all(|l| l.id == want),
        "rotated SVIDs {rotated:?}"
    );
    Ok(())
}

#[tokio::test]
async fn plugin_readyz_and_metrics_show_the_published_volume() -> Result<()> {
    let _shared = PLUGIN_LOCK.read().await;
    with_identity(
        "plugin_readyz_and_metrics_show_the_published_volume",
        "admin",
        None,
        |cluster, ns, _| async move {
            let r = plugin_admin(&cluster, &ns).await;
            (ns, r)
        },
    )
    .await
}

/// The plugin on the probe pod's node is ready, and its metrics count the probe's publish, its
/// active volume and stream, and a node session. Other tests publish on the same plugin at the
/// same time, so counts are lower bounds.
async fn plugin_admin(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let pods = start_probe_pod(ns, "probe").await?;
    wait_for_svids(&pods, "probe", 1, SVID_TIMEOUT).await?;
    let node = pods
        .get("probe")
        .await?
        .spec
        .and_then(|s| s.node_name)
        .context("the probe pod has no node")?;
    let plugin = plugin_pod_on(cluster, &node).await?;

    let (status, body) = admin_get(cluster, &plugin, "/livez").await?;
    ensure!(status == 200, "/livez answered {status} {body:?}");
    let (status, body) = admin_get(cluster, &plugin, "/readyz").await?;
    ensure!(status == 200, "/readyz answered {status} {body:?}");

    let (status, text) = admin_get(cluster, &plugin, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    for series in [
        r#"wimsey_csi_volume_operations_total{operation="publish",mode="workload-api",result="ok"}"#,
        r#"wimsey_csi_volume_operation_duration_seconds_count{operation="publish",mode="workload-api",result="ok"}"#,
        r#"wimsey_csi_active_volumes{mode="workload-api"}"#,
        // spiffe-probe watch keeps its X.509 stream open.
        "wimsey_csi_workload_api_streams",
        "wimsey_csi_node_session_established",
    ] {
        ensure_at_least(&text, series, 1.0)?;
    }
    Ok(())
}

#[tokio::test]
async fn files_mode_rotates_and_openssl_verifies() -> Result<()> {
    let _shared = PLUGIN_LOCK.read().await;
    with_identity(
        "files_mode_rotates_and_openssl_verifies",
        "files",
        Some(SHORT_TTL),
        |_, ns, _| async move {
            let r = files_mode(&ns).await;
            (ns, r)
        },
    )
    .await
}

fn openssl(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks one snapshot of the files with openssl and returns the leaf's serial.
fn check_files(dir: &std::path::Path, want: &str) -> Result<String> {
    let (svid, key, bundle) = (
        dir.join("svid.pem"),
        dir.join("svid_key.pem"),
        dir.join("bundle.pem"),
    );
    let (svid, key, bundle) = (
        svid.display().to_string(),
        key.display().to_string(),
        bundle.display().to_string(),
    );
    let verified = openssl(&["verify", "-CAfile", &bundle, "-untrusted", &svid, &svid])?;
    ensure!(
        verified.trim().ends_with(": OK"),
        "openssl verify: {verified}"
    );
    let san = openssl(&["x509", "-in", &svid, "-noout", "-ext", "subjectAltName"])?;
    ensure!(san.contains(&format!("URI:{want}")), "SAN {san}");
    // the key in svid_key.pem belongs to the certificate
    let cert_pub = openssl(&["x509", "-in", &svid, "-noout", "-pubkey"])?;
    let key_pub = openssl(&["pkey", "-in", &key, "-pubout"])?;
    ensure!(cert_pub == key_pub, "svid_key.pem does not match svid.pem");
    let serial = openssl(&["x509", "-in", &svid, "-noout", "-serial"])?;
    Ok(serial.trim().to_string())
}

/// Copies the pod's files into a local directory (all three read in one pass).
async fn snapshot_files(pods: &Api<Pod>, pod: &str, dir: &std::path::Path) -> Result<()> {
    for file in ["svid.pem", "svid_key.pem", "bundle.pem"] {
        let text = read_pod_file(pods, pod, file).await?;
        std::fs::write(dir.join(file), text)?;
    }
    Ok(())
}

async fn files_mode(ns: &TestNamespace) -> Result<()> {
    let want = expected_id(ns.name());
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &files_pod("files")?)
        .await?;
    wait_for(&pods, "files", "files pod Ready", POD_TIMEOUT, pod_ready()).await?;
    let dir = std::env::temp_dir().join(format!("wimsey-e2e-{}", ns.name()));
    std::fs::create_dir_all(&dir)?;
    let result = async {
        // The files can be written a moment after the mount: poll until they verify.
        let first = poll_until("files that openssl verifies", SVID_TIMEOUT, || async {
            snapshot_files(&pods, "files", &dir).await?;
            check_files(&dir, &want).map(Some)
        })
        .await?;
        // Rotation replaces them (atomically: every snapshot verifies) with a new certificate.
        let second = poll_until("rotated files", ROTATION_TIMEOUT, || async {
            snapshot_files(&pods, "files", &dir).await?;
            let serial = check_files(&dir, &want)?;
            Ok((serial != first).then_some(serial))
        })
        .await?;
        ensure!(second != first);
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[tokio::test]
async fn deleting_the_cluster_spiffe_id_takes_the_identity_away() -> Result<()> {
    let _shared = PLUGIN_LOCK.read().await;
    with_identity(
        "deleting_the_cluster_spiffe_id_takes_the_identity_away",
        "revoke",
        None,
        |cluster, ns, csid| async move {
            let r = revoke(&cluster, &ns, &csid).await;
            (ns, r)
        },
    )
    .await
}

async fn revoke(cluster: &Cluster, ns: &TestNamespace, csid: &str) -> Result<()> {
    let want = expected_id(ns.name());
    let pods = start_probe_pod(ns, "probe").await?;
    let first = wait_for_svids(&pods, "probe", 1, SVID_TIMEOUT).await?;
    ensure!(first[0].id == want, "SVID {:?}, want {want}", first[0].id);

    delete_cluster_spiffe_id(cluster, csid).await?;
    let denied = poll_until("the identity to be withdrawn", SVID_TIMEOUT, || async {
        let out = probe(&pods, "probe", &["fetch", "-timeout", "5s"]).await?;
        Ok(out
            .starts_with("error code=PermissionDenied")
            .then_some(out))
    })
    .await?;
    ensure!(
        denied.contains("no identity issued"),
        "PermissionDenied without the spec's message: {denied:?}"
    );
    Ok(())
}

#[tokio::test]
async fn restarting_the_plugin_leaves_every_pod_served() -> Result<()> {
    let _exclusive = PLUGIN_LOCK.write().await;
    with_identity(
        "restarting_the_plugin_leaves_every_pod_served",
        "restart",
        None,
        |cluster, ns, _| async move {
            let r = restart(&cluster, &ns).await;
            (ns, r)
        },
    )
    .await
}

async fn restart(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let want = expected_id(ns.name());
    let pods = start_probe_pod(ns, "probe").await?;
    wait_for_svids(&pods, "probe", 1, SVID_TIMEOUT).await?;
    pods.create(&PostParams::default(), &files_pod("files")?)
        .await?;
    wait_for(&pods, "files", "files pod Ready", POD_TIMEOUT, pod_ready()).await?;
    let files_before = read_pod_file(&pods, "files", "svid.pem").await?;

    // Delete every plugin pod and wait for the DaemonSet to bring new ones up.
    let plugin_pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let selector = ListParams::default().labels("app.kubernetes.io/name=wimsey-csi");
    let old: Vec<String> = plugin_pods
        .list(&selector)
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect();
    ensure!(!old.is_empty(), "no {PLUGIN} pods found");
    plugin_pods
        .delete_collection(&DeleteParams::default(), &selector)
        .await?;
    poll_until("new plugin pods", POD_TIMEOUT, || async {
        let now = plugin_pods.list(&selector).await?.items;
        let fresh = !now.is_empty()
            && now
                .iter()
                .all(|p| p.metadata.uid.as_ref().is_some_and(|u| !old.contains(u)));
        Ok(fresh.then_some(()))
    })
    .await?;
    wimsey::wait_until_serving(cluster).await?;

    // The socket the old plugin served is served again, through the pod's existing mount.
    let fetched = poll_until(
        "the Workload API after the restart",
        SVID_TIMEOUT,
        || async {
            let out = probe(&pods, "probe", &["fetch", "-timeout", "5s"]).await?;
            let lines = parse_x509_lines(&out);
            Ok((lines.len() == 1).then_some(lines))
        },
    )
    .await?;
    ensure!(fetched[0].id == want, "after restart: {fetched:?}");
    let jwt = probe(&pods, "probe", &["jwt", "-audience", "after-restart"]).await?;
    ensure!(
        jwt.starts_with(&format!("jwt {want} ")),
        "jwt after restart: {jwt:?}"
    );

    // The files are still there and still readable.
    let files_after = read_pod_file(&pods, "files", "svid.pem").await?;
    ensure!(
        files_after.contains("BEGIN CERTIFICATE"),
        "svid.pem after restart: {files_after:?} (before: {} bytes)",
        files_before.len()
    );
    Ok(())
}
