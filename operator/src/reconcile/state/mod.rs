//! The reconciler's world as plain values: every watched object as a view, the indexes that
//! decide which pods a change touches, and the rendering of dirty pods into the entry store.
//!
//! Nothing here talks to the API server: the watch tasks feed it views, and the benchmark and
//! the unit tests drive it directly. The reconcile pass (rendering dirty pods into the store) is
//! in [`render`].

mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use wimsey_core::entries::{
    ClusterSpiffeIdView, CompiledSpec, EntryError, NamespaceView, NodeView, PodView, RenderConfig,
    StaticEntryView, handles_class, reached_fields, service_dns_names,
};

use super::federation::{FederationInput, FederationOutcome, FederationSet};
use super::kept::{KeptFields, KeptKind, KeptTracker};
use super::resource_meta::ResourceMeta;
use super::shared::{Fields, SharedPool};
use crate::crd::{
    ClusterFederatedTrustDomainStatus, ClusterSPIFFEIDStatus, ClusterStaticEntryStatus,
};
use crate::store::PodRecord;

/// One pod's render, computed without touching the state.
enum PodRender {
    /// Not in the state (nothing to store).
    Unknown,
    /// Marked deleted: drop it and its counters.
    Deleted,
    Rendered(Option<PodRecord>, Vec<DetailedOutcome>),
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
    /// What the backend last reported (the `spire` backend: refusals, reachability).
    pub(crate) backend: crate::backend::Feedback,
}

fn pod_key(view: &PodView) -> String {
    format!("{}/{}", view.namespace, view.name)
}

impl ClusterState {
    /// Takes the backend's report; returns whether it changed (the statuses then change).
    pub fn set_backend_feedback(&mut self, feedback: crate::backend::Feedback) -> bool {
        if self.backend == feedback {
            return false;
        }
        self.backend = feedback;
        true
    }

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
            backend: crate::backend::Feedback::default(),
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
        // A fetched bundle lives in the status: when the poller stores a new one, the federation
        // set (and the bundles pods see) changes too.
        fn fetched(input: &FederationInput) -> Option<(&String, &String)> {
            input.status.as_ref().map(|s| (&s.bundle, &s.trust_domain))
        }
        if let Some(old) = self.federations.get_mut(&name)
            && old.input.spec == input.spec
            && old.input.created == input.created
            && fetched(&old.input) == fetched(&input)
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
}

fn remove_from_index(index: &mut HashMap<String, BTreeSet<String>>, key: &str, uid: &str) {
    if let Some(uids) = index.get_mut(key) {
        uids.remove(uid);
        if uids.is_empty() {
            index.remove(key);
        }
    }
}
