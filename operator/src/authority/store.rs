//! Where the authority keeps its objects: the Secret, the bundle ConfigMap and its Events. A
//! trait, so that the authority's recovery paths can be tested without a cluster.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};

use super::GENERATION_ANNOTATION;
use crate::owner::{self, Owner};
use crate::reconcile::status::bounded_message;

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "wimsey");

/// The outcome of a guarded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written; the new resourceVersion.
    Ok(String),
    /// Someone else wrote first (create: it exists; replace: its resourceVersion moved on).
    Conflict,
}

pub trait AuthorityStore: Send + Sync + 'static {
    fn get_secret(&self) -> BoxFuture<'_, Result<Option<Secret>, kube::Error>>;
    fn create_secret(&self, secret: Secret) -> BoxFuture<'_, Result<Written, kube::Error>>;
    /// Replaces the Secret if its resourceVersion is still `secret.metadata.resource_version`.
    fn replace_secret(&self, secret: Secret) -> BoxFuture<'_, Result<Written, kube::Error>>;
    /// Writes the bundle ConfigMap's data unless it already shows `generation` or a newer one.
    fn publish_bundle(
        &self,
        generation: u64,
        data: BTreeMap<String, String>,
    ) -> BoxFuture<'_, Result<(), kube::Error>>;
    /// A Warning Event on the authority Secret; failures are logged, never fatal.
    fn warn(&self, reason: &'static str, note: String) -> BoxFuture<'_, ()>;
}

/// The store on the API server.
pub struct KubeStore {
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
    secret_name: String,
    bundle_name: String,
    namespace: String,
    bundle_owner: Owner,
    recorder: Recorder,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("namespace", &self.namespace)
            .field("secret_name", &self.secret_name)
            .field("bundle_name", &self.bundle_name)
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    pub fn new(client: Client, namespace: &str, secret_name: &str, bundle_name: &str) -> Self {
        let reporter = Reporter {
            controller: "wimsey-operator".to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            secrets: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client.clone(), namespace),
            secret_name: secret_name.to_owned(),
            bundle_name: bundle_name.to_owned(),
            namespace: namespace.to_owned(),
            bundle_owner: owner::none(),
            recorder: Recorder::new(client, reporter),
        }
    }

    /// The bundle ConfigMap is written with this owner (the operator's Deployment) once known.
    pub fn with_bundle_owner(mut self, owner: Owner) -> Self {
        self.bundle_owner = owner;
        self
    }

    pub fn secrets(&self) -> &Api<Secret> {
        &self.secrets
    }

    pub fn secret_name(&self) -> &str {
        &self.secret_name
    }
}

fn conflict_or<T>(
    result: Result<T, kube::Error>,
    ok: impl FnOnce(T) -> Written,
) -> Result<Written, kube::Error> {
    match result {
        Ok(value) => Ok(ok(value)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Written::Conflict),
        Err(error) => Err(error),
    }
}

fn resource_version(secret: Secret) -> Written {
    Written::Ok(secret.metadata.resource_version.unwrap_or_default())
}

