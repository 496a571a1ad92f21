//! wimsey-csi: the CSI node plugin binary. Serves CSI Identity+Node on `--csi-socket`, registers
//! with kubelet through `--registration-dir`, and serves every recorded volume again at start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wimsey_core::TrustDomain;
use wimsey_csi::csi::no_identity::NoIdentitySource;
use wimsey_csi::csi::{
    DRIVER_NAME, ManagerConfig, RegistrationService, VolumeManager, registration_socket, serve_csi,
    serve_registration,
};
use wimsey_csi::identity_source::IdentitySource;
use wimsey_csi::node_client::{
    DEFAULT_BUNDLE_PATH, DEFAULT_TOKEN_PATH, NodeApiTransport, NodeClient, NodeClientConfig,
};
use wimsey_csi::workload_api::{WorkloadApiLimits, bind_unix_socket};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Plain,
}

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
    /// tmpfs size of a `mode: files` volume.
    #[arg(long, env = "WIMSEY_FILES_TMPFS_SIZE", default_value = "1m")]
    files_tmpfs_size: String,
    #[arg(long, env = "WIMSEY_LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
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
    #[command(flatten)]
    workload_api: WorkloadApiLimits,
    #[command(flatten)]
    node_api_transport: NodeApiTransport,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let Some(addr) = args.node_api_addr.clone() else {
        warn!(
            "no --node-api-addr: workload-api and files volumes get no identity; spire-agent volumes work"
        );
        return run_with_source(Arc::new(NoIdentitySource::default()), args).await;
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
    config.transport = args.node_api_transport.clone();
    let client = NodeClient::new(config).context("starting the node API client")?;
    info!(node_api = %addr, "identities from the operator's node API");
    run_with_source(Arc::new(client), args).await
}

async fn run_with_source<S: IdentitySource>(source: Arc<S>, args: Args) -> anyhow::Result<()> {
    let csi_socket = PathBuf::from(
        args.csi_socket
            .strip_prefix("unix://")
            .unwrap_or(&args.csi_socket),
    );
    let manager = Arc::new(
        VolumeManager::new(
            source,
            ManagerConfig {
                state_dir: args.state_dir.clone(),
                spire_agent_socket_dir: args.spire_agent_socket_dir.clone(),
                files_tmpfs_size: args.files_tmpfs_size.clone(),
                workload_api: args.workload_api.clone(),
            },
        )
        .context("opening the state directory")?,
    );
    let restored = manager
        .restore()
        .await
        .context("restoring recorded volumes")?;
    info!(restored, state_dir = %args.state_dir.display(), "volumes restored");

    let shutdown = CancellationToken::new();
    let registration_failed = CancellationToken::new();
    create_parent(&csi_socket)?;
    let csi_listener = bind_unix_socket(&csi_socket, 0o600).context("binding the CSI socket")?;
    let mut csi_server = tokio::spawn(serve_csi(
        csi_listener,
        Arc::clone(&manager),
        args.node_id.clone(),
        shutdown.clone(),
    ));
    info!(driver = DRIVER_NAME, socket = %csi_socket.display(), node_id = %args.node_id, "serving CSI");

    // Registered only once the CSI socket answers: kubelet calls NodeGetInfo right away.
    let registration = if args.registration_dir.is_empty() {
        None
    } else {
        let path = registration_socket(Path::new(&args.registration_dir));
        let listener = bind_unix_socket(&path, 0o600).context("binding the registration socket")?;
        let service = RegistrationService::new(
            csi_socket.display().to_string(),
            registration_failed.clone(),
        );
        let task = tokio::spawn(serve_registration(listener, service, shutdown.clone()));
        info!(socket = %path.display(), "serving kubelet plugin registration");
        Some((path, task))
    };

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM: shutting down, mounts and records stay"); Ok(()) }
        _ = sigint.recv() => { info!("SIGINT: shutting down, mounts and records stay"); Ok(()) }
        () = registration_failed.cancelled() => Err(anyhow::anyhow!("kubelet refused the plugin registration")),
        ended = &mut csi_server => Err(match ended {
            Ok(Ok(())) => anyhow::anyhow!("the CSI server stopped"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the CSI server failed"),
            Err(e) => anyhow::Error::new(e).context("the CSI server task failed"),
        }),
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
    outcome
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}
