//! Interop with the openssl 3 CLI, both ways: openssl verifies what our authority issues (root and
//! intermediate cases; tampered and wrong-CA cases fail), and we accept openssl-made CSRs and
//! verify openssl-made SVIDs (ECDSA and RSA-PSS). These tests read the real clock because
//! `openssl verify` does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::{
    Authority, CaParams, CertDer, SvidRequest, X509Error, build_csr, parse_svid_with_key, pem,
    verify_svid,
};
use wimsey_core::{SpiffeId, TrustDomain};

/// A scratch directory removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("wimsey-x509-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    fn write(&self, file: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, contents).expect("write");
        path
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs openssl; returns whether it succeeded and its combined output.
fn openssl(args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl 3 CLI is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn openssl_verify(
    bundle: &Path,
    untrusted: Option<&Path>,
    svid: &Path,
    purpose: &str,
) -> (bool, String) {
    let mut args = vec!["verify", "-purpose", purpose, "-CAfile", path_str(bundle)];
    if let Some(intermediates) = untrusted {
        args.extend(["-untrusted", path_str(intermediates)]);
    }
    args.push(path_str(svid));
    openssl(&args)
}

fn example_org() -> TrustDomain {
    TrustDomain::new("example.org").expect("td")
}

fn root_authority(now: SystemTime) -> Authority {
    Authority::generate_root(
        &example_org(),
        KeyAlgorithm::EcdsaP256,
        &CaParams::new("wimsey", Duration::from_secs(86_400)),
        now,
    )
    .expect("root")
}

fn issue(authority: &Authority, now: SystemTime) -> (Vec<CertDer>, SigningKey) {
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").expect("id");
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let csr = build_csr(&key, &id, &[]).expect("csr");
    let dns = vec!["web.default.svc".to_owned()];
    let request = SvidRequest {
        spiffe_id: &id,
        dns_names: &dns,
        ttl: Duration::from_secs(3600),
    };
    (
        authority
            .issue_from_csr(&csr, &request, now)
            .expect("issued")
            .chain,
        key,
    )
}

#[test]
fn openssl_verifies_an_svid_from_a_self_signed_root() {
    let now = SystemTime::now();
    let authority = root_authority(now);
    let (chain, _) = issue(&authority, now);
    assert_eq!(chain.len(), 1);
    let dir = ScratchDir::new("root");
    let bundle = dir.write(
        "bundle.pem",
        pem::encode_certificates(authority.trust_bundle_roots()).expect("pem"),
    );
    let svid = dir.write("svid.pem", pem::encode_certificates(&chain).expect("pem"));
    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl_verify(&bundle, None, &svid, purpose);
        assert!(ok, "openssl verify ({purpose}) failed: {out}");
        assert!(out.contains(": OK"), "{out}");
    }

    let (ok, text) = openssl(&["x509", "-in", path_str(&svid), "-noout", "-text"]);
    assert!(ok, "{text}");
    for expected in [
        "URI:spiffe://example.org/ns/default/sa/web",
        "DNS:web.default.svc",
        "X509v3 Basic Constraints: critical",
        "CA:FALSE",
        "X509v3 Key Usage: critical",
        "Digital Signature",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let root_pem = dir.path("bundle.pem");
    let (ok, text) = openssl(&["x509", "-in", path_str(&root_pem), "-noout", "-text"]);
    assert!(ok, "{text}");
    for expected in [
        "CA:TRUE",
        "Certificate Sign, CRL Sign",
        "URI:spiffe://example.org",
    ] {
        assert!(
            text.contains(expected),
            "missing {expected:?} in root:\n{text}"
        );
    }
}

#[test]
fn openssl_verifies_an_svid_from_an_intermediate_and_rejects_tampering_and_wrong_ca() {
    let now = SystemTime::now();
    let root = root_authority(now);
    let intermediate_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let intermediate_chain = root
        .issue_intermediate(
            &intermediate_key.public_key_spki_der(),
            &CaParams::new("wimsey intermediate", Duration::from_secs(43_200)),
            now,
        )
        .expect("intermediate");
    let intermediate =
        Authority::from_chain(intermediate_key, intermediate_chain, &example_org(), now)
            .expect("loads");
    let (chain, key) = issue(&intermediate, now);
    assert_eq!(chain.len(), 2, "leaf + intermediate, root excluded");

    let dir = ScratchDir::new("intermediate");
    let bundle = dir.write(
        "bundle.pem",
        pem::encode_certificates(intermediate.trust_bundle_roots()).expect("pem"),
    );
    let intermediates = dir.write(
        "intermediates.pem",
        pem::encode_certificates(&chain[1..]).expect("pem"),
    );
    let svid = dir.write(
        "svid.pem",
        pem::encode_certificates(&chain[..1]).expect("pem"),
    );
    let (ok, out) = openssl_verify(&bundle, Some(&intermediates), &svid, "sslclient");
    assert!(ok, "openssl verify failed: {out}");

    // Without the intermediate the path cannot be built.
    let (ok, _) = openssl_verify(&bundle, None, &svid, "sslclient");
    assert!(!ok, "verification must fail without the intermediate");

    // A flipped bit in the leaf's signature.
    let mut tampered = chain[0].as_bytes().to_vec();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x01;
    let tampered_path = dir.write(
        "tampered.pem",
        pem::encode_certificates(&[tampered]).expect("pem"),
    );
    let (ok, out) = openssl_verify(&bundle, Some(&intermediates), &tampered_path, "sslclient");
    assert!(!ok, "tampered SVID verified: {out}");

    // A different trust anchor.
    let other = root_authority(now);
    let wrong_bundle = dir.write(
        "wrong.pem",
        pem::encode_certificates(other.trust_bundle_roots()).expect("pem"),
    );
    let (ok, out) = openssl_verify(&wrong_bundle, Some(&intermediates), &svid, "sslclient");
    assert!(!ok, "SVID verified under the wrong CA: {out}");

    // Our own verifier agrees, and the SVID matches its key as written to disk (PEM round trip).
    let svid_pem = std::fs::read_to_string(&svid).expect("read")
        + &std::fs::read_to_string(&intermediates).expect("read");
    let parsed_chain = pem::decode_certificates(&svid_pem).expect("pem");
    let roots =
        pem::decode_certificates(&std::fs::read_to_string(&bundle).expect("read")).expect("pem");
    let td = example_org();
    let verified = verify_svid(
        &parsed_chain,
        |t: &TrustDomain| (*t == td).then_some(roots.as_slice()),
        now,
    )
    .expect("verifies");
    assert_eq!(verified.chain.len(), 3);
    let key_pem = pem::encode_private_key(&key.pkcs8_der()).expect("pem");
    let key_der = pem::decode_private_key(&key_pem).expect("pem");
    parse_svid_with_key(&wimsey_core::x509::concat_der(&parsed_chain), &key_der)
        .expect("key matches");
}

#[test]
fn openssl_made_csrs_are_accepted_for_their_key_only() {
    let now = SystemTime::now();
    let authority = root_authority(now);
    let dir = ScratchDir::new("csr");
    let id = SpiffeId::parse("spiffe://example.org/from-openssl").expect("id");
    let request = SvidRequest {
        spiffe_id: &id,
        dns_names: &[],
        ttl: Duration::from_secs(600),
    };
    let key_specs: [&[&str]; 3] = [
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    ];
    for (index, spec) in key_specs.iter().enumerate() {
        let key_path = dir.path(&format!("key{index}.pem"));
        let csr_path = dir.path(&format!("csr{index}.der"));
        let mut args = vec!["genpkey"];
        args.extend_from_slice(spec);
        args.extend(["-out", path_str(&key_path)]);
        let (ok, out) = openssl(&args);
        assert!(ok, "{out}");
        let (ok, out) = openssl(&[
            "req",
            "-new",
            "-key",
            path_str(&key_path),
            "-subj",
            "/CN=ignored/O=ignored",
            "-addext",
            "subjectAltName=URI:spiffe://example.org/the-node-asks-for-this",
            "-outform",
            "DER",
            "-out",
            path_str(&csr_path),
        ]);
        assert!(ok, "{out}");
        let csr = std::fs::read(&csr_path).expect("csr");
        let issued = authority
            .issue_from_csr(&csr, &request, now)
            .expect("openssl CSR accepted");
        assert_eq!(issued.spiffe_id, id);

        // The issued certificate carries the CSR's public key.
        let svid = dir.write(
            &format!("svid{index}.pem"),
            pem::encode_certificates(&issued.chain).expect("pem"),
        );
        let (ok, cert_key) = openssl(&["x509", "-in", path_str(&svid), "-noout", "-pubkey"]);
        assert!(ok, "{cert_key}");
        let (ok, csr_key) = openssl(&["pkey", "-in", path_str(&key_path), "-pubout"]);
        assert!(ok, "{csr_key}");
        assert_eq!(cert_key.trim(), csr_key.trim());

        // A corrupted signature is refused: no proof of possession.
        let mut forged = csr.clone();
        let at = forged.len() - 2;
        forged[at] ^= 0x01;
        let err = authority
            .issue_from_csr(&forged, &request, now)
            .unwrap_err();
        assert!(
            matches!(err, X509Error::CsrSignature | X509Error::Malformed(_)),
            "{err}"
        );
    }
}

#[test]
fn openssl_made_svids_verify_with_ecdsa_and_rsa_pss_and_pkcs1() {
    let dir = ScratchDir::new("openssl-ca");
    let leaf_ext = dir.write(
        "leaf.ext",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=URI:spiffe://example.org/openssl-made\n",
    );
    let cases: [(&str, &[&str], &[&str]); 3] = [
        (
            "ec",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            &["-sha384"],
        ),
        (
            "rsa-pss",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            &[
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:digest",
            ],
        ),
        (
            "rsa-pkcs1",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            &["-sha256"],
        ),
    ];
    for (name, ca_key_spec, sign_opts) in cases {
        let ca_key = dir.path(&format!("{name}-ca.key"));
        let ca_cert = dir.path(&format!("{name}-ca.pem"));
        let leaf_key = dir.path(&format!("{name}-leaf.key"));
        let leaf_csr = dir.path(&format!("{name}-leaf.csr"));
        let leaf_cert = dir.path(&format!("{name}-leaf.pem"));
        let mut args = vec!["genpkey"];
        args.extend_from_slice(ca_key_spec);
        args.extend(["-out", path_str(&ca_key)]);
        assert!(openssl(&args).0);
        let mut args = vec![
            "req",
            "-x509",
            "-new",
            "-key",
            path_str(&ca_key),
            "-subj",
            "/O=openssl root",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "subjectAltName=URI:spiffe://example.org",
            "-out",
            path_str(&ca_cert),
        ];
        args.extend_from_slice(sign_opts);
        let (ok, out) = openssl(&args);
        assert!(ok, "{name}: {out}");
        assert!(
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                path_str(&leaf_key)
            ])
            .0
        );
        assert!(
            openssl(&[
                "req",
                "-new",
                "-key",
                path_str(&leaf_key),
                "-subj",
                "/O=leaf",
                "-out",
                path_str(&leaf_csr)
            ])
            .0
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            path_str(&leaf_csr),
            "-CA",
            path_str(&ca_cert),
            "-CAkey",
            path_str(&ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            path_str(&leaf_ext),
            "-out",
            path_str(&leaf_cert),
        ];
        args.extend_from_slice(sign_opts);
        let (ok, out) = openssl(&args);
        assert!(ok, "{name}: {out}");

        let roots = pem::decode_certificates(&std::fs::read_to_string(&ca_cert).expect("read"))
            .expect("pem");
        let chain = pem::decode_certificates(&std::fs::read_to_string(&leaf_cert).expect("read"))
            .expect("pem");
        let td = example_org();
        // openssl stamps notBefore with the current second, so validate at a fresh time.
        let now = SystemTime::now();
        let verified = verify_svid(
            &chain,
            |t: &TrustDomain| (*t == td).then_some(roots.as_slice()),
            now,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            verified.spiffe_id.as_str(),
            "spiffe://example.org/openssl-made"
        );

        // The openssl-made leaf and its key pass the received-SVID check too.
        let key_der = pem::decode_private_key(&std::fs::read_to_string(&leaf_key).expect("read"))
            .expect("pem");
        parse_svid_with_key(chain[0].as_bytes(), &key_der)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn name_constraints_agree_with_openssl() {
    let dir = ScratchDir::new("nc");
    let leaf_ext = dir.write(
        "leaf.ext",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         subjectAltName=URI:spiffe://example.org/constrained,DNS:web.ns.svc.cluster.local\n",
    );
    let leaf_key = dir.path("leaf.key");
    let leaf_csr = dir.path("leaf.csr");
    assert!(
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(&leaf_key)
        ])
        .0
    );
    assert!(
        openssl(&[
            "req",
            "-new",
            "-key",
            path_str(&leaf_key),
            "-subj",
            "/O=leaf",
            "-out",
            path_str(&leaf_csr)
        ])
        .0
    );
    let cases = [
        ("permitted;URI:example.org", true),
        ("permitted;URI:.example.org", false),
        ("excluded;URI:example.org", false),
        (
            "permitted;URI:example.org,permitted;DNS:cluster.local",
            true,
        ),
        ("permitted;URI:example.org,permitted;DNS:other.local", false),
    ];
    for (index, (constraint, expected)) in cases.into_iter().enumerate() {
        let ca_key = dir.path(&format!("ca{index}.key"));
        let ca_cert = dir.path(&format!("ca{index}.pem"));
        let leaf_cert = dir.path(&format!("leaf{index}.pem"));
        assert!(
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                path_str(&ca_key)
            ])
            .0
        );
        let name_constraints = format!("nameConstraints=critical,{constraint}");
        let (ok, out) = openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            path_str(&ca_key),
            "-subj",
            "/O=constrained root",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            &name_constraints,
            "-out",
            path_str(&ca_cert),
        ]);
        assert!(ok, "{out}");
        let (ok, out) = openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&leaf_csr),
            "-CA",
            path_str(&ca_cert),
            "-CAkey",
            path_str(&ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            path_str(&leaf_ext),
            "-out",
            path_str(&leaf_cert),
        ]);
        assert!(ok, "{out}");

        let (openssl_ok, out) = openssl_verify(&ca_cert, None, &leaf_cert, "sslclient");
        assert_eq!(openssl_ok, expected, "openssl on {constraint}: {out}");
        let roots = pem::decode_certificates(&std::fs::read_to_string(&ca_cert).expect("read"))
            .expect("pem");
        let chain = pem::decode_certificates(&std::fs::read_to_string(&leaf_cert).expect("read"))
            .expect("pem");
        let td = example_org();
        let ours = verify_svid(
            &chain,
            |t: &TrustDomain| (*t == td).then_some(roots.as_slice()),
            SystemTime::now(),
        );
        assert_eq!(ours.is_ok(), expected, "wimsey on {constraint}: {ours:?}");
    }
}
