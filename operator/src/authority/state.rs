//! The authority's persisted state and its rotation, as plain data and pure functions.
//!
//! The whole state is one JSON document in the `wimsey-authority` Secret: three key sets (X.509
//! CA keys, JWT-SVID keys, WIT-SVID keys), each key with its `core::rotation` record, its PKCS#8
//! private key and, for CA keys, its self-signed CA certificate. [`rotate`] moves the sets forward
//! per `core::rotation::plan`; [`SigningMaterial::from_stored`] turns a state into what signs.
//!
//! Recovery is decided here, on an injected clock, so it can be tested without a cluster:
//! * [`check_stored`] reads every key of a state read from the Secret and names the first one
//!   that is unusable (nothing is ever signed with, or replaced over, a state it cannot read);
//! * [`rotate`] runs before anything signs: a CA whose certificate has ended, or ends within the
//!   longest lifetime it signs, never signs again; if nothing usable is left a new key is
//!   activated at once and reported in [`Rotated::replaced`];
//! * [`classify`] and [`adopt_restored`] handle a Secret older than the one held (etcd restore).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use wimsey_core::TrustDomain;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::{PublicJwk, key_id};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::rotation::{self, KeyRecord, KeySet, Phase, RotationPolicy, Transition, Validity};
use wimsey_core::x509::upstream::UpstreamCa;
use wimsey_core::x509::{Authority, CaParams, CertDer, certificate_validity};

use super::AuthorityError;

/// The format of [`StoredAuthority`]; bumped on incompatible changes.
pub const STATE_FORMAT: u32 = 1;

/// Which kind of key a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    X509Ca,
    Jwt,
    Wit,
}

impl KeyKind {
    pub const ALL: [KeyKind; 3] = [KeyKind::X509Ca, KeyKind::Jwt, KeyKind::Wit];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::X509Ca => "x509_ca",
            KeyKind::Jwt => "jwt",
            KeyKind::Wit => "wit",
        }
    }
}

/// The Secret's JSON document.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAuthority {
    pub format: u32,
    /// Bumped on every change; it is also the bundle's `spiffe_sequence`.
    pub generation: u64,
    pub trust_domain: String,
    pub x509_ca: Vec<StoredKey>,
    pub jwt: Vec<StoredKey>,
    pub wit: Vec<StoredKey>,
    /// Roots of an upstream CA (see [`super::upstream`]): published in the bundle, with when,
    /// so a new root is trusted everywhere before anything chaining to it is handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_roots: Vec<StoredRoot>,
}

/// A published upstream root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoot {
    /// DER, standard base64.
    pub certificate: String,
    pub published_at_ms: u64,
    /// When it stopped anchoring the CA that signs; dropped one longest signed lifetime later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at_ms: Option<u64>,
}

impl std::fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAuthority")
            .field("generation", &self.generation)
            .field("trust_domain", &self.trust_domain)
            .field("x509_ca", &self.x509_ca)
            .field("jwt", &self.jwt)
            .field("wit", &self.wit)
            .field("upstream_roots", &self.upstream_roots.len())
            .finish()
    }
}

/// One key: its rotation record (times in Unix milliseconds) and its material.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: String,
    pub phase: StoredPhase,
    pub prepared_at_ms: u64,
    pub published_at_ms: Option<u64>,
    pub activated_at_ms: Option<u64>,
    pub retired_at_ms: Option<u64>,
    /// PKCS#8 DER, standard base64.
    pub private_key: String,
    /// CA keys only: the self-signed CA certificate, DER, standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredPhase {
    Prepared,
    Published,
    Active,
    Retired,
}

impl From<Phase> for StoredPhase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Prepared => StoredPhase::Prepared,
            Phase::Published => StoredPhase::Published,
            Phase::Active => StoredPhase::Active,
            Phase::Retired => StoredPhase::Retired,
        }
    }
}

impl From<StoredPhase> for Phase {
    fn from(phase: StoredPhase) -> Self {
        match phase {
            StoredPhase::Prepared => Phase::Prepared,
            StoredPhase::Published => Phase::Published,
            StoredPhase::Active => Phase::Active,
            StoredPhase::Retired => Phase::Retired,
        }
    }
}

/// Lifetimes for every key kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub ca_ttl: Duration,
    pub jwt_key_ttl: Duration,
    pub propagation_delay: Duration,
    pub max_x509_svid_ttl: Duration,
    pub max_jwt_svid_ttl: Duration,
    /// Node SVIDs (Attest) are signed by the CA too.
    pub node_svid_ttl: Duration,
    /// So is the operator's own node API serving SVID.
    pub server_svid_ttl: Duration,
}

impl Lifetimes {
    /// The longest lifetime of anything a CA key signs: workload X.509-SVIDs, node SVIDs and the
    /// node API's serving SVID. A CA is used only while this much of its certificate is left,
    /// and a retired CA stays in the bundle this long (or until its certificate ends).
    pub fn max_ca_signed_lifetime(&self) -> Duration {
        self.max_x509_svid_ttl
            .max(self.node_svid_ttl)
            .max(self.server_svid_ttl)
    }

