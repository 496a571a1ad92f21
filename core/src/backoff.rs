//! Retry spacing: exponential backoff with jitter, shared by every retry loop in the plugin and the
//! operator, so that many clients that failed together do not come back together.

use std::time::{Duration, SystemTime};

/// Exponential backoff for retry number `attempt` (0 = first retry): `base * 2^attempt`, capped
/// at `max`, then reduced by up to half by `jitter` (a random value in `[0, 1)`).
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(16));
    let full = base.saturating_mul(factor).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    full.mul_f64(1.0 - jitter / 2.0)
}

/// A random value in `[0, 1)` for [`backoff`]; std's per-process random hash keys are enough for
/// spreading retries (nothing here needs to be unpredictable).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_down_by_at_most_half() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        assert_eq!(backoff(0, base, max, 0.0), base);
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(20, base, max, 0.0), max);
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(3, base, max, 0.5), Duration::from_secs(3));
        assert_eq!(backoff(u32::MAX, base, max, 0.0), max);
        // Out-of-range jitter is clamped.
        assert_eq!(backoff(3, base, max, 7.0), Duration::from_secs(2));
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
