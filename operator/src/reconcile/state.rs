//! The reconciler's world as plain values: every watched object as a view, the indexes that
//! decide which pods a change touches, and the rendering of dirty pods into the entry store.
//!
//! Nothing here talks to the API server: the watch tasks feed it views, and the benchmark and
//! the unit tests drive it directly.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use wimsey_core::entries::{
    ClusterSpiffeIdView, CompiledSpec, EntryError, NamespaceSelection, NamespaceView, NodeView,
    PodView, RenderConfig, SpecOutcome, StaticEntryView, handles_class, namespace_selection,
    reached_fields, render_pod_entries, render_static_entry, resolve_conflicts, service_dns_names,
};

use super::federation::{FederationInput, FederationOutcome, FederationSet, build_federation_set};
use super::ids::entry_id;
use super::kept::{KeptFields, KeptKind, KeptTracker};
use super::shared::{Fields, SharedPool};
use crate::crd::{
    ClusterFederatedTrustDomainStatus, ClusterSPIFFEIDStatus, ClusterStaticEntryStatus,
};
use crate::store::{EntryStore, PodRecord, StoredEntry};

/// One pod's render, computed without touching the state.
enum PodRender {
    /// Not in the state (nothing to store).
    Unknown,
    /// Marked deleted: drop it and its counters.
    Deleted,
    Rendered(Option<PodRecord>, Vec<DetailedOutcome>),
}

/// Identity of a custom resource for status and events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceMeta {
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    /// `metadata.resourceVersion`: tells a new write from an old one with the same content.
    pub resource_version: Option<String>,
}

/// A ClusterSPIFFEID as watched: its view (or why it has none) and its current status.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecInput {
    pub meta: ResourceMeta,
    pub class_name: String,
    pub view: Result<ClusterSpiffeIdView, EntryError>,
    pub status: Option<ClusterSPIFFEIDStatus>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StaticInput {
    pub meta: ResourceMeta,
    pub view: StaticEntryView,
    pub status: Option<ClusterStaticEntryStatus>,
}

/// An EndpointSlice reduced to what autoPopulateDNSNames needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceInput {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label; slices without one name no Service.
    pub service: String,
    /// Names of the pods its endpoints' targetRefs point at (in the slice's namespace).
    pub pods: BTreeSet<String>,
}

/// What is waiting to be reconciled. Triggers are merged here, so a burst of events for one pod
/// renders it once, and nothing is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub pods: HashSet<String>,
    pub statics: bool,
    pub federations: bool,
    /// Only statuses need recomputing (a CR's observed status or generation changed).
    pub status: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && !self.statics && !self.federations && !self.status
    }

    /// Pods and resource sets waiting.
    pub fn len(&self) -> usize {
        self.pods.len() + usize::from(self.statics) + usize::from(self.federations)
    }

    pub fn merge(&mut self, other: Dirty) {
        self.pods.extend(other.pods);
        self.statics |= other.statics;
        self.federations |= other.federations;
        self.status |= other.status;
    }
}

/// What one spec did to one pod, kept per pod so counters can be updated incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Set,
    Masked,
    Failed,
    /// Selected but not rendered (a fallback that did not apply, or an unscheduled pod).
    SelectedOnly,
}

/// Running counters of one ClusterSPIFFEID over all pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecTally {
    pub pods_selected: i64,
    pub entries_to_set: i64,
    pub entries_masked: i64,
    pub render_failures: i64,
    /// `namespace/pod` -> error, for status messages (bounded by the failing pods).
    pub failures: BTreeMap<String, (String, &'static str)>,
    /// `namespace/pod` -> the resource that masks it.
    pub masked_by: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub(crate) struct SpecState {
    pub(crate) input: SpecInput,
    pub(crate) compiled: Result<CompiledSpec, EntryError>,
}

/// Result of validating one ClusterStaticEntry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticOutcome {
    Set {
        id: String,
    },
    Masked {
        by: String,
    },
    Invalid(EntryError),
    /// Another class's resource.
    NotOurs,
}

#[derive(Debug, Clone)]
pub(crate) struct StaticState {
    pub(crate) input: StaticInput,
    pub(crate) outcome: Option<StaticOutcome>,
}

#[derive(Debug, Clone)]
pub(crate) struct FederationState {
    pub(crate) input: FederationInput,
    pub(crate) outcome: Option<FederationOutcome>,
}

