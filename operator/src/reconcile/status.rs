//! Status of the three custom resources as plain values: computed from the [`ClusterState`],
//! compared with what the API server holds ignoring timestamps, and the Event a resource that
//! turned unhealthy gets. Written by [`crate::status::StatusWriter`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use wimsey_core::entries::{EntryError, OwnerKind};

use super::federation::{FederationInput, FederationOutcome};
use super::state::{ClusterState, StaticOutcome};
use crate::backend::RelationshipStatus;
use crate::crd::{
    CONDITION_BUNDLE_FETCHED, CONDITION_READY, ClusterFederatedTrustDomainStatus,
    ClusterSPIFFEIDStats, ClusterSPIFFEIDStatus, ClusterStaticEntryStatus, reasons,
};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "wimsey-operator";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrKind {
    ClusterSpiffeId,
    ClusterStaticEntry,
    ClusterFederatedTrustDomain,
}

impl CrKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CrKind::ClusterSpiffeId => "ClusterSPIFFEID",
            CrKind::ClusterStaticEntry => "ClusterStaticEntry",
            CrKind::ClusterFederatedTrustDomain => "ClusterFederatedTrustDomain",
        }
    }
}

/// The status one resource should have. Conditions carry a placeholder lastTransitionTime that
/// [`status_to_write`] replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredStatus {
    pub kind: CrKind,
    pub name: String,
    pub uid: String,
    pub status: Value,
    /// The status the API server holds (from the watch), if any.
    pub observed: Option<Value>,
    /// The resourceVersion the observed status was read at.
    pub observed_version: Option<String>,
}

impl DesiredStatus {
    /// The desired Ready condition's (status, reason, message).
    pub fn ready(&self) -> Option<(String, String, String)> {
        ready_of(&self.status)
    }
}

fn ready_of(status: &Value) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == CONDITION_READY).then(|| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (text("status"), text("reason"), text("message"))
        })
    })
}

fn ready_condition(generation: Option<i64>, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: CONDITION_READY.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn spec_error_reason(error: &EntryError) -> &'static str {
    match error {
        EntryError::EmptySpiffeIdTemplate | EntryError::InvalidTemplate { .. } => {
            reasons::INVALID_TEMPLATE
        }
        _ => reasons::INVALID_SPEC,
    }
}

