//! A client of the SPIRE Server's trust domain API (`spire.api.server.trustdomain.v1`) over its
//! admin Unix socket: paged listing of the federation relationships (never the static ones of
//! SPIRE's configuration file), and creates, updates and deletes in batches, each item's outcome
//! kept apart so that a refusal lands on the ClusterFederatedTrustDomain that caused it. Also the
//! conversion of a validated ClusterFederatedTrustDomain into SPIRE's relationship.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tonic::Code;
use tonic::transport::Channel;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_proto::spire::trustdomain::v1::federation_relationship::BundleEndpointProfile as WireProfile;
use wimsey_proto::spire::trustdomain::v1::trust_domain_client::TrustDomainClient;
use wimsey_proto::spire::trustdomain::v1::{
    BatchCreateFederationRelationshipRequest, BatchDeleteFederationRelationshipRequest,
    BatchUpdateFederationRelationshipRequest, Bundle, FederationRelationship,
    FederationRelationshipMask, HttpsSpiffeProfile, HttpsWebProfile, ItemStatus, JwtKey,
    ListFederationRelationshipsRequest, X509Certificate,
};

use crate::reconcile::federation::{BundleEndpointProfile, FederatedTrustDomain};
use crate::spire_api::{BatchLimits, SpireApiError, admin_channel, count, in_batches};

/// What became of one relationship of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Done,
    /// Create only: SPIRE already has a relationship with that trust domain.
    AlreadyExists,
    /// Refused, with SPIRE's code and message (e.g. InvalidArgument for a bad endpoint URL).
    Refused {
        code: Code,
        message: String,
    },
}

impl ItemOutcome {
    fn from_status(status: Option<ItemStatus>) -> Self {
        let status = status.unwrap_or_default();
        match Code::from_i32(status.code) {
            Code::Ok => ItemOutcome::Done,
            Code::AlreadyExists => ItemOutcome::AlreadyExists,
            code => ItemOutcome::Refused {
                code,
                message: status.message,
            },
        }
    }
}

/// The outcomes of a batch, from its items' statuses in order.
fn outcomes(statuses: impl Iterator<Item = Option<ItemStatus>>) -> Vec<ItemOutcome> {
    statuses.map(ItemOutcome::from_status).collect()
}

/// Calls made, by RPC (a ListFederationRelationships page counts once).
#[derive(Debug, Default)]
pub struct RelationshipCalls {
    pub list: AtomicU64,
    pub batch_create: AtomicU64,
    pub batch_update: AtomicU64,
    pub batch_delete: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct SpireRelationships {
    client: TrustDomainClient<Channel>,
    limits: BatchLimits,
    calls: Arc<RelationshipCalls>,
}

/// Where the bundle is fetched and how the endpoint is authenticated: what an update sets and a
/// listing returns. Never the bundle, which SPIRE keeps fresh by fetching it (a resource's
/// `trustDomainBundle` only starts a relationship off) and which planning does not need.
fn endpoint_fields() -> FederationRelationshipMask {
    FederationRelationshipMask {
        bundle_endpoint_url: true,
        bundle_endpoint_profile: true,
        trust_domain_bundle: false,
    }
}

impl SpireRelationships {
    /// A client of the server at `path`, connected lazily (see [`admin_channel`]).
    pub fn connect_lazy(path: &Path, limits: BatchLimits) -> Self {
        Self {
            client: TrustDomainClient::new(admin_channel(path)),
            limits,
            calls: Arc::default(),
        }
    }

    pub fn calls(&self) -> &RelationshipCalls {
        &self.calls
    }

    /// Every relationship created through the API, page by page, without the bundles SPIRE
    /// holds (not needed to plan, and possibly large).
    pub async fn list_all(&self) -> Result<Vec<FederationRelationship>, SpireApiError> {
        let mut relationships = Vec::new();
        let mut page_token = String::new();
        loop {
            count(&self.calls.list);
            let page = self
                .client
                .clone()
                .list_federation_relationships(ListFederationRelationshipsRequest {
                    output_mask: Some(endpoint_fields()),
                    page_size: self.limits.page,
                    page_token,
                    include_static: false,
                })
                .await
                .map_err(|status| SpireApiError::Call {
                    call: "ListFederationRelationships",
                    status,
                })?
                .into_inner();
            relationships.extend(page.federation_relationships);
            if page.next_page_token.is_empty() {
                return Ok(relationships);
            }
            page_token = page.next_page_token;
        }
    }

