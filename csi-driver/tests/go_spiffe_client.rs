//! go-spiffe, the reference Go client, against our per-pod Workload API server: our small client
//! in kind-tests/clients/workload-fetch fetches an X.509-SVID and a JWT-SVID from
//! `SPIFFE_ENDPOINT_SOCKET`, verifies them against the bundles the server streams, and
//! validates the JWT-SVID through ValidateJWTSVID. `WORKLOAD_FETCH` may name a prebuilt binary;
//! otherwise the test builds it with `go build`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{ADMIN, Server, TestPod, WEB, World};
use wimsey_csi::identity::IdentitySnapshot;

fn workload_fetch() -> PathBuf {
    if let Some(bin) = std::env::var_os("WORKLOAD_FETCH") {
        return PathBuf::from(bin);
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("workload-fetch");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kind-tests/clients/workload-fetch");
    let status = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GOFLAGS", "-mod=mod")
        .status()
        .expect("run go build (Go is required for the go-spiffe interop test)");
    assert!(status.success(), "building workload-fetch failed");
    out
}

async fn run_client(server: &Server, audience: &str) -> (bool, String) {
    let output = tokio::process::Command::new(workload_fetch())
        .args(["-audience", audience, "-timeout", "20s"])
        .env("SPIFFE_ENDPOINT_SOCKET", server.endpoint())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("client finishes in time")
        .expect("run workload-fetch");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_spiffe_fetches_and_verifies_x509_and_jwt_svids() {
    let world = World::new();
    let server = Server::start(TestPod::new(
        &world.issuer,
        world.issued(&[(WEB, "internal"), (ADMIN, "")]),
    ))
    .await;
    let (ok, out) = run_client(&server, "api.example.org").await;
    assert!(ok, "go-spiffe client failed: {out}");
    assert!(
        out.contains(&format!("x509 {WEB} hint=internal chain=1")),
        "{out}"
    );
    assert!(
        out.contains(&format!("jwt {WEB} aud=api.example.org")),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "ok"), "{out}");
    assert!(
        !out.contains("PRIVATE KEY") && !out.contains("eyJ"),
        "prints no key and no token: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_spiffe_reports_a_pod_without_identity() {
    let world = World::new();
    let server = Server::start(TestPod::new(&world.issuer, IdentitySnapshot::NoIdentity)).await;
    // A one-shot fetch reports the status at once (only go-spiffe's watchers retry it).
    let output = tokio::process::Command::new(workload_fetch())
        .args(["-timeout", "20s"])
        .env("SPIFFE_ENDPOINT_SOCKET", server.endpoint())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("client finishes in time")
        .expect("run workload-fetch");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(text.contains("fetch X.509-SVID"), "{text}");
    assert!(text.contains("PermissionDenied"), "{text}");
    assert!(text.contains("no identity issued"), "{text}");
}
