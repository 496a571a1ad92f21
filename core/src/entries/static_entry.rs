//! ClusterStaticEntry: a literal entry, validated as spire-controller-manager renders it.

use super::EntryError;
use super::entry::{DeclaredEntry, Entry, EntryOwner, OwnerKind, Selector};
use super::render::{parse_duration_field, parse_federates_with};
use super::views::StaticEntryView;
use crate::dns_name::validate_dns_name;
use crate::reserved::check_not_reserved;
use crate::spiffe_id::SpiffeId;

/// Validates a ClusterStaticEntry into an entry. Both IDs must parse as SPIFFE IDs in any trust
/// domain (static entries are for off-cluster workloads, downstream servers and node aliases);
/// the `spiffeID` must not be one of the system's own ([`crate::reserved`]), in any trust domain.
/// The `parentID` may be (an entry parented to a node or to `/spire/server` is the usual case).
/// Class filtering is the caller's ([`super::handles_class`]); ignored namespaces do not apply.
pub fn render_static_entry(view: &StaticEntryView) -> Result<DeclaredEntry, EntryError> {
    let parse_id = |field: &str, value: &str| {
        SpiffeId::parse(value).map_err(|source| EntryError::InvalidSpiffeId {
            field: field.to_owned(),
            value: value.to_owned(),
            source,
        })
    };
    for name in &view.dns_names {
        // SPIRE refuses such an entry at creation; refuse it here, where it can be reported.
        validate_dns_name(name).map_err(|reason| EntryError::InvalidDnsName {
            value: name.clone(),
            reason,
        })?;
    }
    let spiffe_id = parse_id("spiffeID", &view.spiffe_id)?;
    check_not_reserved(&spiffe_id).map_err(|source| EntryError::InvalidSpiffeId {
        field: "spiffeID".to_owned(),
        value: view.spiffe_id.clone(),
        source,
    })?;
    let entry = Entry {
        spiffe_id,
        parent_id: parse_id("parentID", &view.parent_id)?,
        selectors: view
            .selectors
            .iter()
            .map(|s| Selector::parse(s))
            .collect::<Result<_, _>>()?,
        x509_svid_ttl: parse_duration_field("x509SVIDTTL", &view.x509_svid_ttl)?,
        jwt_svid_ttl: parse_duration_field("jwtSVIDTTL", &view.jwt_svid_ttl)?,
        federates_with: parse_federates_with(&view.federates_with)?,
        admin: view.admin,
        downstream: view.downstream,
        dns_names: view.dns_names.clone(),
        hint: view.hint.clone(),
        store_svid: view.store_svid,
    };
    Ok(DeclaredEntry {
        entry,
        owner: EntryOwner {
            kind: OwnerKind::ClusterStaticEntry,
            name: view.name.clone(),
            uid: view.uid.clone(),
            creation_timestamp: view.creation_timestamp,
            deletion_timestamp: view.deletion_timestamp,
        },
    })
}
