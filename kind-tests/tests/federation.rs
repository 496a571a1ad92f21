//! Federation with a real SPIRE Server, both ways, on the node-level cluster (local provider: SPIRE
//! runs on this host; `make test-federation-e2e` builds it and sets `WIMSEY_SPIRE_SERVER`).
//!
//! - The operator Deployment gets its bundle endpoint and a 1 s minimum refresh (server-side apply
//!   of two env vars under this suite's own field manager, undone at the end by applying nothing
//!   under that manager).
//! - SPIRE (trust domain `spire.test`) starts on the host. The harness binds its bundle endpoint
//!   to 127.0.0.1, which pods cannot reach, so a TCP relay in this process listens on the pod
//!   bridge's host address (10.244.0.1, where pod traffic to the node is delivered locally) and
//!   passes bytes through; TLS is end to end between the operator and SPIRE. Stopping the relay
//!   makes SPIRE's endpoint unreachable (connection refused) while SPIRE keeps running.
//! - SPIRE fetches ours: `federates_with` our trust domain at `https://<operator pod IP>:8444`
//!   (https_spiffe, `spiffe://<td>/wimsey/bundle-endpoint`), bootstrapped with only the X.509
//!   authorities of our published bundle (`wimsey-bundle`/`bundle.spiffe`), so the JWT keys SPIRE
//!   then holds can only have come from our endpoint.
//! - We fetch SPIRE's: a ClusterFederatedTrustDomain for `spire.test` and a ClusterSPIFFEID with
//!   `federatesWith: [spire.test]` for the test namespace. A go-spiffe pod (`spiffe-probe
//!   watch-bundles`) logs its X.509 bundle set on every change; `spiffe-probe federated-mtls`
//!   verifies an SVID SPIRE minted and completes mutual TLS with it (the peer trusts our trust
//!   domain through the bundle SPIRE fetched from us); `spiffe-probe validate-jwt` has the pod's
//!   Workload API validate a JWT-SVID SPIRE minted (ValidateJWTSVID, against the JWT keys of
//!   SPIRE's bundle as the operator fetched it).
//! - SPIRE's CA rotation reaches the pod within one refresh; an unreachable endpoint turns the
//!   resource Ready=False (EndpointUnreachable) while the pod keeps the last good bundle, and
//!   Ready again once the endpoint is back; deleting the resource takes the bundle away, and with
//!   it the pod's trust in SPIRE's SVIDs and JWT-SVIDs.
//!
//! Whatever happens, guards stop SPIRE and the relay, delete the cluster-scoped resources and the
//! namespace, and restore the operator Deployment.

#[path = "../../operator/tests/support/spire.rs"]
mod spire;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use spire::{FederatesWith, SpireOptions, SpireServer};
use tokio_util::sync::CancellationToken;
use wimsey_core::TrustDomain;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_kind_tests::cluster::Provider;
use wimsey_kind_tests::exec::exec;
use wimsey_kind_tests::identity::{
    APP, FILES_DIR, PROBE, TRUST_DOMAIN, expected_id, files_pod, logs,
};
use wimsey_kind_tests::wait::{deployment_ready, pod_ready, poll_until, wait_for};
use wimsey_kind_tests::wimsey::{self, NAMESPACE, OPERATOR};
use wimsey_kind_tests::workloads::probe_pod;
use wimsey_kind_tests::{Cluster, TestNamespace};

const SPIRE_TD: &str = "spire.test";
const PEER_ID: &str = "spiffe://spire.test/peer";
/// Our bundle endpoint's port (8443 is the node API's).
const BUNDLE_ENDPOINT_PORT: u16 = 8444;
/// The pod bridge of the local provider (kind-tests/cluster/local/up.sh).
const BRIDGE: &str = "wimseybr0";
const FIELD_MANAGER: &str = "wimsey-e2e-federation";
/// SPIRE's published `spiffe_refresh_hint`; the operator polls at it (clamped to >= 1 s here).
const REFRESH_HINT: Duration = Duration::from_secs(5);
/// SPIRE's bundle endpoint caches its bundle for 1 s (`pkg/server/endpoints/bundle/cache.go`).
const SPIRE_ENDPOINT_CACHE: Duration = Duration::from_secs(1);
/// From the operator's fetch to the pod's Workload API stream: a status patch, the watch event in
/// every replica, the reconciler, the node API stream to the plugin and the Workload API stream to
/// the pod, each event-driven; generous for a loaded 2-core VM.
const PROPAGATION_SLACK: Duration = Duration::from_secs(5);
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
/// The first fetch waits for a new replica to take the Lease after the rollout.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
const POD_TIMEOUT: Duration = Duration::from_secs(120);
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the pod finds the SPIRE-minted SVID and the bundles its peer trusts.
const PEER_DIR: &str = "/spire-peer";
/// A files-mode pod of the same identity (federated/<td>.pem).
const FILES_POD: &str = "files";
/// The audience of the JWT-SVID SPIRE mints for the pod to validate.
const JWT_AUDIENCE: &str = "wimsey-federation-e2e";
/// Its lifetime: the whole test after the mint, so a refusal is never an expiry.
const JWT_TTL: Duration = Duration::from_secs(600);

fn cftd_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "spire.spiffe.io",
        "v1alpha1",
        "ClusterFederatedTrustDomain",
    ))
}

fn csid_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "spire.spiffe.io",
        "v1alpha1",
        "ClusterSPIFFEID",
    ))
}

/// Runs a blocking SPIRE harness call without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first 16 hex digits of SHA-256 over a certificate's DER (spiffe-probe's fingerprint).
fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))[..16].to_string()
}

fn fingerprints(ders: &[Vec<u8>]) -> Vec<String> {
    ders.iter().map(|d| fingerprint(d)).collect()
}

// ---------------------------------------------------------------------------------------------
// spiffe-probe watch-bundles output

/// One `x509bundles at_ms=<ms> <td>=<n>:<fp>,<fp> ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BundleLine {
    at_ms: u64,
    /// Trust domain name -> authority fingerprints, in bundle order.
    bundles: BTreeMap<String, Vec<String>>,
}

