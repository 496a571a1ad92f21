//! Part of the attack suite (`make test-attacks`): the operator was down while its CA expired (a
//! weekend shutdown, an etcd restore of an old Secret). It must come back by itself: no crash
//! loop, a new CA issued and published at once with a Warning Event, and workloads served again,
//! without anyone deleting the Secret.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use wimsey_core::TrustDomain;
use wimsey_core::keys::KeyAlgorithm;
use wimsey_core::x509::{Authority, CaParams};
use wimsey_kind_tests::identity::{
    SVID_TIMEOUT, create_cluster_spiffe_id, delete_cluster_spiffe_id, expected_id,
    parse_x509_lines, probe, start_probe_pod,
};
use wimsey_kind_tests::wait::poll_until;
use wimsey_kind_tests::wimsey::{self, NAMESPACE, OPERATOR};
use wimsey_kind_tests::{Cluster, TestNamespace};

const TEST: &str = "an_authority_whose_ca_expired_while_down_recovers_by_itself";
const SECRET: &str = "wimsey-authority";
const SECRET_KEY: &str = "authority.json";
const BUNDLE: &str = "wimsey-bundle";
const DAY: Duration = Duration::from_secs(24 * 3600);
/// kubelet refreshes the plugin's ConfigMap volume (the bundle it verifies the node API with)
/// about once a minute; the plugin attests again with it once the operator refuses its old node
/// session, so the first SVID after a CA replacement may take that long.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn an_authority_whose_ca_expired_while_down_recovers_by_itself() -> Result<()> {
    let Some(cluster) = Cluster::connect_node(TEST).await? else {
        return Ok(());
    };
    wimsey::ensure_installed(&cluster).await?;
    let ns = TestNamespace::create(&cluster, "recovery").await?;
    let result = recovery(&cluster, &ns).await;
    let cleanup = delete_cluster_spiffe_id(&cluster, ns.name()).await;
    ns.finish(result.and(cleanup)).await
}

async fn recovery(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), NAMESPACE);
    let replicas = deployments
        .get(OPERATOR)
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1);

    // The operator goes down; meanwhile its CA expires (we write a CA whose validity ended 29
    // days ago, with rotation records from 30 days ago, as an old etcd snapshot would hold).
    scale(&deployments, 0).await?;
    let operator_pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let selector = ListParams::default().labels("app.kubernetes.io/name=wimsey-operator");
    poll_until("no operator pod", Duration::from_secs(120), || async {
        Ok(operator_pods
            .list(&selector)
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    let started = SystemTime::now();
    let expired_pem = write_expired_ca(&secrets).await?;

    // It comes back: every replica Ready, none restarted (no crash loop on the expired CA).
    let restored = scale(&deployments, replicas).await;
    wimsey::wait_until_serving(cluster).await?;
    restored?;
    let serving_since = std::time::Instant::now();
    for pod in operator_pods.list(&selector).await?.items {
        let restarts: i32 = pod
            .status
            .and_then(|s| s.container_statuses)
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        ensure!(
            restarts == 0,
            "operator pod restarted {restarts} time(s) on an expired CA"
        );
    }

    // The bundle no longer carries the expired CA but a new one, valid now.
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client(), NAMESPACE);
    let bundle = poll_until("a bundle without the expired CA", SVID_TIMEOUT, || async {
        let cm = config_maps.get(BUNDLE).await?;
        let pem = cm
            .data
            .and_then(|d| d.get("bundle.pem").cloned())
            .unwrap_or_default();
        Ok((pem.contains("BEGIN CERTIFICATE") && !pem.contains(&expired_pem)).then_some(pem))
    })
    .await?;
    println!(
        "bundle after recovery: {} certificate(s), the expired CA gone",
        bundle.matches("BEGIN CERTIFICATE").count()
    );

    // A Warning Event says the authority was replaced.
    let events: Api<Event> = Api::namespaced(cluster.client(), NAMESPACE);
    let replaced = poll_until("an AuthorityReplaced Event", SVID_TIMEOUT, || async {
        let found = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("AuthorityReplaced")
                    && e.type_.as_deref() == Some("Warning")
                    // Only one raised by this recovery (events.k8s.io Events carry eventTime).
                    && e.last_timestamp
                        .as_ref()
                        .or(e.first_timestamp.as_ref())
                        .map(|t| t.0)
                        .or(e.event_time.as_ref().map(|t| t.0))
                        .is_some_and(|t| SystemTime::from(t) + Duration::from_secs(5) >= started)
            });
        Ok(found)
    })
    .await?;
    println!(
        "event {}: {}",
        replaced.reason.unwrap_or_default(),
        replaced.message.unwrap_or_default()
    );

    // A new workload on the node is served again (only the new CA can sign now).
    create_cluster_spiffe_id(cluster, ns, None).await?;
    let pods = start_probe_pod(ns, "after-recovery").await?;
    let want = expected_id(ns.name());
    let fetched = poll_until("an SVID under the new CA", RECOVERY_TIMEOUT, || async {
        let out = probe(&pods, "after-recovery", &["fetch", "-timeout", "10s"]).await?;
        let lines = parse_x509_lines(&out);
        Ok((lines.len() == 1).then_some(lines))
    })
    .await?;
    ensure!(fetched[0].id == want, "after recovery: {fetched:?}");
    println!(
        "a new workload served {:.0} s after the operator came back with a new CA",
        serving_since.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn scale(deployments: &Api<Deployment>, replicas: i32) -> Result<()> {
    deployments
        .patch(
            OPERATOR,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .with_context(|| format!("scale {OPERATOR} to {replicas}"))?;
    Ok(())
}

/// Replaces the Secret's X.509 CAs with one active CA that expired 29 days ago; returns the base64
/// of its certificate as it appears in a PEM bundle (first line), to look for it later.
async fn write_expired_ca(secrets: &Api<Secret>) -> Result<String> {
    let mut secret = secrets.get(SECRET).await?;
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    let raw = data
        .get(SECRET_KEY)
        .with_context(|| format!("Secret {SECRET} has no {SECRET_KEY}"))?;
    let mut doc: serde_json::Value = serde_json::from_slice(&raw.0)?;
    let trust_domain = doc["trust_domain"]
        .as_str()
        .context("no trust_domain in the authority document")?;
    let td = TrustDomain::new(trust_domain)?;

    let issued = SystemTime::now() - 30 * DAY;
    let ca = Authority::generate_root(
        &td,
        KeyAlgorithm::EcdsaP256,
        &CaParams::new("wimsey-e2e-expired", DAY),
        issued,
    )?;
    let issued_ms = u64::try_from(issued.duration_since(UNIX_EPOCH)?.as_millis())?;
    let cert_b64 = STANDARD.encode(ca.certificate().as_ref());
    doc["x509_ca"] = json!([{
        "id": "expired-e2e",
        "phase": "active",
        "prepared_at_ms": issued_ms,
        "published_at_ms": issued_ms,
        "activated_at_ms": issued_ms,
        "retired_at_ms": null,
        "private_key": STANDARD.encode(ca.signing_key().pkcs8_der().as_slice()),
        "certificate": cert_b64,
    }]);
    data.insert(SECRET_KEY.into(), ByteString(serde_json::to_vec(&doc)?));
    secret.metadata.managed_fields = None;
    secrets
        .replace(SECRET, &PostParams::default(), &secret)
        .await
        .context("writing the expired CA into the authority Secret")?;
    let first_line: String = cert_b64.chars().take(64).collect();
    if first_line.len() < 64 {
        bail!("certificate too short: {cert_b64}");
    }
    Ok(first_line)
}
