//! The rules of fetching another trust domain's bundle (`SPIFFE_Federation.md`): how often to
//! poll, how to retry, which redirects to follow, and whether a fetched bundle replaces the one
//! we hold. Plain values in, decisions out; the HTTP client and its timers live in the operator.

use std::time::Duration;

use crate::backoff::backoff;
use crate::bundle::TrustDomainBundle;

/// When to poll a bundle endpoint again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// The shortest interval, whatever the publisher hints (a hint of 0 must not become a loop).
    pub min: Duration,
    /// The longest interval, so a key published late is picked up in time.
    pub max: Duration,
    /// The interval when the bundle has no `spiffe_refresh_hint` (the spec suggests five minutes).
    pub default: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            default: Duration::from_secs(300),
        }
    }
}

impl RefreshPolicy {
    /// The interval until the next poll after a successful fetch of a bundle hinting `hint`
    /// seconds: the hint clamped to `[min, max]`, or the default clamped the same way.
    pub fn interval(&self, hint_seconds: Option<u64>) -> Duration {
        let wanted = hint_seconds.map_or(self.default, Duration::from_secs);
        wanted.clamp(self.min, self.max.max(self.min))
    }

    /// The delay before retry number `failures` (1 = the first failure): jittered exponential
    /// backoff from a tenth of the interval, never longer than the interval itself, so a broken
    /// endpoint is not hammered and a repaired one is noticed within one refresh.
    pub fn retry_delay(&self, failures: u32, interval: Duration, jitter: f64) -> Duration {
        let base = (interval / 10).max(Duration::from_secs(1));
        backoff(failures.saturating_sub(1), base, interval, jitter)
    }
}

/// What a fetched bundle means for the one we hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleUpdate {
    /// We held none: take it.
    First,
    /// A higher `spiffe_sequence`, or no sequence on either side and different contents: take it.
    Newer,
    /// The same contents (or the same sequence): nothing to do.
    Unchanged,
    /// A lower `spiffe_sequence` than the bundle we hold: keep ours.
    Stale { held: u64, fetched: u64 },
}

impl BundleUpdate {
    /// Whether the fetched bundle replaces the held one.
    pub fn replaces(self) -> bool {
        matches!(self, BundleUpdate::First | BundleUpdate::Newer)
    }
}

/// Compares a fetched bundle with the held one by `spiffe_sequence` (§ "freshness"): the sequence
/// decides when both have one; without, the most recently retrieved bundle wins. A sequence equal
/// to ours with different contents breaks the publisher's promise; we keep ours, as a repeat of
/// the same sequence is far more often a replica lagging behind than a new key.
pub fn compare_bundles(
    held: Option<&TrustDomainBundle>,
    fetched: &TrustDomainBundle,
) -> BundleUpdate {
    let Some(held) = held else {
        return BundleUpdate::First;
    };
    match (held.sequence_number, fetched.sequence_number) {
        (Some(held), Some(fetched)) if fetched > held => BundleUpdate::Newer,
        (Some(held), Some(fetched)) if fetched < held => BundleUpdate::Stale { held, fetched },
        (Some(_), Some(_)) => BundleUpdate::Unchanged,
        _ if same_keys(held, fetched) => BundleUpdate::Unchanged,
        _ => BundleUpdate::Newer,
    }
}

fn same_keys(a: &TrustDomainBundle, b: &TrustDomainBundle) -> bool {
    a.x509_authorities == b.x509_authorities
        && a.jwt_authorities == b.jwt_authorities
        && a.wit_authorities == b.wit_authorities
}

/// How many redirects one fetch follows.
pub const MAX_REDIRECTS: usize = 3;

/// Whether an HTTP status is a redirect a bundle fetch follows. Every redirect is followed for
/// this fetch only: the spec asks publishers for temporary ones and clients not to persist the
/// new location, so even a permanent one does not change the configured URL.
pub fn is_followed_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Why a bundle endpoint URL (configured, or a redirect's target) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointUrlError {
    #[error("scheme must be https, not {0:?}")]
    NotHttps(String),
    #[error("host must not be empty")]
    NoHost,
    #[error("must not contain user info")]
    UserInfo,
}