/// Counts of what the last passes did, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub pods_rendered: usize,
    pub store_writes: usize,
    /// Render failures of this pass, by error label.
    pub render_failures: BTreeMap<&'static str, u64>,
    pub statics_changed: bool,
    pub federations_changed: bool,
}

/// One spec's outcome for one pod: the spec, the outcome, the failure (message, label) and the
/// resource that masks the entry.
type DetailedOutcome = (
    Arc<str>,
    Outcome,
    Option<(String, &'static str)>,
    Option<String>,
);

/// A pod's label or annotation map, shared with the other pods that have the same one.
type SharedMap = Arc<BTreeMap<String, String>>;

#[derive(Debug, Clone)]
struct PodState {
    /// The view without its maps, which are shared with the pods that have the same ones.
    view: PodView,
    labels: SharedMap,
    annotations: SharedMap,
    extra_meta: Arc<Fields>,
    extra_spec: Arc<Fields>,
    outcomes: Vec<(Arc<str>, Outcome)>,
    /// Deleted from the cluster; removed from the store by the next pass.
    deleted: bool,
}

/// Everything the reconciler knows about the cluster.
#[derive(Debug)]
pub struct ClusterState {
    config: RenderConfig,
    entry_id_prefix: String,
    pods: HashMap<String, PodState>,
    pod_uid_by_name: HashMap<(String, String), String>,
    pods_by_namespace: HashMap<String, BTreeSet<String>>,
    pods_by_node: HashMap<String, BTreeSet<String>>,
    namespaces: BTreeMap<String, NamespaceView>,
    nodes: HashMap<String, NodeView>,
    pub(crate) specs: BTreeMap<String, SpecState>,
    compiled: Vec<CompiledSpec>,
    slices: HashMap<(String, String), SliceInput>,
    /// (namespace, pod name) -> service -> number of slices naming the pod.
    pod_services: HashMap<(String, String), BTreeMap<String, usize>>,
    pub(crate) statics: BTreeMap<String, StaticState>,
    pub(crate) federations: BTreeMap<String, FederationState>,
    federation_set: Arc<FederationSet>,
    tallies: HashMap<Arc<str>, SpecTally>,
    /// What the Pod and Node watches keep of each object, and the relists awaited.
    kept: KeptTracker,
    /// The distinct label and annotation maps of the pods.
    maps: SharedPool<BTreeMap<String, String>>,
    /// The distinct kept template fields of the pods.
    fields: SharedPool<Fields>,
    dirty: Dirty,
}

fn pod_key(view: &PodView) -> String {
    format!("{}/{}", view.namespace, view.name)
}

impl ClusterState {
    pub fn new(config: RenderConfig, entry_id_prefix: &str) -> Self {
        let mut kept = KeptTracker::new();
        kept.reached(&reached_fields(std::iter::empty(), &config));
        Self {
            config,
            entry_id_prefix: entry_id_prefix.to_owned(),
            pods: HashMap::new(),
            pod_uid_by_name: HashMap::new(),
            pods_by_namespace: HashMap::new(),
            pods_by_node: HashMap::new(),
            namespaces: BTreeMap::new(),
            nodes: HashMap::new(),
            specs: BTreeMap::new(),
            compiled: Vec::new(),
            slices: HashMap::new(),
            pod_services: HashMap::new(),
            statics: BTreeMap::new(),
            federations: BTreeMap::new(),
            federation_set: Arc::default(),
            tallies: HashMap::new(),
            kept,
            maps: SharedPool::default(),
            fields: SharedPool::default(),
            dirty: Dirty::default(),
        }
    }

    /// What to keep of each pod and node (see [`super::kept`]). From the first call on, a
    /// ClusterSPIFFEID reaching a field not kept makes [`ClusterState::relists_wanted`] non-empty.
    pub fn kept_fields(&mut self) -> KeptFields {
        self.kept.hand_out()
    }

    /// The kinds to relist, with the version of the kept fields the relist must use: each kind
    /// whose kept fields widened since they were handed out and not relisted since.
    pub fn relists_wanted(&self) -> Vec<(KeptKind, u64)> {
        self.kept.awaiting()
    }

    /// A relist of `kind` converted with kept fields of `version` has been fully applied.
    pub fn relisted(&mut self, kind: KeptKind, version: u64) {
        self.kept.relisted(kind, version);
    }

    pub fn config(&self) -> &RenderConfig {
        &self.config
    }

    /// What is waiting to be reconciled.
    pub fn pending(&self) -> &Dirty {
        &self.dirty
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn federation_set(&self) -> Arc<FederationSet> {
        self.federation_set.clone()
    }

    pub fn tally(&self, spec: &str) -> Option<&SpecTally> {
        self.tallies.get(spec)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &NamespaceView> {
        self.namespaces.values()
    }

    pub(crate) fn compiled_spec(&self, name: &str) -> Option<&CompiledSpec> {
        self.specs.get(name).and_then(|s| s.compiled.as_ref().ok())
    }

    fn mark_namespace(&mut self, namespace: &str) {
        if let Some(uids) = self.pods_by_namespace.get(namespace) {
            self.dirty.pods.extend(uids.iter().cloned());
        }
    }

    // ---- pods

    /// A pod was added or changed. An unchanged view (a status-only update) renders nothing.
    pub fn apply_pod(&mut self, mut view: PodView) {
        view.service_dns_names = self.dns_names_for(&view.namespace, &view.name);
        let labels = std::mem::take(&mut view.labels);
        let annotations = std::mem::take(&mut view.annotations);
        let extra_meta = Fields(std::mem::take(&mut view.extra_meta));
        let extra_spec = Fields(std::mem::take(&mut view.extra_spec));
        let uid = view.uid.clone();
        if let Some(old) = self.pods.get(&uid)
            && old.view == view
            && *old.labels == labels
            && *old.annotations == annotations
            && *old.extra_meta == extra_meta
            && *old.extra_spec == extra_spec
            && !old.deleted
        {
            return;
        }
        let outcomes = match self.pods.remove(&uid) {
            Some(old) => {
                if !old.deleted {
                    self.unindex_pod(&old.view);
                }
                self.maps.release(old.labels);
                self.maps.release(old.annotations);
                self.fields.release(old.extra_meta);
                self.fields.release(old.extra_spec);
                old.outcomes
            }
            None => Vec::new(),
        };
        self.index_pod(&view);
        let labels = self.maps.share(labels);
        let annotations = self.maps.share(annotations);
        let extra_meta = self.fields.share(extra_meta);
        let extra_spec = self.fields.share(extra_spec);
        self.pods.insert(
            uid.clone(),
            PodState {
                view,
                labels,
                annotations,
                extra_meta,
                extra_spec,
                outcomes,
                deleted: false,
            },
        );
        self.dirty.pods.insert(uid);
    }

    pub fn delete_pod(&mut self, uid: &str) {
        let Some(state) = self.pods.get(uid).filter(|s| !s.deleted) else {
            return;
        };
        let view = state.view.clone();
        self.unindex_pod(&view);
        // Kept until the pass removes it from the store and the counters.
        self.dirty.pods.insert(uid.to_owned());
        if let Some(state) = self.pods.get_mut(uid) {
            state.deleted = true;
        }
    }

    fn index_pod(&mut self, view: &PodView) {
        self.pod_uid_by_name.insert(
            (view.namespace.clone(), view.name.clone()),
            view.uid.clone(),
        );
        self.pods_by_namespace
            .entry(view.namespace.clone())
            .or_default()
            .insert(view.uid.clone());
        if !view.node_name.is_empty() {
            self.pods_by_node
                .entry(view.node_name.clone())
                .or_default()
                .insert(view.uid.clone());
        }
    }

    fn unindex_pod(&mut self, view: &PodView) {
        let name_key = (view.namespace.clone(), view.name.clone());
        if self.pod_uid_by_name.get(&name_key) == Some(&view.uid) {
            self.pod_uid_by_name.remove(&name_key);
        }
        remove_from_index(&mut self.pods_by_namespace, &view.namespace, &view.uid);
        remove_from_index(&mut self.pods_by_node, &view.node_name, &view.uid);
    }

    // ---- namespaces and nodes

    pub fn apply_namespace(&mut self, view: NamespaceView) {
        if self.namespaces.get(&view.name) == Some(&view) {
            return;
        }
        let name = view.name.clone();
        self.namespaces.insert(name.clone(), view);
        self.mark_namespace(&name);
        self.dirty.status = true;
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.mark_namespace(name);
            self.dirty.status = true;
        }
    }

    pub fn apply_node(&mut self, view: NodeView) {
        if self.nodes.get(&view.name) == Some(&view) {
            return;
        }
        let name = view.name.clone();
        self.nodes.insert(name.clone(), view);
        self.mark_node(&name);
    }

    pub fn delete_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.mark_node(name);
        }
    }

    fn mark_node(&mut self, name: &str) {
        if let Some(uids) = self.pods_by_node.get(name) {
            self.dirty.pods.extend(uids.iter().cloned());
        }
    }

    // ---- ClusterSPIFFEIDs

    /// A ClusterSPIFFEID was added or changed. When its spec changed, the pods in every namespace
    /// the old or the new selector can match are re-rendered; a status-only change re-renders
    /// nothing.
    pub fn apply_spec(&mut self, input: SpecInput) {
        let name = input.meta.name.clone();
        if let Some(old) = self.specs.get_mut(&name)
            && old.input.view == input.view
            && old.input.class_name == input.class_name
        {
            old.input = input;
            self.dirty.status = true;
            return;
        }
        let compiled = input
            .view
            .clone()
            .and_then(|view| CompiledSpec::compile(&view));
        let old = self
            .specs
            .insert(name.clone(), SpecState { input, compiled });
        self.spec_changed(&name, old.and_then(|s| s.compiled.ok()));
    }

    pub fn delete_spec(&mut self, name: &str) {
        if let Some(old) = self.specs.remove(name) {
            self.spec_changed(name, old.compiled.ok());
        }
    }

    /// Marks the pods in every namespace the old or the new version of spec `name` can select,
    /// and rebuilds the compiled list.
    fn spec_changed(&mut self, name: &str, old: Option<CompiledSpec>) {
        self.compiled = self
            .specs
            .values()
            .filter_map(|s| s.compiled.clone().ok())
            .collect();
        self.dirty.status = true;
        let reached = reached_fields(&self.compiled, &self.config);
        for kind in self.kept.reached(&reached) {
            tracing::info!(
                kind = kind.name(),
                spec = name,
                "a ClusterSPIFFEID reaches fields not kept; relisting once"
            );
        }
        let new = self.compiled_spec(name).cloned();
        let affected: Vec<&CompiledSpec> = old.iter().chain(new.iter()).collect();
        let namespaces: Vec<String> = self
            .namespaces
            .values()
            .filter(|ns| {
                affected.iter().any(|spec| {
                    handles_class(&self.config, &spec.class_name) && spec.selects_namespace(ns)
                })
            })
            .map(|ns| ns.name.clone())
            .collect();
        for namespace in namespaces {
            self.mark_namespace(&namespace);
        }
    }

    // ---- EndpointSlices

    pub fn apply_endpoint_slice(&mut self, slice: SliceInput) {
        let key = (slice.namespace.clone(), slice.name.clone());
        let old = self.slices.insert(key, slice.clone());
        self.slice_changed(old, Some(slice));
    }

    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) {
        let old = self.slices.remove(&(namespace.to_owned(), name.to_owned()));
        self.slice_changed(old, None);
    }

    fn slice_changed(&mut self, old: Option<SliceInput>, new: Option<SliceInput>) {
        if old == new {
            return;
        }
        let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
        for (slice, delta) in [(old, -1i64), (new, 1)] {
            let Some(slice) = slice else { continue };
            if slice.service.is_empty() {
                continue;
            }
            for pod in &slice.pods {
                let key = (slice.namespace.clone(), pod.clone());
                let services = self.pod_services.entry(key.clone()).or_default();
                let count = services.entry(slice.service.clone()).or_default();
                if delta > 0 {
                    *count += 1;
                } else {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        services.remove(&slice.service);
                    }
                }
                if services.is_empty() {
                    self.pod_services.remove(&key);
                }
                touched.insert(key);
            }
        }
        for (namespace, name) in touched {
            let names = self.dns_names_for(&namespace, &name);
            let Some(uid) = self
                .pod_uid_by_name
                .get(&(namespace.clone(), name.clone()))
                .cloned()
            else {
                continue;
            };
            if let Some(pod) = self.pods.get_mut(&uid)
                && pod.view.service_dns_names != names
            {
                pod.view.service_dns_names = names;
                self.dirty.pods.insert(uid);
            }
        }
    }

    /// The autoPopulateDNSNames names of a pod: four per Service that references it, by Service
    /// name.
    fn dns_names_for(&self, namespace: &str, pod: &str) -> Vec<String> {
        self.pod_services
            .get(&(namespace.to_owned(), pod.to_owned()))
            .into_iter()
            .flat_map(|services| services.keys())
            .flat_map(|service| service_dns_names(service, namespace, &self.config.cluster_domain))
            .collect()
    }

    // ---- ClusterStaticEntries and ClusterFederatedTrustDomains

    pub fn apply_static(&mut self, input: StaticInput) {
        let name = input.meta.name.clone();
        if let Some(old) = self.statics.get_mut(&name)
            && old.input.view == input.view
        {
            old.input = input;
            self.dirty.status = true;
            return;
        }
        self.statics.insert(
            name,
            StaticState {
                input,
                outcome: None,
            },
        );
        self.dirty.statics = true;
    }

    pub fn delete_static(&mut self, name: &str) {
        if self.statics.remove(name).is_some() {
            self.dirty.statics = true;
        }
    }

    pub fn apply_federation(&mut self, input: FederationInput) {
        let name = input.meta.name.clone();
        if let Some(old) = self.federations.get_mut(&name)
            && old.input.spec == input.spec
            && old.input.created == input.created
        {
            old.input = input;
            self.dirty.status = true;
            return;
        }
        self.federations.insert(
            name,
            FederationState {
                input,
                outcome: None,
            },
        );
        self.dirty.federations = true;
    }

    pub fn delete_federation(&mut self, name: &str) {
        if self.federations.remove(name).is_some() {
            self.dirty.federations = true;
        }
    }

    pub(crate) fn federation_status(
        &self,
        name: &str,
    ) -> Option<(
        &FederationInput,
        Option<&FederationOutcome>,
        Option<&ClusterFederatedTrustDomainStatus>,
    )> {
        self.federations
            .get(name)
            .map(|f| (&f.input, f.outcome.as_ref(), f.input.status.as_ref()))
    }

    // ---- the pass

    /// Takes what is pending (for a caller that wants to see it), leaving nothing pending.
    pub fn take_pending(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Reconciles everything pending into `store`.
    pub fn reconcile(&mut self, store: &EntryStore) -> PassReport {
        let dirty = self.take_pending();
        self.reconcile_dirty(dirty, store)
    }

    /// Reconciles `dirty` into `store`: renders each dirty pod once, and the static entries and
    /// the federation set when they changed.
    pub fn reconcile_dirty(&mut self, mut dirty: Dirty, store: &EntryStore) -> PassReport {
        let mut report = PassReport::default();
        if self.kept.holding() {
            // Some pods or nodes lack a field a template now reaches: render them once the
            // relist has brought it, not from data that would render wrong. Deleted pods still
            // leave the store now.
            let (gone, held): (HashSet<String>, HashSet<String>) = std::mem::take(&mut dirty.pods)
                .into_iter()
                .partition(|uid| self.pods.get(uid).is_none_or(|pod| pod.deleted));
            self.dirty.pods.extend(held);
            dirty.pods = gone;
        }
        let uids: Vec<String> = dirty.pods.into_iter().collect();
        let rendered = self.render_pods(&uids);
        let mut writes = Vec::with_capacity(uids.len());
        for (uid, render) in uids.into_iter().zip(rendered) {
            report.pods_rendered += 1;
            let record = self.apply_render(&uid, render, &mut report);
            writes.push((uid, record));
        }
        report.store_writes = store.set_pods(writes);
        if dirty.statics {
            report.statics_changed = self.reconcile_statics(store);
        }
        if dirty.federations {
            let inputs: Vec<&FederationInput> =
                self.federations.values().map(|f| &f.input).collect();
            let (set, outcomes) = build_federation_set(&inputs, &self.config);
            for (name, outcome) in outcomes {
                if let Some(state) = self.federations.get_mut(&name) {
                    state.outcome = Some(outcome);
                }
            }
            if *self.federation_set != set {
                self.federation_set = Arc::new(set);
                report.federations_changed = true;
            }
        }
        report
    }

    /// Renders `uids` (the pure part: templates, selectors, masking), on several threads when
    /// there are enough pods to be worth it. The result is in `uids`' order.
    fn render_pods(&self, uids: &[String]) -> Vec<PodRender> {
        const PODS_PER_THREAD: usize = 2_000;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(uids.len() / PODS_PER_THREAD)
            .max(1);
        if threads == 1 {
            return uids.iter().map(|uid| self.render_pod(uid)).collect();
        }
        let chunk = uids.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = uids
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|uid| self.render_pod(uid))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| match worker.join() {
                    Ok(part) => part,
                    // A panic in rendering is a bug; surface it where it happened.
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }

    /// What rendering one pod gives, before it is applied to the counters.
    fn render_pod(&self, uid: &str) -> PodRender {
        let Some(state) = self.pods.get(uid) else {
            return PodRender::Unknown;
        };
        if state.deleted {
            return PodRender::Deleted;
        }
        // The whole view again, for this render only.
        let whole = PodView {
            labels: BTreeMap::clone(&state.labels),
            annotations: BTreeMap::clone(&state.annotations),
            extra_meta: state.extra_meta.0.clone(),
            extra_spec: state.extra_spec.0.clone(),
            ..state.view.clone()
        };
        let view = &whole;
        let (record, outcomes) = match self.namespaces.get(&view.namespace) {
            // Not seen yet: rendered again when the namespace arrives.
            None => (None, Vec::new()),
            Some(namespace) => {
                let node = self.nodes.get(&view.node_name);
                let rendered =
                    render_pod_entries(view, node, namespace, &self.compiled, &self.config);
                let entries: Vec<StoredEntry> = rendered
                    .entries
                    .into_iter()
                    .map(|declared| StoredEntry {
                        id: entry_id(&self.entry_id_prefix, &declared.entry.key()),
                        entry: declared.entry,
                        owner: declared.owner,
                    })
                    .collect();
                let record = (!entries.is_empty()).then(|| PodRecord {
                    uid: view.uid.clone(),
                    namespace: view.namespace.clone(),
                    name: view.name.clone(),
                    service_account: view.service_account.clone(),
                    node_name: view.node_name.clone(),
                    entries,
                });
                let detailed: Vec<DetailedOutcome> = rendered
                    .results
                    .iter()
                    .filter_map(|r| {
                        let kind = outcome_kind(&r.outcome)?;
                        let failure = match &r.outcome {
                            SpecOutcome::Failed(e) => Some((e.to_string(), e.label())),
                            _ => None,
                        };
                        let masked = match &r.outcome {
                            SpecOutcome::Masked { by } => Some(by.to_string()),
                            _ => None,
                        };
                        // The tally's key, so a pod's outcomes share one allocation per spec.
                        let spec = self
                            .tallies
                            .get_key_value(r.spec.as_str())
                            .map_or_else(|| Arc::from(r.spec.as_str()), |(k, _)| k.clone());
                        Some((spec, kind, failure, masked))
                    })
                    .collect();
                (record, detailed)
            }
        };
        PodRender::Rendered(record, outcomes)
    }

    /// Applies one pod's render to the per-spec counters; returns the record to store (`None`:
    /// the pod has no entries or is gone).
    fn apply_render(
        &mut self,
        uid: &str,
        render: PodRender,
        report: &mut PassReport,
    ) -> Option<PodRecord> {
        let (record, outcomes) = match render {
            PodRender::Unknown => return None,
            PodRender::Deleted => {
                let state = self.pods.remove(uid)?;
                let key = pod_key(&state.view);
                self.retally(&key, &state.outcomes, &[]);
                self.maps.release(state.labels);
                self.maps.release(state.annotations);
                self.fields.release(state.extra_meta);
                self.fields.release(state.extra_spec);
                return None;
            }
            PodRender::Rendered(record, outcomes) => (record, outcomes),
        };
        let view = &self.pods.get(uid)?.view;
        for (_, _, failure, _) in &outcomes {
            if let Some((_, label)) = failure {
                *report.render_failures.entry(label).or_default() += 1;
            }
        }
        let key = pod_key(view);
        let old = self
            .pods
            .get_mut(uid)
            .map(|s| std::mem::take(&mut s.outcomes))
            .unwrap_or_default();
        self.retally(&key, &old, &outcomes);
        if let Some(state) = self.pods.get_mut(uid) {
            state.outcomes = outcomes
                .iter()
                .map(|(s, k, _, _)| (s.clone(), *k))
                .collect();
        }
        record
    }

    /// Moves one pod's contribution to the per-spec counters from `old` to `new`.
    fn retally(&mut self, key: &str, old: &[(Arc<str>, Outcome)], new: &[DetailedOutcome]) {
        for (spec, outcome) in old {
            if let Some(tally) = self.tallies.get_mut(spec) {
                count(tally, *outcome, -1);
                tally.failures.remove(key);
                tally.masked_by.remove(key);
            }
        }
        for (spec, outcome, failure, masked) in new {
            let tally = self.tallies.entry(spec.clone()).or_default();
            count(tally, *outcome, 1);
            if let Some(failure) = failure {
                tally.failures.insert(key.to_owned(), failure.clone());
            }
            if let Some(by) = masked {
                tally.masked_by.insert(key.to_owned(), by.clone());
            }
        }
    }

    fn reconcile_statics(&mut self, store: &EntryStore) -> bool {
        let mut declared = Vec::new();
        for (name, state) in &mut self.statics {
            let view = &state.input.view;
            if !handles_class(&self.config, &view.class_name) {
                state.outcome = Some(StaticOutcome::NotOurs);
                continue;
            }
            match render_static_entry(view) {
                Ok(entry) => declared.push((name.clone(), entry)),
                Err(error) => state.outcome = Some(StaticOutcome::Invalid(error)),
            }
        }
        let resolved = resolve_conflicts(declared.iter().map(|(_, d)| d.clone()));
        let mut stored = Vec::new();
        for winner in resolved.entries {
            let id = entry_id(&self.entry_id_prefix, &winner.entry.key());
            if let Some(state) = self.statics.get_mut(&winner.owner.name) {
                state.outcome = Some(StaticOutcome::Set { id: id.clone() });
            }
            stored.push(StoredEntry {
                id,
                entry: winner.entry,
                owner: winner.owner,
            });
        }
        for masked in resolved.masked {
            if let Some(state) = self.statics.get_mut(&masked.owner.name) {
                state.outcome = Some(StaticOutcome::Masked {
                    by: masked.masked_by.to_string(),
                });
            }
        }
        store.set_static_entries(stored)
    }

    /// How a spec sees every known namespace: (selected, ignored).
    pub fn namespace_counts(&self, spec: &CompiledSpec) -> (i64, i64) {
        let mut selected = 0;
        let mut ignored = 0;
        for namespace in self.namespaces.values() {
            match namespace_selection(spec, namespace, &self.config) {
                NamespaceSelection::Selected => selected += 1,
                NamespaceSelection::Ignored => ignored += 1,
                NamespaceSelection::NotSelected => {}
            }
        }
        (selected, ignored)
    }

    /// Masked and failed entries over all specs (for the entries-by-state metric).
    pub fn masked_and_failed(&self) -> (i64, i64) {
        self.tallies.values().fold((0, 0), |(m, f), t| {
            (m + t.entries_masked, f + t.render_failures)
        })
    }
}

fn outcome_kind(outcome: &SpecOutcome) -> Option<Outcome> {
    match outcome {
        SpecOutcome::NamespaceNotSelected
        | SpecOutcome::NamespaceIgnored
        | SpecOutcome::PodNotSelected => None,
        SpecOutcome::FallbackSkipped | SpecOutcome::Failed(EntryError::PodNotScheduled) => {
            Some(Outcome::SelectedOnly)
        }
        SpecOutcome::Set => Some(Outcome::Set),
        SpecOutcome::Masked { .. } => Some(Outcome::Masked),
        SpecOutcome::Failed(_) => Some(Outcome::Failed),
    }
}

fn count(tally: &mut SpecTally, outcome: Outcome, delta: i64) {
    tally.pods_selected += delta;
    match outcome {
        Outcome::Set => tally.entries_to_set += delta,
        Outcome::Masked => tally.entries_masked += delta,
        Outcome::Failed => tally.render_failures += delta,
        Outcome::SelectedOnly => {}
    }
}

fn remove_from_index(index: &mut HashMap<String, BTreeSet<String>>, key: &str, uid: &str) {
    if let Some(uids) = index.get_mut(key) {
        uids.remove(uid);
        if uids.is_empty() {
            index.remove(key);
        }
    }
}
