//! The running authority: loads the Secret through an [`AuthorityStore`], recovers and rotates
//! before anything signs, writes rotations back with a resourceVersion guard, publishes the
//! bundle, and follows the Secret.
//!
//! What it does on a bad day:
//! * Operator down longer than the CA lifetime: [`rotate`] runs before the signing material is
//!   built, so an expired CA is retired and a new one activated at once (Warning Event
//!   `AuthorityReplaced`, metric `authority_replacements`), instead of crash-looping.
//! * Secret edited into something unreadable: at start, a clear error naming what is wrong and
//!   no start (nothing replaces a root it cannot read); while running, the last good keys keep
//!   signing, and the problem is logged, counted (`authority_secret_unreadable`) and reported
//!   (Warning Event `AuthoritySecretUnreadable`). The Secret is never overwritten meanwhile: every
//!   write is guarded by the resourceVersion of a Secret that was read successfully. Readiness is
//!   deliberately unchanged: taking the node API out of its Service would turn a damaged Secret
//!   into an outage.
//! * Secret restored to an older one (etcd restore): see [`adopt_restored`]; the restored keys are
//!   used while usable, replaced at once if not, and the keys held here stay published (retired)
//!   while what they signed may still be valid.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wimsey_core::TrustDomain;
use wimsey_core::x509::CertDer;
use wimsey_core::x509::upstream::UpstreamCa;

use super::state::{
    Lifetimes, Observed, Rotated, SigningMaterial, StoredAuthority, X509Source, adopt_restored,
    check_stored, classify, rotate_with,
};
use super::store::{AuthorityStore, KubeStore, MANAGED_BY, Written};
use super::upstream::{self, Selection};
use super::{AuthorityArgs, AuthorityError, BUNDLE_PEM_KEY, BUNDLE_SPIFFE_KEY, SECRET_DATA_KEY};
use crate::admin::Metrics;

/// Upper bound on the rotation loop's sleep, so a missed watch event or clock jump heals.
const MAX_ROTATION_SLEEP: Duration = Duration::from_secs(30);
/// Reads of the Secret at start before giving up when other writers keep changing it.
const START_ATTEMPTS: u32 = 3;
/// Event reasons.
pub const REASON_REPLACED: &str = "AuthorityReplaced";
pub const REASON_UNREADABLE: &str = "AuthoritySecretUnreadable";
pub const REASON_RESTORED: &str = "AuthoritySecretRestored";
pub const REASON_UPSTREAM_UNUSABLE: &str = "UpstreamCAUnusable";

/// What this replica last loaded from the Secret.
#[derive(Clone)]
struct Loaded {
    stored: StoredAuthority,
    resource_version: String,
}

struct Inner {
    trust_domain: TrustDomain,
    lifetimes: Lifetimes,
    args: AuthorityArgs,
    store: Arc<dyn AuthorityStore>,
    metrics: Arc<Metrics>,
    loaded: Mutex<Loaded>,
    /// Whether the last read of the Secret failed (to report the change once, not every read).
    unreadable: Mutex<bool>,
    material: watch::Sender<Arc<SigningMaterial>>,
    upstream: Option<UpstreamSlot>,
    /// When this replica loaded the authority: a switch of the CA setting stored after it was
    /// made by a newer replica ([`X509Source::superseded`]).
    started_at: SystemTime,
}

/// The upstream CA, when one is configured.
struct UpstreamSlot {
    secret: String,
    /// The last usable CA read from the Secret.
    candidate: Mutex<Arc<UpstreamCa>>,
    /// The upstream CA that signs: the candidate, or the one before it while the candidate's
    /// root is still propagating; None while none has signed yet (the own CA may, while the
    /// user's root propagates after the setting was switched on).
    signing: Mutex<Option<Arc<UpstreamCa>>>,
    /// When the candidate takes over from the held CA.
    switch_at: Mutex<Option<SystemTime>>,
    /// The problem last reported, so a persisting one is reported once.
    problem: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every write replaces the whole value, so a poisoned lock still holds a consistent value.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    /// [`SigningAuthority::start_with_metrics`] with metrics of its own.
    pub async fn start(
        client: Client,
        trust_domain: TrustDomain,
        args: AuthorityArgs,
        shutdown: CancellationToken,
    ) -> Result<Self, AuthorityError> {
        Self::start_with_metrics(
            client,
            trust_domain,
            args,
            Arc::new(Metrics::new()),
            shutdown,
        )
        .await
    }

