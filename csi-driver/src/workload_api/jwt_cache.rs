//! Minted JWT-SVIDs kept per pod, so repeated `FetchJWTSVID` calls answer from memory and a pod
//! cannot turn its socket into a signing oracle for the operator.
//!
//! A token is reused until its half-life (the point SPIRE's agent also renews at), per identity
//! and *set* of audiences (order and duplicates do not matter; the token is minted with the
//! sorted set). The cache holds at most a configured number of tokens and drops the oldest first;
//! it forgets everything when the pod's identity snapshot changes (new entries, rotation,
//! revocation) and is dropped with the pod's server (volume unpublished).
//!
//! [`JwtSvidCache`] is the policy over plain values and an injected clock; [`PodJwtSvidCache`]
//! binds it to a pod's snapshot channel.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;
use wimsey_core::SpiffeId;
use wimsey_core::renewal::{half_life, token_lifetime};
use zeroize::Zeroizing;

use crate::identity::IdentitySnapshot;

/// One identity and a normalized (sorted, deduplicated) audience set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    spiffe_id: SpiffeId,
    audience: Vec<String>,
}

impl CacheKey {
    pub fn new(spiffe_id: &SpiffeId, audience: &[String]) -> Self {
        let audience: BTreeSet<&String> = audience.iter().collect();
        Self {
            spiffe_id: spiffe_id.clone(),
            audience: audience.into_iter().cloned().collect(),
        }
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The audience set to mint with, sorted: the token's `aud` matches its key exactly.
    pub fn audience(&self) -> &[String] {
        &self.audience
    }
}

/// Until when a freshly minted `token` may be handed out again: its half-life, from its own
/// `iat` (or `minted_at` without one) and `exp`. `None` for a token without a readable `exp`,
/// which is never reused.
pub fn reuse_until(token: &str, minted_at: SystemTime) -> Option<SystemTime> {
    let lifetime = token_lifetime(token)?;
    Some(half_life(
        lifetime.issued_at.unwrap_or(minted_at),
        lifetime.expires_at,
    ))
}

struct Cached {
    token: Zeroizing<String>,
    reuse_until: SystemTime,
    /// Insertion order, for evicting the oldest.
    inserted: u64,
}

/// At most `max_entries` tokens, each reused until its half-life.
pub struct JwtSvidCache {
    max_entries: usize,
    entries: HashMap<CacheKey, Cached>,
    next_insert: u64,
}

impl std::fmt::Debug for JwtSvidCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        f.debug_struct("JwtSvidCache")
            .field("max_entries", &self.max_entries)
            .field("len", &self.entries.len())
            .finish()
    }
}

impl JwtSvidCache {
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            entries: HashMap::new(),
            next_insert: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The token for `key` if it is before its half-life at `now`; a stale one is dropped.
    pub fn get(&mut self, key: &CacheKey, now: SystemTime) -> Option<Zeroizing<String>> {
        match self.entries.get(key) {
            Some(cached) if now < cached.reuse_until => Some(cached.token.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `token`, minted at `now`, until its half-life: first dropping tokens past theirs,
    /// then the oldest if the cache is full. A token already past its half-life, or without
    /// readable times, is not kept.
    pub fn insert(&mut self, key: CacheKey, token: Zeroizing<String>, now: SystemTime) {
        let Some(reuse_until) = reuse_until(&token, now).filter(|until| now < *until) else {
            return;
        };
        if self.max_entries == 0 {
            return;
        }
        self.entries.retain(|_, cached| now < cached.reuse_until);
        while self.entries.len() >= self.max_entries && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, cached)| cached.inserted)
                .map(|(key, _)| key.clone());
            match oldest {
                Some(oldest) => self.entries.remove(&oldest),
                None => break,
            };
        }
        let inserted = self.next_insert;
        self.next_insert += 1;
        self.entries.insert(
            key,
            Cached {
                token,
                reuse_until,
                inserted,
            },
        );
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Which state of the pod's identity a lookup saw; a token minted under an older one is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

struct PodState {
    snapshots: watch::Receiver<Arc<IdentitySnapshot>>,
    cache: JwtSvidCache,
    generation: u64,
}

impl PodState {
    /// Forgets every token once the snapshot has changed since the last look.
    fn follow_snapshot(&mut self) {
        // An error means the source is gone: nothing minted before may be served.
        if self.snapshots.has_changed().unwrap_or(true) {
            self.snapshots.borrow_and_update();
            self.cache.clear();
            self.generation += 1;
        }
    }
}

/// One pod's JWT-SVID cache, emptied whenever the pod's identity snapshot changes.
pub struct PodJwtSvidCache {
    state: Mutex<PodState>,
}

impl std::fmt::Debug for PodJwtSvidCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodJwtSvidCache").finish_non_exhaustive()
    }
}

