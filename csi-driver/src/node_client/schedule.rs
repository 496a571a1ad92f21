//! When to renew and how long to back off, as plain functions of time.

use std::time::{Duration, SystemTime};

pub use wimsey_core::backoff::{backoff, jitter};

/// Renew a credential at half its lifetime (the SPIFFE convention).
pub use wimsey_core::renewal::half_life as renew_at;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
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
}
