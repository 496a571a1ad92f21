//! The CRDs against spire-controller-manager v1alpha1: every spec field with its JSON name, type
//! and required-ness; SCM's sample manifests round-trip through our types unchanged; the
//! committed `crds/*.yaml` match the types.

// Helpers outside #[test] functions panic on a broken fixture, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;
use serde_json::Value;
use wimsey_core::entries::{CompiledSpec, render_static_entry};
use wimsey_operator::crd::{
    ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry, all_crds,
};
use wimsey_operator::views::{cluster_spiffe_id_view, static_entry_view};

fn version_schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    assert_eq!(crd.spec.versions.len(), 1);
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema")
}

fn property<'a>(schema: &'a JSONSchemaProps, name: &str) -> &'a JSONSchemaProps {
    schema
        .properties
        .as_ref()
        .and_then(|p| p.get(name))
        .unwrap_or_else(|| panic!("no property {name}"))
}

fn property_types(schema: &JSONSchemaProps) -> BTreeMap<String, String> {
    schema
        .properties
        .as_ref()
        .expect("properties")
        .iter()
        .map(|(name, p)| (name.clone(), p.type_.clone().unwrap_or_default()))
        .collect()
}

fn required(schema: &JSONSchemaProps) -> Vec<String> {
    let mut r = schema.required.clone().unwrap_or_default();
    r.sort();
    r
}

fn expect_fields(schema: &JSONSchemaProps, expected: &[(&str, &str)]) {
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(property_types(schema), expected);
}

fn rule_messages(schema: &JSONSchemaProps) -> Vec<String> {
    schema
        .x_kubernetes_validations
        .iter()
        .flatten()
        .map(|r| r.message.clone().unwrap_or_default())
        .collect()
}

fn common_checks(crd: &CustomResourceDefinition, kind: &str, plural: &str) {
    assert_eq!(crd.spec.group, "spire.spiffe.io");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, kind);
    assert_eq!(crd.spec.names.plural, plural);
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some(format!("{plural}.spire.spiffe.io").as_str())
    );
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        columns.contains(&"Ready") && columns.contains(&"Age"),
        "{columns:?}"
    );
    let status = property(version_schema(crd), "status");
    let conditions = property(status, "conditions");
    assert_eq!(conditions.type_.as_deref(), Some("array"));
    assert_eq!(conditions.x_kubernetes_list_type.as_deref(), Some("map"));
    assert_eq!(
        property(status, "observedGeneration").type_.as_deref(),
        Some("integer")
    );
}

#[test]
fn cluster_spiffe_id_has_every_scm_field() {
    let crd = ClusterSPIFFEID::crd();
    common_checks(&crd, "ClusterSPIFFEID", "clusterspiffeids");
    let spec = property(version_schema(&crd), "spec");
    expect_fields(
        spec,
        &[
            ("spiffeIDTemplate", "string"),
            ("ttl", "string"),
            ("jwtTtl", "string"),
            ("dnsNameTemplates", "array"),
            ("workloadSelectorTemplates", "array"),
            ("federatesWith", "array"),
            ("namespaceSelector", "object"),
            ("podSelector", "object"),
            ("admin", "boolean"),
            ("downstream", "boolean"),
            ("autoPopulateDNSNames", "boolean"),
            ("className", "string"),
            ("fallback", "boolean"),
            ("hint", "string"),
        ],
    );
    assert_eq!(required(spec), vec!["spiffeIDTemplate"]);
    for selector in ["namespaceSelector", "podSelector"] {
        let s = property(spec, selector);
        assert!(s.properties.as_ref().unwrap().contains_key("matchLabels"));
        assert!(
            s.properties
                .as_ref()
                .unwrap()
                .contains_key("matchExpressions")
        );
    }
    assert!(!rule_messages(property(spec, "federatesWith")).is_empty());
    assert!(!rule_messages(property(spec, "spiffeIDTemplate")).is_empty());

    let stats = property(property(version_schema(&crd), "status"), "stats");
    expect_fields(
        stats,
        &[
            ("namespacesSelected", "integer"),
            ("namespacesIgnored", "integer"),
            ("podsSelected", "integer"),
            ("podEntryRenderFailures", "integer"),
            ("entriesMasked", "integer"),
            ("entriesToSet", "integer"),
            ("entryFailures", "integer"),
        ],
    );
}

