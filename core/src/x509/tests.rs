//! The conformance suite's XV catalogue (reference §2.2) plus the authority's own rules.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::test_builder::*;
use super::*;
use crate::keys::{KeyAlgorithm, SigningKey};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).expect("td")
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("id")
}

type Bundles = HashMap<TrustDomain, Vec<CertDer>>;

fn bundles(entries: &[(&str, &CertDer)]) -> Bundles {
    let mut map: Bundles = HashMap::new();
    for (name, cert) in entries {
        map.entry(td(name)).or_default().push((*cert).clone());
    }
    map
}

fn verify(chain: &[CertDer], bundles: &Bundles) -> Result<VerifiedSvid, X509Error> {
    verify_svid(
        chain,
        |t: &TrustDomain| bundles.get(t).map(Vec::as_slice),
        now(),
    )
}

const WORKLOAD: &str = "spiffe://example.org/workload";

fn root() -> TestCa {
    TestCa::root("root", "example.org", now())
}

// ---- XV acceptance ----

#[test]
fn xv_valid_leaf_is_accepted() {
    let ca = root();
    let leaf = ca.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let verified = verify(
        std::slice::from_ref(&leaf),
        &bundles(&[("example.org", &ca.cert)]),
    )
    .expect("valid");
    assert_eq!(verified.spiffe_id, id(WORKLOAD));
    assert_eq!(verified.chain, vec![leaf, ca.cert]);
}

#[test]
fn xv_leaf_with_intermediate_is_accepted() {
    let ca = root();
    let intermediate = ca.intermediate("intermediate", now());
    let leaf = intermediate.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let verified = verify(
        &[leaf, intermediate.cert.clone()],
        &bundles(&[("example.org", &ca.cert)]),
    )
    .expect("valid");
    assert_eq!(verified.chain.len(), 3);
    assert_eq!(verified.chain[1], intermediate.cert);
}

#[test]
fn xv_leaf_with_dns_sans_is_accepted() {
    let ca = root();
    let extensions = vec![
        basic_constraints(false, None),
        key_usage(DIGITAL_SIGNATURE),
        san(&[WORKLOAD], &["web.example.org", "web"], false),
    ];
    let leaf = ca.leaf(now(), &extensions);
    let verified = verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).expect("valid");
    assert_eq!(
        verified.dns_names,
        vec!["web.example.org".to_owned(), "web".to_owned()]
    );
}

#[test]
fn xv_empty_subject_with_critical_uri_san_is_accepted() {
    let ca = root();
    let extensions = vec![
        basic_constraints(false, None),
        key_usage(DIGITAL_SIGNATURE),
        san(&[WORKLOAD], &[], true),
    ];
    let (leaf, _) = ca.leaf_with(&[0x30, 0x00], now() - hour(), now() + hour(), &extensions);
    verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).expect("valid");
}

// ---- XV rejection ----

#[test]
fn xv_untrusted_ca_is_rejected() {
    let ca = root();
    let other = TestCa::root("root", "example.org", now()); // same name, different key
    let leaf = other.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let err = verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err();
    assert_eq!(err, X509Error::BadSignature);
    let stranger = TestCa::root("stranger", "example.org", now());
    let leaf = stranger.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::UnknownAuthority
    );
}

#[test]
fn xv_expired_leaf_is_rejected() {
    let ca = root();
    let exts = svid_leaf_extensions(WORKLOAD);
    let (leaf, _) = ca.leaf_with(
        &org_name("leaf"),
        now() - 2 * hour(),
        now() - Duration::from_secs(1),
        &exts,
    );
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::Expired(0)
    );
}

#[test]
fn xv_not_yet_valid_leaf_is_rejected() {
    let ca = root();
    let exts = svid_leaf_extensions(WORKLOAD);
    let (leaf, _) = ca.leaf_with(
        &org_name("leaf"),
        now() + Duration::from_secs(60),
        now() + hour(),
        &exts,
    );
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::NotYetValid(0)
    );
}