    /// A CA key signs for half its certificate's lifetime (as SPIRE does), so every leaf it
    /// signs ends well before the CA certificate does.
    pub fn policy(&self, kind: KeyKind) -> RotationPolicy {
        match kind {
            KeyKind::X509Ca => RotationPolicy {
                active_lifetime: self.ca_ttl / 2,
                propagation_delay: self.propagation_delay,
                max_signed_lifetime: self.max_ca_signed_lifetime(),
            },
            KeyKind::Jwt => RotationPolicy {
                active_lifetime: self.jwt_key_ttl,
                propagation_delay: self.propagation_delay,
                max_signed_lifetime: self.max_jwt_svid_ttl,
            },
            // WIT-SVIDs live as long as X.509-SVIDs.
            KeyKind::Wit => RotationPolicy {
                active_lifetime: self.jwt_key_ttl,
                propagation_delay: self.propagation_delay,
                max_signed_lifetime: self.max_x509_svid_ttl,
            },
        }
    }

    /// Rejects lifetimes under which a key would never get to sign, or an SVID would outlive
    /// the CA certificate that signed it.
    pub fn check(&self) -> Result<(), AuthorityError> {
        let bad = |reason: &'static str| Err(AuthorityError::Settings(reason));
        if self.ca_ttl < Duration::from_secs(2) || self.jwt_key_ttl < Duration::from_secs(1) {
            return bad("--ca-ttl must be at least 2s and --jwt-key-ttl at least 1s");
        }
        if self.propagation_delay >= self.ca_ttl / 2 || self.propagation_delay >= self.jwt_key_ttl {
            return bad(
                "--key-propagation-delay must be shorter than half of --ca-ttl and than --jwt-key-ttl",
            );
        }
        if self.max_ca_signed_lifetime() > self.ca_ttl / 2 {
            return bad(
                "--max-x509-svid-ttl, --node-svid-ttl and --server-svid-ttl must be at most half of --ca-ttl",
            );
        }
        Ok(())
    }

    /// The bundle's `spiffe_refresh_hint`: a quarter of the propagation delay, so consumers
    /// poll several times before a new key may sign (Federation §4 asks for 3-5x ahead).
    pub fn refresh_hint(&self) -> Duration {
        (self.propagation_delay / 4).max(Duration::from_secs(1))
    }
}

pub(super) fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn decode(field: &'static str, text: &str) -> Result<Vec<u8>, AuthorityError> {
    STANDARD
        .decode(text)
        .map_err(|_| AuthorityError::Corrupt(field))
}

impl StoredKey {
    /// The rotation record, with the CA certificate's validity for CA keys.
    fn record(&self, kind: KeyKind) -> Result<KeyRecord, AuthorityError> {
        let validity = match kind {
            KeyKind::X509Ca => {
                let (not_before, not_after) = certificate_validity(&self.certificate_der()?)?;
                Some(Validity {
                    not_before,
                    not_after,
                })
            }
            KeyKind::Jwt | KeyKind::Wit => None,
        };
        Ok(self.record_without_validity().with_validity(validity))
    }

    fn record_without_validity(&self) -> KeyRecord {
        KeyRecord {
            id: self.id.clone(),
            phase: self.phase.into(),
            prepared_at: from_ms(self.prepared_at_ms),
            published_at: self.published_at_ms.map(from_ms),
            activated_at: self.activated_at_ms.map(from_ms),
            retired_at: self.retired_at_ms.map(from_ms),
            validity: None,
        }
    }

    /// Reads the key's material: the private key, and for a CA key its certificate, which must
    /// be a CA for `trust_domain` signed by that key.
    fn check(&self, kind: KeyKind, trust_domain: &TrustDomain) -> Result<(), String> {
        let der = zeroize::Zeroizing::new(
            STANDARD
                .decode(&self.private_key)
                .map_err(|_| "private_key: not standard base64".to_owned())?,
        );
        let key = SigningKey::from_pkcs8_any(&der).map_err(|e| format!("private_key: {e}"))?;
        if kind == KeyKind::X509Ca {
            let text = self
                .certificate
                .as_deref()
                .ok_or_else(|| "certificate: missing".to_owned())?;
            let der = STANDARD
                .decode(text)
                .map_err(|_| "certificate: not standard base64".to_owned())?;
            let (not_before, _) =
                certificate_validity(&der).map_err(|e| format!("certificate: {e}"))?;
            // Checked at its own notBefore: whether it is still valid now is rotation's business.
            Authority::from_chain(key, vec![CertDer::new(der)], trust_domain, not_before)
                .map_err(|e| format!("certificate: {e}"))?;
        }
        Ok(())
    }

    fn update_from(&mut self, record: &KeyRecord) {
        self.phase = record.phase.into();
        self.prepared_at_ms = to_ms(record.prepared_at);
        self.published_at_ms = record.published_at.map(to_ms);
        self.activated_at_ms = record.activated_at.map(to_ms);
        self.retired_at_ms = record.retired_at.map(to_ms);
    }

    pub fn signing_key(&self) -> Result<SigningKey, AuthorityError> {
        let der = zeroize::Zeroizing::new(decode("private_key", &self.private_key)?);
        Ok(SigningKey::from_pkcs8_any(&der)?)
    }

    pub fn certificate_der(&self) -> Result<Vec<u8>, AuthorityError> {
        decode(
            "certificate",
            self.certificate
                .as_deref()
                .ok_or(AuthorityError::Corrupt("certificate"))?,
        )
    }
}

impl StoredAuthority {
    pub fn empty(trust_domain: &TrustDomain) -> Self {
        Self {
            format: STATE_FORMAT,
            trust_domain: trust_domain.name().to_owned(),
            ..Self::default()
        }
    }

    fn keys_mut(&mut self, kind: KeyKind) -> &mut Vec<StoredKey> {
        match kind {
            KeyKind::X509Ca => &mut self.x509_ca,
            KeyKind::Jwt => &mut self.jwt,
            KeyKind::Wit => &mut self.wit,
        }
    }

