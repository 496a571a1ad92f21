//! Waiting for conditions, always with a timeout and a useful error.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::wait::{Condition, await_condition};
use serde::de::DeserializeOwned;

/// Waits (with a watch, not a poll) until the named object satisfies `cond`, and returns it. On timeout
/// the error carries the object's last state.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Condition<K>,
) -> Result<K>
where
    K: Clone + Debug + Send + DeserializeOwned + kube::Resource + serde::Serialize + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => Err(anyhow!("{what}: {name} does not exist")),
        Ok(Err(err)) => Err(anyhow!("{what}: watching {name}: {err}")),
        Err(_) => {
            let last = match api.get_opt(name).await {
                Ok(Some(obj)) => serde_json::to_string_pretty(&obj).unwrap_or_default(),
                Ok(None) => "<absent>".to_string(),
                Err(err) => format!("<get failed: {err}>"),
            };
            Err(anyhow!(
                "timed out after {timeout:?} waiting for {what} ({name}); last state:\n{last}"
            ))
        }
    }
}

/// Polls `check` every 200 ms until it returns `Ok(Some(_))`, for conditions no watch can express.
/// Errors from `check` are retried; the last one is reported on timeout.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_string(),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "timed out after {timeout:?} waiting for {what}: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod is Ready (all containers ready, probes passing).
pub fn pod_ready() -> impl Condition<Pod> {
    |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// The deployment has rolled out its current generation and all replicas are ready.
pub fn deployment_ready() -> impl Condition<Deployment> {
    |d: Option<&Deployment>| {
        let Some(d) = d else { return false };
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(s) = d.status.as_ref() else {
            return false;
        };
        s.observed_generation >= d.metadata.generation
            && s.updated_replicas.unwrap_or(0) == want
            // no pod of an older template left (mid-rollout, old and new pods can add up to `want`)
            && s.replicas.unwrap_or(0) == want
            && s.ready_replicas.unwrap_or(0) == want
            && s.available_replicas.unwrap_or(0) == want
    }
}