/// Both profiles (configured URLs and redirect targets): https, a host, no user info.
pub fn check_endpoint_url(url: &url::Url) -> Result<(), EndpointUrlError> {
    if url.scheme() != "https" {
        return Err(EndpointUrlError::NotHttps(url.scheme().to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(EndpointUrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointUrlError::UserInfo);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::TrustDomain;

    const MIN: u64 = 60;

    #[test]
    fn refresh_hints_are_clamped_and_missing_ones_default_to_five_minutes() {
        let policy = RefreshPolicy::default();
        assert_eq!(policy.interval(None), Duration::from_secs(300));
        assert_eq!(policy.interval(Some(0)), Duration::from_secs(MIN));
        assert_eq!(policy.interval(Some(1)), Duration::from_secs(MIN));
        assert_eq!(policy.interval(Some(900)), Duration::from_secs(900));
        assert_eq!(policy.interval(Some(2_419_200)), Duration::from_secs(3600));
        assert_eq!(policy.interval(Some(u64::MAX)), Duration::from_secs(3600));
        // Configured bounds (the interop tests poll every few seconds).
        let fast = RefreshPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(10),
            default: Duration::from_secs(5),
        };
        assert_eq!(fast.interval(Some(2)), Duration::from_secs(2));
        assert_eq!(fast.interval(None), Duration::from_secs(5));
        // A max below the min is the min.
        let odd = RefreshPolicy {
            min: Duration::from_secs(30),
            max: Duration::from_secs(10),
            default: Duration::from_secs(5),
        };
        assert_eq!(odd.interval(None), Duration::from_secs(30));
    }

    #[test]
    fn retries_back_off_from_a_tenth_of_the_interval_up_to_the_interval() {
        let policy = RefreshPolicy::default();
        let interval = Duration::from_secs(300);
        assert_eq!(
            policy.retry_delay(1, interval, 0.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            policy.retry_delay(2, interval, 0.0),
            Duration::from_secs(60)
        );
        assert_eq!(policy.retry_delay(10, interval, 0.0), interval);
        // Jitter only shortens, by at most half.
        assert_eq!(
            policy.retry_delay(1, interval, 0.999_999),
            Duration::from_secs(15) + Duration::from_micros(15)
        );
        // A tiny interval still waits a second.
        assert_eq!(
            policy.retry_delay(1, Duration::from_secs(2), 0.0),
            Duration::from_secs(1)
        );
    }

    fn bundle(sequence: Option<u64>, ca: &[u8]) -> TrustDomainBundle {
        TrustDomainBundle {
            trust_domain: TrustDomain::new("other.org").unwrap(),
            x509_authorities: vec![ca.to_vec()],
            jwt_authorities: BTreeMap::new(),
            wit_authorities: BTreeMap::new(),
            sequence_number: sequence,
            refresh_hint_seconds: None,
        }
    }

    #[test]
    fn bundles_are_ordered_by_sequence_and_else_by_arrival() {
        let fetched = bundle(Some(5), b"a");
        assert_eq!(compare_bundles(None, &fetched), BundleUpdate::First);
        assert_eq!(
            compare_bundles(Some(&bundle(Some(4), b"a")), &fetched),
            BundleUpdate::Newer
        );
        assert_eq!(
            compare_bundles(Some(&bundle(Some(5), b"b")), &fetched),
            BundleUpdate::Unchanged
        );
        let stale = compare_bundles(Some(&bundle(Some(9), b"b")), &fetched);
        assert_eq!(
            stale,
            BundleUpdate::Stale {
                held: 9,
                fetched: 5
            }
        );
        assert!(!stale.replaces());
        // Without a sequence on one side, contents decide.
        assert_eq!(
            compare_bundles(Some(&bundle(None, b"a")), &bundle(None, b"a")),
            BundleUpdate::Unchanged
        );
        assert_eq!(
            compare_bundles(Some(&bundle(Some(7), b"a")), &bundle(None, b"b")),
            BundleUpdate::Newer
        );
        assert!(BundleUpdate::Newer.replaces() && BundleUpdate::First.replaces());
    }

    #[test]
    fn redirects_and_endpoint_urls() {
        for status in [301, 302, 303, 307, 308] {
            assert!(is_followed_redirect(status), "{status}");
        }
        for status in [200, 300, 304, 305, 404] {
            assert!(!is_followed_redirect(status), "{status}");
        }
        let check = |u: &str| check_endpoint_url(&url::Url::parse(u).unwrap());
        assert_eq!(check("https://example.org/bundle"), Ok(()));
        assert_eq!(check("https://127.0.0.1:8443"), Ok(()));
        assert_eq!(
            check("http://example.org"),
            Err(EndpointUrlError::NotHttps("http".into()))
        );
        assert_eq!(
            check("https://user@example.org"),
            Err(EndpointUrlError::UserInfo)
        );
        assert_eq!(
            check("https://u:p@example.org"),
            Err(EndpointUrlError::UserInfo)
        );
        assert_eq!(
            check("file:///etc/passwd"),
            Err(EndpointUrlError::NotHttps("file".into()))
        );
    }
}