fn parse_bundle_lines(log: &str) -> Vec<BundleLine> {
    log.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "x509bundles").then_some(())?;
            let at_ms = words.next()?.strip_prefix("at_ms=")?.parse().ok()?;
            let bundles = parse_bundle_words(words)?;
            Some(BundleLine { at_ms, bundles })
        })
        .collect()
}

/// `<td>=<n>:<a>,<b>` words -> trust domain -> items; `None` when a count does not match.
fn parse_bundle_words<'a>(
    words: impl Iterator<Item = &'a str>,
) -> Option<BTreeMap<String, Vec<String>>> {
    let mut bundles = BTreeMap::new();
    for word in words {
        let (td, rest) = word.split_once('=')?;
        let (n, items) = rest.split_once(':')?;
        let items: Vec<String> = items
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        if n.parse::<usize>().ok()? != items.len() {
            return None;
        }
        bundles.insert(td.to_string(), items);
    }
    Some(bundles)
}

fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// Waits for the first line of the probe's log, received at or after `since_ms`, that satisfies
/// `want`.
async fn wait_for_bundle_line(
    pods: &Api<Pod>,
    pod: &str,
    what: &str,
    since_ms: u64,
    timeout: Duration,
    want: impl Fn(&BundleLine) -> bool,
) -> Result<BundleLine> {
    let result = poll_until(what, timeout, || async {
        let lines = parse_bundle_lines(&logs(pods, pod).await?);
        Ok(lines.into_iter().find(|l| l.at_ms >= since_ms && want(l)))
    })
    .await;
    match result {
        Ok(line) => Ok(line),
        Err(err) => {
            let log = logs(pods, pod).await.unwrap_or_default();
            Err(err.context(format!("the probe's log:\n{log}")))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The relay: SPIRE's bundle endpoint (127.0.0.1) on the bridge's host address

/// A TCP relay from `listen` to `target`, on its own thread and runtime (the test's runtime blocks
/// in SPIRE CLI calls). `stop` closes the listener and every relayed connection.
struct Relay {
    listen: SocketAddr,
    target: SocketAddr,
    running: Option<(CancellationToken, std::thread::JoinHandle<()>)>,
}

impl Relay {
    fn start(ip: IpAddr, port: u16, target: SocketAddr) -> Result<Self> {
        let mut relay = Self {
            listen: SocketAddr::new(ip, port),
            target,
            running: None,
        };
        relay.resume()?;
        Ok(relay)
    }

    fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// (Re)starts listening on the same address (port 0: a free one, kept from then on).
    fn resume(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = std::net::TcpListener::bind(self.listen)
            .with_context(|| format!("relay: binding {}", self.listen))?;
        listener.set_nonblocking(true)?;
        self.listen = listener.local_addr()?;
        let stop = CancellationToken::new();
        let (token, target) = (stop.clone(), self.target);
        let thread = std::thread::Builder::new()
            .name("spire-relay".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(err) => return eprintln!("relay: runtime: {err}"),
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(err) => return eprintln!("relay: listener: {err}"),
                    };
                    let mut conns = tokio::task::JoinSet::new();
                    loop {
                        tokio::select! {
                            () = token.cancelled() => break,
                            accepted = listener.accept() => {
                                let Ok((mut inbound, _)) = accepted else { continue };
                                let token = token.clone();
                                conns.spawn(async move {
                                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                                        return;
                                    };
                                    tokio::select! {
                                        () = token.cancelled() => {}
                                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                    }
                                });
                            }
                        }
                    }
                    drop(listener);
                    conns.shutdown().await;
                });
            })?;
        self.running = Some((stop, thread));
        Ok(())
    }

    /// Closes the listener and every connection; returns once they are closed.
    fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            stop.cancel();
            let _ = thread.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The host's address on the pod bridge: what pods reach the node at.
fn bridge_ip() -> Result<IpAddr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", BRIDGE])
        .output()
        .context("running ip addr")?;
    ensure!(
        out.status.success(),
        "ip addr show dev {BRIDGE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .with_context(|| format!("no IPv4 address on {BRIDGE}: {text}"))?;
    let ip = cidr.split('/').next().unwrap_or(cidr);
    ip.parse()
        .with_context(|| format!("address {ip:?} of {BRIDGE}"))
}

// ---------------------------------------------------------------------------------------------
// Guards: the operator's federation settings, cluster-scoped resources

/// The operator Deployment with the bundle endpoint and a fast refresh, applied under
/// [`FIELD_MANAGER`]; `restore` (or `Drop`) applies an empty configuration under the same
/// manager, which removes exactly the fields this suite added.
struct OperatorFederation {
    client: Client,
    config: kube::Config,
    restored: bool,
}

fn operator_patch(env: &[(&str, &str)]) -> Value {
    let mut body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": OPERATOR, "namespace": NAMESPACE},
    });
    if !env.is_empty() {
        let env: Vec<Value> = env
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        body["spec"] =
            json!({"template": {"spec": {"containers": [{"name": "operator", "env": env}]}}});
    }
    body
}

async fn apply_operator_patch(client: &Client, body: &Value) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .patch(
            OPERATOR,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(body),
        )
        .await
        .context("server-side apply of the operator Deployment")?;
    Ok(())
}

/// Waits until the operator Deployment has rolled out and every pod of it is of the current
/// template (no old replica left), Ready; returns their pod IPs.
async fn operator_rolled_out(client: &Client, want_endpoint: bool) -> Result<Vec<IpAddr>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for(
        &deployments,
        OPERATOR,
        "operator Deployment rolled out",
        ROLLOUT_TIMEOUT,
        deployment_ready(),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = ListParams::default().labels("app.kubernetes.io/name=wimsey-operator");
    poll_until(
        "only operator pods of the new template, all Ready",
        ROLLOUT_TIMEOUT,
        || async {
            let d = deployments.get(OPERATOR).await?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let list = pods.list(&selector).await?.items;
            let current = |p: &Pod| {
                let has = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.env.as_ref())
                    .is_some_and(|env| env.iter().any(|e| e.name == "WIMSEY_BUNDLE_ENDPOINT_ADDR"));
                has == want_endpoint
            };
            let ready = |p: &Pod| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            };
            let ips: Vec<IpAddr> = list
                .iter()
                .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
                .collect();
            let done = list.len() == usize::try_from(want).unwrap_or(0)
                && ips.len() == list.len()
                && list
                    .iter()
                    .all(|p| p.metadata.deletion_timestamp.is_none() && current(p) && ready(p));
            Ok(done.then_some(ips))
        },
    )
    .await
}

