//! The reconcile pass: renders the dirty pods (on several threads when there are many), moves
//! their contributions to the per-spec counters, and hands the records to the backend; the static
//! entries and the federation set when they changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use wimsey_core::entries::{
    CompiledSpec, EntryError, NamespaceSelection, NodeData, PodView, SpecOutcome, handles_class,
    namespace_selection, render_pod_entries_on, render_static_entry, resolve_conflicts,
};

use super::super::federation::{FederationInput, build_federation_set};
use super::super::ids::entry_id;
use super::{
    ClusterState, DetailedOutcome, Dirty, Outcome, PassReport, PodRender, SpecTally, StaticOutcome,
    pod_key,
};
use crate::backend::Backend;
use crate::store::{PodRecord, StoredEntry};

impl ClusterState {
    // ---- the pass

    /// Takes what is pending (for a caller that wants to see it), leaving nothing pending.
    pub fn take_pending(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Reconciles everything pending into `backend`.
    pub fn reconcile<B: Backend + ?Sized>(&mut self, backend: &B) -> PassReport {
        let dirty = self.take_pending();
        self.reconcile_dirty(dirty, backend)
    }

    /// Reconciles `dirty` into `backend`: renders each dirty pod once, and the static entries
    /// and the federation set when they changed.
    pub fn reconcile_dirty<B: Backend + ?Sized>(
        &mut self,
        mut dirty: Dirty,
        backend: &B,
    ) -> PassReport {
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
        report.store_writes = backend.apply_pods(writes).pods_changed;
        if dirty.statics {
            report.statics_changed = self.reconcile_statics(backend);
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
        // Each node's template values and parent ID once per pass, not once per pod.
        let mut nodes: HashMap<&str, NodeData> = HashMap::new();
        for uid in uids {
            let Some(name) = self.pods.get(uid).map(|p| p.view.node_name.as_str()) else {
                continue;
            };
            if !nodes.contains_key(name)
                && let Some(node) = self.nodes.get(name)
            {
                nodes.insert(name, NodeData::new(node, &self.config));
            }
        }
        let nodes = &nodes;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(uids.len() / PODS_PER_THREAD)
            .max(1);
        if threads == 1 {
            return uids.iter().map(|uid| self.render_pod(uid, nodes)).collect();
        }
        let chunk = uids.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = uids
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|uid| self.render_pod(uid, nodes))
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
    fn render_pod(&self, uid: &str, nodes: &HashMap<&str, NodeData>) -> PodRender {
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
                let node = nodes.get(view.node_name.as_str());
                let rendered =
                    render_pod_entries_on(view, node, namespace, &self.compiled, &self.config);
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

    fn reconcile_statics<B: Backend + ?Sized>(&mut self, backend: &B) -> bool {
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
        backend.apply_static_entries(stored)
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
