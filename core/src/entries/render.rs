//! ClusterSPIFFEID specs compiled once, rendered per pod.

use std::time::Duration;

use super::EntryError;
use super::data::{
    node_meta_value, node_spec_value, parent_template_data_on, pod_template_data_on,
};
use super::duration::parse_go_duration;
use super::entry::{
    DeclaredEntry, Entry, EntryOwner, MaskedEntry, OwnerKind, Selector, resolve_conflicts,
};
use super::selector::LabelSelector;
use super::views::{
    ClusterSpiffeIdView, NamespaceView, NodeView, PodView, RenderConfig, handles_class,
};
use crate::dns_name::validate_dns_name;
use crate::reserved::check_workload_id;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
use crate::template::{FieldTree, Template, Value};

/// A ClusterSPIFFEID whose templates are parsed and whose fields are validated: what the
/// admission webhook of spire-controller-manager checks, done once per spec generation.
#[derive(Debug, Clone)]
pub struct CompiledSpec {
    pub owner: EntryOwner,
    pub class_name: String,
    pub fallback: bool,
    spiffe_id: Template,
    dns_names: Vec<Template>,
    workload_selectors: Vec<Template>,
    federates_with: Vec<TrustDomain>,
    namespace_selector: Option<LabelSelector>,
    pod_selector: Option<LabelSelector>,
    ttl: Duration,
    jwt_ttl: Duration,
    admin: bool,
    downstream: bool,
    auto_populate_dns_names: bool,
    hint: String,
}

fn parse_template(field: String, source: &str) -> Result<Template, EntryError> {
    Template::parse(&field, source).map_err(|source| EntryError::InvalidTemplate { field, source })
}

pub(super) fn parse_duration_field(field: &str, value: &str) -> Result<Duration, EntryError> {
    if value.is_empty() {
        return Ok(Duration::ZERO);
    }
    parse_go_duration(value).map_err(|reason| EntryError::InvalidDuration {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    })
}

pub(super) fn parse_federates_with(values: &[String]) -> Result<Vec<TrustDomain>, EntryError> {
    values
        .iter()
        .map(|value| {
            TrustDomain::from_name_or_id(value).map_err(|source| EntryError::InvalidFederatesWith {
                value: value.clone(),
                source,
            })
        })
        .collect()
}

