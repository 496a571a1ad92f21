//! The authority's key rotation model, as plain data and pure functions.
//!
//! A signing key (X.509 CA key, JWT or WIT key) moves through four phases:
//!
//! ```text
//! Prepared --(persisted)--> Published --(propagation delay)--> Active --(successor active)--> Retired --(longest SVID expired)--> dropped
//! ```
//!
//! * Prepared: generated and stored, not yet in the trust bundle.
//! * Published: in the bundle, so validators learn it, but signs nothing yet.
//! * Active: the one key that signs. It becomes active only after it has been published for the
//!   propagation delay, so no validator sees an SVID from a key it has not heard of.
//! * Retired: signs nothing, stays in the bundle until every SVID it signed has expired.
//!
//! The caller owns I/O: it generates key material when [`plan`] asks for it, persists the set, and
//! applies the returned transitions with [`apply`]. Time is always passed in.
//!
//! A key may carry its own validity (a CA key: its certificate's notBefore/notAfter). A key is
//! *usable* only while everything it signs ends before that validity does: from `valid_from` until
//! `valid_until - max_signed_lifetime`. An active key that is not usable never signs again: the
//! best usable successor, or else a new key, is activated at once ([`Transition::ActivateEarly`],
//! skipping the propagation delay, because signing with a key validators have not seen yet is
//! better than not signing at all, or than signing with one they will soon reject). This is what
//! lets the authority start after any outage: the clock may have run past every stored key.

use std::time::{Duration, SystemTime};

/// Timing rules for one kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a key stays active before its successor takes over.
    pub active_lifetime: Duration,
    /// How long a key must be published before it may sign (bundle propagation to validators).
    pub propagation_delay: Duration,
    /// The longest lifetime of anything a key signs; a retired key stays published this long.
    pub max_signed_lifetime: Duration,
}

impl RotationPolicy {
    /// When a key that became active at `activated_at` should be replaced.
    pub fn rotation_due(&self, activated_at: SystemTime) -> SystemTime {
        activated_at + self.active_lifetime
    }

    /// When the successor of that key must be prepared, so it has propagated by rotation time.
    pub fn prepare_due(&self, activated_at: SystemTime) -> SystemTime {
        self.rotation_due(activated_at)
            .checked_sub(self.propagation_delay)
            .unwrap_or(activated_at)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Prepared,
    Published,
    Active,
    Retired,
}

/// One key's life record. The key material itself lives with the caller, found by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub phase: Phase,
    pub prepared_at: SystemTime,
    pub published_at: Option<SystemTime>,
    pub activated_at: Option<SystemTime>,
    pub retired_at: Option<SystemTime>,
    /// The key's own validity, if it has one (a CA certificate's notBefore and notAfter).
    pub validity: Option<Validity>,
}