    /// Loads the authority Secret, creating it if it does not exist (losing a creation race is
    /// fine: the winner's Secret is loaded), recovers overdue rotations, publishes the bundle
    /// ConfigMap, and spawns the watch and rotation tasks, which run until `shutdown`.
    pub async fn start_with_metrics(
        client: Client,
        trust_domain: TrustDomain,
        args: AuthorityArgs,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, AuthorityError> {
        let store = Arc::new(
            KubeStore::new(
                client,
                &args.authority_namespace,
                &args.authority_secret,
                &args.bundle_configmap,
            )
            .with_bundle_owner(args.bundle_owner.clone().unwrap_or_else(crate::owner::none)),
        );
        let upstream = match &args.upstream_ca_secret {
            Some(name) => {
                let secret = store.secrets().get_opt(name).await?;
                let read = secret
                    .ok_or_else(|| AuthorityError::UpstreamMissing(name.clone()))
                    .and_then(|secret| {
                        upstream::from_secret(
                            &secret,
                            &trust_domain,
                            &args.lifetimes(),
                            SystemTime::now(),
                        )
                        .map_err(|error| AuthorityError::Upstream {
                            secret: name.clone(),
                            error,
                        })
                    });
                match read {
                    Ok(ca) => Some(Arc::new(ca)),
                    Err(error) => {
                        metrics.set_upstream_ca_error(Some(error.label()));
                        store
                            .warn(
                                REASON_UPSTREAM_UNUSABLE,
                                format!("{error}; not signing until it is usable"),
                            )
                            .await;
                        return Err(error);
                    }
                }
            }
            None => None,
        };
        let authority =
            Self::load_with_upstream(store.clone(), trust_domain, args, metrics, upstream).await?;
        if let Some(name) = authority.args().upstream_ca_secret.clone() {
            tokio::spawn(
                authority
                    .clone()
                    .watch_upstream(store.clone(), name, shutdown.clone()),
            );
        }
        tokio::spawn(authority.clone().watch_secret(store, shutdown.clone()));
        tokio::spawn(authority.clone().rotation_loop(shutdown));
        Ok(authority)
    }

    /// Loads (or creates) the Secret and brings it up to date before anything signs, without
    /// background tasks (tests, one-shot tools).
    pub async fn load(
        store: Arc<dyn AuthorityStore>,
        trust_domain: TrustDomain,
        args: AuthorityArgs,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuthorityError> {
        Self::load_with_upstream(store, trust_domain, args, metrics, None).await
    }

    /// [`SigningAuthority::load`], signing X.509-SVIDs with `upstream` when given.
    pub async fn load_with_upstream(
        store: Arc<dyn AuthorityStore>,
        trust_domain: TrustDomain,
        args: AuthorityArgs,
        metrics: Arc<Metrics>,
        upstream: Option<Arc<UpstreamCa>>,
    ) -> Result<Self, AuthorityError> {
        let lifetimes = args.lifetimes();
        lifetimes.check()?;
        let x509 = upstream
            .as_deref()
            .map_or(X509Source::Own, X509Source::upstream);
        let current = load_current(store.as_ref(), &trust_domain, &lifetimes, x509).await;
        let (loaded, rotated) = match current {
            Ok(current) => current,
            Err(error) if error.is_retryable() => return Err(error),
            Err(error) => {
                metrics.set_authority_secret_error(Some(error.label()));
                tracing::error!(%error, label = error.label(), "authority Secret unusable; not starting");
                store.warn(REASON_UNREADABLE, error.to_string()).await;
                return Err(error);
            }
        };
        metrics.set_authority_secret_error(None);
        metrics.set_upstream_ca_error(None);
        let upstream = upstream.map(|ca| UpstreamSlot {
            secret: args.upstream_ca_secret.clone().unwrap_or_default(),
            candidate: Mutex::new(ca),
            signing: Mutex::new(None),
            switch_at: Mutex::new(None),
            problem: Mutex::new(None),
        });
        let material = select_material(
            &loaded.stored,
            &trust_domain,
            &lifetimes,
            upstream.as_ref(),
            SystemTime::now(),
        )?;
        let (material, _) = watch::channel(Arc::new(material));
        let authority = Self {
            inner: Arc::new(Inner {
                trust_domain,
                lifetimes,
                args,
                store,
                metrics,
                loaded: Mutex::new(loaded),
                unreadable: Mutex::new(false),
                material,
                upstream,
                started_at: SystemTime::now(),
            }),
        };
        authority.report_replaced(&rotated).await;
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

    /// Takes `stored` as the state to sign with. If it cannot sign (it needs a rotation first)
    /// it still becomes the base of the next guarded write, and the old material keeps signing.
    fn install(&self, stored: StoredAuthority, resource_version: String) {
        let material = self.material_for(&stored, SystemTime::now());
        let generation = stored.generation;
        *self.loaded() = Loaded {
            stored,
            resource_version,
        };
        match material {
            Ok(material) => {
                self.inner.material.send_replace(Arc::new(material));
            }
            Err(error) => {
                tracing::warn!(%error, generation, "authority state needs a rotation before it signs");
            }
        }
    }

    fn material_for(
        &self,
        stored: &StoredAuthority,
        now: SystemTime,
    ) -> Result<SigningMaterial, AuthorityError> {
        select_material(
            stored,
            &self.inner.trust_domain,
            &self.inner.lifetimes,
            self.inner.upstream.as_ref(),
            now,
        )
    }

    /// The upstream roots to keep published and the root the Secret's CA chains to (None
    /// without an upstream CA).
    fn upstream_roots(&self) -> Option<(Vec<CertDer>, CertDer)> {
        let slot = self.inner.upstream.as_ref()?;
        let candidate = Arc::clone(&lock(&slot.candidate));
        let signing = lock(&slot.signing).clone();
        let roots = upstream::wanted_roots(&candidate, signing.as_deref());
        Some((roots, candidate.anchor().clone()))
    }

    /// Rebuilds the material from the state held (the upstream CA changed, or its switch time
    /// came) and publishes the bundle.
    async fn refresh_material(&self) {
        let stored = self.loaded().stored.clone();
        match self.material_for(&stored, SystemTime::now()) {
            Ok(material) => {
                self.inner.material.send_replace(Arc::new(material));
            }
            Err(error) => {
                tracing::warn!(%error, label = error.label(), "building the signing material");
            }
        }
        if let Err(error) = self.publish_bundle().await {
            tracing::warn!(%error, label = error.label(), "publishing the bundle");
        }
    }

    /// Handles one observed version of the upstream CA Secret (None: deleted). A usable CA
    /// becomes the candidate; anything else is reported, and the CA held keeps signing.
    pub async fn observe_upstream(&self, secret: Option<&Secret>) {
        let Some(slot) = &self.inner.upstream else {
            return;
        };
        let read = secret
            .ok_or_else(|| AuthorityError::UpstreamMissing(slot.secret.clone()))
            .and_then(|secret| {
                upstream::from_secret(
                    secret,
                    &self.inner.trust_domain,
                    &self.inner.lifetimes,
                    SystemTime::now(),
                )
                .map_err(|error| AuthorityError::Upstream {
                    secret: slot.secret.clone(),
                    error,
                })
            });
        let candidate = match read {
            Ok(candidate) => candidate,
            Err(error) => {
                self.inner
                    .metrics
                    .set_upstream_ca_error(Some(error.label()));
                let message = error.to_string();
                tracing::error!(%error, label = error.label(), "upstream CA unusable; signing with the last good one");
                let first = lock(&slot.problem).replace(message.clone()) != Some(message.clone());
                if first {
                    let note =
                        format!("{message}; signing continues with the last good upstream CA");
                    self.inner.store.warn(REASON_UPSTREAM_UNUSABLE, note).await;
                }
                return;
            }
        };
        self.inner.metrics.set_upstream_ca_error(None);
        if lock(&slot.problem).take().is_some() {
            tracing::info!("upstream CA usable again");
        }
        if **lock(&slot.candidate) == candidate {
            return;
        }
        tracing::info!(secret = %slot.secret, "upstream CA renewed");
        *lock(&slot.candidate) = Arc::new(candidate);
        // Publishes a new root first (a guarded write), then picks what signs.
        if let Err(error) = self.rotate_once().await {
            tracing::warn!(%error, label = error.label(), "publishing the upstream roots");
        }
        self.refresh_material().await;
        if let Some(until) = *lock(&slot.switch_at) {
            tracing::info!(
                ?until,
                "the upstream CA has a new root; it signs once the root has propagated"
            );
        }
    }

    async fn watch_upstream(
        self,
        store: Arc<KubeStore>,
        name: String,
        shutdown: CancellationToken,
    ) {
        let secrets = store.secrets().clone();
        follow_secret(
            secrets,
            &name,
            "the upstream CA Secret",
            shutdown,
            |secret| {
                let this = self.clone();
                async move { this.observe_upstream(secret.as_ref()).await }
            },
        )
        .await;
    }

    /// Applies due rotations (and recoveries) and writes them back, guarded by the
    /// resourceVersion we loaded. On a conflict another writer got there first: the watch
    /// brings its state, and the rotation loop tries again.
    pub async fn rotate_once(&self) -> Result<bool, AuthorityError> {
        let loaded = self.loaded().clone();
        let roots = self.upstream_roots();
        let mut x509 =
            roots
                .as_ref()
                .map_or(X509Source::Own, |(roots, anchor)| X509Source::Upstream {
                    roots,
                    anchor,
                });
        if x509.superseded(&loaded.stored, self.inner.started_at) {
            tracing::info!(
                "a newer replica switched the CA setting; leaving X.509 keys to it until this replica is replaced"
            );
            x509 = X509Source::Frozen;
        }
        let written = write_rotation(
            self.inner.store.as_ref(),
            loaded,
            &self.inner.trust_domain,
            &self.inner.lifetimes,
            x509,
            SystemTime::now(),
        )
        .await?;
        match written {
            Rotation::Unchanged => Ok(false),
            Rotation::Conflict => {
                tracing::debug!("authority Secret changed under us; the watch brings it");
                Ok(false)
            }
            Rotation::Written(loaded, rotated) => {
                tracing::info!(
                    generation = loaded.stored.generation,
                    "authority keys rotated"
                );
                self.install(loaded.stored, loaded.resource_version);
                self.report_replaced(&rotated).await;
                self.publish_bundle().await?;
                Ok(true)
            }
        }
    }

    async fn report_replaced(&self, rotated: &Rotated) {
        for kind in &rotated.replaced {
            self.inner
                .metrics
                .count_authority_replacement(kind.as_str());
            let note = format!(
                "no usable {} signing key was left (expired, or too close to expiry for the longest lifetime it signs); a new key was activated at once, without the propagation delay",
                kind.as_str()
            );
            tracing::warn!(kind = kind.as_str(), "{note}");
            self.inner.store.warn(REASON_REPLACED, note).await;
        }
    }

    /// Writes the bundle ConfigMap unless it already shows this generation or a newer one.
    pub async fn publish_bundle(&self) -> Result<(), AuthorityError> {
        let material = self.current();
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
        self.inner
            .store
            .publish_bundle(material.generation, data)
            .await?;
        Ok(())
    }

    /// Handles one observed version of the Secret (a watch event).
    pub async fn observe(&self, secret: &Secret) {
        let parsed = parse_secret(secret, &self.inner.trust_domain);
        let (stored, resource_version) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                self.report_unreadable(&error).await;
                return;
            }
        };
        self.report_readable();
        let held = self.loaded().stored.clone();
        let changed = match classify(&held, &stored) {
            Observed::Same => {
                self.loaded().resource_version = resource_version;
                false
            }
            Observed::Newer => {
                self.install(stored, resource_version);
                true
            }
            Observed::Older => self.restore(&held).await,
        };
        if changed {
            tracing::info!(
                generation = self.current().generation,
                "authority keys reloaded"
            );
            // Recovers at once if what was installed cannot sign.
            if let Err(error) = self.rotate_once().await {
                tracing::warn!(%error, label = error.label(), "rotating authority keys");
            }
            if let Err(error) = self.publish_bundle().await {
                tracing::warn!(%error, label = error.label(), "publishing the bundle");
            }
        }
    }

    /// The Secret looks older than what we hold. A late watch event looks the same, so it is
    /// confirmed with a fresh read; a confirmed restore is merged ([`adopt_restored`]) and
    /// written back. Returns whether the held state changed.
    async fn restore(&self, held: &StoredAuthority) -> bool {
        let current = match self.inner.store.get_secret().await {
            Ok(Some(secret)) => parse_secret(&secret, &self.inner.trust_domain),
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(%error, "re-reading the authority Secret");
                return false;
            }
        };
        let (restored, resource_version) = match current {
            Ok(current) => current,
            Err(error) => {
                self.report_unreadable(&error).await;
                return false;
            }
        };
        match classify(held, &restored) {
            Observed::Same => return false,
            Observed::Newer => {
                self.install(restored, resource_version);
                return true;
            }
            Observed::Older => {}
        }
        let merged = adopt_restored(&restored, held, SystemTime::now());
        let note = format!(
            "the authority Secret went back from generation {} to {}; its keys are used again, and the newer keys held here stay published until what they signed has expired",
            held.generation, restored.generation
        );
        tracing::warn!(
            held = held.generation,
            restored = restored.generation,
            "authority Secret restored to an older state"
        );
        match secret_object(&merged, Some(resource_version)) {
            Ok(secret) => match self.inner.store.replace_secret(secret).await {
                Ok(Written::Ok(rv)) => {
                    self.install(merged, rv);
                    self.inner.store.warn(REASON_RESTORED, note).await;
                    true
                }
                Ok(Written::Conflict) => false,
                Err(error) => {
                    tracing::warn!(%error, "writing the restored authority state");
                    false
                }
            },
            Err(error) => {
                tracing::warn!(%error, "encoding the restored authority state");
                false
            }
        }
    }