impl CompiledSpec {
    /// Parses every template and validates selectors, federatesWith and durations.
    pub fn compile(view: &ClusterSpiffeIdView) -> Result<Self, EntryError> {
        if view.spiffe_id_template.is_empty() {
            return Err(EntryError::EmptySpiffeIdTemplate);
        }
        let spiffe_id = parse_template("spiffeIDTemplate".to_owned(), &view.spiffe_id_template)?;
        let dns_names = view
            .dns_name_templates
            .iter()
            .enumerate()
            .map(|(i, src)| parse_template(format!("dnsNameTemplates[{i}]"), src))
            .collect::<Result<_, _>>()?;
        let workload_selectors = view
            .workload_selector_templates
            .iter()
            .enumerate()
            .map(|(i, src)| parse_template(format!("workloadSelectorTemplates[{i}]"), src))
            .collect::<Result<_, _>>()?;
        if let Some(selector) = &view.namespace_selector {
            selector.validate("namespaceSelector")?;
        }
        if let Some(selector) = &view.pod_selector {
            selector.validate("podSelector")?;
        }
        Ok(Self {
            owner: EntryOwner {
                kind: OwnerKind::ClusterSpiffeId,
                name: view.name.clone(),
                uid: view.uid.clone(),
                creation_timestamp: view.creation_timestamp,
                deletion_timestamp: view.deletion_timestamp,
            },
            class_name: view.class_name.clone(),
            fallback: view.fallback,
            spiffe_id,
            dns_names,
            workload_selectors,
            federates_with: parse_federates_with(&view.federates_with)?,
            namespace_selector: view.namespace_selector.clone(),
            pod_selector: view.pod_selector.clone(),
            ttl: parse_duration_field("ttl", &view.ttl)?,
            jwt_ttl: parse_duration_field("jwtTtl", &view.jwt_ttl)?,
            admin: view.admin,
            downstream: view.downstream,
            auto_populate_dns_names: view.auto_populate_dns_names,
            hint: view.hint.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.owner.name
    }

    /// Adds to `tree` every part of the template data this spec's templates can reach.
    pub fn reach_into(&self, tree: &mut FieldTree) {
        self.spiffe_id.reach_into(tree);
        for template in self.dns_names.iter().chain(&self.workload_selectors) {
            template.reach_into(tree);
        }
    }

    /// The namespace selector alone (a missing selector selects every namespace).
    pub fn selects_namespace(&self, namespace: &NamespaceView) -> bool {
        self.namespace_selector
            .as_ref()
            .is_none_or(|s| s.matches(&namespace.labels))
    }

    /// The pod selector alone (a missing selector selects every pod).
    pub fn selects_pod(&self, pod: &PodView) -> bool {
        self.pod_selector
            .as_ref()
            .is_none_or(|s| s.matches(&pod.labels))
    }

    /// Renders this spec's entry for one pod, given the pod's template data and parent ID.
    fn render(
        &self,
        pod: &PodView,
        data: &Value,
        parent_id: &SpiffeId,
        config: &RenderConfig,
    ) -> Result<Entry, EntryError> {
        let spiffe_id = render_id("spiffeIDTemplate", &self.spiffe_id, data)?;
        check_workload_id(&spiffe_id, &config.trust_domain).map_err(|source| {
            EntryError::InvalidSpiffeId {
                field: "spiffeIDTemplate".to_owned(),
                value: spiffe_id.to_string(),
                source,
            }
        })?;

        let mut selectors = Vec::with_capacity(1 + self.workload_selectors.len());
        selectors.push(Selector::new("k8s", &format!("pod-uid:{}", pod.uid)));
        for template in &self.workload_selectors {
            selectors.push(Selector::parse(&render_field(template, data)?)?);
        }

        let mut dns_names: Vec<String> = Vec::with_capacity(self.dns_names.len());
        for template in &self.dns_names {
            let name = render_field(template, data)?;
            if !dns_names.contains(&name) {
                dns_names.push(name);
            }
        }
        if self.auto_populate_dns_names {
            let mut service_names = pod.service_dns_names.clone();
            service_names.sort();
            service_names.dedup();
            for name in service_names {
                if !dns_names.contains(&name) {
                    dns_names.push(name);
                }
            }
        }
        for name in &dns_names {
            validate_dns_name(name).map_err(|reason| EntryError::InvalidDnsName {
                value: name.clone(),
                reason,
            })?;
        }

        Ok(Entry {
            spiffe_id,
            parent_id: parent_id.clone(),
            selectors,
            x509_svid_ttl: self.ttl,
            jwt_svid_ttl: self.jwt_ttl,
            federates_with: self.federates_with.clone(),
            admin: self.admin,
            downstream: self.downstream,
            dns_names,
            hint: self.hint.clone(),
            // ClusterSPIFFEID has no storeSVID.
            store_svid: false,
        })
    }
}

fn render_field(template: &Template, data: &Value) -> Result<String, EntryError> {
    template.render(data).map_err(|source| EntryError::Render {
        field: template.name().to_owned(),
        source,
    })
}

fn render_id(field: &str, template: &Template, data: &Value) -> Result<SpiffeId, EntryError> {
    let rendered = render_field(template, data)?;
    SpiffeId::parse(&rendered).map_err(|source| EntryError::InvalidSpiffeId {
        field: field.to_owned(),
        value: rendered,
        source,
    })
}

/// How a spec sees a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceSelection {
    NotSelected,
    /// Selected, but in `ignoreNamespaces`: counted as ignored, its pods get no entries.
    Ignored,
    Selected,
}

/// The namespace selector first, then the ignore list, as spire-controller-manager counts
/// `namespacesSelected` and `namespacesIgnored`.
pub fn namespace_selection(
    spec: &CompiledSpec,
    namespace: &NamespaceView,
    config: &RenderConfig,
) -> NamespaceSelection {
    if !spec.selects_namespace(namespace) {
        NamespaceSelection::NotSelected
    } else if config.ignored_namespaces.is_ignored(&namespace.name) {
        NamespaceSelection::Ignored
    } else {
        NamespaceSelection::Selected
    }
}

/// What one spec did for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecOutcome {
    NamespaceNotSelected,
    NamespaceIgnored,
    PodNotSelected,
    /// A fallback spec, and a non-fallback spec already rendered an entry for the pod.
    FallbackSkipped,
    /// The entry is declared.
    Set,
    /// The entry has the same key as an entry of an older resource.
    Masked {
        by: EntryOwner,
    },
    Failed(EntryError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecResult {
    pub spec: String,
    pub outcome: SpecOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub spec: String,
    pub error: EntryError,
}

/// Everything the specs produced for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEntries {
    /// The entries to set, one per key.
    pub entries: Vec<DeclaredEntry>,
    pub masked: Vec<MaskedEntry>,
    /// Render failures, one per failing spec.
    pub errors: Vec<SpecError>,
    /// One result per spec of this instance's class, in the order the specs were given.
    pub results: Vec<SpecResult>,
}

/// Renders the entries `specs` declare for `pod`, with spire-controller-manager's rules:
/// class filtering, namespace and pod selectors, ignored namespaces, fallback per pod (fallback
/// specs only when no non-fallback spec rendered an entry), and oldest-wins masking among the
/// pod's own entries. `node` is the node named by the pod's `spec.nodeName`, if known.
pub fn render_pod_entries(
    pod: &PodView,
    node: Option<&NodeView>,
    namespace: &NamespaceView,
    specs: &[CompiledSpec],
    config: &RenderConfig,
) -> PodEntries {
    let node = node.map(|node| NodeData::new(node, config));
    render_pod_entries_on(pod, node.as_ref(), namespace, specs, config)
}

/// What rendering needs of a node, the same for every pod on it: its `.NodeMeta` and
/// `.NodeSpec` and the rendered parent ID. A pass over many pods builds it once per node
/// instead of once per pod (100 nodes against 50k pods).
#[derive(Debug, Clone)]
pub struct NodeData {
    name: String,
    meta: Value,
    spec: Value,
    parent_id: Result<SpiffeId, EntryError>,
}

impl NodeData {
    pub fn new(node: &NodeView, config: &RenderConfig) -> Self {
        let meta = node_meta_value(node);
        let spec = node_spec_value(node);
        let parent_id = parent_id(
            config,
            parent_template_data_on(config, meta.clone(), spec.clone()),
        );
        Self {
            name: node.name.clone(),
            meta,
            spec,
            parent_id,
        }
    }
}

/// [`render_pod_entries`] with the node's data already built (see [`NodeData`]).
pub fn render_pod_entries_on(
    pod: &PodView,
    node: Option<&NodeData>,
    namespace: &NamespaceView,
    specs: &[CompiledSpec],
    config: &RenderConfig,
) -> PodEntries {
    let mut outcomes: Vec<Option<SpecOutcome>> = vec![None; specs.len()];
    // Non-fallback specs first, each group in the given order (a stable sort).
    let mut order: Vec<usize> = (0..specs.len())
        .filter(|&i| handles_class(config, &specs[i].class_name))
        .collect();
    order.sort_by_key(|&i| specs[i].fallback);

    let mut shared: Option<Result<(Value, SpiffeId), EntryError>> = None;
    let mut rendered_non_fallback = false;
    let mut declared: Vec<(usize, DeclaredEntry)> = Vec::new();
    for index in order {
        let spec = &specs[index];
        let outcome = match namespace_selection(spec, namespace, config) {
            NamespaceSelection::NotSelected => Some(SpecOutcome::NamespaceNotSelected),
            NamespaceSelection::Ignored => Some(SpecOutcome::NamespaceIgnored),
            NamespaceSelection::Selected if !spec.selects_pod(pod) => {
                Some(SpecOutcome::PodNotSelected)
            }
            NamespaceSelection::Selected if spec.fallback && rendered_non_fallback => {
                Some(SpecOutcome::FallbackSkipped)
            }
            NamespaceSelection::Selected => {
                let shared = shared.get_or_insert_with(|| pod_data_and_parent(pod, node, config));
                match shared
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|(data, parent_id)| spec.render(pod, data, parent_id, config))
                {
                    Ok(entry) => {
                        rendered_non_fallback |= !spec.fallback;
                        declared.push((
                            index,
                            DeclaredEntry {
                                entry,
                                owner: spec.owner.clone(),
                            },
                        ));
                        None
                    }
                    Err(error) => Some(SpecOutcome::Failed(error)),
                }
            }
        };
        outcomes[index] = outcome;
    }

