//! Registration entries from ClusterSPIFFEIDs and ClusterStaticEntries, with
//! spire-controller-manager's rules, as plain functions over plain values.
//!
//! The operator turns Kubernetes objects into the views here ([`PodView`], [`NodeView`],
//! [`NamespaceView`], [`ClusterSpiffeIdView`], [`StaticEntryView`]); everything after that —
//! selection, templating, validation, fallback, masking — happens here, with no kube types and no
//! I/O, so every rule is a unit test.
//!
//! The rules, as spire-controller-manager applies them:
//! - one entry per selected pod per ClusterSPIFFEID, selectors `k8s:pod-uid:<uid>` then the
//!   rendered `workloadSelectorTemplates`, parent ID from the process-wide parent template;
//! - the SPIFFE ID must be a workload ID in the configured trust domain;
//! - `fallback` specs apply only to pods no non-fallback spec rendered an entry for;
//! - entries with the same key (SPIFFE ID, parent ID, sorted selectors) conflict: the oldest
//!   resource wins, the others are masked;
//! - `className` picks which specs this instance handles; ignored namespaces get no pod entries.

mod data;
mod dns;
mod duration;
mod entry;
mod render;
mod selector;
mod static_entry;
mod views;

#[cfg(test)]
mod tests;

pub use data::{parent_template_data, pod_template_data};
pub use dns::service_dns_names;
pub use duration::parse_go_duration;
pub use entry::{
    DeclaredEntry, Entry, EntryKey, EntryOwner, MaskedEntry, OwnerKind, Resolved, Selector,
    resolve_conflicts,
};
pub use render::{
    CompiledSpec, NamespaceSelection, NodeData, PodEntries, SpecError, SpecOutcome, SpecResult,
    namespace_selection, reached_fields, render_pod_entries, render_pod_entries_on,
};
pub use selector::{LabelSelector, LabelSelectorOperator, LabelSelectorRequirement};
pub use static_entry::render_static_entry;
pub use views::{
    ClusterSpiffeIdView, DEFAULT_PARENT_ID_TEMPLATE, ExactNamespaces, NamespaceFilter,
    NamespaceView, NoIgnoredNamespaces, NodeView, PodView, RenderConfig, StaticEntryView,
    handles_class,
};

use crate::spiffe_id::SpiffeIdError;
use crate::template::TemplateError;

/// Why a spec, a static entry or one pod's entry could not be produced.
///
/// The first group is found when a spec is compiled (what admission could have caught); the
/// second only when rendering for a particular pod. [`EntryError::is_spec_error`] tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("spiffeIDTemplate is empty")]
    EmptySpiffeIdTemplate,
    #[error("failed to parse {field}: {source}")]
    InvalidTemplate {
        field: String,
        source: TemplateError,
    },
    #[error("invalid {field}: {reason}")]
    InvalidLabelSelector { field: String, reason: String },
    #[error("invalid federatesWith value {value:?}: {source}")]
    InvalidFederatesWith {
        value: String,
        source: SpiffeIdError,
    },
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidDuration {
        field: String,
        value: String,
        reason: String,
    },
    #[error("failed to render {field}: {source}")]
    Render {
        field: String,
        source: TemplateError,
    },
    #[error("invalid {field} {value:?}: {source}")]
    InvalidSpiffeId {
        field: String,
        value: String,
        source: SpiffeIdError,
    },
    #[error("invalid selector {value:?}: {reason}")]
    InvalidSelector { value: String, reason: &'static str },
    #[error("invalid DNS name {value:?}: {reason}")]
    InvalidDnsName { value: String, reason: &'static str },
    #[error("pod is not scheduled to a node yet")]
    PodNotScheduled,
    #[error("node {0:?} not found")]
    NodeNotFound(String),
}

impl EntryError {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EntryError::EmptySpiffeIdTemplate => "empty_spiffe_id_template",
            EntryError::InvalidTemplate { .. } => "invalid_template",
            EntryError::InvalidLabelSelector { .. } => "invalid_label_selector",
            EntryError::InvalidFederatesWith { .. } => "invalid_federates_with",
            EntryError::InvalidDuration { .. } => "invalid_duration",
            EntryError::Render { .. } => "render",
            EntryError::InvalidSpiffeId { .. } => "invalid_spiffe_id",
            EntryError::InvalidSelector { .. } => "invalid_selector",
            EntryError::InvalidDnsName { .. } => "invalid_dns_name",
            EntryError::PodNotScheduled => "pod_not_scheduled",
            EntryError::NodeNotFound(_) => "node_not_found",
        }
    }

    /// True when the spec itself is wrong (the same for every pod), false when rendering failed
    /// for one pod's data.
    pub fn is_spec_error(&self) -> bool {
        matches!(
            self,
            EntryError::EmptySpiffeIdTemplate
                | EntryError::InvalidTemplate { .. }
                | EntryError::InvalidLabelSelector { .. }
                | EntryError::InvalidFederatesWith { .. }
                | EntryError::InvalidDuration { .. }
        )
    }
}
