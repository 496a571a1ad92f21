//! Running as an intermediate under a CA the user owns (`--upstream-ca-secret`), as plain
//! functions over the stored state and an injected clock.
//!
//! The upstream Secret (cert-manager's layout, read by `wimsey_core::x509::upstream`) gives the
//! CA that signs X.509-SVIDs; its `ca.crt` roots are the bundle's X.509 authorities. The rule is
//! the one the authority's own rotation follows, published before active:
//! * a root is published (stored in [`StoredAuthority::upstream_roots`], so every replica and
//!   restart agrees on since when) before any SVID chaining to it is handed out. A renewed CA
//!   under a root published for the propagation delay signs at once (cert-manager renewing the
//!   intermediate under the same root); one under a new root waits out the delay while the CA
//!   held here keeps signing ([`select`]);
//! * a root no longer in the Secret, nor anchoring the CA that signs, is retired and stays in
//!   the bundle for the longest lifetime anything signed under it has;
//! * the authority's own CA keys sign nothing in this mode; they are retired and leave the
//!   bundle the same way.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use wimsey_core::x509::CertDer;
use wimsey_core::x509::upstream::{
    CA_CRT, TLS_CRT, TLS_KEY, UpstreamCa, UpstreamCaError, UpstreamFiles, load_upstream_ca,
};

use super::state::{Lifetimes, StoredAuthority, StoredPhase, StoredRoot, from_ms, to_ms};

/// Which CA signs X.509 now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The upstream CA the Secret holds now.
    Candidate,
    /// The upstream CA held here, until `until`, when the candidate's root has been published
    /// long enough.
    KeepHeld { until: SystemTime },
    /// The authority's own CA, until `until`: the setting was just switched on for a trust
    /// domain that already had a bundle, and the user's root is not yet trusted everywhere.
    KeepOwn { until: SystemTime },
}

