//! wimsey-csi: the CSI node plugin binary. Serves CSI Identity+Node on `--csi-socket`, registers
//! with kubelet through `--registration-dir`, and serves every recorded volume again at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wimsey_core::TrustDomain;
use wimsey_csi::admin::{plugin_readiness, serve_admin};
use wimsey_csi::csi::manager::DEFAULT_FILES_TMPFS_INODES;
use wimsey_csi::csi::mounts::parse_tmpfs_size;
use wimsey_csi::csi::{
    DRIVER_NAME, ManagerConfig, RegistrationService, VolumeManager, registration_socket, serve_csi,
    serve_registration,
};
use wimsey_csi::identity::{IdentitySource, NoIdentitySource};
use wimsey_csi::metrics::Metrics;
use wimsey_csi::node_client::{
    DEFAULT_BUNDLE_PATH, DEFAULT_TOKEN_PATH, NodeApiTransport, NodeClient, NodeClientConfig,
};
use wimsey_csi::socket::authority::FrontLimits;
use wimsey_csi::socket::bind_unix_socket;
use wimsey_csi::workload_api::WorkloadApiLimits;
use wimsey_runtime::{LogArgs, cancel_on_shutdown_signal, init_logging};

/// The admin address by default: 9809, in the range CSI sidecars' health ports use (9808 is the
/// livenessprobe sidecar's), on every interface of the pod (for kubelet's probes and scrapers).
const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9809";

/// The wimsey CSI node plugin.
#[derive(Debug, Parser)]
#[command(name = "wimsey-csi", version)]
struct Args {
    /// The CSI socket (a path, or unix:///path).
    #[arg(
        long,
        env = "WIMSEY_CSI_SOCKET",
        default_value = "/var/lib/kubelet/plugins/csi.wimsey.dev/csi.sock"
    )]
    csi_socket: String,
    /// kubelet's plugin registry directory; empty disables self-registration.
    #[arg(
        long,
        env = "WIMSEY_REGISTRATION_DIR",
        default_value = "/var/lib/kubelet/plugins_registry"
    )]
    registration_dir: String,
    /// This node's name, reported by NodeGetInfo.
    #[arg(long, env = "NODE_NAME")]
    node_id: String,
    /// Volume records and per-volume socket directories.
    #[arg(long, env = "WIMSEY_STATE_DIR", default_value = "/var/lib/wimsey")]
    state_dir: PathBuf,
    /// The SPIRE agent's socket directory, bind-mounted for `mode: spire-agent` volumes.
    #[arg(long, env = "WIMSEY_SPIRE_AGENT_SOCKET_DIR")]
    spire_agent_socket_dir: Option<PathBuf>,
    /// tmpfs size of a `mode: files` volume (digits with an optional k, m or g).
    #[arg(long, env = "WIMSEY_FILES_TMPFS_SIZE", default_value = "1m", value_parser = parse_tmpfs_size)]
    files_tmpfs_size: String,
    /// Inode cap of a `mode: files` volume's tmpfs.
    #[arg(long, env = "WIMSEY_FILES_TMPFS_INODES", default_value_t = DEFAULT_FILES_TMPFS_INODES,
          value_parser = clap::value_parser!(u64).range(1..))]
    files_tmpfs_inodes: u64,
    #[command(flatten)]
    log: LogArgs,
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "WIMSEY_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    admin_addr: SocketAddr,
    /// The operator's node API, `host:port` or `https://host:port`. Without it the
    /// plugin issues no identities and only `spire-agent` volumes are useful.
    #[arg(long, env = "WIMSEY_NODE_API_ADDR")]
    node_api_addr: Option<String>,
    /// The trust domain (required with --node-api-addr).
    #[arg(long, env = "WIMSEY_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// The plugin's projected service-account token for audience `wimsey-node`.
    #[arg(long, env = "WIMSEY_NODE_TOKEN_PATH", default_value = DEFAULT_TOKEN_PATH)]
    node_token_path: PathBuf,
    /// PEM trust bundle to verify the node API's certificate with.
    #[arg(long, env = "WIMSEY_BUNDLE_PATH", default_value = DEFAULT_BUNDLE_PATH)]
    bundle_path: PathBuf,
    /// Deadline of each unary node API call (Go duration).
    #[arg(long, env = "WIMSEY_NODE_API_CALL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    node_api_call_timeout: Duration,
    /// How long the node API must keep refusing a pod before its SVIDs (and files) are taken
    /// away (Go duration): longer than the operator's cache lag, shorter than an SVID.
    #[arg(long, env = "WIMSEY_DENIAL_GRACE", default_value = "30s", value_parser = parse_duration)]
    denial_grace: Duration,
    /// Pod sockets: the largest HTTP/2 header list (name + value + 32 bytes per field) a request
    /// may decode to; the connection is closed over it.
    #[arg(long, env = "WIMSEY_HTTP2_MAX_HEADER_LIST_SIZE", default_value_t = 16 * 1024,
        value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    http2_max_header_list_size: u32,
    /// Pod sockets: the most header fields in one HTTP/2 request.
    #[arg(long, env = "WIMSEY_HTTP2_MAX_HEADERS", default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(16..=4096))]
    http2_max_headers: u32,
    /// Pod sockets: the largest encoded HTTP/2 header block (HEADERS + CONTINUATION).
    #[arg(long, env = "WIMSEY_HTTP2_MAX_HEADER_BLOCK", default_value_t = 16 * 1024,
        value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    http2_max_header_block: u32,
    #[command(flatten)]
    workload_api: WorkloadApiLimits,
    #[command(flatten)]
    node_api_transport: NodeApiTransport,
}

