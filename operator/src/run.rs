//! `wimsey-operator run`: the reconciler, leader election, the status writer and the admin
//! server in one process, stopped together on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use kube::Client;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, Metrics};
use crate::authority::{AuthorityArgs, SigningAuthority};
use crate::config::{ConfigFlags, Settings};
use crate::leader::{LeaseSettings, run_leader_election};
use crate::nodeapi::{self, NodeApi, NodeApiArgs};
use crate::reconcile::{FederationSet, PodDirectory, ReconcileError, Reconciler};
use crate::status::{DesiredStatus, StatusWriter};
use crate::store::EntryStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct RunOptions {
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "wimsey-system")]
    pub namespace: String,
    /// This replica's Lease identity; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "WIMSEY_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Address of /debug/entries: loopback only (reach it with `kubectl port-forward`).
    #[arg(long, env = "WIMSEY_DEBUG_ADDR", default_value = "127.0.0.1:8081", value_parser = admin::loopback_addr)]
    pub debug_addr: SocketAddr,
    #[arg(long, env = "WIMSEY_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub authority: AuthorityArgs,
    #[command(flatten)]
    pub node_api: NodeApiArgs,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wimsey-operator".to_owned())
}

/// The controller of one replica: reconciler (always), and leader election with the status
/// writer (status only while leading).
#[derive(Debug)]
pub struct Controller {
    pub store: EntryStore,
    pub metrics: Arc<Metrics>,
    pub ready: watch::Receiver<bool>,
    pub leader: watch::Receiver<bool>,
    pub statuses: watch::Receiver<Arc<Vec<DesiredStatus>>>,
    pub federation: watch::Receiver<Arc<FederationSet>>,
    /// The informer's pods, for the node API.
    pub pods: PodDirectory,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    /// Starts the reconciler, leader election on `lease` and the status writer.
    pub fn start(
        client: Client,
        settings: Settings,
        lease: LeaseSettings,
        store: EntryStore,
        shutdown: CancellationToken,
    ) -> Result<Self, ReconcileError> {
        let metrics = Arc::new(Metrics::new());
        let reconciler = Reconciler::new(client.clone(), settings, store.clone(), metrics.clone())
            .spawn(shutdown.clone())?;
        let (leader_tx, leader) = watch::channel(false);
        let reporter = Reporter {
            controller: "wimsey-operator".to_owned(),
            instance: Some(lease.identity.clone()),
        };
        let mut tasks = vec![reconciler.task];
        tasks.push(tokio::spawn(run_leader_election(
            client.clone(),
            lease,
            leader_tx,
            shutdown.clone(),
        )));
        let mut leader_gauge = leader.clone();
        let gauge_metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                gauge_metrics.set_leader(*leader_gauge.borrow_and_update());
                if leader_gauge.changed().await.is_err() {
                    gauge_metrics.set_leader(false);
                    return;
                }
            }
        }));
        tasks.push(tokio::spawn(
            StatusWriter::new(client, reporter, metrics.clone()).run(
                reconciler.statuses.clone(),
                leader.clone(),
                shutdown.clone(),
            ),
        ));
        Ok(Self {
            store,
            metrics,
            ready: reconciler.ready,
            leader,
            statuses: reconciler.statuses,
            federation: reconciler.federation,
            pods: reconciler.pods,
            shutdown,
            tasks,
        })
    }

    /// Stops gracefully: a held Lease is released.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops abruptly, as a crash would: the Lease is not released.
    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Resolves SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    init_logging(options.log_format);
    let settings = Settings::from_flags(options.config).context("configuration")?;
    tracing::info!(
        trust_domain = settings.trust_domain.name(),
        cluster = %settings.cluster_name,
        cluster_domain = %settings.cluster_domain,
        "starting"
    );
    let client = Client::try_default()
        .await
        .context("building the Kubernetes client")?;
    let identity = options.pod_name.unwrap_or_else(hostname);
    let shutdown = CancellationToken::new();
    let store = EntryStore::new();
    let controller = Controller::start(
        client.clone(),
        settings.clone(),
        LeaseSettings::new(&options.namespace, &identity),
        store.clone(),
        shutdown.clone(),
    )?;

    // Identity services (the authority and the node API) are spawned here, with `client`,
    // `settings`, `options.namespace`, `store` and `shutdown`.
    let mut authority_args = options.authority;
    authority_args.authority_namespace = options.namespace.clone();
    let authority = SigningAuthority::start_with_metrics(
        client.clone(),
        settings.trust_domain.clone(),
        authority_args,
        controller.metrics.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting the authority")?;
    // Federated bundles come from the ClusterFederatedTrustDomains' trustDomainBundle fields.
    let mut federation = controller.federation.clone();
    let (federated_bundles, federated) =
        watch::channel(nodeapi::federated_bundles(&federation.borrow_and_update()));
    tokio::spawn(async move {
        while federation.changed().await.is_ok() {
            let bundles = nodeapi::federated_bundles(&federation.borrow_and_update());
            federated_bundles.send_if_modified(|current| {
                let changed = *current != bundles;
                *current = bundles;
                changed
            });
        }
    });
    let node_api_addr = options.node_api.node_api_addr;
    let node_api = NodeApi::new(
        client.clone(),
        authority,
        store.clone(),
        controller.pods.clone(),
        settings.clone(),
        options.node_api,
        federated,
    );
    tracing::info!(addr = %node_api_addr, "node API listening");
    let node_api = tokio::spawn(node_api.run(shutdown.clone()));

    let listener = tokio::net::TcpListener::bind(options.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", options.admin_addr))?;
    tracing::info!(addr = %options.admin_addr, "admin server listening");
    let admin_state = AdminState {
        store,
        metrics: controller.metrics.clone(),
        ready: controller.ready.clone(),
    };
    let admin = tokio::spawn(admin::serve(
        listener,
        admin_state.clone(),
        shutdown.clone(),
    ));
    let debug_listener = tokio::net::TcpListener::bind(options.debug_addr)
        .await
        .with_context(|| format!("binding the debug address {}", options.debug_addr))?;
    tracing::info!(addr = %options.debug_addr, "debug server (/debug/entries) listening");
    let debug = tokio::spawn(admin::serve_debug(
        debug_listener,
        admin_state,
        shutdown.clone(),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    controller.stop().await;
    admin
        .await
        .context("admin server task")?
        .context("admin server")?;
    debug
        .await
        .context("debug server task")?
        .context("debug server")?;
    node_api
        .await
        .context("node API task")?
        .context("node API")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::nodeapi::NodeApiLimits;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunOptions,
    }

    #[test]
    fn flags_are_consistent_and_debug_entries_stay_on_loopback() {
        // Duplicate flag names or env variables across the flattened groups panic here.
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.run.debug_addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(cli.run.node_api.limits, NodeApiLimits::default());
        let cli = Cli::try_parse_from(["x", "--debug-addr=[::1]:9000"]).unwrap();
        assert_eq!(cli.run.debug_addr, "[::1]:9000".parse().unwrap());
        let err = Cli::try_parse_from(["x", "--debug-addr=0.0.0.0:8081"]).unwrap_err();
        assert!(err.to_string().contains("not a loopback address"), "{err}");
    }
}
