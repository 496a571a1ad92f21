//! The Kubernetes edge of the reconciler: one watch per kind feeding views into a single task
//! that owns the [`ClusterState`], renders what changed into the [`EntryStore`] and publishes
//! the desired statuses and the federation set.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wimsey_core::entries::NamespaceView;
use wimsey_core::template::FieldTree;

use super::directory::PodDirectory;
use super::federation::{FederationInput, FederationSet};
use super::kept::{KeptFields, KeptKind};
use super::resource_meta::ResourceMeta;
use super::state::{ClusterState, SliceInput, SpecInput, StaticInput};
use super::status::{DesiredStatus, desired_statuses};
use crate::admin::metrics::Metrics;
use crate::config::{ConfigError, Settings};
use crate::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};
use crate::store::EntryStore;
use crate::views;

/// Events applied per batch before rendering, so a flood of events is coalesced but rendering
/// still happens regularly.
const MAX_BATCH: usize = 5000;

/// The kind whose first list decides the kept fields the Pod and Node watches start with.
const SPEC_KIND: &str = "ClusterSPIFFEID";

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}

impl ReconcileError {
    pub fn label(&self) -> &'static str {
        match self {
            ReconcileError::Config(_) => "config",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Pod(String),
    Namespace(String),
    Node(String),
    Spec(String),
    Static(String),
    Federation(String),
    Slice(String, String),
}

#[derive(Debug)]
enum Object {
    Pod(wimsey_core::entries::PodView),
    Namespace(NamespaceView),
    Node(wimsey_core::entries::NodeView),
    Spec(SpecInput),
    Static(StaticInput),
    Federation(FederationInput),
    Slice(SliceInput),
}

#[derive(Debug)]
enum Change {
    Apply(Box<Object>),
    Delete(Key),
    /// The first full list of a kind has been delivered.
    Synced(&'static str),
    /// A relist of a kind, converted with the kept fields of this version, has been delivered.
    Relisted(KeptKind, u64),
    /// The backend's report (see [`crate::backend::Feedback`]).
    Backend(crate::backend::Feedback),
}

/// Hands the backend's reports to the reconciler, which puts them in the resources' status.
#[derive(Debug, Clone)]
pub struct FeedbackSender(mpsc::UnboundedSender<Change>);

impl FeedbackSender {
    pub fn report(&self, feedback: crate::backend::Feedback) {
        // A stopped reconciler has no status left to write.
        let _ = self.0.send(Change::Backend(feedback));
    }
}

fn meta_of<K: Resource>(resource: &K) -> ResourceMeta {
    let meta = resource.meta();
    ResourceMeta {
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        generation: meta.generation,
        resource_version: meta.resource_version.clone(),
    }
}

fn spec_input(resource: &ClusterSPIFFEID) -> SpecInput {
    SpecInput {
        meta: meta_of(resource),
        class_name: resource.spec.class_name.clone(),
        view: views::cluster_spiffe_id_view(resource),
        status: resource.status.clone(),
    }
}

fn static_input(resource: &ClusterStaticEntry) -> StaticInput {
    StaticInput {
        meta: meta_of(resource),
        view: views::static_entry_view(resource),
        status: resource.status.clone(),
    }
}

fn federation_input(resource: &ClusterFederatedTrustDomain) -> FederationInput {
    FederationInput {
        meta: meta_of(resource),
        created: resource
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        spec: resource.spec.clone(),
        status: resource.status.clone(),
    }
}

/// The pods an EndpointSlice's endpoints point at (targetRef of kind Pod in its namespace).
pub fn slice_input(slice: &EndpointSlice) -> SliceInput {
    let namespace = slice.namespace().unwrap_or_default();
    SliceInput {
        service: slice
            .labels()
            .get(SERVICE_NAME_LABEL)
            .cloned()
            .unwrap_or_default(),
        pods: slice
            .endpoints
            .iter()
            .filter_map(|endpoint| endpoint.target_ref.as_ref())
            .filter(|target| {
                target.kind.as_deref() == Some("Pod")
                    && target.namespace.as_deref().is_none_or(|ns| ns == namespace)
            })
            .filter_map(|target| target.name.clone())
            .collect(),
        name: slice.name_any(),
        namespace,
    }
}

/// Applies one change; returns whether the statuses must be computed again without a pass.
fn apply_change(
    state: &mut ClusterState,
    pods: &PodDirectory,
    change: Change,
    synced: &mut HashSet<&'static str>,
) -> bool {
    match change {
        Change::Apply(object) => match *object {
            Object::Pod(view) => {
                pods.apply(&view);
                state.apply_pod(view)
            }
            Object::Namespace(view) => state.apply_namespace(view),
            Object::Node(view) => state.apply_node(view),
            Object::Spec(input) => state.apply_spec(input),
            Object::Static(input) => state.apply_static(input),
            Object::Federation(input) => state.apply_federation(input),
            Object::Slice(input) => state.apply_endpoint_slice(input),
        },
        Change::Delete(key) => match key {
            Key::Pod(uid) => {
                pods.delete(&uid);
                state.delete_pod(&uid)
            }
            Key::Namespace(name) => state.delete_namespace(&name),
            Key::Node(name) => state.delete_node(&name),
            Key::Spec(name) => state.delete_spec(&name),
            Key::Static(name) => state.delete_static(&name),
            Key::Federation(name) => state.delete_federation(&name),
            Key::Slice(namespace, name) => state.delete_endpoint_slice(&namespace, &name),
        },
        Change::Synced(kind) => {
            synced.insert(kind);
        }
        Change::Relisted(kind, version) => state.relisted(kind, version),
        Change::Backend(feedback) => return state.set_backend_feedback(feedback),
    }
    false
}

/// Where a watch gets the fields to keep, for the kinds converted with them.
struct KeptSource {
    kind: KeptKind,
    fields: watch::Receiver<Option<KeptFields>>,
}

/// Watches one kind. A relist (after a lost watch) reports the objects that disappeared
/// meanwhile as deletions, so the state never keeps a ghost. With a [`KeptSource`] the watch
/// starts once the kept fields are known, and starts over (one relist) whenever its kind's kept
/// fields widen; the end of every list is reported as [`Change::Relisted`] with the version of
/// the kept fields it was converted with.
async fn watch_kind<K>(
    api: Api<K>,
    kind: &'static str,
    key_of: fn(&K) -> Key,
    object_of: fn(&K, &FieldTree) -> Object,
    changes: mpsc::UnboundedSender<Change>,
    mut kept: Option<KeptSource>,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut known: HashSet<Key> = HashSet::new();
    let mut synced = false;
    let mut relisting = false;
    let send = |change| changes.send(change).is_ok();
    loop {
        let (tree, version) = match &mut kept {
            None => (Arc::new(FieldTree::new()), 0),
            Some(source) => {
                let ready = tokio::select! {
                    () = shutdown.cancelled() => return,
                    ready = source.fields.wait_for(Option::is_some) => ready.map(|f| f.clone()),
                };
                match ready {
                    Ok(Some(fields)) => (fields.tree.clone(), fields.version(source.kind)),
                    _ => return,
                }
            }
        };
        let mut stream = watcher::watcher(api.clone(), watcher::Config::default())
            .backoff(crate::watch_backoff::WatchBackoff::default())
            .boxed();
        let mut listing: Option<HashSet<Key>> = None;
        loop {
            let widened = async {
                match &mut kept {
                    None => std::future::pending::<bool>().await,
                    Some(source) => {
                        let kind = source.kind;
                        source
                            .fields
                            .wait_for(|f| f.as_ref().is_some_and(|f| f.version(kind) != version))
                            .await
                            .is_ok()
                    }
                }
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                widened = widened => {
                    if !widened {
                        return;
                    }
                    // Start over: the new watcher lists everything again with the new fields.
                    tracing::info!(kind, "kept fields widened; relisting");
                    relisting = true;
                    break;
                }
                next = stream.next() => next,
            };
            let event = match next {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(kind, %error, "watch failed; retrying");
                    continue;
                }
                Some(Ok(event)) => event,
            };
            let alive = match event {
                WatchEvent::Apply(object) | WatchEvent::InitApply(object) => {
                    let key = key_of(&object);
                    if let Some(listing) = &mut listing {
                        listing.insert(key.clone());
                    }
                    known.insert(key);
                    send(Change::Apply(Box::new(object_of(&object, &tree))))
                }
                WatchEvent::Delete(object) => {
                    let key = key_of(&object);
                    known.remove(&key);
                    send(Change::Delete(key))
                }
                WatchEvent::Init => {
                    listing = Some(HashSet::new());
                    true
                }
                WatchEvent::InitDone => {
                    let mut alive = true;
                    if let Some(seen) = listing.take() {
                        for gone in known.difference(&seen) {
                            alive &= send(Change::Delete(gone.clone()));
                        }
                        known = seen;
                    }
                    if !synced {
                        synced = true;
                        tracing::info!(kind, objects = known.len(), "cache synced");
                        alive &= send(Change::Synced(kind));
                    }
                    // Every full list says which kept fields it was converted with: a widening
                    // that came before this watch first listed is covered by that first list.
                    if let Some(source) = &kept {
                        if relisting {
                            relisting = false;
                            tracing::info!(kind, objects = known.len(), "relist done");
                        }
                        alive &= send(Change::Relisted(source.kind, version));
                    }
                    alive
                }
            };
            if !alive {
                return;
            }
        }
    }
}

/// The reconciler's outputs.
#[derive(Debug)]
pub struct ReconcilerHandle {
    /// True once every watch has delivered its first list and the first pass is done.
    pub ready: watch::Receiver<bool>,
    /// The status every resource should have, recomputed after every pass.
    pub statuses: watch::Receiver<Arc<Vec<DesiredStatus>>>,
    /// The validated federation relationships.
    pub federation: watch::Receiver<Arc<FederationSet>>,
    /// Every pod the Pod watch has seen (the node API's view of where pods run); synced with
    /// `ready`.
    pub pods: PodDirectory,
    /// Where a backend reports what it could not write.
    pub feedback: FeedbackSender,
    /// Ends when the reconciler stops (shutdown).
    pub task: JoinHandle<()>,
}

/// Builds the watches and the reconcile loop.
#[derive(Clone)]
pub struct Reconciler {
    client: Client,
    settings: Settings,
    store: EntryStore,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    pub fn new(
        client: Client,
        settings: Settings,
        store: EntryStore,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            settings,
            store,
            metrics,
        }
    }

