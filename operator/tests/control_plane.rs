//! Against a real API server (`$KUBECONFIG`): the generated CRDs install and become Established,
//! spire-controller-manager's sample manifests are accepted unchanged (and nothing in them is
//! pruned), and invalid manifests are rejected at admission with our messages.
//!
//! Run by `make test-operator-cp`, which brings a cluster up first. With no reachable cluster
//! this test fails; it never skips.

// Helpers outside #[test] functions panic on a broken fixture or cluster, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Resource};
use serde_json::Value;
use wimsey_operator::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};

const FIELD_MANAGER: &str = "wimsey-operator-test";

/// The SCM samples have fixed (cluster-scoped) names: tests that apply them take turns.
static SAMPLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn load_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn plural_of(kind: &str) -> String {
    match kind {
        "ClusterSPIFFEID" => ClusterSPIFFEID::plural(&()).into_owned(),
        "ClusterStaticEntry" => ClusterStaticEntry::plural(&()).into_owned(),
        "ClusterFederatedTrustDomain" => ClusterFederatedTrustDomain::plural(&()).into_owned(),
        other => panic!("unexpected kind {other}"),
    }
}

fn api_for(client: &Client, manifest: &Value) -> Api<DynamicObject> {
    let kind = manifest["kind"].as_str().expect("kind");
    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural_of(kind));
    Api::all_with(client.clone(), &resource)
}

