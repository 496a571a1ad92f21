//! The SPIRE harness against a real spire-server (`make test-spire-interop`): its bundle, a CA
//! rotation through `localauthority x509 prepare/activate`, a minted X509-SVID that validates
//! against the bundle, and a foreign bundle set and listed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/spire.rs"]
mod spire;

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use spire::{EndpointProfile, FederatesWith, SpireOptions, SpireServer, WebPki};
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::keys::KeyAlgorithm;
use wimsey_core::x509::{Authority, CaParams, parse_svid_with_key, pem, verify_svid};
use wimsey_core::{SpiffeId, TrustDomain};

const TD: &str = "spire.test";

/// Verifies a PEM chain against `roots` as an X509-SVID of `TD`; returns its SPIFFE ID.
fn verify_chain(chain_pem: &str, roots: &[Vec<u8>]) -> anyhow::Result<SpiffeId> {
    let chain = pem::decode_certificates(chain_pem)?;
    let td = TrustDomain::new(TD)?;
    let verified = verify_svid(
        &chain,
        |t: &TrustDomain| (*t == td).then_some(roots),
        SystemTime::now(),
    )?;
    Ok(verified.spiffe_id)
}

#[test]
fn spire_server_bundle_rotation_mint_and_federated_bundles() -> anyhow::Result<()> {
    let server = SpireServer::start(SpireOptions::new(TD))?;
    println!(
        "spire-server pid {} config:\n{}",
        server.pid(),
        server.config()
    );

    // Its own bundle: one X.509 authority, one JWT key, a sequence number.
    let before = server.bundle()?;
    ensure!(
        before.x509_authorities.len() == 1,
        "a fresh server has 1 X.509 authority, got {}:\n{}",
        before.x509_authorities.len(),
        server.bundle_show_spiffe()?
    );
    let seq_before = before
        .sequence_number
        .context("bundle show has no spiffe_sequence")?;
    let state = server.x509_authority_state()?;
    ensure!(
        state.active.is_some() && state.prepared.is_none(),
        "{state:?}"
    );

    // An X509-SVID minted by the first CA validates against the bundle.
    let id = "spiffe://spire.test/workload/one";
    let (chain_pem, key_pem, bundle_pem) = server.x509_mint(id, Duration::from_secs(600))?;
    ensure!(verify_chain(&chain_pem, &before.x509_authorities)?.as_str() == id);
    let chain_der: Vec<u8> = pem::decode_certificates(&chain_pem)?
        .iter()
        .flat_map(|c| c.as_bytes().to_vec())
        .collect();
    let svid = parse_svid_with_key(&chain_der, &pem::decode_private_key(&key_pem)?)?;
    ensure!(svid.spiffe_id.as_str() == id, "URI SAN {}", svid.spiffe_id);
    let minted_bundle: Vec<Vec<u8>> = pem::decode_certificates(&bundle_pem)?
        .into_iter()
        .map(|c| c.into_vec())
        .collect();
    ensure!(
        minted_bundle == before.x509_authorities,
        "mint's bundle.pem differs from bundle show"
    );

    // Rotation: prepare publishes the next CA at once; activate makes it sign.
    let prepared = server.prepare_x509_authority()?;
    let after_prepare = server.bundle()?;
    ensure!(
        after_prepare.x509_authorities.len() == 2,
        "after prepare: {} X.509 authorities",
        after_prepare.x509_authorities.len()
    );
    ensure!(
        after_prepare.sequence_number > Some(seq_before),
        "spiffe_sequence {:?} after prepare, {seq_before} before",
        after_prepare.sequence_number
    );
    ensure!(server.x509_authority_state()?.prepared.as_deref() == Some(prepared.as_str()));
    server.activate_x509_authority(&prepared)?;
    let state = server.x509_authority_state()?;
    ensure!(
        state.active.as_deref() == Some(prepared.as_str()) && state.old.is_some(),
        "after activate: {state:?}"
    );
    let new_root: Vec<Vec<u8>> = after_prepare
        .x509_authorities
        .iter()
        .filter(|der| !before.x509_authorities.contains(der))
        .cloned()
        .collect();
    ensure!(new_root.len() == 1);
    let (rotated_pem, _, _) = server.x509_mint(id, Duration::from_secs(600))?;
    ensure!(verify_chain(&rotated_pem, &new_root)?.as_str() == id);
    ensure!(
        verify_chain(&rotated_pem, &before.x509_authorities).is_err(),
        "an SVID minted after activate still chains to the old CA"
    );
    let after_activate = server.bundle()?;
    ensure!(after_activate.x509_authorities.len() == 2);

    // A foreign trust domain's bundle, set by hand, shows up in `bundle list`.
    ensure!(server.bundle_list_spiffe()?.is_empty());
    let foreign_td = TrustDomain::new("foreign.test")?;
    let foreign_ca = Authority::generate_root(
        &foreign_td,
        KeyAlgorithm::EcdsaP256,
        &CaParams::new("foreign", Duration::from_secs(3600)),
        SystemTime::now(),
    )?;
    let mut foreign = TrustDomainBundle::new(foreign_td.clone());
    foreign.x509_authorities = vec![foreign_ca.certificate().as_bytes().to_vec()];
    foreign.sequence_number = Some(7);
    foreign.refresh_hint_seconds = Some(30);
    server.bundle_set_spiffe("spiffe://foreign.test", &foreign.to_spiffe_jwks()?)?;
    let raw = server.bundle_list_spiffe_raw()?;
    println!("bundle list -format spiffe:\n{raw}");
    let listed = spire::parse_bundle_list(&raw)?;
    ensure!(
        listed.len() == 1 && listed[0].0 == "foreign.test",
        "bundle list: {listed:?}"
    );
    let held = server
        .federated_bundle("foreign.test")?
        .context("foreign.test not held")?;
    ensure!(held.x509_authorities == foreign.x509_authorities);
    ensure!(
        held.sequence_number == Some(7),
        "{:?}",
        held.sequence_number
    );

    // A second one: two blocks, in some order.
    let other_td = TrustDomain::new("other.test")?;
    let mut other = TrustDomainBundle::new(other_td);
    other.x509_authorities = vec![foreign_ca.certificate().as_bytes().to_vec()];
    server.bundle_set_spiffe("other.test", &other.to_spiffe_jwks()?)?;
    let raw = server.bundle_list_spiffe_raw()?;
    println!("bundle list -format spiffe, two bundles:\n{raw}");
    let mut names: Vec<String> = spire::parse_bundle_list(&raw)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.sort();
    ensure!(names == ["foreign.test", "other.test"], "{names:?}");
    server.bundle_delete("other.test")?;
    ensure!(server.federated_bundle("other.test")?.is_none());
    Ok(())
}

