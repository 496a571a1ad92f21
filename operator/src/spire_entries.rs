//! A client of the SPIRE Server's entry API (`spire.api.server.entry.v1.Entry`) over the
//! server's admin Unix socket: paged listing, and creates, updates and deletes in batches of a
//! bounded size, each item's outcome kept apart so that one refused entry is reported on the
//! resource that caused it and the rest go through. The spire backend is built on it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::spire_api::{admin_channel, count, in_batches};

use tonic::Code;
use tonic::transport::Channel;
use wimsey_core::TrustDomain;
use wimsey_core::entries::{Entry, Selector as CoreSelector};
use wimsey_core::entry_sync::{ChangedFields, Stored};
use wimsey_proto::spire::entry::v1::entry_client::EntryClient;
use wimsey_proto::spire::entry::v1::{
    BatchCreateEntryRequest, BatchDeleteEntryRequest, BatchUpdateEntryRequest, CountEntriesRequest,
    EntryMask, ItemStatus, ListEntriesRequest, RegistrationEntry, Selector, SpiffeId,
};

pub use crate::spire_api::{BatchLimits, SpireApiError};

/// What became of one item of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the entry as the server holds it now (for a delete, only its ID).
    Done(RegistrationEntry),
    /// Create only: an entry with the same SPIFFE ID, parent ID and selectors exists (it is this).
    AlreadyExists(RegistrationEntry),
    /// Refused, with SPIRE's code and message (e.g. InvalidArgument for a malformed selector).
    Refused { code: Code, message: String },
}

