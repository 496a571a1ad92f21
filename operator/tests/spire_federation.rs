//! Federation with a real SPIRE Server (v1.13.3, `make test-spire-interop`), both directions over
//! https_spiffe on loopback: SPIRE fetches our bundle endpoint (`federates_with` us) and we fetch
//! SPIRE's with our fetcher, each side then holding the other's bundle; after SPIRE rotates its
//! CA (prepare, then activate), the new authority is in what we fetch within one refresh hint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use wimsey_core::TrustDomain;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::federation::{RefreshPolicy, compare_bundles};
use wimsey_core::reserved::bundle_endpoint_id;
use wimsey_operator::federation::fetch::{EndpointAuth, FetchLimits, fetch_bundle};

#[path = "support/domain.rs"]
mod domain;
#[path = "support/spire.rs"]
mod spire;

use domain::*;
use spire::{FederatesWith, SpireOptions, SpireServer};

const SPIRE_TD: &str = "spire.test";
const OUR_TD: &str = "wimsey.test";
/// The refresh hint SPIRE publishes in these tests.
const SPIRE_HINT: Duration = Duration::from_secs(5);

/// Fetches SPIRE's bundle over https_spiffe, verifying its server SVID with `trusted`.
async fn fetch_spire(spire: &SpireServer, trusted: &TrustDomainBundle) -> TrustDomainBundle {
    let url = url::Url::parse(&spire.bundle_endpoint_url()).unwrap();
    let auth = EndpointAuth::Spiffe {
        id: wimsey_core::SpiffeId::parse(&spire.server_id()).unwrap(),
        authorities: trusted.x509_authorities.clone(),
    };
    fetch_bundle(
        &url,
        &TrustDomain::new(SPIRE_TD).unwrap(),
        &auth,
        FetchLimits::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("fetching SPIRE's bundle: {e}\n{}", spire.log_tail(30)))
}