async fn client() -> Client {
    let client = Client::try_default()
        .await
        .expect("a Kubernetes client from $KUBECONFIG (run `make test-operator-cp`, which brings a cluster up)");
    client
        .apiserver_version()
        .await
        .expect("the API server in $KUBECONFIG must be reachable");
    client
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let files = yaml_files(&repo_path("../crds"));
    assert_eq!(files.len(), 3, "{files:?}");
    for path in files {
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&load_text(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = crd.metadata.name.clone().expect("CRD name");
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
        tokio::time::timeout(
            ESTABLISH_TIMEOUT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within {ESTABLISH_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
    }
}

#[tokio::test]
async fn crds_install_and_admission_accepts_scm_samples_and_rejects_invalid_ones() {
    let _samples = SAMPLES.lock().await;
    let client = client().await;
    install_crds(&client).await;

    // SCM's samples, applied unchanged; read back, their spec must be intact (no field pruned).
    let mut applied = Vec::new();
    for path in yaml_files(&repo_path("tests/fixtures")) {
        let manifest: Value = serde_saphyr::from_str(&load_text(&path)).unwrap();
        let object: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
        let name = object.metadata.name.clone().expect("name");
        let api = api_for(&client, &manifest);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("{} was rejected: {e}", path.display()));
        let stored = api.get(&name).await.unwrap();
        assert_eq!(
            stored.data["spec"],
            manifest["spec"],
            "{}: the API server changed the spec",
            path.display()
        );
        applied.push((api, name));
    }

    // Invalid manifests: each names the message admission must give in a `# expect:` line.
    let mut failures = Vec::new();
    for path in yaml_files(&repo_path("tests/fixtures/invalid")) {
        let text = load_text(&path);
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()))
            .to_owned();
        let manifest: Value = serde_saphyr::from_str(&text).unwrap();
        let object: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
        let dry_run = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        match api_for(&client, &manifest).create(&dry_run, &object).await {
            Ok(_) => failures.push(format!("{}: accepted", path.display())),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(&expected) {
                    failures.push(format!(
                        "{}: want 422 with {expected:?}, got {} {:?}",
                        path.display(),
                        status.code,
                        status.message
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: {other}", path.display())),
        }
    }

    for (api, name) in applied {
        api.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[path = "support/domain.rs"]
mod domain;

#[path = "support/spire.rs"]
mod spire;

// ---------------------------------------------------------------------------------------------
// The reconciler in-process against the real API server. Each test uses its own namespaces,
// Node, Lease and className, so tests and other users of the cluster do not collide.

mod reconciler {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::time::{Duration, Instant};

    use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
    use kube::{Api, Client, ResourceExt};
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;
    use wimsey_operator::config::{ConfigFlags, FileConfig, Settings};
    use wimsey_operator::crd::{ClusterSPIFFEID, ClusterStaticEntry};
    use wimsey_operator::leader::LeaseSettings;
    use wimsey_operator::reconcile::status::{FIELD_MANAGER as OPERATOR_MANAGER, status_to_write};
    use wimsey_operator::run::Controller;
    use wimsey_operator::store::EntryStore;

    use super::{FIELD_MANAGER, SAMPLES, api_for, client, install_crds, load_text, repo_path};

    const SYNC: Duration = Duration::from_secs(60);
    const SAMPLES_IDENTITY: &str = "wimsey-cp-samples-test";

    /// Polls `check` until it returns Some or `deadline` passes.
    async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn settings_flags(trust_domain: &str, class: Option<&str>) -> ConfigFlags {
        ConfigFlags {
            trust_domain: Some(trust_domain.into()),
            cluster_name: Some("cp".into()),
            cluster_domain: Some("cluster.local".into()),
            class_name: class.map(Into::into),
            entry_id_prefix: Some("cp".into()),
            ..ConfigFlags::default()
        }
    }

    fn settings(trust_domain: &str, class: Option<&str>) -> Settings {
        Settings::resolve(FileConfig::default(), settings_flags(trust_domain, class)).unwrap()
    }

    fn start(
        client: &Client,
        settings: Settings,
        lease_ns: &str,
        lease: &str,
        identity: &str,
    ) -> Controller {
        let mut lease_settings = LeaseSettings::new(lease_ns, identity);
        lease_settings.name = lease.into();
        // Logs (RUST_LOG) show up with --show-output when a test fails.
        wimsey_runtime::init_logging(&wimsey_runtime::LogArgs::default());
        Controller::start(
            client.clone(),
            settings,
            lease_settings,
            EntryStore::new(),
            CancellationToken::new(),
        )
        .unwrap()
    }

    async fn wait_ready(controller: &Controller) {
        let mut ready = controller.ready.clone();
        tokio::time::timeout(SYNC, ready.wait_for(|r| *r))
            .await
            .expect("caches synced")
            .unwrap();
    }

    /// A namespace, a Node and pods bound to it (no kubelet runs them: the API objects are
    /// what the reconciler reads).
    struct Fixture {
        client: Client,
        namespaces: Vec<String>,
        node: String,
        node_uid: String,
        pods: Vec<(String, String)>,
    }

    impl Fixture {
        async fn new(client: &Client, node: &str) -> Self {
            let nodes: Api<Node> = Api::all(client.clone());
            let _ = nodes.delete(node, &DeleteParams::default()).await;
            wait_for("old node gone", SYNC, || async {
                nodes.get_opt(node).await.unwrap().is_none().then_some(())
            })
            .await;
            let created = nodes
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "metadata": {"name": node, "labels": {"wimsey.dev/test": "control-plane"}},
                        "spec": {"providerID": format!("test:///{node}")}
                    }))
                    .unwrap(),
                )
                .await
                .unwrap();
            Self {
                client: client.clone(),
                namespaces: Vec::new(),
                node: node.into(),
                node_uid: created.uid().unwrap(),
                pods: Vec::new(),
            }
        }

        /// Creates namespace `name`, first removing what a failed earlier run left behind (its
        /// pods are force-deleted: no kubelet runs them to confirm a graceful deletion).
        async fn namespace(&mut self, name: &str, labels: Value) {
            let api: Api<Namespace> = Api::all(self.client.clone());
            if api.get_opt(name).await.unwrap().is_some() {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), name);
                let _ = pods
                    .delete_collection(&force_delete(), &ListParams::default())
                    .await;
                let _ = api.delete(name, &DeleteParams::default()).await;
            }
            wait_for("old namespace gone", SYNC, || async {
                api.get_opt(name).await.unwrap().is_none().then_some(())
            })
            .await;
            api.create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                    .unwrap(),
            )
            .await
            .unwrap();
            self.namespaces.push(name.into());
        }

        /// Creates a pod on the fixture's node; returns its UID. Retries while the namespace's
        /// default ServiceAccount does not exist yet (ServiceAccount admission).
        async fn pod(&mut self, namespace: &str, name: &str, labels: Value) -> String {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "nodeName": self.node,
                    "automountServiceAccountToken": false,
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]
                }
            }))
            .unwrap();
            let created = wait_for("pod created", SYNC, || async {
                match api.create(&PostParams::default(), &pod).await {
                    Ok(created) => Some(created),
                    Err(kube::Error::Api(status)) if status.message.contains("serviceaccount") => {
                        None
                    }
                    Err(other) => panic!("creating pod {namespace}/{name}: {other}"),
                }
            })
            .await;
            self.pods.push((namespace.into(), name.into()));
            created.uid().unwrap()
        }

        async fn cleanup(self) {
            let now = force_delete();
            for (namespace, name) in &self.pods {
                let _ = Api::<Pod>::namespaced(self.client.clone(), namespace)
                    .delete(name, &now)
                    .await;
            }
            for namespace in &self.namespaces {
                let _ = Api::<Namespace>::all(self.client.clone())
                    .delete(namespace, &DeleteParams::default())
                    .await;
            }
            let _ = Api::<Node>::all(self.client.clone())
                .delete(&self.node, &DeleteParams::default())
                .await;
        }
    }

    fn force_delete() -> DeleteParams {
        DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        }
    }

    async fn apply_cr(client: &Client, manifest: Value) -> Api<DynamicObject> {
        let object: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
        let api = api_for(client, &manifest);
        api.patch(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e}", object.name_any()));
        api
    }

    async fn apply_fixture(client: &Client, file: &str) -> (Api<DynamicObject>, String) {
        let manifest: Value =
            serde_saphyr::from_str(&load_text(&repo_path(&format!("tests/fixtures/{file}"))))
                .unwrap();
        let name = manifest["metadata"]["name"].as_str().unwrap().to_owned();
        (apply_cr(client, manifest).await, name)
    }

    /// The Ready condition once it exists and describes the current generation.
    async fn ready_condition(
        api: &Api<DynamicObject>,
        name: &str,
    ) -> Option<(Value, DynamicObject)> {
        let object = api.get(name).await.ok()?;
        let generation = object.metadata.generation?;
        let status = object.data.get("status")?;
        if status["observedGeneration"] != generation {
            return None;
        }
        let ready = status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((ready, object))
    }

    async fn delete_all(items: &[(Api<DynamicObject>, String)]) {
        for (api, name) in items {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
    }

    #[tokio::test]
    async fn scm_samples_become_entries_statuses_and_events() {
        let _samples = SAMPLES.lock().await;
        let client = client().await;
        install_crds(&client).await;
        let mut fixture = Fixture::new(&client, "wimsey-cp-samples-node").await;
        fixture
            .namespace("wimsey-cp-backend", json!({"backend": "true"}))
            .await;
        fixture.namespace("wimsey-cp-greeter", json!({})).await;
        let bank = fixture
            .pod("wimsey-cp-backend", "bank", json!({"banking": "true"}))
            .await;
        let greeter = fixture
            .pod(
                "wimsey-cp-greeter",
                "greeter",
                json!({"app": "greeter-server"}),
            )
            .await;

        // Classless and in the docs sample's trust domain: the classless samples are ours.
        let controller = start(
            &client,
            settings("domain.test", None),
            "wimsey-cp-backend",
            "wimsey-cp-samples",
            SAMPLES_IDENTITY,
        );
        let mut applied = Vec::new();
        for file in [
            "clusterspiffeid-docs.yaml",
            "clusterspiffeid-demo-greeter.yaml",
            "clusterstaticentry-docs.yaml",
            "clusterfederatedtrustdomain-demo.yaml",
        ] {
            applied.push(apply_fixture(&client, file).await);
        }
        wait_ready(&controller).await;
        let store = controller.store.clone();

        let record = wait_for("bank's entry", SYNC, || async {
            store.pod(&bank).filter(|r| !r.entries.is_empty())
        })
        .await;
        assert_eq!(record.entries.len(), 1, "{record:?}");
        let entry = &record.entries[0];
        assert!(entry.id.starts_with("cp."), "{}", entry.id);
        assert_eq!(
            entry.entry.spiffe_id.as_str(),
            "spiffe://domain.test/ns/wimsey-cp-backend/sa/default"
        );
        assert_eq!(
            entry.entry.parent_id.as_str(),
            format!(
                "spiffe://domain.test/spire/agent/k8s_psat/cp/{}",
                fixture.node_uid
            )
        );
        assert_eq!(
            entry.entry.selectors[0].to_string(),
            format!("k8s:pod-uid:{bank}")
        );
        assert_eq!(
            entry.entry.dns_names,
            ["bank.wimsey-cp-backend.cluster.local"]
        );
        assert_eq!(record.node_name, "wimsey-cp-samples-node");
        assert_eq!(store.pods_on_node("wimsey-cp-samples-node").len(), 2);

        let record = wait_for("greeter's entry", SYNC, || async {
            store.pod(&greeter).filter(|r| !r.entries.is_empty())
        })
        .await;
        let entry = &record.entries[0];
        assert_eq!(
            entry.entry.spiffe_id.as_str(),
            "spiffe://domain.test/ns/wimsey-cp-greeter/sa/default"
        );
        assert_eq!(entry.entry.federates_with[0].name(), "cluster2.demo");

        wait_for("static entry", SYNC, || async {
            store
                .static_entries()
                .iter()
                .any(|e| e.entry.spiffe_id.as_str() == "spiffe://domain.test/vm-workload")
                .then_some(())
        })
        .await;

        // Statuses: server-side applied by our field manager, for the current generation, with
        // SCM's counters.
        let (docs_api, docs) = &applied[0];
        let (ready, object) = wait_for("backend-workloads status", SYNC, || async {
            ready_condition(docs_api, docs)
                .await
                .filter(|(_, o)| o.data["status"]["stats"]["entriesToSet"] == 1)
        })
        .await;
        assert_eq!(ready["status"], "True", "{ready}");
        assert_eq!(ready["reason"], "Reconciled");
        let stats = &object.data["status"]["stats"];
        assert_eq!(stats["podsSelected"], 1, "{stats}");
        assert_eq!(stats["namespacesSelected"], 1, "{stats}");
        assert_eq!(stats["podEntryRenderFailures"], 0);
        assert!(
            object
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .any(|m| m.manager.as_deref() == Some(OPERATOR_MANAGER)
                    && m.subresource.as_deref() == Some("status")
                    && m.operation.as_deref() == Some("Apply")),
            "{:?}",
            object.metadata.managed_fields
        );
        let (static_api, static_name) = &applied[2];
        let (ready, object) = wait_for("vm-workload status", SYNC, || {
            ready_condition(static_api, static_name)
        })
        .await;
        assert_eq!(ready["status"], "True");
        assert_eq!(object.data["status"]["set"], true);
        // This fixture's trustDomainBundle certificate is malformed DER (its SAN's length bytes
        // disagree with its content, so the TBS ends one byte early; `openssl asn1parse` fails
        // on it too): the resource says so instead of failing silently, and stays out of the
        // federation set.
        let (cftd_api, cftd) = &applied[3];
        let (ready, _) =
            wait_for("cluster2 status", SYNC, || ready_condition(cftd_api, cftd)).await;
        assert_eq!(ready["status"], "False", "{ready}");
        assert_eq!(ready["reason"], "InvalidSpec", "{ready}");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("trustDomainBundle"),
            "{ready}"
        );
        assert!(!controller.federation.borrow().contains_key("cluster2.demo"));

        controller.stop().await;
        delete_all(&applied).await;
        fixture.cleanup().await;
    }

    #[tokio::test]
    async fn invalid_cluster_spiffeids_show_ready_false_within_2_s_with_one_event() {
        const CLASS: &str = "wimsey-cp-invalid";
        let client = client().await;
        install_crds(&client).await;
        let mut fixture = Fixture::new(&client, "wimsey-cp-invalid-node").await;
        fixture
            .namespace("wimsey-cp-invalid", json!({"wimsey-cp": "invalid"}))
            .await;
        let pod = fixture.pod("wimsey-cp-invalid", "one", json!({})).await;
        let controller = start(
            &client,
            settings("example.org", Some(CLASS)),
            "wimsey-cp-invalid",
            "wimsey-cp-invalid",
            "wimsey-cp-invalid-test",
        );
        wait_ready(&controller).await;
        let mut leader = controller.leader.clone();
        tokio::time::timeout(SYNC, leader.wait_for(|l| *l))
            .await
            .unwrap()
            .unwrap();
        let mut applied = Vec::new();
        // Invalid resources show Ready=False with a clear message within 2 s, and one Event.
        let invalid = [
            (
                "wimsey-cp-unparsable",
                "spiffe://example.org/{{ .PodMeta.Name",
                "InvalidTemplate",
                "spiffeIDTemplate",
            ),
            (
                "wimsey-cp-outside",
                "spiffe://elsewhere.test/{{ .PodMeta.Name }}",
                "RenderFailed",
                "elsewhere.test",
            ),
        ];
        for (name, template, reason, message) in invalid {
            let api = api_for(&client, &json!({"kind": "ClusterSPIFFEID"}));
            // A leftover of an earlier run would already carry the condition.
            let _ = api.delete(name, &DeleteParams::default()).await;
            wait_for("leftover gone", SYNC, || async {
                api.get_opt(name).await.unwrap().is_none().then_some(())
            })
            .await;
            let api = apply_cr(
                &client,
                json!({
                    "apiVersion": "spire.spiffe.io/v1alpha1",
                    "kind": "ClusterSPIFFEID",
                    "metadata": {"name": name},
                    "spec": {"className": CLASS, "spiffeIDTemplate": template, "namespaceSelector": {"matchLabels": {"wimsey-cp": "invalid"}}}
                }),
            )
            .await;
            applied.push((api.clone(), name.to_owned()));
            let (ready, object) = wait_for(
                &format!("{name} Ready=False"),
                Duration::from_secs(2),
                || ready_condition(&api, name),
            )
            .await;
            let uid = object.uid().unwrap();
            assert_eq!(ready["status"], "False", "{ready}");
            assert_eq!(ready["reason"], reason, "{ready}");
            assert!(
                ready["message"].as_str().unwrap().contains(message),
                "{ready}"
            );
            let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
            let matching = wait_for(&format!("{name} event"), SYNC, || async {
                let list = events.list(&ListParams::default()).await.unwrap();
                let found: Vec<K8sEvent> = list
                    .items
                    .into_iter()
                    .filter(|e| {
                        e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str())
                            // Another wimsey-operator deployed in the shared cluster may
                            // report on the same classless resource.
                            && e.reporting_instance.as_deref() == Some("wimsey-cp-invalid-test")
                    })
                    .collect();
                (!found.is_empty()).then_some(found)
            })
            .await;
            assert_eq!(
                matching.len(),
                1,
                "one event per transition, not per pod or pass: {matching:?}"
            );
            assert_eq!(matching[0].reason.as_deref(), Some(reason));
            assert_eq!(matching[0].type_.as_deref(), Some("Warning"));
        }
        // The failing specs render nothing.
        assert!(controller.store.pod(&pod).is_none());
        controller.stop().await;
        delete_all(&applied).await;
        fixture.cleanup().await;
    }

    /// The Pod watch keeps only what the templates reach. A ClusterSPIFFEID applied later that
    /// reads a field not kept (a container image) makes the watch list every pod again, and the
    /// entry carries the field's value: against a real API server, through the real watch.
    #[tokio::test]
    async fn a_template_reaching_a_field_not_kept_relists_and_renders_it() {
        const CLASS: &str = "wimsey-cp-relist";
        let client = client().await;
        install_crds(&client).await;
        let mut fixture = Fixture::new(&client, "wimsey-cp-relist-node").await;
        fixture
            .namespace("wimsey-cp-relist", json!({"wimsey-cp": "relist"}))
            .await;
        let pod = fixture.pod("wimsey-cp-relist", "one", json!({})).await;
        let mut applied = Vec::new();
        let spec = |name: &str, extra: Value| {
            let mut spec = json!({
                "className": CLASS,
                "spiffeIDTemplate": format!("spiffe://example.org/{name}/{{{{ .PodMeta.Name }}}}"),
                "namespaceSelector": {"matchLabels": {"wimsey-cp": "relist"}},
            });
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({
                "apiVersion": "spire.spiffe.io/v1alpha1",
                "kind": "ClusterSPIFFEID",
                "metadata": {"name": name},
                "spec": spec,
            })
        };
        let narrow = "wimsey-cp-relist-narrow";
        applied.push((
            apply_cr(&client, spec(narrow, json!({}))).await,
            narrow.to_owned(),
        ));
        let controller = start(
            &client,
            settings("example.org", Some(CLASS)),
            "wimsey-cp-relist",
            "wimsey-cp-relist",
            "wimsey-cp-relist-test",
        );
        wait_ready(&controller).await;
        let store = controller.store.clone();
        wait_for("the narrow entry", SYNC, || async {
            store.pod(&pod).filter(|r| r.entries.len() == 1)
        })
        .await;

        let wide = "wimsey-cp-relist-image";
        applied.push((
            apply_cr(
                &client,
                spec(
                    wide,
                    json!({"workloadSelectorTemplates": [
                        "k8s:pod-image:{{ (index .PodSpec.Containers 0).Image }}"
                    ]}),
                ),
            )
            .await,
            wide.to_owned(),
        ));
        let record = wait_for("the entry reading the container image", SYNC, || async {
            store.pod(&pod).filter(|r| r.entries.len() == 2)
        })
        .await;
        let image_entry = record
            .entries
            .iter()
            .find(|e| e.entry.spiffe_id.as_str().contains(wide))
            .expect("the wide spec's entry");
        let selectors: Vec<String> = image_entry
            .entry
            .selectors
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            selectors.contains(&"k8s:pod-image:registry.k8s.io/pause:3.10".to_owned()),
            "{selectors:?}"
        );
        controller.stop().await;
        delete_all(&applied).await;
        fixture.cleanup().await;
    }

    #[tokio::test]
    async fn endpoint_slices_give_auto_populated_dns_names() {
        const CLASS: &str = "wimsey-cp-dns";
        let client = client().await;
        install_crds(&client).await;
        let mut fixture = Fixture::new(&client, "wimsey-cp-dns-node").await;
        let namespace = "wimsey-cp-dns";
        fixture
            .namespace(namespace, json!({"wimsey-cp": "dns"}))
            .await;
        let pod = fixture.pod(namespace, "one", json!({})).await;
        let mut spec = class_spec("wimsey-cp-dns", CLASS, "dns");
        spec["spec"]["autoPopulateDNSNames"] = json!(true);
        let spec_api = apply_cr(&client, spec).await;
        let controller = start(
            &client,
            settings("example.org", Some(CLASS)),
            namespace,
            "wimsey-cp-dns",
            "wimsey-cp-dns-test",
        );
        wait_ready(&controller).await;
        let store = controller.store.clone();
        wait_for("entry without DNS names", SYNC, || async {
            store.pod(&pod).filter(|r| r.entries.len() == 1)
        })
        .await;

        // What the EndpointSlice controller writes for a Service "web" selecting the pod (no
        // kubelet runs it, so the slice is written here).
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-x1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.10"], "targetRef": {"kind": "Pod", "name": "one", "namespace": namespace}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        slices.create(&PostParams::default(), &slice).await.unwrap();
        let expected = [
            "web".to_owned(),
            format!("web.{namespace}"),
            format!("web.{namespace}.svc"),
            format!("web.{namespace}.svc.cluster.local"),
        ];
        wait_for("service DNS names", SYNC, || async {
            store
                .pod(&pod)
                .filter(|r| r.entries[0].entry.dns_names == expected)
        })
        .await;
        slices
            .delete("web-x1", &DeleteParams::default())
            .await
            .unwrap();
        wait_for("DNS names removed with the slice", SYNC, || async {
            store
                .pod(&pod)
                .filter(|r| r.entries[0].entry.dns_names.is_empty())
        })
        .await;
        controller.stop().await;
        let _ = spec_api
            .delete("wimsey-cp-dns", &DeleteParams::default())
            .await;
        fixture.cleanup().await;
    }

    fn class_spec(name: &str, class: &str, namespace_label: &str) -> Value {
        json!({
            "apiVersion": "spire.spiffe.io/v1alpha1",
            "kind": "ClusterSPIFFEID",
            "metadata": {"name": name},
            "spec": {
                "className": class,
                "spiffeIDTemplate": "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}/{{ .PodMeta.Name }}",
                "namespaceSelector": {"matchLabels": {"wimsey-cp": namespace_label}},
                "workloadSelectorTemplates": ["k8s:ns:{{ .PodMeta.Namespace }}"]
            }
        })
    }

    fn entries_of(store: &EntryStore) -> BTreeMap<String, Vec<(String, String)>> {
        store
            .all_pods()
            .iter()
            .map(|p| {
                (
                    p.uid.clone(),
                    p.entries
                        .iter()
                        .map(|e| (e.id.clone(), e.entry.spiffe_id.to_string()))
                        .collect(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_restart_gives_the_same_entries_and_writes_no_status() {
        let client = client().await;
        install_crds(&client).await;
        let class = "wimsey-cp-restart";
        let mut fixture = Fixture::new(&client, "wimsey-cp-restart-node").await;
        fixture
            .namespace("wimsey-cp-restart", json!({"wimsey-cp": "restart"}))
            .await;
        let one = fixture.pod("wimsey-cp-restart", "one", json!({})).await;
        let two = fixture.pod("wimsey-cp-restart", "two", json!({})).await;
        let spec_api = apply_cr(&client, class_spec("wimsey-cp-restart", class, "restart")).await;
        let static_api = apply_cr(
            &client,
            json!({
                "apiVersion": "spire.spiffe.io/v1alpha1",
                "kind": "ClusterStaticEntry",
                "metadata": {"name": "wimsey-cp-restart"},
                "spec": {"className": class, "spiffeID": "spiffe://example.org/vm", "parentID": "spiffe://example.org/spire/server", "selectors": ["unix:uid:0"]}
            }),
        )
        .await;

        let a = start(
            &client,
            settings("example.org", Some(class)),
            "wimsey-cp-restart",
            "wimsey-cp-restart",
            "a",
        );
        wait_ready(&a).await;
        let (_, spec_object) = wait_for("status from A", SYNC, || async {
            ready_condition(&spec_api, "wimsey-cp-restart")
                .await
                .filter(|(_, o)| o.data["status"]["stats"]["entriesToSet"] == 2)
        })
        .await;
        let (_, static_object) = wait_for("static status from A", SYNC, || {
            ready_condition(&static_api, "wimsey-cp-restart")
        })
        .await;
        let before = entries_of(&a.store);
        assert!(
            before.contains_key(&one) && before.contains_key(&two),
            "{before:?}"
        );
        let statics_before = a.store.static_entries();
        a.stop().await;

        let b = start(
            &client,
            settings("example.org", Some(class)),
            "wimsey-cp-restart",
            "wimsey-cp-restart",
            "b",
        );
        wait_ready(&b).await;
        assert_eq!(
            entries_of(&b.store),
            before,
            "a restart must not churn entry IDs"
        );
        assert_eq!(b.store.static_entries(), statics_before);
        let mut leader = b.leader.clone();
        tokio::time::timeout(SYNC, leader.wait_for(|l| *l))
            .await
            .unwrap()
            .unwrap();
        // B computed every status and found nothing to write...
        let mut statuses = b.statuses.clone();
        let desired = tokio::time::timeout(SYNC, statuses.wait_for(|s| s.len() == 2))
            .await
            .unwrap()
            .unwrap()
            .clone();
        for status in desired.iter() {
            assert_eq!(
                status_to_write(
                    &status.status,
                    status.observed.as_ref(),
                    k8s_openapi::jiff::Timestamp::now()
                ),
                None,
                "{status:?}"
            );
        }
        // ...so the resources keep their resourceVersion while B leads.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let spec_now = spec_api.get("wimsey-cp-restart").await.unwrap();
            let static_now = static_api.get("wimsey-cp-restart").await.unwrap();
            assert_eq!(
                spec_now.metadata.resource_version,
                spec_object.metadata.resource_version
            );
            assert_eq!(
                static_now.metadata.resource_version,
                static_object.metadata.resource_version
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        b.stop().await;
        let _ = Api::<ClusterSPIFFEID>::all(client.clone())
            .delete("wimsey-cp-restart", &DeleteParams::default())
            .await;
        let _ = Api::<ClusterStaticEntry>::all(client.clone())
            .delete("wimsey-cp-restart", &DeleteParams::default())
            .await;
        fixture.cleanup().await;
    }

    /// The `spire` backend wired as `wimsey-operator run --backend spire` wires it: pods of a
    /// ClusterSPIFFEID become entries in a real SPIRE Server (v1.13.3), follow pod deletion and
    /// the resource's deletion, and an entry made by hand in SPIRE survives all of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_spire_backend_pods_become_entries_in_a_real_spire_server() {
        use super::spire::{SpireOptions, SpireServer};
        use wimsey_core::bundle::TrustDomainBundle;
        use wimsey_core::spiffe_id::TrustDomain;
        use wimsey_core::x509::upstream::test_pki::UserPki;
        use wimsey_operator::config::Backend;
        use wimsey_operator::spire_entries::{BatchLimits, SpireEntries};
        use wimsey_operator::spire_relationships::SpireRelationships;

        const CLASS: &str = "wimsey-cp-spire";
        let client = client().await;
        install_crds(&client).await;
        let mut spire =
            tokio::task::spawn_blocking(|| SpireServer::start(SpireOptions::new("example.org")))
                .await
                .unwrap()
                .expect("start spire-server");
        spire
            .cli(
                &[
                    "entry",
                    "create",
                    "-parentID",
                    "spiffe://example.org/admin",
                    "-spiffeID",
                    "spiffe://example.org/by-hand",
                    "-selector",
                    "unix:uid:0",
                ],
                None,
            )
            .unwrap();
        let observer = SpireEntries::connect_lazy(spire.socket_path(), BatchLimits::default());
        let spiffe_ids = || async {
            let mut ids: Vec<String> = observer
                .list_all()
                .await
                .unwrap()
                .into_iter()
                .map(|e| {
                    let id = e.spiffe_id.unwrap_or_default();
                    format!(
                        "{}{}",
                        if e.id.starts_with("cp.") { "ours " } else { "" },
                        id.path
                    )
                })
                .collect();
            ids.sort();
            ids
        };

        let mut fixture = Fixture::new(&client, "wimsey-cp-spire-node").await;
        let namespace = "wimsey-cp-spire";
        fixture
            .namespace(namespace, json!({"wimsey-cp": "spire"}))
            .await;
        fixture.pod(namespace, "one", json!({})).await;
        fixture.pod(namespace, "two", json!({})).await;
        let spec_api = apply_cr(&client, class_spec("wimsey-cp-spire", CLASS, "spire")).await;
        let settings = Settings::resolve(
            FileConfig::default(),
            ConfigFlags {
                backend: Some(Backend::Spire),
                spire_server_socket: Some(spire.socket_path().display().to_string()),
                ..settings_flags("example.org", Some(CLASS))
            },
        )
        .unwrap();
        let controller = start(
            &client,
            settings.clone(),
            namespace,
            "wimsey-cp-spire",
            "wimsey-cp-spire-test",
        );
        wait_ready(&controller).await;
        let sync = wimsey_operator::run::start_spire_sync(&settings, &controller);

        let path = |pod: &str| format!("ours /ns/{namespace}/sa/default/{pod}");
        let both = vec!["/by-hand".to_owned(), path("one"), path("two")];
        wait_for("both pods' entries in SPIRE", SYNC, || async {
            (spiffe_ids().await == both).then_some(())
        })
        .await;
        let reason_is = |name: &'static str, reason: &'static str| {
            let api = spec_api.clone();
            async move {
                wait_for(&format!("{name} Ready reason {reason}"), SYNC, || async {
                    ready_condition(&api, name)
                        .await
                        .filter(|(ready, _)| ready["reason"] == reason)
                        .map(|(ready, _)| ready)
                })
                .await
            }
        };
        reason_is("wimsey-cp-spire", "Reconciled").await;

        // SPIRE refuses an entry federating with a trust domain it has no bundle for: the
        // resource that declared it says so; the other one stays Ready.
        let mut federated = class_spec("wimsey-cp-spire-fed", CLASS, "spire");
        federated["spec"]["spiffeIDTemplate"] =
            json!("spiffe://example.org/fed/{{ .PodMeta.Name }}");
        federated["spec"]["federatesWith"] = json!(["unknown.example"]);
        apply_cr(&client, federated).await;
        let refused = reason_is("wimsey-cp-spire-fed", "EntryFailed").await;
        println!("SPIRE refusal on the resource: {}", refused["message"]);
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("refused 2 of 2"),
            "{refused}"
        );
        reason_is("wimsey-cp-spire", "Reconciled").await;

        // A ClusterFederatedTrustDomain for that trust domain becomes a SPIRE federation
        // relationship, with its trustDomainBundle as SPIRE's bundle: the refused entries are
        // accepted now, and the resource says SPIRE holds the relationship.
        let peer = TrustDomain::new("unknown.example").unwrap();
        let mut bundle = TrustDomainBundle::new(peer.clone());
        bundle
            .x509_authorities
            .push(UserPki::new(&peer).root().as_ref().to_vec());
        let cftd_api = apply_cr(
            &client,
            json!({
                "apiVersion": "spire.spiffe.io/v1alpha1",
                "kind": "ClusterFederatedTrustDomain",
                "metadata": {"name": "wimsey-cp-spire-peer"},
                "spec": {
                    "className": CLASS,
                    "trustDomain": "unknown.example",
                    "bundleEndpointURL": "https://unknown.example/bundle",
                    "bundleEndpointProfile": {"type": "https_web"},
                    "trustDomainBundle": bundle.to_spiffe_jwks().unwrap(),
                }
            }),
        )
        .await;
        let held = wait_for("the CFTD Ready: SPIRE holds it", SYNC, || async {
            ready_condition(&cftd_api, "wimsey-cp-spire-peer")
                .await
                .filter(|(ready, _)| ready["reason"] == "Reconciled")
                .map(|(ready, _)| ready)
        })
        .await;
        println!(
            "ClusterFederatedTrustDomain with the spire backend: {}",
            held["message"]
        );
        let relationships =
            SpireRelationships::connect_lazy(spire.socket_path(), BatchLimits::default());
        let listed = relationships.list_all().await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|r| (r.trust_domain.as_str(), r.bundle_endpoint_url.as_str()))
                .collect::<Vec<_>>(),
            [("unknown.example", "https://unknown.example/bundle")]
        );
        let accepted = reason_is("wimsey-cp-spire-fed", "Reconciled").await;
        println!(
            "federated entries once SPIRE knows the trust domain: {}",
            accepted["message"]
        );
        spec_api
            .delete("wimsey-cp-spire-fed", &DeleteParams::default())
            .await
            .unwrap();
        cftd_api
            .delete("wimsey-cp-spire-peer", &DeleteParams::default())
            .await
            .unwrap();
        wait_for(
            "the relationship deleted with its resource",
            SYNC,
            || async {
                relationships
                    .list_all()
                    .await
                    .unwrap()
                    .is_empty()
                    .then_some(())
            },
        )
        .await;

        // The SPIRE Server goes away. Nothing is sent while nothing changes, so the next change
        // finds it gone: BackendUnavailable; once it is back the change goes through.
        tokio::task::block_in_place(|| spire.stop()).unwrap();
        fixture.pod(namespace, "three", json!({})).await;
        let down = reason_is("wimsey-cp-spire", "BackendUnavailable").await;
        println!("SPIRE Server down: {}", down["message"]);
        tokio::task::block_in_place(|| spire.start_again()).unwrap();
        reason_is("wimsey-cp-spire", "Reconciled").await;
        let three = vec![
            "/by-hand".to_owned(),
            path("one"),
            path("three"),
            path("two"),
        ];
        wait_for("the pod made during the outage in SPIRE", SYNC, || async {
            (spiffe_ids().await == three).then_some(())
        })
        .await;

        Api::<Pod>::namespaced(client.clone(), namespace)
            .delete("two", &force_delete())
            .await
            .unwrap();
        let one = vec!["/by-hand".to_owned(), path("one"), path("three")];
        wait_for("the deleted pod's entry gone from SPIRE", SYNC, || async {
            (spiffe_ids().await == one).then_some(())
        })
        .await;

        spec_api
            .delete("wimsey-cp-spire", &DeleteParams::default())
            .await
            .unwrap();
        wait_for("only the hand-made entry left", SYNC, || async {
            (spiffe_ids().await == ["/by-hand"]).then_some(())
        })
        .await;
        controller.stop().await;
        sync.await.unwrap();
        fixture.cleanup().await;
    }

    #[tokio::test]
    async fn a_standby_takes_over_within_15_s_when_the_leader_dies() {
        let client = client().await;
        install_crds(&client).await;
        let class = "wimsey-cp-failover";
        let mut fixture = Fixture::new(&client, "wimsey-cp-failover-node").await;
        fixture
            .namespace("wimsey-cp-failover", json!({"wimsey-cp": "failover"}))
            .await;
        fixture.pod("wimsey-cp-failover", "one", json!({})).await;
        let spec_api = apply_cr(&client, class_spec("wimsey-cp-failover", class, "failover")).await;

        let a = start(
            &client,
            settings("example.org", Some(class)),
            "wimsey-cp-failover",
            "wimsey-cp-failover",
            "a",
        );
        let mut a_leader = a.leader.clone();
        tokio::time::timeout(SYNC, a_leader.wait_for(|l| *l))
            .await
            .unwrap()
            .unwrap();
        let b = start(
            &client,
            settings("example.org", Some(class)),
            "wimsey-cp-failover",
            "wimsey-cp-failover",
            "b",
        );
        wait_ready(&b).await;
        assert!(!*b.leader.borrow(), "only one leader");
        let (_, before) = wait_for("status from A", SYNC, || {
            ready_condition(&spec_api, "wimsey-cp-failover")
        })
        .await;

        // The leader dies without releasing the Lease.
        a.abort();
        let died = Instant::now();
        let mut b_leader = b.leader.clone();
        tokio::time::timeout(Duration::from_secs(15), b_leader.wait_for(|l| *l))
            .await
            .expect("the standby leads within 15 s")
            .unwrap();
        let took = died.elapsed();
        println!("failover took {took:?}");

        // B writes status: a spec change shows up with the new generation.
        let mut changed = class_spec("wimsey-cp-failover", class, "failover");
        changed["spec"]["hint"] = json!("after-failover");
        apply_cr(&client, changed).await;
        let generation = before.metadata.generation.unwrap() + 1;
        let (ready, _) = wait_for("status from B", SYNC, || async {
            ready_condition(&spec_api, "wimsey-cp-failover")
                .await
                .filter(|(_, o)| o.metadata.generation == Some(generation))
        })
        .await;
        assert_eq!(ready["status"], "True", "{ready}");
        b.stop().await;
        let _ = Api::<ClusterSPIFFEID>::all(client.clone())
            .delete("wimsey-cp-failover", &DeleteParams::default())
            .await;
        fixture.cleanup().await;
    }

    /// The poller with the reconciler on a real API server: a fetched bundle lands in the
    /// resource's status (Ready and BundleFetched True, sequence and counts), a rotation at the
    /// peer arrives within a refresh, a second replica that never fetched finds the bundle in the
    /// status, and an endpoint that goes away turns Ready False (EndpointUnreachable, with an
    /// Event) while the last good bundle stays in effect.
    #[tokio::test]
    async fn fetched_bundles_live_in_status_for_every_replica_and_outlive_an_endpoint_outage() {
        use std::sync::Arc;

        use kube::runtime::events::Reporter;
        use wimsey_core::federation::RefreshPolicy;
        use wimsey_operator::federation::fetch::FetchLimits;
        use wimsey_operator::federation::poller::{Poller, PollerSettings};

        use super::domain::{Domain, HOUR, bundle_endpoint};

        const CLASS: &str = "wimsey-cp-federation";
        const NAME: &str = "wimsey-cp-federation-peer";
        let client = client().await;
        install_crds(&client).await;
        let mut peer = Domain::new("peer.test");
        let ours = Domain::new("cp-federation.test");
        let (url, stop_endpoint) = bundle_endpoint(&peer).await;

        let a = start(
            &client,
            settings("cp-federation.test", Some(CLASS)),
            "default",
            "wimsey-cp-federation",
            "wimsey-cp-federation-a",
        );
        wait_ready(&a).await;
        let mut leader = a.leader.clone();
        tokio::time::timeout(SYNC, leader.wait_for(|l| *l))
            .await
            .expect("A leads")
            .unwrap();
        let polling = CancellationToken::new();
        // Each replica runs a poller, as `run` does; only the Lease holder's fetches.
        let poller = |replica: &Controller, identity: &str| {
            tokio::spawn(
                Poller::new(
                    client.clone(),
                    Reporter {
                        controller: "wimsey-operator".into(),
                        instance: Some(identity.into()),
                    },
                    PollerSettings {
                        policy: RefreshPolicy {
                            min: Duration::from_secs(1),
                            max: Duration::from_secs(2),
                            default: Duration::from_secs(1),
                        },
                        limits: FetchLimits::default(),
                        web_roots: Arc::new(rustls::RootCertStore::empty()),
                    },
                    replica.metrics.clone(),
                    ours.material.subscribe(),
                )
                .run(
                    replica.federation.clone(),
                    replica.leader.clone(),
                    polling.clone(),
                ),
            )
        };
        poller(&a, "wimsey-cp-federation-a");

        let initial = peer.current().bundle.clone();
        let api = apply_cr(
            &client,
            json!({
                "apiVersion": "spire.spiffe.io/v1alpha1",
                "kind": "ClusterFederatedTrustDomain",
                "metadata": {"name": NAME},
                "spec": {
                    "trustDomain": "peer.test",
                    "bundleEndpointURL": url.as_str(),
                    "bundleEndpointProfile": {
                        "type": "https_spiffe",
                        "endpointSPIFFEID": "spiffe://peer.test/wimsey/bundle-endpoint"
                    },
                    "trustDomainBundle": initial.to_spiffe_jwks().unwrap(),
                    "className": CLASS,
                }
            }),
        )
        .await;
        let status = |object: &DynamicObject| object.data["status"].clone();
        let condition = |status: &Value, kind: &str| {
            status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == kind).cloned())
                .unwrap_or(Value::Null)
        };
        let fetched = wait_for("BundleFetched and Ready", SYNC, || async {
            let s = status(&api.get(NAME).await.ok()?);
            (condition(&s, "BundleFetched")["status"] == "True"
                && condition(&s, "Ready")["status"] == "True")
                .then_some(s)
        })
        .await;
        assert_eq!(
            fetched["spiffeSequence"],
            json!(initial.sequence_number.unwrap())
        );
        assert_eq!(fetched["x509Authorities"], json!(1));
        assert_eq!(fetched["trustDomain"], "peer.test");
        assert!(fetched["lastSuccessfulFetch"].is_string() && fetched["nextRefresh"].is_string());

        // The peer rotates: the new CA reaches the status and every replica's federation set.
        peer.rotate_later(14 * HOUR);
        let rotated = peer.current().bundle.clone();
        let started = Instant::now();
        wait_for("the rotated bundle in status", SYNC, || async {
            let s = status(&api.get(NAME).await.ok()?);
            (s["spiffeSequence"] == json!(rotated.sequence_number.unwrap())).then_some(())
        })
        .await;
        println!(
            "peer rotation stored after {:?} (refresh 1 s)",
            started.elapsed()
        );
        let in_set = |controller: &Controller| {
            controller
                .federation
                .borrow()
                .get("peer.test")
                .and_then(|f| {
                    f.fetched_bundle
                        .as_ref()
                        .map(|b| b.x509_authorities.clone())
                })
        };
        wait_for("A's federation set", SYNC, || async {
            (in_set(&a) == Some(rotated.x509_authorities.clone())).then_some(())
        })
        .await;

        // A second replica (a standby, no poller) finds the fetched bundle without fetching.
        let b = start(
            &client,
            settings("cp-federation.test", Some(CLASS)),
            "default",
            "wimsey-cp-federation",
            "wimsey-cp-federation-b",
        );
        wait_ready(&b).await;
        wait_for("B's federation set", SYNC, || async {
            (in_set(&b) == Some(rotated.x509_authorities.clone())).then_some(())
        })
        .await;
        assert!(!*b.leader.borrow(), "B is a standby");
        poller(&b, "wimsey-cp-federation-b");
        let fetches = |replica: &Controller| {
            replica
                .metrics
                .encode()
                .lines()
                .filter(|l| l.starts_with("wimsey_operator_federation_fetches_total{"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };

        // The endpoint goes away: Ready False with the reason; the last good bundle stays.
        stop_endpoint.cancel();
        let failed = wait_for("Ready False", SYNC, || async {
            let s = status(&api.get(NAME).await.ok()?);
            (condition(&s, "Ready")["status"] == "False").then_some(s)
        })
        .await;
        assert_eq!(
            condition(&failed, "Ready")["reason"],
            "EndpointUnreachable",
            "{failed}"
        );
        assert_eq!(
            condition(&failed, "BundleFetched")["reason"],
            "EndpointUnreachable"
        );
        assert!(
            condition(&failed, "Ready")["message"]
                .as_str()
                .unwrap()
                .contains("last good bundle"),
            "{failed}"
        );
        assert_eq!(
            failed["spiffeSequence"],
            json!(rotated.sequence_number.unwrap())
        );
        assert_eq!(in_set(&a), Some(rotated.x509_authorities.clone()));
        assert_eq!(in_set(&b), Some(rotated.x509_authorities.clone()));
        let events = Api::<K8sEvent>::all(client.clone());
        wait_for("an EndpointUnreachable Event", SYNC, || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME)
                        && e.reason.as_deref() == Some("EndpointUnreachable")
                })
        })
        .await;

        assert!(
            fetches(&b).is_empty(),
            "the standby fetched: {:?}",
            fetches(&b)
        );
        assert!(!fetches(&a).is_empty());

        // A hands over (its Lease released): B's poller takes over, from the stored bundle.
        a.stop().await;
        wait_for("B fetching", SYNC, || async {
            fetches(&b)
                .iter()
                .any(|l| l.contains("peer.test") && l.contains("unreachable"))
                .then_some(())
        })
        .await;
        assert_eq!(in_set(&b), Some(rotated.x509_authorities.clone()));

        // Deleting the resource drops the domain from every replica.
        api.delete(NAME, &DeleteParams::default()).await.unwrap();
        wait_for("peer.test gone", SYNC, || async {
            in_set(&b).is_none().then_some(())
        })
        .await;
        polling.cancel();
        b.stop().await;
    }

    /// The https_web serving certificate follows its kubernetes.io/tls Secret: loaded at start,
    /// replaced when the Secret changes (as cert-manager renews it), and kept when an update is
    /// not a usable certificate and key.
    #[tokio::test]
    async fn the_https_web_certificate_follows_its_secret() {
        use std::sync::Arc;
        use std::time::SystemTime;

        use k8s_openapi::api::core::v1::Secret;
        use wimsey_core::SpiffeId;
        use wimsey_core::keys::{KeyAlgorithm, SigningKey};
        use wimsey_core::x509::SvidRequest;
        use wimsey_operator::federation::web_cert::follow_secret;
        use wimsey_operator::federation::web_pki::WebServingCert;

        use super::domain::{Domain, HOUR};

        const NAME: &str = "wimsey-cp-bundle-endpoint-tls";
        let client = client().await;
        let ca = Domain::new("ca.test");
        let pem = |label: &str, der: &[u8]| {
            pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap()
        };
        // A certificate and key for localhost, and the leaf's DER.
        let issue = || {
            let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
            let svid = ca
                .current()
                .ca
                .issue_for_public_key(
                    &key.public_key_spki_der(),
                    &SvidRequest {
                        spiffe_id: &SpiffeId::parse("spiffe://ca.test/web").unwrap(),
                        dns_names: &["localhost".to_owned()],
                        ttl: HOUR,
                    },
                    SystemTime::now(),
                )
                .unwrap();
            let chain: String = svid
                .chain
                .iter()
                .map(|c| pem("CERTIFICATE", c.as_bytes()))
                .collect();
            (
                chain,
                pem("PRIVATE KEY", &key.pkcs8_der()),
                svid.chain[0].as_bytes().to_vec(),
            )
        };
        let secret = |crt: &str, key: &str| -> Secret {
            serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": NAME, "namespace": "default"},
                "type": "kubernetes.io/tls",
                "stringData": {"tls.crt": crt, "tls.key": key},
            }))
            .unwrap()
        };
        let secrets = Api::<Secret>::namespaced(client.clone(), "default");
        let apply = |body: Secret| {
            let secrets = secrets.clone();
            async move {
                secrets
                    .patch(
                        NAME,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&body),
                    )
                    .await
                    .unwrap();
            }
        };
        let (crt_a, key_a, leaf_a) = issue();
        apply(secret(&crt_a, &key_a)).await;
        let cert = Arc::new(WebServingCert::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(follow_secret(
            client.clone(),
            "default".into(),
            NAME.into(),
            cert.clone(),
            shutdown.clone(),
        ));
        let serving = |cert: &WebServingCert| cert.current().map(|k| k.cert[0].as_ref().to_vec());
        wait_for("the first certificate", SYNC, || async {
            (serving(&cert) == Some(leaf_a.clone())).then_some(())
        })
        .await;

        let (crt_b, key_b, leaf_b) = issue();
        apply(secret(&crt_b, &key_b)).await;
        wait_for("the renewed certificate", SYNC, || async {
            (serving(&cert) == Some(leaf_b.clone())).then_some(())
        })
        .await;

        // A key that does not match the certificate: logged, the renewed certificate stays.
        apply(secret(&crt_a, &key_b)).await;
        let (crt_c, key_c, leaf_c) = issue();
        apply(secret(&crt_c, &key_c)).await;
        // The broken version was seen before the good one (a watch delivers them in order), and
        // never served.
        wait_for("the third certificate", SYNC, || async {
            let now = serving(&cert);
            assert_ne!(now, Some(leaf_a.clone()), "a mismatched key was served");
            (now == Some(leaf_c.clone())).then_some(())
        })
        .await;
        shutdown.cancel();
        let _ = secrets.delete(NAME, &DeleteParams::default()).await;
    }
}
