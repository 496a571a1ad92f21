//! ClusterFederatedTrustDomains validated into the federation set: which foreign trust domains
//! this cluster federates with, where their bundles are published, and the bundle to start from.
//! Fetching bundles is the federation poller's job; this only validates.

use std::collections::BTreeMap;
use std::sync::Arc;

use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::entries::{RenderConfig, handles_class};
use wimsey_core::federation::check_endpoint_url;
use wimsey_core::spiffe_id::{SpiffeId, TrustDomain};

use super::resource_meta::ResourceMeta;
use crate::crd::{
    BundleEndpointProfileType, ClusterFederatedTrustDomainSpec, ClusterFederatedTrustDomainStatus,
};
use crate::nodeapi::FederatedBundles;

/// A ClusterFederatedTrustDomain as watched.
#[derive(Debug, Clone, PartialEq)]
pub struct FederationInput {
    pub meta: ResourceMeta,
    /// `metadata.creationTimestamp` (Unix seconds): the oldest resource wins a duplicate.
    pub created: i64,
    pub spec: ClusterFederatedTrustDomainSpec,
    pub status: Option<ClusterFederatedTrustDomainStatus>,
}

/// How the bundle endpoint authenticates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleEndpointProfile {
    HttpsWeb,
    HttpsSpiffe { endpoint_spiffe_id: SpiffeId },
}

/// One validated federation relationship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedTrustDomain {
    /// The resource that declares it.
    pub resource: String,
    pub trust_domain: TrustDomain,
    pub bundle_endpoint_url: url::Url,
    pub profile: BundleEndpointProfile,
    /// `trustDomainBundle`, when given: the bundle to trust until the first fetch.
    pub initial_bundle: Option<TrustDomainBundle>,
    /// The last good bundle the poller fetched, as stored in the resource's status.
    pub fetched_bundle: Option<TrustDomainBundle>,
}

impl FederatedTrustDomain {
    /// The bundle in effect: the last fetched one, else `trustDomainBundle`.
    pub fn current_bundle(&self) -> Option<&TrustDomainBundle> {
        self.fetched_bundle
            .as_ref()
            .or(self.initial_bundle.as_ref())
    }

    /// The relationship as configured, without what was fetched: a poller restarts only when
    /// this changes.
    pub fn configured(
        &self,
    ) -> (
        &TrustDomain,
        &url::Url,
        &BundleEndpointProfile,
        Option<&TrustDomainBundle>,
    ) {
        (
            &self.trust_domain,
            &self.bundle_endpoint_url,
            &self.profile,
            self.initial_bundle.as_ref(),
        )
    }
}

/// The fetched bundle a status holds for `trust_domain`; none when it names another trust
/// domain or does not parse (then the next fetch replaces it).
pub fn fetched_bundle(
    status: Option<&ClusterFederatedTrustDomainStatus>,
    trust_domain: &TrustDomain,
) -> Option<TrustDomainBundle> {
    let status = status?;
    if status.bundle.is_empty() || status.trust_domain != trust_domain.name() {
        return None;
    }
    TrustDomainBundle::from_spiffe_jwks(trust_domain.clone(), status.bundle.as_bytes()).ok()
}

/// The federation set, by trust domain name.
pub type FederationSet = BTreeMap<String, FederatedTrustDomain>;

/// What became of one ClusterFederatedTrustDomain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FederationOutcome {
    Accepted,
    Invalid {
        field: &'static str,
        reason: String,
    },
    /// An older resource declares the same trust domain.
    Duplicate {
        of: String,
    },
    NotOurs,
}

/// Validates one resource as spire-controller-manager's webhook does.
pub fn validate_federation(
    name: &str,
    spec: &ClusterFederatedTrustDomainSpec,
) -> Result<FederatedTrustDomain, (&'static str, String)> {
    let trust_domain = TrustDomain::from_name_or_id(&spec.trust_domain)
        .map_err(|e| ("trustDomain", e.to_string()))?;
    let url = url::Url::parse(&spec.bundle_endpoint_url)
        .map_err(|e| ("bundleEndpointURL", e.to_string()))?;
    check_endpoint_url(&url).map_err(|e| ("bundleEndpointURL", e.to_string()))?;
    let endpoint_id = &spec.bundle_endpoint_profile.endpoint_spiffe_id;
    let profile = match spec.bundle_endpoint_profile.profile_type {
        BundleEndpointProfileType::HttpsWeb if endpoint_id.is_empty() => {
            BundleEndpointProfile::HttpsWeb
        }
        BundleEndpointProfileType::HttpsWeb => {
            return Err((
                "bundleEndpointProfile.endpointSPIFFEID",
                "must be empty for the https_web profile".to_owned(),
            ));
        }
        BundleEndpointProfileType::HttpsSpiffe => BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse(endpoint_id)
                .map_err(|e| ("bundleEndpointProfile.endpointSPIFFEID", e.to_string()))?,
        },
    };
    let initial_bundle = if spec.trust_domain_bundle.is_empty() {
        None
    } else {
        Some(
            TrustDomainBundle::from_spiffe_jwks(
                trust_domain.clone(),
                spec.trust_domain_bundle.as_bytes(),
            )
            .map_err(|e| ("trustDomainBundle", e.to_string()))?,
        )
    };
    Ok(FederatedTrustDomain {
        resource: name.to_owned(),
        trust_domain,
        bundle_endpoint_url: url,
        profile,
        initial_bundle,
        fetched_bundle: None,
    })
}

