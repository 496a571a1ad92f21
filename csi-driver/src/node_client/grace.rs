//! When a refusal from the node API takes a pod's identities away, as a plain state machine.
//!
//! The operator's view can lag (a replica that has not seen a pod's ClusterSPIFFEID yet, a pod
//! that moved in its cache): one `PermissionDenied` must not wipe SVIDs that are still valid. A
//! denial takes effect only once it has held, with no success in between, for the grace period;
//! `Unavailable` and other transient errors never take anything away.

use std::time::{Duration, SystemTime};

/// The default grace: longer than an informer lag, far shorter than an SVID.
pub const DEFAULT_DENIAL_GRACE: Duration = Duration::from_secs(30);

/// What to do with the identities the pod holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Keep serving them.
    Keep,
    /// Take them away: the denial has held past the grace (or there was nothing to keep).
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenialGrace {
    grace: Duration,
    denied_since: Option<SystemTime>,
}

impl DenialGrace {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            denied_since: None,
        }
    }

    /// The node API served the pod: any denial so far was transient.
    pub fn on_success(&mut self) {
        self.denied_since = None;
    }

    /// The node API refused the pod at `now`. `holding`: whether the pod has identities to lose.
    pub fn on_denied(&mut self, now: SystemTime, holding: bool) -> Holding {
        let since = *self.denied_since.get_or_insert(now);
        if !holding || now >= since + self.grace {
            Holding::Drop
        } else {
            Holding::Keep
        }
    }

    /// The node API could not answer: neither a denial nor a success.
    pub fn on_unavailable(&self) -> Holding {
        Holding::Keep
    }

    /// When a denial held since it started would take effect.
    pub fn drop_at(&self) -> Option<SystemTime> {
        self.denied_since.map(|since| since + self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn a_single_denial_keeps_the_identities() {
        let mut grace = DenialGrace::new(Duration::from_secs(30));
        assert_eq!(grace.on_denied(at(100), true), Holding::Keep);
        assert_eq!(grace.drop_at(), Some(at(130)));
        assert_eq!(grace.on_denied(at(129), true), Holding::Keep);
    }

    #[test]
    fn a_denial_held_past_the_grace_drops_them() {
        let mut grace = DenialGrace::new(Duration::from_secs(30));
        grace.on_denied(at(100), true);
        assert_eq!(grace.on_unavailable(), Holding::Keep);
        assert_eq!(grace.on_denied(at(130), true), Holding::Drop);
    }

    #[test]
    fn a_success_in_between_restarts_the_grace() {
        let mut grace = DenialGrace::new(Duration::from_secs(30));
        grace.on_denied(at(100), true);
        grace.on_success();
        assert_eq!(grace.drop_at(), None);
        assert_eq!(grace.on_denied(at(125), true), Holding::Keep);
        assert_eq!(grace.on_denied(at(150), true), Holding::Keep);
        assert_eq!(grace.on_denied(at(155), true), Holding::Drop);
    }

    #[test]
    fn unavailable_never_drops_anything() {
        let mut grace = DenialGrace::new(Duration::from_secs(30));
        for _ in 0..100 {
            assert_eq!(grace.on_unavailable(), Holding::Keep);
        }
        assert_eq!(grace.drop_at(), None);
        // And it does not count as a denial starting.
        assert_eq!(grace.on_denied(at(1_000), true), Holding::Keep);
    }

    #[test]
    fn with_nothing_to_keep_a_denial_applies_at_once() {
        let mut grace = DenialGrace::new(Duration::from_secs(30));
        assert_eq!(grace.on_denied(at(100), false), Holding::Drop);
    }
}
