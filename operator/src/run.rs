//! `wimsey-operator run`: the reconciler, leader election, the status writer and the admin
//! server in one process, stopped together on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wimsey_core::backoff::{backoff, jitter};
use wimsey_runtime::{LogArgs, all_ready, init_logging, shutdown_signal};

use crate::admin::{self, AdminState, Metrics};
use crate::authority::serving::ServingCert;
use crate::authority::{AuthorityArgs, AuthorityError, SigningAuthority};
use crate::config::{Backend, ConfigFlags, Settings};
use crate::federation::args::FederationArgs;
use crate::federation::args::ServeProfile;
use crate::federation::{self as fed};
use crate::leader::{LeaseSettings, run_leader_election};
use crate::nodeapi::material::NodeAuthority;
use crate::nodeapi::{NodeApi, NodeApiArgs};
use crate::owner;

use crate::reconcile::federation::federated_bundles;
use crate::reconcile::status::DesiredStatus;
use crate::reconcile::{FederationSet, FeedbackSender, PodDirectory, ReconcileError, Reconciler};
use crate::spire_entries::SpireEntries;
use crate::spire_relationships::SpireRelationships;
use crate::spire_sync::{self, SpireSync, SyncSettings};
use crate::status::StatusWriter;
use crate::store::EntryStore;
use wimsey_core::entry_sync::Ownership;

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
    /// The Deployment that runs this operator: the bundle ConfigMap and the Lease get it as owner,
    /// so deleting the installation removes them (the authority Secret is never owned).
    #[arg(long, env = "WIMSEY_OWNER_DEPLOYMENT")]
    pub owner_deployment: Option<String>,
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "WIMSEY_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Address of /debug/entries: loopback only (reach it with `kubectl port-forward`).
    #[arg(long, env = "WIMSEY_DEBUG_ADDR", default_value = "127.0.0.1:8081", value_parser = admin::loopback_addr)]
    pub debug_addr: SocketAddr,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub authority: AuthorityArgs,
    #[command(flatten)]
    pub node_api: NodeApiArgs,
    #[command(flatten)]
    pub federation: FederationArgs,
}

/// How long the authority's start waits for the owner lookup (the API server answers it in
/// milliseconds when it answers at all).
const OWNER_WAIT: Duration = Duration::from_secs(10);

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
    /// Where a backend reports what it could not write (into the resources' status).
    pub feedback: FeedbackSender,
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
            feedback: reconciler.feedback,
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

