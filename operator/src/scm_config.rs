//! spire-controller-manager's `ControllerManagerConfig` file, accepted unchanged as `--config`: each
//! of its keys is mapped to ours, kept with the same behaviour, or refused with a message when
//! ignoring it would change which entries exist. What is accepted but has no effect here is
//! reported as a note, which the operator logs at start.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{Backend, DEFAULT_IGNORE_NAMESPACES, FileConfig};

pub const API_VERSION: &str = "spire.spiffe.io/v1alpha1";
pub const KIND: &str = "ControllerManagerConfig";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScmConfigError {
    #[error("ControllerManagerConfig: {0}")]
    Parse(String),
    #[error("ControllerManagerConfig: apiVersion {0:?} is not {API_VERSION}")]
    ApiVersion(String),
    #[error("ControllerManagerConfig: {key} is not supported: {reason}")]
    Unsupported {
        key: &'static str,
        reason: &'static str,
    },
    #[error("ControllerManagerConfig: ignoreNamespaces pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
}

impl ScmConfigError {
    pub fn label(&self) -> &'static str {
        match self {
            ScmConfigError::Parse(_) => "parse",
            ScmConfigError::ApiVersion(_) => "api_version",
            ScmConfigError::Unsupported { .. } => "unsupported",
            ScmConfigError::Pattern { .. } => "pattern",
        }
    }
}

/// Whether a parsed YAML document is a `ControllerManagerConfig` (by its `kind`).
pub fn is_controller_manager_config(document: &Value) -> bool {
    document.get("kind").and_then(Value::as_str) == Some(KIND)
}

/// The file's keys (spire-controller-manager v0.6.x `controllermanagerconfig_types.go`, with the
/// controller-runtime keys it inherits). Anything else is refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ControllerManagerConfig {
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    metadata: Option<Value>,
    trust_domain: Option<String>,
    cluster_name: Option<String>,
    cluster_domain: Option<String>,
    class_name: Option<String>,
    watch_classless: Option<bool>,
    ignore_namespaces: Option<Vec<String>>,
    #[serde(rename = "parentIDTemplate")]
    parent_id_template: Option<String>,
    #[serde(rename = "entryIDPrefix")]
    entry_id_prefix: Option<String>,
    #[serde(rename = "entryIDPrefixCleanup")]
    entry_id_prefix_cleanup: Option<String>,
    spire_server_socket_path: Option<String>,
    reconcile: Option<Reconcile>,
    static_manifest_path: Option<String>,
    expand_env_static_manifests: Option<bool>,
    #[serde(rename = "clusterSPIFFEIDLabelSelector")]
    cluster_spiffe_id_label_selector: Option<BTreeMap<String, String>>,
    filter_by_class_name: Option<bool>,
    cache_namespace: Option<String>,
    cache_namespaces: Option<Value>,
    // Accepted; no effect here (see `notes`).
    validating_webhook_configuration_name: Option<String>,
    gc_interval: Option<Value>,
    log_level: Option<String>,
    log_encoding: Option<String>,
    grpc: Option<Value>,
    enable_entry_render_cache: Option<bool>,
    entry_render_cache_size: Option<Value>,
    sync_period: Option<Value>,
    leader_election: Option<Value>,
    graceful_shut_down: Option<Value>,
    controller: Option<Value>,
    metrics: Option<Value>,
    health: Option<Value>,
    webhook: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Reconcile {
    #[serde(rename = "clusterSPIFFEIDs")]
    cluster_spiffe_ids: Option<bool>,
    cluster_federated_trust_domains: Option<bool>,
    cluster_static_entries: Option<bool>,
}

/// The config, and what of it has no effect here (one note per key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub config: FileConfig,
    pub notes: Vec<String>,
}

