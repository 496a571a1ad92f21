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