#[test]
fn xv_ca_leaf_is_rejected() {
    let ca = root();
    let leaf = ca.leaf(
        now(),
        &[
            basic_constraints(true, None),
            key_usage(DIGITAL_SIGNATURE),
            san(&[WORKLOAD], &[], false),
        ],
    );
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::LeafIsCa
    );
}

#[test]
fn xv_leaf_with_key_cert_sign_is_rejected() {
    let ca = root();
    let leaf = ca.leaf(
        now(),
        &[
            basic_constraints(false, None),
            key_usage(DIGITAL_SIGNATURE | KEY_CERT_SIGN),
            san(&[WORKLOAD], &[], false),
        ],
    );
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::LeafKeyCertSign
    );
}

#[test]
fn xv_leaf_with_crl_sign_is_rejected() {
    let ca = root();
    let leaf = ca.leaf(
        now(),
        &[
            basic_constraints(false, None),
            key_usage(DIGITAL_SIGNATURE | CRL_SIGN),
            san(&[WORKLOAD], &[], false),
        ],
    );
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::LeafCrlSign
    );
}

#[test]
fn xv_more_than_one_uri_san_is_rejected() {
    let ca = root();
    let leaf = ca.leaf(
        now(),
        &[
            basic_constraints(false, None),
            key_usage(DIGITAL_SIGNATURE),
            san(&[WORKLOAD, "spiffe://example.org/other"], &[], false),
        ],
    );
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::MultipleUriSans
    );
}

#[test]
fn xv_no_uri_san_is_rejected() {
    let ca = root();
    let with_dns_only = ca.leaf(
        now(),
        &[
            basic_constraints(false, None),
            key_usage(DIGITAL_SIGNATURE),
            san(&[], &["web.example.org"], false),
        ],
    );
    let without_san = ca.leaf(
        now(),
        &[basic_constraints(false, None), key_usage(DIGITAL_SIGNATURE)],
    );
    for leaf in [with_dns_only, without_san] {
        assert_eq!(
            verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
            X509Error::NoUriSan
        );
    }
}

#[test]
fn xv_non_spiffe_uri_is_rejected() {
    let ca = root();
    for uri in [
        "https://example.org/workload",
        "SPIFFE://example.org/workload",
        "spiffe://example.org:8080/a",
    ] {
        let leaf = ca.leaf(now(), &svid_leaf_extensions(uri));
        let err = verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err();
        assert!(matches!(err, X509Error::InvalidSpiffeId(_)), "{uri}: {err}");
    }
    let leaf = ca.leaf(now(), &svid_leaf_extensions("https://example.org/workload"));
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::InvalidSpiffeId(SpiffeIdError::WrongScheme)
    );
}

#[test]
fn xv_root_path_id_is_rejected() {
    let ca = root();
    let leaf = ca.leaf(now(), &svid_leaf_extensions("spiffe://example.org"));
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::LeafRootPath
    );
}

#[test]
fn xv_peer_without_bundle_for_its_trust_domain_is_rejected_even_if_another_ca_signed_it() {
    // XV-15 / XF-2: the chain verifies under example.org's CA, but the ID claims other.org.
    let ca = root();
    let leaf = ca.leaf(now(), &svid_leaf_extensions("spiffe://other.org/workload"));
    let err = verify(
        std::slice::from_ref(&leaf),
        &bundles(&[("example.org", &ca.cert)]),
    )
    .unwrap_err();
    assert_eq!(err, X509Error::NoBundle(td("other.org")));
    assert_eq!(
        err.to_string(),
        "could not get X509 bundle: no X.509 bundle found for trust domain: \"other.org\""
    );
    // And a bundle for other.org that holds a different CA does not help.
    let other = TestCa::root("other", "other.org", now());
    let map = bundles(&[("example.org", &ca.cert), ("other.org", &other.cert)]);
    assert_eq!(
        verify(&[leaf], &map).unwrap_err(),
        X509Error::UnknownAuthority
    );
}

// ---- further path validation rules ----