/// The status every resource of this instance's class should have.
pub fn desired_statuses(state: &ClusterState) -> Vec<DesiredStatus> {
    let config = state.config();
    let mut out = Vec::new();
    for (name, spec) in &state.specs {
        let input = &spec.input;
        if !wimsey_core::entries::handles_class(config, &input.class_name) {
            continue;
        }
        let generation = input.meta.generation;
        let failures = state
            .backend
            .failures
            .get(&(OwnerKind::ClusterSpiffeId, name.clone()));
        let (condition, stats) = match &spec.compiled {
            Err(error) => (
                ready_condition(
                    generation,
                    false,
                    spec_error_reason(error),
                    error.to_string(),
                ),
                ClusterSPIFFEIDStats::default(),
            ),
            Ok(compiled) => {
                let (namespaces_selected, namespaces_ignored) = state.namespace_counts(compiled);
                let tally = state.tally(name).cloned().unwrap_or_default();
                let stats = ClusterSPIFFEIDStats {
                    namespaces_selected,
                    namespaces_ignored,
                    pods_selected: tally.pods_selected,
                    pod_entry_render_failures: tally.render_failures,
                    entries_masked: tally.entries_masked,
                    entries_to_set: tally.entries_to_set,
                    entry_failures: failures.map_or(0, |f| f.count),
                };
                let condition = if let Some((pod, (error, _))) = tally.failures.iter().next() {
                    ready_condition(
                        generation,
                        false,
                        reasons::RENDER_FAILED,
                        format!(
                            "{} of {} selected pods failed to render; pod {pod}: {error}",
                            tally.render_failures, tally.pods_selected
                        ),
                    )
                } else if let Some((pod, by)) = tally.masked_by.iter().next() {
                    ready_condition(
                        generation,
                        false,
                        reasons::MASKED,
                        format!(
                            "{} entries are masked by an older resource with the same SPIFFE ID, parent ID and selectors; pod {pod}: masked by {by}",
                            tally.entries_masked
                        ),
                    )
                } else if let Some(failures) = failures {
                    ready_condition(
                        generation,
                        false,
                        reasons::ENTRY_FAILED,
                        format!(
                            "the SPIRE Server refused {} of {} entries; {}",
                            failures.count, tally.entries_to_set, failures.first
                        ),
                    )
                } else if let Some(reason) = &state.backend.unavailable {
                    ready_condition(
                        generation,
                        false,
                        reasons::BACKEND_UNAVAILABLE,
                        format!("entries wait for the SPIRE Server: {reason}"),
                    )
                } else {
                    ready_condition(
                        generation,
                        true,
                        reasons::RECONCILED,
                        format!(
                            "{} entries for {} selected pods",
                            tally.entries_to_set, tally.pods_selected
                        ),
                    )
                };
                (condition, stats)
            }
        };
        out.push(DesiredStatus {
            kind: CrKind::ClusterSpiffeId,
            name: name.clone(),
            uid: input.meta.uid.clone(),
            status: to_json(&ClusterSPIFFEIDStatus {
                conditions: vec![condition],
                observed_generation: generation,
                stats,
            }),
            observed: input.status.as_ref().map(to_json),
            observed_version: input.meta.resource_version.clone(),
        });
    }
    for (name, entry) in &state.statics {
        let generation = entry.input.meta.generation;
        let status = match &entry.outcome {
            None | Some(StaticOutcome::NotOurs) => continue,
            Some(StaticOutcome::Set { id }) => {
                let refused = state
                    .backend
                    .failures
                    .get(&(OwnerKind::ClusterStaticEntry, name.clone()));
                let condition = match (refused, &state.backend.unavailable) {
                    (Some(failures), _) => ready_condition(
                        generation,
                        false,
                        reasons::ENTRY_FAILED,
                        format!("the SPIRE Server refused entry {id}; {}", failures.first),
                    ),
                    (None, Some(reason)) => ready_condition(
                        generation,
                        false,
                        reasons::BACKEND_UNAVAILABLE,
                        format!("entry {id} waits for the SPIRE Server: {reason}"),
                    ),
                    (None, None) => ready_condition(
                        generation,
                        true,
                        reasons::RECONCILED,
                        format!("entry {id} is set"),
                    ),
                };
                ClusterStaticEntryStatus {
                    conditions: vec![condition],
                    observed_generation: generation,
                    rendered: true,
                    masked: false,
                    set: refused.is_none(),
                }
            }
            Some(StaticOutcome::Masked { by }) => ClusterStaticEntryStatus {
                conditions: vec![ready_condition(
                    generation,
                    false,
                    reasons::MASKED,
                    format!(
                        "masked by {by}, an older resource with the same SPIFFE ID, parent ID and selectors"
                    ),
                )],
                observed_generation: generation,
                rendered: true,
                masked: true,
                set: false,
            },
            Some(StaticOutcome::Invalid(error)) => ClusterStaticEntryStatus {
                conditions: vec![ready_condition(
                    generation,
                    false,
                    reasons::INVALID_SPEC,
                    error.to_string(),
                )],
                observed_generation: generation,
                rendered: false,
                masked: false,
                set: false,
            },
        };
        out.push(DesiredStatus {
            kind: CrKind::ClusterStaticEntry,
            name: name.clone(),
            uid: entry.input.meta.uid.clone(),
            status: to_json(&status),
            observed: entry.input.status.as_ref().map(to_json),
            observed_version: entry.input.meta.resource_version.clone(),
        });
    }
    for name in state.federations.keys() {
        let Some((input, outcome, observed)) = state.federation_status(name) else {
            continue;
        };
        let generation = input.meta.generation;
        let condition = match outcome {
            None | Some(FederationOutcome::NotOurs) => continue,
            Some(FederationOutcome::Accepted) => match &state.backend.relationships {
                Some(relationships) => relationship_ready(
                    generation,
                    input,
                    relationships.get(name),
                    state.backend.unavailable.as_deref(),
                ),
                None => federation_ready(generation, input, observed),
            },
            Some(FederationOutcome::Invalid { field, reason }) => ready_condition(
                generation,
                false,
                reasons::INVALID_SPEC,
                format!("invalid {field}: {reason}"),
            ),
            Some(FederationOutcome::Duplicate { of }) => ready_condition(
                generation,
                false,
                reasons::DUPLICATE_TRUST_DOMAIN,
                format!(
                    "trust domain {} is already declared by the older ClusterFederatedTrustDomain {of}",
                    input.spec.trust_domain
                ),
            ),
        };
        out.push(DesiredStatus {
            kind: CrKind::ClusterFederatedTrustDomain,
            name: name.clone(),
            uid: input.meta.uid.clone(),
            status: to_json(&ClusterFederatedTrustDomainStatus {
                conditions: vec![condition],
                observed_generation: generation,
                ..ClusterFederatedTrustDomainStatus::default()
            }),
            observed: observed.map(to_json),
            observed_version: input.meta.resource_version.clone(),
        });
    }
    out
}