impl OperatorFederation {
    /// Applies the settings and waits for the rollout; the operators' pod IPs.
    async fn enable(cluster: &Cluster) -> Result<(Self, Vec<IpAddr>)> {
        let this = Self {
            client: cluster.client(),
            config: cluster.config().clone(),
            restored: false,
        };
        let addr = format!("0.0.0.0:{BUNDLE_ENDPOINT_PORT}");
        apply_operator_patch(
            &this.client,
            &operator_patch(&[
                ("WIMSEY_BUNDLE_ENDPOINT_ADDR", &addr),
                ("WIMSEY_FEDERATION_MIN_REFRESH", "1s"),
            ]),
        )
        .await?;
        let ips = operator_rolled_out(&this.client, true).await?;
        Ok((this, ips))
    }

    async fn restore(mut self) -> Result<()> {
        self.restored = true;
        apply_operator_patch(&self.client, &operator_patch(&[])).await?;
        operator_rolled_out(&self.client, false).await.map(drop)
    }
}

impl Drop for OperatorFederation {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        let config = self.config.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = Client::try_from(config)?;
                apply_operator_patch(&client, &operator_patch(&[])).await
            })
        });
        match handle.join() {
            Ok(Ok(())) => eprintln!("operator Deployment: federation settings removed"),
            Ok(Err(err)) => eprintln!("warning: restoring the operator Deployment: {err:#}"),
            Err(_) => eprintln!("warning: restoring the operator Deployment: thread panicked"),
        }
    }
}

/// Cluster-scoped objects this test created, deleted by `delete_all` or, on a panic, by `Drop`.
struct ClusterObjects {
    client: Client,
    config: kube::Config,
    objects: Vec<(ApiResource, String)>,
}

impl ClusterObjects {
    fn new(cluster: &Cluster) -> Self {
        Self {
            client: cluster.client(),
            config: cluster.config().clone(),
            objects: Vec::new(),
        }
    }

    async fn create(&mut self, resource: ApiResource, body: Value) -> Result<DynamicObject> {
        let obj: DynamicObject = serde_json::from_value(body)?;
        let name = obj.metadata.name.clone().context("object without a name")?;
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let created = api
            .create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("create {} {name}", resource.kind))?;
        self.objects.push((resource, name));
        Ok(created)
    }

    async fn delete(&mut self, kind: &str, name: &str) -> Result<()> {
        let Some(i) = self
            .objects
            .iter()
            .position(|(r, n)| r.kind == kind && n == name)
        else {
            bail!("{kind} {name} was not created by this test");
        };
        let (resource, name) = self.objects.remove(i);
        delete_object(&self.client, &resource, &name).await
    }

    async fn delete_all(mut self) -> Result<()> {
        let mut result = Ok(());
        for (resource, name) in std::mem::take(&mut self.objects) {
            if let Err(err) = delete_object(&self.client, &resource, &name).await {
                result = Err(err);
            }
        }
        result
    }
}

