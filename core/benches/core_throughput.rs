//! `make bench-core`: wimsey-core's signing and validation throughput, printed beside the raw
//! ECDSA P-256 sign and verify rates that `openssl speed -seconds 3 ecdsap256` measures on the same
//! machine in the same run. All figures are single-threaded (per core).
//!
//! Target: X.509-SVID issuance at >= 70% of the raw sign rate.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::jwk::PublicJwk;
use wimsey_core::jose::jwt_svid::{
    JwtSvidClaims, JwtSvidValidation, mint_jwt_svid, validate_jwt_svid,
};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::{Authority, CaParams, SvidRequest, build_csr, verify_svid};
use wimsey_core::{SpiffeId, TrustDomain};

const RUN_FOR: Duration = Duration::from_secs(3);

/// Runs `op` repeatedly for RUN_FOR after a short warm-up and returns operations per second.
fn rate(mut op: impl FnMut()) -> f64 {
    let warm_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm_until {
        op();
    }
    let start = Instant::now();
    let mut count = 0u64;
    loop {
        for _ in 0..64 {
            op();
        }
        count += 64;
        let elapsed = start.elapsed();
        if elapsed >= RUN_FOR {
            return count as f64 / elapsed.as_secs_f64();
        }
    }
}

/// `openssl speed -seconds 3 ecdsap256` -> (sign/s, verify/s), from its summary line
/// ` 256 bits ecdsa (nistp256)   0.0000s   0.0001s  45000.0  15000.0`.
fn openssl_p256() -> Result<(f64, f64), String> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("ecdsa (nistp256)"))
        .ok_or_else(|| format!("no nistp256 line in openssl output:\n{stdout}"))?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers.as_slice() {
        [.., sign, verify] => Ok((*sign, *verify)),
        _ => Err(format!("unexpected openssl line: {line}")),
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let now = SystemTime::now();
    let td = TrustDomain::new("bench.example.org").expect("trust domain");
    let ca = Authority::generate_root(
        &td,
        KeyAlgorithm::EcdsaP256,
        &CaParams::new("wimsey bench", Duration::from_secs(86400)),
        now,
    )
    .expect("CA");
    let id = SpiffeId::parse("spiffe://bench.example.org/ns/default/sa/web").expect("id");
    let dns = vec!["web.default.svc".to_owned()];
    let request = SvidRequest {
        spiffe_id: &id,
        dns_names: &dns,
        ttl: Duration::from_secs(3600),
    };
    let workload_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let csr = build_csr(&workload_key, &id, &dns).expect("csr");
    let spki = workload_key.public_key_spki_der();

    let jwt_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("jwt key");
    let jwk = PublicJwk::for_signing_key(&jwt_key);
    let kid = jwk.thumbprint();
    let mut bundle = TrustDomainBundle::new(td.clone());
    bundle.x509_authorities = ca
        .trust_bundle_roots()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    bundle.jwt_authorities.insert(kid.clone(), jwk);
    let audience = vec!["bench-audience".to_owned()];
    let jwt_claims = JwtSvidClaims {
        spiffe_id: &id,
        audience: &audience,
        issued_at: now,
        expires_at: now + Duration::from_secs(300),
        jti: None,
        issuer: None,
    };
    let token = mint_jwt_svid(&jwt_key, &kid, &jwt_claims).expect("mint");
    let svid = ca.issue_from_csr(&csr, &request, now).expect("issue");
    let roots = ca.trust_bundle_roots().to_vec();
    let validation = JwtSvidValidation::default();

    eprintln!("measuring (3 s each, single thread)...");
    let (openssl_sign, openssl_verify) = match openssl_p256() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let raw_sign = rate(|| {
        black_box(
            jwt_key
                .sign_asn1(black_box(
                    b"sixty-four bytes of message for a raw signing rate......",
                ))
                .expect("sign"),
        );
    });
    let issue_csr = rate(|| {
        black_box(
            ca.issue_from_csr(black_box(&csr), &request, now)
                .expect("issue"),
        );
    });
    let issue_key = rate(|| {
        black_box(
            ca.issue_for_public_key(black_box(&spki), &request, now)
                .expect("issue"),
        );
    });
    let jwt_mint = rate(|| {
        black_box(mint_jwt_svid(&jwt_key, &kid, black_box(&jwt_claims)).expect("mint"));
    });
    let x509_verify = rate(|| {
        black_box(
            verify_svid(
                black_box(&svid.chain),
                |t: &TrustDomain| (*t == td).then_some(roots.as_slice()),
                now,
            )
            .expect("verify"),
        );
    });
    let jwt_validate = rate(|| {
        black_box(
            validate_jwt_svid(
                black_box(&token),
                "bench-audience",
                &bundle,
                now,
                &validation,
            )
            .expect("valid"),
        );
    });

    println!();
    println!(
        "wimsey-core throughput, single thread, ECDSA P-256 (reference: openssl speed -seconds 3 ecdsap256, same run)"
    );
    println!(
        "{:<44} {:>12} {:>14} {:>8} {:>8}",
        "operation", "ops/s", "reference/s", "ratio", "target"
    );
    let row = |name: &str, ops: f64, reference: f64, target: Option<f64>| {
        let ratio = ops / reference;
        let verdict = match target {
            Some(t) if ratio >= t => format!(">={t:.2} ok"),
            Some(t) => format!(">={t:.2} MISS"),
            None => String::new(),
        };
        println!("{name:<44} {ops:>12.0} {reference:>14.0} {ratio:>8.2} {verdict:>8}");
    };
    println!("{:<44} {:>12.0}", "openssl ECDSA P-256 sign", openssl_sign);
    println!(
        "{:<44} {:>12.0}",
        "openssl ECDSA P-256 verify", openssl_verify
    );
    row(
        "aws-lc ECDSA P-256 sign (our SigningKey)",
        raw_sign,
        openssl_sign,
        None,
    );
    row(
        "X.509-SVID issue from CSR (verify + sign)",
        issue_csr,
        openssl_sign,
        Some(0.70),
    );
    row(
        "X.509-SVID issue for a public key (sign)",
        issue_key,
        openssl_sign,
        Some(0.70),
    );
    row("JWT-SVID mint", jwt_mint, openssl_sign, None);
    row(
        "X.509-SVID verify (chain to bundle root)",
        x509_verify,
        openssl_verify,
        None,
    );
    row("JWT-SVID validate", jwt_validate, openssl_verify, None);
    println!();
    println!(
        "CSR issuance includes one ECDSA verify (proof of possession): the bound is 1/(1/sign + 1/verify) = {:.0}/s = {:.2} of sign",
        1.0 / (1.0 / openssl_sign + 1.0 / openssl_verify),
        (1.0 / (1.0 / openssl_sign + 1.0 / openssl_verify)) / openssl_sign
    );
}
