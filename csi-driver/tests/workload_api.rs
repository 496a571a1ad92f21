//! The per-pod Workload API server over a real Unix socket, driven by real clients: the `spiffe`
//! crate (WorkloadApiClient, X509Source) and a plain tonic client of our generated stubs.
//! Identities come from core's real Authority and real JWT/WIT signing keys.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use spiffe::{WorkloadApiClient, WorkloadApiError as ClientError, X509Source};
use support::{ADMIN, FEDERATED_TRUST_DOMAIN, Server, TRUST_DOMAIN, TestPod, WEB, World};
use tokio_stream::StreamExt;
use tonic::Code;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::signing_key_from_private_jwk;
use wimsey_core::jose::wimse::{WitValidation, validate_wit};
use wimsey_core::x509::verify_svid;
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_csi::identity::IdentitySnapshot;
use wimsey_proto::workload as pb;

/// Upper bound for anything a test waits on; the wait ends as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(20);

async fn serve(world: &World, snapshot: IdentitySnapshot) -> Server {
    Server::start(TestPod::new(&world.issuer, snapshot)).await
}

async fn spiffe_client(server: &Server) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(server.endpoint())
        .await
        .expect("connect spiffe client")
}

fn status_of(error: ClientError) -> String {
    error.to_string()
}

#[tokio::test]
async fn spiffe_client_fetches_an_x509_context_that_verifies_with_core() {
    let world = World::new();
    let server = serve(
        &world,
        world.issued(&[(WEB, "internal"), (ADMIN, "external")]),
    )
    .await;
    let client = spiffe_client(&server).await;

    let context = client.fetch_x509_context().await.expect("x509 context");
    let svids = context.svids();
    assert_eq!(svids.len(), 2);
    assert_eq!(
        svids[0].spiffe_id().to_string(),
        WEB,
        "default identity first"
    );
    assert_eq!(svids[0].hint(), Some("internal"));
    assert_eq!(svids[1].spiffe_id().to_string(), ADMIN);

    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("td");
    let bundle = context.bundle_set().get(&td).expect("own bundle");
    let roots: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(roots, world.issuer.bundle().x509_authorities);
    let partner = spiffe::TrustDomain::new(FEDERATED_TRUST_DOMAIN).expect("td");
    assert!(
        context.bundle_set().get(&partner).is_some(),
        "federated bundle delivered"
    );

    // The chain the client got verifies against the bundle it got, with core's verifier.
    let chain: Vec<&[u8]> = svids[0].cert_chain().iter().map(|c| c.as_bytes()).collect();
    let own = TrustDomain::new(TRUST_DOMAIN).expect("td");
    let verified = verify_svid(
        &chain,
        |td: &TrustDomain| (*td == own).then_some(roots.as_slice()),
        SystemTime::now(),
    )
    .expect("chain verifies");
    assert_eq!(verified.spiffe_id.as_str(), WEB);

    let default = client.fetch_x509_svid().await.expect("default svid");
    assert_eq!(default.spiffe_id().to_string(), WEB);
    let bundles = client.fetch_x509_bundles().await.expect("x509 bundles");
    assert_eq!(bundles.len(), 2);
}

#[tokio::test]
async fn x509_source_sees_a_rotation() {
    let world = World::new();
    let server = serve(&world, world.issued(&[(WEB, "")])).await;
    let source = X509Source::builder()
        .endpoint(server.endpoint())
        .build()
        .await
        .expect("x509 source");
    let before = source.svid().expect("svid").leaf().as_bytes().to_vec();
    let mut updates = source.updated();

    let rotated = world.issued(&[(WEB, "")]);
    let IdentitySnapshot::Issued(issued) = &rotated else {
        unreachable!()
    };
    let new_leaf = issued.x509_svids[0].chain[0].as_bytes().to_vec();
    server.pod.publish(rotated);

    tokio::time::timeout(WAIT, updates.changed())
        .await
        .expect("rotation seen in time")
        .expect("source open");
    let after = source.svid().expect("svid").leaf().as_bytes().to_vec();
    assert_ne!(before, after);
    assert_eq!(after, new_leaf);
    source.shutdown().await;
}