impl Outcome {
    fn from_result(status: Option<ItemStatus>, entry: Option<RegistrationEntry>) -> Self {
        let status = status.unwrap_or_default();
        let code = Code::from_i32(status.code);
        match (code, entry) {
            (Code::Ok, Some(entry)) => Outcome::Done(entry),
            (Code::AlreadyExists, Some(entry)) => Outcome::AlreadyExists(entry),
            (Code::Ok, None) => Outcome::Done(RegistrationEntry::default()),
            (code, _) => Outcome::Refused {
                code,
                message: status.message,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct SpireEntries {
    client: EntryClient<Channel>,
    limits: BatchLimits,
    calls: Arc<CallCounts>,
}

/// Calls made to the SPIRE Server, by RPC (a ListEntries page counts once).
#[derive(Debug, Default)]
pub struct CallCounts {
    pub list_entries: AtomicU64,
    pub batch_create: AtomicU64,
    pub batch_update: AtomicU64,
    pub batch_delete: AtomicU64,
}

impl CallCounts {
    /// (ListEntries, BatchCreateEntry, BatchUpdateEntry, BatchDeleteEntry) so far.
    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.list_entries.load(Ordering::Relaxed),
            self.batch_create.load(Ordering::Relaxed),
            self.batch_update.load(Ordering::Relaxed),
            self.batch_delete.load(Ordering::Relaxed),
        ]
    }
}

impl SpireEntries {
    /// A channel to the socket at `path`, connected lazily: a missing or refusing socket shows
    /// up as an Unavailable call (see [`SpireApiError::is_unavailable`]), and the channel
    /// reconnects by itself when the server is back.
    pub fn connect_lazy(path: &Path, limits: BatchLimits) -> Self {
        let channel = admin_channel(path);
        Self {
            client: EntryClient::new(channel),
            limits,
            calls: Arc::default(),
        }
    }

    /// The calls this client (and its clones) made.
    pub fn calls(&self) -> &CallCounts {
        &self.calls
    }

    pub async fn count(&self) -> Result<i32, SpireApiError> {
        let response = self
            .client
            .clone()
            .count_entries(CountEntriesRequest {})
            .await
            .map_err(|status| SpireApiError::Call {
                call: "CountEntries",
                status,
            })?;
        Ok(response.into_inner().count)
    }

    /// Every entry, page by page.
    pub async fn list_all(&self) -> Result<Vec<RegistrationEntry>, SpireApiError> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            count(&self.calls.list_entries);
            let page = self
                .client
                .clone()
                .list_entries(ListEntriesRequest {
                    filter: None,
                    output_mask: None,
                    page_size: self.limits.page,
                    page_token,
                })
                .await
                .map_err(|status| SpireApiError::Call {
                    call: "ListEntries",
                    status,
                })?
                .into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(entries);
            }
            page_token = page.next_page_token;
        }
    }

    /// Creates `entries` (an entry's `id`, when set, is kept: that is how ownership is marked),
    /// one outcome per entry, in order.
    pub async fn create(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Result<Vec<Outcome>, SpireApiError> {
        in_batches(entries, self.limits.create, "BatchCreateEntry", |chunk| {
            count(&self.calls.batch_create);
            let mut client = self.client.clone();
            async move {
                let response = client
                    .batch_create_entry(BatchCreateEntryRequest {
                        entries: chunk,
                        output_mask: None,
                    })
                    .await?;
                Ok(response
                    .into_inner()
                    .results
                    .into_iter()
                    .map(|r| Outcome::from_result(r.status, r.entry))
                    .collect())
            }
        })
        .await
    }

    /// Sets the fields `mask` names on each entry (by ID), one outcome per entry, in order.
    pub async fn update(
        &self,
        entries: Vec<RegistrationEntry>,
        mask: EntryMask,
    ) -> Result<Vec<Outcome>, SpireApiError> {
        in_batches(entries, self.limits.update, "BatchUpdateEntry", |chunk| {
            count(&self.calls.batch_update);
            let mut client = self.client.clone();
            async move {
                let response = client
                    .batch_update_entry(BatchUpdateEntryRequest {
                        entries: chunk,
                        input_mask: Some(mask),
                        output_mask: None,
                    })
                    .await?;
                Ok(response
                    .into_inner()
                    .results
                    .into_iter()
                    .map(|r| Outcome::from_result(r.status, r.entry))
                    .collect())
            }
        })
        .await
    }

    /// Deletes the entries with these IDs, one outcome per ID, in order (NotFound is a refusal:
    /// someone else deleted it).
    pub async fn delete(&self, ids: Vec<String>) -> Result<Vec<Outcome>, SpireApiError> {
        in_batches(ids, self.limits.delete, "BatchDeleteEntry", |chunk| {
            count(&self.calls.batch_delete);
            let mut client = self.client.clone();
            async move {
                let response = client
                    .batch_delete_entry(BatchDeleteEntryRequest { ids: chunk })
                    .await?;
                Ok(response
                    .into_inner()
                    .results
                    .into_iter()
                    .map(|r| match Outcome::from_result(r.status, None) {
                        Outcome::Done(_) => Outcome::Done(RegistrationEntry {
                            id: r.id,
                            ..RegistrationEntry::default()
                        }),
                        other => other,
                    })
                    .collect())
            }
        })
        .await
    }
}