    async fn report_unreadable(&self, error: &AuthorityError) {
        self.inner
            .metrics
            .set_authority_secret_error(Some(error.label()));
        tracing::error!(
            %error,
            label = error.label(),
            generation = self.current().generation,
            "authority Secret unreadable; signing with the last good keys and never overwriting it"
        );
        let first = !std::mem::replace(&mut *self.unreadable(), true);
        if first {
            let note = format!(
                "{error}; signing continues with the last good keys (generation {}); fix or restore the Secret",
                self.current().generation
            );
            self.inner.store.warn(REASON_UNREADABLE, note).await;
        }
    }

    fn report_readable(&self) {
        if std::mem::replace(&mut *self.unreadable(), false) {
            self.inner.metrics.set_authority_secret_error(None);
            tracing::info!("authority Secret readable again");
        }
    }

    fn unreadable(&self) -> std::sync::MutexGuard<'_, bool> {
        self.inner
            .unreadable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    async fn watch_secret(self, store: Arc<KubeStore>, shutdown: CancellationToken) {
        let secrets = store.secrets().clone();
        let name = store.secret_name().to_owned();
        // A deleted authority Secret changes nothing: the keys held keep signing, and the next
        // rotation writes it again.
        follow_secret(secrets, &name, "the authority Secret", shutdown, |secret| {
            let this = self.clone();
            async move {
                if let Some(secret) = secret {
                    this.observe(&secret).await;
                }
            }
        })
        .await;
    }

