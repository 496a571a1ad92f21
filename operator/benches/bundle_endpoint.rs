//! `make bench-federation`: our bundle endpoint against SPIRE Server v1.13.3's, side by side in
//! the same run on the same machine, both over https_spiffe on loopback, measured with the same
//! client: wimsey's fetcher, a new TLS connection per request as a federation peer polls.
//! Prints requests/s and latency p50/p99 at 1 and 16 concurrent clients, and the server's
//! resident memory after the load.

// A benchmark: a broken setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use wimsey_core::reserved::bundle_endpoint_id;
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_operator::federation::fetch::{EndpointAuth, FetchLimits, fetch_bundle};

#[path = "../tests/support/domain.rs"]
mod domain;
#[path = "../tests/support/spire.rs"]
mod spire;

const RUN: Duration = Duration::from_secs(10);

struct Figures {
    requests_per_second: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

async fn load(url: &url::Url, td: &TrustDomain, auth: &EndpointAuth, clients: usize) -> Figures {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, td, auth) = (url.clone(), td.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while started.elapsed() < RUN {
                let at = Instant::now();
                match fetch_bundle(&url, &td, &auth, FetchLimits::default()).await {
                    Ok(_) => latencies.push(at.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        requests_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        errors,
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo test --all-targets` runs this binary too, unoptimized, without `--bench` and without
    // SPIRE: a few fetches prove the bench still works.
    let smoke = !std::env::args().any(|a| a == "--bench");
    runtime.block_on(async {
        let ours = domain::Domain::new("wimsey.test");
        let (our_url, _stop) = domain::bundle_endpoint(&ours).await;
        let our_auth = domain::spiffe_auth(&ours);
        if smoke {
            for _ in 0..5 {
                fetch_bundle(&our_url, &ours.td, &our_auth, FetchLimits::default())
                    .await
                    .unwrap();
            }
            println!("bench smoke run (5 fetches) ok; `make bench-federation` measures");
            return;
        }

        let mut options = spire::SpireOptions::new("spire.test");
        options.refresh_hint = Duration::from_secs(300);
        let spire = tokio::task::spawn_blocking(move || spire::SpireServer::start(options))
            .await
            .unwrap()
            .unwrap();
        let spire = Arc::new(spire);
        let s = spire.clone();
        let spire_bundle = tokio::task::spawn_blocking(move || s.bundle()).await.unwrap().unwrap();
        let spire_url = url::Url::parse(&spire.bundle_endpoint_url()).unwrap();
        let spire_td = TrustDomain::new("spire.test").unwrap();
        let spire_auth = EndpointAuth::Spiffe {
            id: SpiffeId::parse(&spire.server_id()).unwrap(),
            authorities: spire_bundle.x509_authorities.clone(),
        };
        assert_eq!(
            bundle_endpoint_id(&ours.td).unwrap().as_str(),
            "spiffe://wimsey.test/wimsey/bundle-endpoint"
        );

        println!(
            "bundle endpoint, https_spiffe on loopback, a new TLS connection per GET, {} s per row",
            RUN.as_secs()
        );
        println!(
            "{:<34} {:>8} {:>12} {:>10} {:>10} {:>7}",
            "server", "clients", "requests/s", "p50 ms", "p99 ms", "errors"
        );
        for clients in [1, 16] {
            for (name, url, td, auth) in [
                ("wimsey-operator (in process)", &our_url, &ours.td, &our_auth),
                ("spire-server v1.13.3", &spire_url, &spire_td, &spire_auth),
            ] {
                let f = load(url, td, auth, clients).await;
                println!(
                    "{:<34} {:>8} {:>12.0} {:>10.2} {:>10.2} {:>7}",
                    name,
                    clients,
                    f.requests_per_second,
                    f.p50.as_secs_f64() * 1000.0,
                    f.p99.as_secs_f64() * 1000.0,
                    f.errors
                );
            }
        }
        println!(
            "resident memory after the load: spire-server {:.1} MiB (whole server); wimsey's endpoint runs inside this benchmark process ({:.1} MiB, client included)",
            rss_mib(spire.pid()),
            rss_mib(std::process::id())
        );
    });
}
