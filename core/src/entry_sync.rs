//! What to create, update and delete in a SPIRE Server so that the entries a registrar owns become
//! the desired ones, with spire-controller-manager's rules, so that wimsey can take over from it
//! without churn: an entry is identified by its key (SPIFFE ID, parent ID, selectors, as SPIRE's
//! own uniqueness rule); an owned entry whose key is desired keeps its ID and is updated only where
//! a compared field differs; owned entries no longer desired (and duplicates of a key) are
//! deleted; entries it does not own are never touched. Pure: the spire backend does the calls.

use std::collections::{BTreeMap, BTreeSet};

use crate::entries::{Entry, EntryKey};

/// An entry the server holds, with its ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    pub entry: Entry,
}

/// The fields spire-controller-manager compares (sets where it compares sets).
fn changes(want: &Entry, current: &Entry) -> ChangedFields {
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<String>>();
    let trust_domains = |e: &Entry| {
        e.federates_with
            .iter()
            .map(|t| t.name().to_owned())
            .collect::<BTreeSet<_>>()
    };
    ChangedFields {
        x509_svid_ttl: want.x509_svid_ttl != current.x509_svid_ttl,
        jwt_svid_ttl: want.jwt_svid_ttl != current.jwt_svid_ttl,
        federates_with: trust_domains(want) != trust_domains(current),
        admin: want.admin != current.admin,
        downstream: want.downstream != current.downstream,
        dns_names: set(&want.dns_names) != set(&current.dns_names),
        hint: want.hint != current.hint,
        store_svid: want.store_svid != current.store_svid,
    }
}

/// Which fields an update sets (the update's mask); ordered, so updates can be grouped by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangedFields {
    pub x509_svid_ttl: bool,
    pub jwt_svid_ttl: bool,
    pub federates_with: bool,
    pub admin: bool,
    pub downstream: bool,
    pub dns_names: bool,
    pub hint: bool,
    pub store_svid: bool,
}

impl ChangedFields {
    pub fn any(&self) -> bool {
        self.x509_svid_ttl
            || self.jwt_svid_ttl
            || self.federates_with
            || self.admin
            || self.downstream
            || self.dns_names
            || self.hint
            || self.store_svid
    }
}

/// Which entries a registrar owns, decided as spire-controller-manager decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Empty, or ending in ".".
    prefix: String,
}

impl Ownership {
    /// `prefix` as configured (`entryIDPrefix`), with or without its trailing ".".
    pub fn new(prefix: &str) -> Self {
        let bare = prefix.strip_suffix('.').unwrap_or(prefix);
        Self {
            prefix: if bare.is_empty() {
                String::new()
            } else {
                format!("{bare}.")
            },
        }
    }

    /// With a prefix, the entries whose ID starts with it. Without one, every entry but join-token
    /// node entries (parent under /spire/agent/join_token/, with a spiffe_id selector).
    pub fn owns(&self, stored: &Stored) -> bool {
        if self.prefix.is_empty() {
            !is_join_token_entry(&stored.entry)
        } else {
            stored.id.starts_with(&self.prefix)
        }
    }

    /// The ID a new entry gets: `<prefix><unique>` with a prefix, else the server chooses.
    pub fn new_id(&self, unique: &str) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}{unique}", self.prefix)
        }
    }
}

fn is_join_token_entry(entry: &Entry) -> bool {
    entry
        .parent_id
        .path()
        .starts_with("/spire/agent/join_token/")
        && entry.selectors.iter().any(|s| s.kind == "spiffe_id")
}

/// The calls that make the owned entries the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// New entries, with their IDs set when owned by prefix (else empty: the server chooses).
    pub create: Vec<Stored>,
    /// Desired entries with the ID of the owned entry they replace, and the fields to set.
    pub update: Vec<(Stored, ChangedFields)>,
    /// IDs of owned entries no longer desired, or duplicates of a desired key.
    pub delete: Vec<String>,
    /// Owned entries already as desired: no call at all.
    pub unchanged: usize,
}