impl AuthorityStore for KubeStore {
    fn get_secret(&self) -> BoxFuture<'_, Result<Option<Secret>, kube::Error>> {
        Box::pin(self.secrets.get_opt(&self.secret_name))
    }

    fn create_secret(&self, mut secret: Secret) -> BoxFuture<'_, Result<Written, kube::Error>> {
        secret.metadata.name = Some(self.secret_name.clone());
        Box::pin(async move {
            conflict_or(
                self.secrets.create(&PostParams::default(), &secret).await,
                resource_version,
            )
        })
    }

    fn replace_secret(&self, mut secret: Secret) -> BoxFuture<'_, Result<Written, kube::Error>> {
        secret.metadata.name = Some(self.secret_name.clone());
        Box::pin(async move {
            conflict_or(
                self.secrets
                    .replace(&self.secret_name, &PostParams::default(), &secret)
                    .await,
                resource_version,
            )
        })
    }

    fn publish_bundle(
        &self,
        generation: u64,
        data: BTreeMap<String, String>,
    ) -> BoxFuture<'_, Result<(), kube::Error>> {
        Box::pin(async move {
            let name = &self.bundle_name;
            let existing = self.config_maps.get_opt(name).await?;
            let owner = self.bundle_owner.borrow().clone();
            // Rewritten also when the owner is missing or stale (a recreated Deployment), so that
            // the garbage collector neither leaves it behind nor deletes the one in use.
            let owner_current = owner.as_ref().is_none_or(|o| {
                owner::is_owned_by(
                    existing
                        .as_ref()
                        .and_then(|cm| cm.metadata.owner_references.as_ref()),
                    o,
                )
            });
            if owner_current
                && existing
                    .as_ref()
                    .and_then(published_generation)
                    .is_some_and(|g| g >= generation)
            {
                return Ok(());
            }
            // Only the owner changes when the published generation is this one or newer
            // (another replica may be ahead): its data stays.
            let (generation, data) = match existing
                .as_ref()
                .and_then(|cm| Some((published_generation(cm)?, cm.data.clone()?)))
            {
                Some((published, published_data)) if published >= generation => {
                    (published, published_data)
                }
                _ => (generation, data),
            };
            let owner_references = owner.map(|o| vec![o]).or_else(|| {
                existing
                    .as_ref()
                    .and_then(|cm| cm.metadata.owner_references.clone())
            });
            let config_map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
                    annotations: Some(BTreeMap::from([(
                        GENERATION_ANNOTATION.to_owned(),
                        generation.to_string(),
                    )])),
                    owner_references,
                    resource_version: existing.and_then(|cm| cm.metadata.resource_version),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            let result = if config_map.metadata.resource_version.is_some() {
                self.config_maps
                    .replace(name, &PostParams::default(), &config_map)
                    .await
            } else {
                self.config_maps
                    .create(&PostParams::default(), &config_map)
                    .await
            };
            // A conflict: another replica wrote it in between; it retries with its generation.
            conflict_or(result, |_| Written::Ok(String::new())).map(|_| ())
        })
    }

    fn warn(&self, reason: &'static str, note: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let reference = ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Secret".to_owned()),
                name: Some(self.secret_name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectReference::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason: reason.to_owned(),
                // cut on a character boundary: a note can quote an API server's error text
                note: Some(bounded_message(&note)),
                action: "Authority".to_owned(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(%error, reason, "publishing an authority event failed");
            }
        })
    }
}

fn published_generation(config_map: &ConfigMap) -> Option<u64> {
    config_map
        .metadata
        .annotations
        .as_ref()?
        .get(GENERATION_ANNOTATION)?
        .parse()
        .ok()
}

/// An in-memory store with the API server's resourceVersion semantics, for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    secret: Option<Secret>,
    next_version: u64,
    bundle: Option<(u64, BTreeMap<String, String>)>,
    events: Vec<(&'static str, String)>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `secret` as an outside writer would (`kubectl edit`, an etcd restore); returns it
    /// with its new resourceVersion.
    pub fn put_secret(&self, mut secret: Secret) -> Secret {
        let mut inner = self.lock();
        inner.next_version += 1;
        secret.metadata.resource_version = Some(inner.next_version.to_string());
        inner.secret = Some(secret.clone());
        secret
    }

    pub fn secret(&self) -> Option<Secret> {
        self.lock().secret.clone()
    }

    pub fn bundle(&self) -> Option<(u64, BTreeMap<String, String>)> {
        self.lock().bundle.clone()
    }

    pub fn events(&self) -> Vec<(&'static str, String)> {
        self.lock().events.clone()
    }
}

impl AuthorityStore for MemoryStore {
    fn get_secret(&self) -> BoxFuture<'_, Result<Option<Secret>, kube::Error>> {
        let secret = self.secret();
        Box::pin(async move { Ok(secret) })
    }

    fn create_secret(&self, secret: Secret) -> BoxFuture<'_, Result<Written, kube::Error>> {
        let written = if self.lock().secret.is_some() {
            Written::Conflict
        } else {
            resource_version(self.put_secret(secret))
        };
        Box::pin(async move { Ok(written) })
    }

    fn replace_secret(&self, secret: Secret) -> BoxFuture<'_, Result<Written, kube::Error>> {
        let current = self
            .lock()
            .secret
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        let written = if current.is_some() && current == secret.metadata.resource_version {
            resource_version(self.put_secret(secret))
        } else {
            Written::Conflict
        };
        Box::pin(async move { Ok(written) })
    }

    fn publish_bundle(
        &self,
        generation: u64,
        data: BTreeMap<String, String>,
    ) -> BoxFuture<'_, Result<(), kube::Error>> {
        let mut inner = self.lock();
        if inner.bundle.as_ref().is_none_or(|(g, _)| *g < generation) {
            inner.bundle = Some((generation, data));
        }
        Box::pin(async { Ok(()) })
    }

    fn warn(&self, reason: &'static str, note: String) -> BoxFuture<'_, ()> {
        self.lock().events.push((reason, note));
        Box::pin(async {})
    }
}