/// Ready of an accepted relationship when the SPIRE Server holds relationships (spire backend):
/// whether SPIRE holds it as declared. SPIRE fetches the bundle itself from then on.
fn relationship_ready(
    generation: Option<i64>,
    input: &FederationInput,
    status: Option<&RelationshipStatus>,
    unavailable: Option<&str>,
) -> Condition {
    let (td, endpoint) = (&input.spec.trust_domain, &input.spec.bundle_endpoint_url);
    match (status, unavailable) {
        (_, Some(reason)) => ready_condition(
            generation,
            false,
            reasons::BACKEND_UNAVAILABLE,
            bounded_message(&format!(
                "the federation relationship waits for the SPIRE Server: {reason}"
            )),
        ),
        (Some(RelationshipStatus::Set), None) => ready_condition(
            generation,
            true,
            reasons::RECONCILED,
            format!("the SPIRE Server federates with {td}, fetching its bundle from {endpoint}"),
        ),
        (Some(RelationshipStatus::Refused(why)), None) => ready_condition(
            generation,
            false,
            reasons::RELATIONSHIP_FAILED,
            bounded_message(&format!(
                "the SPIRE Server refused the federation relationship: {why}"
            )),
        ),
        (None, None) => ready_condition(
            generation,
            false,
            reasons::PENDING,
            "waiting for the SPIRE Server to hold the federation relationship".to_owned(),
        ),
    }
}

/// Ready of an accepted relationship follows the poller's `BundleFetched` condition: a bundle
/// endpoint that cannot be fetched makes it False with the fetch's reason (the last good bundle
/// stays in use meanwhile); before the first fetch it is Pending.
fn federation_ready(
    generation: Option<i64>,
    input: &FederationInput,
    observed: Option<&ClusterFederatedTrustDomainStatus>,
) -> Condition {
    let fetched = observed.and_then(|status| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_BUNDLE_FETCHED)
    });
    let endpoint = &input.spec.bundle_endpoint_url;
    match fetched {
        Some(c) if c.status == "True" => ready_condition(
            generation,
            true,
            reasons::RECONCILED,
            format!(
                "the bundle of {} is fetched from {endpoint}",
                input.spec.trust_domain
            ),
        ),
        Some(c) => {
            let held = observed.is_some_and(|s| !s.bundle.is_empty())
                || !input.spec.trust_domain_bundle.is_empty();
            let keeping = if held {
                "; the last good bundle stays in use"
            } else {
                ""
            };
            ready_condition(
                generation,
                false,
                &c.reason,
                bounded_message(&format!("{}{keeping}", c.message)),
            )
        }
        None => ready_condition(
            generation,
            false,
            reasons::PENDING,
            format!("waiting for the first fetch from {endpoint}"),
        ),
    }
}

/// The longest condition message or Event note we write: messages can carry text a remote
/// peer chose (a fetch error), and Events cap notes at 1 KiB.
pub const MAX_MESSAGE_BYTES: usize = 1000;

/// `text` cut to [`MAX_MESSAGE_BYTES`] on a character boundary (never panics on multi-byte text).
pub fn bounded_message(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A status with every condition's lastTransitionTime removed.
pub fn without_timestamps(status: &Value) -> Value {
    let mut status = status.clone();
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for condition in conditions {
            if let Some(fields) = condition.as_object_mut() {
                fields.remove("lastTransitionTime");
            }
        }
    }
    status
}

/// The status to apply, or `None` when the observed one differs at most in timestamps. A
/// condition keeps the observed lastTransitionTime while its status stays the same.
pub fn status_to_write(desired: &Value, observed: Option<&Value>, now: Timestamp) -> Option<Value> {
    if observed
        .is_some_and(|o| without_timestamps(&owned_part(o, desired)) == without_timestamps(desired))
    {
        return None;
    }
    let mut status = desired.clone();
    let now = to_json(&Time(now));
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for condition in conditions {
            let previous = observed
                .and_then(|o| o["conditions"].as_array())
                .and_then(|cs| cs.iter().find(|c| c["type"] == condition["type"]))
                .filter(|c| c["status"] == condition["status"])
                .map(|c| c["lastTransitionTime"].clone());
            condition["lastTransitionTime"] = previous.unwrap_or_else(|| now.clone());
        }
    }
    Some(status)
}