    /// Starts the watches and the loop; everything stops when `shutdown` is cancelled.
    pub fn spawn(self, shutdown: CancellationToken) -> Result<ReconcilerHandle, ReconcileError> {
        let state = ClusterState::new(
            self.settings.render_config()?,
            &self.settings.entry_id_prefix,
        );
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let feedback = FeedbackSender(changes_tx.clone());
        let client = &self.client;
        let mut watches: Vec<JoinHandle<()>> = Vec::new();
        let (kept_tx, kept_rx) = watch::channel(None::<KeptFields>);
        macro_rules! spawn_watch {
            ($kind:ty, $name:literal, $key:expr, $object:expr) => {
                spawn_watch!($kind, $name, $key, $object, None)
            };
            ($kind:ty, $name:literal, $key:expr, $object:expr, $kept:expr) => {
                watches.push(tokio::spawn(watch_kind::<$kind>(
                    Api::all(client.clone()),
                    $name,
                    $key,
                    $object,
                    changes_tx.clone(),
                    $kept,
                    shutdown.clone(),
                )))
            };
        }
        spawn_watch!(
            Namespace,
            "Namespace",
            |r| Key::Namespace(r.name_any()),
            |r, _| { Object::Namespace(views::namespace_view(r)) }
        );
        // Pods and nodes start once the ClusterSPIFFEIDs are listed, so the first list already
        // keeps what their templates reach (no relist at startup).
        spawn_watch!(
            Node,
            "Node",
            |r| Key::Node(r.name_any()),
            |r, kept| Object::Node(views::node_view_keeping(r, kept)),
            Some(KeptSource {
                kind: KeptKind::Nodes,
                fields: kept_rx.clone(),
            })
        );
        spawn_watch!(
            Pod,
            "Pod",
            |r| Key::Pod(r.uid().unwrap_or_default()),
            |r, kept| Object::Pod(views::pod_view_keeping(r, kept)),
            Some(KeptSource {
                kind: KeptKind::Pods,
                fields: kept_rx,
            })
        );
        spawn_watch!(
            EndpointSlice,
            "EndpointSlice",
            |r| Key::Slice(r.namespace().unwrap_or_default(), r.name_any()),
            |r, _| Object::Slice(slice_input(r))
        );
        spawn_watch!(
            ClusterSPIFFEID,
            "ClusterSPIFFEID",
            |r| Key::Spec(r.name_any()),
            |r, _| { Object::Spec(spec_input(r)) }
        );
        spawn_watch!(
            ClusterStaticEntry,
            "ClusterStaticEntry",
            |r| Key::Static(r.name_any()),
            |r, _| Object::Static(static_input(r))
        );
        spawn_watch!(
            ClusterFederatedTrustDomain,
            "ClusterFederatedTrustDomain",
            |r| Key::Federation(r.name_any()),
            |r, _| Object::Federation(federation_input(r))
        );
        drop(changes_tx);

        let (ready_tx, ready) = watch::channel(false);
        let (statuses_tx, statuses) = watch::channel(Arc::new(Vec::new()));
        let (federation_tx, federation) = watch::channel(Arc::new(FederationSet::new()));
        let outputs = Outputs {
            kept: kept_tx,
            ready: ready_tx,
            statuses: statuses_tx,
            federation: federation_tx,
        };
        let kinds = watches.len();
        let pods = PodDirectory::new();
        let loop_pods = pods.clone();
        let task = tokio::spawn(async move {
            run_loop(
                state,
                loop_pods,
                self.store,
                changes_rx,
                outputs,
                self.metrics,
                kinds,
                shutdown,
            )
            .await;
            for watch in watches {
                watch.abort();
            }
        });
        Ok(ReconcilerHandle {
            ready,
            statuses,
            federation,
            pods,
            feedback,
            task,
        })
    }
}

