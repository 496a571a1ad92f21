//! Which custom resource an input or an outcome belongs to.

/// Identity of a custom resource for status and events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceMeta {
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    /// `metadata.resourceVersion`: tells a new write from an old one with the same content.
    pub resource_version: Option<String>,
}