/// The part of an observed status that `desired` speaks for: its members and its conditions'
/// types. The rest belongs to another field manager (the federation poller's fetch fields) and
/// must not make every comparison differ.
fn owned_part(observed: &Value, desired: &Value) -> Value {
    let (Some(observed), Some(desired)) = (observed.as_object(), desired.as_object()) else {
        return observed.clone();
    };
    let mut owned = serde_json::Map::new();
    for (key, value) in observed {
        if !desired.contains_key(key) {
            continue;
        }
        let value = match (key.as_str(), value.as_array(), desired[key].as_array()) {
            ("conditions", Some(observed), Some(wanted)) => Value::Array(
                observed
                    .iter()
                    .filter(|c| wanted.iter().any(|w| w["type"] == c["type"]))
                    .cloned()
                    .collect(),
            ),
            _ => value.clone(),
        };
        owned.insert(key.clone(), value);
    }
    Value::Object(owned)
}

/// Whether writing `desired` over `observed` deserves an Event: the resource became unhealthy,
/// or unhealthy for a different reason. One Event per transition, not one per pod or per pass.
pub fn event_for(desired: &Value, observed: Option<&Value>) -> Option<(String, String)> {
    let (status, reason, message) = ready_of(desired)?;
    if status == "True" {
        return None;
    }
    let before = observed.and_then(ready_of);
    if before.is_some_and(|(s, r, _)| s == status && r == reason) {
        return None;
    }
    Some((reason, message))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(ready: &str, reason: &str, time: &str, pods: i64) -> Value {
        json!({
            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "m",
                            "observedGeneration": 1, "lastTransitionTime": time}],
            "observedGeneration": 1,
            "stats": {"podsSelected": pods}
        })
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        let short = "é".repeat(10);
        assert_eq!(bounded_message(&short), short);
        // 2-byte characters: byte 1000 falls on a boundary; with one ASCII byte first it does not.
        let long = format!("x{}", "é".repeat(800));
        let cut = bounded_message(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.len() >= MAX_MESSAGE_BYTES - 3);
        assert!(long.starts_with(&cut));
        let emoji = "🦀".repeat(400);
        assert_eq!(bounded_message(&emoji).chars().count(), 250);
    }

    #[test]
    fn only_timestamps_differ_means_no_write() {
        let observed = status("True", "Reconciled", "2026-01-01T00:00:00Z", 3);
        let desired = status("True", "Reconciled", "1970-01-01T00:00:00Z", 3);
        assert_eq!(
            status_to_write(&desired, Some(&observed), Timestamp::now()),
            None
        );
    }

    #[test]
    fn a_changed_counter_is_written_keeping_the_transition_time() {
        let observed = status("True", "Reconciled", "2026-01-01T00:00:00Z", 3);
        let desired = status("True", "Reconciled", "1970-01-01T00:00:00Z", 4);
        let written = status_to_write(&desired, Some(&observed), Timestamp::now()).unwrap();
        assert_eq!(written["stats"]["podsSelected"], 4);
        assert_eq!(
            written["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_flipped_condition_gets_a_new_transition_time_and_one_event() {
        let observed = status("True", "Reconciled", "2026-01-01T00:00:00Z", 3);
        let desired = status("False", "RenderFailed", "1970-01-01T00:00:00Z", 3);
        let now: Timestamp = "2026-05-05T05:05:05Z".parse().unwrap();
        let written = status_to_write(&desired, Some(&observed), now).unwrap();
        assert_eq!(
            written["conditions"][0]["lastTransitionTime"],
            "2026-05-05T05:05:05Z"
        );
        assert_eq!(
            event_for(&desired, Some(&observed)),
            Some(("RenderFailed".to_owned(), "m".to_owned()))
        );
        // Still failing for the same reason: no second event.
        assert_eq!(event_for(&desired, Some(&written)), None);
        // Healthy again: no warning.
        assert_eq!(event_for(&observed, Some(&written)), None);
        // First status ever.
        assert!(status_to_write(&desired, None, now).is_some());
    }
}
