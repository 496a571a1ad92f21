//! Token-bucket rate limits: one bucket, and buckets per key (e.g. per source address) with a cap
//! on how many keys are tracked. The caller passes the current instant in.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A bucket of `burst` tokens refilled at `per_second` tokens a second; each call takes one.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket. `per_second` of 0 means no refill; `burst` is at least 1.
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: per_second.max(0.0),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes a token if there is one. A clock that goes backwards refills nothing.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely by `now` (so forgetting it changes nothing).
    pub fn is_full(&self, now: Instant) -> bool {
        let mut copy = self.clone();
        copy.refill(now);
        copy.tokens >= copy.burst
    }

    /// How long until a token is available (zero if one is).
    pub fn wait_time(&self, now: Instant) -> Duration {
        let mut copy = self.clone();
        copy.refill(now);
        if copy.tokens >= 1.0 {
            return Duration::ZERO;
        }
        if copy.per_second <= 0.0 {
            return Duration::MAX;
        }
        Duration::try_from_secs_f64((1.0 - copy.tokens) / copy.per_second).unwrap_or(Duration::MAX)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if now > self.updated {
            self.updated = now;
        }
    }
}

/// Why [`KeyedTokenBuckets::try_take`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This key's bucket is empty.
    KeyRateExceeded,
    /// As many keys as allowed are mid-burst; a new key cannot get a bucket.
    TooManyKeys,
}

/// One bucket per key, created full on first use. At most `max_keys` are kept: full buckets are
/// forgotten when room is needed, and a new key is refused while every tracked key is mid-burst
/// (so a flood of new keys cannot grow memory or reset anyone's bucket).
#[derive(Debug, Clone)]
pub struct KeyedTokenBuckets<K> {
    per_second: f64,
    burst: u32,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Eq + Hash + Clone> KeyedTokenBuckets<K> {
    pub fn new(per_second: f64, burst: u32, max_keys: usize) -> Self {
        Self {
            per_second,
            burst,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    pub fn try_take(&mut self, key: &K, now: Instant) -> Result<(), Refusal> {
        if !self.buckets.contains_key(key) {
            if self.buckets.len() >= self.max_keys {
                self.buckets.retain(|_, bucket| !bucket.is_full(now));
            }
            if self.buckets.len() >= self.max_keys {
                return Err(Refusal::TooManyKeys);
            }
            self.buckets.insert(
                key.clone(),
                TokenBucket::new(self.per_second, self.burst, now),
            );
        }
        let taken = self
            .buckets
            .get_mut(key)
            .is_some_and(|bucket| bucket.try_take(now));
        if taken {
            Ok(())
        } else {
            Err(Refusal::KeyRateExceeded)
        }
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 3, t0);
        assert!((0..3).all(|_| bucket.try_take(t0)), "the burst");
        assert!(!bucket.try_take(t0), "empty");
        assert_eq!(bucket.wait_time(t0), Duration::from_millis(500));
        assert!(!bucket.try_take(t0 + Duration::from_millis(400)));
        assert!(bucket.try_take(t0 + Duration::from_millis(500)), "refilled");
        assert!(!bucket.try_take(t0 + Duration::from_millis(500)));
        // Refill stops at the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!(bucket.is_full(later));
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1.0, 1, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - Duration::from_secs(5)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(999)));
        assert!(bucket.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn zero_rate_never_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.0, 1, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_secs(86_400)));
        assert_eq!(bucket.wait_time(t0), Duration::MAX);
    }

    #[test]
    fn keys_have_their_own_buckets_and_their_number_is_capped() {
        let t0 = Instant::now();
        let mut buckets = KeyedTokenBuckets::new(1.0, 2, 2);
        assert_eq!(buckets.try_take(&"a", t0), Ok(()));
        assert_eq!(buckets.try_take(&"a", t0), Ok(()));
        assert_eq!(buckets.try_take(&"a", t0), Err(Refusal::KeyRateExceeded));
        assert_eq!(buckets.try_take(&"b", t0), Ok(()), "b is not a");
        // Both tracked keys are mid-burst: a third key is refused, not given a fresh bucket.
        assert_eq!(buckets.try_take(&"c", t0), Err(Refusal::TooManyKeys));
        assert_eq!(buckets.len(), 2);
        // Once a's and b's buckets are full again they are forgotten to make room.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(buckets.try_take(&"c", later), Ok(()));
        assert!(buckets.len() <= 2);
    }
}