    pub fn keys(&self, kind: KeyKind) -> &[StoredKey] {
        match kind {
            KeyKind::X509Ca => &self.x509_ca,
            KeyKind::Jwt => &self.jwt,
            KeyKind::Wit => &self.wit,
        }
    }

    /// The earliest time at which [`rotate`] may have something to do (for sleeping until then).
    pub fn next_rotation_check(
        &self,
        lifetimes: &Lifetimes,
        now: SystemTime,
    ) -> Option<SystemTime> {
        KeyKind::ALL
            .iter()
            .filter_map(|&kind| {
                let set = self.key_set(kind).ok()?;
                rotation::next_event(&set, &lifetimes.policy(kind), now)
            })
            .min()
    }

    fn key_set(&self, kind: KeyKind) -> Result<KeySet, AuthorityError> {
        Ok(KeySet {
            keys: self
                .keys(kind)
                .iter()
                .map(|k| k.record(kind))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Reads a state taken from the Secret completely, so that a damaged Secret is reported (naming
/// the key of the Secret, the key set, the key and the problem) instead of being signed with or
/// replaced: the format, the trust domain, at most one active key per set, and every key's
/// material.
pub fn check_stored(
    stored: &StoredAuthority,
    trust_domain: &TrustDomain,
) -> Result<(), AuthorityError> {
    if stored.format != STATE_FORMAT {
        return Err(AuthorityError::Corrupt("format"));
    }
    if stored.trust_domain != trust_domain.name() {
        return Err(AuthorityError::TrustDomainMismatch {
            stored: stored.trust_domain.clone(),
            configured: trust_domain.name().to_owned(),
        });
    }
    for root in &stored.upstream_roots {
        let der = decode("upstream root", &root.certificate)?;
        certificate_validity(&der).map_err(|_| AuthorityError::Corrupt("upstream root"))?;
    }
    for kind in KeyKind::ALL {
        let keys = stored.keys(kind);
        if keys
            .iter()
            .filter(|k| k.phase == StoredPhase::Active)
            .count()
            > 1
        {
            return Err(AuthorityError::BadKey {
                set: kind.as_str(),
                id: String::new(),
                problem: "more than one active key".to_owned(),
            });
        }
        for key in keys {
            key.check(kind, trust_domain)
                .map_err(|problem| AuthorityError::BadKey {
                    set: kind.as_str(),
                    id: key.id.clone(),
                    problem,
                })?;
        }
    }
    Ok(())
}

/// How a state read from the Secret relates to the one held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// What we hold.
    Same,
    /// Written after what we hold (a rotation by another replica): adopt it.
    Newer,
    /// An older generation, or the same generation with other keys: an etcd restore, or a late
    /// watch event; the caller confirms with a fresh read before treating it as a restore.
    Older,
}

pub fn classify(held: &StoredAuthority, observed: &StoredAuthority) -> Observed {
    if observed == held {
        Observed::Same
    } else if observed.generation > held.generation {
        Observed::Newer
    } else {
        Observed::Older
    }
}

/// The state to continue from after the Secret was restored to an older one (etcd restore).
///
/// The API server's Secret is what every other replica and every restart reads, so it wins: the
/// restored keys are used while they are usable ([`rotate`] replaces them at once otherwise).
/// The keys we held that are not in it may have signed SVIDs that are still out there, so each
/// that ever signed is kept as a retired key: it stays in the bundle until those SVIDs have
/// expired, and signs nothing. The generation moves past both, so the bundle ConfigMap (which
/// refuses older generations) takes the result.
pub fn adopt_restored(
    restored: &StoredAuthority,
    held: &StoredAuthority,
    now: SystemTime,
) -> StoredAuthority {
    let mut merged = restored.clone();
    for kind in KeyKind::ALL {
        let missing: Vec<StoredKey> = held
            .keys(kind)
            .iter()
            .filter(|k| k.activated_at_ms.is_some())
            .filter(|k| !restored.keys(kind).iter().any(|r| r.id == k.id))
            .map(|k| {
                let mut k = k.clone();
                if k.phase != StoredPhase::Retired {
                    k.phase = StoredPhase::Retired;
                    k.retired_at_ms = Some(to_ms(now));
                }
                k
            })
            .collect();
        merged.keys_mut(kind).extend(missing);
    }
    merged.generation = restored.generation.max(held.generation) + 1;
    merged
}

/// What [`rotate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotated {
    pub changed: bool,
    /// Key sets whose signing key had to be replaced at once (nothing usable was left, e.g.
    /// after an outage longer than the CA lifetime), skipping the propagation delay.
    pub replaced: Vec<KeyKind>,
}

/// Moves every key set forward to `now`: generates keys (and CA certificates) when the plan asks
/// for them, publishes, activates, retires and drops; an active key that may not sign any more is
/// replaced at once. The generation is bumped when anything changed.
pub fn rotate(
    stored: &mut StoredAuthority,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> Result<Rotated, AuthorityError> {
    rotate_with(stored, trust_domain, lifetimes, X509Source::Own, now)
}

/// Where X.509-SVIDs are signed from, for [`rotate_with`].
#[derive(Debug, Clone, Copy)]
pub enum X509Source<'a> {
    /// The authority's own CA keys, rotated.
    Own,
    /// An upstream CA: `roots` (those to publish) are tracked ([`super::upstream`]), and the own
    /// CA keys are retired once `anchor` (the root the Secret's CA chains to) has been published
    /// for the propagation delay; until then an active own CA keeps rotating and signing.
    Upstream {
        roots: &'a [CertDer],
        anchor: &'a CertDer,
    },
    /// Left as stored: a replica started with the other setting after this one, so this one is
    /// about to be replaced and must not undo the switch (see [`X509Source::superseded`]).
    Frozen,
}

impl<'a> X509Source<'a> {
    /// Signing with `ca`: its roots published, its anchor awaited.
    pub fn upstream(ca: &'a UpstreamCa) -> Self {
        X509Source::Upstream {
            roots: ca.roots(),
            anchor: ca.anchor(),
        }
    }

    /// Whether `stored` shows the other setting switched on after `started_at` (a rollout that
    /// changes the setting: old and new replicas run side by side for a while).
    pub fn superseded(&self, stored: &StoredAuthority, started_at: SystemTime) -> bool {
        let since = to_ms(started_at);
        match self {
            X509Source::Own => stored
                .upstream_roots
                .iter()
                .any(|r| r.retired_at_ms.is_none() && r.published_at_ms > since),
            // The own-CA replica retires every upstream root.
            X509Source::Upstream { .. } => {
                stored
                    .upstream_roots
                    .iter()
                    .all(|r| r.retired_at_ms.is_some())
                    && stored
                        .upstream_roots
                        .iter()
                        .any(|r| r.retired_at_ms.is_some_and(|at| at > since))
            }
            X509Source::Frozen => false,
        }
    }
}

/// [`rotate`], with X.509 signed from `x509`.
pub fn rotate_with(
    stored: &mut StoredAuthority,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    x509: X509Source<'_>,
    now: SystemTime,
) -> Result<Rotated, AuthorityError> {
    let mut rotated = Rotated::default();
    // Leaving an upstream CA: the own CA that takes over at once is the switch, not a recovery.
    let leaving_upstream = matches!(x509, X509Source::Own)
        && stored
            .upstream_roots
            .iter()
            .any(|r| r.retired_at_ms.is_none());
    match x509 {
        X509Source::Own => {
            rotated.changed |= super::upstream::track_roots(stored, &[], lifetimes, now);
        }
        X509Source::Upstream { roots, .. } => {
            rotated.changed |= super::upstream::track_roots(stored, roots, lifetimes, now);
        }
        X509Source::Frozen => {}
    }
    let rotate_own_ca = match x509 {
        X509Source::Own => true,
        X509Source::Upstream { anchor, .. } => {
            let switching = stored
                .x509_ca
                .iter()
                .any(|k| k.phase == StoredPhase::Active)
                && super::upstream::trusted_from(stored, anchor, lifetimes, now) > now;
            if !switching {
                rotated.changed |= super::upstream::retire_own_cas(stored, lifetimes, now);
            }
            switching
        }
        X509Source::Frozen => false,
    };
    for kind in KeyKind::ALL {
        if kind == KeyKind::X509Ca && !rotate_own_ca {
            continue;
        }
        let (changed, replaced) = rotate_kind(stored, kind, trust_domain, lifetimes, now)?;
        rotated.changed |= changed;
        if replaced && !(leaving_upstream && kind == KeyKind::X509Ca) {
            rotated.replaced.push(kind);
        }
    }
    if rotated.changed {
        stored.generation += 1;
    }
    Ok(rotated)
}

fn rotate_kind(
    stored: &mut StoredAuthority,
    kind: KeyKind,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> Result<(bool, bool), AuthorityError> {
    let policy = lifetimes.policy(kind);
    let mut set = stored.key_set(kind)?;
    let mut new_keys = Vec::new();
    let mut changed = false;
    let mut replaced = false;
    // Each round either applies transitions or adds a key; a few rounds always converge.
    for _ in 0..8 {
        let transitions = rotation::plan(&set, &policy, now);
        if transitions.is_empty() {
            break;
        }
        for transition in &transitions {
            changed = true;
            if *transition == Transition::PrepareNewKey {
                let key = new_key(kind, trust_domain, lifetimes, now)?;
                set.keys.push(key.record(kind)?);
                new_keys.push(key);
            } else {
                replaced |= matches!(transition, Transition::ActivateEarly(_));
                rotation::apply(&mut set, transition, &policy, now)?;
            }
        }
    }
    if !changed {
        return Ok((false, false));
    }
    let keys = stored.keys_mut(kind);
    keys.extend(new_keys);
    keys.retain(|k| set.keys.iter().any(|r| r.id == k.id));
    for key in keys.iter_mut() {
        if let Some(record) = set.keys.iter().find(|r| r.id == key.id) {
            key.update_from(record);
        }
    }
    Ok((true, replaced))
}

fn new_key(
    kind: KeyKind,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> Result<StoredKey, AuthorityError> {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256)?;
    let id = key_id(&key);
    let private_key = STANDARD.encode(key.pkcs8_der().as_slice());
    let certificate = match kind {
        KeyKind::X509Ca => {
            let params = CaParams::new("wimsey", lifetimes.ca_ttl);
            let ca = Authority::self_signed_root(key, trust_domain, &params, now)?;
            Some(STANDARD.encode(ca.certificate().as_bytes()))
        }
        KeyKind::Jwt | KeyKind::Wit => None,
    };
    Ok(StoredKey {
        id,
        phase: StoredPhase::Prepared,
        prepared_at_ms: to_ms(now),
        published_at_ms: None,
        activated_at_ms: None,
        retired_at_ms: None,
        private_key,
        certificate,
    })
}

/// A JWT or WIT signing key and the `kid` it is published under.
#[derive(Debug)]
pub struct TokenKey {
    pub kid: String,
    pub key: SigningKey,
}

/// What the authority signs with right now, and the bundle that validates it.
#[derive(Debug)]
pub struct SigningMaterial {
    pub generation: u64,
    /// The active CA.
    pub ca: Authority,
    pub jwt: TokenKey,
    pub wit: TokenKey,
    /// Every published key: X.509 roots, JWT and WIT authorities.
    pub bundle: TrustDomainBundle,
}

impl SigningMaterial {
    pub fn from_stored(
        stored: &StoredAuthority,
        trust_domain: &TrustDomain,
        lifetimes: &Lifetimes,
        now: SystemTime,
    ) -> Result<Self, AuthorityError> {
        Self::from_stored_with(stored, trust_domain, lifetimes, None, now)
    }

    /// [`SigningMaterial::from_stored`], with X.509-SVIDs signed by `upstream` when given
    /// instead of the stored active CA.
    pub fn from_stored_with(
        stored: &StoredAuthority,
        trust_domain: &TrustDomain,
        lifetimes: &Lifetimes,
        upstream: Option<&UpstreamCa>,
        now: SystemTime,
    ) -> Result<Self, AuthorityError> {
        check_stored(stored, trust_domain)?;
        let active = |kind: KeyKind| {
            stored
                .keys(kind)
                .iter()
                .find(|k| k.phase == StoredPhase::Active)
                .ok_or(AuthorityError::NoActiveKey(kind.as_str()))
        };
        let ca = match upstream {
            Some(upstream) => upstream.authority(trust_domain, now)?,
            None => {
                let ca_key = active(KeyKind::X509Ca)?;
                Authority::from_chain(
                    ca_key.signing_key()?,
                    vec![CertDer::new(ca_key.certificate_der()?)],
                    trust_domain,
                    now,
                )?
            }
        };
        let token_key = |kind: KeyKind| -> Result<TokenKey, AuthorityError> {
            let stored = active(kind)?;
            Ok(TokenKey {
                kid: stored.id.clone(),
                key: stored.signing_key()?,
            })
        };
        let mut bundle = TrustDomainBundle::new(trust_domain.clone());
        bundle.sequence_number = Some(stored.generation);
        bundle.refresh_hint_seconds = Some(lifetimes.refresh_hint().as_secs());
        let published = |kind: KeyKind| {
            stored
                .keys(kind)
                .iter()
                .filter(|k| k.phase != StoredPhase::Prepared)
        };
        for key in published(KeyKind::X509Ca) {
            bundle.x509_authorities.push(key.certificate_der()?);
        }
        for root in super::upstream::published_roots(stored) {
            bundle
                .x509_authorities
                .push(decode("upstream root", &root.certificate)?);
        }
        for key in published(KeyKind::Jwt) {
            let public = PublicJwk::for_signing_key(&key.signing_key()?);
            bundle.jwt_authorities.insert(key.id.clone(), public);
        }
        for key in published(KeyKind::Wit) {
            let public = PublicJwk::for_signing_key(&key.signing_key()?);
            bundle.wit_authorities.insert(key.id.clone(), public);
        }
        Ok(Self {
            generation: stored.generation,
            ca,
            jwt: token_key(KeyKind::Jwt)?,
            wit: token_key(KeyKind::Wit)?,
            bundle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            ca_ttl: Duration::from_secs(24 * 3600),
            jwt_key_ttl: Duration::from_secs(6 * 3600),
            propagation_delay: Duration::from_secs(3600),
            max_x509_svid_ttl: Duration::from_secs(3600),
            max_jwt_svid_ttl: Duration::from_secs(300),
            node_svid_ttl: Duration::from_secs(3600),
            server_svid_ttl: Duration::from_secs(3600),
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    #[test]
    fn first_rotation_creates_one_active_key_of_each_kind() {
        let mut stored = StoredAuthority::empty(&td());
        assert!(
            rotate(&mut stored, &td(), &lifetimes(), at(0))
                .unwrap()
                .changed
        );
        assert_eq!(stored.generation, 1);
        for kind in KeyKind::ALL {
            let keys = stored.keys(kind);
            assert_eq!(keys.len(), 1, "{kind:?}");
            assert_eq!(keys[0].phase, StoredPhase::Active);
        }
        // Nothing more to do at the same instant.
        assert!(
            !rotate(&mut stored, &td(), &lifetimes(), at(0))
                .unwrap()
                .changed
        );
        assert_eq!(stored.generation, 1);
        let material = SigningMaterial::from_stored(&stored, &td(), &lifetimes(), at(1)).unwrap();
        assert_eq!(material.bundle.x509_authorities.len(), 1);
        assert_eq!(material.bundle.jwt_authorities.len(), 1);
        assert_eq!(material.bundle.wit_authorities.len(), 1);
        assert_ne!(material.jwt.kid, material.wit.kid);
        assert_eq!(material.bundle.sequence_number, Some(1));
        assert_eq!(material.bundle.refresh_hint_seconds, Some(900));
    }

    #[test]
    fn ca_rotates_through_publish_before_signing_and_retires_after_signed_lifetime() {
        let l = lifetimes();
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &l, at(0)).unwrap();
        let first = stored.x509_ca[0].id.clone();
        // Successor prepared (and published) at active_lifetime - propagation = 11h.
        assert!(
            rotate(&mut stored, &td(), &l, at(11 * 3600))
                .unwrap()
                .changed
        );
        assert_eq!(stored.x509_ca.len(), 2);
        let material = SigningMaterial::from_stored(&stored, &td(), &l, at(11 * 3600)).unwrap();
        assert_eq!(
            material.bundle.x509_authorities.len(),
            2,
            "successor published"
        );
        assert_eq!(
            material.ca.certificate().as_bytes(),
            stored.x509_ca[0].certificate_der().unwrap()
        );
        // At 12h the successor signs, the first retires but stays in the bundle.
        rotate(&mut stored, &td(), &l, at(12 * 3600)).unwrap();
        let material = SigningMaterial::from_stored(&stored, &td(), &l, at(12 * 3600)).unwrap();
        assert_ne!(
            stored
                .x509_ca
                .iter()
                .find(|k| k.phase == StoredPhase::Active)
                .unwrap()
                .id,
            first
        );
        assert_eq!(material.bundle.x509_authorities.len(), 2);
        // One max SVID lifetime later the retired CA is dropped.
        rotate(&mut stored, &td(), &l, at(13 * 3600)).unwrap();
        assert_eq!(stored.x509_ca.len(), 1);
        assert!(stored.x509_ca.iter().all(|k| k.id != first));
    }

    #[test]
    fn next_check_is_the_successor_preparation() {
        let l = lifetimes();
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &l, at(0)).unwrap();
        // JWT keys: 6h - 1h = 5h, before the CA's 11h.
        assert_eq!(stored.next_rotation_check(&l, at(0)), Some(at(5 * 3600)));
    }

    #[test]
    fn state_round_trips_through_json_and_debug_hides_keys() {
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &lifetimes(), at(0)).unwrap();
        let json = serde_json::to_string(&stored).unwrap();
        let back: StoredAuthority = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stored);
        let debug = format!("{stored:?}");
        assert!(!debug.contains(&stored.jwt[0].private_key));
    }

    #[test]
    fn wrong_trust_domain_is_refused() {
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &lifetimes(), at(0)).unwrap();
        let other = TrustDomain::new("other.org").unwrap();
        assert!(matches!(
            SigningMaterial::from_stored(&stored, &other, &lifetimes(), at(0)),
            Err(AuthorityError::TrustDomainMismatch { .. })
        ));
    }

    #[test]
    fn lifetimes_that_cannot_work_are_refused() {
        let mut l = lifetimes();
        assert!(l.check().is_ok());
        l.propagation_delay = Duration::from_secs(13 * 3600);
        assert!(l.check().is_err());
        let mut l = lifetimes();
        l.max_x509_svid_ttl = Duration::from_secs(13 * 3600);
        assert!(l.check().is_err());
    }

    // ---- recovery on an injected clock ------------------------------------------------------

    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    fn bootstrapped(l: &Lifetimes) -> StoredAuthority {
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), l, at(0)).unwrap();
        stored
    }

