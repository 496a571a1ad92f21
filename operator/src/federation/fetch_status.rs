//! The poller's part of a ClusterFederatedTrustDomain's status, as plain values: the
//! `BundleFetched` condition, the held bundle and the fetch times. Written by server-side apply
//! under its own field manager, so every write carries all of these fields (a field left out
//! would be removed) and the reconciler's `Ready` is left alone.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use wimsey_core::bundle::TrustDomainBundle;

use crate::crd::{CONDITION_BUNDLE_FETCHED, ClusterFederatedTrustDomainStatus, reasons};
use crate::reconcile::status::bounded_message;

/// The field manager of the poller's status writes.
pub const FETCH_FIELD_MANAGER: &str = "wimsey-operator-federation";

/// How one poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// A bundle was fetched; `replaced` when it is newer than the one held.
    Fetched { replaced: bool },
    /// The fetch failed (reason, message); the held bundle stays.
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// The status fields the poller owns after `outcome`. `previous` is the status as stored
/// (for the condition's transition time and the last success when this poll failed).
pub fn fetch_status(
    previous: Option<&ClusterFederatedTrustDomainStatus>,
    outcome: &PollOutcome,
    held: Option<&TrustDomainBundle>,
    endpoint: &str,
    now: Timestamp,
    next_refresh: Timestamp,
) -> ClusterFederatedTrustDomainStatus {
    let (ok, reason, message) = match outcome {
        PollOutcome::Fetched { .. } => (
            true,
            reasons::BUNDLE_FETCHED,
            match held {
                Some(bundle) => format!(
                    "fetched from {endpoint}: sequence {}, {} X.509 and {} JWT authorities",
                    bundle
                        .sequence_number
                        .map_or_else(|| "none".to_owned(), |s| s.to_string()),
                    bundle.x509_authorities.len(),
                    bundle.jwt_authorities.len()
                ),
                None => format!("fetched from {endpoint}"),
            },
        ),
        PollOutcome::Failed { reason, message } => (false, *reason, bounded_message(message)),
    };
    let status = if ok { "True" } else { "False" };
    let previous_condition = previous.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == CONDITION_BUNDLE_FETCHED)
    });
    let transition = previous_condition
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    let last_success = match outcome {
        PollOutcome::Fetched { .. } => Some(Time(now)),
        PollOutcome::Failed { .. } => previous.and_then(|s| s.last_successful_fetch.clone()),
    };
    ClusterFederatedTrustDomainStatus {
        conditions: vec![Condition {
            type_: CONDITION_BUNDLE_FETCHED.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: None,
            last_transition_time: transition,
        }],
        observed_generation: None,
        bundle: held
            .and_then(|b| b.to_spiffe_jwks().ok())
            .unwrap_or_default(),
        trust_domain: held
            .map(|b| b.trust_domain.name().to_owned())
            .unwrap_or_default(),
        last_successful_fetch: last_success,
        spiffe_sequence: held.and_then(|b| b.sequence_number),
        x509_authorities: held.map(|b| u32::try_from(b.x509_authorities.len()).unwrap_or(u32::MAX)),
        jwt_authorities: held.map(|b| u32::try_from(b.jwt_authorities.len()).unwrap_or(u32::MAX)),
        next_refresh: Some(Time(next_refresh)),
    }
}

/// The Event a write deserves: when `BundleFetched` changes status or reason.
pub fn fetch_transition(
    previous: Option<&ClusterFederatedTrustDomainStatus>,
    written: &ClusterFederatedTrustDomainStatus,
) -> Option<(bool, String, String)> {
    let find = |s: &ClusterFederatedTrustDomainStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == CONDITION_BUNDLE_FETCHED)
            .cloned()
    };
    let now = find(written)?;
    let before = previous.and_then(find);
    if before.is_some_and(|b| b.status == now.status && b.reason == now.reason) {
        return None;
    }
    Some((now.status == "True", now.reason, now.message))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wimsey_core::TrustDomain;

    use super::*;

    fn held() -> TrustDomainBundle {
        TrustDomainBundle {
            trust_domain: TrustDomain::new("other.org").unwrap(),
            x509_authorities: Vec::new(),
            jwt_authorities: BTreeMap::new(),
            wit_authorities: BTreeMap::new(),
            sequence_number: Some(7),
            refresh_hint_seconds: Some(300),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn a_failure_keeps_the_bundle_and_the_last_success_and_a_transition_is_an_event() {
        let bundle = held();
        let fetched = fetch_status(
            None,
            &PollOutcome::Fetched { replaced: true },
            Some(&bundle),
            "https://other.org",
            at(100),
            at(400),
        );
        assert_eq!(fetched.conditions[0].status, "True");
        assert_eq!(fetched.spiffe_sequence, Some(7));
        assert_eq!(fetched.trust_domain, "other.org");
        assert!(
            fetched.bundle.contains("\"spiffe_sequence\":7"),
            "{}",
            fetched.bundle
        );
        assert!(fetch_transition(None, &fetched).unwrap().0);
        // Fetched again: same condition, same transition time, no Event.
        let again = fetch_status(
            Some(&fetched),
            &PollOutcome::Fetched { replaced: false },
            Some(&bundle),
            "https://other.org",
            at(400),
            at(700),
        );
        assert_eq!(again.conditions[0].last_transition_time, Time(at(100)));
        assert_eq!(again.last_successful_fetch, Some(Time(at(400))));
        assert_eq!(fetch_transition(Some(&fetched), &again), None);
        // Then the endpoint goes away: False with the reason, the bundle and the last success stay.
        let failed = fetch_status(
            Some(&again),
            &PollOutcome::Failed {
                reason: reasons::ENDPOINT_UNREACHABLE,
                message: "cannot reach https://other.org: connection refused".into(),
            },
            Some(&bundle),
            "https://other.org",
            at(700),
            at(730),
        );
        assert_eq!(failed.conditions[0].status, "False");
        assert_eq!(failed.conditions[0].reason, "EndpointUnreachable");
        assert_eq!(failed.conditions[0].last_transition_time, Time(at(700)));
        assert_eq!(failed.bundle, again.bundle);
        assert_eq!(failed.last_successful_fetch, Some(Time(at(400))));
        assert_eq!(failed.next_refresh, Some(Time(at(730))));
        let event = fetch_transition(Some(&again), &failed).unwrap();
        assert_eq!((event.0, event.1.as_str()), (false, "EndpointUnreachable"));
    }

    #[test]
    fn a_peer_chosen_message_is_bounded_on_a_character_boundary() {
        // e.g. a duplicate non-ASCII kid, quoted in the parse error
        let message = format!("duplicate key ID \"{}\"", "é".repeat(5000));
        let failed = fetch_status(
            None,
            &PollOutcome::Failed {
                reason: reasons::INVALID_BUNDLE,
                message,
            },
            None,
            "https://other.org",
            at(1),
            at(2),
        );
        let written = &failed.conditions[0].message;
        assert!(written.len() <= 1000 && written.starts_with("duplicate key ID"));
        assert!(fetch_transition(None, &failed).is_some());
    }
}