impl Args {
    fn http2_front(&self) -> FrontLimits {
        let size = |value: u32| usize::try_from(value).unwrap_or(usize::MAX);
        FrontLimits {
            max_header_list_size: size(self.http2_max_header_list_size),
            max_headers: size(self.http2_max_headers),
            max_header_block: size(self.http2_max_header_block),
        }
    }
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    wimsey_core::entries::parse_go_duration(value).map_err(|reason| format!("{value:?}: {reason}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "wimsey-csi stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    // Every task holds this token (or a child): SIGTERM/SIGINT cancels it, and so does a fatal
    // error below.
    let shutdown = CancellationToken::new();
    cancel_on_shutdown_signal(shutdown.clone());
    let Some(addr) = args.node_api_addr.clone() else {
        warn!(
            "no --node-api-addr: workload-api and files volumes get no identity; spire-agent volumes work"
        );
        let source = Arc::new(NoIdentitySource::default());
        return run_with_source(source, None, args, metrics, shutdown).await;
    };
    let trust_domain = args
        .trust_domain
        .as_deref()
        .context("--trust-domain (WIMSEY_TRUST_DOMAIN) is required with --node-api-addr")?;
    let trust_domain = TrustDomain::new(trust_domain).context("--trust-domain")?;
    let mut config = NodeClientConfig::new(&addr, args.node_id.clone(), trust_domain)
        .context("node API client configuration")?;
    config.token_path = args.node_token_path.clone();
    config.bundle_path = args.bundle_path.clone();
    config.call_timeout = args.node_api_call_timeout;
    config.denial_grace = args.denial_grace;
    config.transport = args.node_api_transport.clone();
    let client = NodeClient::with_metrics(config, Arc::clone(&metrics))
        .context("starting the node API client")?;
    info!(node_api = %addr, "identities from the operator's node API");
    let session = client.session_state();
    let keeper = client.clone();
    let keeper_shutdown = shutdown.clone();
    tokio::spawn(async move { keeper.keep_session(keeper_shutdown).await });
    run_with_source(Arc::new(client), Some(session), args, metrics, shutdown).await
}

/// Runs the plugin until SIGTERM/SIGINT; `node_session` is the node API session's gate (none
/// without a node API).
async fn run_with_source<S: IdentitySource>(
    source: Arc<S>,
    node_session: Option<watch::Receiver<bool>>,
    args: Args,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registration_failed = CancellationToken::new();
    let registration_service = (!args.registration_dir.is_empty()).then(|| {
        RegistrationService::new(
            csi_socket_path(&args.csi_socket).display().to_string(),
            registration_failed.clone(),
        )
    });
    let ready = plugin_readiness(
        registration_service
            .as_ref()
            .map(RegistrationService::registered),
        node_session,
    );
    // The admin server comes first, so liveness passes while the volumes are restored.
    let admin_listener = wimsey_runtime::admin::bind(args.admin_addr).await?;
    info!(addr = %args.admin_addr, "admin server (/livez, /readyz, /metrics) listening");
    let admin = tokio::spawn(serve_admin(
        admin_listener,
        ready.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));

    let csi_socket = csi_socket_path(&args.csi_socket);
    let manager = Arc::new(
        VolumeManager::new(
            source,
            ManagerConfig {
                state_dir: args.state_dir.clone(),
                spire_agent_socket_dir: args.spire_agent_socket_dir.clone(),
                files_tmpfs_size: args.files_tmpfs_size.clone(),
                files_tmpfs_inodes: args.files_tmpfs_inodes,
                workload_api: WorkloadApiLimits {
                    front: args.http2_front(),
                    ..args.workload_api.clone()
                },
            },
        )
        .context("opening the state directory")?
        .with_metrics(metrics),
    );
    let restored = manager
        .restore()
        .await
        .context("restoring recorded volumes")?;
    info!(restored, state_dir = %args.state_dir.display(), "volumes restored");
    manager.record_active_volumes().await;

    create_parent(&csi_socket)?;
    let csi_listener = bind_unix_socket(&csi_socket, 0o600).context("binding the CSI socket")?;
    let mut csi_server = tokio::spawn(serve_csi(
        csi_listener,
        Arc::clone(&manager),
        args.node_id.clone(),
        ready,
        shutdown.clone(),
    ));
    info!(driver = DRIVER_NAME, socket = %csi_socket.display(), node_id = %args.node_id, "serving CSI");

    // Registered only once the CSI socket answers: kubelet calls NodeGetInfo right away.
    let registration = if let Some(service) = registration_service {
        let path = registration_socket(Path::new(&args.registration_dir));
        let listener = bind_unix_socket(&path, 0o600).context("binding the registration socket")?;
        let task = tokio::spawn(serve_registration(listener, service, shutdown.clone()));
        info!(socket = %path.display(), "serving kubelet plugin registration");
        Some((path, task))
    } else {
        None
    };

    // The CSI server also watches `shutdown`, so on SIGTERM it may end first: a clean stop
    // after the signal is the shutdown, not a failure (exit 0).
    let outcome = tokio::select! {
        biased;
        () = shutdown.cancelled() => { info!("mounts and records stay"); Ok(()) }
        () = registration_failed.cancelled() => Err(anyhow::anyhow!("kubelet refused the plugin registration")),
        ended = &mut csi_server => match ended {
            Ok(Ok(())) if shutdown.is_cancelled() => { info!("mounts and records stay"); Ok(()) }
            Ok(Ok(())) => Err(anyhow::anyhow!("the CSI server stopped")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the CSI server failed")),
            Err(e) => Err(anyhow::Error::new(e).context("the CSI server task failed")),
        },
    };
    shutdown.cancel();
    if let Some((path, task)) = registration {
        let _ = task.await;
        // Gone socket = kubelet deregisters until the next start registers again.
        let _ = std::fs::remove_file(&path);
    }
    if !csi_server.is_finished() {
        let _ = csi_server.await;
    }
    let _ = std::fs::remove_file(&csi_socket);
    manager.shutdown().await;
    match admin.await {
        Ok(Err(error)) => warn!(%error, "admin server failed"),
        Err(error) => warn!(%error, "admin server task failed"),
        Ok(Ok(())) => {}
    }
    outcome
}

/// The CSI socket's path from `--csi-socket` (a path, or `unix:///path`).
fn csi_socket_path(flag: &str) -> PathBuf {
    PathBuf::from(flag.strip_prefix("unix://").unwrap_or(flag))
}

/// Creates a socket's missing parent directories, root-only: kubelet, which connects, is root.
fn create_parent(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_log_flags_default_and_keep_their_names() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let args = Args::try_parse_from(["wimsey-csi", "--node-id", "n1"]).unwrap();
        assert_eq!(args.admin_addr, DEFAULT_ADMIN_ADDR.parse().unwrap());
        assert_eq!(args.log, LogArgs::default());
        let args = Args::try_parse_from([
            "wimsey-csi",
            "--node-id",
            "n1",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--admin-addr",
            "127.0.0.1:9000",
        ])
        .unwrap();
        assert_eq!(args.log.log_format, wimsey_runtime::LogFormat::Json);
        assert_eq!(args.log.log_level, "debug");
        assert_eq!(args.admin_addr, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn outage_settings_default_and_parse_go_durations() {
        let args = Args::try_parse_from(["wimsey-csi", "--node-id", "n1"]).unwrap();
        assert_eq!(args.node_api_call_timeout, Duration::from_secs(10));
        assert_eq!(args.denial_grace, Duration::from_secs(30));
        let args = Args::try_parse_from([
            "wimsey-csi",
            "--node-id",
            "n1",
            "--denial-grace",
            "1m30s",
            "--node-api-call-timeout",
            "500ms",
        ])
        .unwrap();
        assert_eq!(args.denial_grace, Duration::from_secs(90));
        assert_eq!(args.node_api_call_timeout, Duration::from_millis(500));
        assert!(
            Args::try_parse_from(["wimsey-csi", "--node-id", "n1", "--denial-grace", "soon"])
                .is_err()
        );
    }

    #[test]
    fn http2_front_limits_default_to_the_fronts_and_are_bounded() {
        let args = Args::try_parse_from(["wimsey-csi", "--node-id", "n"]).expect("defaults");
        assert_eq!(args.http2_front(), FrontLimits::default());
        let args = Args::try_parse_from([
            "wimsey-csi",
            "--node-id",
            "n",
            "--http2-max-header-list-size",
            "8192",
            "--http2-max-headers",
            "64",
            "--http2-max-header-block",
            "4096",
        ])
        .expect("set");
        assert_eq!(
            args.http2_front(),
            FrontLimits {
                max_header_list_size: 8192,
                max_headers: 64,
                max_header_block: 4096,
            }
        );
        for (flag, value) in [
            ("--http2-max-header-list-size", "100000000"),
            ("--http2-max-headers", "0"),
            ("--http2-max-header-block", "10"),
        ] {
            assert!(Args::try_parse_from(["wimsey-csi", "--node-id", "n", flag, value]).is_err());
        }
    }
}