/// The authority, once the API server lets it load: errors reaching the API server (it is down,
/// RBAC not applied yet, the Secret contended) are retried with backoff instead of exiting, which
/// would put the replica in CrashLoopBackOff and delay it by minutes after the API server returns.
/// A Secret that cannot be used ends the process.
async fn start_authority(
    client: Client,
    trust_domain: wimsey_core::TrustDomain,
    args: AuthorityArgs,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<SigningAuthority, AuthorityError> {
    retry_while_retryable(|| {
        SigningAuthority::start_with_metrics(
            client.clone(),
            trust_domain.clone(),
            args.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
    })
    .await
}

/// Runs `attempt` until it succeeds or fails with an error that retrying cannot fix.
async fn retry_while_retryable<T, F, Fut>(mut attempt: F) -> Result<T, AuthorityError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AuthorityError>>,
{
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Err(error) if error.is_retryable() => {
                let wait = backoff(
                    failures,
                    Duration::from_secs(1),
                    Duration::from_secs(15),
                    jitter(),
                );
                tracing::warn!(%error, label = error.label(), retry_in = ?wait,
                    "the authority cannot load yet; retrying");
                failures = failures.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
            done => return done,
        }
    }
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    init_logging(&options.log);
    let settings = Settings::from_flags(options.config).context("configuration")?;
    for note in &settings.notes {
        tracing::info!(note = %note, "config file: accepted, no effect here");
    }
    options.federation.check().context("configuration")?;
    if options.authority.jwt_issuer_url.is_some()
        && options.federation.bundle_endpoint_addr.is_none()
    {
        tracing::warn!(
            "--jwt-issuer-url is set without --bundle-endpoint-addr: JWT-SVIDs carry iss, but no OIDC discovery is served"
        );
    }
    let web_roots = {
        let extra =
            match &options.federation.federation_ca_bundle {
                Some(path) => Some(std::fs::read(path).with_context(|| {
                    format!("reading --federation-ca-bundle {}", path.display())
                })?),
                None => None,
            };
        Arc::new(fed::web_pki::web_roots(extra.as_deref()).context("--federation-ca-bundle")?)
    };
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
    let owner = match &options.owner_deployment {
        Some(name) => {
            owner::spawn_lookup(client.clone(), &options.namespace, name, shutdown.clone())
        }
        None => owner::none(),
    };
    let mut lease_settings = LeaseSettings::new(&options.namespace, &identity);
    lease_settings.owner = owner.clone();
    let controller = Controller::start(
        client.clone(),
        settings.clone(),
        lease_settings,
        store.clone(),
        shutdown.clone(),
    )?;

    // The admin server comes first, so kubelet's liveness probe passes while the authority waits
    // for the API server; /readyz stays false until the caches synced and the node API serves.
    let (authority_loaded, authority_ready) = watch::channel(false);
    let listener = wimsey_runtime::admin::bind(options.admin_addr).await?;
    tracing::info!(addr = %options.admin_addr, "admin server listening");
    let admin_state = AdminState {
        store: store.clone(),
        metrics: controller.metrics.clone(),
        ready: all_ready(vec![controller.ready.clone(), authority_ready]),
    };
    let admin = tokio::spawn(admin::serve(
        listener,
        admin_state.clone(),
        shutdown.clone(),
    ));
    let debug_listener = wimsey_runtime::admin::bind(options.debug_addr).await?;
    tracing::info!(addr = %options.debug_addr, "debug server (/debug/entries) listening");
    let debug = tokio::spawn(admin::serve_debug(
        debug_listener,
        admin_state,
        shutdown.clone(),
    ));

    if settings.backend == Backend::Spire {
        // SPIRE Server is the authority: no signing keys, node API or bundle endpoint here.
        let sync = start_spire_sync(&settings, &controller);
        authority_loaded.send_replace(true);
        shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
        controller.stop().await;
        sync.await.context("SPIRE sync task")?;
        return admin_servers_ended(admin, debug).await;
    }

    let mut authority_args = options.authority;
    authority_args.authority_namespace = options.namespace.clone();
    if options.owner_deployment.is_some() {
        // The first bundle publish writes its owner, so a ConfigMap still naming a deleted
        // Deployment (a quick reinstall) is claimed before the garbage collector removes it.
        let mut known = owner.clone();
        if tokio::time::timeout(OWNER_WAIT, known.wait_for(Option::is_some))
            .await
            .is_err()
        {
            tracing::warn!(
                "the operator's Deployment is not known yet: the bundle ConfigMap is published without an owner for now"
            );
        }
    }
    authority_args.bundle_owner = Some(owner.clone());
    let starting = start_authority(
        client.clone(),
        settings.trust_domain.clone(),
        authority_args.clone(),
        controller.metrics.clone(),
        shutdown.clone(),
    );
    let authority = tokio::select! {
        started = starting => started.context("starting the authority")?,
        () = shutdown_signal() => {
            tracing::info!("shutting down before the authority started");
            shutdown.cancel();
            controller.stop().await;
            return Ok(());
        }
    };
    if options.owner_deployment.is_some() {
        // An owner found after the first publish: the bundle ConfigMap gets it now, not at the
        // next rotation (it may still name a deleted Deployment, which the collector would
        // remove). A no-op (one read) when the first publish already wrote it.
        let (authority, mut owner) = (authority.clone(), owner);
        tokio::spawn(async move {
            if owner.wait_for(Option::is_some).await.is_ok()
                && let Err(error) = authority.publish_bundle().await
            {
                tracing::warn!(%error, "publishing the bundle ConfigMap with its owner failed");
            }
        });
    }
    // Federated bundles come from the ClusterFederatedTrustDomains' trustDomainBundle fields.
    let mut federation = controller.federation.clone();
    let (bundles_tx, federated) =
        watch::channel(federated_bundles(&federation.borrow_and_update()));
    tokio::spawn(async move {
        while federation.changed().await.is_ok() {
            let bundles = federated_bundles(&federation.borrow_and_update());
            bundles_tx.send_if_modified(|current| {
                let changed = *current != bundles;
                *current = bundles;
                changed
            });
        }
    });
    // Fetched bundles go into the resources' status (Lease holder only); the reconciler of
    // every replica reads them back into the federation set above.
    tokio::spawn(
        fed::poller::Poller::new(
            client.clone(),
            Reporter {
                controller: "wimsey-operator".to_owned(),
                instance: Some(identity.clone()),
            },
            fed::poller::PollerSettings {
                policy: options.federation.refresh_policy(),
                limits: options.federation.fetch_limits(),
                web_roots,
            },
            controller.metrics.clone(),
            authority.subscribe(),
        )
        .run(
            controller.federation.clone(),
            controller.leader.clone(),
            shutdown.clone(),
        ),
    );
    let bundle_endpoint = match options.federation.bundle_endpoint_addr {
        Some(addr) => Some(tokio::spawn(
            start_bundle_endpoint(
                client.clone(),
                addr,
                &options.federation,
                NodeAuthority::new(authority.subscribe(), authority_args),
                settings.clone(),
                options.namespace.clone(),
                shutdown.clone(),
            )
            .await?,
        )),
        None => None,
    };
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

    authority_loaded.send_replace(true);

    shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    controller.stop().await;
    admin_servers_ended(admin, debug).await?;
    node_api
        .await
        .context("node API task")?
        .context("node API")?;
    if let Some(endpoint) = bundle_endpoint {
        endpoint
            .await
            .context("bundle endpoint task")?
            .context("bundle endpoint")?;
    }
    Ok(())
}

/// Waits for the admin and debug servers to end (after shutdown), with what stopped them.
async fn admin_servers_ended(
    admin: JoinHandle<Result<(), wimsey_runtime::AdminError>>,
    debug: JoinHandle<Result<(), wimsey_runtime::AdminError>>,
) -> anyhow::Result<()> {
    admin
        .await
        .context("admin server task")?
        .context("admin server")?;
    debug
        .await
        .context("debug server task")?
        .context("debug server")?;
    Ok(())
}

/// The `spire` backend: the entries the reconciler keeps in the store go to the SPIRE Server
/// (see [`crate::spire_sync`]), written by the Lease holder; what the server refuses, and whether
/// it can be reached, goes back into the resources' status.
pub fn start_spire_sync(settings: &Settings, controller: &Controller) -> JoinHandle<()> {
    let client =
        SpireEntries::connect_lazy(&settings.spire_server_socket, settings.spire_batch_limits);
    let ownership = Ownership::new(&settings.entry_id_prefix);
    let (sync, mut state) = SpireSync::new(
        client,
        controller.store.clone(),
        SyncSettings {
            drift_check: settings.spire_drift_check,
            ..SyncSettings::new(ownership)
        },
        controller.leader.clone(),
        controller.ready.clone(),
    );
    // ClusterFederatedTrustDomains become SPIRE's federation relationships; SPIRE fetches the
    // bundles itself.
    let relationships = SpireRelationships::connect_lazy(
        &settings.spire_server_socket,
        settings.spire_batch_limits,
    );
    let sync = sync.with_federation(relationships, controller.federation.clone());
    tracing::info!(socket = %settings.spire_server_socket.display(), "spire backend: entries go to the SPIRE Server");
    let (store, feedback) = (controller.store.clone(), controller.feedback.clone());
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let report = state.borrow_and_update().clone();
            feedback.report(spire_sync::feedback(&report, &store));
        }
    });
    tokio::spawn(sync.run(controller.shutdown.clone()))
}