    fn active_id(stored: &StoredAuthority, kind: KeyKind) -> String {
        stored
            .keys(kind)
            .iter()
            .find(|k| k.phase == StoredPhase::Active)
            .expect("an active key")
            .id
            .clone()
    }

    /// Restarting at `down` seconds after the last rotation: recovery always yields material
    /// whose CA may sign the longest SVID now.
    fn restart_after(down: u64) -> (StoredAuthority, StoredAuthority, Rotated) {
        let l = lifetimes();
        let before = bootstrapped(&l);
        let mut after = before.clone();
        let rotated = rotate(&mut after, &td(), &l, at(down)).unwrap();
        let material = SigningMaterial::from_stored(&after, &td(), &l, at(down))
            .expect("recovered material signs");
        assert!(material.ca.not_after() >= at(down) + l.max_ca_signed_lifetime());
        assert!(material.ca.not_before() <= at(down));
        (before, after, rotated)
    }

    #[test]
    fn restart_after_an_hour_keeps_every_key() {
        let (before, after, rotated) = restart_after(HOUR);
        assert!(rotated.replaced.is_empty());
        assert_eq!(after, before, "nothing was due");
    }

    #[test]
    fn restart_after_two_days_replaces_the_expired_ca_at_once() {
        let l = lifetimes();
        // The defect: the stored CA alone can no longer sign, which used to stop the start.
        let before = bootstrapped(&l);
        assert!(matches!(
            SigningMaterial::from_stored(&before, &td(), &l, at(2 * DAY)),
            Err(AuthorityError::X509(_))
        ));
        let (before, after, rotated) = restart_after(2 * DAY);
        assert_eq!(rotated.replaced, vec![KeyKind::X509Ca]);
        assert!(after.generation > before.generation);
        let old_ca = active_id(&before, KeyKind::X509Ca);
        assert_ne!(active_id(&after, KeyKind::X509Ca), old_ca);
        // The old CA's certificate has ended: nothing chained to it verifies, so it is gone.
        assert_eq!(after.x509_ca.len(), 1);
        // JWT/WIT keys have no expiry of their own: the old ones keep signing while their
        // successors propagate (the validators know them), then hand over on time.
        assert_eq!(
            active_id(&after, KeyKind::Jwt),
            active_id(&before, KeyKind::Jwt)
        );
        assert_eq!(after.jwt.len(), 2, "successor published");
        let mut later = after.clone();
        rotate(&mut later, &td(), &l, at(2 * DAY + HOUR)).unwrap();
        assert_ne!(
            active_id(&later, KeyKind::Jwt),
            active_id(&before, KeyKind::Jwt)
        );
    }