    // Within one pod a key can repeat only across specs; the owner identifies the spec.
    let spec_of = |owner: &EntryOwner| {
        declared
            .iter()
            .find(|(_, d)| &d.owner == owner)
            .map(|(i, _)| *i)
    };
    let resolved = resolve_conflicts(declared.iter().map(|(_, d)| d.clone()));
    for entry in &resolved.entries {
        if let Some(i) = spec_of(&entry.owner) {
            outcomes[i] = Some(SpecOutcome::Set);
        }
    }
    for masked in &resolved.masked {
        if let Some(i) = spec_of(&masked.owner) {
            outcomes[i] = Some(SpecOutcome::Masked {
                by: masked.masked_by.clone(),
            });
        }
    }

    let mut result = PodEntries {
        entries: resolved.entries,
        masked: resolved.masked,
        ..PodEntries::default()
    };
    for (spec, outcome) in specs.iter().zip(outcomes) {
        let Some(outcome) = outcome else { continue };
        if let SpecOutcome::Failed(error) = &outcome {
            result.errors.push(SpecError {
                spec: spec.name().to_owned(),
                error: error.clone(),
            });
        }
        result.results.push(SpecResult {
            spec: spec.name().to_owned(),
            outcome,
        });
    }
    result
}

/// The pod's template data and parent ID, the same for every spec.
fn pod_data_and_parent(
    pod: &PodView,
    node: Option<&NodeData>,
    config: &RenderConfig,
) -> Result<(Value, SpiffeId), EntryError> {
    if pod.node_name.is_empty() {
        return Err(EntryError::PodNotScheduled);
    }
    let node = node
        .filter(|node| node.name == pod.node_name)
        .ok_or_else(|| EntryError::NodeNotFound(pod.node_name.clone()))?;
    let parent_id = node.parent_id.clone()?;
    let data = pod_template_data_on(config, pod, node.meta.clone(), node.spec.clone());
    Ok((data, parent_id))
}

/// The parent ID rendered from a node's parent template data; it must be in the trust domain.
fn parent_id(config: &RenderConfig, data: Value) -> Result<SpiffeId, EntryError> {
    let parent_id = render_id("parentIDTemplate", &config.parent_id_template, &data)?;
    if !parent_id.is_member_of(&config.trust_domain) {
        return Err(EntryError::InvalidSpiffeId {
            field: "parentIDTemplate".to_owned(),
            value: parent_id.to_string(),
            source: SpiffeIdError::NotInTrustDomain {
                id: parent_id.to_string(),
                trust_domain: config.trust_domain.name().to_owned(),
            },
        });
    }
    Ok(parent_id)
}

/// Every part of the template data that `specs` and the parent ID template can reach: what the
/// operator must keep of each pod and node (the rest is never read).
pub fn reached_fields<'a>(
    specs: impl IntoIterator<Item = &'a CompiledSpec>,
    config: &RenderConfig,
) -> FieldTree {
    let mut tree = FieldTree::new();
    config.parent_id_template.reach_into(&mut tree);
    for spec in specs {
        spec.reach_into(&mut tree);
    }
    tree
}