impl PodJwtSvidCache {
    /// `snapshots` is the pod's snapshot channel; its current value counts as seen.
    pub fn new(mut snapshots: watch::Receiver<Arc<IdentitySnapshot>>, max_entries: usize) -> Self {
        snapshots.borrow_and_update();
        Self {
            state: Mutex::new(PodState {
                snapshots,
                cache: JwtSvidCache::new(max_entries),
                generation: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PodState> {
        // The state is consistent after any panic: at worst a token is missing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached token for `key`, or the generation to [`store`](Self::store) a fresh one with.
    pub fn lookup(&self, key: &CacheKey, now: SystemTime) -> Result<Zeroizing<String>, Generation> {
        let mut state = self.state();
        state.follow_snapshot();
        let generation = Generation(state.generation);
        state.cache.get(key, now).ok_or(generation)
    }

    /// Keeps a token minted after a lookup at `generation`, unless the pod's identity changed
    /// since.
    pub fn store(
        &self,
        generation: Generation,
        key: CacheKey,
        token: Zeroizing<String>,
        now: SystemTime,
    ) {
        let mut state = self.state();
        state.follow_snapshot();
        if Generation(state.generation) == generation {
            state.cache.insert(key, token, now);
        }
    }

    pub fn len(&self) -> usize {
        self.state().cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state().cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// An unsigned token with the given times: the cache reads claims, it verifies nothing.
    fn token(iat: Option<u64>, exp: Option<u64>, marker: &str) -> Zeroizing<String> {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let mut claims = serde_json::json!({ "sub": "spiffe://example.org/w", "jti": marker });
        if let Some(iat) = iat {
            claims["iat"] = iat.into();
        }
        if let Some(exp) = exp {
            claims["exp"] = exp.into();
        }
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": "k" });
        Zeroizing::new(format!("{}.{}.c2ln", b64(&header), b64(&claims)))
    }

    fn key(audience: &[&str]) -> CacheKey {
        let id = SpiffeId::parse("spiffe://example.org/w").expect("id");
        CacheKey::new(
            &id,
            &audience.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn a_token_is_reused_until_its_half_life() {
        assert_eq!(
            reuse_until(&token(Some(1000), Some(1300), "t"), at(5)),
            Some(at(1150))
        );
        assert_eq!(
            reuse_until(&token(None, Some(1300), "t"), at(1100)),
            Some(at(1200)),
            "no iat: from when it was minted"
        );
        assert_eq!(reuse_until(&token(Some(1000), None, "t"), at(1000)), None);
        assert_eq!(reuse_until("not a token", at(1000)), None);
    }

    #[test]
    fn audience_order_and_duplicates_are_one_key() {
        assert_eq!(key(&["b", "a"]), key(&["a", "b"]));
        assert_eq!(key(&["a", "b", "a"]), key(&["a", "b"]));
        assert_eq!(
            key(&["b", "a"]).audience(),
            ["a".to_owned(), "b".to_owned()]
        );
        assert_ne!(key(&["a"]), key(&["a", "b"]));
    }

    #[test]
    fn a_token_is_reused_until_its_half_life_only() {
        let mut cache = JwtSvidCache::new(4);
        let minted = token(Some(1000), Some(1300), "one");
        cache.insert(key(&["a"]), minted.clone(), at(1000));
        assert_eq!(cache.get(&key(&["a"]), at(1149)), Some(minted));
        assert_eq!(cache.get(&key(&["a"]), at(1150)), None, "half-life reached");
        assert!(cache.is_empty(), "the stale token is dropped");

        // Minted already past its half-life (a backdated iat): never kept.
        cache.insert(key(&["a"]), token(Some(800), Some(1300), "old"), at(1100));
        assert_eq!(cache.get(&key(&["a"]), at(1100)), None);
        // No exp: never kept.
        cache.insert(key(&["a"]), token(Some(1000), None, "no-exp"), at(1000));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_drops_the_oldest_first() {
        let mut cache = JwtSvidCache::new(2);
        cache.insert(key(&["a"]), token(Some(1000), Some(2000), "a"), at(1000));
        cache.insert(key(&["b"]), token(Some(1001), Some(2000), "b"), at(1001));
        // Replacing an existing key evicts nothing.
        cache.insert(key(&["b"]), token(Some(1002), Some(2000), "b2"), at(1002));
        assert_eq!(cache.len(), 2);
        cache.insert(key(&["c"]), token(Some(1003), Some(2000), "c"), at(1003));
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&key(&["a"]), at(1004)).is_none(),
            "oldest evicted"
        );
        assert!(cache.get(&key(&["b"]), at(1004)).is_some());
        assert!(cache.get(&key(&["c"]), at(1004)).is_some());

        // Tokens past their half-life go before any live one is evicted.
        let mut cache = JwtSvidCache::new(2);
        cache.insert(
            key(&["short"]),
            token(Some(1000), Some(1010), "s"),
            at(1000),
        );
        cache.insert(key(&["long"]), token(Some(1000), Some(3000), "l"), at(1000));
        cache.insert(key(&["new"]), token(Some(1006), Some(3000), "n"), at(1006));
        assert!(cache.get(&key(&["long"]), at(1006)).is_some());
        assert!(cache.get(&key(&["new"]), at(1006)).is_some());
    }

    #[test]
    fn the_pod_cache_forgets_everything_when_the_identity_changes() {
        let (snapshots, receiver) = watch::channel(Arc::new(IdentitySnapshot::NoIdentity));
        let cache = PodJwtSvidCache::new(receiver, 8);
        let now = at(1000);
        let generation = cache.lookup(&key(&["a"]), now).expect_err("empty");
        cache.store(
            generation,
            key(&["a"]),
            token(Some(1000), Some(1300), "a"),
            now,
        );
        assert!(cache.lookup(&key(&["a"]), now).is_ok(), "cached");

        snapshots.send_replace(Arc::new(IdentitySnapshot::NotReady));
        let generation = cache
            .lookup(&key(&["a"]), now)
            .expect_err("dropped on change");
        assert!(cache.is_empty());

        // A token minted under an identity that changed before it was stored is not kept.
        snapshots.send_replace(Arc::new(IdentitySnapshot::NoIdentity));
        cache.store(
            generation,
            key(&["a"]),
            token(Some(1000), Some(1300), "a"),
            now,
        );
        assert!(cache.is_empty());
        assert!(cache.lookup(&key(&["a"]), now).is_err());

        // The source is gone: nothing is served from before.
        let generation = cache.lookup(&key(&["a"]), now).expect_err("empty");
        cache.store(
            generation,
            key(&["a"]),
            token(Some(1000), Some(1300), "a"),
            now,
        );
        drop(snapshots);
        assert!(cache.lookup(&key(&["a"]), now).is_err());
    }
}