#[test]
fn empty_chain_is_rejected() {
    let empty: [CertDer; 0] = [];
    assert_eq!(
        verify(&empty, &Bundles::new()).unwrap_err(),
        X509Error::EmptyChain
    );
}

#[test]
fn leaf_without_digital_signature_is_rejected() {
    let ca = root();
    let leaf = ca.leaf(
        now(),
        &[
            basic_constraints(false, None),
            key_usage(0x08),
            san(&[WORKLOAD], &[], false),
        ],
    );
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::LeafMissingDigitalSignature
    );
}

#[test]
fn intermediate_that_is_not_a_ca_or_lacks_key_cert_sign_is_rejected() {
    let ca = root();
    let cases = [
        (
            vec![basic_constraints(false, None), key_usage(KEY_CERT_SIGN)],
            X509Error::SigningCertNotCa,
        ),
        (vec![key_usage(KEY_CERT_SIGN)], X509Error::SigningCertNotCa),
        (
            vec![basic_constraints(true, None), key_usage(DIGITAL_SIGNATURE)],
            X509Error::SigningCertNoKeyCertSign,
        ),
        (
            vec![basic_constraints(true, None)],
            X509Error::SigningCertNoKeyCertSign,
        ),
    ];
    for (extensions, expected) in cases {
        let intermediate = ca.sub_ca("intermediate", now() - hour(), now() + hour(), &extensions);
        let leaf = intermediate.leaf(now(), &svid_leaf_extensions(WORKLOAD));
        let err = verify(
            &[leaf, intermediate.cert],
            &bundles(&[("example.org", &ca.cert)]),
        )
        .unwrap_err();
        assert_eq!(err, expected);
    }
}

#[test]
fn expired_intermediate_is_rejected() {
    let ca = root();
    let extensions = [basic_constraints(true, None), key_usage(KEY_CERT_SIGN)];
    let intermediate = ca.sub_ca(
        "intermediate",
        now() - 2 * hour(),
        now() - hour(),
        &extensions,
    );
    let leaf = intermediate.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let err = verify(
        &[leaf, intermediate.cert],
        &bundles(&[("example.org", &ca.cert)]),
    )
    .unwrap_err();
    assert_eq!(err, X509Error::Expired(1));
}

#[test]
fn path_length_constraint_is_enforced() {
    let ca = root();
    let strict = ca.sub_ca(
        "strict",
        now() - hour(),
        now() + hour(),
        &[basic_constraints(true, Some(0)), key_usage(KEY_CERT_SIGN)],
    );
    let below = strict.intermediate("below", now());
    let leaf = below.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let map = bundles(&[("example.org", &ca.cert)]);
    assert_eq!(
        verify(&[leaf, below.cert.clone(), strict.cert.clone()], &map).unwrap_err(),
        X509Error::PathLenExceeded
    );
    // pathLen 0 still allows leaves directly below.
    let direct = strict.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    verify(&[direct, strict.cert], &map).expect("pathLen 0 allows a leaf");
}

#[test]
fn intermediates_may_arrive_in_any_order() {
    let ca = root();
    let upper = ca.intermediate("upper", now());
    let lower = upper.intermediate("lower", now());
    let leaf = lower.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let verified = verify(
        &[leaf, upper.cert.clone(), lower.cert.clone()],
        &bundles(&[("example.org", &ca.cert)]),
    )
    .expect("valid");
    assert_eq!(verified.chain.len(), 4);
    assert_eq!(verified.chain[1], lower.cert);
}

#[test]
fn unknown_critical_extensions_are_rejected_on_leaf_and_intermediate() {
    let ca = root();
    let map = bundles(&[("example.org", &ca.cert)]);
    let mut extensions = svid_leaf_extensions(WORKLOAD);
    extensions.push(unknown_critical());
    let leaf = ca.leaf(now(), &extensions);
    assert!(matches!(
        verify(&[leaf], &map).unwrap_err(),
        X509Error::UnhandledCriticalExtension(_)
    ));

    let intermediate = ca.sub_ca(
        "intermediate",
        now() - hour(),
        now() + hour(),
        &[
            basic_constraints(true, None),
            key_usage(KEY_CERT_SIGN),
            unknown_critical(),
        ],
    );
    let leaf = intermediate.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let err = verify(&[leaf, intermediate.cert], &map).unwrap_err();
    assert_eq!(
        err,
        X509Error::UnhandledCriticalExtension("1.3.6.1.4.1.311.3201".to_owned())
    );
}

