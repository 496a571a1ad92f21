//! wimsey as an intermediate under the user's own CA, on the real cluster: the CA arrives as a
//! Secret in the layout cert-manager writes for a CA Certificate (`kubernetes.io/tls`, `tls.crt`,
//! `tls.key`, `ca.crt`), the chart's `authority.upstreamCASecret` names it, and then:
//! - a files-mode pod's `svid.pem` carries that intermediate and `openssl verify` accepts it
//!   trusting only the user's root, which `bundle.pem` carries;
//! - the Secret is renewed in place (as cert-manager does) while Workload API watchers keep
//!   fetching: the renewed intermediate reaches the pod, and no watcher ever holds only an
//!   expired SVID;
//! - a Secret edited into something unusable is reported (Warning Event `UpstreamCAUnusable`)
//!   and the last good CA keeps signing.
//!
//! Run alone (its own test binary); it puts wimsey back on its own root when done.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use wimsey_core::TrustDomain;
use wimsey_core::x509::pem::decode_certificates;
use wimsey_core::x509::upstream::test_pki::{SecretValues, UserPki};
use wimsey_kind_tests::cluster::image_tag;
use wimsey_kind_tests::identity::{
    POD_TIMEOUT, SVID_TIMEOUT, TRUST_DOMAIN, create_cluster_spiffe_id, delete_cluster_spiffe_id,
    expected_id, files_pod, logs, read_pod_file, start_probe_pod, wait_for_svids,
};
use wimsey_kind_tests::svid_timeline::{expiry_gaps, now_ms, svid_timeline};
use wimsey_kind_tests::wait::{pod_ready, poll_until, wait_for};
use wimsey_kind_tests::wimsey::{self, NAMESPACE, helm_upgrade, wait_until_serving};
use wimsey_kind_tests::{Cluster, TestNamespace};

const SECRET: &str = "wimsey-upstream-ca";
/// Renewal at half-life: a new SVID every ~15 s, so the renewed intermediate shows up quickly.
const TTL: &str = "30s";
const WATCHERS: usize = 2;
/// The switch from wimsey's own root: the user's root is published this long before the user's
/// CA signs (the default is an hour).
const PROPAGATION: &str = "20s";
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The propagation delay, then an SVID renewal (half of TTL), with room for a busy node.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn an_upstream_ca_signs_and_its_renewal_reaches_workloads_that_keep_fetching() -> Result<()> {
    let Some(cluster) = Cluster::connect_node(
        "an_upstream_ca_signs_and_its_renewal_reaches_workloads_that_keep_fetching",
    )
    .await?
    else {
        return Ok(());
    };
    let tag = image_tag()?;
    wimsey::ensure_installed(&cluster).await?;
    let pki = UserPki::new(&TrustDomain::new(TRUST_DOMAIN)?);
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), NAMESPACE);

    let result = run(&cluster, &tag, &pki, &secrets).await;
    // Back to wimsey's own root for the suites that follow, whatever happened.
    helm_upgrade(&cluster, &tag, &[])?;
    wait_until_serving(&cluster).await?;
    secrets.delete(SECRET, &DeleteParams::default()).await?;
    result
}

async fn run(cluster: &Cluster, tag: &str, pki: &UserPki, secrets: &Api<Secret>) -> Result<()> {
    let first = pki.intermediate();
    write_secret(secrets, &first).await?;
    let started = Instant::now();
    helm_upgrade(
        cluster,
        tag,
        &[
            "--set",
            &format!("authority.upstreamCASecret={SECRET}"),
            "--set",
            &format!("authority.keyPropagationDelay={PROPAGATION}"),
        ],
    )?;
    wait_until_serving(cluster).await?;
    println!(
        "helm upgrade with authority.upstreamCASecret: operator serving again after {:.1} s; the user's root is published and the own CA signs for {PROPAGATION} more",
        started.elapsed().as_secs_f64()
    );

    let ns = TestNamespace::create(cluster, "upstream-ca").await?;
    let csid = create_cluster_spiffe_id(cluster, &ns, Some(TTL)).await?;
    let checked = workloads(&ns, pki, secrets, &first).await;
    let deleted = delete_cluster_spiffe_id(cluster, &csid).await;
    ns.finish(checked.and(deleted)).await
}