    #[test]
    fn restart_after_thirty_days_replaces_the_ca_and_forgets_the_old_one() {
        let (before, after, rotated) = restart_after(30 * DAY);
        assert_eq!(rotated.replaced, vec![KeyKind::X509Ca]);
        assert!(
            after
                .x509_ca
                .iter()
                .all(|k| before.x509_ca.iter().all(|b| b.id != k.id))
        );
        // Once recovered, the next start has nothing to recover.
        let mut again = after.clone();
        let rotated = rotate(&mut again, &td(), &lifetimes(), at(30 * DAY + 60)).unwrap();
        assert!(rotated.replaced.is_empty());
    }

    #[test]
    fn a_ca_expiring_within_the_longest_svid_lifetime_never_signs_and_stays_published_until_it_ends()
     {
        // The serving SVID is the longest lifetime signed under the CA here: 3h.
        let l = Lifetimes {
            server_svid_ttl: Duration::from_secs(3 * HOUR),
            ..lifetimes()
        };
        assert_eq!(l.max_ca_signed_lifetime(), Duration::from_secs(3 * HOUR));
        let before = bootstrapped(&l);
        let old_ca = active_id(&before, KeyKind::X509Ca);
        // Down until 2.5h before the CA certificate ends.
        let now = at(DAY - 2 * HOUR - HOUR / 2);
        let mut after = before.clone();
        let rotated = rotate(&mut after, &td(), &l, now).unwrap();
        assert_eq!(rotated.replaced, vec![KeyKind::X509Ca]);
        let material = SigningMaterial::from_stored(&after, &td(), &l, now).unwrap();
        assert_ne!(active_id(&after, KeyKind::X509Ca), old_ca);
        assert!(material.ca.not_after() >= now + Duration::from_secs(3 * HOUR));
        // SVIDs it signed before the outage may still be valid: it stays in the bundle...
        assert_eq!(material.bundle.x509_authorities.len(), 2);
        let old = after.x509_ca.iter().find(|k| k.id == old_ca).unwrap();
        assert_eq!(old.phase, StoredPhase::Retired);
        // ...until its certificate ends (leaves are capped at their CA's notAfter).
        let (_, not_after) = certificate_validity(&old.certificate_der().unwrap()).unwrap();
        let mut later = after.clone();
        rotate(&mut later, &td(), &l, not_after - Duration::from_secs(1)).unwrap();
        assert!(later.x509_ca.iter().any(|k| k.id == old_ca));
        rotate(&mut later, &td(), &l, not_after).unwrap();
        assert!(later.x509_ca.iter().all(|k| k.id != old_ca));
        let material = SigningMaterial::from_stored(&later, &td(), &l, not_after).unwrap();
        assert_eq!(material.bundle.x509_authorities.len(), 1);
    }