#[test]
fn duplicate_san_extension_is_rejected() {
    let ca = root();
    let mut extensions = svid_leaf_extensions(WORKLOAD);
    extensions.push(san(&["spiffe://example.org/hidden"], &[], false));
    let leaf = ca.leaf(now(), &extensions);
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).unwrap_err(),
        X509Error::DuplicateExtension("subjectAltName")
    );
}

#[test]
fn tampered_leaf_fails_its_signature() {
    let ca = root();
    let leaf = ca.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let mut tampered = leaf.into_vec();
    let at = tampered
        .windows(8)
        .position(|w| w == b"workload")
        .expect("uri inside");
    tampered[at] = b'W';
    let err = verify(
        &[CertDer::new(tampered)],
        &bundles(&[("example.org", &ca.cert)]),
    )
    .unwrap_err();
    assert_eq!(err, X509Error::BadSignature);
}

#[test]
fn expired_root_is_rejected() {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let name = org_name("old root");
    let root_cert = make_cert(
        &key,
        &name,
        &name,
        &key,
        now() - 48 * hour(),
        now() - 24 * hour(),
        &[basic_constraints(true, None), key_usage(KEY_CERT_SIGN)],
    );
    let old = TestCa {
        key,
        name,
        cert: root_cert,
    };
    let leaf = old.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    assert_eq!(
        verify(&[leaf], &bundles(&[("example.org", &old.cert)])).unwrap_err(),
        X509Error::Expired(1)
    );
}

#[test]
fn garbage_never_panics() {
    let ca = root();
    let leaf = ca.leaf(now(), &svid_leaf_extensions(WORKLOAD));
    let map = bundles(&[("example.org", &ca.cert)]);
    let bytes = leaf.as_bytes();
    for len in 0..bytes.len() {
        assert!(verify(&[CertDer::new(bytes[..len].to_vec())], &map).is_err());
        let truncated = verify_svid_der(
            &bytes[..len],
            |t: &TrustDomain| map.get(t).map(Vec::as_slice),
            now(),
        );
        assert!(truncated.is_err(), "truncated to {len}");
    }
    for index in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut mutated = bytes.to_vec();
            mutated[index] ^= flip;
            assert!(
                verify(&[CertDer::new(mutated.clone())], &map).is_err(),
                "flip {flip:#x} at {index}"
            );
            // No key to match: this can only fail; what is checked is that it returns.
            assert!(parse_svid_with_key(&mutated, &[]).is_err());
        }
    }
}

// ---- the authority ----

fn authority() -> Authority {
    Authority::generate_root(
        &td("example.org"),
        KeyAlgorithm::EcdsaP256,
        &CaParams::new("wimsey", 24 * hour()),
        now(),
    )
    .expect("root")
}

fn request<'a>(spiffe_id: &'a SpiffeId, dns: &'a [String]) -> SvidRequest<'a> {
    SvidRequest {
        spiffe_id,
        dns_names: dns,
        ttl: hour(),
    }
}

fn verify_issued(authority: &Authority, chain: &[CertDer]) -> Result<VerifiedSvid, X509Error> {
    let roots = authority.trust_bundle_roots().to_vec();
    verify_svid(
        chain,
        |t: &TrustDomain| (t == authority.trust_domain()).then_some(roots.as_slice()),
        now(),
    )
}