    /// Creates `relationships` (with the bundle each carries), one outcome each, in order.
    pub async fn create(
        &self,
        relationships: Vec<FederationRelationship>,
    ) -> Result<Vec<ItemOutcome>, SpireApiError> {
        let name = "BatchCreateFederationRelationship";
        in_batches(relationships, self.limits.create, name, |chunk| {
            count(&self.calls.batch_create);
            let mut client = self.client.clone();
            async move {
                let response = client
                    .batch_create_federation_relationship(
                        BatchCreateFederationRelationshipRequest {
                            federation_relationship: chunk,
                            output_mask: Some(FederationRelationshipMask::default()),
                        },
                    )
                    .await?;
                Ok(outcomes(
                    response.into_inner().results.into_iter().map(|r| r.status),
                ))
            }
        })
        .await
    }

    /// Sets the endpoint URL and profile of each relationship (by trust domain), one outcome
    /// each, in order.
    pub async fn update(
        &self,
        relationships: Vec<FederationRelationship>,
    ) -> Result<Vec<ItemOutcome>, SpireApiError> {
        let name = "BatchUpdateFederationRelationship";
        in_batches(relationships, self.limits.update, name, |chunk| {
            count(&self.calls.batch_update);
            let mut client = self.client.clone();
            async move {
                let response = client
                    .batch_update_federation_relationship(
                        BatchUpdateFederationRelationshipRequest {
                            federation_relationships: chunk,
                            input_mask: Some(endpoint_fields()),
                            output_mask: Some(FederationRelationshipMask::default()),
                        },
                    )
                    .await?;
                Ok(outcomes(
                    response.into_inner().results.into_iter().map(|r| r.status),
                ))
            }
        })
        .await
    }

    /// Deletes the relationships with these trust domains, one outcome each, in order.
    pub async fn delete(
        &self,
        trust_domains: Vec<String>,
    ) -> Result<Vec<ItemOutcome>, SpireApiError> {
        let name = "BatchDeleteFederationRelationship";
        in_batches(trust_domains, self.limits.delete, name, |chunk| {
            count(&self.calls.batch_delete);
            let mut client = self.client.clone();
            async move {
                let response = client
                    .batch_delete_federation_relationship(
                        BatchDeleteFederationRelationshipRequest {
                            trust_domains: chunk,
                        },
                    )
                    .await?;
                Ok(outcomes(
                    response.into_inner().results.into_iter().map(|r| r.status),
                ))
            }
        })
        .await
    }
}

/// SPIRE's relationship for a validated ClusterFederatedTrustDomain, with its
/// `trustDomainBundle` (if any) as the bundle to start from.
pub fn to_wire(federation: &FederatedTrustDomain) -> FederationRelationship {
    FederationRelationship {
        trust_domain: federation.trust_domain.name().to_owned(),
        bundle_endpoint_url: federation.bundle_endpoint_url.as_str().to_owned(),
        bundle_endpoint_profile: Some(wire_profile(&federation.profile)),
        trust_domain_bundle: federation.initial_bundle.as_ref().map(to_wire_bundle),
    }
}

fn wire_profile(profile: &BundleEndpointProfile) -> WireProfile {
    match profile {
        BundleEndpointProfile::HttpsWeb => WireProfile::HttpsWeb(HttpsWebProfile {}),
        BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            WireProfile::HttpsSpiffe(HttpsSpiffeProfile {
                endpoint_spiffe_id: endpoint_spiffe_id.to_string(),
            })
        }
    }
}

/// Whether SPIRE's relationship fetches from where `federation` says, the way it says: the
/// fields an update sets. URLs compare parsed, so `https://host` and `https://host/` (as
/// spire-controller-manager may have written it) are the same endpoint.
pub fn same_endpoint(held: &FederationRelationship, federation: &FederatedTrustDomain) -> bool {
    let url = url::Url::parse(&held.bundle_endpoint_url).ok();
    url.as_ref() == Some(&federation.bundle_endpoint_url)
        && held.bundle_endpoint_profile == Some(wire_profile(&federation.profile))
}

