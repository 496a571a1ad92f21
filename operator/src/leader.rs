//! Leader election on a `coordination.k8s.io/v1` Lease. Only the holder writes status and
//! Events; every replica keeps its caches and store hot.
//!
//! Like client-go, expiry is judged by the local clock: a lease is expired when its record has
//! not changed for `lease_duration` since this replica first saw it, so clock skew between
//! replicas does not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::owner::{self, Owner};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    /// Set on the Lease when this replica creates or renews it (see [`crate::owner`]).
    pub owner: Owner,
}

impl LeaseSettings {
    /// Lease `wimsey-operator`: 10 s duration, renewed every 2 s, so a standby takes over
    /// within about 12 s of the leader's death.
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: "wimsey-operator".to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            owner: owner::none(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease API: {0}")]
    Api(#[from] kube::Error),
}

impl LeaderError {
    pub fn label(&self) -> &'static str {
        match self {
            LeaderError::Api(_) => "api",
        }
    }
}

/// What to do with the lease as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Ours: renew it.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds a live lease.
    Follow,
}

/// The lease record as far as expiry is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: String,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl LeaseRecord {
    fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default(),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        }
    }
}

/// Decides from the lease record, when this replica first saw that exact record, and now.
pub fn decide(
    record: &LeaseRecord,
    identity: &str,
    seen_since: Instant,
    now: Instant,
    lease_duration: Duration,
) -> Decision {
    if record.holder == identity {
        Decision::Renew
    } else if record.holder.is_empty() || now.duration_since(seen_since) >= lease_duration {
        Decision::Acquire
    } else {
        Decision::Follow
    }
}

/// Runs leader election until `shutdown`, publishing whether this replica leads. On shutdown a
/// held lease is released so a standby need not wait for it to expire.
pub async fn run_leader_election(
    client: Client,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observed: Option<(LeaseRecord, Instant)> = None;
    loop {
        let leading = match try_lead(&api, &settings, &mut observed).await {
            Ok(leading) => leading,
            Err(error) => {
                tracing::warn!(%error, label = error.label(), "leader election");
                // Cannot renew: stop acting as leader before the lease can expire elsewhere.
                false
            }
        };
        if *leader.borrow() != leading {
            tracing::info!(identity = %settings.identity, leading, "leadership changed");
            leader.send_replace(leading);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(settings.renew_interval) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        if let Err(error) = release(&api, &settings).await {
            tracing::warn!(%error, "releasing the lease");
        }
    }
}

fn lease_spec(
    settings: &LeaseSettings,
    transitions: i32,
    acquired: bool,
    old: Option<&LeaseSpec>,
) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX),
        ),
        acquire_time: if acquired {
            Some(now.clone())
        } else {
            old.and_then(|s| s.acquire_time.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// One round: read, decide, write. Returns whether this replica leads afterwards.
async fn try_lead(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<(LeaseRecord, Instant)>,
) -> Result<bool, LeaderError> {
    let now = Instant::now();
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                owner_references: settings.owner.borrow().clone().map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(lease_spec(settings, 0, true, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Someone else created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        };
    };
    let record = LeaseRecord::from_spec(lease.spec.as_ref());
    let seen_since = match observed {
        Some((previous, since)) if *previous == record => *since,
        _ => {
            *observed = Some((record.clone(), now));
            now
        }
    };
    let decision = decide(
        &record,
        &settings.identity,
        seen_since,
        now,
        settings.lease_duration,
    );
    let transitions = match decision {
        Decision::Follow => return Ok(false),
        Decision::Renew => record.transitions,
        Decision::Acquire => record.transitions + 1,
    };
    lease.spec = Some(lease_spec(
        settings,
        transitions,
        decision == Decision::Acquire,
        lease.spec.as_ref(),
    ));
    // A Lease created before the owner was known (or by an older release) gets it now.
    if let Some(owner) = settings.owner.borrow().clone()
        && !owner::is_owned_by(lease.metadata.owner_references.as_ref(), &owner)
    {
        lease.metadata.owner_references = Some(vec![owner]);
    }
    // The resourceVersion from the read makes this a compare-and-swap.
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), LeaderError> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        return Ok(());
    };
    if LeaseRecord::from_spec(lease.spec.as_ref()).holder != settings.identity {
        return Ok(());
    }
    if let Some(spec) = &mut lease.spec {
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
    }
    api.replace(&settings.name, &PostParams::default(), &lease)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            renew_time: None,
            transitions: 0,
        }
    }

    #[test]
    fn decisions() {
        let start = Instant::now();
        let ten = Duration::from_secs(10);
        assert_eq!(
            decide(&record("me"), "me", start, start, ten),
            Decision::Renew
        );
        assert_eq!(
            decide(&record(""), "me", start, start, ten),
            Decision::Acquire
        );
        assert_eq!(
            decide(
                &record("other"),
                "me",
                start,
                start + Duration::from_secs(9),
                ten
            ),
            Decision::Follow
        );
        assert_eq!(
            decide(&record("other"), "me", start, start + ten, ten),
            Decision::Acquire
        );
    }
}
