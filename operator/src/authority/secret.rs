//! The authority's Kubernetes edge: the Secret (create-once, watch, guarded replace) and the
//! bundle ConfigMap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::TrustDomain;

use super::state::{Lifetimes, SigningMaterial, StoredAuthority, rotate};
use super::{
    AuthorityArgs, AuthorityError, BUNDLE_PEM_KEY, BUNDLE_SPIFFE_KEY, GENERATION_ANNOTATION,
    SECRET_DATA_KEY,
};

const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "wimsey");
/// Upper bound on the rotation loop's sleep, so a missed watch event or clock jump heals.
const MAX_ROTATION_SLEEP: Duration = Duration::from_secs(30);

/// What this replica last loaded from the Secret.
struct Loaded {
    stored: StoredAuthority,
    resource_version: String,
}

struct Inner {
    trust_domain: TrustDomain,
    lifetimes: Lifetimes,
    args: AuthorityArgs,
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
    loaded: Mutex<Loaded>,
    material: watch::Sender<Arc<SigningMaterial>>,
}

/// The running authority of one replica. Cheap to clone.
#[derive(Clone)]
pub struct SigningAuthority {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SigningAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningAuthority")
            .field("trust_domain", &self.inner.trust_domain)
            .field("generation", &self.current().generation)
            .finish_non_exhaustive()
    }
}

impl SigningAuthority {
    /// Loads the authority Secret, creating it if it does not exist (losing a creation race is
    /// fine: the winner's Secret is loaded), publishes the bundle ConfigMap, and spawns the watch
    /// and rotation tasks, which run until `shutdown`.
    pub async fn start(
        client: Client,
        trust_domain: TrustDomain,
        args: AuthorityArgs,
        shutdown: CancellationToken,
    ) -> Result<Self, AuthorityError> {
        let authority = Self::load(client, trust_domain, args).await?;
        tokio::spawn(authority.clone().watch_secret(shutdown.clone()));
        tokio::spawn(authority.clone().rotation_loop(shutdown));
        Ok(authority)
    }

    /// [`SigningAuthority::start`] without the background tasks (tests, one-shot tools).
    pub async fn load(
        client: Client,
        trust_domain: TrustDomain,
        args: AuthorityArgs,
    ) -> Result<Self, AuthorityError> {
        let lifetimes = args.lifetimes();
        lifetimes.check()?;
        let namespace = args.authority_namespace.as_str();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let config_maps: Api<ConfigMap> = Api::namespaced(client, namespace);
        let loaded =
            load_or_create(&secrets, &args.authority_secret, &trust_domain, &lifetimes).await?;
        let material = SigningMaterial::from_stored(
            &loaded.stored,
            &trust_domain,
            &lifetimes,
            SystemTime::now(),
        )?;
        let (material, _) = watch::channel(Arc::new(material));
        let authority = Self {
            inner: Arc::new(Inner {
                trust_domain,
                lifetimes,
                args,
                secrets,
                config_maps,
                loaded: Mutex::new(loaded),
                material,
            }),
        };
        // Keys may be overdue (the operator was down): bring them up to date before serving.
        authority.rotate_once().await?;
        authority.publish_bundle().await?;
        Ok(authority)
    }

    /// What to sign with now.
    pub fn current(&self) -> Arc<SigningMaterial> {
        self.inner.material.borrow().clone()
    }

