//! The per-pod JWT-SVID cache over a pod's real Unix socket: repeated FetchJWTSVID calls are
//! answered from memory until the token's half-life, per identity and audience set, bounded in
//! size, and forgotten when the pod's identity changes. Mints are counted in the test source.

mod support;

use std::time::Duration;

use support::{ADMIN, Server, TestPod, WEB, World};
use tonic::Code;
use tonic::transport::Channel;
use wimsey_core::jose::jws::CompactJws;
use wimsey_csi::identity::IdentitySnapshot;
use wimsey_csi::workload_api::WorkloadApiLimits;
use wimsey_proto::workload as pb;
use wimsey_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

async fn fetch(
    client: &mut SpiffeWorkloadApiClient<Channel>,
    audience: &[&str],
) -> Result<Vec<pb::Jwtsvid>, tonic::Status> {
    Ok(client
        .fetch_jwtsvid(support::with_header(pb::JwtsvidRequest {
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
            spiffe_id: String::new(),
        }))
        .await?
        .into_inner()
        .svids)
}

async fn token(client: &mut SpiffeWorkloadApiClient<Channel>, audience: &[&str]) -> String {
    let mut svids = fetch(client, audience).await.expect("FetchJWTSVID");
    assert_eq!(svids.len(), 1);
    svids.remove(0).svid
}

fn audience_claim(token: &str) -> serde_json::Value {
    CompactJws::parse(token).expect("JWS").claims()["aud"].clone()
}

#[tokio::test]
async fn a_repeated_fetch_answers_the_same_token_without_a_mint() {
    let world = World::new();
    let server = Server::start(TestPod::new(&world.issuer, world.issued(&[(WEB, "")]))).await;
    let mut client = support::raw_client(&server.socket).await;

    let first = token(&mut client, &["b", "a"]).await;
    assert_eq!(server.pod.mints(), 1);
    assert_eq!(audience_claim(&first), serde_json::json!(["a", "b"]));
    assert_eq!(token(&mut client, &["b", "a"]).await, first, "same request");
    assert_eq!(token(&mut client, &["a", "b"]).await, first, "other order");
    assert_eq!(
        token(&mut client, &["a", "b", "a"]).await,
        first,
        "duplicate"
    );
    // Another connection to the same pod's socket shares the cache.
    let mut other = support::raw_client(&server.socket).await;
    assert_eq!(token(&mut other, &["a", "b"]).await, first);
    assert_eq!(server.pod.mints(), 1, "one mint for all of them");

    let other_set = token(&mut client, &["a"]).await;
    assert_ne!(other_set, first);
    assert_eq!(server.pod.mints(), 2, "a new audience set is minted");

    // Every identity of the pod is cached on its own.
    server.pod.publish(world.issued(&[(WEB, ""), (ADMIN, "")]));
    assert_eq!(fetch(&mut client, &["x"]).await.expect("all").len(), 2);
    assert_eq!(server.pod.mints(), 4);
    assert_eq!(fetch(&mut client, &["x"]).await.expect("all").len(), 2);
    assert_eq!(server.pod.mints(), 4);
}

#[tokio::test]
async fn a_token_past_its_half_life_is_minted_anew() {
    let world = World::new();
    let server = Server::start(TestPod::new(&world.issuer, world.issued(&[(WEB, "")]))).await;
    let mut client = support::raw_client(&server.socket).await;

    // Issued 200 s ago with a 300 s lifetime: valid, but 50 s past its half-life.
    server.pod.backdate_jwt_svids(Duration::from_secs(200));
    let first = token(&mut client, &["aud"]).await;
    let second = token(&mut client, &["aud"]).await;
    assert_eq!(server.pod.mints(), 2, "never served from the cache");
    assert_ne!(first, second);

    server.pod.backdate_jwt_svids(Duration::ZERO);
    let fresh = token(&mut client, &["aud"]).await;
    assert_eq!(token(&mut client, &["aud"]).await, fresh);
    assert_eq!(server.pod.mints(), 3);
}

#[tokio::test]
async fn a_changed_or_revoked_identity_drops_the_cache() {
    let world = World::new();
    let server = Server::start(TestPod::new(&world.issuer, world.issued(&[(WEB, "")]))).await;
    let mut client = support::raw_client(&server.socket).await;
    let before = token(&mut client, &["aud"]).await;

    // A rotation: the next call mints.
    server.pod.publish(world.issued(&[(WEB, "")]));
    let rotated = token(&mut client, &["aud"]).await;
    assert_ne!(rotated, before);
    assert_eq!(server.pod.mints(), 2);

    // Revoked: no token from memory.
    server.pod.publish(IdentitySnapshot::NoIdentity);
    let status = fetch(&mut client, &["aud"]).await.expect_err("revoked");
    assert_eq!(status.code(), Code::PermissionDenied);
    server.pod.publish(world.issued(&[(WEB, "")]));
    let restored = token(&mut client, &["aud"]).await;
    assert_ne!(restored, rotated);
    assert_eq!(server.pod.mints(), 3);
}

#[tokio::test]
async fn the_cache_size_is_bounded_and_drops_the_oldest() {
    let world = World::new();
    let server = Server::start_with_limits(
        TestPod::new(&world.issuer, world.issued(&[(WEB, "")])),
        WorkloadApiLimits {
            max_cached_jwt_svids: 2,
            ..WorkloadApiLimits::default()
        },
    )
    .await;
    let mut client = support::raw_client(&server.socket).await;
    let a = token(&mut client, &["a"]).await;
    token(&mut client, &["b"]).await;
    token(&mut client, &["c"]).await;
    assert_eq!(server.pod.mints(), 3);
    // "b" and "c" are the two kept.
    token(&mut client, &["c"]).await;
    token(&mut client, &["b"]).await;
    assert_eq!(server.pod.mints(), 3);
    let a_again = token(&mut client, &["a"]).await;
    assert_ne!(a_again, a, "the oldest was evicted");
    assert_eq!(server.pod.mints(), 4);
}