async fn delete_object(client: &Client, resource: &ApiResource, name: &str) -> Result<()> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(anyhow!("delete {} {name}: {e}", resource.kind)),
    }
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        if self.objects.is_empty() {
            return;
        }
        let (objects, config) = (std::mem::take(&mut self.objects), self.config.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = Client::try_from(config)?;
                for (resource, name) in &objects {
                    delete_object(&client, resource, name).await?;
                }
                anyhow::Ok(())
            })
        });
        if !matches!(handle.join(), Ok(Ok(()))) {
            eprintln!("warning: deleting this test's cluster-scoped objects failed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ClusterFederatedTrustDomain status

fn condition<'a>(obj: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    obj.data
        .get("status")?
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn condition_is(obj: &DynamicObject, type_: &str, status: &str, reason: Option<&str>) -> bool {
    condition(obj, type_).is_some_and(|c| {
        c.get("status").and_then(Value::as_str) == Some(status)
            && reason.is_none_or(|r| c.get("reason").and_then(Value::as_str) == Some(r))
    })
}

fn status_u64(obj: &DynamicObject, field: &str) -> Option<u64> {
    obj.data.get("status")?.get(field)?.as_u64()
}

/// The bundle the resource's status holds, parsed.
fn status_bundle(obj: &DynamicObject) -> Result<TrustDomainBundle> {
    let json = obj
        .data
        .get("status")
        .and_then(|s| s.get("bundle"))
        .and_then(Value::as_str)
        .context("status.bundle is missing")?;
    TrustDomainBundle::from_spiffe_jwks(TrustDomain::new(SPIRE_TD)?, json.as_bytes())
        .map_err(|e| anyhow!("status.bundle does not parse: {e}"))
}

/// Waits until the ClusterFederatedTrustDomain satisfies `check`.
async fn wait_for_cftd(
    cftds: &Api<DynamicObject>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&DynamicObject) -> bool + Send + 'static,
) -> Result<DynamicObject> {
    wait_for(
        cftds,
        name,
        what,
        timeout,
        move |obj: Option<&DynamicObject>| obj.is_some_and(&check),
    )
    .await
}

/// The ClusterFederatedTrustDomain CRD installed from `crds/` must carry the status the poller
/// writes: the API server prunes fields its schema does not name, and the operator reads the
/// fetched bundle back from `status.bundle`.
async fn check_crd_has_fetch_status(cluster: &Cluster) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let crd = crds
        .get("clusterfederatedtrustdomains.spire.spiffe.io")
        .await?;
    let status = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1alpha1")
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("status"))
        .and_then(|s| s.properties.as_ref())
        .context("the ClusterFederatedTrustDomain CRD has no status schema")?;
    let missing: Vec<&str> = [
        "bundle",
        "spiffeSequence",
        "x509Authorities",
        "lastSuccessfulFetch",
    ]
    .into_iter()
    .filter(|f| !status.contains_key(*f))
    .collect();
    ensure!(
        missing.is_empty(),
        "the installed ClusterFederatedTrustDomain CRD (from crds/) has no status.{missing:?}: the \
         API server would prune what the poller writes; crds/ is stale, run `make generate`"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_with_a_real_spire_server_both_ways() -> Result<()> {
    let test = "federation_with_a_real_spire_server_both_ways";
    let Some(cluster) = Cluster::connect_node(test).await? else {
        return Ok(());
    };
    if cluster.provider() != Provider::Local {
        println!(
            "SKIP {test}: needs the local provider (SPIRE runs on this host, pods reach it over the bridge)"
        );
        return Ok(());
    }
    // Before anything changes in the cluster: `make test-federation-e2e` sets it.
    spire::spire_server_binary()?;
    let started = std::time::Instant::now();
    wimsey::ensure_installed(&cluster).await?;
    check_crd_has_fetch_status(&cluster).await?;
    let (operator, operator_ips) = OperatorFederation::enable(&cluster).await?;
    println!(
        "federation: operator rolled out with its bundle endpoint on :{BUNDLE_ENDPOINT_PORT} ({:.1} s), pods {operator_ips:?}",
        started.elapsed().as_secs_f64()
    );
    let ns = match TestNamespace::create(&cluster, "federation").await {
        Ok(ns) => ns,
        Err(err) => {
            if let Err(restore) = operator.restore().await {
                eprintln!("warning: restoring the operator Deployment: {restore:#}");
            }
            return Err(err);
        }
    };
    let mut objects = ClusterObjects::new(&cluster);
    let result = federation(&cluster, &ns, &mut objects, &operator_ips).await;
    let cleanup = objects.delete_all().await;
    let restore = operator.restore().await;
    let result = ns.finish(result.and(cleanup).and(restore)).await;
    println!(
        "federation: test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    result
}

/// What the steps share.
struct Run {
    spire: SpireServer,
    relay: Relay,
    pods: Api<Pod>,
    cftds: Api<DynamicObject>,
    configmaps: Api<ConfigMap>,
    /// The probe pod's SPIFFE ID.
    our_id: String,
    /// `spiffe-probe federated-mtls ...` with the peer's files.
    mtls_args: Vec<String>,
}

impl Run {
    fn mtls_args(&self) -> Vec<&str> {
        self.mtls_args.iter().map(String::as_str).collect()
    }

    /// `spiffe-probe federated-mtls` verifies the SPIRE SVID against one of `authorities` and
    /// completes mutual TLS as the pod's identity with the peer.
    async fn check_mtls(&self, authorities: &[String]) -> Result<()> {
        check_mtls(&self.pods, &self.mtls_args(), &self.our_id, authorities).await
    }

    /// `federated-mtls` fails because the pod does not trust spire.test.
    async fn check_mtls_refused(&self, when: &str) -> Result<()> {
        let refused = probe_out(&self.pods, &self.mtls_args()).await?;
        ensure!(
            refused.starts_with("error ") && refused.contains(SPIRE_TD),
            "federated-mtls {when}: {refused:?}"
        );
        println!("federation: {when}: {}", refused.trim());
        Ok(())
    }

    async fn our_bundle(&self) -> Result<(String, TrustDomainBundle)> {
        let json = self
            .configmaps
            .get("wimsey-bundle")
            .await?
            .data
            .and_then(|mut d| d.remove("bundle.spiffe"))
            .context("ConfigMap wimsey-bundle has no bundle.spiffe")?;
        let bundle =
            TrustDomainBundle::from_spiffe_jwks(TrustDomain::new(TRUST_DOMAIN)?, json.as_bytes())
                .map_err(|e| anyhow!("wimsey-bundle/bundle.spiffe: {e}"))?;
        Ok((json, bundle))
    }

    async fn wait_for_line(
        &self,
        what: &str,
        since_ms: u64,
        want: impl Fn(&BundleLine) -> bool,
    ) -> Result<BundleLine> {
        wait_for_bundle_line(&self.pods, "probe", what, since_ms, BUNDLE_TIMEOUT, want).await
    }
}

fn seconds_since(ms: u64, then_ms: u64) -> f64 {
    ms.saturating_sub(then_ms) as f64 / 1000.0
}

async fn federation(
    cluster: &Cluster,
    ns: &TestNamespace,
    objects: &mut ClusterObjects,
    operator_ips: &[IpAddr],
) -> Result<()> {
    let client = cluster.client();
    // SPIRE federates with us through one operator replica's bundle endpoint.
    let operator_ip = *operator_ips.first().context("no operator pod")?;
    let our_endpoint = format!(
        "https://{}",
        SocketAddr::new(operator_ip, BUNDLE_ENDPOINT_PORT)
    );
    let mut opts = SpireOptions::new(SPIRE_TD);
    opts.refresh_hint = REFRESH_HINT;
    opts.federates_with = vec![FederatesWith::https_spiffe(
        TRUST_DOMAIN,
        &our_endpoint,
        &format!("spiffe://{TRUST_DOMAIN}/wimsey/bundle-endpoint"),
    )];
    let spire = blocking(|| SpireServer::start(opts))?;
    println!(
        "federation: spire-server pid {} ({})",
        spire.pid(),
        spire.log_path().display()
    );
    let relay = Relay::start(bridge_ip()?, 0, spire.bundle_endpoint_addr())?;
    println!(
        "federation: SPIRE's bundle endpoint {} relayed on https://{} for the pods",
        spire.bundle_endpoint_addr(),
        relay.addr()
    );
    let mut run = Run {
        spire,
        relay,
        pods: ns.api(),
        cftds: Api::all_with(client.clone(), &cftd_resource()),
        configmaps: Api::namespaced(client, NAMESPACE),
        our_id: expected_id(ns.name()),
        mtls_args: vec![
            "federated-mtls".into(),
            "-svid".into(),
            format!("{PEER_DIR}/svid.pem"),
            "-key".into(),
            format!("{PEER_DIR}/key.pem"),
            "-peer-bundle".into(),
            format!("{SPIRE_TD}={PEER_DIR}/spire.test.pem"),
            "-peer-bundle".into(),
            format!("{TRUST_DOMAIN}={PEER_DIR}/ours.pem"),
            "-peer-id".into(),
            PEER_ID.into(),
        ],
    };

    let ours_as_spire_holds = spire_fetches_ours(&run, &our_endpoint).await?;
    start_workload(&run, ns, objects, &ours_as_spire_holds).await?;
    let (cftd, spire_fps, sequence) = we_fetch_spires(&run, ns, objects).await?;
    let spire_jwt = spire_jwt_validates(&run).await?;
    let rotated_fps = spire_rotates_its_ca(&run, &cftd, &spire_fps, sequence).await?;
    bundle_rpcs_and_files_follow(&run, Some(&rotated_fps)).await?;
    endpoint_unreachable(&mut run, &cftd, &rotated_fps).await?;
    both_bundle_lists(&run, &cftd).await?;
    deleting_the_federation(&run, objects, &cftd, &spire_jwt).await?;
    bundle_rpcs_and_files_follow(&run, None).await
}

/// SPIRE fetches our bundle from our endpoint. It is bootstrapped with only our X.509
/// authorities, so the JWT keys it ends up holding can only have come from the endpoint. Returns
/// our bundle as SPIRE holds it.
async fn spire_fetches_ours(run: &Run, our_endpoint: &str) -> Result<TrustDomainBundle> {
    let (ours_json, ours) = run.our_bundle().await?;
    ensure!(
        !ours.jwt_authorities.is_empty(),
        "our bundle has no JWT authorities: {ours_json}"
    );
    let spire = &run.spire;
    let bootstrap = x509_only(&ours_json)?;
    blocking(|| spire.bundle_set_spiffe(TRUST_DOMAIN, &bootstrap))?;
    blocking(|| spire.federation_refresh(TRUST_DOMAIN))?;
    let fetched = blocking(|| {
        spire.wait_for(
            "SPIRE to hold our bundle as served by our endpoint",
            BUNDLE_TIMEOUT,
            Duration::from_millis(250),
            || {
                let held = spire.federated_bundle(TRUST_DOMAIN)?;
                Ok(held.filter(|b| {
                    !b.jwt_authorities.is_empty()
                        && same_set(
                            &fingerprints(&b.x509_authorities),
                            &fingerprints(&ours.x509_authorities),
                        )
                }))
            },
        )
    })?;
    let kids = |b: &TrustDomainBundle| b.jwt_authorities.keys().cloned().collect::<Vec<_>>();
    ensure!(
        kids(&fetched) == kids(&ours),
        "SPIRE holds JWT kids {:?}, we publish {:?}",
        kids(&fetched),
        kids(&ours)
    );
    println!(
        "federation: SPIRE fetched {TRUST_DOMAIN} from {our_endpoint}: X.509 authorities {:?}, JWT kids {:?}",
        fingerprints(&fetched.x509_authorities),
        kids(&fetched)
    );
    println!(
        "federation: SPIRE `bundle list -format spiffe`:\n{}",
        blocking(|| spire.bundle_list_spiffe_raw())?
    );
    Ok(fetched)
}

/// The peer's material in a Secret (an SVID SPIRE mints, SPIRE's own bundle, and our bundle as
/// SPIRE fetched it: what the peer trusts us with), a ClusterSPIFFEID federating with spire.test,
/// and the probe pod watching its bundles. Before any ClusterFederatedTrustDomain the pod has no
/// spire.test bundle and does not trust the peer.
async fn start_workload(
    run: &Run,
    ns: &TestNamespace,
    objects: &mut ClusterObjects,
    ours_as_spire_holds: &TrustDomainBundle,
) -> Result<()> {
    let (peer_chain, peer_key, spire_bundle_pem) =
        blocking(|| run.spire.x509_mint(PEER_ID, Duration::from_secs(3600)))?;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "spire-peer"},
        "stringData": {
            "svid.pem": peer_chain,
            "key.pem": peer_key,
            "spire.test.pem": spire_bundle_pem,
            "ours.pem": ours_as_spire_holds.x509_authorities_pem(),
        },
    }))?;
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    objects
        .create(
            csid_resource(),
            json!({
                "apiVersion": "spire.spiffe.io/v1alpha1",
                "kind": "ClusterSPIFFEID",
                "metadata": {"name": ns.name()},
                "spec": {
                    "spiffeIDTemplate":
                        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}},
                    "federatesWith": [SPIRE_TD],
                },
            }),
        )
        .await?;
    run.pods
        .create(&PostParams::default(), &bundle_watch_pod("probe")?)
        .await?;
    run.pods
        .create(&PostParams::default(), &files_pod(FILES_POD)?)
        .await?;
    for pod in ["probe", FILES_POD] {
        wait_for(&run.pods, pod, "pod Ready", POD_TIMEOUT, pod_ready()).await?;
    }
    let first = run
        .wait_for_line("the probe's first bundle set", 0, |l| {
            l.bundles.contains_key(TRUST_DOMAIN)
        })
        .await?;
    ensure!(
        !first.bundles.contains_key(SPIRE_TD),
        "spire.test is served before any ClusterFederatedTrustDomain: {first:?}"
    );
    run.check_mtls_refused("before the ClusterFederatedTrustDomain")
        .await
}