#[test]
fn issued_svids_meet_the_x509_svid_rules() {
    let ca = authority();
    let workload = id(WORKLOAD);
    let dns = vec!["web.default.svc".to_owned()];
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let csr = build_csr(&key, &id("spiffe://example.org/node-wants-this"), &[]).expect("csr");
    let issued = ca
        .issue_from_csr(&csr, &request(&workload, &dns), now())
        .expect("issued");
    assert_eq!(
        issued.chain.len(),
        1,
        "a root signs directly: the wire chain is the leaf"
    );
    let verified = verify_issued(&ca, &issued.chain).expect("verifies");
    assert_eq!(
        verified.spiffe_id, workload,
        "the ID comes from the request, not the CSR"
    );
    assert_eq!(verified.dns_names, dns);

    let leaf = cert::parse_certificate(issued.leaf().expect("leaf").as_bytes()).expect("parses");
    assert!(!leaf.is_ca);
    assert!(leaf.has_digital_signature() && !leaf.has_key_cert_sign() && !leaf.has_crl_sign());
    assert_eq!(leaf.uris, vec![WORKLOAD.to_owned()]);
    assert_eq!(
        leaf.public_key.spki_der,
        key.public_key_spki_der().as_slice()
    );
    assert!(leaf.subject_key_id.is_some());
    assert_eq!(leaf.not_before, now() - CLOCK_SKEW_BACKDATE);
    assert_eq!(leaf.not_after, now() + hour());
    assert_eq!(
        (issued.not_before, issued.not_after),
        (leaf.not_before, leaf.not_after)
    );
    let authority_cert = cert::parse_certificate(ca.certificate().as_bytes()).expect("ca");
    assert_eq!(leaf.issuer, authority_cert.subject);
    assert!(
        authority_cert.is_ca && authority_cert.has_key_cert_sign() && authority_cert.has_crl_sign()
    );
    assert_eq!(authority_cert.uris, vec!["spiffe://example.org".to_owned()]);

    // With the key, as the Workload API hands it out.
    let with_key = parse_svid_with_key(&issued.chain_der(), &key.pkcs8_der()).expect("matches");
    assert_eq!(with_key.spiffe_id, workload);
    let other = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    assert_eq!(
        parse_svid_with_key(&issued.chain_der(), &other.pkcs8_der()).unwrap_err(),
        X509Error::KeyMismatch
    );
}

#[test]
fn long_ids_and_many_dns_names_encode_with_multi_byte_lengths() {
    let ca = authority();
    let segments: Vec<String> = (0..20)
        .map(|i| format!("segment-{i:02}-{}", "x".repeat(40)))
        .collect();
    let long_id = td("example.org")
        .id_from_segments(&segments)
        .expect("long id");
    assert!(long_id.as_str().len() > 900);
    let dns: Vec<String> = (0..40)
        .map(|i| format!("name-{i}.namespace.svc.cluster.local"))
        .collect();
    let spki = SigningKey::generate(KeyAlgorithm::EcdsaP256)
        .expect("key")
        .public_key_spki_der();
    for names in [&dns[..0], &dns[..1], &dns[..]] {
        let issued = ca
            .issue_for_public_key(&spki, &request(&long_id, names), now())
            .expect("issued");
        let _: x509_cert::Certificate =
            der::Decode::from_der(issued.leaf().expect("leaf").as_bytes())
                .expect("x509-cert parses");
        let verified = verify_issued(&ca, &issued.chain).expect("verifies");
        assert_eq!(verified.spiffe_id, long_id);
        assert_eq!(verified.dns_names.as_slice(), names);
    }
}

#[test]
fn times_after_2049_use_generalized_time() {
    let far = UNIX_EPOCH + Duration::from_secs(2_600_000_000); // 2052
    let ca = Authority::generate_root(
        &td("example.org"),
        KeyAlgorithm::EcdsaP256,
        &CaParams::new("wimsey", 24 * hour()),
        far,
    )
    .expect("root");
    let workload = id(WORKLOAD);
    let spki = SigningKey::generate(KeyAlgorithm::EcdsaP256)
        .expect("key")
        .public_key_spki_der();
    let issued = ca
        .issue_for_public_key(&spki, &request(&workload, &[]), far)
        .expect("issued");
    let roots = ca.trust_bundle_roots().to_vec();
    let verified = verify_svid(&issued.chain, |_: &TrustDomain| Some(roots.as_slice()), far)
        .expect("verifies");
    assert_eq!(verified.spiffe_id, workload);
    let leaf = cert::parse_certificate(issued.leaf().expect("leaf").as_bytes()).expect("parses");
    assert_eq!(leaf.not_after, far + hour());
}

