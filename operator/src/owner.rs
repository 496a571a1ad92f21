//! The owner of what the operator creates at run time (the bundle ConfigMap, the Lease): the
//! operator's own Deployment, so that deleting the installation (`helm uninstall`, `kubectl delete
//! -k`) lets the garbage collector remove them too. The authority Secret is never owned: the trust
//! domain's CA outlives a reinstall.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::backoff::{backoff, jitter};

/// The owner once known; `None` until the lookup succeeds (or when none is configured).
pub type Owner = watch::Receiver<Option<OwnerReference>>;

/// One attempt may take this long (the API server may hang rather than refuse).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// An owner that is never known.
pub fn none() -> Owner {
    watch::channel(None).1
}

/// A non-controlling reference: garbage collection only, no cascading block.
pub fn owner_reference(deployment: &Deployment) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: Deployment::api_version(&()).into_owned(),
        kind: Deployment::kind(&()).into_owned(),
        name: deployment.metadata.name.clone()?,
        uid: deployment.metadata.uid.clone()?,
        controller: None,
        block_owner_deletion: None,
    })
}

/// Whether `references` already name exactly this owner (same UID: a recreated Deployment is a
/// new owner).
pub fn is_owned_by(references: Option<&Vec<OwnerReference>>, owner: &OwnerReference) -> bool {
    references.is_some_and(|refs| refs.iter().any(|r| r.uid == owner.uid))
}

/// Looks the Deployment up in the background, retrying with backoff until it is found or
/// `shutdown`; the operator starts meanwhile (nothing waits on it but the first bundle publish,
/// for a bounded time).
pub fn spawn_lookup(
    client: Client,
    namespace: &str,
    name: &str,
    shutdown: CancellationToken,
) -> Owner {
    let (sender, owner) = watch::channel(None);
    let api: Api<Deployment> = Api::namespaced(client, namespace);
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, api.get(&name)).await {
                Ok(Ok(deployment)) => match owner_reference(&deployment) {
                    Some(reference) => {
                        tracing::info!(deployment = %name, "owner of the bundle ConfigMap and the Lease");
                        let _ = sender.send(Some(reference));
                        return;
                    }
                    None => "the Deployment has no UID".to_owned(),
                },
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            };
            attempt = attempt.saturating_add(1);
            if attempt == 3 {
                tracing::warn!(%namespace, deployment = %name, %error, "cannot read the operator's Deployment yet; the bundle ConfigMap and the Lease get their owner once it can be read");
            }
            tokio::select! {
                () = tokio::time::sleep(backoff(attempt, RETRY_MIN, RETRY_MAX, jitter())) => {}
                () = shutdown.cancelled() => return,
            }
        }
    });
    owner
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    #[test]
    fn the_reference_names_the_deployment_and_controls_nothing() {
        let deployment = Deployment {
            metadata: ObjectMeta {
                name: Some("wimsey-operator".into()),
                uid: Some("6f1c".into()),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        };
        let reference = owner_reference(&deployment).unwrap();
        assert_eq!(reference.api_version, "apps/v1");
        assert_eq!(reference.kind, "Deployment");
        assert_eq!(reference.name, "wimsey-operator");
        assert_eq!(reference.uid, "6f1c");
        assert_eq!(reference.controller, None);
        // without a UID (not read from the API server) there is nothing to own by
        assert!(owner_reference(&Deployment::default()).is_none());
    }

    #[test]
    fn a_recreated_deployment_is_another_owner() {
        let owner = OwnerReference {
            uid: "new".into(),
            ..OwnerReference::default()
        };
        let stale = vec![OwnerReference {
            uid: "old".into(),
            ..OwnerReference::default()
        }];
        assert!(!is_owned_by(Some(&stale), &owner));
        assert!(!is_owned_by(None, &owner));
        assert!(is_owned_by(Some(&vec![owner.clone()]), &owner));
    }
}
