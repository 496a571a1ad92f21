//! The authority's persisted state and its rotation, as plain data and pure functions.
//!
//! The whole state is one JSON document in the `wimsey-authority` Secret: three key sets (X.509
//! CA keys, JWT-SVID keys, WIT-SVID keys), each key with its `core::rotation` record, its PKCS#8
//! private key and, for CA keys, its self-signed CA certificate. [`rotate`] moves the sets forward
//! per `core::rotation::plan`; [`SigningMaterial::from_stored`] turns a state into what signs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use wimsey_core::TrustDomain;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::{PublicJwk, key_id};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::rotation::{self, KeyRecord, KeySet, Phase, RotationPolicy, Transition};
use wimsey_core::x509::{Authority, CaParams, CertDer};

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
}

impl std::fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAuthority")
            .field("generation", &self.generation)
            .field("trust_domain", &self.trust_domain)
            .field("x509_ca", &self.x509_ca)
            .field("jwt", &self.jwt)
            .field("wit", &self.wit)
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
}

impl Lifetimes {
    /// A CA key signs for half its certificate's lifetime (as SPIRE does), so every leaf it
    /// signs ends well before the CA certificate does.
    pub fn policy(&self, kind: KeyKind) -> RotationPolicy {
        match kind {
            KeyKind::X509Ca => RotationPolicy {
                active_lifetime: self.ca_ttl / 2,
                propagation_delay: self.propagation_delay,
                max_signed_lifetime: self.max_x509_svid_ttl,
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
        if self.max_x509_svid_ttl > self.ca_ttl / 2 {
            return bad("--max-x509-svid-ttl must be at most half of --ca-ttl");
        }
        Ok(())
    }

    /// The bundle's `spiffe_refresh_hint`: a quarter of the propagation delay, so consumers
    /// poll several times before a new key may sign (Federation §4 asks for 3-5x ahead).
    pub fn refresh_hint(&self) -> Duration {
        (self.propagation_delay / 4).max(Duration::from_secs(1))
    }
}

fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn decode(field: &'static str, text: &str) -> Result<Vec<u8>, AuthorityError> {
    STANDARD
        .decode(text)
        .map_err(|_| AuthorityError::Corrupt(field))
}

impl StoredKey {
    fn record(&self) -> KeyRecord {
        KeyRecord {
            id: self.id.clone(),
            phase: self.phase.into(),
            prepared_at: from_ms(self.prepared_at_ms),
            published_at: self.published_at_ms.map(from_ms),
            activated_at: self.activated_at_ms.map(from_ms),
            retired_at: self.retired_at_ms.map(from_ms),
        }
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
    pub fn next_rotation_check(&self, lifetimes: &Lifetimes) -> Option<SystemTime> {
        KeyKind::ALL
            .iter()
            .flat_map(|&kind| {
                let policy = lifetimes.policy(kind);
                self.keys(kind).iter().filter_map(move |key| {
                    let record = key.record();
                    match record.phase {
                        Phase::Prepared => Some(record.prepared_at),
                        Phase::Published => {
                            record.published_at.map(|p| p + policy.propagation_delay)
                        }
                        Phase::Active => record.activated_at.map(|a| policy.prepare_due(a)),
                        Phase::Retired => record.retired_at.map(|r| r + policy.max_signed_lifetime),
                    }
                })
            })
            .min()
    }
}

/// Moves every key set forward to `now`: generates keys (and CA certificates) when the plan asks
/// for them, publishes, activates, retires and drops. Returns whether anything changed; the
/// generation is bumped when it did.
pub fn rotate(
    stored: &mut StoredAuthority,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> Result<bool, AuthorityError> {
    let mut changed = false;
    for kind in KeyKind::ALL {
        changed |= rotate_kind(stored, kind, trust_domain, lifetimes, now)?;
    }
    if changed {
        stored.generation += 1;
    }
    Ok(changed)
}

fn rotate_kind(
    stored: &mut StoredAuthority,
    kind: KeyKind,
    trust_domain: &TrustDomain,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> Result<bool, AuthorityError> {
    let policy = lifetimes.policy(kind);
    let mut set = KeySet {
        keys: stored.keys(kind).iter().map(StoredKey::record).collect(),
    };
    let mut new_keys = Vec::new();
    let mut changed = false;
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
                set.keys.push(KeyRecord::prepared(key.id.clone(), now));
                new_keys.push(key);
            } else {
                rotation::apply(&mut set, transition, &policy, now)?;
            }
        }
    }
    if !changed {
        return Ok(false);
    }
    let keys = stored.keys_mut(kind);
    keys.extend(new_keys);
    keys.retain(|k| set.keys.iter().any(|r| r.id == k.id));
    for key in keys.iter_mut() {
        if let Some(record) = set.keys.iter().find(|r| r.id == key.id) {
            key.update_from(record);
        }
    }
    Ok(true)
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
        if stored.format != STATE_FORMAT {
            return Err(AuthorityError::Corrupt("format"));
        }
        if stored.trust_domain != trust_domain.name() {
            return Err(AuthorityError::TrustDomainMismatch {
                stored: stored.trust_domain.clone(),
                configured: trust_domain.name().to_owned(),
            });
        }
        let active = |kind: KeyKind| {
            stored
                .keys(kind)
                .iter()
                .find(|k| k.phase == StoredPhase::Active)
                .ok_or(AuthorityError::NoActiveKey(kind.as_str()))
        };
        let ca_key = active(KeyKind::X509Ca)?;
        let ca = Authority::from_chain(
            ca_key.signing_key()?,
            vec![CertDer::new(ca_key.certificate_der()?)],
            trust_domain,
            now,
        )?;
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
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    #[test]
    fn first_rotation_creates_one_active_key_of_each_kind() {
        let mut stored = StoredAuthority::empty(&td());
        assert!(rotate(&mut stored, &td(), &lifetimes(), at(0)).unwrap());
        assert_eq!(stored.generation, 1);
        for kind in KeyKind::ALL {
            let keys = stored.keys(kind);
            assert_eq!(keys.len(), 1, "{kind:?}");
            assert_eq!(keys[0].phase, StoredPhase::Active);
        }
        // Nothing more to do at the same instant.
        assert!(!rotate(&mut stored, &td(), &lifetimes(), at(0)).unwrap());
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
        assert!(rotate(&mut stored, &td(), &l, at(11 * 3600)).unwrap());
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
        assert_eq!(stored.next_rotation_check(&l), Some(at(5 * 3600)));
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
}
