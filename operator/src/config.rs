//! Operator configuration: a YAML (or JSON) file plus flags, each flag with an environment
//! fallback. A flag or its variable overrides the file; the file overrides the defaults.
//!
//! Differences from spire-controller-manager that users asked for: `ignoreNamespaces` patterns
//! are anchored (`spire` ignores `spire`, not `my-spire-apps`), and durations are written as
//! `1h`, never as integer nanoseconds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::RegexSet;
use serde::{Deserialize, Serialize};
use wimsey_core::TrustDomain;
use wimsey_core::entries::{
    DEFAULT_PARENT_ID_TEMPLATE, NamespaceFilter, RenderConfig, parse_go_duration,
};

use crate::scm_config;
use crate::spire_api::BatchLimits;

/// spire-controller-manager's default list.
pub const DEFAULT_IGNORE_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "spire-system"];
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// SPIRE Server's defaults.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(300);
/// The cluster name is one segment of node SVID IDs and parent IDs; EKS allows 100 characters.
pub const MAX_CLUSTER_NAME_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing config file: {0}")]
    Parse(String),
    #[error("{0} is required (flag, environment variable or config file)")]
    Missing(&'static str),
    #[error("invalid trustDomain {value:?}: {source}")]
    TrustDomain {
        value: String,
        source: wimsey_core::SpiffeIdError,
    },
    #[error("invalid ignoreNamespaces pattern: {0}")]
    NamespacePattern(#[from] regex::Error),
    #[error("invalid parentIDTemplate: {0}")]
    ParentIdTemplate(wimsey_core::entries::EntryError),
    #[error("invalid {field} {value:?}: {reason}")]
    Duration {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid entryIDPrefix {0:?}: use letters, digits, '-' and '_'")]
    EntryIdPrefix(String),
    #[error("invalid clusterName {value:?}: {reason}")]
    ClusterName { value: String, reason: String },
    #[error("invalid spireSync.{field} {value}: must be from 1 to {max}")]
    BatchSize {
        field: &'static str,
        value: i64,
        max: i64,
    },
    #[error(transparent)]
    ControllerManagerConfig(#[from] crate::scm_config::ScmConfigError),
}

impl ConfigError {
    pub fn label(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Parse(_) => "parse",
            ConfigError::Missing(_) => "missing",
            ConfigError::TrustDomain { .. } => "trust_domain",
            ConfigError::NamespacePattern(_) => "namespace_pattern",
            ConfigError::ParentIdTemplate(_) => "parent_id_template",
            ConfigError::Duration { .. } => "duration",
            ConfigError::EntryIdPrefix(_) => "entry_id_prefix",
            ConfigError::ClusterName { .. } => "cluster_name",
            ConfigError::BatchSize { .. } => "batch_size",
            ConfigError::ControllerManagerConfig(_) => "controller_manager_config",
        }
    }
}

/// Where entries are stored and SVIDs signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The operator is the trust domain's authority and keeps entries in memory.
    #[default]
    Embedded,
    /// A SPIRE Server is the authority; the operator keeps its registration entries (as
    /// spire-controller-manager does), over the server's admin socket.
    Spire,
}

/// Where a SPIRE Server's admin socket is unless configured (spire-controller-manager's default).
pub const DEFAULT_SPIRE_SERVER_SOCKET: &str = "/spire-server/api.sock";

/// How often the spire backend relists to repair changes made behind its back, unless configured.
pub const DEFAULT_SPIRE_DRIFT_CHECK: Duration = Duration::from_secs(600);
/// The drift check's bounds: often enough to matter, rarely enough not to load the server.
const SPIRE_DRIFT_CHECK_RANGE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(86_400));

/// The largest batches and page the spire backend may be configured to send or ask for: every
/// call must stay well under gRPC's 4 MiB message limit (entries can carry many selectors and
/// DNS names), and each batch is one datastore transaction in SPIRE.
const MAX_WRITE_BATCH: i64 = 500;
const MAX_DELETE_BATCH: i64 = 1000;
const MAX_LIST_PAGE: i64 = 2000;