/// The federation set of this instance's class: valid resources, one per trust domain, the
/// oldest (then lowest UID) winning.
pub fn build_federation_set(
    inputs: &[&FederationInput],
    config: &RenderConfig,
) -> (FederationSet, Vec<(String, FederationOutcome)>) {
    let mut sorted: Vec<&&FederationInput> = inputs.iter().collect();
    sorted.sort_by(|a, b| (a.created, &a.meta.uid).cmp(&(b.created, &b.meta.uid)));
    let mut set = FederationSet::new();
    let mut outcomes = Vec::new();
    for input in sorted {
        let name = input.meta.name.clone();
        if !handles_class(config, &input.spec.class_name) {
            outcomes.push((name, FederationOutcome::NotOurs));
            continue;
        }
        let outcome = match validate_federation(&name, &input.spec) {
            Err((field, reason)) => FederationOutcome::Invalid { field, reason },
            Ok(mut relationship) => match set.get(relationship.trust_domain.name()) {
                Some(existing) => FederationOutcome::Duplicate {
                    of: existing.resource.clone(),
                },
                None => {
                    relationship.fetched_bundle =
                        fetched_bundle(input.status.as_ref(), &relationship.trust_domain);
                    set.insert(relationship.trust_domain.name().to_owned(), relationship);
                    FederationOutcome::Accepted
                }
            },
        };
        outcomes.push((name, outcome));
    }
    (set, outcomes)
}

/// The federated bundles in effect: per relationship, the last fetched bundle, else its
/// `trustDomainBundle`. A deleted relationship is simply absent, so pods drop the domain.
pub fn federated_bundles(set: &FederationSet) -> FederatedBundles {
    Arc::new(
        set.values()
            .filter_map(|federation| {
                federation
                    .current_bundle()
                    .cloned()
                    .map(|bundle| (federation.trust_domain.clone(), bundle))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BundleEndpointProfile as CrdProfile;

    fn input(name: &str, created: i64, td: &str, url: &str) -> FederationInput {
        FederationInput {
            meta: ResourceMeta {
                name: name.into(),
                uid: format!("uid-{name}"),
                generation: Some(1),
                resource_version: None,
            },
            created,
            spec: ClusterFederatedTrustDomainSpec {
                trust_domain: td.into(),
                bundle_endpoint_url: url.into(),
                bundle_endpoint_profile: CrdProfile::default(),
                ..ClusterFederatedTrustDomainSpec::default()
            },
            status: None,
        }
    }

    #[test]
    fn oldest_wins_duplicates_and_invalid_ones_are_reported() {
        let config = RenderConfig::new(
            TrustDomain::new("example.org").unwrap(),
            "c",
            "cluster.local",
        );
        let a = input("a", 20, "other.org", "https://other.org/bundle");
        let b = input("b", 10, "other.org", "https://mirror.other.org/bundle");
        let c = input("c", 5, "third.org", "http://third.org/bundle");
        let (set, outcomes) = build_federation_set(&[&a, &b, &c], &config);
        assert_eq!(set.len(), 1);
        assert_eq!(set["other.org"].resource, "b");
        assert_eq!(set["other.org"].profile, BundleEndpointProfile::HttpsWeb);
        let outcome = |n: &str| {
            outcomes
                .iter()
                .find(|(name, _)| name == n)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(
            outcome("a"),
            FederationOutcome::Duplicate { of: "b".into() }
        );
        assert!(matches!(
            outcome("c"),
            FederationOutcome::Invalid {
                field: "bundleEndpointURL",
                ..
            }
        ));
    }

    #[test]
    fn profile_rules() {
        let mut spec = input("a", 1, "other.org", "https://other.org/").spec;
        spec.bundle_endpoint_profile.endpoint_spiffe_id = "spiffe://other.org/server".into();
        assert_eq!(
            validate_federation("a", &spec).unwrap_err().0,
            "bundleEndpointProfile.endpointSPIFFEID"
        );
        spec.bundle_endpoint_profile.profile_type = BundleEndpointProfileType::HttpsSpiffe;
        assert!(matches!(
            validate_federation("a", &spec).unwrap().profile,
            BundleEndpointProfile::HttpsSpiffe { .. }
        ));
        spec.trust_domain_bundle = "not json".into();
        assert_eq!(
            validate_federation("a", &spec).unwrap_err().0,
            "trustDomainBundle"
        );
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;
    use crate::crd::ClusterFederatedTrustDomain;

    #[test]
    fn scm_demo_sample_validates_except_its_zero_time_bundle() {
        let text = include_str!("../../tests/fixtures/clusterfederatedtrustdomain-demo.yaml");
        let mut resource: ClusterFederatedTrustDomain = serde_saphyr::from_str(text).unwrap();
        // Its bundle's certificate has Go's zero time (year 1) as notBefore, which
        // wimsey_core::bundle does not parse yet; the rest of the sample is valid.
        let error = validate_federation("cluster2", &resource.spec).unwrap_err();
        assert_eq!(error.0, "trustDomainBundle");
        resource.spec.trust_domain_bundle.clear();
        let relationship = validate_federation("cluster2", &resource.spec).unwrap();
        assert_eq!(relationship.trust_domain.name(), "cluster2.demo");
        assert_eq!(
            relationship.profile,
            BundleEndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::parse("spiffe://cluster2.demo/spire/server").unwrap()
            }
        );
    }
}
