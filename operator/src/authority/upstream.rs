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

/// Which upstream CA signs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The one the Secret holds now.
    Candidate,
    /// The one held here until `until`, when the candidate's root has been published long
    /// enough.
    KeepHeld { until: SystemTime },
}

/// The CA to sign with: the candidate if it chains to the held CA's root, or once its root has
/// been in the bundle for the propagation delay; until then the held CA, while it may still sign
/// the longest lifetime. With nothing
/// usable held (first start, a restart, the held CA ending) the candidate signs at once: there
/// is no older chain to keep working.
pub fn select(
    stored: &StoredAuthority,
    held: Option<&UpstreamCa>,
    candidate: &UpstreamCa,
    lifetimes: &Lifetimes,
    now: SystemTime,
) -> Selection {
    let Some(held) = held else {
        return Selection::Candidate;
    };
    // Under the same root, whoever validates the held CA's SVIDs validates the candidate's.
    if held == candidate || held.anchor() == candidate.anchor() {
        return Selection::Candidate;
    }
    let published_at = root_published_at(stored, candidate.anchor()).unwrap_or(now);
    let trusted_from = published_at + lifetimes.propagation_delay;
    if trusted_from <= now || !held.usable_at(lifetimes.max_ca_signed_lifetime(), now) {
        return Selection::Candidate;
    }
    Selection::KeepHeld {
        until: trusted_from,
    }
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
                published_at_ms: now_ms,
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
pub fn wanted_roots(candidate: &UpstreamCa, signing: &UpstreamCa) -> Vec<CertDer> {
    let mut roots = candidate.roots().to_vec();
    if !roots.contains(signing.anchor()) {
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
            X509Source::Upstream(first.roots()),
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
        let wanted = wanted_roots(&moved, &first);
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
        track_roots(&mut stored, &wanted_roots(&moved, &first), &lifetimes, now);
        // 90 days later the held intermediate ends within the longest SVID lifetime.
        let end = first.not_after() - Duration::from_secs(3600);
        assert_eq!(
            select(&stored, Some(&first), &moved, &lifetimes, end),
            Selection::Candidate
        );
    }

    #[test]
    fn own_cas_retire_into_upstream_mode_and_the_bundle_carries_both_until_they_drop() {
        let lifetimes = default_args().lifetimes();
        let now = SystemTime::now();
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &lifetimes, now).expect("own authority");
        let upstream = ca(&UserPki::new(&td()), &lifetimes, now);
        let rotated = rotate_with(
            &mut stored,
            &td(),
            &lifetimes,
            X509Source::Upstream(upstream.roots()),
            now,
        )
        .expect("switch");
        assert!(rotated.changed);
        assert!(rotated.replaced.is_empty());
        assert_eq!(stored.x509_ca[0].phase, StoredPhase::Retired);

        let material =
            SigningMaterial::from_stored_with(&stored, &td(), &lifetimes, Some(&upstream), now)
                .expect("material");
        assert_eq!(material.ca.chain()[0], *upstream.certificate());
        assert_eq!(
            material.bundle.x509_authorities.len(),
            2,
            "own root kept, user's root added"
        );
        assert!(
            material
                .bundle
                .x509_authorities
                .contains(&upstream.anchor().as_bytes().to_vec())
        );

        let later = now + lifetimes.max_ca_signed_lifetime();
        rotate_with(
            &mut stored,
            &td(),
            &lifetimes,
            X509Source::Upstream(upstream.roots()),
            later,
        )
        .expect("drop");
        assert!(stored.x509_ca.is_empty());
        let material =
            SigningMaterial::from_stored_with(&stored, &td(), &lifetimes, Some(&upstream), later)
                .expect("material");
        assert_eq!(
            material.bundle.x509_authorities,
            vec![upstream.anchor().as_bytes().to_vec()]
        );

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
    fn during_a_rollout_that_changes_the_setting_the_older_replicas_leave_x509_to_the_newer() {
        let lifetimes = default_args().lifetimes();
        let t0 = SystemTime::now();
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &lifetimes, t0).expect("own authority");
        let upstream = ca(&UserPki::new(&td()), &lifetimes, t0);
        let source = X509Source::Upstream(upstream.roots());

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
