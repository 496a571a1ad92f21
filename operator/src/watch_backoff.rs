//! How the operator's watches retry after an error: exponential from 0.5 s, capped at 10 s,
//! jittered, reset by the first event that gets through.
//!
//! kube's default (client-go's reflector: up to 30 s, doubled again by jitter) left a replica
//! blind to new ClusterSPIFFEIDs for up to 90 s after the API server came back from an outage;
//! a handful of watches per replica retrying every 10 s costs the API server nothing.

use std::time::Duration;

use kube::runtime::utils::Backoff;
use wimsey_core::backoff::{backoff, jitter};

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LONGEST_RETRY: Duration = Duration::from_secs(10);

/// The retry spacing of one watch.
#[derive(Debug, Default)]
pub struct WatchBackoff {
    failures: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = backoff(self.failures, FIRST_RETRY, LONGEST_RETRY, jitter());
        self.failures = self.failures.saturating_add(1);
        Some(wait)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_grow_to_ten_seconds_and_start_over_after_a_reset() {
        let mut retries = WatchBackoff::default();
        let waits: Vec<Duration> = retries.by_ref().take(8).collect();
        assert!(waits[0] <= FIRST_RETRY && waits[0] >= FIRST_RETRY / 2);
        assert!(waits.iter().all(|w| *w <= LONGEST_RETRY));
        assert!(waits[7] >= LONGEST_RETRY / 2);
        retries.reset();
        assert!(retries.next().unwrap_or_default() <= FIRST_RETRY);
    }
}