/// The spire backend's sync (`spireSync` in the config file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpireSyncConfig {
    /// A full listing this often repairs changes made behind the sync's back (default 10m).
    pub drift_check_interval: Option<String>,
    /// Entries or relationships per create call (default 50).
    pub create_batch_size: Option<i64>,
    /// Per update call (default 50).
    pub update_batch_size: Option<i64>,
    /// Per delete call (default 200).
    pub delete_batch_size: Option<i64>,
    /// Entries per ListEntries page (default 1000).
    pub list_page_size: Option<i64>,
}

/// The config file. Every key is optional here; [`Settings::resolve`] says what is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    pub cluster_name: Option<String>,
    pub cluster_domain: Option<String>,
    pub class_name: Option<String>,
    pub watch_classless: Option<bool>,
    pub ignore_namespaces: Option<Vec<String>>,
    #[serde(rename = "parentIDTemplate")]
    pub parent_id_template: Option<String>,
    #[serde(rename = "entryIDPrefix")]
    pub entry_id_prefix: Option<String>,
    #[serde(rename = "defaultX509SVIDTTL")]
    pub default_x509_svid_ttl: Option<String>,
    #[serde(rename = "defaultJWTSVIDTTL")]
    pub default_jwt_svid_ttl: Option<String>,
    pub backend: Option<Backend>,
    /// The SPIRE Server's admin socket (backend `spire`).
    pub spire_server_socket_path: Option<String>,
    /// Batch sizes and drift check of the `spire` backend.
    pub spire_sync: Option<SpireSyncConfig>,
    /// What the file set that has no effect here (a spire-controller-manager config's keys),
    /// logged at start.
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl FileConfig {
    /// Parses YAML (JSON is YAML too): ours, or spire-controller-manager's
    /// `ControllerManagerConfig` unchanged (see [`crate::scm_config`]).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let parse_error = |e: serde_saphyr::Error| ConfigError::Parse(e.to_string());
        // Looked at as a generic document only to tell the two kinds apart; ours is then parsed
        // straight into its type, so its scalars and errors (with line numbers) stay as they were.
        let document: serde_json::Value = serde_saphyr::from_str(text).map_err(parse_error)?;
        if scm_config::is_controller_manager_config(&document) {
            let mapped = scm_config::map(document)?;
            return Ok(Self {
                notes: mapped.notes,
                ..mapped.config
            });
        }
        serde_saphyr::from_str(text).map_err(parse_error)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }
}

/// The flags; each has an environment fallback and overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFlags {
    /// Config file (YAML or JSON).
    #[arg(long, env = "WIMSEY_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// This trust domain's name, e.g. example.org.
    #[arg(long, env = "WIMSEY_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// The cluster's name, used in the default parent ID.
    #[arg(long, env = "WIMSEY_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// The cluster DNS domain (.ClusterDomain), default cluster.local.
    #[arg(long, env = "WIMSEY_CLUSTER_DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Handle only resources with this className.
    #[arg(long, env = "WIMSEY_CLASS_NAME")]
    pub class_name: Option<String>,
    /// With --class-name, also handle resources without a className.
    #[arg(long, env = "WIMSEY_WATCH_CLASSLESS")]
    pub watch_classless: Option<bool>,
    /// Namespaces whose pods get no entries: comma-separated regexes, each matching the whole name.
    #[arg(long, env = "WIMSEY_IGNORE_NAMESPACES", value_delimiter = ',')]
    pub ignore_namespaces: Option<Vec<String>>,
    /// Template of the entries' parent ID.
    #[arg(long, env = "WIMSEY_PARENT_ID_TEMPLATE")]
    pub parent_id_template: Option<String>,
    /// Prefix of the entry IDs this instance owns ("." is appended).
    #[arg(long, env = "WIMSEY_ENTRY_ID_PREFIX")]
    pub entry_id_prefix: Option<String>,
    /// X509-SVID TTL when a resource sets none, e.g. 1h.
    #[arg(long, env = "WIMSEY_DEFAULT_X509_SVID_TTL")]
    pub default_x509_svid_ttl: Option<String>,
    /// JWT-SVID TTL when a resource sets none, e.g. 5m.
    #[arg(long, env = "WIMSEY_DEFAULT_JWT_SVID_TTL")]
    pub default_jwt_svid_ttl: Option<String>,
    /// Where entries live.
    #[arg(long, env = "WIMSEY_BACKEND", value_enum)]
    pub backend: Option<Backend>,
    /// The SPIRE Server's admin socket, with --backend spire (default /spire-server/api.sock).
    #[arg(long, env = "WIMSEY_SPIRE_SERVER_SOCKET")]
    pub spire_server_socket: Option<String>,
}