#[test]
fn serials_are_positive_and_distinct() {
    let ca = authority();
    let workload = id(WORKLOAD);
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let spki = key.public_key_spki_der();
    let mut serials = std::collections::HashSet::new();
    for _ in 0..64 {
        let issued = ca
            .issue_for_public_key(&spki, &request(&workload, &[]), now())
            .expect("issued");
        let parsed: x509_cert::Certificate =
            der::Decode::from_der(issued.leaf().expect("leaf").as_bytes())
                .expect("x509-cert parses");
        let serial = parsed.tbs_certificate.serial_number.as_bytes().to_vec();
        assert!(serial[0] < 0x80, "positive");
        assert!(serial.len() <= 17);
        assert!(serials.insert(serial));
    }
}

#[test]
fn lifetime_is_capped_by_the_ca() {
    let ca = authority();
    let workload = id(WORKLOAD);
    let spki = SigningKey::generate(KeyAlgorithm::EcdsaP256)
        .expect("key")
        .public_key_spki_der();
    let long = SvidRequest {
        spiffe_id: &workload,
        dns_names: &[],
        ttl: 1000 * hour(),
    };
    let issued = ca
        .issue_for_public_key(&spki, &long, now())
        .expect("issued");
    assert_eq!(issued.not_after, ca.not_after());
    let late = ca.not_after() + Duration::from_secs(1);
    assert_eq!(
        ca.issue_for_public_key(&spki, &long, late).unwrap_err(),
        X509Error::CaNotValidNow
    );
}

#[test]
fn issuance_refuses_bad_requests() {
    let ca = authority();
    let spki = SigningKey::generate(KeyAlgorithm::EcdsaP256)
        .expect("key")
        .public_key_spki_der();
    let foreign = id("spiffe://other.org/workload");
    assert!(matches!(
        ca.issue_for_public_key(&spki, &request(&foreign, &[]), now()),
        Err(X509Error::IdNotInTrustDomain(..))
    ));
    let root_id = id("spiffe://example.org");
    assert!(matches!(
        ca.issue_for_public_key(&spki, &request(&root_id, &[]), now()),
        Err(X509Error::RequestedRootPath(_))
    ));
    let workload = id(WORKLOAD);
    let bad_dns = vec!["not a name".to_owned()];
    assert!(matches!(
        ca.issue_for_public_key(&spki, &request(&workload, &bad_dns), now()),
        Err(X509Error::InvalidDnsName(_))
    ));
    let zero = SvidRequest {
        spiffe_id: &workload,
        dns_names: &[],
        ttl: Duration::ZERO,
    };
    assert_eq!(
        ca.issue_for_public_key(&spki, &zero, now()).unwrap_err(),
        X509Error::ZeroTtl
    );
    assert!(
        ca.issue_for_public_key(b"junk", &request(&workload, &[]), now())
            .is_err()
    );
    assert!(
        ca.issue_from_csr(b"junk", &request(&workload, &[]), now())
            .is_err()
    );
}

#[test]
fn p384_authority_and_keys_work() {
    let ca = Authority::generate_root(
        &td("example.org"),
        KeyAlgorithm::EcdsaP384,
        &CaParams::new("wimsey", 24 * hour()),
        now(),
    )
    .expect("root");
    let workload = id(WORKLOAD);
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
    let csr = build_csr(&key, &workload, &[]).expect("csr");
    let issued = ca
        .issue_from_csr(&csr, &request(&workload, &[]), now())
        .expect("issued");
    verify_issued(&ca, &issued.chain).expect("verifies");
}