/// Our view of a SPIRE entry, for planning (see [`wimsey_core::entry_sync`]); an entry whose IDs,
/// selectors or trust domains do not parse is reported with why.
pub fn to_stored(entry: &RegistrationEntry) -> Result<Stored, String> {
    let id = |id: &Option<SpiffeId>, what: &str| {
        let id = id.as_ref().ok_or_else(|| format!("no {what}"))?;
        wimsey_core::SpiffeId::parse(&format!("spiffe://{}{}", id.trust_domain, id.path))
            .map_err(|e| format!("{what}: {e}"))
    };
    let federates_with = entry
        .federates_with
        .iter()
        .map(|td| TrustDomain::new(td).map_err(|e| format!("federates_with {td:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let seconds = |s: i32| Duration::from_secs(u64::try_from(s).unwrap_or_default());
    Ok(Stored {
        id: entry.id.clone(),
        entry: Entry {
            spiffe_id: id(&entry.spiffe_id, "spiffe_id")?,
            parent_id: id(&entry.parent_id, "parent_id")?,
            selectors: entry
                .selectors
                .iter()
                .map(|s| CoreSelector::new(&s.r#type, &s.value))
                .collect(),
            x509_svid_ttl: seconds(entry.x509_svid_ttl),
            jwt_svid_ttl: seconds(entry.jwt_svid_ttl),
            federates_with,
            admin: entry.admin,
            downstream: entry.downstream,
            dns_names: entry.dns_names.clone(),
            hint: entry.hint.clone(),
            store_svid: entry.store_svid,
        },
    })
}

/// The SPIRE entry for a planned one.
pub fn from_stored(stored: &Stored) -> RegistrationEntry {
    let entry = &stored.entry;
    let id = |id: &wimsey_core::SpiffeId| SpiffeId {
        trust_domain: id.trust_domain_name().to_owned(),
        path: id.path().to_owned(),
    };
    let seconds = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    RegistrationEntry {
        id: stored.id.clone(),
        spiffe_id: Some(id(&entry.spiffe_id)),
        parent_id: Some(id(&entry.parent_id)),
        selectors: entry
            .selectors
            .iter()
            .map(|s| Selector {
                r#type: s.kind.clone(),
                value: s.value.clone(),
            })
            .collect(),
        x509_svid_ttl: seconds(entry.x509_svid_ttl),
        jwt_svid_ttl: seconds(entry.jwt_svid_ttl),
        federates_with: entry
            .federates_with
            .iter()
            .map(|td| td.name().to_owned())
            .collect(),
        admin: entry.admin,
        downstream: entry.downstream,
        dns_names: entry.dns_names.clone(),
        hint: entry.hint.clone(),
        store_svid: entry.store_svid,
        ..RegistrationEntry::default()
    }
}

/// The update mask for the fields a plan changes.
pub fn mask(changed: ChangedFields) -> EntryMask {
    EntryMask {
        x509_svid_ttl: changed.x509_svid_ttl,
        jwt_svid_ttl: changed.jwt_svid_ttl,
        federates_with: changed.federates_with,
        admin: changed.admin,
        downstream: changed.downstream,
        dns_names: changed.dns_names,
        store_svid: changed.store_svid,
        hint: changed.hint,
        ..EntryMask::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> Option<ItemStatus> {
        Some(ItemStatus {
            code: code as i32,
            message: message.into(),
        })
    }

    #[test]
    fn each_item_status_becomes_its_outcome() {
        let entry = RegistrationEntry {
            id: "wimsey.1".into(),
            ..RegistrationEntry::default()
        };
        assert_eq!(
            Outcome::from_result(status(Code::Ok, ""), Some(entry.clone())),
            Outcome::Done(entry.clone())
        );
        assert_eq!(
            Outcome::from_result(status(Code::AlreadyExists, "similar"), Some(entry.clone())),
            Outcome::AlreadyExists(entry)
        );
        assert_eq!(
            Outcome::from_result(status(Code::InvalidArgument, "bad selector"), None),
            Outcome::Refused {
                code: Code::InvalidArgument,
                message: "bad selector".into()
            }
        );
        // a missing status is OK (proto3 default), never a panic
        assert!(matches!(Outcome::from_result(None, None), Outcome::Done(_)));
    }

    #[test]
    fn entries_convert_both_ways() {
        let spire = RegistrationEntry {
            id: "wimsey.1".into(),
            spiffe_id: Some(SpiffeId {
                trust_domain: "example.org".into(),
                path: "/ns/a/sa/b".into(),
            }),
            parent_id: Some(SpiffeId {
                trust_domain: "example.org".into(),
                path: "/spire/agent/k8s_psat/c/n".into(),
            }),
            selectors: vec![Selector {
                r#type: "k8s".into(),
                value: "pod-uid:1".into(),
            }],
            x509_svid_ttl: 3600,
            federates_with: vec!["peer.org".into()],
            dns_names: vec!["b.a.svc".into()],
            ..RegistrationEntry::default()
        };
        let stored = to_stored(&spire).unwrap();
        assert_eq!(stored.entry.x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(from_stored(&stored), spire);
        let broken = RegistrationEntry {
            federates_with: vec!["Not A Domain".into()],
            ..spire
        };
        assert!(to_stored(&broken).unwrap_err().contains("federates_with"));
    }
}
