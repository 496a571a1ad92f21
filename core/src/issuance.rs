//! How long what the authority issues lives: an entry's TTL (zero: none set) falls back to the
//! cluster's default and is capped by the authority's maximum, as SPIRE Server does.

use std::time::Duration;

/// The lifetimes the authority signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    pub default_x509_svid_ttl: Duration,
    pub default_jwt_svid_ttl: Duration,
    pub max_x509_svid_ttl: Duration,
    pub max_jwt_svid_ttl: Duration,
}

impl TtlPolicy {
    /// An X.509-SVID's lifetime for an entry whose `x509SVIDTTL` is `entry_ttl`.
    pub fn x509_svid_ttl(&self, entry_ttl: Duration) -> Duration {
        ttl_or(
            entry_ttl,
            self.default_x509_svid_ttl,
            self.max_x509_svid_ttl,
        )
    }

    /// A JWT-SVID's lifetime for an entry whose `jwtSVIDTTL` is `entry_ttl`.
    pub fn jwt_svid_ttl(&self, entry_ttl: Duration) -> Duration {
        ttl_or(entry_ttl, self.default_jwt_svid_ttl, self.max_jwt_svid_ttl)
    }

    /// A WIT-SVID binds a key the workload holds, as an X.509-SVID does, so it lives as long as
    /// the entry's X.509-SVID would.
    pub fn wit_svid_ttl(&self, entry_x509_ttl: Duration) -> Duration {
        self.x509_svid_ttl(entry_x509_ttl)
    }
}

fn ttl_or(requested: Duration, default: Duration, max: Duration) -> Duration {
    let ttl = if requested.is_zero() {
        default
    } else {
        requested
    };
    ttl.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    fn policy() -> TtlPolicy {
        TtlPolicy {
            default_x509_svid_ttl: H,
            default_jwt_svid_ttl: Duration::from_secs(300),
            max_x509_svid_ttl: 2 * H,
            max_jwt_svid_ttl: Duration::from_secs(600),
        }
    }

    #[test]
    fn an_entry_ttl_falls_back_to_the_default_and_is_capped() {
        let policy = policy();
        assert_eq!(policy.x509_svid_ttl(Duration::ZERO), H);
        assert_eq!(policy.x509_svid_ttl(3 * H), 2 * H);
        assert_eq!(
            policy.x509_svid_ttl(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            policy.jwt_svid_ttl(Duration::ZERO),
            Duration::from_secs(300)
        );
        assert_eq!(policy.jwt_svid_ttl(H), Duration::from_secs(600));
        assert_eq!(policy.wit_svid_ttl(3 * H), 2 * H);
    }

    #[test]
    fn a_default_above_the_maximum_is_capped_too() {
        let policy = TtlPolicy {
            default_x509_svid_ttl: 3 * H,
            ..policy()
        };
        assert_eq!(policy.x509_svid_ttl(Duration::ZERO), 2 * H);
    }
}