#[test]
fn intermediate_authority_sends_its_chain_without_the_root() {
    let root_ca = authority();
    let intermediate_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let chain = root_ca
        .issue_intermediate(
            &intermediate_key.public_key_spki_der(),
            &CaParams::new("wimsey intermediate", 12 * hour()),
            now(),
        )
        .expect("intermediate");
    let intermediate =
        Authority::from_chain(intermediate_key, chain.clone(), &td("example.org"), now())
            .expect("loads");
    assert_eq!(intermediate.chain(), chain.as_slice());
    assert_eq!(
        intermediate.trust_bundle_roots(),
        root_ca.trust_bundle_roots()
    );
    let workload = id(WORKLOAD);
    let spki = SigningKey::generate(KeyAlgorithm::EcdsaP256)
        .expect("key")
        .public_key_spki_der();
    let issued = intermediate
        .issue_for_public_key(&spki, &request(&workload, &[]), now())
        .expect("issued");
    assert_eq!(issued.chain.len(), 2);
    assert_eq!(issued.chain[1], chain[0]);
    let verified = verify_issued(&intermediate, &issued.chain).expect("verifies");
    assert_eq!(verified.chain.len(), 3);
    assert_eq!(issued.not_after, now() + hour());
}

#[test]
fn loading_a_ca_reports_what_is_wrong() {
    let example = td("example.org");
    let root_ca = authority();
    let root_chain = root_ca.chain().to_vec();
    let wrong_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    assert_eq!(
        Authority::from_chain(wrong_key, root_chain.clone(), &example, now()).unwrap_err(),
        X509Error::CaKeyMismatch
    );

    let reload = || SigningKey::from_pkcs8_any(&root_ca.signing_key().pkcs8_der()).expect("key");
    assert!(matches!(
        Authority::from_chain(reload(), root_chain.clone(), &td("other.org"), now()),
        Err(X509Error::CaTrustDomainMismatch(..))
    ));
    assert_eq!(
        Authority::from_chain(reload(), root_chain.clone(), &example, now() + 48 * hour())
            .unwrap_err(),
        X509Error::CaNotValidNow
    );
    assert_eq!(
        Authority::from_chain(reload(), Vec::new(), &example, now()).unwrap_err(),
        X509Error::EmptyChain
    );
    Authority::from_chain(reload(), root_chain, &example, now()).expect("a stored root reloads");

    // A certificate that is not a CA, or lacks keyCertSign.
    let builder_root = root();
    for (extensions, expected) in [
        (
            vec![basic_constraints(false, None), key_usage(KEY_CERT_SIGN)],
            X509Error::CaNotCa,
        ),
        (
            vec![basic_constraints(true, None), key_usage(DIGITAL_SIGNATURE)],
            X509Error::CaNoKeyCertSign,
        ),
    ] {
        let sub = builder_root.sub_ca("sub", now() - hour(), now() + hour(), &extensions);
        let chain = vec![sub.cert, builder_root.cert.clone()];
        assert_eq!(
            Authority::from_chain(sub.key, chain, &example, now()).unwrap_err(),
            expected
        );
    }

    // Broken links and a chain that stops short of a root.
    let sub = builder_root.intermediate("sub", now());
    let stranger = root();
    let broken = vec![sub.cert.clone(), stranger.cert.clone()];
    let key = || SigningKey::from_pkcs8_any(&sub.key.pkcs8_der()).expect("key");
    assert_eq!(
        Authority::from_chain(key(), broken, &example, now()).unwrap_err(),
        X509Error::CaChainBroken(0)
    );
    assert_eq!(
        Authority::from_chain(key(), vec![sub.cert.clone()], &example, now()).unwrap_err(),
        X509Error::CaChainNotRooted
    );
    Authority::from_chain(key(), vec![sub.cert, builder_root.cert], &example, now())
        .expect("a proper chain loads");
}