/// Maps a `ControllerManagerConfig` document to our config file.
pub fn map(document: Value) -> Result<Mapped, ScmConfigError> {
    let scm: ControllerManagerConfig =
        serde_json::from_value(document).map_err(|e| ScmConfigError::Parse(e.to_string()))?;
    if scm.api_version != API_VERSION {
        return Err(ScmConfigError::ApiVersion(scm.api_version));
    }
    refuse_what_changes_entries(&scm)?;
    // Each pattern on its own, before it is widened (wrapping could make a broken one valid).
    for pattern in scm.ignore_namespaces.iter().flatten() {
        regex::Regex::new(pattern).map_err(|e| ScmConfigError::Pattern {
            pattern: pattern.clone(),
            reason: e.to_string(),
        })?;
    }
    let mut notes = Vec::new();
    let mut note = |present: bool, key: &str, why: &str| {
        if present {
            notes.push(format!("{key}: {why}"));
        }
    };
    note(
        scm.validating_webhook_configuration_name.is_some(),
        "validatingWebhookConfigurationName",
        "no webhook: the CRDs' schema and CEL rules validate, and status shows the rest",
    );
    note(
        scm.gc_interval.is_some(),
        "gcInterval",
        "no periodic sweep: entries follow every change as it happens",
    );
    note(
        scm.log_level.is_some() || scm.log_encoding.is_some(),
        "logLevel/logEncoding",
        "use --log-level and --log-format (WIMSEY_LOG_LEVEL, WIMSEY_LOG_FORMAT)",
    );
    note(
        scm.grpc.is_some(),
        "grpc",
        "no SPIRE Server API client here",
    );
    note(
        scm.enable_entry_render_cache.is_some() || scm.entry_render_cache_size.is_some(),
        "enableEntryRenderCache/entryRenderCacheSize",
        "entries are rendered incrementally, per changed pod",
    );
    note(
        scm.expand_env_static_manifests.is_some(),
        "expandEnvStaticManifests",
        "only meaningful with staticManifestPath",
    );
    note(
        scm.filter_by_class_name.is_some(),
        "filterByClassName",
        "className already selects the resources handled",
    );
    for (present, key) in [
        (scm.sync_period.is_some(), "syncPeriod"),
        (scm.leader_election.is_some(), "leaderElection"),
        (scm.graceful_shut_down.is_some(), "gracefulShutDown"),
        (scm.controller.is_some(), "controller"),
        (scm.metrics.is_some(), "metrics"),
        (scm.health.is_some(), "health"),
        (scm.webhook.is_some(), "webhook"),
    ] {
        note(
            present,
            key,
            "a controller-runtime setting; wimsey's own flags set leader election (a Lease), /metrics and the probes",
        );
    }
    let config = FileConfig {
        trust_domain: scm.trust_domain,
        cluster_name: scm.cluster_name,
        cluster_domain: scm.cluster_domain,
        class_name: scm.class_name,
        watch_classless: scm.watch_classless,
        ignore_namespaces: Some(
            scm.ignore_namespaces
                .unwrap_or_else(|| DEFAULT_IGNORE_NAMESPACES.map(String::from).to_vec())
                .iter()
                .map(|p| unanchored(p))
                .collect(),
        ),
        parent_id_template: scm.parent_id_template,
        entry_id_prefix: scm.entry_id_prefix,
        // Its entries live in a SPIRE Server: wimsey drives that server instead.
        backend: Some(Backend::Spire),
        spire_server_socket_path: scm.spire_server_socket_path,
        ..FileConfig::default()
    };
    Ok(Mapped { config, notes })
}

/// spire-controller-manager matches `ignoreNamespaces` anywhere in the name (`spire` also ignores
/// `my-spire-apps`); ours match the whole name, so its patterns are widened to keep exactly its
/// behaviour and ignore the same namespaces after a migration.
pub fn unanchored(pattern: &str) -> String {
    format!(".*(?:{pattern}).*")
}