#[derive(Debug)]
struct Outputs {
    /// What the Pod and Node watches keep; `None` until the ClusterSPIFFEIDs are listed.
    kept: watch::Sender<Option<KeptFields>>,
    ready: watch::Sender<bool>,
    statuses: watch::Sender<Arc<Vec<DesiredStatus>>>,
    federation: watch::Sender<Arc<FederationSet>>,
}

/// Hands the kept fields to the Pod and Node watches when they are new (first, or widened).
fn publish_kept_fields(state: &mut ClusterState, kept: &watch::Sender<Option<KeptFields>>) {
    let fields = state.kept_fields();
    kept.send_if_modified(|current| {
        if current.as_ref() == Some(&fields) {
            false
        } else {
            *current = Some(fields);
            true
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn run_loop(
    mut state: ClusterState,
    pods: PodDirectory,
    store: EntryStore,
    mut changes: mpsc::UnboundedReceiver<Change>,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    kinds: usize,
    shutdown: CancellationToken,
) {
    let mut synced: HashSet<&'static str> = HashSet::new();
    let mut all_synced = false;
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Some(change) => change,
                None => return,
            },
        };
        let started = Instant::now();
        let mut statuses_stale = apply_change(&mut state, &pods, first, &mut synced);
        for _ in 1..MAX_BATCH {
            match changes.try_recv() {
                Ok(change) => {
                    statuses_stale |= apply_change(&mut state, &pods, change, &mut synced)
                }
                Err(_) => break,
            }
        }
        metrics.observe_phase("events", started.elapsed().as_secs_f64());
        if synced.contains(SPEC_KIND) {
            publish_kept_fields(&mut state, &outputs.kept);
        }
        metrics.set_queue_depth(state.pending().len() + changes.len());
        if !all_synced {
            if synced.len() < kinds {
                continue;
            }
            all_synced = true;
            tracing::info!(
                pods = state.pod_count(),
                "all caches synced; first full render"
            );
        }
        let pending = state.take_pending();
        if !pending.is_empty() {
            let started = Instant::now();
            let report = state.reconcile_dirty(pending, &store);
            metrics.observe_phase("render", started.elapsed().as_secs_f64());
            for (reason, count) in &report.render_failures {
                metrics.count_render_failure(reason, *count);
            }
            if report.federations_changed {
                outputs.federation.send_replace(state.federation_set());
            }
            statuses_stale = true;
            let (masked, failed) = state.masked_and_failed();
            metrics.set_entries(
                i64::try_from(store.entry_count()).unwrap_or(i64::MAX),
                masked,
                failed,
            );
        }
        if statuses_stale {
            let desired = desired_statuses(&state);
            outputs.statuses.send_if_modified(|current| {
                if **current == desired {
                    false
                } else {
                    *current = Arc::new(desired);
                    true
                }
            });
        }
        metrics.set_queue_depth(changes.len());
        if !*outputs.ready.borrow() {
            pods.mark_synced();
            outputs.ready.send_replace(true);
        }
    }
}