    #[test]
    fn rotation_is_timed_from_the_certificate_not_only_from_activation() {
        // A CA signs for half its lifetime, unless its certificate leaves less room: with 10h
        // SVIDs a 24h CA must hand over after 14h of certificate, before its 12h active life...
        // and a CA activated late (1h after its certificate began) hands over earlier still.
        let l = Lifetimes {
            max_x509_svid_ttl: Duration::from_secs(10 * HOUR),
            ..lifetimes()
        };
        let mut stored = bootstrapped(&l);
        let first = active_id(&stored, KeyKind::X509Ca);
        let ca = &stored.x509_ca[0];
        let (_, not_after) = certificate_validity(&ca.certificate_der().unwrap()).unwrap();
        let usable_until = not_after - Duration::from_secs(10 * HOUR);
        assert_eq!(usable_until, at(14 * HOUR));
        // Pretend it was activated 5h late: by activation alone it would sign until 17h.
        for key in &mut stored.x509_ca {
            key.activated_at_ms = Some(to_ms(at(5 * HOUR)));
        }
        let check = stored.next_rotation_check(&l, at(0)).unwrap();
        assert!(check <= at(13 * HOUR), "{check:?}");
        rotate(&mut stored, &td(), &l, at(13 * HOUR)).unwrap();
        rotate(&mut stored, &td(), &l, at(14 * HOUR)).unwrap();
        assert_ne!(active_id(&stored, KeyKind::X509Ca), first);
    }