/// The plan for `desired` (one entry per key: masking is decided before) against `current`
/// (everything the server holds). `unique_id` yields the unique part of a new entry's ID.
pub fn plan_sync(
    desired: &[Entry],
    current: &[Stored],
    ownership: &Ownership,
    mut unique_id: impl FnMut(&Entry) -> String,
) -> SyncPlan {
    let mut owned: BTreeMap<EntryKey, Vec<&Stored>> = BTreeMap::new();
    for stored in current.iter().filter(|s| ownership.owns(s)) {
        owned.entry(stored.entry.key()).or_default().push(stored);
    }
    let mut plan = SyncPlan::default();
    let mut seen = BTreeSet::new();
    for want in desired {
        let key = want.key();
        if !seen.insert(key.clone()) {
            continue;
        }
        let existing = owned.remove(&key).unwrap_or_default();
        match existing.split_first() {
            Some((first, duplicates)) => {
                plan.delete.extend(duplicates.iter().map(|s| s.id.clone()));
                let changed = changes(want, &first.entry);
                if changed.any() {
                    let adopted = Stored {
                        id: first.id.clone(),
                        entry: want.clone(),
                    };
                    plan.update.push((adopted, changed));
                } else {
                    plan.unchanged += 1;
                }
            }
            None => plan.create.push(Stored {
                id: ownership.new_id(&unique_id(want)),
                entry: want.clone(),
            }),
        }
    }
    plan.delete
        .extend(owned.into_values().flatten().map(|s| s.id.clone()));
    plan
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::entries::Selector;
    use crate::spiffe_id::{SpiffeId, TrustDomain};

    fn entry(n: usize) -> Entry {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        Entry {
            spiffe_id: id(&format!("spiffe://td/ns/a/sa/app-{n}")),
            parent_id: id("spiffe://td/spire/agent/k8s_psat/c/node-1"),
            selectors: vec![
                Selector::new("k8s", &format!("pod-uid:{n}")),
                Selector::new("k8s", "ns:a"),
            ],
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::ZERO,
            federates_with: vec![
                TrustDomain::new("x.org").unwrap(),
                TrustDomain::new("y.org").unwrap(),
            ],
            admin: false,
            downstream: false,
            dns_names: vec!["a.svc".into(), "b.svc".into()],
            hint: String::new(),
            store_svid: false,
        }
    }

    fn stored(id: &str, n: usize) -> Stored {
        Stored {
            id: id.to_owned(),
            entry: entry(n),
        }
    }

    fn ids() -> impl FnMut(&Entry) -> String {
        let mut n = 0;
        move |_| {
            n += 1;
            format!("new-{n}")
        }
    }

    #[test]
    fn a_takeover_with_nothing_changed_makes_no_call() {
        let current: Vec<Stored> = (0..5).map(|n| stored(&format!("scm.{n}"), n)).collect();
        // rendered by us: selectors, DNS names and federatesWith in another order
        let desired: Vec<Entry> = (0..5)
            .map(|n| {
                let mut e = entry(n);
                e.selectors.reverse();
                e.dns_names.reverse();
                e.federates_with.reverse();
                e
            })
            .collect();
        let plan = plan_sync(&desired, &current, &Ownership::new("scm"), ids());
        assert_eq!(
            plan,
            SyncPlan {
                unchanged: 5,
                ..SyncPlan::default()
            }
        );
    }

    #[test]
    fn changed_new_gone_and_duplicate_entries() {
        let current = vec![
            stored("scm.0", 0),
            stored("scm.1", 1),
            stored("scm.1-dup", 1),
            stored("scm.2", 2),
            stored("other.9", 9),
        ];
        let mut changed = entry(0);
        changed.dns_names = vec!["c.svc".into()];
        let desired = vec![changed, entry(1), entry(3), entry(9)];
        let plan = plan_sync(&desired, &current, &Ownership::new("scm."), ids());
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].0.id, "scm.0", "the existing ID is kept");
        assert_eq!(
            plan.update[0].1,
            ChangedFields {
                dns_names: true,
                ..ChangedFields::default()
            }
        );
        assert_eq!(plan.unchanged, 1);
        // a new entry for 3, and for 9: `other.9` is not ours, so it is neither adopted nor deleted
        let created: Vec<&str> = plan.create.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(created, ["scm.new-1", "scm.new-2"]);
        assert_eq!(plan.delete, ["scm.1-dup", "scm.2"]);
    }

    #[test]
    fn without_a_prefix_everything_but_join_token_entries_is_owned() {
        let ownership = Ownership::new("");
        let mut join_token = stored("uuid-1", 1);
        join_token.entry.parent_id =
            SpiffeId::parse("spiffe://td/spire/agent/join_token/abc").unwrap();
        join_token.entry.selectors = vec![Selector::new(
            "spiffe_id",
            "spiffe://td/spire/agent/join_token/abc",
        )];
        assert!(!ownership.owns(&join_token));
        assert!(ownership.owns(&stored("uuid-2", 2)));
        let plan = plan_sync(&[], &[join_token, stored("uuid-2", 2)], &ownership, ids());
        assert_eq!(plan.delete, ["uuid-2"]);
        // and new entries get no ID: the server chooses
        let plan = plan_sync(&[entry(3)], &[], &ownership, ids());
        assert_eq!(plan.create[0].id, "");
    }

    #[test]
    fn a_desired_key_twice_is_planned_once() {
        let plan = plan_sync(&[entry(1), entry(1)], &[], &Ownership::new("w"), ids());
        assert_eq!(plan.create.len(), 1);
    }
}