#[test]
fn path_len_zero_authority_cannot_sign_intermediates() {
    let params = CaParams {
        path_len: Some(0),
        ..CaParams::new("wimsey", 24 * hour())
    };
    let ca = Authority::generate_root(&td("example.org"), KeyAlgorithm::EcdsaP256, &params, now())
        .expect("root");
    let spki = SigningKey::generate(KeyAlgorithm::EcdsaP256)
        .expect("key")
        .public_key_spki_der();
    assert_eq!(
        ca.issue_intermediate(&spki, &CaParams::new("x", hour()), now())
            .unwrap_err(),
        X509Error::CaPathLenForbidsIntermediate
    );
}

#[test]
fn error_labels_are_stable_snake_case() {
    let samples = [
        X509Error::EmptyChain,
        X509Error::NoBundle(td("example.org")),
        X509Error::Malformed("x"),
        X509Error::UnhandledCriticalExtension("1.2".to_owned()),
    ];
    for error in samples {
        let label = error.label();
        assert!(
            label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{label}"
        );
    }
    assert_eq!(
        X509Error::NoUriSan.to_string(),
        "could not get SPIFFE ID: leaf certificate contains no URI SAN"
    );
}

#[test]
fn explicit_ca_false_in_basic_constraints_is_tolerated() {
    // Not DER (DEFAULT FALSE must be omitted) but emitted by some CAs; Go accepts it.
    let ca = root();
    let explicit_false =
        super::asn1::extension(&[0x55, 0x1d, 0x13], true, &[0x30, 0x03, 0x01, 0x01, 0x00]);
    let leaf = ca.leaf(
        now(),
        &[
            explicit_false,
            key_usage(DIGITAL_SIGNATURE),
            san(&[WORKLOAD], &[], false),
        ],
    );
    verify(&[leaf], &bundles(&[("example.org", &ca.cert)])).expect("accepted");
}

#[test]
fn uri_and_dns_name_constraints_are_enforced() {
    let ca = root();
    let map = bundles(&[("example.org", &ca.cert)]);
    let leaf_extensions = vec![
        basic_constraints(false, None),
        key_usage(DIGITAL_SIGNATURE),
        san(&[WORKLOAD], &["web.ns.svc.cluster.local"], false),
    ];
    let check = |constraints: Vec<u8>| {
        let sub = ca.sub_ca(
            "constrained",
            now() - hour(),
            now() + hour(),
            &[
                basic_constraints(true, None),
                key_usage(KEY_CERT_SIGN),
                constraints,
            ],
        );
        let leaf = sub.leaf(now(), &leaf_extensions);
        verify(&[leaf, sub.cert], &map)
    };
    let ok: [(Bases<'_>, Bases<'_>); 4] = [
        (&[(0x86, b"example.org")], &[]),
        (&[(0x86, b"EXAMPLE.org"), (0x82, b"svc.cluster.local")], &[]),
        (&[], &[(0x86, b"other.org"), (0x82, b"evil.example")]),
        (&[(0x82, b".cluster.local")], &[(0x86, b".example.org")]),
    ];
    for (permitted, excluded) in ok {
        check(name_constraints(permitted, excluded)).expect("within constraints");
    }
    let violations: [(Bases<'_>, Bases<'_>); 5] = [
        (&[(0x86, b"other.org")], &[]),
        (&[(0x86, b".example.org")], &[]),
        (&[], &[(0x86, b"example.org")]),
        (&[(0x82, b"svc.other.local")], &[]),
        (&[], &[(0x82, b"cluster.local")]),
    ];
    for (permitted, excluded) in violations {
        let err = check(name_constraints(permitted, excluded)).unwrap_err();
        assert!(
            matches!(err, X509Error::NameConstraintViolation(_)),
            "{err}"
        );
    }
    // A directoryName constraint is not evaluated here, so the CA is refused, not trusted blindly.
    let directory: &[u8] = &org_name("x");
    let err = check(name_constraints(&[(0xa4, directory)], &[])).unwrap_err();
    assert_eq!(err, X509Error::UnsupportedNameConstraint);
}