    async fn rotation_loop(self, shutdown: CancellationToken) {
        loop {
            let now = SystemTime::now();
            let next = self
                .loaded()
                .stored
                .next_rotation_check(&self.inner.lifetimes, now);
            // A failed write is retried within MAX_ROTATION_SLEEP; never spin.
            let switch_at = self
                .inner
                .upstream
                .as_ref()
                .and_then(|slot| *lock(&slot.switch_at));
            let next = match (next, switch_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = next
                .map_or(MAX_ROTATION_SLEEP, |t| {
                    t.duration_since(now).unwrap_or_default()
                })
                .min(MAX_ROTATION_SLEEP)
                .max(Duration::from_millis(200));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
            }
            if let Err(error) = self.rotate_once().await {
                tracing::warn!(%error, label = error.label(), "rotating authority keys");
            }
            if switch_at.is_some_and(|at| at <= SystemTime::now()) {
                tracing::info!("the upstream CA's root has propagated; it signs now");
                self.refresh_material().await;
            }
            self.check_upstream_lifetime().await;
        }
    }

    /// An upstream CA nobody renews runs out while its Secret stays the same: say so once it can
    /// no longer sign the longest lifetime (it keeps signing, shorter, until it ends).
    async fn check_upstream_lifetime(&self) {
        let Some(slot) = &self.inner.upstream else {
            return;
        };
        let candidate = Arc::clone(&lock(&slot.candidate));
        let longest = self.inner.lifetimes.max_ca_signed_lifetime();
        if candidate.usable_at(longest, SystemTime::now()) {
            return;
        }
        let error = AuthorityError::Upstream {
            secret: slot.secret.clone(),
            error: candidate.ends_too_soon(longest),
        };
        self.inner
            .metrics
            .set_upstream_ca_error(Some(error.label()));
        let message = error.to_string();
        if lock(&slot.problem).replace(message.clone()) != Some(message.clone()) {
            tracing::error!(%error, "the upstream CA is about to end and was not renewed");
            let note = format!("{message}; renew it (is cert-manager running?)");
            self.inner.store.warn(REASON_UPSTREAM_UNUSABLE, note).await;
        }
    }
}

