//! The federation relationships a SPIRE Server holds, kept equal to the ClusterFederatedTrustDomains
//! of this instance: what SPIRE holds (listed once per connection, then kept from the answers to
//! our own writes), the plan that makes it the desired set, and what became of each resource.
//! Plain data; the calls are made by [`super::SpireSync`].
//!
//! As in spire-controller-manager, relationships have no ownership: every relationship SPIRE lists
//! that no resource declares is deleted. The static relationships of SPIRE's configuration file
//! are not listed, so they are never touched.

use std::collections::BTreeMap;

use tonic::Code;
use wimsey_proto::spire::trustdomain::v1::FederationRelationship;

use crate::backend::RelationshipStatus;
use crate::reconcile::federation::FederationSet;
use crate::spire_relationships::{ItemOutcome, same_endpoint, to_wire};

/// The calls that make SPIRE's relationships the desired ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelationshipPlan {
    /// New relationships, each with its resource's `trustDomainBundle` to start from.
    pub create: Vec<FederationRelationship>,
    /// Relationships whose endpoint URL or profile differ.
    pub update: Vec<FederationRelationship>,
    /// Trust domains no resource declares any more.
    pub delete: Vec<String>,
}

impl RelationshipPlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// A desired relationship SPIRE refused, as it was sent.
#[derive(Debug, Clone, PartialEq)]
struct Refused {
    sent: FederationRelationship,
    code: Code,
    message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Relationships {
    /// SPIRE's relationships by trust domain (bundles left out).
    held: BTreeMap<String, FederationRelationship>,
    /// Refused relationships by trust domain: not sent again until the resource changes.
    refused: BTreeMap<String, Refused>,
}

impl Relationships {
    pub fn from_listed(listed: Vec<FederationRelationship>) -> Self {
        Self {
            held: listed
                .into_iter()
                .map(|relationship| (relationship.trust_domain.clone(), relationship))
                .collect(),
            refused: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// What makes SPIRE's relationships `desired`, leaving out those refused as they are.
    pub fn plan(&self, desired: &FederationSet) -> RelationshipPlan {
        let mut plan = RelationshipPlan {
            delete: self
                .held
                .keys()
                .filter(|td| !desired.contains_key(*td))
                .cloned()
                .collect(),
            ..RelationshipPlan::default()
        };
        for (td, federation) in desired {
            let wanted = to_wire(federation);
            if self.refused.get(td).is_some_and(|r| r.sent == wanted) {
                continue;
            }
            match self.held.get(td) {
                None => plan.create.push(wanted),
                Some(held) if !same_endpoint(held, federation) => plan.update.push(wanted),
                Some(_) => {}
            }
        }
        plan
    }

    /// Records the answers to creating `sent`.
    pub fn record_created(&mut self, sent: &[FederationRelationship], outcomes: Vec<ItemOutcome>) {
        for (sent, outcome) in sent.iter().zip(outcomes) {
            match outcome {
                ItemOutcome::Done => self.hold(sent),
                // Not listed, yet there: a static relationship of SPIRE's configuration file
                // (not ours to change), or one created since our listing. A refusal until the
                // resource changes or the next drift check, which lists (and then updates) the
                // latter: never a create-update loop against a static one.
                ItemOutcome::AlreadyExists => self.refuse(
                    sent,
                    Code::AlreadyExists,
                    "SPIRE Server already has a federation relationship with this trust domain \
                     that it did not list (one of its configuration file?)"
                        .to_owned(),
                ),
                ItemOutcome::Refused { code, message } => self.refuse(sent, code, message),
            }
        }
    }

    /// Records the answers to updating `sent`. Returns whether to plan again (a relationship
    /// deleted behind our back is created next).
    pub fn record_updated(
        &mut self,
        sent: &[FederationRelationship],
        outcomes: Vec<ItemOutcome>,
    ) -> bool {
        let mut again = false;
        for (sent, outcome) in sent.iter().zip(outcomes) {
            match outcome {
                ItemOutcome::Done => self.hold(sent),
                ItemOutcome::Refused {
                    code: Code::NotFound,
                    ..
                } => {
                    self.held.remove(&sent.trust_domain);
                    again = true;
                }
                ItemOutcome::Refused { code, message } => self.refuse(sent, code, message),
                ItemOutcome::AlreadyExists => {}
            }
        }
        again
    }

    pub fn record_deleted(&mut self, trust_domains: &[String], outcomes: Vec<ItemOutcome>) {
        for (td, outcome) in trust_domains.iter().zip(outcomes) {
            match outcome {
                ItemOutcome::Refused { code, message } if code != Code::NotFound => {
                    tracing::warn!(trust_domain = %td, ?code, %message, "SPIRE refused to delete a federation relationship");
                }
                _ => {
                    self.held.remove(td);
                    self.refused.remove(td);
                }
            }
        }
    }

    /// What became of each desired relationship, by the resource that declares it.
    pub fn statuses(&self, desired: &FederationSet) -> BTreeMap<String, RelationshipStatus> {
        desired
            .iter()
            .filter_map(|(td, federation)| {
                let status = if let Some(refused) = self.refused.get(td) {
                    RelationshipStatus::Refused(format!("{:?}: {}", refused.code, refused.message))
                } else if self
                    .held
                    .get(td)
                    .is_some_and(|held| same_endpoint(held, federation))
                {
                    RelationshipStatus::Set
                } else {
                    return None;
                };
                Some((federation.resource.clone(), status))
            })
            .collect()
    }

    fn hold(&mut self, sent: &FederationRelationship) {
        self.refused.remove(&sent.trust_domain);
        self.held.insert(
            sent.trust_domain.clone(),
            FederationRelationship {
                trust_domain_bundle: None,
                ..sent.clone()
            },
        );
    }

    fn refuse(&mut self, sent: &FederationRelationship, code: Code, message: String) {
        tracing::warn!(trust_domain = %sent.trust_domain, ?code, %message, "SPIRE refused a federation relationship");
        self.refused.insert(
            sent.trust_domain.clone(),
            Refused {
                sent: sent.clone(),
                code,
                message,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use wimsey_core::spiffe_id::{SpiffeId, TrustDomain};

    use super::*;
    use crate::reconcile::federation::{BundleEndpointProfile, FederatedTrustDomain};

    fn federation(td: &str, url: &str) -> FederatedTrustDomain {
        FederatedTrustDomain {
            resource: format!("cftd-{td}"),
            trust_domain: TrustDomain::new(td).unwrap(),
            bundle_endpoint_url: url::Url::parse(url).unwrap(),
            profile: BundleEndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::parse(&format!("spiffe://{td}/spire/server"))
                    .unwrap(),
            },
            initial_bundle: None,
            fetched_bundle: None,
        }
    }

    fn set(federations: &[FederatedTrustDomain]) -> FederationSet {
        federations
            .iter()
            .map(|f| (f.trust_domain.name().to_owned(), f.clone()))
            .collect()
    }

    #[test]
    fn creates_what_is_missing_updates_what_moved_and_deletes_what_nobody_declares() {
        let a = federation("a.test", "https://a.example/bundle");
        let b = federation("b.test", "https://b.example/bundle");
        let moved = federation("b.test", "https://b2.example/bundle");
        let listed = vec![
            to_wire(&b),
            FederationRelationship {
                trust_domain: "by-hand.test".into(),
                ..to_wire(&a)
            },
        ];
        let held = Relationships::from_listed(listed);
        let plan = held.plan(&set(&[a.clone(), moved.clone()]));
        assert_eq!(plan.create, vec![to_wire(&a)]);
        assert_eq!(plan.update, vec![to_wire(&moved)]);
        assert_eq!(plan.delete, vec!["by-hand.test".to_owned()]);
        // nothing to do once SPIRE holds exactly the desired set
        let mut held = held;
        held.record_created(&plan.create, vec![ItemOutcome::Done]);
        held.record_updated(&plan.update, vec![ItemOutcome::Done]);
        held.record_deleted(&plan.delete, vec![ItemOutcome::Done]);
        let desired = set(&[a, moved]);
        assert!(held.plan(&desired).is_empty());
        assert_eq!(held.len(), 2);
        assert!(
            held.statuses(&desired)
                .values()
                .all(|s| *s == RelationshipStatus::Set)
        );
    }

    #[test]
    fn a_refused_relationship_is_reported_and_not_sent_again_until_it_changes() {
        let a = federation("a.test", "https://a.example/bundle");
        let mut held = Relationships::default();
        let plan = held.plan(&set(std::slice::from_ref(&a)));
        held.record_created(
            &plan.create,
            vec![ItemOutcome::Refused {
                code: Code::InvalidArgument,
                message: "bad endpoint".into(),
            }],
        );
        assert!(held.plan(&set(std::slice::from_ref(&a))).is_empty());
        let statuses = held.statuses(&set(std::slice::from_ref(&a)));
        assert_eq!(
            statuses["cftd-a.test"],
            RelationshipStatus::Refused("InvalidArgument: bad endpoint".into())
        );
        // changed: sent again
        let fixed = federation("a.test", "https://a2.example/bundle");
        assert_eq!(
            held.plan(&set(std::slice::from_ref(&fixed))).create,
            vec![to_wire(&fixed)]
        );
    }

    #[test]
    fn answers_showing_unknown_state_never_loop() {
        let a = federation("a.test", "https://a.example/bundle");
        let desired = set(std::slice::from_ref(&a));
        // there but not listed (a static relationship): refused, not retried until the drift
        // check lists again
        let mut held = Relationships::default();
        let plan = held.plan(&desired);
        held.record_created(&plan.create, vec![ItemOutcome::AlreadyExists]);
        assert!(held.plan(&desired).is_empty());
        assert!(matches!(
            &held.statuses(&desired)["cftd-a.test"],
            RelationshipStatus::Refused(why) if why.starts_with("AlreadyExists")
        ));
        // deleted behind our back while we update it: created next
        let mut held = Relationships::from_listed(vec![FederationRelationship {
            bundle_endpoint_url: "https://old.example/".into(),
            ..to_wire(&a)
        }]);
        let plan = held.plan(&desired);
        assert_eq!(plan.update.len(), 1);
        let gone = ItemOutcome::Refused {
            code: Code::NotFound,
            message: "not found".into(),
        };
        assert!(held.record_updated(&plan.update, vec![gone]));
        assert_eq!(held.plan(&desired).create, vec![to_wire(&a)]);
    }
}