/// A key's own validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl KeyRecord {
    pub fn prepared(id: impl Into<String>, now: SystemTime) -> Self {
        Self {
            id: id.into(),
            phase: Phase::Prepared,
            prepared_at: now,
            published_at: None,
            activated_at: None,
            retired_at: None,
            validity: None,
        }
    }

    pub fn with_validity(mut self, validity: Option<Validity>) -> Self {
        self.validity = validity;
        self
    }

    /// Whether this key may sign at `now`: inside its validity, with room for the longest
    /// lifetime it signs before that validity ends.
    pub fn usable_at(&self, policy: &RotationPolicy, now: SystemTime) -> bool {
        self.validity.is_none_or(|v| {
            v.not_before <= now
                && now
                    .checked_add(policy.max_signed_lifetime)
                    .is_some_and(|end| end <= v.not_after)
        })
    }

    /// The last instant this key may sign, from its own validity (`None`: no such limit).
    pub fn usable_until(&self, policy: &RotationPolicy) -> Option<SystemTime> {
        self.validity.map(|v| {
            v.not_after
                .checked_sub(policy.max_signed_lifetime)
                .unwrap_or(v.not_before)
        })
    }

    /// Whether the key's own validity has ended: nothing chained to it can verify any more.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.validity.is_some_and(|v| now >= v.not_after)
    }

    /// When a retired key may leave the bundle: once the longest lifetime it signed has passed
    /// since it stopped signing, or once its own validity has ended, whichever is first.
    fn drop_due(&self, policy: &RotationPolicy) -> Option<SystemTime> {
        let after_signed = self.retired_at.map(|r| r + policy.max_signed_lifetime);
        match (after_signed, self.validity.map(|v| v.not_after)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When this active key must hand over: after its active lifetime, or when it stops being
    /// usable, whichever is first.
    fn rotation_due(&self, policy: &RotationPolicy) -> SystemTime {
        let by_activation = policy.rotation_due(self.activated_at.unwrap_or(self.prepared_at));
        self.usable_until(policy)
            .map_or(by_activation, |until| by_activation.min(until))
    }

    /// Whether validators must know this key (it is in the trust bundle).
    pub fn is_published(&self) -> bool {
        self.phase != Phase::Prepared
    }
}

/// What the caller must do next, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Generate a key, store it, then add `KeyRecord::prepared(id, now)` to the set.
    PrepareNewKey,
    Publish(String),
    Activate(String),
    /// Activate without waiting for the propagation delay: nothing usable signs otherwise.
    ActivateEarly(String),
    Retire(String),
    /// Every SVID this key signed has expired (or it never signed and never can): remove it from
    /// the bundle and delete it.
    Drop(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    #[error("no key with id {0:?}")]
    UnknownKey(String),
    #[error("key {id:?} cannot go from {from:?} to {to:?}")]
    InvalidTransition { id: String, from: Phase, to: Phase },
    #[error("key {id:?} has been published for {published:?}; it may sign only after {required:?}")]
    NotPropagated {
        id: String,
        published: Duration,
        required: Duration,
    },
    #[error("key {0:?} cannot be activated early while another key is active")]
    StillActive(String),
}

impl RotationError {
    pub fn label(&self) -> &'static str {
        match self {
            RotationError::UnknownKey(_) => "unknown_key",
            RotationError::InvalidTransition { .. } => "invalid_transition",
            RotationError::NotPropagated { .. } => "not_propagated",
            RotationError::StillActive(_) => "still_active",
        }
    }
}

/// The keys of one kind, with at most one active.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySet {
    pub keys: Vec<KeyRecord>,
}

impl KeySet {
    pub fn active(&self) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.phase == Phase::Active)
    }

    /// The keys that belong in the trust bundle: published, active and retired ones.
    pub fn published(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.iter().filter(|k| k.is_published())
    }

    fn get(&self, id: &str) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Whether any key has ever signed: before that there is nothing to propagate to.
    fn ever_active(&self) -> bool {
        self.keys.iter().any(|k| k.activated_at.is_some())
    }
}

/// Decides what should happen now. Applying every returned transition (in order) and calling
/// `plan` again at the same instant yields nothing more to do, except `PrepareNewKey`, which needs
/// the caller to add the new key first.
pub fn plan(set: &KeySet, policy: &RotationPolicy, now: SystemTime) -> Vec<Transition> {
    let mut out = Vec::new();
    for key in &set.keys {
        match key.phase {
            Phase::Retired if key.drop_due(policy).is_some_and(|due| now >= due) => {
                out.push(Transition::Drop(key.id.clone()));
            }
            // A key that never signed and never can: nothing is chained to it.
            Phase::Prepared | Phase::Published
                if key.activated_at.is_none() && !usable_or_early(key, policy, now) =>
            {
                out.push(Transition::Drop(key.id.clone()));
            }
            Phase::Prepared => out.push(Transition::Publish(key.id.clone())),
            _ => {}
        }
    }
    // The successor: the newest key that is prepared or published, not yet active, and usable.
    let successor = set
        .keys
        .iter()
        .filter(|k| matches!(k.phase, Phase::Prepared | Phase::Published))
        .filter(|k| k.usable_at(policy, now))
        .max_by_key(|k| k.prepared_at);
    let propagated = |key: &KeyRecord| {
        key.published_at
            .is_some_and(|p| now >= p + policy.propagation_delay)
    };
    match set.active() {
        // Nothing signs: activate at once. At first start no validator exists yet, so this is
        // the ordinary bootstrap; later it is a recovery.
        None => match successor {
            None => out.push(Transition::PrepareNewKey),
            Some(next) if !set.ever_active() || propagated(next) => {
                out.push(Transition::Activate(next.id.clone()))
            }
            Some(next) => out.push(Transition::ActivateEarly(next.id.clone())),
        },
        // The active key may not sign any more (expired, or too close to its end for the
        // longest lifetime it signs): it retires now and the successor takes over at once.
        Some(active) if !active.usable_at(policy, now) => {
            out.push(Transition::Retire(active.id.clone()));
            match successor {
                None => out.push(Transition::PrepareNewKey),
                Some(next) if propagated(next) => out.push(Transition::Activate(next.id.clone())),
                Some(next) => out.push(Transition::ActivateEarly(next.id.clone())),
            }
        }
        Some(active) => {
            let rotation_due = active.rotation_due(policy);
            let prepare_due = rotation_due
                .checked_sub(policy.propagation_delay)
                .unwrap_or(rotation_due);
            match successor {
                None if now >= prepare_due => out.push(Transition::PrepareNewKey),
                Some(next) if propagated(next) && now >= rotation_due => {
                    out.push(Transition::Activate(next.id.clone()));
                    out.push(Transition::Retire(active.id.clone()));
                }
                _ => {}
            }
        }
    }
    out
}