async fn workloads(
    ns: &TestNamespace,
    pki: &UserPki,
    secrets: &Api<Secret>,
    first: &SecretValues,
) -> Result<()> {
    let pods: Api<Pod> = ns.api();
    let mut watchers = Vec::new();
    for i in 0..WATCHERS {
        let name = format!("watch-{i}");
        start_probe_pod(ns, &name).await?;
        watchers.push(name);
    }
    for name in &watchers {
        wait_for_svids(&pods, name, 1, SVID_TIMEOUT).await?;
    }
    pods.create(&PostParams::default(), &files_pod("files")?)
        .await?;
    wait_for(&pods, "files", "files pod Ready", POD_TIMEOUT, pod_ready()).await?;

    // Once the user's root has propagated: signed by the user's intermediate, trusted through
    // the user's root alone, with no workload left holding only an expired SVID meanwhile.
    let svid = intermediate_in_use(&pods, first).await?;
    no_watcher_lost_identity(&pods, ns, &watchers, 0, "the switch to the upstream CA").await?;
    let bundle = read_pod_file(&pods, "files", "bundle.pem").await?;
    let bundle_roots = decode_certificates(&bundle)?;
    ensure!(
        bundle_roots.contains(pki.root()),
        "bundle.pem lacks the user's root ({} certificates)",
        bundle_roots.len()
    );
    openssl_verifies_against_the_users_root(pki, &svid)?;
    println!(
        "files-mode svid.pem: leaf + the user's intermediate; bundle.pem holds the user's root ({} roots); openssl verify with only the user's root: OK",
        bundle_roots.len()
    );

    // cert-manager renews the Secret in place: a new intermediate under the same root.
    let renewed = pki.intermediate();
    let renewal = now_ms();
    let started = Instant::now();
    write_secret(secrets, &renewed).await?;
    intermediate_in_use(&pods, &renewed).await?;
    println!(
        "renewed intermediate in the pod's svid.pem {:.1} s after the Secret was replaced",
        started.elapsed().as_secs_f64()
    );
    no_watcher_lost_identity(&pods, ns, &watchers, renewal, "the renewal").await?;

    // An unusable Secret (another CA's key) is reported; the renewed CA keeps signing.
    let other = pki.intermediate();
    let broken = SecretValues {
        tls_key: other.tls_key.clone(),
        ..renewed.clone()
    };
    write_secret(secrets, &broken).await?;
    let note = unusable_event(secrets).await?;
    ensure!(
        note.contains("tls.key"),
        "the Event names the problem: {note}"
    );
    println!("unusable Secret reported: UpstreamCAUnusable: {note}");
    let before = read_pod_file(&pods, "files", "svid.pem").await?;
    poll_until(
        "a new SVID from the last good intermediate after the Secret broke",
        SVID_TIMEOUT,
        || async {
            let now = read_pod_file(&pods, "files", "svid.pem").await?;
            Ok((now != before).then_some(now))
        },
    )
    .await?;
    intermediate_in_use(&pods, &renewed).await?;
    Ok(())
}

/// Every watcher received an SVID after `since_ms` and never held only an expired one.
async fn no_watcher_lost_identity(
    pods: &Api<Pod>,
    ns: &TestNamespace,
    watchers: &[String],
    since_ms: i64,
    what: &str,
) -> Result<()> {
    let mut lost = Vec::new();
    for name in watchers {
        let timeline = poll_until(
            &format!("an SVID after {what} in the log of {name}"),
            SVID_TIMEOUT,
            || async {
                let timeline = svid_timeline(&logs(pods, name).await?)?;
                Ok(timeline
                    .iter()
                    .any(|s| s.received_ms > since_ms)
                    .then_some(timeline))
            },
        )
        .await?;
        ensure!(
            timeline.iter().all(|s| s.id == expected_id(ns.name())),
            "{name} got another identity: {timeline:?}"
        );
        let gaps = expiry_gaps(&timeline, now_ms());
        if !gaps.is_empty() {
            lost.push(format!("{name}: {gaps:?}"));
        }
    }
    println!(
        "workloads that lost identity through {what}: {} of {} watchers",
        lost.len(),
        watchers.len()
    );
    ensure!(lost.is_empty(), "workloads lost their identity: {lost:?}");
    Ok(())
}

/// Creates or replaces the upstream CA Secret, in cert-manager's layout.
async fn write_secret(secrets: &Api<Secret>, values: &SecretValues) -> Result<()> {
    let data = [
        ("tls.crt", values.tls_crt.as_bytes()),
        ("tls.key", values.tls_key.as_bytes()),
        ("ca.crt", values.ca_crt.as_bytes()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.to_vec())))
    .collect();
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    match secrets.get_opt(SECRET).await? {
        None => {
            secrets.create(&PostParams::default(), &secret).await?;
        }
        Some(current) => {
            secret.metadata.resource_version = current.metadata.resource_version;
            secrets
                .replace(SECRET, &PostParams::default(), &secret)
                .await?;
        }
    }
    Ok(())
}

/// Waits until the files pod's svid.pem is chained through `values`' intermediate; returns it.
async fn intermediate_in_use(pods: &Api<Pod>, values: &SecretValues) -> Result<String> {
    poll_until(
        "svid.pem chained through the expected intermediate",
        SWITCH_TIMEOUT,
        || async {
            let pem = read_pod_file(pods, "files", "svid.pem").await?;
            let chain = decode_certificates(&pem).context("svid.pem")?;
            Ok((chain.len() == 2 && chain.get(1) == Some(&values.certificate)).then_some(pem))
        },
    )
    .await
}

fn openssl_verifies_against_the_users_root(pki: &UserPki, svid_pem: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root.pem");
    let svid = dir.path().join("svid.pem");
    std::fs::write(
        &root,
        wimsey_core::x509::pem::encode_certificates(std::slice::from_ref(pki.root()))?,
    )?;
    std::fs::write(&svid, svid_pem)?;
    let (root, svid) = (root.display().to_string(), svid.display().to_string());
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", &root, "-untrusted", &svid, &svid])
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The note of the `UpstreamCAUnusable` Warning Event in wimsey's namespace.
async fn unusable_event(secrets: &Api<Secret>) -> Result<String> {
    let events: Api<Event> = Api::namespaced(secrets.clone().into_client(), NAMESPACE);
    poll_until(
        "a Warning Event UpstreamCAUnusable",
        EVENT_TIMEOUT,
        || async {
            let list = events
                .list(&ListParams::default().fields("reason=UpstreamCAUnusable"))
                .await?;
            Ok(list.items.into_iter().find_map(|e| e.message))
        },
    )
    .await
}
