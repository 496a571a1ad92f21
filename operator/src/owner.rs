//! The owner of what the operator creates at run time (the bundle ConfigMap, the Lease): the
//! operator's own Deployment, so that deleting the installation (`helm uninstall`, `kubectl delete
//! -k`) lets the garbage collector remove them too. The authority Secret is never owned: the trust
//! domain's CA outlives a reinstall.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client, Resource};

/// How long the start waits for the Deployment before it goes on without an owner.
const LOOKUP_ATTEMPTS: u32 = 5;
const LOOKUP_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("reading Deployment {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("Deployment {namespace}/{name} has no UID")]
    NoUid { namespace: String, name: String },
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

/// Reads the Deployment, retrying a few times (the API server may still be starting).
pub async fn lookup(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<OwnerReference, OwnerError> {
    let api: Api<Deployment> = Api::namespaced(client, namespace);
    let mut attempt = 1;
    loop {
        match api.get(name).await {
            Ok(deployment) => {
                return owner_reference(&deployment).ok_or_else(|| OwnerError::NoUid {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                });
            }
            Err(source) if attempt >= LOOKUP_ATTEMPTS => {
                return Err(OwnerError::Api {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    source,
                });
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(LOOKUP_RETRY).await;
            }
        }
    }
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
}
