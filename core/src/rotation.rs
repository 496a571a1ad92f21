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
        }
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
    Retire(String),
    /// Every SVID this key signed has expired: remove it from the bundle and delete it.
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
}

impl RotationError {
    pub fn label(&self) -> &'static str {
        match self {
            RotationError::UnknownKey(_) => "unknown_key",
            RotationError::InvalidTransition { .. } => "invalid_transition",
            RotationError::NotPropagated { .. } => "not_propagated",
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
        if key.phase == Phase::Prepared {
            out.push(Transition::Publish(key.id.clone()));
        }
        if key.phase == Phase::Retired
            && key
                .retired_at
                .is_some_and(|r| now >= r + policy.max_signed_lifetime)
        {
            out.push(Transition::Drop(key.id.clone()));
        }
    }
    // The successor: the newest key that is prepared or published and not yet active.
    let successor = set
        .keys
        .iter()
        .filter(|k| matches!(k.phase, Phase::Prepared | Phase::Published))
        .max_by_key(|k| k.prepared_at);
    match set.active() {
        None => match successor {
            None => out.push(Transition::PrepareNewKey),
            Some(next) => {
                // At first start no validator exists yet, so the first key may sign at once.
                let propagated = next
                    .published_at
                    .is_some_and(|p| now >= p + policy.propagation_delay);
                if !set.ever_active() || propagated {
                    out.push(Transition::Activate(next.id.clone()));
                }
            }
        },
        Some(active) => {
            let activated_at = active.activated_at.unwrap_or(active.prepared_at);
            match successor {
                None if now >= policy.prepare_due(activated_at) => {
                    out.push(Transition::PrepareNewKey)
                }
                None => {}
                Some(next) => {
                    let propagated = next
                        .published_at
                        .is_some_and(|p| now >= p + policy.propagation_delay);
                    if propagated && now >= policy.rotation_due(activated_at) {
                        out.push(Transition::Activate(next.id.clone()));
                        out.push(Transition::Retire(active.id.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Applies one transition, checking that it is legal.
pub fn apply(
    set: &mut KeySet,
    transition: &Transition,
    policy: &RotationPolicy,
    now: SystemTime,
) -> Result<(), RotationError> {
    let (id, to) = match transition {
        Transition::PrepareNewKey => return Ok(()),
        Transition::Publish(id) => (id, Phase::Published),
        Transition::Activate(id) => (id, Phase::Active),
        Transition::Retire(id) => (id, Phase::Retired),
        Transition::Drop(id) => {
            let before = set.keys.len();
            set.keys
                .retain(|k| !(k.id == *id && k.phase == Phase::Retired));
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
    if to == Phase::Active && ever_active {
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
    fn losing_the_active_key_waits_for_propagation_of_the_next() {
        // If the active key disappears (e.g. deleted by hand), a new key must still propagate.
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
            vec![Transition::PrepareNewKey, Transition::Publish("k2".into())]
        );
        assert!(sim.set.active().is_none());
        sim.advance(30 * MIN);
        assert_eq!(sim.tick(), vec![Transition::Activate("k2".into())]);
    }
}