#[tokio::test]
async fn jwt_svids_round_trip_through_validate_and_bundles() {
    let world = World::new();
    let server = serve(&world, world.issued(&[(WEB, "internal"), (ADMIN, "")])).await;
    let client = spiffe_client(&server).await;

    let svid = client
        .fetch_jwt_svid(["api.example.org"], None)
        .await
        .expect("jwt svid");
    assert_eq!(svid.spiffe_id().to_string(), WEB);
    assert_eq!(svid.audience(), ["api.example.org".to_owned()]);
    assert_eq!(svid.key_id(), world.issuer.jwt_kid);

    let validated = client
        .validate_jwt_token("api.example.org", svid.token())
        .await
        .expect("server validates its own token");
    assert_eq!(validated.spiffe_id().to_string(), WEB);
    let wrong_audience = client
        .validate_jwt_token("other.example.org", svid.token())
        .await
        .expect_err("audience enforced");
    assert!(wrong_audience.is_invalid_argument(), "{wrong_audience}");

    // Selecting one identity, and one the pod does not hold.
    let admin = SpiffeId::parse(ADMIN).expect("id");
    let admin_id = spiffe::SpiffeId::new(admin.as_str()).expect("id");
    let admin_svid = client
        .fetch_jwt_svid(["api.example.org"], Some(&admin_id))
        .await
        .expect("admin jwt svid");
    assert_eq!(admin_svid.spiffe_id().to_string(), ADMIN);
    let all = client
        .fetch_all_jwt_svids(["a", "b"], None)
        .await
        .expect("all jwt svids");
    assert_eq!(all.len(), 2);
    let stranger = spiffe::SpiffeId::new("spiffe://example.org/ns/other/sa/db").expect("id");
    let denied = client
        .fetch_jwt_svid(["api.example.org"], Some(&stranger))
        .await
        .expect_err("not entitled");
    assert!(
        matches!(denied, ClientError::NoIdentityIssued),
        "{}",
        status_of(denied)
    );

    // Offline validation with the JWT bundles the server streams.
    let bundles = client.fetch_jwt_bundles().await.expect("jwt bundles");
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("td");
    let bundle = bundles.get(&td).expect("own jwt bundle");
    assert!(bundle.find_jwt_authority(&world.issuer.jwt_kid).is_some());
    let offline = spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &["api.example.org"])
        .expect("offline validation with streamed bundles");
    assert_eq!(offline.spiffe_id().to_string(), WEB);
}