/// A ClusterFederatedTrustDomain for spire.test: Ready once fetched, with SPIRE's sequence; the
/// pod gets the bundle and completes mTLS with the SPIRE peer. Returns the resource's name,
/// SPIRE's authority fingerprints and sequence.
async fn we_fetch_spires(
    run: &Run,
    ns: &TestNamespace,
    objects: &mut ClusterObjects,
) -> Result<(String, Vec<String>, Option<u64>)> {
    let spire_bundle = blocking(|| run.spire.bundle())?;
    let spire_fps = fingerprints(&spire_bundle.x509_authorities);
    let cftd = format!("{}-spire", ns.name());
    let created_ms = now_ms();
    objects
        .create(
            cftd_resource(),
            json!({
                "apiVersion": "spire.spiffe.io/v1alpha1",
                "kind": "ClusterFederatedTrustDomain",
                "metadata": {"name": cftd},
                "spec": {
                    "trustDomain": SPIRE_TD,
                    "bundleEndpointURL": format!("https://{}", run.relay.addr()),
                    "bundleEndpointProfile": {
                        "type": "https_spiffe",
                        "endpointSPIFFEID": run.spire.server_id(),
                    },
                    "trustDomainBundle": blocking(|| run.spire.bundle_show_spiffe())?,
                },
            }),
        )
        .await?;
    let sequence = spire_bundle.sequence_number;
    let fetched = wait_for_cftd(
        &run.cftds,
        &cftd,
        "Ready=True, BundleFetched=True and SPIRE's spiffe_sequence",
        FETCH_TIMEOUT,
        move |o| {
            condition_is(o, "Ready", "True", None)
                && condition_is(o, "BundleFetched", "True", Some("Fetched"))
                && status_u64(o, "spiffeSequence") == sequence
        },
    )
    .await?;
    let held = status_bundle(&fetched)?;
    ensure!(
        same_set(&fingerprints(&held.x509_authorities), &spire_fps)
            && status_u64(&fetched, "x509Authorities") == Some(spire_fps.len() as u64),
        "status holds {:?}, SPIRE has {spire_fps:?}",
        fingerprints(&held.x509_authorities)
    );
    println!(
        "federation: {cftd} Ready, spiffeSequence {sequence:?}, lastSuccessfulFetch {}, {:.2} s after creation",
        fetched.data["status"]["lastSuccessfulFetch"],
        seconds_since(now_ms(), created_ms)
    );
    let line = run
        .wait_for_line("spire.test in the pod's bundles", created_ms, |l| {
            l.bundles
                .get(SPIRE_TD)
                .is_some_and(|f| same_set(f, &spire_fps))
        })
        .await?;
    println!(
        "federation: the pod's Workload API serves {SPIRE_TD} {:?} ({:.2} s after the resource was created)",
        line.bundles[SPIRE_TD],
        seconds_since(line.at_ms, created_ms)
    );
    run.check_mtls(&spire_fps).await?;
    Ok((cftd, spire_fps, sequence))
}