/// `ignoreNamespaces`, compiled; every pattern must match the whole namespace name.
#[derive(Debug, Clone)]
pub struct IgnoreNamespaces {
    patterns: Vec<String>,
    set: RegexSet,
}

impl IgnoreNamespaces {
    pub fn new(patterns: &[String]) -> Result<Self, ConfigError> {
        let anchored = patterns.iter().map(|p| format!("^(?:{p})$"));
        Ok(Self {
            patterns: patterns.to_vec(),
            set: RegexSet::new(anchored)?,
        })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl NamespaceFilter for IgnoreNamespaces {
    fn is_ignored(&self, namespace: &str) -> bool {
        self.set.is_match(namespace)
    }
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub trust_domain: TrustDomain,
    pub cluster_name: String,
    pub cluster_domain: String,
    pub class_name: String,
    pub watch_classless: bool,
    pub ignore_namespaces: IgnoreNamespaces,
    pub parent_id_template: String,
    /// Empty, or ending in ".".
    pub entry_id_prefix: String,
    pub default_x509_svid_ttl: Duration,
    pub default_jwt_svid_ttl: Duration,
    pub backend: Backend,
    /// The SPIRE Server's admin socket (used by the `spire` backend).
    pub spire_server_socket: std::path::PathBuf,
    /// The `spire` backend's batch sizes and page size.
    pub spire_batch_limits: BatchLimits,
    /// How often the `spire` backend relists (the drift check).
    pub spire_drift_check: Duration,
    /// Config file keys that have no effect here (see [`FileConfig::notes`]).
    pub notes: Vec<String>,
}

fn duration(
    field: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => parse_go_duration(&value).map_err(|reason| ConfigError::Duration {
            field,
            value,
            reason,
        }),
    }
}

/// The batch sizes `config` sets, each within its bound, else the defaults.
fn batch_limits(config: &SpireSyncConfig) -> Result<BatchLimits, ConfigError> {
    let size = |field: &'static str, value: Option<i64>, max: i64, default: usize| match value {
        None => Ok(default),
        Some(value) if (1..=max).contains(&value) => {
            usize::try_from(value).map_err(|_| ConfigError::BatchSize { field, value, max })
        }
        Some(value) => Err(ConfigError::BatchSize { field, value, max }),
    };
    let defaults = BatchLimits::default();
    let page = size(
        "listPageSize",
        config.list_page_size,
        MAX_LIST_PAGE,
        usize::try_from(defaults.page).unwrap_or(1000),
    )?;
    Ok(BatchLimits {
        create: size(
            "createBatchSize",
            config.create_batch_size,
            MAX_WRITE_BATCH,
            defaults.create,
        )?,
        update: size(
            "updateBatchSize",
            config.update_batch_size,
            MAX_WRITE_BATCH,
            defaults.update,
        )?,
        delete: size(
            "deleteBatchSize",
            config.delete_batch_size,
            MAX_DELETE_BATCH,
            defaults.delete,
        )?,
        page: i32::try_from(page).unwrap_or(defaults.page),
    })
}

