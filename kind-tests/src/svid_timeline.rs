//! What a workload's `spiffe-probe watch` log says about its identity over time: when each SVID
//! arrived and until when it was valid, and whether the workload ever held only an expired one.

use std::time::SystemTime;

use anyhow::{Context, Result};
use k8s_openapi::jiff::Timestamp;

/// One SVID a watcher logged: when it arrived and until when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    pub received_ms: i64,
    pub not_after_ms: i64,
}

/// The `x509 <id> serial=.. not_after=<RFC3339> at_ms=<ms>` lines of `spiffe-probe watch`.
pub fn svid_timeline(log: &str) -> Result<Vec<Received>> {
    let mut timeline = Vec::new();
    for line in log.lines().filter(|l| l.starts_with("x509 ")) {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .with_context(|| format!("no {key} in {line:?}"))
        };
        let id = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let not_after: Timestamp = field("not_after=")?
            .parse()
            .with_context(|| format!("not_after in {line:?}"))?;
        timeline.push(Received {
            id,
            received_ms: field("at_ms=")?.parse()?,
            not_after_ms: not_after.as_millisecond(),
        });
    }
    Ok(timeline)
}

/// The intervals (from, to) in which the newest SVID a workload held had expired, up to `now_ms`.
pub fn expiry_gaps(timeline: &[Received], now_ms: i64) -> Vec<(i64, i64)> {
    let mut gaps = Vec::new();
    let Some(first) = timeline.first() else {
        return gaps;
    };
    let mut valid_until = first.not_after_ms;
    for svid in &timeline[1..] {
        if svid.received_ms > valid_until {
            gaps.push((valid_until, svid.received_ms));
        }
        valid_until = valid_until.max(svid.not_after_ms);
    }
    if now_ms > valid_until {
        gaps.push((valid_until, now_ms));
    }
    gaps
}

/// Now, in Unix milliseconds (the `at_ms=` of the log lines).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(received_ms: i64, not_after_ms: i64) -> Received {
        Received {
            id: "spiffe://example.org/ns/a/sa/default".into(),
            received_ms,
            not_after_ms,
        }
    }

    #[test]
    fn a_workload_that_rotated_in_time_has_no_gap() {
        let timeline = [svid(0, 30), svid(15, 45), svid(40, 70)];
        assert!(expiry_gaps(&timeline, 60).is_empty());
    }

    #[test]
    fn an_svid_that_arrived_after_the_last_one_expired_is_a_gap() {
        let timeline = [svid(0, 30), svid(35, 65)];
        assert_eq!(expiry_gaps(&timeline, 50), vec![(30, 35)]);
        // and a workload whose last SVID expired before the check
        assert_eq!(expiry_gaps(&timeline, 70), vec![(30, 35), (65, 70)]);
    }

    #[test]
    fn watch_lines_parse_into_a_timeline() {
        let log = "x509 spiffe://example.org/ns/a/sa/default serial=1f not_after=2026-12-07T18:00:30Z at_ms=1796666400000 start_ms=0\n\
                   error code=Unavailable msg=connection refused\n";
        let timeline = svid_timeline(log).unwrap();
        assert_eq!(timeline.len(), 1);
        assert_eq!(timeline[0].received_ms, 1_796_666_400_000);
        assert_eq!(
            timeline[0].not_after_ms,
            "2026-12-07T18:00:30Z"
                .parse::<Timestamp>()
                .unwrap()
                .as_millisecond()
        );
    }
}