/// A JWT-SVID SPIRE mints for the peer validates in the pod through the Workload API's
/// ValidateJWTSVID (SPIRE's JWT key reached the pod with the fetched bundle); for another audience
/// it is refused. Returns the token, for the refusal after the deletion.
async fn spire_jwt_validates(run: &Run) -> Result<String> {
    let token = blocking(|| run.spire.jwt_mint(PEER_ID, JWT_AUDIENCE, JWT_TTL))?;
    let out = validate_jwt(&run.pods, &token, JWT_AUDIENCE).await?;
    let want = format!("jwt-validated {PEER_ID} aud={JWT_AUDIENCE}");
    ensure!(
        out.lines().any(|l| l == want),
        "validate-jwt printed {out:?}, want {want:?}"
    );
    println!("federation: SPIRE's JWT-SVID in the pod: {}", out.trim());
    let other = validate_jwt(&run.pods, &token, "someone-else").await?;
    ensure!(
        other.starts_with("error code=InvalidArgument ") && other.contains("audience"),
        "validate-jwt for another audience: {other:?}"
    );
    println!("federation: for another audience: {}", other.trim());
    Ok(token)
}

/// SPIRE prepares and activates a new CA: it reaches the pod within one refresh, and the status
/// carries SPIRE's new sequence. Returns the rotated bundle's fingerprints.
async fn spire_rotates_its_ca(
    run: &Run,
    cftd: &str,
    spire_fps: &[String],
    sequence: Option<u64>,
) -> Result<Vec<String>> {
    let rotate_ms = now_ms();
    let new_authority = blocking(|| run.spire.rotate_x509_ca())?;
    let rotated = blocking(|| run.spire.bundle())?;
    let rotated_fps = fingerprints(&rotated.x509_authorities);
    ensure!(
        rotated_fps.len() == 2 && spire_fps.iter().all(|f| rotated_fps.contains(f)),
        "SPIRE's bundle after the rotation: {rotated_fps:?} (before: {spire_fps:?})"
    );
    let line = run
        .wait_for_line("SPIRE's new CA in the pod's bundles", rotate_ms, |l| {
            l.bundles
                .get(SPIRE_TD)
                .is_some_and(|f| same_set(f, &rotated_fps))
        })
        .await?;
    let latency = Duration::from_millis(line.at_ms.saturating_sub(rotate_ms));
    let bound = REFRESH_HINT + SPIRE_ENDPOINT_CACHE + PROPAGATION_SLACK;
    println!(
        "federation: SPIRE CA rotation reached the pod in {:.1} s (refresh hint {} s; bound {} s; new authority {new_authority})",
        latency.as_secs_f64(),
        REFRESH_HINT.as_secs(),
        bound.as_secs()
    );
    ensure!(
        latency <= bound,
        "the rotation took {latency:?}, more than one refresh ({REFRESH_HINT:?}) + SPIRE's cache \
         ({SPIRE_ENDPOINT_CACHE:?}) + propagation ({PROPAGATION_SLACK:?})"
    );
    let after = wait_for_cftd(
        &run.cftds,
        cftd,
        "status with SPIRE's rotated bundle",
        BUNDLE_TIMEOUT,
        move |o| status_u64(o, "x509Authorities") == Some(2),
    )
    .await?;
    let rotated_seq = status_u64(&after, "spiffeSequence");
    ensure!(
        rotated_seq == rotated.sequence_number && rotated_seq > sequence,
        "spiffeSequence {rotated_seq:?} after the rotation, SPIRE's {:?}, before {sequence:?}",
        rotated.sequence_number
    );
    // The peer's SVID (issued by the old CA) still verifies: the old CA stays in the bundle.
    run.check_mtls(&rotated_fps).await?;
    Ok(rotated_fps)
}

