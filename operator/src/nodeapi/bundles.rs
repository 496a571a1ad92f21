//! Serialized trust bundles, cached per bundle generation: when the bundle changes, every
//! WatchPod stream wakes at once, and they should not each serialize the same JWKS again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use wimsey_core::TrustDomain;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_proto::wimsey::node::v1::TrustBundle;

use super::{FederatedBundles, NodeApiError};
use crate::authority::SigningMaterial;

type Serialized = Arc<BTreeMap<TrustDomain, TrustBundle>>;
/// A cached value and what it was made from.
type Cached<From, Value> = Mutex<Option<(Weak<From>, Value)>>;

/// The last serialization of our bundle and of the federated bundles, each kept while the value
/// it came from is the current one. Keyed by that value's allocation: a [`Weak`] keeps the
/// address from being reused (without keeping the keys alive), so a hit is always the same value.
#[derive(Debug, Default)]
pub(super) struct BundleCache {
    own: Cached<SigningMaterial, TrustBundle>,
    federated: Cached<BTreeMap<TrustDomain, TrustDomainBundle>, Serialized>,
    /// Bundles serialized so far (a cache miss adds the number of bundles it serialized).
    serializations: AtomicU64,
}

impl BundleCache {
    /// Our own bundle, as published with `material`.
    pub(super) fn own(&self, material: &Arc<SigningMaterial>) -> Result<TrustBundle, NodeApiError> {
        let mut cached = self.own.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, bundle)) = cached.as_ref()
            && std::ptr::eq(from.as_ptr(), Arc::as_ptr(material))
        {
            return Ok(bundle.clone());
        }
        let bundle = serialize(&material.bundle)?;
        self.serializations.fetch_add(1, Ordering::Relaxed);
        *cached = Some((Arc::downgrade(material), bundle.clone()));
        Ok(bundle)
    }

    /// Every federated bundle of `bundles`, serialized.
    pub(super) fn federated(&self, bundles: &FederatedBundles) -> Result<Serialized, NodeApiError> {
        let mut cached = self.federated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, serialized)) = cached.as_ref()
            && std::ptr::eq(from.as_ptr(), Arc::as_ptr(bundles))
        {
            return Ok(serialized.clone());
        }
        let serialized: Serialized = Arc::new(
            bundles
                .iter()
                .map(|(td, bundle)| Ok((td.clone(), serialize(bundle)?)))
                .collect::<Result<_, NodeApiError>>()?,
        );
        self.serializations
            .fetch_add(bundles.len() as u64, Ordering::Relaxed);
        *cached = Some((Arc::downgrade(bundles), serialized.clone()));
        Ok(serialized)
    }

    /// How many bundles have been serialized (tests).
    #[cfg(test)]
    pub(super) fn serializations(&self) -> u64 {
        self.serializations.load(Ordering::Relaxed)
    }
}

fn serialize(bundle: &TrustDomainBundle) -> Result<TrustBundle, NodeApiError> {
    Ok(TrustBundle {
        trust_domain: bundle.trust_domain.name().to_owned(),
        spiffe_bundle: bundle
            .to_spiffe_jwks()
            .map_err(|e| NodeApiError::Internal(e.to_string()))?
            .into_bytes(),
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::authority::test_support::fresh_material;

    fn material(td: &TrustDomain) -> Arc<SigningMaterial> {
        fresh_material(td)
    }

    #[test]
    fn a_bundle_is_serialized_once_per_generation() {
        let td = TrustDomain::new("example.org").unwrap();
        let cache = BundleCache::default();
        let first = material(&td);
        let a = cache.own(&first).unwrap();
        for _ in 0..10 {
            assert_eq!(cache.own(&first).unwrap(), a);
        }
        assert_eq!(cache.serializations(), 1, "ten streams, one serialization");
        let parsed = TrustDomainBundle::from_spiffe_jwks(td.clone(), &a.spiffe_bundle).unwrap();
        assert_eq!(parsed.x509_authorities, first.bundle.x509_authorities);
        assert_eq!(
            parsed.jwt_authorities.keys().collect::<Vec<_>>(),
            first.bundle.jwt_authorities.keys().collect::<Vec<_>>()
        );
        // New material (a rotation): serialized again, and the new bundle is served.
        let second = material(&td);
        let b = cache.own(&second).unwrap();
        assert_eq!(cache.serializations(), 2);
        assert_ne!(a, b);
    }

    #[test]
    fn federated_bundles_are_serialized_once_per_set() {
        let cache = BundleCache::default();
        let other = TrustDomain::new("other.org").unwrap();
        let bundles: FederatedBundles = Arc::new(BTreeMap::from([(
            other.clone(),
            material(&other).bundle.clone(),
        )]));
        let first = cache.federated(&bundles).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[&other].trust_domain, "other.org");
        cache.federated(&bundles).unwrap();
        assert_eq!(cache.serializations(), 1);
        let replaced: FederatedBundles = Arc::new((*bundles).clone());
        cache.federated(&replaced).unwrap();
        assert_eq!(cache.serializations(), 2, "a new set is serialized again");
    }
}
