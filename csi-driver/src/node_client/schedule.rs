//! When to renew and how long to back off, as plain functions of time.

use std::time::{Duration, SystemTime};

/// Renew a credential at half its lifetime (the SPIFFE convention), so a failed renewal leaves
/// the other half to retry in.
pub fn renew_at(issued_at: SystemTime, expires_at: SystemTime) -> SystemTime {
    let lifetime = expires_at.duration_since(issued_at).unwrap_or_default();
    issued_at + lifetime / 2
}

/// A node session is kept for calls while it has at least this long left.
pub const SESSION_MARGIN: Duration = Duration::from_secs(10);

/// After a failed re-attestation at `now`: when to try again if the current node session (ending
/// `expires_at`) can still be used, or `None` if it cannot and the failure must surface. A
/// failing re-attestation (the API server is down, TokenReview unreachable) does not end a
/// session the operator still accepts.
pub fn retry_attestation_at(
    now: SystemTime,
    expires_at: SystemTime,
    attempt: u32,
    jitter: f64,
) -> Option<SystemTime> {
    let usable_until = expires_at.checked_sub(SESSION_MARGIN)?;
    if now >= usable_until {
        return None;
    }
    let wait = backoff(
        attempt,
        Duration::from_secs(1),
        Duration::from_secs(30),
        jitter,
    );
    Some((now + wait).min(usable_until))
}

/// Exponential backoff for retry number `attempt` (0 = first retry): `base * 2^attempt`, capped
/// at `max`, then reduced by up to half by `jitter` (a random value in `[0, 1)`), so plugins that
/// failed together do not retry together.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(16));
    let full = base.saturating_mul(factor).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    full.mul_f64(1.0 - jitter / 2.0)
}

/// A random value in `[0, 1)` for [`backoff`]; std's per-process random hash keys are enough for
/// spreading retries.
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

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn renews_at_half_life() {
        assert_eq!(renew_at(at(1000), at(4600)), at(2800));
        // Already expired or inverted: renew now.
        assert_eq!(renew_at(at(1000), at(900)), at(1000));
    }

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
    }

    #[test]
    fn a_failed_reattestation_keeps_a_session_that_is_still_valid() {
        // Session until 4600; re-attestation failed at 2800 (half-life).
        assert_eq!(
            retry_attestation_at(at(2800), at(4600), 0, 0.0),
            Some(at(2801))
        );
        assert_eq!(
            retry_attestation_at(at(2800), at(4600), 10, 0.0),
            Some(at(2830))
        );
        // Never scheduled past the point where the session stops being usable.
        assert_eq!(
            retry_attestation_at(at(4585), at(4600), 10, 0.0),
            Some(at(4590))
        );
        // Too close to its end, or expired: the failure surfaces.
        assert_eq!(retry_attestation_at(at(4590), at(4600), 0, 0.0), None);
        assert_eq!(retry_attestation_at(at(5000), at(4600), 0, 0.0), None);
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