    /// Changes whenever the keys or the bundle change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<SigningMaterial>> {
        self.inner.material.subscribe()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.trust_domain
    }

    pub fn args(&self) -> &AuthorityArgs {
        &self.inner.args
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // Every write replaces the whole value, so a poisoned lock still holds a consistent state.
        self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adopts a state read from the API server if it is newer than ours.
    fn adopt(
        &self,
        stored: StoredAuthority,
        resource_version: String,
    ) -> Result<bool, AuthorityError> {
        let mut loaded = self.loaded();
        if stored.generation < loaded.stored.generation {
            return Ok(false);
        }
        let newer = stored.generation > loaded.stored.generation;
        if newer {
            let material = SigningMaterial::from_stored(
                &stored,
                &self.inner.trust_domain,
                &self.inner.lifetimes,
                SystemTime::now(),
            )?;
            self.inner.material.send_replace(Arc::new(material));
        }
        *loaded = Loaded {
            stored,
            resource_version,
        };
        Ok(newer)
    }

    /// Applies due rotations and writes them back, guarded by the resourceVersion we loaded. On
    /// a conflict (another replica wrote first) reloads and tries again with what it wrote.
    pub async fn rotate_once(&self) -> Result<bool, AuthorityError> {
        for _ in 0..3 {
            let (mut stored, resource_version) = {
                let loaded = self.loaded();
                (loaded.stored.clone(), loaded.resource_version.clone())
            };
            if !rotate(
                &mut stored,
                &self.inner.trust_domain,
                &self.inner.lifetimes,
                SystemTime::now(),
            )? {
                return Ok(false);
            }
            let secret = secret_object(
                &self.inner.args.authority_secret,
                &stored,
                Some(resource_version),
            )?;
            match self
                .inner
                .secrets
                .replace(
                    &self.inner.args.authority_secret,
                    &PostParams::default(),
                    &secret,
                )
                .await
            {
                Ok(written) => {
                    let rv = written.metadata.resource_version.unwrap_or_default();
                    tracing::info!(generation = stored.generation, "authority keys rotated");
                    self.adopt(stored, rv)?;
                    self.publish_bundle().await?;
                    return Ok(true);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::debug!("authority Secret changed under us; reloading");
                    let secret = self
                        .inner
                        .secrets
                        .get(&self.inner.args.authority_secret)
                        .await?;
                    let (stored, rv) = parse_secret(&secret)?;
                    self.adopt(stored, rv)?;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(false)
    }

    /// Writes the bundle ConfigMap unless it already shows this generation or a newer one.
    pub async fn publish_bundle(&self) -> Result<(), AuthorityError> {
        let material = self.current();
        let name = &self.inner.args.bundle_configmap;
        let existing = self.inner.config_maps.get_opt(name).await?;
        let published_generation = existing
            .as_ref()
            .and_then(|cm| cm.metadata.annotations.as_ref())
            .and_then(|a| a.get(GENERATION_ANNOTATION))
            .and_then(|g| g.parse::<u64>().ok());
        if published_generation.is_some_and(|g| g >= material.generation) {
            return Ok(());
        }
        let data = BTreeMap::from([
            (
                BUNDLE_PEM_KEY.to_owned(),
                material.bundle.x509_authorities_pem(),
            ),
            (
                BUNDLE_SPIFFE_KEY.to_owned(),
                material.bundle.to_spiffe_jwks()?,
            ),
        ]);
        let config_map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
                annotations: Some(BTreeMap::from([(
                    GENERATION_ANNOTATION.to_owned(),
                    material.generation.to_string(),
                )])),
                resource_version: existing.and_then(|cm| cm.metadata.resource_version),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let result = if config_map.metadata.resource_version.is_some() {
            self.inner
                .config_maps
                .replace(name, &PostParams::default(), &config_map)
                .await
        } else {
            self.inner
                .config_maps
                .create(&PostParams::default(), &config_map)
                .await
        };
        match result {
            Ok(_) => Ok(()),
            // Another replica wrote it in between; it retries with its own generation.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn watch_secret(self, shutdown: CancellationToken) {
        let config = watcher::Config::default().fields(&format!(
            "metadata.name={}",
            self.inner.args.authority_secret
        ));
        let mut events = watcher(self.inner.secrets.clone(), config)
            .default_backoff()
            .applied_objects()
            .boxed();
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = events.next() => next,
            };
            match next {
                None => return,
                Some(Err(error)) => tracing::warn!(%error, "watching the authority Secret"),
                Some(Ok(secret)) => {
                    let adopted =
                        parse_secret(&secret).and_then(|(stored, rv)| self.adopt(stored, rv));
                    match adopted {
                        Ok(true) => {
                            tracing::info!(
                                generation = self.current().generation,
                                "authority keys reloaded"
                            );
                            if let Err(error) = self.publish_bundle().await {
                                tracing::warn!(%error, label = error.label(), "publishing the bundle");
                            }
                        }
                        Ok(false) => {}
                        Err(error) => {
                            tracing::error!(%error, label = error.label(), "authority Secret unusable")
                        }
                    }
                }
            }
        }
    }

    async fn rotation_loop(self, shutdown: CancellationToken) {
        loop {
            let next = self
                .loaded()
                .stored
                .next_rotation_check(&self.inner.lifetimes);
            let sleep = next
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or_default()
                .min(MAX_ROTATION_SLEEP)
                // Never spin: a check that is due now is retried after a short pause on failure.
                .max(Duration::from_millis(200));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
            }
            if let Err(error) = self.rotate_once().await {
                tracing::warn!(%error, label = error.label(), "rotating authority keys");
            }
        }
    }
}

async fn load_or_create(
    secrets: &Api<Secret>,
    name: &str,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
) -> Result<Loaded, AuthorityError> {
    if let Some(secret) = secrets.get_opt(name).await? {
        let (stored, resource_version) = parse_secret(&secret)?;
        return Ok(Loaded {
            stored,
            resource_version,
        });
    }
    let mut stored = StoredAuthority::empty(trust_domain);
    rotate(&mut stored, trust_domain, lifetimes, SystemTime::now())?;
    let secret = secret_object(name, &stored, None)?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            tracing::info!(secret = name, "authority created");
            Ok(Loaded {
                stored,
                resource_version: created.metadata.resource_version.unwrap_or_default(),
            })
        }
        // Another replica created it first: use theirs, so the trust domain has one CA.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let (stored, resource_version) = parse_secret(&secrets.get(name).await?)?;
            Ok(Loaded {
                stored,
                resource_version,
            })
        }
        Err(error) => Err(error.into()),
    }
}

fn parse_secret(secret: &Secret) -> Result<(StoredAuthority, String), AuthorityError> {
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SECRET_DATA_KEY))
        .ok_or(AuthorityError::MissingData(SECRET_DATA_KEY))?;
    let stored: StoredAuthority = serde_json::from_slice(&data.0)?;
    Ok((
        stored,
        secret.metadata.resource_version.clone().unwrap_or_default(),
    ))
}

fn secret_object(
    name: &str,
    stored: &StoredAuthority,
    resource_version: Option<String>,
) -> Result<Secret, AuthorityError> {
    let json = serde_json::to_vec(stored)?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
            resource_version,
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            SECRET_DATA_KEY.to_owned(),
            ByteString(json),
        )])),
        ..Secret::default()
    })
}