#[test]
fn cluster_static_entry_has_every_scm_field() {
    let crd = ClusterStaticEntry::crd();
    common_checks(&crd, "ClusterStaticEntry", "clusterstaticentries");
    let spec = property(version_schema(&crd), "spec");
    expect_fields(
        spec,
        &[
            ("spiffeID", "string"),
            ("parentID", "string"),
            ("selectors", "array"),
            ("federatesWith", "array"),
            ("x509SVIDTTL", "string"),
            ("jwtSVIDTTL", "string"),
            ("dnsNames", "array"),
            ("hint", "string"),
            ("admin", "boolean"),
            ("downstream", "boolean"),
            ("storeSVID", "boolean"),
            ("className", "string"),
        ],
    );
    assert_eq!(required(spec), vec!["parentID", "selectors", "spiffeID"]);
    assert!(!rule_messages(property(spec, "selectors")).is_empty());
    let status = property(version_schema(&crd), "status");
    for flag in ["rendered", "masked", "set"] {
        assert_eq!(property(status, flag).type_.as_deref(), Some("boolean"));
    }
    assert_eq!(
        required(status),
        vec!["masked", "rendered", "set"],
        "SCM's status booleans are required"
    );
}

#[test]
fn cluster_federated_trust_domain_has_every_scm_field() {
    let crd = ClusterFederatedTrustDomain::crd();
    common_checks(
        &crd,
        "ClusterFederatedTrustDomain",
        "clusterfederatedtrustdomains",
    );
    let columns: Vec<_> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert!(columns.contains(&("Trust Domain", ".spec.trustDomain")));
    assert!(columns.contains(&("Endpoint URL", ".spec.bundleEndpointURL")));
    let spec = property(version_schema(&crd), "spec");
    expect_fields(
        spec,
        &[
            ("trustDomain", "string"),
            ("bundleEndpointURL", "string"),
            ("bundleEndpointProfile", "object"),
            ("trustDomainBundle", "string"),
            ("className", "string"),
        ],
    );
    assert_eq!(
        required(spec),
        vec!["bundleEndpointProfile", "bundleEndpointURL", "trustDomain"]
    );
    assert_eq!(
        property(spec, "trustDomain").pattern.as_deref(),
        Some("[a-z0-9._-]{1,255}"),
        "SCM's pattern, verbatim"
    );
    let profile = property(spec, "bundleEndpointProfile");
    expect_fields(
        profile,
        &[("type", "string"), ("endpointSPIFFEID", "string")],
    );
    assert_eq!(required(profile), vec!["type"]);
    let kinds: Vec<_> = property(profile, "type")
        .enum_
        .iter()
        .flatten()
        .map(|v| v.0.clone())
        .collect();
    assert_eq!(
        kinds,
        vec![Value::from("https_web"), Value::from("https_spiffe")]
    );
    assert_eq!(rule_messages(profile).len(), 2);
    assert_eq!(rule_messages(property(spec, "bundleEndpointURL")).len(), 3);
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Deserializes into our type and back; the JSON must be what the manifest said.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    path: &Path,
    manifest: &Value,
) -> T {
    let typed: T = serde_json::from_value(manifest.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, manifest, "{} does not round-trip", path.display());
    typed
}

#[test]
fn scm_sample_manifests_round_trip_and_render() {
    let files = yaml_files(&fixtures_dir());
    assert!(files.len() >= 9, "{files:?}");
    for path in files {
        let manifest = load(&path);
        match manifest["kind"].as_str() {
            Some("ClusterSPIFFEID") => {
                let resource: ClusterSPIFFEID = round_trip(&path, &manifest);
                let view = cluster_spiffe_id_view(&resource)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                CompiledSpec::compile(&view).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            Some("ClusterStaticEntry") => {
                let resource: ClusterStaticEntry = round_trip(&path, &manifest);
                render_static_entry(&static_entry_view(&resource))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            Some("ClusterFederatedTrustDomain") => {
                let _: ClusterFederatedTrustDomain = round_trip(&path, &manifest);
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
}

#[test]
fn invalid_manifests_still_deserialize_so_admission_is_what_rejects_them() {
    for path in yaml_files(&fixtures_dir().join("invalid")) {
        let manifest = load(&path);
        match manifest["kind"].as_str() {
            Some("ClusterSPIFFEID") => drop(round_trip::<ClusterSPIFFEID>(&path, &manifest)),
            Some("ClusterStaticEntry") => drop(round_trip::<ClusterStaticEntry>(&path, &manifest)),
            Some("ClusterFederatedTrustDomain") => {
                drop(round_trip::<ClusterFederatedTrustDomain>(&path, &manifest))
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
}

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let files = wimsey_operator::crdgen::crd_files().unwrap();
    assert_eq!(files.len(), all_crds().len());
    for (name, yaml) in files {
        let committed = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("crds/{name}: {e} (run `make generate`)"));
        assert!(
            committed == yaml,
            "crds/{name} is stale: run `make generate`"
        );
    }
}