/// A fresh key (prepared at `now`) is kept even if the caller gave it no room to be usable yet:
/// the caller's settings are checked elsewhere, and dropping it would loop forever.
fn usable_or_early(key: &KeyRecord, policy: &RotationPolicy, now: SystemTime) -> bool {
    key.usable_at(policy, now) || key.validity.is_some_and(|v| now < v.not_before)
}

/// The next instant after `now` at which [`plan`] may have something to do, or `None` when only
/// a new transition (a key added, a phase changed) can change that. Instants not after `now` are
/// left out: the caller has just applied what was due, so they would only make it spin (e.g. an
/// overdue rotation that waits for its successor to propagate).
pub fn next_event(set: &KeySet, policy: &RotationPolicy, now: SystemTime) -> Option<SystemTime> {
    let has_successor = set
        .keys
        .iter()
        .any(|k| matches!(k.phase, Phase::Prepared | Phase::Published));
    set.keys
        .iter()
        .flat_map(|key| {
            let times: [Option<SystemTime>; 3] = match key.phase {
                Phase::Prepared => [Some(key.prepared_at), None, None],
                Phase::Published => [
                    key.published_at.map(|p| p + policy.propagation_delay),
                    key.usable_until(policy),
                    key.validity.map(|v| v.not_before),
                ],
                Phase::Active => {
                    let due = key.rotation_due(policy);
                    let prepare = due.checked_sub(policy.propagation_delay).unwrap_or(due);
                    [
                        Some(if has_successor { due } else { prepare }),
                        key.usable_until(policy),
                        None,
                    ]
                }
                Phase::Retired => [key.drop_due(policy), None, None],
            };
            times.into_iter().flatten()
        })
        .filter(|&t| t > now)
        .min()
}