/// The CA to sign with. The candidate when it chains to the held CA's root (whoever validates
/// the one validates the other), or once its root has been in the bundle for the propagation
/// delay. Until then the CA that signed before keeps signing, while it may still sign the
/// longest lifetime: the upstream CA held here, or, when switching an existing trust domain to
/// an upstream CA, the own CA. With neither usable the candidate signs at once.
pub fn select(
    stored: &StoredAuthority,
    held: Option<&UpstreamCa>,
    candidate: &UpstreamCa,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> Selection {
    if held.is_some_and(|held| held == candidate || held.anchor() == candidate.anchor()) {
        return Selection::Candidate;
    }
    let until = trusted_from(stored, candidate.anchor(), lifetimes, now);
    if until <= now {
        return Selection::Candidate;
    }
    let longest = lifetimes.max_ca_signed_lifetime();
    if held.is_some_and(|held| held.usable_at(longest, now)) {
        return Selection::KeepHeld { until };
    }
    if own_ca_usable(stored, longest, now) {
        return Selection::KeepOwn { until };
    }
    Selection::Candidate
}

/// When `root` has been published for the propagation delay (from now if not published yet).
pub fn trusted_from(
    stored: &StoredAuthority,
    root: &CertDer,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> SystemTime {
    root_published_at(stored, root).unwrap_or(now) + lifetimes.propagation_delay
}

/// Whether the stored active own CA may still sign `longest` from `now`.
fn own_ca_usable(stored: &StoredAuthority, longest: std::time::Duration, now: SystemTime) -> bool {
    stored
        .x509_ca
        .iter()
        .filter(|k| k.phase == StoredPhase::Active)
        .filter_map(|k| k.certificate_der().ok())
        .filter_map(|der| wimsey_core::x509::certificate_validity(&der).ok())
        .any(|(_, not_after)| now.checked_add(longest).is_some_and(|end| end <= not_after))
}

fn root_published_at(stored: &StoredAuthority, root: &CertDer) -> Option<SystemTime> {
    let encoded = STANDARD.encode(root.as_bytes());
    stored
        .upstream_roots
        .iter()
        .find(|r| r.certificate == encoded)
        .map(|r| from_ms(r.published_at_ms))
}

/// Brings the published upstream roots to `wanted` (the Secret's roots and those of the CA that
/// signs; empty when no upstream CA is configured): new ones published now, a retired one
/// wanted again restored, those no longer wanted retired now, and retired ones dropped after the
/// longest signed lifetime. Returns whether anything changed.
pub fn track_roots(
    stored: &mut StoredAuthority,
    wanted: &[CertDer],
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> bool {
    let wanted: Vec<String> = wanted
        .iter()
        .map(|c| STANDARD.encode(c.as_bytes()))
        .collect();
    let now_ms = to_ms(now);
    // A trust domain's first bundle: nobody can hold an older one, so it is trusted at once.
    let first_bundle = stored.x509_ca.is_empty() && stored.upstream_roots.is_empty();
    let published_at_ms = if first_bundle {
        to_ms(now.checked_sub(lifetimes.propagation_delay).unwrap_or(now))
    } else {
        now_ms
    };
    let keep_ms = to_ms(from_ms(0) + lifetimes.max_ca_signed_lifetime());
    let mut changed = false;
    for root in &mut stored.upstream_roots {
        let is_wanted = wanted.contains(&root.certificate);
        match (is_wanted, root.retired_at_ms) {
            (true, Some(_)) => root.retired_at_ms = None,
            (false, None) => root.retired_at_ms = Some(now_ms),
            _ => continue,
        }
        changed = true;
    }
    let before = stored.upstream_roots.len();
    stored.upstream_roots.retain(|r| {
        r.retired_at_ms
            .is_none_or(|at| at.saturating_add(keep_ms) > now_ms)
    });
    changed |= stored.upstream_roots.len() != before;
    for certificate in wanted {
        if !stored
            .upstream_roots
            .iter()
            .any(|r| r.certificate == certificate)
        {
            stored.upstream_roots.push(StoredRoot {
                certificate,
                published_at_ms,
                retired_at_ms: None,
            });
            changed = true;
        }
    }
    changed
}

/// With an upstream CA the authority's own CA keys sign nothing: each is retired now, and dropped
/// once the longest lifetime it may have signed has passed. Returns whether anything changed.
pub fn retire_own_cas(
    stored: &mut StoredAuthority,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> bool {
    let now_ms = to_ms(now);
    let keep_ms = to_ms(from_ms(0) + lifetimes.max_ca_signed_lifetime());
    let mut changed = false;
    for key in &mut stored.x509_ca {
        if key.phase != StoredPhase::Retired {
            key.phase = StoredPhase::Retired;
            key.retired_at_ms = Some(now_ms);
            changed = true;
        }
    }
    let before = stored.x509_ca.len();
    stored.x509_ca.retain(|k| {
        // A key that never signed has nothing out there to validate.
        k.activated_at_ms.is_some()
            && k.retired_at_ms
                .is_none_or(|at| at.saturating_add(keep_ms) > now_ms)
    });
    changed | (stored.x509_ca.len() != before)
}

/// The upstream roots to publish: every stored one, retired included.
pub fn published_roots(stored: &StoredAuthority) -> impl Iterator<Item = &StoredRoot> {
    stored.upstream_roots.iter()
}

/// The upstream CA in `secret` (cert-manager's `kubernetes.io/tls` + `ca.crt` layout), able to
/// sign the longest lifetime from `now`.
pub fn from_secret(
    secret: &k8s_openapi::api::core::v1::Secret,
    trust_domain: &wimsey_core::TrustDomain,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> Result<UpstreamCa, UpstreamCaError> {
    let value = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.as_slice())
    };
    let files = UpstreamFiles {
        tls_crt: value(TLS_CRT),
        tls_key: value(TLS_KEY),
        ca_crt: value(CA_CRT),
    };
    load_upstream_ca(files, trust_domain, lifetimes.max_ca_signed_lifetime(), now)
}

/// The roots to keep published: the Secret's, and the root the signing CA chains to.
pub fn wanted_roots(candidate: &UpstreamCa, signing: Option<&UpstreamCa>) -> Vec<CertDer> {
    let mut roots = candidate.roots().to_vec();
    if let Some(signing) = signing
        && !roots.contains(signing.anchor())
    {
        roots.push(signing.anchor().clone());
    }
    roots
}

/// An upstream CA Secret as cert-manager writes it, for tests.
#[cfg(test)]
pub(crate) fn test_secret(
    values: &wimsey_core::x509::upstream::test_pki::SecretValues,
) -> k8s_openapi::api::core::v1::Secret {
    use k8s_openapi::ByteString;
    let data = [
        (TLS_CRT, values.tls_crt.as_bytes()),
        (TLS_KEY, values.tls_key.as_bytes()),
        (CA_CRT, values.ca_crt.as_bytes()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.to_vec())))
    .collect();
    k8s_openapi::api::core::v1::Secret {
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wimsey_core::TrustDomain;

    use wimsey_core::x509::upstream::test_pki::UserPki;

    use super::*;
    use crate::authority::state::{SigningMaterial, X509Source, rotate, rotate_with};
    use crate::authority::test_support::default_args;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").expect("td")
    }

    fn ca(root: &UserPki, lifetimes: &Lifetimes, now: SystemTime) -> UpstreamCa {
        from_secret(&test_secret(&root.intermediate()), &td(), lifetimes, now).expect("usable")
    }

    #[test]
    fn a_renewal_under_the_same_root_signs_at_once_and_a_new_root_waits_for_propagation() {
        let lifetimes = default_args().lifetimes();
        let now = SystemTime::now();
        let root = UserPki::new(&td());
        let first = ca(&root, &lifetimes, now);
        let mut stored = StoredAuthority::empty(&td());
        rotate_with(
            &mut stored,
            &td(),
            &lifetimes,
            X509Source::upstream(&first),
            now,
        )
        .expect("rotate");
        assert_eq!(stored.upstream_roots.len(), 1);
        assert!(stored.x509_ca.is_empty(), "no own CA in upstream mode");
        // Nothing held at start: the Secret's CA signs.
        assert_eq!(
            select(&stored, None, &first, &lifetimes, now),
            Selection::Candidate
        );

        // cert-manager renews the intermediate under the same root: it signs at once.
        let renewed = ca(&root, &lifetimes, now);
        assert_eq!(
            select(&stored, Some(&first), &renewed, &lifetimes, now),
            Selection::Candidate
        );
        let later = now + Duration::from_secs(60);

        // A new root: published now, trusted after the propagation delay; the held CA signs until.
        let other_root = UserPki::new(&td());
        let moved = ca(&other_root, &lifetimes, now);
        let wanted = wanted_roots(&moved, Some(&first));
        assert!(track_roots(&mut stored, &wanted, &lifetimes, later));
        assert_eq!(stored.upstream_roots.len(), 2, "both roots published");
        assert_eq!(
            select(&stored, Some(&first), &moved, &lifetimes, later),
            Selection::KeepHeld {
                until: from_ms(to_ms(later)) + lifetimes.propagation_delay
            }
        );
        let switched = later + lifetimes.propagation_delay;
        assert_eq!(
            select(&stored, Some(&first), &moved, &lifetimes, switched),
            Selection::Candidate
        );

        // Once the new CA signs, the old root is retired, and dropped after the longest lifetime.
        assert!(track_roots(
            &mut stored,
            moved.roots(),
            &lifetimes,
            switched
        ));
        let old = STANDARD.encode(first.anchor().as_bytes());
        let retired = stored
            .upstream_roots
            .iter()
            .find(|r| r.certificate == old)
            .expect("still published");
        assert_eq!(retired.retired_at_ms, Some(to_ms(switched)));
        let gone = switched + lifetimes.max_ca_signed_lifetime();
        assert!(track_roots(&mut stored, moved.roots(), &lifetimes, gone));
        assert_eq!(stored.upstream_roots.len(), 1);
        assert!(!track_roots(&mut stored, moved.roots(), &lifetimes, gone));
    }

    #[test]
    fn a_held_ca_too_close_to_its_end_gives_way_at_once() {
        let lifetimes = default_args().lifetimes();
        let now = SystemTime::now();
        let first = ca(&UserPki::new(&td()), &lifetimes, now);
        let moved = ca(&UserPki::new(&td()), &lifetimes, now);
        let mut stored = StoredAuthority::empty(&td());
        track_roots(&mut stored, first.roots(), &lifetimes, now);
        // 90 days later the new root has just been published; the held intermediate ends within
        // the longest SVID lifetime, so it cannot bridge the propagation delay.
        let end = first.not_after() - Duration::from_secs(3600);
        track_roots(
            &mut stored,
            &wanted_roots(&moved, Some(&first)),
            &lifetimes,
            end,
        );
        assert_eq!(
            select(&stored, Some(&first), &moved, &lifetimes, end),
            Selection::Candidate
        );
        // A day earlier it would have kept signing.
        let earlier = end - Duration::from_secs(86400);
        assert!(matches!(
            select(&stored, Some(&first), &moved, &lifetimes, earlier),
            Selection::KeepHeld { .. }
        ));
    }

    #[test]
    fn switching_an_existing_trust_domain_publishes_the_users_root_before_it_signs() {
        let lifetimes = default_args().lifetimes();
        let now = SystemTime::now();
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &lifetimes, now).expect("own authority");
        let own_root = stored.x509_ca[0].certificate_der().expect("own root");
        let upstream = ca(&UserPki::new(&td()), &lifetimes, now);
        let user_root = upstream.anchor().as_bytes().to_vec();

        // The setting is switched on: the user's root is published, the own CA keeps signing.
        let rotated = rotate_with(
            &mut stored,
            &td(),
            &lifetimes,
            X509Source::upstream(&upstream),
            now,
        )
        .expect("switch");
        assert!(rotated.changed);
        assert_eq!(stored.x509_ca[0].phase, StoredPhase::Active);
        let until = now + lifetimes.propagation_delay;
        let until = from_ms(to_ms(until));
        assert_eq!(
            select(&stored, None, &upstream, &lifetimes, now),
            Selection::KeepOwn { until }
        );
        let material =
            SigningMaterial::from_stored(&stored, &td(), &lifetimes, now).expect("own material");
        assert_eq!(material.ca.chain()[0].as_bytes(), own_root.as_slice());
        assert_eq!(
            material.bundle.x509_authorities,
            vec![own_root.clone(), user_root.clone()]
        );

        // After the propagation delay the user's CA signs and the own CA is retired.
        rotate_with(
            &mut stored,
            &td(),
            &lifetimes,
            X509Source::upstream(&upstream),
            until,
        )
        .expect("propagated");
        assert_eq!(stored.x509_ca[0].phase, StoredPhase::Retired);
        assert_eq!(
            select(&stored, None, &upstream, &lifetimes, until),
            Selection::Candidate
        );
        let material =
            SigningMaterial::from_stored_with(&stored, &td(), &lifetimes, Some(&upstream), until)
                .expect("material");
        assert_eq!(material.ca.chain()[0], *upstream.certificate());
        assert_eq!(
            material.bundle.x509_authorities.len(),
            2,
            "the own root stays a while"
        );

        // The own root leaves once what it signed has expired.
        let later = until + lifetimes.max_ca_signed_lifetime();
        rotate_with(
            &mut stored,
            &td(),
            &lifetimes,
            X509Source::upstream(&upstream),
            later,
        )
        .expect("drop");
        assert!(stored.x509_ca.is_empty());
        let material =
            SigningMaterial::from_stored_with(&stored, &td(), &lifetimes, Some(&upstream), later)
                .expect("material");
        assert_eq!(material.bundle.x509_authorities, vec![user_root]);

        // Back to the own root (the setting removed): a new own CA signs at once, and the user's
        // root stays published, retired, for the longest signed lifetime.
        let rotated = rotate(&mut stored, &td(), &lifetimes, later).expect("switch back");
        assert!(rotated.changed);
        assert!(rotated.replaced.is_empty(), "a switch, not a recovery");
        assert_eq!(stored.x509_ca.len(), 1);
        assert_eq!(stored.x509_ca[0].phase, StoredPhase::Active);
        let material =
            SigningMaterial::from_stored(&stored, &td(), &lifetimes, later).expect("own material");
        assert_eq!(material.bundle.x509_authorities.len(), 2);
        assert!(stored.upstream_roots[0].retired_at_ms.is_some());
    }

    #[test]
    fn a_new_trust_domain_under_an_upstream_ca_signs_with_it_at_once() {
        let lifetimes = default_args().lifetimes();
        let now = SystemTime::now();
        let upstream = ca(&UserPki::new(&td()), &lifetimes, now);
        let mut stored = StoredAuthority::empty(&td());
        rotate_with(
            &mut stored,
            &td(),
            &lifetimes,
            X509Source::upstream(&upstream),
            now,
        )
        .expect("create");
        assert!(stored.x509_ca.is_empty(), "no own CA is made");
        assert_eq!(
            select(&stored, None, &upstream, &lifetimes, now),
            Selection::Candidate
        );
    }

    #[test]
    fn during_a_rollout_that_changes_the_setting_the_older_replicas_leave_x509_to_the_newer() {
        let lifetimes = default_args().lifetimes();
        let t0 = SystemTime::now();
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &lifetimes, t0).expect("own authority");
        let upstream = ca(&UserPki::new(&td()), &lifetimes, t0);
        let source = X509Source::upstream(&upstream);

        // A replica with the upstream setting starts later and switches.
        let t1 = t0 + Duration::from_secs(60);
        assert!(!source.superseded(&stored, t1));
        rotate_with(&mut stored, &td(), &lifetimes, source, t1).expect("switch");
        assert!(
            X509Source::Own.superseded(&stored, t0),
            "the old own-CA replica"
        );
        assert!(!source.superseded(&stored, t1));
        // Frozen leaves the X.509 side alone.
        let before = stored.clone();
        rotate_with(&mut stored, &td(), &lifetimes, X509Source::Frozen, t1).expect("frozen");
        assert_eq!(stored.x509_ca, before.x509_ca);
        assert_eq!(stored.upstream_roots, before.upstream_roots);

        // And back: a replica without the setting starts after that one.
        let t2 = t1 + Duration::from_secs(60);
        assert!(!X509Source::Own.superseded(&stored, t2));
        rotate_with(&mut stored, &td(), &lifetimes, X509Source::Own, t2).expect("switch back");
        assert!(
            source.superseded(&stored, t1),
            "the upstream replica gives way"
        );
        assert!(!X509Source::Own.superseded(&stored, t2));
    }
}