/// Follows the Secret `name` until `shutdown`: `on_change(Some(..))` for each version seen,
/// `on_change(None)` when it is deleted.
async fn follow_secret<F, Fut>(
    secrets: kube::Api<Secret>,
    name: &str,
    what: &str,
    shutdown: CancellationToken,
    mut on_change: F,
) where
    F: FnMut(Option<Secret>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(secrets, config)
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .boxed();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = events.next() => next,
        };
        match next {
            None => return,
            Some(Err(error)) => tracing::warn!(%error, "watching {what}"),
            Some(Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret))) => {
                on_change(Some(secret)).await;
            }
            Some(Ok(watcher::Event::Delete(_))) => on_change(None).await,
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
        }
    }
}

/// The material for `stored`: with an upstream CA, the CA [`upstream::select`] picks (and the
/// slot remembers what signs and until when).
fn select_material(
    stored: &StoredAuthority,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    slot: Option<&UpstreamSlot>,
    now: SystemTime,
) -> Result<SigningMaterial, AuthorityError> {
    let Some(slot) = slot else {
        return SigningMaterial::from_stored(stored, trust_domain, lifetimes, now);
    };
    let candidate = Arc::clone(&lock(&slot.candidate));
    let held = lock(&slot.signing).clone();
    let (signing, switch_at) =
        match upstream::select(stored, held.as_deref(), &candidate, lifetimes, now) {
            Selection::Candidate => (Some(candidate), None),
            Selection::KeepHeld { until } => (held, Some(until)),
            Selection::KeepOwn { until } => (None, Some(until)),
        };
    let material = match &signing {
        Some(ca) => {
            SigningMaterial::from_stored_with(stored, trust_domain, lifetimes, Some(ca), now)
        }
        None => SigningMaterial::from_stored(stored, trust_domain, lifetimes, now),
    }?;
    // Remembered only once the material is built: what signs is what the slot says.
    *lock(&slot.switch_at) = switch_at;
    if signing.is_some() {
        *lock(&slot.signing) = signing;
    }
    Ok(material)
}

/// What a guarded rotation write did.
enum Rotation {
    Unchanged,
    Conflict,
    Written(Loaded, Rotated),
}