/// SPIRE's endpoint becomes unreachable (the relay stops: connection refused): Ready=False with
/// EndpointUnreachable, while the status and the pod keep the last good bundle; once it is back,
/// Ready again (the retry backoff never exceeds the refresh interval).
async fn endpoint_unreachable(run: &mut Run, cftd: &str, rotated_fps: &[String]) -> Result<()> {
    run.relay.stop();
    let stopped_ms = now_ms();
    let unreachable = wait_for_cftd(
        &run.cftds,
        cftd,
        "Ready=False and BundleFetched=False with reason EndpointUnreachable",
        FETCH_TIMEOUT,
        |o| {
            condition_is(o, "Ready", "False", Some("EndpointUnreachable"))
                && condition_is(o, "BundleFetched", "False", Some("EndpointUnreachable"))
        },
    )
    .await?;
    println!(
        "federation: endpoint unreachable -> {cftd} Ready=False/EndpointUnreachable after {:.1} s: {}",
        seconds_since(now_ms(), stopped_ms),
        condition(&unreachable, "BundleFetched")
            .and_then(|c| c.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    let kept = status_bundle(&unreachable)?;
    ensure!(
        same_set(&fingerprints(&kept.x509_authorities), rotated_fps),
        "status.bundle after the failure: {:?}",
        fingerprints(&kept.x509_authorities)
    );
    let lines = parse_bundle_lines(&logs(&run.pods, "probe").await?);
    let last = lines.last().context("no bundle lines")?;
    ensure!(
        last.bundles
            .get(SPIRE_TD)
            .is_some_and(|f| same_set(f, rotated_fps)),
        "the pod's bundles after the endpoint failed: {last:?}"
    );
    run.check_mtls(rotated_fps).await?;

    run.relay.resume()?;
    let resumed_ms = now_ms();
    wait_for_cftd(&run.cftds, cftd, "Ready=True again", FETCH_TIMEOUT, |o| {
        condition_is(o, "Ready", "True", None) && condition_is(o, "BundleFetched", "True", None)
    })
    .await?;
    println!(
        "federation: endpoint back -> Ready=True after {:.1} s",
        seconds_since(now_ms(), resumed_ms)
    );
    Ok(())
}

/// SPIRE still holds our current X.509 authorities; both sides' bundle lists, printed.
async fn both_bundle_lists(run: &Run, cftd: &str) -> Result<()> {
    let (_, ours) = run.our_bundle().await?;
    let spire_list = blocking(|| run.spire.bundle_list_spiffe_raw())?;
    let spire_holds = blocking(|| run.spire.federated_bundle(TRUST_DOMAIN))?
        .context("SPIRE no longer holds our bundle")?;
    ensure!(
        same_set(
            &fingerprints(&spire_holds.x509_authorities),
            &fingerprints(&ours.x509_authorities)
        ),
        "SPIRE holds {:?} for {TRUST_DOMAIN}, our current X.509 authorities are {:?}",
        fingerprints(&spire_holds.x509_authorities),
        fingerprints(&ours.x509_authorities)
    );
    let wimsey_holds = run.cftds.get(cftd).await?;
    println!("federation: SPIRE's bundle list (`bundle list -format spiffe`):\n{spire_list}");
    println!(
        "federation: wimsey's bundle list: {TRUST_DOMAIN} (ours) X.509 {:?}; {SPIRE_TD} (status.bundle of {cftd}):\n{}",
        fingerprints(&ours.x509_authorities),
        wimsey_holds.data["status"]["bundle"].as_str().unwrap_or("")
    );
    Ok(())
}

/// Deleting the ClusterFederatedTrustDomain takes spire.test away from the pod: SPIRE's SVID no
/// longer verifies and its JWT-SVID no longer validates.
/// FetchX509Bundles, FetchJWTBundles and the files-mode `federated/spire.test.pem` carry what the
/// operator fetched (`Some`: SPIRE's X.509 authorities after its CA rotation, and its JWT kids),
/// or no spire.test at all (`None`, after the relationship is deleted).
async fn bundle_rpcs_and_files_follow(run: &Run, want_x509: Option<&[String]>) -> Result<()> {
    let want_kids = match want_x509 {
        Some(_) => {
            let spire = blocking(|| run.spire.bundle())?;
            Some(spire.jwt_authorities.keys().cloned().collect::<Vec<_>>())
        }
        None => None,
    };
    let started = now_ms();
    let (x509, jwt, files) = poll_until(
        "the bundle RPCs and the files to show what was fetched",
        BUNDLE_TIMEOUT,
        || async {
            let out = probe_out(&run.pods, &["bundles"]).await?;
            let x509 = bundle_summary(&out, "x509-bundles").remove(SPIRE_TD);
            let jwt = bundle_summary(&out, "jwt-bundles").remove(SPIRE_TD);
            let files = federated_file(&run.pods).await?;
            let expected = match (want_x509, &want_kids) {
                (Some(fps), Some(kids)) => {
                    x509.as_deref().is_some_and(|got| same_set(got, fps))
                        && jwt.as_deref().is_some_and(|got| same_set(got, kids))
                        && files.as_deref().is_some_and(|got| same_set(got, fps))
                }
                _ => x509.is_none() && jwt.is_none() && files.is_none(),
            };
            Ok(expected.then_some((x509, jwt, files)))
        },
    )
    .await?;
    println!(
        "federation: FetchX509Bundles {SPIRE_TD}={x509:?}, FetchJWTBundles {SPIRE_TD}={jwt:?}, files federated/{SPIRE_TD}.pem={files:?} ({:.2} s)",
        seconds_since(now_ms(), started)
    );
    Ok(())
}

/// The `<prefix> <td>=<n>:<a>,<b> ...` line of `spiffe-probe bundles`: trust domain -> items.
fn bundle_summary(out: &str, prefix: &str) -> BTreeMap<String, Vec<String>> {
    out.lines()
        .filter_map(|line| line.strip_prefix(prefix)?.strip_prefix(' '))
        .find_map(|rest| parse_bundle_words(rest.split_whitespace()))
        .unwrap_or_default()
}

/// The fingerprints in the files-mode pod's `federated/spire.test.pem`, or `None` without it.
async fn federated_file(pods: &Api<Pod>) -> Result<Option<Vec<String>>> {
    let path = format!("{FILES_DIR}/federated/{SPIRE_TD}.pem");
    let out = exec(pods, FILES_POD, None, &[APP, "cat", &path]).await?;
    if !out.success() {
        return Ok(None);
    }
    let certs = wimsey_core::x509::pem::decode_certificates(&out.stdout)
        .map_err(|e| anyhow!("{path}: {e}"))?;
    Ok(Some(
        certs.iter().map(|c| fingerprint(c.as_ref())).collect(),
    ))
}

async fn deleting_the_federation(
    run: &Run,
    objects: &mut ClusterObjects,
    cftd: &str,
    spire_jwt: &str,
) -> Result<()> {
    let deleted_ms = now_ms();
    objects.delete("ClusterFederatedTrustDomain", cftd).await?;
    let line = run
        .wait_for_line("spire.test gone from the pod's bundles", deleted_ms, |l| {
            l.bundles.contains_key(TRUST_DOMAIN) && !l.bundles.contains_key(SPIRE_TD)
        })
        .await?;
    println!(
        "federation: {cftd} deleted -> spire.test gone from the pod in {:.2} s",
        seconds_since(line.at_ms, deleted_ms)
    );
    run.check_mtls_refused("after the deletion").await?;
    let refused = validate_jwt(&run.pods, spire_jwt, JWT_AUDIENCE).await?;
    ensure!(
        refused.starts_with("error code=InvalidArgument ")
            && refused.contains(&format!("no bundle found for trust domain \"{SPIRE_TD}\"")),
        "validate-jwt after the deletion: {refused:?}"
    );
    println!(
        "federation: SPIRE's JWT-SVID after the deletion: {}",
        refused.trim()
    );
    Ok(())
}

/// Our bundle reduced to its X.509 authorities (`use: x509-svid` keys), without sequence or hint.
fn x509_only(spiffe_jwks: &str) -> Result<String> {
    let mut v: Value = serde_json::from_str(spiffe_jwks)?;
    let keys: Vec<Value> = v
        .get("keys")
        .and_then(Value::as_array)
        .context("bundle without keys")?
        .iter()
        .filter(|k| k.get("use").and_then(Value::as_str) == Some("x509-svid"))
        .cloned()
        .collect();
    ensure!(!keys.is_empty(), "no x509-svid keys in {spiffe_jwks}");
    v = json!({"keys": keys});
    Ok(v.to_string())
}

/// `spiffe-probe validate-jwt` on `token` for `audience`: its stdout, whatever its exit status. The
/// token is an exec argument; an error here does not repeat the command.
async fn validate_jwt(pods: &Api<Pod>, token: &str, audience: &str) -> Result<String> {
    let cmd = [
        PROBE,
        "validate-jwt",
        "-audience",
        audience,
        "-token",
        token,
    ];
    let out = exec(pods, "probe", None, &cmd).await.map_err(|e| {
        anyhow!(
            "exec spiffe-probe validate-jwt in pod probe: {}",
            e.root_cause()
        )
    })?;
    Ok(out.stdout)
}

/// spiffe-probe's stdout, whatever its exit status.
async fn probe_out(pods: &Api<Pod>, args: &[&str]) -> Result<String> {
    let mut cmd = vec![PROBE];
    cmd.extend_from_slice(args);
    Ok(exec(pods, "probe", None, &cmd).await?.stdout)
}

/// `spiffe-probe federated-mtls` verifies the SPIRE SVID against one of `authorities` and
/// completes mutual TLS as `our_id` with the peer.
async fn check_mtls(
    pods: &Api<Pod>,
    args: &[&str],
    our_id: &str,
    authorities: &[String],
) -> Result<()> {
    let out = probe_out(pods, args).await?;
    let verify = out
        .lines()
        .find(|l| l.starts_with("verify "))
        .with_context(|| format!("federated-mtls printed no verify line: {out:?}"))?;
    let authority = verify
        .split_whitespace()
        .find_map(|w| w.strip_prefix("authority="))
        .unwrap_or("");
    ensure!(
        verify.starts_with(&format!("verify {PEER_ID} ok "))
            && authorities.iter().any(|a| a == authority),
        "verify line {verify:?}, SPIRE's authorities {authorities:?}"
    );
    let want = format!("mtls ok client={our_id} server={PEER_ID} server_saw={our_id} ");
    ensure!(
        out.lines().any(|l| l.starts_with(&want)),
        "federated-mtls printed {out:?}, want a line starting {want:?}"
    );
    println!(
        "federation: {}",
        out.lines()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    Ok(())
}

/// `spiffe-probe watch-bundles` on a Workload API volume, with the peer's Secret at [`PEER_DIR`].
fn bundle_watch_pod(name: &str) -> Result<Pod> {
    let mut pod = probe_pod(name)?;
    let spec = pod.spec.as_mut().context("probe pod without spec")?;
    let container = spec
        .containers
        .first_mut()
        .context("probe pod without container")?;
    container.args = Some(vec!["watch-bundles".into()]);
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: "spire-peer".into(),
            mount_path: PEER_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: "spire-peer".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some("spire-peer".into()),
            // group-readable: the pod runs as 65532 with fsGroup 65532
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    Ok(pod)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn bundle_rpc_summaries_parse_per_trust_domain() {
        let out = "x509-bundles example.org=1:aa spire.test=2:bb,cc\njwt-bundles example.org=0: spire.test=1:kid1\n";
        let x509 = bundle_summary(out, "x509-bundles");
        assert_eq!(x509["spire.test"], ["bb", "cc"]);
        assert_eq!(bundle_summary(out, "jwt-bundles")["spire.test"], ["kid1"]);
        assert!(bundle_summary(out, "jwt-bundles")["example.org"].is_empty());
        assert!(bundle_summary("error code=Unavailable msg=x", "x509-bundles").is_empty());
    }

    #[test]
    fn parses_watch_bundles_lines() {
        let log = "x509bundles at_ms=100 example.org=1:aaaa spire.test=2:bbbb,cccc\n\
                   error code=Unavailable msg=x\n\
                   x509bundles at_ms=200 example.org=1:aaaa\n\
                   x509bundles at_ms=300 example.org=2:aaaa\n";
        let lines = parse_bundle_lines(log);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].at_ms, 100);
        assert_eq!(lines[0].bundles[SPIRE_TD], vec!["bbbb", "cccc"]);
        assert!(!lines[1].bundles.contains_key(SPIRE_TD));
    }

    #[test]
    fn bootstrap_keeps_only_x509_keys() {
        let jwks = r#"{"keys":[{"use":"x509-svid","kty":"EC"},{"use":"jwt-svid","kid":"k"}],"spiffe_sequence":3}"#;
        let v: Value =
            serde_json::from_str(&x509_only(jwks).unwrap_or_default()).unwrap_or_default();
        assert_eq!(v["keys"].as_array().map(Vec::len), Some(1));
        assert!(v.get("spiffe_sequence").is_none());
    }

    #[test]
    fn operator_patch_without_env_only_names_the_object() {
        let empty = operator_patch(&[]);
        assert!(empty.get("spec").is_none(), "{empty}");
        let set = operator_patch(&[("A", "1")]);
        assert_eq!(
            set["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"],
            "A"
        );
    }
}