/// Binds the bundle endpoint and returns the future serving it: our bundle at `/`, OIDC
/// discovery when JWT-SVIDs have an issuer, over the configured profile's certificate.
async fn start_bundle_endpoint(
    client: Client,
    addr: SocketAddr,
    args: &FederationArgs,
    authority: NodeAuthority,
    settings: Settings,
    namespace: String,
    shutdown: CancellationToken,
) -> anyhow::Result<
    impl std::future::Future<Output = Result<(), fed::endpoint::EndpointError>> + use<>,
> {
    let material = authority.subscribe();
    let oidc = authority
        .args()
        .jwt_issuer_url
        .clone()
        .map(|issuer| fed::oidc::routes(material.clone(), issuer));
    let routes = fed::endpoint::router(material.clone(), oidc);
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match args.bundle_endpoint_profile {
        ServeProfile::HttpsSpiffe => {
            let id = wimsey_core::reserved::bundle_endpoint_id(&settings.trust_domain)
                .context("the bundle endpoint's SPIFFE ID")?;
            let serving = Arc::new(ServingCert::new(id));
            serving
                .keep_renewed(
                    material,
                    move |material| authority.issuer(material, &settings),
                    shutdown.clone(),
                )
                .context("the bundle endpoint's serving SVID")?;
            serving
        }
        ServeProfile::HttpsWeb => {
            let cert = Arc::new(fed::web_pki::WebServingCert::default());
            let secret = args.bundle_endpoint_secret.clone().unwrap_or_default();
            tokio::spawn(fed::web_cert::follow_secret(
                client,
                namespace,
                secret,
                cert.clone(),
                shutdown.clone(),
            ));
            cert
        }
    };
    let listener = fed::endpoint::bind(addr).await?;
    tracing::info!(%addr, profile = ?args.bundle_endpoint_profile, "bundle endpoint listening");
    Ok(fed::endpoint::serve(
        listener,
        resolver,
        routes,
        args.endpoint_limits(),
        shutdown,
    ))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_authority_waits_for_the_api_server_but_not_for_a_broken_secret() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let loaded = retry_while_retryable(|| {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if call < 5 {
                    Err(AuthorityError::Contended(call))
                } else {
                    Ok(call)
                }
            }
        })
        .await;
        assert_eq!(loaded.unwrap(), 5);
        // 1 + 2 + 4 + 8 + 15 s at most, at least half of that.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(15), "{waited:?}");
        assert!(waited <= Duration::from_secs(30), "{waited:?}");

        let calls = std::sync::atomic::AtomicU32::new(0);
        let broken = retry_while_retryable(|| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(AuthorityError::Corrupt("x509 authority")) }
        })
        .await;
        assert!(matches!(broken, Err(AuthorityError::Corrupt(_))));
        assert_eq!(calls.into_inner(), 1);
    }

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