async fn write_rotation(
    store: &dyn AuthorityStore,
    loaded: Loaded,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    x509: X509Source<'_>,
    now: SystemTime,
) -> Result<Rotation, AuthorityError> {
    let Loaded {
        mut stored,
        resource_version,
    } = loaded;
    let rotated = rotate_with(&mut stored, trust_domain, lifetimes, x509, now)?;
    if !rotated.changed {
        return Ok(Rotation::Unchanged);
    }
    let secret = secret_object(&stored, Some(resource_version))?;
    Ok(match store.replace_secret(secret).await? {
        Written::Ok(resource_version) => Rotation::Written(
            Loaded {
                stored,
                resource_version,
            },
            rotated,
        ),
        Written::Conflict => Rotation::Conflict,
    })
}

/// The Secret as it is now, brought up to date: read (or created), then rotated and written back
/// before anything signs, so that an outage longer than the CA lifetime heals here.
async fn load_current(
    store: &dyn AuthorityStore,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    x509: X509Source<'_>,
) -> Result<(Loaded, Rotated), AuthorityError> {
    for _ in 0..START_ATTEMPTS {
        let loaded = match store.get_secret().await? {
            Some(secret) => {
                let (stored, resource_version) = parse_secret(&secret, trust_domain)?;
                Loaded {
                    stored,
                    resource_version,
                }
            }
            None => {
                let mut stored = StoredAuthority::empty(trust_domain);
                let now = SystemTime::now();
                rotate_with(&mut stored, trust_domain, lifetimes, x509, now)?;
                match store.create_secret(secret_object(&stored, None)?).await? {
                    Written::Ok(resource_version) => {
                        tracing::info!("authority created");
                        return Ok((
                            Loaded {
                                stored,
                                resource_version,
                            },
                            Rotated::default(),
                        ));
                    }
                    // Another replica created it first: use theirs, so the domain has one CA.
                    Written::Conflict => continue,
                }
            }
        };
        match write_rotation(
            store,
            loaded.clone(),
            trust_domain,
            lifetimes,
            x509,
            SystemTime::now(),
        )
        .await?
        {
            Rotation::Unchanged => return Ok((loaded, Rotated::default())),
            Rotation::Written(loaded, rotated) => return Ok((loaded, rotated)),
            // Another replica rotated at the same time: read what it wrote.
            Rotation::Conflict => continue,
        }
    }
    Err(AuthorityError::Contended(START_ATTEMPTS))
}

/// Reads the Secret's state and checks all of it ([`check_stored`]).
fn parse_secret(
    secret: &Secret,
    trust_domain: &TrustDomain,
) -> Result<(StoredAuthority, String), AuthorityError> {
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SECRET_DATA_KEY))
        .ok_or(AuthorityError::MissingData(SECRET_DATA_KEY))?;
    let stored: StoredAuthority = serde_json::from_slice(&data.0)?;
    check_stored(&stored, trust_domain)?;
    Ok((
        stored,
        secret.metadata.resource_version.clone().unwrap_or_default(),
    ))
}