/// The bundle in SPIRE's form. A JWT authority whose key cannot be encoded is left out (SPIRE
/// then learns it at the first fetch); ours parse from SPKI, so this does not happen.
pub fn to_wire_bundle(bundle: &TrustDomainBundle) -> Bundle {
    Bundle {
        trust_domain: bundle.trust_domain.name().to_owned(),
        x509_authorities: bundle
            .x509_authorities
            .iter()
            .map(|der| X509Certificate {
                asn1: der.clone(),
                tainted: false,
            })
            .collect(),
        jwt_authorities: bundle
            .jwt_authorities
            .iter()
            .filter_map(|(kid, jwk)| {
                let public_key = jwk.key.to_spki_der().ok()?;
                Some(JwtKey {
                    public_key,
                    key_id: kid.clone(),
                    expires_at: 0,
                    tainted: false,
                })
            })
            .collect(),
        refresh_hint: bundle
            .refresh_hint_seconds
            .and_then(|s| i64::try_from(s).ok())
            .unwrap_or_default(),
        sequence_number: bundle.sequence_number.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use wimsey_core::jose::PublicJwk;
    use wimsey_core::keys::{KeyAlgorithm, SigningKey};
    use wimsey_core::spiffe_id::{SpiffeId, TrustDomain};

    use super::*;

    fn federation(url: &str, profile: BundleEndpointProfile) -> FederatedTrustDomain {
        FederatedTrustDomain {
            resource: "peer".into(),
            trust_domain: TrustDomain::new("peer.test").unwrap(),
            bundle_endpoint_url: url::Url::parse(url).unwrap(),
            profile,
            initial_bundle: None,
            fetched_bundle: None,
        }
    }

    #[test]
    fn a_resource_becomes_spires_relationship_and_compares_by_endpoint() {
        let spiffe = BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse("spiffe://peer.test/spire/server").unwrap(),
        };
        let wanted = federation("https://peer.example:8443/bundle", spiffe.clone());
        let wire = to_wire(&wanted);
        assert_eq!(wire.trust_domain, "peer.test");
        assert_eq!(
            wire.bundle_endpoint_profile,
            Some(WireProfile::HttpsSpiffe(HttpsSpiffeProfile {
                endpoint_spiffe_id: "spiffe://peer.test/spire/server".into()
            }))
        );
        assert!(wire.trust_domain_bundle.is_none());
        assert!(same_endpoint(&wire, &wanted));
        // written without the trailing slash: the same endpoint
        let bare = federation("https://peer.example", BundleEndpointProfile::HttpsWeb);
        let written = FederationRelationship {
            bundle_endpoint_url: "https://peer.example".into(),
            ..to_wire(&bare)
        };
        assert!(same_endpoint(&written, &bare));
        // another URL, or another profile, differs
        assert!(!same_endpoint(
            &wire,
            &federation("https://other.example/bundle", spiffe)
        ));
        assert!(!same_endpoint(
            &wire,
            &federation(
                "https://peer.example:8443/bundle",
                BundleEndpointProfile::HttpsWeb
            )
        ));
        let unparsable = FederationRelationship {
            bundle_endpoint_url: "not a url".into(),
            ..wire
        };
        assert!(!same_endpoint(&unparsable, &wanted));
    }

    #[test]
    fn the_starting_bundle_carries_every_authority() {
        let td = TrustDomain::new("peer.test").unwrap();
        let mut bundle = TrustDomainBundle::new(td);
        bundle
            .x509_authorities
            .push(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        bundle
            .jwt_authorities
            .insert("kid-1".into(), PublicJwk::for_signing_key(&key));
        bundle.sequence_number = Some(7);
        bundle.refresh_hint_seconds = Some(300);
        let wire = to_wire_bundle(&bundle);
        assert_eq!(wire.trust_domain, "peer.test");
        assert_eq!(wire.x509_authorities[0].asn1, bundle.x509_authorities[0]);
        assert_eq!(wire.jwt_authorities[0].key_id, "kid-1");
        assert_eq!(
            wire.jwt_authorities[0].public_key,
            key.public_key_spki_der().to_vec()
        );
        assert_eq!((wire.sequence_number, wire.refresh_hint), (7, 300));
    }

    #[test]
    fn each_item_status_becomes_its_outcome() {
        let status = |code: Code| {
            Some(ItemStatus {
                code: code as i32,
                message: "why".into(),
            })
        };
        assert_eq!(
            ItemOutcome::from_status(status(Code::Ok)),
            ItemOutcome::Done
        );
        assert_eq!(ItemOutcome::from_status(None), ItemOutcome::Done);
        assert_eq!(
            ItemOutcome::from_status(status(Code::AlreadyExists)),
            ItemOutcome::AlreadyExists
        );
        assert_eq!(
            ItemOutcome::from_status(status(Code::InvalidArgument)),
            ItemOutcome::Refused {
                code: Code::InvalidArgument,
                message: "why".into()
            }
        );
    }
}