    #[test]
    fn a_retired_ca_is_dropped_only_after_node_and_serving_svid_lifetimes() {
        for (node, server) in [(2, 1), (1, 3)] {
            let l = Lifetimes {
                node_svid_ttl: Duration::from_secs(node * HOUR),
                server_svid_ttl: Duration::from_secs(server * HOUR),
                ..lifetimes()
            };
            let longest = node.max(server);
            let mut stored = bootstrapped(&l);
            let first = active_id(&stored, KeyKind::X509Ca);
            rotate(&mut stored, &td(), &l, at(11 * HOUR)).unwrap();
            rotate(&mut stored, &td(), &l, at(12 * HOUR)).unwrap();
            assert_ne!(active_id(&stored, KeyKind::X509Ca), first);
            // Workload X.509-SVIDs (1h) have expired; node or serving SVIDs may not have.
            rotate(&mut stored, &td(), &l, at((12 + longest) * HOUR - 1)).unwrap();
            assert!(
                stored.x509_ca.iter().any(|k| k.id == first),
                "{node} {server}"
            );
            rotate(&mut stored, &td(), &l, at((12 + longest) * HOUR)).unwrap();
            assert!(
                stored.x509_ca.iter().all(|k| k.id != first),
                "{node} {server}"
            );
        }
    }