fn refuse_what_changes_entries(scm: &ControllerManagerConfig) -> Result<(), ScmConfigError> {
    let unsupported = |key, reason| Err(ScmConfigError::Unsupported { key, reason });
    if let Some(reconcile) = &scm.reconcile {
        // As in spire-controller-manager: a `reconcile` block turns off what it does not name.
        let all = [
            reconcile.cluster_spiffe_ids,
            reconcile.cluster_federated_trust_domains,
            reconcile.cluster_static_entries,
        ];
        if all.iter().any(|on| *on != Some(true)) {
            return unsupported(
                "reconcile",
                "wimsey reconciles all three kinds; remove the block or set clusterSPIFFEIDs, clusterFederatedTrustDomains and clusterStaticEntries to true",
            );
        }
    }
    if scm.static_manifest_path.is_some() {
        return unsupported(
            "staticManifestPath",
            "static mode (manifests from files instead of the API server) is not available",
        );
    }
    if scm.entry_id_prefix_cleanup.is_some() {
        return unsupported(
            "entryIDPrefixCleanup",
            "a one-off cleanup of another prefix's entries; delete those with spire-server entry delete, then remove it",
        );
    }
    if scm.cluster_spiffe_id_label_selector.is_some() {
        return unsupported(
            "clusterSPIFFEIDLabelSelector",
            "every ClusterSPIFFEID of the className is handled; use className to split controllers",
        );
    }
    if scm.cache_namespace.is_some() || scm.cache_namespaces.is_some() {
        return unsupported(
            "cacheNamespace(s)",
            "pods of every namespace are watched; use ignoreNamespaces or namespaceSelector",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Value {
        serde_saphyr::from_str(text).unwrap()
    }

    /// What spire-controller-manager's Helm chart (spiffe/helm-charts-hardened) writes.
    const HELM_CHART_CONFIG: &str = r#"
apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metadata:
  name: spire-controller-manager
metrics:
  bindAddress: 0.0.0.0:8082
health:
  healthProbeBindAddress: 0.0.0.0:8083
leaderElection:
  leaderElect: true
  resourceName: 5b8cb4e9.spiffe.io
  resourceNamespace: spire-server
validatingWebhookConfigurationName: spire-server-spire-controller-manager-webhook
entryIDPrefix: example
clusterName: example-cluster
trustDomain: example.org
ignoreNamespaces:
  - kube-system
  - kube-public
  - local-path-storage
spireServerSocketPath: "/tmp/spire-server/private/api.sock"
className: "spire-server-spire"
watchClassless: true
parentIDTemplate: "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}"
reconcile:
  clusterSPIFFEIDs: true
  clusterFederatedTrustDomains: true
  clusterStaticEntries: true
gcInterval: 10000000000
"#;

    #[test]
    fn the_helm_charts_config_maps_key_by_key() {
        let document = parse(HELM_CHART_CONFIG);
        assert!(is_controller_manager_config(&document));
        let mapped = map(document).unwrap();
        let c = &mapped.config;
        assert_eq!(c.trust_domain.as_deref(), Some("example.org"));
        assert_eq!(c.cluster_name.as_deref(), Some("example-cluster"));
        assert_eq!(c.class_name.as_deref(), Some("spire-server-spire"));
        assert_eq!(c.watch_classless, Some(true));
        assert_eq!(c.entry_id_prefix.as_deref(), Some("example"));
        assert!(
            c.parent_id_template
                .as_deref()
                .unwrap()
                .ends_with("/{{ .NodeMeta.UID }}")
        );
        assert_eq!(
            c.ignore_namespaces.as_deref().unwrap()[2],
            ".*(?:local-path-storage).*"
        );
        let noted: Vec<&str> = mapped
            .notes
            .iter()
            .map(|n| n.split(':').next().unwrap())
            .collect();
        assert_eq!(c.backend, Some(Backend::Spire));
        assert_eq!(
            c.spire_server_socket_path.as_deref(),
            Some("/tmp/spire-server/private/api.sock")
        );
        for key in [
            "validatingWebhookConfigurationName",
            "gcInterval",
            "leaderElection",
            "metrics",
            "health",
        ] {
            assert!(noted.contains(&key), "{key} not noted: {noted:?}");
        }
    }

    #[test]
    fn the_operator_starts_from_it_as_its_config_file() {
        let file = FileConfig::parse(HELM_CHART_CONFIG).unwrap();
        assert!(!file.notes.is_empty());
        let settings =
            crate::config::Settings::resolve(file, crate::config::ConfigFlags::default()).unwrap();
        assert_eq!(settings.trust_domain.name(), "example.org");
        assert_eq!(settings.entry_id_prefix, "example.");
        assert_eq!(settings.class_name, "spire-server-spire");
    }

    #[test]
    fn its_ignore_patterns_keep_their_unanchored_meaning() {
        use wimsey_core::entries::NamespaceFilter;

        let patterns = vec![unanchored("spire")];
        let ignore = crate::config::IgnoreNamespaces::new(&patterns).unwrap();
        assert!(ignore.is_ignored("spire"));
        assert!(ignore.is_ignored("my-spire-apps"));
        assert!(!ignore.is_ignored("payments"));
    }

    #[test]
    fn what_would_change_entries_is_refused_by_name() {
        let base = "apiVersion: spire.spiffe.io/v1alpha1\nkind: ControllerManagerConfig\ntrustDomain: example.org\n";
        for (extra, key) in [
            ("reconcile:\n  clusterSPIFFEIDs: true\n", "reconcile"),
            ("staticManifestPath: /manifests\n", "staticManifestPath"),
            ("entryIDPrefixCleanup: \"\"\n", "entryIDPrefixCleanup"),
            (
                "clusterSPIFFEIDLabelSelector: {team: a}\n",
                "clusterSPIFFEIDLabelSelector",
            ),
            ("cacheNamespaces: {a: {}}\n", "cacheNamespace(s)"),
        ] {
            let error = map(parse(&format!("{base}{extra}"))).unwrap_err();
            assert!(
                matches!(&error, ScmConfigError::Unsupported { key: k, .. } if *k == key),
                "{extra}: {error}"
            );
            assert!(error.to_string().contains(key), "{error}");
        }
        let error = map(parse(&format!("{base}ignoreNamespaces: [\"a)|(b\"]\n"))).unwrap_err();
        assert_eq!(error.label(), "pattern");
        // without the key: its own defaults, with its own (unanchored) meaning
        let mapped = map(parse(base)).unwrap();
        assert_eq!(
            mapped.config.ignore_namespaces.unwrap(),
            DEFAULT_IGNORE_NAMESPACES.map(unanchored)
        );
        let error = map(parse(&format!("{base}trustDomian: typo.org\n"))).unwrap_err();
        assert!(error.to_string().contains("trustDomian"), "{error}");
        let error = map(parse(
            "apiVersion: spire.spiffe.io/v1beta9\nkind: ControllerManagerConfig\n",
        ))
        .unwrap_err();
        assert_eq!(error.label(), "api_version");
    }
}