fn drift_check(value: Option<String>) -> Result<Duration, ConfigError> {
    let field = "spireSync.driftCheckInterval";
    let interval = duration(field, value.clone(), DEFAULT_SPIRE_DRIFT_CHECK)?;
    let (min, max) = SPIRE_DRIFT_CHECK_RANGE;
    if interval < min || interval > max {
        return Err(ConfigError::Duration {
            field,
            value: value.unwrap_or_default(),
            reason: "must be from 30s to 24h",
        });
    }
    Ok(interval)
}

impl Settings {
    /// Flags (and their variables) over the file over the defaults; then validation.
    pub fn resolve(file: FileConfig, flags: ConfigFlags) -> Result<Self, ConfigError> {
        let spire_sync = file.spire_sync.clone().unwrap_or_default();
        let trust_domain = flags
            .trust_domain
            .or(file.trust_domain)
            .ok_or(ConfigError::Missing("trustDomain"))?;
        let trust_domain =
            TrustDomain::new(&trust_domain).map_err(|source| ConfigError::TrustDomain {
                value: trust_domain.clone(),
                source,
            })?;
        let cluster_name = flags
            .cluster_name
            .or(file.cluster_name)
            .filter(|name| !name.is_empty())
            .ok_or(ConfigError::Missing("clusterName"))?;
        check_cluster_name(&cluster_name)?;
        let ignore_patterns = flags
            .ignore_namespaces
            .or(file.ignore_namespaces)
            .unwrap_or_else(|| DEFAULT_IGNORE_NAMESPACES.map(String::from).to_vec());
        let parent_id_template = flags
            .parent_id_template
            .or(file.parent_id_template)
            .unwrap_or_else(|| DEFAULT_PARENT_ID_TEMPLATE.to_owned());
        let mut entry_id_prefix = flags
            .entry_id_prefix
            .or(file.entry_id_prefix)
            .unwrap_or_default();
        if !entry_id_prefix.is_empty() {
            let bare = entry_id_prefix
                .strip_suffix('.')
                .unwrap_or(&entry_id_prefix);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::EntryIdPrefix(entry_id_prefix));
            }
            entry_id_prefix = format!("{bare}.");
        }
        let settings = Self {
            trust_domain,
            cluster_name,
            cluster_domain: flags
                .cluster_domain
                .or(file.cluster_domain)
                .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_owned()),
            class_name: flags.class_name.or(file.class_name).unwrap_or_default(),
            watch_classless: flags
                .watch_classless
                .or(file.watch_classless)
                .unwrap_or(false),
            ignore_namespaces: IgnoreNamespaces::new(&ignore_patterns)?,
            parent_id_template,
            entry_id_prefix,
            default_x509_svid_ttl: duration(
                "defaultX509SVIDTTL",
                flags.default_x509_svid_ttl.or(file.default_x509_svid_ttl),
                DEFAULT_X509_SVID_TTL,
            )?,
            default_jwt_svid_ttl: duration(
                "defaultJWTSVIDTTL",
                flags.default_jwt_svid_ttl.or(file.default_jwt_svid_ttl),
                DEFAULT_JWT_SVID_TTL,
            )?,
            backend: flags.backend.or(file.backend).unwrap_or_default(),
            spire_server_socket: flags
                .spire_server_socket
                .or(file.spire_server_socket_path)
                .unwrap_or_else(|| DEFAULT_SPIRE_SERVER_SOCKET.to_owned())
                .into(),
            spire_batch_limits: batch_limits(&spire_sync)?,
            spire_drift_check: drift_check(spire_sync.drift_check_interval.clone())?,
            notes: file.notes,
        };
        // Fail at startup, not at the first pod.
        settings.render_config()?;
        Ok(settings)
    }

    /// Reads the file named by `--config` (if any) and resolves. When neither names a
    /// clusterDomain, it is detected from `/etc/resolv.conf` (see
    /// [`cluster_domain_from_resolv_conf`]), falling back to `cluster.local`.
    pub fn from_flags(mut flags: ConfigFlags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        if flags.cluster_domain.is_none() && file.cluster_domain.is_none() {
            flags.cluster_domain = std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|text| cluster_domain_from_resolv_conf(&text));
        }
        Self::resolve(file, flags)
    }

    /// What entry rendering needs.
    pub fn render_config(&self) -> Result<RenderConfig, ConfigError> {
        Ok(RenderConfig::new(
            self.trust_domain.clone(),
            &self.cluster_name,
            &self.cluster_domain,
        )
        .with_parent_id_template(&self.parent_id_template)
        .map_err(ConfigError::ParentIdTemplate)?
        .with_class(&self.class_name, self.watch_classless)
        .with_ignored_namespaces(Arc::new(self.ignore_namespaces.clone())))
    }
}