    #[test]
    fn a_restored_older_secret_is_used_while_valid_and_keeps_the_held_keys_published() {
        let l = lifetimes();
        let snapshot = bootstrapped(&l);
        // The running operator rotated its JWT key after the snapshot was taken.
        let mut held = snapshot.clone();
        rotate(&mut held, &td(), &l, at(5 * HOUR)).unwrap();
        rotate(&mut held, &td(), &l, at(6 * HOUR)).unwrap();
        let held_jwt = active_id(&held, KeyKind::Jwt);
        assert_ne!(held_jwt, active_id(&snapshot, KeyKind::Jwt));
        assert_eq!(classify(&held, &snapshot), Observed::Older);
        assert_eq!(classify(&snapshot, &held), Observed::Newer);
        assert_eq!(classify(&held, &held.clone()), Observed::Same);

        let now = at(6 * HOUR + 60);
        let mut merged = adopt_restored(&snapshot, &held, now);
        assert!(merged.generation > held.generation);
        // The restored keys sign again; the held JWT key, which signed tokens that may still
        // be valid, stays published as retired.
        assert_eq!(
            active_id(&merged, KeyKind::Jwt),
            active_id(&snapshot, KeyKind::Jwt)
        );
        assert_eq!(
            active_id(&merged, KeyKind::X509Ca),
            active_id(&snapshot, KeyKind::X509Ca)
        );
        let kept = merged.jwt.iter().find(|k| k.id == held_jwt).unwrap();
        assert_eq!(kept.phase, StoredPhase::Retired);
        check_stored(&merged, &td()).unwrap();
        let material = SigningMaterial::from_stored(&merged, &td(), &l, now).unwrap();
        assert!(material.bundle.jwt_authorities.contains_key(&held_jwt));
        // Normal rotation continues from there; the held key goes once its tokens expired.
        rotate(&mut merged, &td(), &l, now).unwrap();
        rotate(&mut merged, &td(), &l, now + l.max_jwt_svid_ttl).unwrap();
        assert!(merged.jwt.iter().all(|k| k.id != held_jwt));
    }

    #[test]
    fn a_restored_secret_whose_ca_expired_is_recovered() {
        let l = lifetimes();
        let snapshot = bootstrapped(&l);
        let mut held = snapshot.clone();
        let mut t = 0;
        while t < 3 * DAY {
            t += HOUR;
            rotate(&mut held, &td(), &l, at(t)).unwrap();
        }
        let mut merged = adopt_restored(&snapshot, &held, at(t));
        let rotated = rotate(&mut merged, &td(), &l, at(t)).unwrap();
        assert_eq!(rotated.replaced, vec![KeyKind::X509Ca]);
        let material = SigningMaterial::from_stored(&merged, &td(), &l, at(t)).unwrap();
        // The held CA, which signed until now, stays published; the snapshot's expired one not.
        let held_ca = held
            .x509_ca
            .iter()
            .find(|k| k.phase == StoredPhase::Active)
            .unwrap();
        assert!(merged.x509_ca.iter().any(|k| k.id == held_ca.id));
        assert!(
            merged
                .x509_ca
                .iter()
                .all(|k| k.id != active_id(&snapshot, KeyKind::X509Ca))
        );
        assert!(material.bundle.x509_authorities.len() >= 2);
    }

    /// The state as JSON, edited by `edit`, read back through serde and [`check_stored`].
    fn read_edited(edit: impl FnOnce(&mut serde_json::Value)) -> AuthorityError {
        let stored = bootstrapped(&lifetimes());
        let mut json = serde_json::to_value(&stored).unwrap();
        edit(&mut json);
        match serde_json::from_value::<StoredAuthority>(json) {
            Err(error) => AuthorityError::Json(error),
            Ok(parsed) => check_stored(&parsed, &td()).expect_err("damaged state is refused"),
        }
    }

    #[test]
    fn a_damaged_state_names_what_is_wrong() {
        let other = bootstrapped(&lifetimes());
        let other_cert = other.x509_ca[0].certificate.clone();
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &[&str])> = vec![
            (
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("x509_ca");
                }),
                &["authority.json", "missing field `x509_ca`"],
            ),
            (
                Box::new(|j| j["jwt"][0]["private_key"] = "not base64!".into()),
                &[
                    "authority.json",
                    "jwt key",
                    "private_key: not standard base64",
                ],
            ),
            (
                Box::new(|j| j["wit"][0]["private_key"] = "AAAA".into()),
                &["authority.json", "wit key", "private_key:"],
            ),
            (
                Box::new(|j| {
                    j["x509_ca"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("certificate");
                }),
                &["x509_ca key", "certificate: missing"],
            ),
            (
                Box::new(|j| j["x509_ca"][0]["certificate"] = "AAAA".into()),
                &["x509_ca key", "certificate:"],
            ),
            (
                Box::new(move |j| j["x509_ca"][0]["certificate"] = other_cert.into()),
                &["x509_ca key", "does not match"],
            ),
            (
                Box::new(|j| j["x509_ca"][0]["phase"] = "sideways".into()),
                &["authority.json", "sideways"],
            ),
            (
                Box::new(|j| j["format"] = 99.into()),
                &["authority.json", "format"],
            ),
            (
                Box::new(|j| j["trust_domain"] = "other.org".into()),
                &["other.org"],
            ),
        ];
        for (edit, mentions) in cases {
            let message = read_edited(edit).to_string();
            for mention in mentions {
                assert!(message.contains(mention), "{message:?} lacks {mention:?}");
            }
        }
        // The key's id is named too.
        let stored = bootstrapped(&lifetimes());
        let mut broken = stored.clone();
        broken.jwt[0].private_key = "%%".into();
        let message = check_stored(&broken, &td()).unwrap_err().to_string();
        assert!(message.contains(&stored.jwt[0].id), "{message}");
        // Two active keys in one set.
        let mut two = stored.clone();
        let mut second = two.wit[0].clone();
        second.id = "second".into();
        two.wit.push(second);
        let message = check_stored(&two, &td()).unwrap_err().to_string();
        assert!(message.contains("more than one active key"), "{message}");
    }
}