fn print_bundle_list(side: &str, list: &[(String, String)]) {
    println!("{side} bundle list:");
    for (td, json) in list {
        let bundle =
            TrustDomainBundle::from_spiffe_jwks(TrustDomain::new(td).unwrap(), json.as_bytes())
                .unwrap();
        println!(
            "  {td}: spiffe_sequence={:?} x509_authorities={} jwt_authorities={}",
            bundle.sequence_number,
            bundle.x509_authorities.len(),
            bundle.jwt_authorities.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_and_wimsey_federate_both_ways_and_a_spire_ca_rotation_arrives_within_one_refresh() {
    // Our side: the authority and the bundle endpoint on loopback.
    let mut ours = Domain::new(OUR_TD);
    let (our_url, _stop) = bundle_endpoint(&ours).await;

    // SPIRE federates with us over https_spiffe.
    let mut options = SpireOptions::new(SPIRE_TD);
    options.refresh_hint = SPIRE_HINT;
    options.federates_with = vec![FederatesWith::https_spiffe(
        OUR_TD,
        our_url.as_str(),
        bundle_endpoint_id(&ours.td).unwrap().as_str(),
    )];
    let spire = tokio::task::spawn_blocking(move || SpireServer::start(options))
        .await
        .unwrap()
        .unwrap();
    let spire = Arc::new(spire);

    // SPIRE -> us: bootstrapped with our current bundle (the spec's out-of-band first bundle),
    // then we rotate so that only a fetch from our endpoint can show the new CA.
    let bootstrap = ours.current().bundle.to_spiffe_jwks().unwrap();
    let s = spire.clone();
    tokio::task::spawn_blocking(move || s.bundle_set_spiffe(OUR_TD, &bootstrap))
        .await
        .unwrap()
        .unwrap();
    ours.rotate_later(14 * HOUR);
    let rotated = ours.current().bundle.clone();
    assert_eq!(rotated.x509_authorities.len(), 2);
    let s = spire.clone();
    let want = rotated.clone();
    let held_by_spire = tokio::task::spawn_blocking(move || {
        s.wait_for(
            "SPIRE to fetch our rotated bundle",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                s.federation_refresh(OUR_TD)?;
                // (`bundle list` prints no spiffe_sequence: compare the authorities.)
                Ok(s.federated_bundle(OUR_TD)?.filter(|b| {
                    let mut held = b.x509_authorities.clone();
                    let mut wanted = want.x509_authorities.clone();
                    held.sort();
                    wanted.sort();
                    held == wanted
                }))
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(held_by_spire.x509_authorities.len(), 2);
    let s = spire.clone();
    let spire_list = tokio::task::spawn_blocking(move || s.bundle_list_spiffe())
        .await
        .unwrap()
        .unwrap();
    print_bundle_list("SPIRE (spire-server bundle list)", &spire_list);
    assert!(
        spire_list.iter().any(|(td, _)| td == OUR_TD),
        "{spire_list:?}"
    );

    // Us -> SPIRE: bootstrapped from `spire-server bundle show`, as trustDomainBundle would be.
    let s = spire.clone();
    let spire_bootstrap = tokio::task::spawn_blocking(move || s.bundle())
        .await
        .unwrap()
        .unwrap();
    let fetched = fetch_spire(&spire, &spire_bootstrap).await;
    assert_eq!(fetched.x509_authorities, spire_bootstrap.x509_authorities);
    assert_eq!(fetched.sequence_number, spire_bootstrap.sequence_number);
    assert_eq!(fetched.refresh_hint_seconds, Some(SPIRE_HINT.as_secs()));
    println!(
        "wimsey bundle list:\n  {OUR_TD}: spiffe_sequence={:?} x509_authorities={} (ours)\n  {SPIRE_TD}: spiffe_sequence={:?} x509_authorities={} jwt_authorities={} (fetched from {})",
        rotated.sequence_number,
        rotated.x509_authorities.len(),
        fetched.sequence_number,
        fetched.x509_authorities.len(),
        fetched.jwt_authorities.len(),
        spire.bundle_endpoint_url()
    );

    // SPIRE rotates its CA. We poll as the poller does: at the published hint (our bounds
    // allow a 1 s minimum here), each fetch verified with the latest bundle fetched so far.
    let policy = RefreshPolicy {
        min: Duration::from_secs(1),
        max: Duration::from_secs(60),
        default: Duration::from_secs(5),
    };
    let interval = policy.interval(fetched.refresh_hint_seconds);
    let mut held = fetched;
    let s = spire.clone();
    let rotated_at = Instant::now();
    let new_authority = tokio::task::spawn_blocking(move || s.rotate_x509_ca())
        .await
        .unwrap()
        .unwrap();
    let s = spire.clone();
    let spire_now = tokio::task::spawn_blocking(move || s.bundle())
        .await
        .unwrap()
        .unwrap();
    let new_cas: Vec<Vec<u8>> = spire_now
        .x509_authorities
        .iter()
        .filter(|ca| !held.x509_authorities.contains(ca))
        .cloned()
        .collect();
    assert_eq!(
        new_cas.len(),
        1,
        "SPIRE published one new CA ({new_authority})"
    );
    let seen_after = loop {
        tokio::time::sleep(interval).await;
        let next = fetch_spire(&spire, &held).await;
        if compare_bundles(Some(&held), &next).replaces() {
            held = next;
        }
        if held.x509_authorities.contains(&new_cas[0]) {
            break rotated_at.elapsed();
        }
        assert!(
            rotated_at.elapsed() < interval * 3,
            "the new SPIRE CA did not arrive within {:?}",
            interval * 3
        );
    };
    println!(
        "SPIRE CA rotation ({new_authority}) seen by wimsey's fetcher after {:.1} s (refresh hint {} s)",
        seen_after.as_secs_f64(),
        interval.as_secs()
    );
    assert!(
        seen_after <= interval + Duration::from_secs(2),
        "{seen_after:?}"
    );
    // The next fetch verifies SPIRE's server SVID, now issued by the new CA, with the held bundle.
    let after = fetch_spire(&spire, &held).await;
    assert!(after.x509_authorities.contains(&new_cas[0]));
}