#[test]
fn spire_server_refuses_to_start_on_a_bad_config_with_its_log() {
    let mut opts = SpireOptions::new(TD);
    opts.ca_key_type = "no-such-key-type";
    opts.startup_timeout = Duration::from_secs(30);
    let error = SpireServer::start(opts).expect_err("a bad ca_key_type must fail");
    let message = format!("{error:#}");
    println!("{message}");
    assert!(message.contains("exited during startup"), "{message}");
    // From the log tail, not the config.
    assert!(message.contains("is unknown"), "{message}");
}

/// Two SPIRE servers federated both ways through the harness: `b.test` fetches `spire.test` over
/// https_web (a config `federates_with`; an openssl CA through SSL_CERT_FILE), `spire.test` fetches
/// `b.test` over https_spiffe (`federation create` with a bootstrap bundle). Each side then
/// prepares a new CA, and the other picks it up by polling, without being asked.
#[test]
fn two_spire_servers_federate_both_ways() -> anyhow::Result<()> {
    let pki_dir = tempfile::tempdir()?;
    let pki = WebPki::generate(pki_dir.path(), &["127.0.0.1", "localhost"])?;

    let mut a_opts = SpireOptions::new(TD);
    a_opts.bundle_endpoint_profile = EndpointProfile::HttpsWeb {
        cert_file: pki.cert_pem.clone(),
        key_file: pki.key_pem.clone(),
    };
    let a = SpireServer::start(a_opts)?;

    let mut b_opts = SpireOptions::new("b.test");
    b_opts.federates_with = vec![FederatesWith::https_web(TD, &a.bundle_endpoint_url())];
    b_opts.env = vec![(
        "SSL_CERT_FILE".into(),
        pki.ca_pem.to_string_lossy().into_owned(),
    )];
    let started = Instant::now();
    let b = SpireServer::start(b_opts)?;

    // https_web needs no bootstrap: b fetches a's bundle when it starts.
    let a_roots = a.x509_authorities_der()?;
    let held = b.wait_for(
        "b.test to hold spire.test's bundle",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            Ok(b.federated_bundle(TD)?
                .filter(|held| held.x509_authorities == a_roots))
        },
    )?;
    println!(
        "b.test fetched spire.test (https_web) {:?} after its start",
        started.elapsed()
    );
    ensure!(
        held.refresh_hint_seconds == Some(5),
        "the endpoint publishes the configured hint, got {:?}",
        held.refresh_hint_seconds
    );

    // https_spiffe with a bootstrap bundle (which, from `bundle show`, has no refresh hint): the
    // first poll fetches from the endpoint, whose bundle carries one.
    let b_peer = FederatesWith::https_spiffe("b.test", &b.bundle_endpoint_url(), &b.server_id());
    let created = Instant::now();
    a.federation_create(&b_peer, Some(&b.bundle_show_spiffe()?))?;
    let b_roots = b.x509_authorities_der()?;
    a.wait_for(
        "spire.test to fetch b.test's bundle",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            Ok(a.federated_bundle("b.test")?
                .filter(|held| held.refresh_hint_seconds == Some(5)))
        },
    )?;
    println!(
        "spire.test fetched b.test (https_spiffe) {:?} after federation create",
        created.elapsed()
    );
    ensure!(
        a.federated_bundle("b.test")?
            .context("b.test")?
            .x509_authorities
            == b_roots
    );
    a.federation_refresh("b.test")?;
    ensure!(a.federation_refresh("nobody.test").is_err());

    // New CAs on both sides; each peer polls every max(5 s, 1 m) / 4 = 15 s.
    a.prepare_x509_authority()?;
    b.prepare_x509_authority()?;
    let rotated = Instant::now();
    let (a_roots, b_roots) = (a.x509_authorities_der()?, b.x509_authorities_der()?);
    ensure!(a_roots.len() == 2 && b_roots.len() == 2);
    b.wait_for(
        "b.test to poll spire.test's new CA",
        Duration::from_secs(40),
        Duration::from_millis(250),
        || {
            Ok(b.federated_bundle(TD)?
                .filter(|held| held.x509_authorities == a_roots))
        },
    )?;
    println!(
        "b.test saw spire.test's prepared CA {:?} after prepare",
        rotated.elapsed()
    );
    a.wait_for(
        "spire.test to poll b.test's new CA",
        Duration::from_secs(40),
        Duration::from_millis(250),
        || {
            Ok(a.federated_bundle("b.test")?
                .filter(|held| held.x509_authorities == b_roots))
        },
    )?;
    println!(
        "spire.test saw b.test's prepared CA {:?} after prepare",
        rotated.elapsed()
    );
    Ok(())
}