#[tokio::test]
async fn validate_returns_claims_as_a_struct_and_rejects_foreign_or_bad_tokens() {
    let world = World::new();
    let server = serve(&world, world.issued(&[(WEB, "")])).await;
    let mut raw = support::raw_client(&server.socket).await;

    let minted = raw
        .fetch_jwtsvid(support::with_header(pb::JwtsvidRequest {
            audience: vec!["aud-1".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect("fetch")
        .into_inner();
    let token = minted.svids[0].svid.clone();
    let response = raw
        .validate_jwtsvid(support::with_header(pb::ValidateJwtsvidRequest {
            audience: "aud-1".into(),
            svid: token.clone(),
        }))
        .await
        .expect("validate")
        .into_inner();
    assert_eq!(response.spiffe_id, WEB);
    let claims = response.claims.expect("claims");
    let sub = claims.fields.get("sub").and_then(|v| v.kind.clone());
    assert_eq!(
        sub,
        Some(prost_types::value::Kind::StringValue(WEB.to_owned()))
    );
    let Some(prost_types::value::Kind::ListValue(aud)) =
        claims.fields.get("aud").and_then(|v| v.kind.clone())
    else {
        panic!("aud is returned as a list");
    };
    assert_eq!(aud.values.len(), 1);
    assert!(matches!(
        claims.fields.get("exp").and_then(|v| v.kind.clone()),
        Some(prost_types::value::Kind::NumberValue(_))
    ));

    for (audience, svid, expect) in [
        ("", token.as_str(), "audience must be specified"),
        ("aud-1", "", "svid must be specified"),
        ("aud-1", "not.a.token", ""),
    ] {
        let status = raw
            .validate_jwtsvid(support::with_header(pb::ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: svid.into(),
            }))
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expect), "{status:?}");
    }

    // A token signed by a key the pod's bundles do not hold.
    let stranger = World::new();
    let other_server = serve(&stranger, stranger.issued(&[(WEB, "")])).await;
    let mut other = support::raw_client(&other_server.socket).await;
    let foreign = other
        .fetch_jwtsvid(support::with_header(pb::JwtsvidRequest {
            audience: vec!["aud-1".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect("fetch")
        .into_inner()
        .svids[0]
        .svid
        .clone();
    let status = raw
        .validate_jwtsvid(support::with_header(pb::ValidateJwtsvidRequest {
            audience: "aud-1".into(),
            svid: foreign,
        }))
        .await
        .expect_err("foreign key rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn requests_without_the_security_header_are_invalid_arguments() {
    let world = World::new();
    let server = serve(&world, world.issued(&[(WEB, "")])).await;
    let mut raw = support::raw_client(&server.socket).await;

    let status = raw
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .expect_err("no header");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");
    let status = raw
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .expect_err("no header");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw
        .fetch_jwt_bundles(pb::JwtBundlesRequest {})
        .await
        .expect_err("no header");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Wrong value, wrong case, and two values are all refused.
    for values in [vec!["false"], vec!["TRUE"], vec!["true", "true"]] {
        let mut request = tonic::Request::new(pb::X509BundlesRequest {});
        for value in values.iter() {
            request
                .metadata_mut()
                .append("workload.spiffe.io", value.parse().expect("value"));
        }
        let status = raw
            .fetch_x509_bundles(request)
            .await
            .expect_err("bad header");
        assert_eq!(status.code(), Code::InvalidArgument, "{values:?}");
    }
}

#[tokio::test]
async fn a_pod_without_identity_is_denied() {
    let world = World::new();
    let server = serve(&world, IdentitySnapshot::NoIdentity).await;
    let client = spiffe_client(&server).await;
    let error = client.fetch_x509_svid().await.expect_err("no identity");
    assert!(
        matches!(error, ClientError::NoIdentityIssued),
        "{}",
        status_of(error)
    );

    let mut raw = support::raw_client(&server.socket).await;
    let mut stream = raw
        .fetch_x509svid(support::with_header(pb::X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let status = stream.message().await.expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("no identity issued"));
    let status = raw
        .fetch_jwtsvid(support::with_header(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
}

/// A pod whose first identities are still on their way: calls wait for them instead of sending
/// the client into its retry backoff, and answer `Unavailable` once the wait is over.
#[tokio::test]
async fn calls_wait_for_a_pod_not_ready_yet_then_answer_unavailable() {
    let world = World::new();
    let pod = std::sync::Arc::new(TestPod::new(&world.issuer, IdentitySnapshot::NotReady));
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("socket");
    let listener = wimsey_csi::socket::bind_unix_socket(&socket, 0o600).expect("bind");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let first_sync_wait = Duration::from_millis(300);
    let service = wimsey_csi::workload_api::WorkloadApiService::new(pod.clone(), shutdown.clone())
        .with_first_sync_wait(first_sync_wait);
    let server = tokio::spawn(wimsey_csi::workload_api::serve_workload_api_service(
        listener,
        service,
        Default::default(),
        shutdown.clone(),
    ));
    let mut raw = support::raw_client(&socket).await;

    // Still not ready when the wait is over: Unavailable, and not before the wait.
    let started = std::time::Instant::now();
    let mut stream = raw
        .fetch_x509_bundles(support::with_header(pb::X509BundlesRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    let status = stream.message().await.expect_err("not ready");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        started.elapsed() >= first_sync_wait,
        "{:?}",
        started.elapsed()
    );
    let status = raw
        .fetch_jwtsvid(support::with_header(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("not ready");
    assert_eq!(status.code(), Code::Unavailable);

    // Identities arriving during the wait are the stream's first message.
    let mut stream = raw
        .fetch_x509svid(support::with_header(pb::X509svidRequest {}))
        .await
        .expect("stream opens")
        .into_inner();
    pod.publish(world.issued(&[(WEB, "")]));
    let first = stream
        .message()
        .await
        .expect("first message")
        .expect("a message");
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, WEB);

    shutdown.cancel();
    server.await.expect("join").expect("server");
}

#[tokio::test]
async fn streams_send_at_once_on_every_change_and_end_when_the_identity_is_removed() {
    let world = World::new();
    let server = serve(&world, world.issued(&[(WEB, "")])).await;
    let mut raw = support::raw_client(&server.socket).await;
    let mut svids = raw
        .fetch_x509svid(support::with_header(pb::X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let mut bundles = raw
        .fetch_jwt_bundles(support::with_header(pb::JwtBundlesRequest {}))
        .await
        .expect("stream")
        .into_inner();

    let first = svids.message().await.expect("first").expect("message");
    assert_eq!(first.svids[0].spiffe_id, WEB);
    assert!(!first.svids[0].x509_svid_key.is_empty());
    assert_eq!(
        first
            .federated_bundles
            .keys()
            .cloned()
            .collect::<Vec<String>>(),
        vec![format!("spiffe://{FEDERATED_TRUST_DOMAIN}")]
    );
    let jwks = bundles.message().await.expect("first").expect("message");
    let mut keys: Vec<_> = jwks.bundles.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("spiffe://{TRUST_DOMAIN}"),
            format!("spiffe://{FEDERATED_TRUST_DOMAIN}")
        ]
    );
    let own = TrustDomainBundle::from_jwt_bundle_json(
        TrustDomain::new(TRUST_DOMAIN).expect("td"),
        &jwks.bundles[&format!("spiffe://{TRUST_DOMAIN}")],
    )
    .expect("JWKS parses");
    assert!(own.jwt_authority(&world.issuer.jwt_kid).is_some());

    // A rotation: the SVID stream sends the full new state.
    server.pod.publish(world.issued(&[(WEB, ""), (ADMIN, "")]));
    let second = tokio::time::timeout(WAIT, svids.message())
        .await
        .expect("update in time")
        .expect("ok")
        .expect("message");
    assert_eq!(second.svids.len(), 2);
    assert_ne!(second.svids[0].x509_svid, first.svids[0].x509_svid);

    // The identity is removed: both streams end with PermissionDenied.
    server.pod.publish(IdentitySnapshot::NoIdentity);
    let status = tokio::time::timeout(WAIT, svids.message())
        .await
        .expect("end in time")
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("no identity issued"));
    // The JWT bundle stream skipped the unchanged bundles of the rotation and ends here.
    let status = tokio::time::timeout(WAIT, bundles.message())
        .await
        .expect("end in time")
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn jwt_svid_requests_need_an_audience_and_a_valid_id() {
    let world = World::new();
    let server = serve(&world, world.issued(&[(WEB, "")])).await;
    let mut raw = support::raw_client(&server.socket).await;
    for (audience, spiffe_id, code) in [
        (vec![], "", Code::InvalidArgument),
        (vec![String::new()], "", Code::InvalidArgument),
        (vec!["a".to_owned()], "not-an-id", Code::InvalidArgument),
        (
            vec!["a".to_owned()],
            "spiffe://example.org/someone/else",
            Code::PermissionDenied,
        ),
    ] {
        let status = raw
            .fetch_jwtsvid(support::with_header(pb::JwtsvidRequest {
                audience,
                spiffe_id: spiffe_id.into(),
            }))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            !status.message().contains(WEB),
            "never names the pod's identities: {status:?}"
        );
    }
}

#[tokio::test]
async fn wit_svids_and_bundles_validate_with_core() {
    let world = World::new();
    let server = serve(&world, world.issued(&[(WEB, ""), (ADMIN, "")])).await;
    let mut raw = support::raw_client(&server.socket).await;

    let response = raw
        .fetch_witsvid(support::with_header(pb::WitsvidRequest {
            spiffe_id: ADMIN.into(),
        }))
        .await
        .expect("stream")
        .into_inner()
        .message()
        .await
        .expect("ok")
        .expect("message");
    assert_eq!(response.svids.len(), 1, "only the requested identity");
    let wit = &response.svids[0];
    assert_eq!(wit.spiffe_id, ADMIN);

    let bundles = raw
        .fetch_wit_bundles(support::with_header(pb::WitBundlesRequest {}))
        .await
        .expect("stream")
        .into_inner()
        .message()
        .await
        .expect("ok")
        .expect("message");
    let own = TrustDomainBundle::from_wit_bundle_json(
        TrustDomain::new(TRUST_DOMAIN).expect("td"),
        bundles.bundles[&format!("spiffe://{TRUST_DOMAIN}")].as_bytes(),
    )
    .expect("WIT JWKS parses");
    let validated = validate_wit(
        &wit.wit_svid,
        &own,
        SystemTime::now(),
        &WitValidation::default(),
    )
    .expect("WIT-SVID validates with the streamed bundle");
    assert_eq!(validated.spiffe_id().map(SpiffeId::as_str), Some(ADMIN));
    // The private key delivered is the one the WIT confirms.
    let key = signing_key_from_private_jwk(&wit.wit_svid_key).expect("private JWK");
    assert_eq!(
        wimsey_core::jose::jwk::PublicJwk::for_signing_key(&key).thumbprint(),
        validated.cnf_key.thumbprint()
    );

    let mut stream = raw
        .fetch_witsvid(support::with_header(pb::WitsvidRequest {
            spiffe_id: "spiffe://example.org/not/mine".into(),
        }))
        .await
        .expect("stream")
        .into_inner();
    let status = stream.message().await.expect_err("not entitled");
    assert_eq!(status.code(), Code::PermissionDenied);

    // A pod without the WIT profile: Unimplemented, which clients do not retry.
    let mut snapshot = world.issued(&[(WEB, "")]);
    if let IdentitySnapshot::Issued(issued) = &mut snapshot {
        issued.wit_svids = None;
    }
    server.pod.publish(snapshot);
    let mut stream = raw
        .fetch_wit_bundles(support::with_header(pb::WitBundlesRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let status = stream.message().await.expect_err("unimplemented");
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn socket_is_private_replaces_a_stale_one_and_streams_end_at_shutdown() {
    let world = World::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("socket");
    // A stale socket from an earlier run.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale"));
    assert!(socket.exists());

    let pod = std::sync::Arc::new(TestPod::new(&world.issuer, world.issued(&[(WEB, "")])));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (socket, pod, shutdown) = (socket.clone(), pod.clone(), shutdown.clone());
        async move {
            // As the volume manager serves a pod: bind, then serve until shutdown.
            let listener = wimsey_csi::socket::bind_unix_socket(&socket, 0o600).expect("bind");
            wimsey_csi::workload_api::serve_workload_api(
                listener,
                pod,
                Default::default(),
                Default::default(),
                shutdown,
            )
            .await
        }
    });
    // The stale socket is replaced by a live one.
    let client = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(client) =
                WorkloadApiClient::connect_to(format!("unix://{}", socket.display())).await
                && client.fetch_x509_svid().await.is_ok()
            {
                return client;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("server reachable");
    let meta = std::fs::symlink_metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("socket")]);

    // An open stream does not hold up a graceful shutdown: it ends with Unavailable.
    let mut stream = client.stream_x509_contexts().await.expect("stream");
    stream.next().await.expect("first").expect("context");
    shutdown.cancel();
    let served = tokio::time::timeout(WAIT, task)
        .await
        .expect("shutdown in time")
        .expect("task");
    served.expect("served cleanly");
    match stream.next().await {
        None | Some(Err(_)) => {}
        Some(Ok(_)) => panic!("stream must end at shutdown"),
    }

    // Something that is not a socket is never deleted.
    std::fs::remove_file(&socket).expect("the volume's teardown removes the socket");
    std::fs::write(&socket, b"not a socket").expect("file");
    let error = wimsey_csi::socket::bind_unix_socket(&socket, 0o600).expect_err("refused");
    assert_eq!(error.label(), "not_a_socket");
}

/// gRPC server reflection (Workload Endpoint spec: SHOULD), as `grpcurl -plaintext -unix
/// <socket> list` uses it: no security header, no proto file.
#[tokio::test]
async fn server_reflection_lists_and_describes_the_workload_api() {
    use prost::Message;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let world = World::new();
    let server = serve(&world, world.issued(&[(WEB, "")])).await;
    let mut client = ServerReflectionClient::new(support::unix_channel(&server.socket).await);
    let request = |message: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([
            request(MessageRequest::ListServices(String::new())),
            request(MessageRequest::FileContainingSymbol(
                "SpiffeWorkloadAPI".into(),
            )),
        ]))
        .await
        .expect("reflection stream")
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = responses
        .message()
        .await
        .expect("list")
        .expect("a response")
        .message_response
    else {
        panic!("a list of services");
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(services.contains(&"SpiffeWorkloadAPI"), "{services:?}");

    let Some(MessageResponse::FileDescriptorResponse(files)) = responses
        .message()
        .await
        .expect("file")
        .expect("a response")
        .message_response
    else {
        panic!("the file declaring SpiffeWorkloadAPI");
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("decodes"))
        .collect();
    let workload = files
        .iter()
        .find(|f| f.name() == "workloadapi.proto")
        .expect("workloadapi.proto");
    let service = workload
        .service
        .iter()
        .find(|s| s.name() == "SpiffeWorkloadAPI")
        .expect("the service");
    let fetch_jwt = service
        .method
        .iter()
        .find(|m| m.name() == "FetchJWTSVID")
        .expect("FetchJWTSVID");
    assert_eq!(fetch_jwt.input_type(), ".JWTSVIDRequest");
    assert!(
        workload
            .message_type
            .iter()
            .any(|m| m.name() == "JWTSVIDRequest"),
        "the request message is described too"
    );

    // Older clients speak v1alpha only.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut old = alpha::server_reflection_client::ServerReflectionClient::new(
        support::unix_channel(&server.socket).await,
    );
    let response = old
        .server_reflection_info(tokio_stream::iter([alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        }]))
        .await
        .expect("v1alpha stream")
        .into_inner()
        .message()
        .await
        .expect("list")
        .expect("a response");
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("a list of services");
    };
    assert!(list.service.iter().any(|s| s.name == "SpiffeWorkloadAPI"));
}