/// The cluster name goes into SPIFFE IDs as one path segment (`.../spire/agent/wimsey/<cluster>/
/// <node>`), so it must be one: letters, digits, `.`, `-`, `_`, not `.` or `..`, and short.
pub fn check_cluster_name(name: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::ClusterName {
        value: name.to_owned(),
        reason,
    };
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return Err(invalid(format!(
            "{} bytes long, at most {MAX_CLUSTER_NAME_LEN}",
            name.len()
        )));
    }
    wimsey_core::spiffe_id::validate_path_segment(name).map_err(|error| {
        invalid(format!(
            "not a valid SPIFFE ID path segment ({error}); use letters, digits, '.', '-' and '_'"
        ))
    })
}

/// The cluster domain as a pod's resolver sees it: kubelet writes a `search` line
/// `<ns>.svc.<domain> svc.<domain> <domain>`, so the first search domain starting with `svc.`
/// gives it. spire-controller-manager resolves the CNAME of `kubernetes.default.svc` instead,
/// which needs cluster DNS.
pub fn cluster_domain_from_resolv_conf(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("search"))
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .flat_map(str::split_whitespace)
        .find_map(|domain| domain.trim_end_matches('.').strip_prefix("svc."))
        .filter(|domain| !domain.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_domain_from_the_resolver_search_line() {
        let kubelet = "search shop.svc.corp.example svc.corp.example corp.example\nnameserver 10.96.0.10\noptions ndots:5\n";
        assert_eq!(
            cluster_domain_from_resolv_conf(kubelet).as_deref(),
            Some("corp.example")
        );
        assert_eq!(
            cluster_domain_from_resolv_conf("search svc.cluster.local.\n").as_deref(),
            Some("cluster.local")
        );
        assert_eq!(
            cluster_domain_from_resolv_conf("nameserver 1.1.1.1\nsearch example.com\n"),
            None
        );
        assert_eq!(cluster_domain_from_resolv_conf("searchsvc.x\n"), None);
        assert_eq!(cluster_domain_from_resolv_conf(""), None);
    }

    fn flags() -> ConfigFlags {
        ConfigFlags {
            trust_domain: Some("example.org".into()),
            cluster_name: Some("prod".into()),
            ..ConfigFlags::default()
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(FileConfig::default(), flags()).unwrap();
        assert_eq!(s.trust_domain.name(), "example.org");
        assert_eq!(s.cluster_name, "prod");
        assert_eq!(s.cluster_domain, "cluster.local");
        assert_eq!(s.class_name, "");
        assert!(!s.watch_classless);
        assert_eq!(s.ignore_namespaces.patterns(), DEFAULT_IGNORE_NAMESPACES);
        assert_eq!(s.parent_id_template, DEFAULT_PARENT_ID_TEMPLATE);
        assert_eq!(s.entry_id_prefix, "");
        assert_eq!(s.default_x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(s.default_jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(s.backend, Backend::Embedded);
    }

    #[test]
    fn file_keys_and_flag_precedence() {
        let file = FileConfig::parse(
            "trustDomain: file.org\nclusterName: file\nclusterDomain: corp.local\nclassName: a\nwatchClassless: true\n\
             ignoreNamespaces: [kube-.*, tools]\nparentIDTemplate: 'spiffe://{{ .TrustDomain }}/node/{{ .NodeMeta.Name }}'\n\
             entryIDPrefix: prod\ndefaultX509SVIDTTL: 2h\ndefaultJWTSVIDTTL: 10m\nbackend: embedded\n",
        )
        .unwrap();
        let s = Settings::resolve(file.clone(), ConfigFlags::default()).unwrap();
        assert_eq!(s.trust_domain.name(), "file.org");
        assert_eq!(s.cluster_domain, "corp.local");
        assert_eq!(s.class_name, "a");
        assert!(s.watch_classless);
        assert_eq!(s.entry_id_prefix, "prod.");
        assert_eq!(s.default_x509_svid_ttl, Duration::from_secs(7200));
        assert_eq!(s.default_jwt_svid_ttl, Duration::from_secs(600));
        let s = Settings::resolve(file, flags()).unwrap();
        assert_eq!(s.trust_domain.name(), "example.org", "flags win");
        assert_eq!(s.cluster_name, "prod");
        assert_eq!(s.class_name, "a", "the file fills what flags leave out");
    }

    #[test]
    fn the_spire_sync_settings_have_defaults_and_bounds() {
        let s = Settings::resolve(FileConfig::default(), flags()).unwrap();
        assert_eq!(s.spire_batch_limits, BatchLimits::default());
        assert_eq!(s.spire_drift_check, DEFAULT_SPIRE_DRIFT_CHECK);
        let file = FileConfig::parse(
            "spireSync:\n  driftCheckInterval: 2m\n  createBatchSize: 100\n  updateBatchSize: 20\n  deleteBatchSize: 500\n  listPageSize: 200\n",
        )
        .unwrap();
        let s = Settings::resolve(file, flags()).unwrap();
        assert_eq!(
            s.spire_batch_limits,
            BatchLimits {
                create: 100,
                update: 20,
                delete: 500,
                page: 200
            }
        );
        assert_eq!(s.spire_drift_check, Duration::from_secs(120));
        for (yaml, label, says) in [
            (
                "createBatchSize: 0",
                "batch_size",
                "spireSync.createBatchSize 0",
            ),
            ("updateBatchSize: 501", "batch_size", "from 1 to 500"),
            ("deleteBatchSize: -1", "batch_size", "deleteBatchSize -1"),
            ("listPageSize: 5000", "batch_size", "from 1 to 2000"),
            ("driftCheckInterval: 5s", "duration", "from 30s to 24h"),
            ("driftCheckInterval: soon", "duration", "driftCheckInterval"),
        ] {
            let file = FileConfig::parse(&format!("spireSync:\n  {yaml}\n")).unwrap();
            let err = Settings::resolve(file, flags()).unwrap_err();
            assert_eq!(err.label(), label, "{yaml}");
            assert!(err.to_string().contains(says), "{yaml}: {err}");
        }
        // as the chart renders it (config/charts/wimsey/ci/spire-backend.yaml)
        let chart = "backend: spire\nignoreNamespaces:\n  - \"kube-system\"\nspireServerSocketPath: \"/run/spire/server-sockets/api.sock\"\nspireSync:\n  driftCheckInterval: \"5m\"\n  createBatchSize: 100\n";
        let s = Settings::resolve(FileConfig::parse(chart).unwrap(), flags()).unwrap();
        assert_eq!(s.backend, Backend::Spire);
        assert_eq!(
            (s.spire_batch_limits.create, s.spire_drift_check),
            (100, Duration::from_secs(300))
        );
        let err = FileConfig::parse("spireSync:\n  batchSize: 10\n").unwrap_err();
        assert_eq!(err.label(), "parse", "unknown keys are refused");
    }

    #[test]
    fn json_files_parse_too() {
        let file =
            FileConfig::parse(r#"{"trustDomain": "example.org", "clusterName": "c"}"#).unwrap();
        assert_eq!(file.trust_domain.as_deref(), Some("example.org"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = FileConfig::parse("trustDomian: example.org\n").unwrap_err();
        assert_eq!(err.label(), "parse");
    }

    #[test]
    fn namespace_patterns_are_anchored() {
        let ignore = IgnoreNamespaces::new(&["spire".into(), "openshift-.*".into()]).unwrap();
        assert!(ignore.is_ignored("spire"));
        assert!(
            !ignore.is_ignored("my-spire-apps"),
            "SCM would ignore this one"
        );
        assert!(ignore.is_ignored("openshift-monitoring"));
        assert!(!ignore.is_ignored("not-openshift-x"));
        // alternation stays inside the anchors
        let alt = IgnoreNamespaces::new(&["a|b".into()]).unwrap();
        assert!(alt.is_ignored("a") && alt.is_ignored("b") && !alt.is_ignored("ab"));
    }

    #[test]
    fn errors() {
        let cases: Vec<(ConfigFlags, &str)> = vec![
            (
                ConfigFlags {
                    trust_domain: None,
                    ..flags()
                },
                "missing",
            ),
            (
                ConfigFlags {
                    cluster_name: None,
                    ..flags()
                },
                "missing",
            ),
            (
                ConfigFlags {
                    cluster_name: Some(String::new()),
                    ..flags()
                },
                "missing",
            ),
            (
                ConfigFlags {
                    trust_domain: Some("Example.org".into()),
                    ..flags()
                },
                "trust_domain",
            ),
            (
                ConfigFlags {
                    ignore_namespaces: Some(vec!["(".into()]),
                    ..flags()
                },
                "namespace_pattern",
            ),
            (
                ConfigFlags {
                    parent_id_template: Some("{{ .X".into()),
                    ..flags()
                },
                "parent_id_template",
            ),
            (
                ConfigFlags {
                    default_x509_svid_ttl: Some("3600".into()),
                    ..flags()
                },
                "duration",
            ),
            (
                ConfigFlags {
                    default_jwt_svid_ttl: Some("1 day".into()),
                    ..flags()
                },
                "duration",
            ),
            (
                ConfigFlags {
                    entry_id_prefix: Some("a.b".into()),
                    ..flags()
                },
                "entry_id_prefix",
            ),
        ];
        for (flags, label) in cases {
            let err = Settings::resolve(FileConfig::default(), flags).unwrap_err();
            assert_eq!(err.label(), label, "{err}");
        }
    }

    #[test]
    fn cluster_name_is_one_spiffe_path_segment() {
        for good in [
            "prod",
            "eu-west-1.prod",
            "kind_cluster",
            &"c".repeat(MAX_CLUSTER_NAME_LEN),
        ] {
            assert!(check_cluster_name(good).is_ok(), "{good}");
        }
        for bad in [
            "a/b",
            "..",
            ".",
            "my cluster",
            "prod%2F",
            "prod?x",
            "clüster",
            &"c".repeat(MAX_CLUSTER_NAME_LEN + 1),
        ] {
            let err = Settings::resolve(
                FileConfig::default(),
                ConfigFlags {
                    cluster_name: Some(bad.to_owned()),
                    ..flags()
                },
            )
            .unwrap_err();
            assert_eq!(err.label(), "cluster_name", "{bad}: {err}");
            assert!(err.to_string().contains("clusterName"), "{err}");
        }
        let err = check_cluster_name("a/b").unwrap_err().to_string();
        assert!(
            err.contains("\"a/b\"") && err.contains("path segment"),
            "{err}"
        );
    }

    #[test]
    fn render_config_carries_the_settings() {
        let s = Settings::resolve(
            FileConfig::default(),
            ConfigFlags {
                class_name: Some("x".into()),
                ignore_namespaces: Some(vec!["tools".into()]),
                ..flags()
            },
        )
        .unwrap();
        let rc = s.render_config().unwrap();
        assert_eq!(rc.trust_domain.name(), "example.org");
        assert_eq!(rc.class_name, "x");
        assert!(rc.ignored_namespaces.is_ignored("tools"));
        assert!(
            !rc.ignored_namespaces.is_ignored("kube-system"),
            "the list replaces the default"
        );
    }
}