/// Applies one transition, checking that it is legal.
pub fn apply(
    set: &mut KeySet,
    transition: &Transition,
    policy: &RotationPolicy,
    now: SystemTime,
) -> Result<(), RotationError> {
    let mut early = false;
    let (id, to) = match transition {
        Transition::PrepareNewKey => return Ok(()),
        Transition::Publish(id) => (id, Phase::Published),
        Transition::Activate(id) => (id, Phase::Active),
        Transition::ActivateEarly(id) => {
            if set.active().is_some() {
                return Err(RotationError::StillActive(id.clone()));
            }
            early = true;
            (id, Phase::Active)
        }
        Transition::Retire(id) => (id, Phase::Retired),
        Transition::Drop(id) => {
            let before = set.keys.len();
            set.keys
                .retain(|k| !(k.id == *id && k.phase != Phase::Active));
            return if set.keys.len() < before {
                Ok(())
            } else {
                Err(RotationError::UnknownKey(id.clone()))
            };
        }
    };
    let ever_active = set.ever_active();
    let key = set
        .get(id)
        .ok_or_else(|| RotationError::UnknownKey(id.clone()))?;
    let legal = matches!(
        (key.phase, to),
        (Phase::Prepared, Phase::Published)
            | (Phase::Published, Phase::Active)
            | (Phase::Active, Phase::Retired)
    );
    if !legal {
        return Err(RotationError::InvalidTransition {
            id: id.clone(),
            from: key.phase,
            to,
        });
    }
    if to == Phase::Active && ever_active && !early {
        let published_for = key
            .published_at
            .and_then(|p| now.duration_since(p).ok())
            .unwrap_or_default();
        if published_for < policy.propagation_delay {
            return Err(RotationError::NotPropagated {
                id: id.clone(),
                published: published_for,
                required: policy.propagation_delay,
            });
        }
    }
    let Some(key) = set.keys.iter_mut().find(|k| k.id == *id) else {
        return Err(RotationError::UnknownKey(id.clone()));
    };
    key.phase = to;
    match to {
        Phase::Published => key.published_at = Some(now),
        Phase::Active => key.activated_at = Some(now),
        Phase::Retired => key.retired_at = Some(now),
        Phase::Prepared => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> RotationPolicy {
        RotationPolicy {
            active_lifetime: 12 * HOUR,
            propagation_delay: 30 * MIN,
            max_signed_lifetime: HOUR,
        }
    }

    /// Drives the model the way the authority does: plan, create keys on request, apply.
    struct Sim {
        set: KeySet,
        now: SystemTime,
        next_id: u32,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                set: KeySet::default(),
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                next_id: 0,
            }
        }
        fn tick(&mut self) -> Vec<Transition> {
            let mut done = Vec::new();
            loop {
                let steps = plan(&self.set, &policy(), self.now);
                if steps.is_empty() {
                    return done;
                }
                for step in steps {
                    if step == Transition::PrepareNewKey {
                        self.next_id += 1;
                        self.set
                            .keys
                            .push(KeyRecord::prepared(format!("k{}", self.next_id), self.now));
                    } else {
                        apply(&mut self.set, &step, &policy(), self.now)
                            .expect("planned step applies");
                    }
                    done.push(step);
                }
            }
        }
        fn advance(&mut self, d: Duration) {
            self.now += d;
        }
        fn phases(&self) -> Vec<(String, Phase)> {
            self.set
                .keys
                .iter()
                .map(|k| (k.id.clone(), k.phase))
                .collect()
        }
    }

    #[test]
    fn first_key_is_created_published_and_active_at_once() {
        let mut sim = Sim::new();
        let steps = sim.tick();
        assert_eq!(
            steps,
            vec![
                Transition::PrepareNewKey,
                Transition::Publish("k1".into()),
                Transition::Activate("k1".into())
            ]
        );
        assert_eq!(sim.set.active().map(|k| k.id.as_str()), Some("k1"));
        assert!(sim.tick().is_empty(), "stable once bootstrapped");
    }

    #[test]
    fn full_rotation_respects_propagation_and_retirement() {
        let mut sim = Sim::new();
        sim.tick();
        // Nothing happens before the successor must be prepared.
        sim.advance(11 * HOUR + 29 * MIN);
        assert!(sim.tick().is_empty());
        // 30 minutes before rotation the successor is prepared and published, but not active.
        sim.advance(MIN);
        assert_eq!(
            sim.tick(),
            vec![Transition::PrepareNewKey, Transition::Publish("k2".into())]
        );
        assert_eq!(sim.set.active().map(|k| k.id.as_str()), Some("k1"));
        assert_eq!(
            sim.set.published().count(),
            2,
            "both keys are in the bundle before k2 signs"
        );
        // One second short of the propagation delay: still k1.
        sim.advance(30 * MIN - Duration::from_secs(1));
        assert!(sim.tick().is_empty());
        sim.advance(Duration::from_secs(1));
        assert_eq!(
            sim.tick(),
            vec![
                Transition::Activate("k2".into()),
                Transition::Retire("k1".into())
            ]
        );
        assert_eq!(
            sim.phases(),
            vec![("k1".into(), Phase::Retired), ("k2".into(), Phase::Active)]
        );
        // The retired key stays published until the longest SVID it signed has expired.
        sim.advance(HOUR - Duration::from_secs(1));
        assert!(sim.tick().is_empty());
        assert!(sim.set.published().any(|k| k.id == "k1"));
        sim.advance(Duration::from_secs(1));
        assert_eq!(sim.tick(), vec![Transition::Drop("k1".into())]);
        assert_eq!(sim.phases(), vec![("k2".into(), Phase::Active)]);
    }

    #[test]
    fn there_is_always_exactly_one_active_key_and_it_was_published_long_enough() {
        let mut sim = Sim::new();
        sim.tick();
        for _ in 0..(24 * 40) {
            sim.advance(7 * MIN + Duration::from_secs(13));
            sim.tick();
            let active: Vec<_> = sim
                .set
                .keys
                .iter()
                .filter(|k| k.phase == Phase::Active)
                .collect();
            assert_eq!(active.len(), 1);
            let a = active[0];
            if a.id != "k1" {
                let published = a.published_at.expect("published");
                assert!(a.activated_at.expect("active") >= published + policy().propagation_delay);
            }
            // Never more than active + successor + one retired key.
            assert!(sim.set.keys.len() <= 3, "{:?}", sim.phases());
        }
        assert!(sim.next_id > 5, "rotated repeatedly");
    }

    #[test]
    fn early_activation_and_illegal_transitions_are_refused() {
        let mut sim = Sim::new();
        sim.tick();
        let p = policy();
        sim.set.keys.push(KeyRecord::prepared("k2", sim.now));
        apply(&mut sim.set, &Transition::Publish("k2".into()), &p, sim.now).expect("publish");
        let err = apply(
            &mut sim.set,
            &Transition::Activate("k2".into()),
            &p,
            sim.now + MIN,
        )
        .unwrap_err();
        assert_eq!(err.label(), "not_propagated");
        let err = apply(&mut sim.set, &Transition::Retire("k2".into()), &p, sim.now).unwrap_err();
        assert_eq!(
            err,
            RotationError::InvalidTransition {
                id: "k2".into(),
                from: Phase::Published,
                to: Phase::Retired
            }
        );
        assert_eq!(
            apply(&mut sim.set, &Transition::Drop("k1".into()), &p, sim.now)
                .unwrap_err()
                .label(),
            "unknown_key"
        );
        assert_eq!(
            apply(
                &mut sim.set,
                &Transition::Publish("nope".into()),
                &p,
                sim.now
            )
            .unwrap_err()
            .label(),
            "unknown_key"
        );
    }

    #[test]
    fn losing_the_active_key_activates_the_next_at_once() {
        // If the active key disappears (e.g. deleted by hand), nothing signs: waiting for the
        // propagation delay would leave the trust domain without an authority meanwhile.
        let mut sim = Sim::new();
        sim.tick();
        sim.set
            .keys
            .iter_mut()
            .for_each(|k| k.phase = Phase::Retired);
        sim.set.keys[0].retired_at = Some(sim.now);
        let steps = sim.tick();
        assert_eq!(
            steps,
            vec![
                Transition::PrepareNewKey,
                Transition::Publish("k2".into()),
                Transition::ActivateEarly("k2".into())
            ]
        );
        assert_eq!(sim.set.active().map(|k| k.id.as_str()), Some("k2"));
    }

    fn validity(from: SystemTime, lifetime: Duration) -> Option<Validity> {
        Some(Validity {
            not_before: from,
            not_after: from + lifetime,
        })
    }

    /// A set with one active key whose own validity is `lifetime` from `start`.
    fn active_with_validity(start: SystemTime, lifetime: Duration) -> KeySet {
        let mut key = KeyRecord::prepared("old", start).with_validity(validity(start, lifetime));
        key.phase = Phase::Active;
        key.published_at = Some(start);
        key.activated_at = Some(start);
        KeySet { keys: vec![key] }
    }

    #[test]
    fn an_expired_active_key_is_replaced_at_once_and_dropped() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut set = active_with_validity(start, 24 * HOUR);
        let now = start + 48 * HOUR;
        assert_eq!(
            plan(&set, &policy(), now),
            vec![Transition::Retire("old".into()), Transition::PrepareNewKey]
        );
        apply(&mut set, &Transition::Retire("old".into()), &policy(), now).unwrap();
        set.keys
            .push(KeyRecord::prepared("new", now).with_validity(validity(now, 24 * HOUR)));
        // Its certificate has ended: nothing chained to it verifies, so it leaves the bundle.
        let steps = plan(&set, &policy(), now);
        assert_eq!(
            steps,
            vec![
                Transition::Drop("old".into()),
                Transition::Publish("new".into()),
                Transition::ActivateEarly("new".into())
            ]
        );
        for step in &steps {
            apply(&mut set, step, &policy(), now).unwrap();
        }
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.active().map(|k| k.id.as_str()), Some("new"));
        assert!(plan(&set, &policy(), now).is_empty());
    }

    #[test]
    fn a_key_too_close_to_its_end_never_signs_and_stays_published_until_it_ends() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let p = RotationPolicy {
            active_lifetime: 100 * HOUR,
            ..policy()
        };
        let mut set = active_with_validity(start, 24 * HOUR);
        // Usable until 23h (24h minus the 1h longest signed lifetime).
        assert!(set.keys[0].usable_at(&p, start + 23 * HOUR));
        assert!(!set.keys[0].usable_at(&p, start + 23 * HOUR + MIN));
        assert_eq!(set.keys[0].usable_until(&p), Some(start + 23 * HOUR));
        // The successor is prepared one propagation delay before that, and takes over on time.
        assert_eq!(
            next_event(&set, &p, start),
            Some(start + 22 * HOUR + 30 * MIN)
        );
        let now = start + 23 * HOUR + MIN;
        let steps = plan(&set, &p, now);
        assert_eq!(
            steps,
            vec![Transition::Retire("old".into()), Transition::PrepareNewKey]
        );
        apply(&mut set, &steps[0], &p, now).unwrap();
        // Retired at 23h01 with 59 min of its certificate left: kept until the certificate ends,
        // not for the full hour after retirement.
        assert_eq!(set.keys[0].drop_due(&p), Some(start + 24 * HOUR));
        assert!(
            plan(&set, &p, start + 24 * HOUR - Duration::from_secs(1))
                .iter()
                .all(|t| !matches!(t, Transition::Drop(_)))
        );
        assert!(plan(&set, &p, start + 24 * HOUR).contains(&Transition::Drop("old".into())));
    }

    #[test]
    fn an_unusable_successor_is_dropped_and_a_usable_one_preferred() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut set = active_with_validity(start, 24 * HOUR);
        let mut stale =
            KeyRecord::prepared("stale", start).with_validity(validity(start, 24 * HOUR));
        stale.phase = Phase::Published;
        stale.published_at = Some(start);
        set.keys.push(stale);
        let now = start + 30 * HOUR;
        assert_eq!(
            plan(&set, &policy(), now),
            vec![
                Transition::Drop("stale".into()),
                Transition::Retire("old".into()),
                Transition::PrepareNewKey
            ]
        );
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            apply(
                &mut set,
                &Transition::ActivateEarly("stale".into()),
                &policy(),
                early
            )
            .unwrap_err()
            .label(),
            "still_active"
        );
    }

    #[test]
    fn next_event_waits_for_the_successor_not_the_past_prepare_time() {
        let mut sim = Sim::new();
        sim.tick();
        let start = sim.now;
        assert_eq!(
            next_event(&sim.set, &policy(), sim.now),
            Some(start + 11 * HOUR + 30 * MIN)
        );
        sim.advance(11 * HOUR + 30 * MIN);
        sim.tick();
        // Successor published: the next thing is its activation, not the (past) prepare time.
        assert_eq!(
            next_event(&sim.set, &policy(), sim.now),
            Some(start + 12 * HOUR)
        );
        sim.advance(30 * MIN);
        sim.tick();
        assert_eq!(
            next_event(&sim.set, &policy(), sim.now),
            Some(start + 13 * HOUR)
        );
    }

    #[test]
    fn next_event_of_an_overdue_rotation_is_the_successor_propagating() {
        // Back after a long outage: the rotation is overdue, the successor was just published.
        let mut sim = Sim::new();
        sim.tick();
        sim.advance(40 * HOUR);
        assert_eq!(
            sim.tick(),
            vec![Transition::PrepareNewKey, Transition::Publish("k2".into())]
        );
        assert_eq!(
            next_event(&sim.set, &policy(), sim.now),
            Some(sim.now + policy().propagation_delay),
            "not the past rotation time, which would make the caller spin"
        );
    }
}