/// The Secret for `stored`; the store gives it its name.
fn secret_object(
    stored: &StoredAuthority,
    resource_version: Option<String>,
) -> Result<Secret, AuthorityError> {
    let json = serde_json::to_vec(stored)?;
    Ok(Secret {
        metadata: ObjectMeta {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;

    use super::*;
    use crate::authority::KeyKind;
    use crate::authority::state::rotate;
    use crate::authority::store::MemoryStore;

    /// The defaults: 24h CA, 24h JWT keys, 1h propagation, 12h X.509-SVIDs.
    fn args() -> AuthorityArgs {
        crate::authority::test_support::default_args()
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// A state created `ago` and never rotated since (the operator was down).
    fn state_from(ago: Duration) -> StoredAuthority {
        let mut stored = StoredAuthority::empty(&td());
        rotate(
            &mut stored,
            &td(),
            &args().lifetimes(),
            SystemTime::now() - ago,
        )
        .unwrap();
        stored
    }

    fn secret_of(stored: &StoredAuthority) -> Secret {
        secret_object(stored, None).unwrap()
    }

    fn garbage(data: &[u8]) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                SECRET_DATA_KEY.to_owned(),
                ByteString(data.to_vec()),
            )])),
            ..Secret::default()
        }
    }

    fn stored_in(store: &MemoryStore) -> StoredAuthority {
        parse_secret(&store.secret().unwrap(), &td()).unwrap().0
    }

    async fn load(store: &Arc<MemoryStore>, metrics: &Arc<Metrics>) -> SigningAuthority {
        SigningAuthority::load(store.clone(), td(), args(), metrics.clone())
            .await
            .expect("the authority starts")
    }

    fn reasons(store: &MemoryStore) -> Vec<&'static str> {
        store
            .events()
            .into_iter()
            .map(|(reason, _)| reason)
            .collect()
    }

    #[tokio::test]
    async fn an_upstream_ca_signs_is_renewed_and_a_bad_secret_keeps_the_last_good_one() {
        use wimsey_core::x509::upstream::test_pki::UserPki;

        use crate::authority::upstream::test_secret;
        let store = Arc::new(MemoryStore::default());
        let metrics = Arc::new(Metrics::new());
        let mut args = args();
        args.upstream_ca_secret = Some("user-ca".to_owned());
        let root = UserPki::new(&td());
        let lifetimes = args.lifetimes();
        let first = upstream::from_secret(
            &test_secret(&root.intermediate()),
            &td(),
            &lifetimes,
            SystemTime::now(),
        )
        .expect("usable");
        let first_cert = first.certificate().clone();
        let authority = SigningAuthority::load_with_upstream(
            store.clone(),
            td(),
            args,
            metrics.clone(),
            Some(Arc::new(first)),
        )
        .await
        .expect("load");
        let material = authority.current();
        assert_eq!(material.ca.chain()[0], first_cert);
        let root_der = root.root().as_bytes().to_vec();
        assert_eq!(material.bundle.x509_authorities, vec![root_der.clone()]);
        let (_, bundle) = store.bundle().expect("published");
        assert!(bundle[BUNDLE_PEM_KEY].contains("BEGIN CERTIFICATE"));
        assert_eq!(
            stored_in(&store).upstream_roots.len(),
            1,
            "the root is stored"
        );

        // cert-manager renews the intermediate under the same root: it signs at once.
        let renewed = test_secret(&root.intermediate());
        authority.observe_upstream(Some(&renewed)).await;
        let material = authority.current();
        assert_ne!(material.ca.chain()[0], first_cert);
        assert_eq!(material.bundle.x509_authorities, vec![root_der.clone()]);
        let renewed_cert = material.ca.chain()[0].clone();

        // Expired, wrong and deleted Secrets: reported once each, the renewed CA keeps signing.
        let mut broken = renewed.clone();
        broken.data.as_mut().expect("data").insert(
            "tls.key".to_owned(),
            ByteString(
                b"-----BEGIN RSA PRIVATE KEY-----\nAA==\n-----END RSA PRIVATE KEY-----\n".to_vec(),
            ),
        );
        authority.observe_upstream(Some(&broken)).await;
        authority.observe_upstream(Some(&broken)).await;
        authority.observe_upstream(None).await;
        let events = store.events();
        let upstream_events: Vec<&String> = events
            .iter()
            .filter(|(reason, _)| *reason == REASON_UPSTREAM_UNUSABLE)
            .map(|(_, note)| note)
            .collect();
        assert_eq!(upstream_events.len(), 2, "{upstream_events:?}");
        assert!(upstream_events[0].contains("RSA"), "{}", upstream_events[0]);
        assert!(
            upstream_events[1].contains("does not exist"),
            "{}",
            upstream_events[1]
        );
        assert_eq!(authority.current().ca.chain()[0], renewed_cert);
        let text = metrics.encode();
        assert!(text.contains("upstream_ca_unusable 1"), "{text}");

        // A new root is published at once but signs only after the propagation delay.
        let other = UserPki::new(&td());
        authority
            .observe_upstream(Some(&test_secret(&other.intermediate())))
            .await;
        let material = authority.current();
        assert_eq!(
            material.ca.chain()[0],
            renewed_cert,
            "the held CA keeps signing"
        );
        assert_eq!(
            material.bundle.x509_authorities.len(),
            2,
            "both roots published"
        );
        assert_eq!(stored_in(&store).upstream_roots.len(), 2);
        assert!(metrics.encode().contains("upstream_ca_unusable 0"));
    }

    #[tokio::test]
    async fn start_after_two_days_down_replaces_the_ca_publishes_and_warns() {
        let store = Arc::new(MemoryStore::default());
        let before = state_from(48 * HOUR);
        store.put_secret(secret_of(&before));
        let metrics = Arc::new(Metrics::new());
        let authority = load(&store, &metrics).await;

        let material = authority.current();
        assert!(material.ca.not_after() > SystemTime::now() + 12 * HOUR);
        let written = stored_in(&store);
        assert!(
            written.generation > before.generation,
            "recovery written back"
        );
        assert_eq!(material.generation, written.generation);
        assert_eq!(store.bundle().map(|(g, _)| g), Some(written.generation));
        assert_eq!(reasons(&store), vec![REASON_REPLACED]);
        assert!(store.events()[0].1.contains(KeyKind::X509Ca.as_str()));
        assert!(
            metrics
                .encode()
                .contains("wimsey_operator_authority_replacements_total{kind=\"x509_ca\"} 1"),
            "{}",
            metrics.encode()
        );
    }

    #[tokio::test]
    async fn start_after_an_hour_down_changes_nothing() {
        let store = Arc::new(MemoryStore::default());
        let before = state_from(HOUR);
        store.put_secret(secret_of(&before));
        let authority = load(&store, &Arc::new(Metrics::new())).await;
        assert_eq!(stored_in(&store), before);
        assert_eq!(authority.current().generation, before.generation);
        assert!(store.events().is_empty());
    }

    #[tokio::test]
    async fn start_refuses_a_damaged_secret_and_never_replaces_it() {
        let cases = [
            (garbage(b"{\"format\": 1, oops"), "authority.json"),
            (
                Secret {
                    data: Some(BTreeMap::from([(
                        "other".to_owned(),
                        ByteString(b"x".to_vec()),
                    )])),
                    ..Secret::default()
                },
                "no \"authority.json\" key",
            ),
        ];
        for (secret, mention) in cases {
            let store = Arc::new(MemoryStore::default());
            let put = store.put_secret(secret);
            let metrics = Arc::new(Metrics::new());
            let error = SigningAuthority::load(store.clone(), td(), args(), metrics.clone())
                .await
                .expect_err("a damaged Secret stops the start");
            assert!(error.to_string().contains(mention), "{error}");
            assert_eq!(store.secret(), Some(put), "left as it was");
            assert_eq!(reasons(&store), vec![REASON_UNREADABLE]);
            assert!(
                metrics
                    .encode()
                    .contains("wimsey_operator_authority_secret_unreadable 1")
            );
        }
    }

    #[tokio::test]
    async fn a_running_authority_keeps_its_last_good_keys_when_the_secret_turns_to_garbage() {
        let store = Arc::new(MemoryStore::default());
        store.put_secret(secret_of(&state_from(HOUR)));
        let metrics = Arc::new(Metrics::new());
        let authority = load(&store, &metrics).await;
        let good = authority.current();
        let held = authority.loaded().clone();

        let broken = store.put_secret(garbage(b"[]"));
        authority.observe(&broken).await;
        authority.observe(&broken).await;
        let now = authority.current();
        assert!(Arc::ptr_eq(&good, &now), "same material still signs");
        assert_eq!(reasons(&store), vec![REASON_UNREADABLE], "reported once");
        assert!(store.events()[0].1.contains("authority.json"));
        assert!(
            metrics
                .encode()
                .contains("wimsey_operator_authority_secret_unreadable 1")
        );
        // Nothing overwrites it: a rotation that is due (at an injected time) conflicts on the
        // resourceVersion of the last Secret that was read successfully.
        assert!(!authority.rotate_once().await.unwrap());
        let due = SystemTime::now() + 30 * HOUR;
        let written = write_rotation(
            store.as_ref(),
            held,
            &td(),
            &args().lifetimes(),
            X509Source::Own,
            due,
        )
        .await
        .unwrap();
        assert!(matches!(written, Rotation::Conflict));
        assert_eq!(store.secret(), Some(broken));

        // Fixed by hand: readable again, nothing replaced.
        let fixed = store.put_secret(secret_of(&authority.loaded().stored.clone()));
        authority.observe(&fixed).await;
        assert!(
            metrics
                .encode()
                .contains("wimsey_operator_authority_secret_unreadable 0")
        );
        assert_eq!(authority.current().generation, good.generation);
        assert_eq!(
            authority.loaded().resource_version,
            fixed.metadata.resource_version.unwrap()
        );
    }

    #[tokio::test]
    async fn a_restored_older_secret_is_used_and_written_back_newer() {
        let store = Arc::new(MemoryStore::default());
        // 11.5h old: the CA successor is due, so the running authority moves past the snapshot.
        let snapshot = state_from(11 * HOUR + HOUR / 2);
        store.put_secret(secret_of(&snapshot));
        let authority = load(&store, &Arc::new(Metrics::new())).await;
        let held = stored_in(&store);
        assert!(held.generation > snapshot.generation);

        let restored = store.put_secret(secret_of(&snapshot));
        authority.observe(&restored).await;
        let after = stored_in(&store);
        assert!(after.generation > held.generation, "{after:?}");
        assert!(reasons(&store).contains(&REASON_RESTORED));
        let snapshot_ca = snapshot.x509_ca[0].certificate_der().unwrap();
        assert_eq!(
            authority.current().ca.certificate().as_bytes(),
            snapshot_ca.as_slice(),
            "the restored CA signs"
        );
        assert_eq!(authority.current().generation, after.generation);
        assert_eq!(store.bundle().map(|(g, _)| g), Some(after.generation));
    }

    #[tokio::test]
    async fn a_restored_secret_whose_ca_expired_is_recovered_at_once() {
        let store = Arc::new(MemoryStore::default());
        store.put_secret(secret_of(&state_from(HOUR)));
        let authority = load(&store, &Arc::new(Metrics::new())).await;
        let held_ca = authority.current().ca.certificate().clone();

        let restored = store.put_secret(secret_of(&state_from(72 * HOUR)));
        authority.observe(&restored).await;
        let material = authority.current();
        assert!(material.ca.not_after() > SystemTime::now() + 12 * HOUR);
        assert!(
            material.ca.certificate().as_bytes() != held_ca.as_bytes(),
            "a new CA"
        );
        assert!(
            material
                .bundle
                .x509_authorities
                .iter()
                .any(|der| der.as_slice() == held_ca.as_bytes()),
            "the CA that signed until now stays published"
        );
        assert!(reasons(&store).contains(&REASON_REPLACED));
    }
}
