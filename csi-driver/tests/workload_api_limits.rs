//! Every bound of `WorkloadApiLimits` over a pod's real Unix socket, on the server the plugin
//! runs (`serve_workload_api`): the code and message each excess call gets, and that the call
//! after it (or on another connection) is still served.

mod support;

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use support::{Server, TestPod, WEB, World};
use tonic::Code;
use tonic::transport::Channel;
use wimsey_csi::workload_api::WorkloadApiLimits;
use wimsey_proto::workload as pb;
use wimsey_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// Upper bound for anything a test waits on; the wait ends as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(20);

async fn serve(world: &World, limits: WorkloadApiLimits) -> Server {
    Server::start_with_limits(
        TestPod::new(&world.issuer, world.issued(&[(WEB, "")])),
        limits,
    )
    .await
}

fn jwt_request(audience: &[&str]) -> tonic::Request<pb::JwtsvidRequest> {
    support::with_header(pb::JwtsvidRequest {
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        spiffe_id: String::new(),
    })
}

fn validate_request(audience: &str, svid: &str) -> tonic::Request<pb::ValidateJwtsvidRequest> {
    support::with_header(pb::ValidateJwtsvidRequest {
        audience: audience.to_owned(),
        svid: svid.to_owned(),
    })
}

/// Opens a FetchX509SVID stream and reads its first message; the stream stays open.
async fn open_stream(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> Result<tonic::Streaming<pb::X509svidResponse>, tonic::Status> {
    let mut stream = client
        .fetch_x509svid(support::with_header(pb::X509svidRequest {}))
        .await?
        .into_inner();
    stream.message().await?.expect("a first message");
    Ok(stream)
}

#[tokio::test]
async fn each_connection_gets_the_configured_stream_limit() {
    let world = World::new();
    let server = serve(
        &world,
        WorkloadApiLimits {
            max_streams_per_connection: 2,
            ..WorkloadApiLimits::default()
        },
    )
    .await;

    // The server's HTTP/2 SETTINGS announce the limit.
    let io = tokio::net::UnixStream::connect(&server.socket)
        .await
        .expect("connect");
    let (_requests, mut connection) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::time::timeout(
        WAIT,
        poll_fn(|cx| {
            if let Poll::Ready(ended) = Pin::new(&mut connection).poll(cx) {
                panic!("connection ended before SETTINGS: {ended:?}");
            }
            if connection.max_concurrent_send_streams() == 2 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }),
    )
    .await
    .expect("SETTINGS_MAX_CONCURRENT_STREAMS = 2");

    // A client honours it: a third stream on the connection waits for a free one, while
    // another connection is served at once.
    let channel = support::unix_channel(&server.socket).await;
    let mut first = SpiffeWorkloadApiClient::new(channel.clone());
    let one = open_stream(&mut first).await.expect("stream 1");
    let _two = open_stream(&mut first).await.expect("stream 2");
    let mut third = tokio::spawn({
        let mut client = SpiffeWorkloadApiClient::new(channel.clone());
        async move { open_stream(&mut client).await.map(drop) }
    });
    let mut other = support::raw_client(&server.socket).await;
    let _elsewhere = open_stream(&mut other)
        .await
        .expect("another connection is not limited by this one");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "the third stream on a full connection waits"
    );
    drop(one);
    tokio::time::timeout(WAIT, third)
        .await
        .expect("served once a stream ended")
        .expect("task")
        .expect("stream 3");
}

#[tokio::test]
async fn the_pods_stream_limit_spans_connections_and_answers_resource_exhausted() {
    let world = World::new();
    let server = serve(
        &world,
        WorkloadApiLimits {
            max_streams_per_pod: 3,
            ..WorkloadApiLimits::default()
        },
    )
    .await;
    let mut a = support::raw_client(&server.socket).await;
    let mut b = support::raw_client(&server.socket).await;
    let one = open_stream(&mut a).await.expect("stream 1");
    let _two = open_stream(&mut a).await.expect("stream 2");
    let _three = open_stream(&mut b)
        .await
        .expect("stream 3 on another connection");

    let status = open_stream(&mut b).await.expect_err("a fourth stream");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "too many concurrent calls to this pod's Workload API: at most 3"
    );
    let status = a
        .fetch_jwtsvid(jwt_request(&["aud"]))
        .await
        .expect_err("unary calls count too");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(server.pod.mints(), 0, "refused before the handler");

    // The permit comes back once the server has seen the stream end.
    drop(one);
    let served = tokio::time::timeout(WAIT, async {
        loop {
            match b.fetch_jwtsvid(jwt_request(&["aud"])).await {
                Ok(response) => return response.into_inner(),
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    })
    .await
    .expect("a call is served after a stream ended");
    assert_eq!(served.svids.len(), 1);
}

#[tokio::test]
async fn an_oversized_request_is_resource_exhausted_not_out_of_range() {
    let world = World::new();
    let server = serve(
        &world,
        WorkloadApiLimits {
            max_request_bytes: 1024,
            // Field limits well above, so only the message size can refuse.
            max_audience_bytes: 1 << 20,
            max_jwt_svid_bytes: 1 << 20,
            ..WorkloadApiLimits::default()
        },
    )
    .await;
    let mut client = support::raw_client(&server.socket).await;
    let big = "a".repeat(2000);

    let status = client
        .fetch_jwtsvid(jwt_request(&[&big]))
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().ends_with("over the limit of 1024 bytes"),
        "{status:?}"
    );
    let status = client
        .validate_jwtsvid(validate_request("aud", &big))
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(server.pod.mints(), 0);

    // Just under the limit, on the same connection: served.
    let fits = "a".repeat(900);
    let response = client
        .fetch_jwtsvid(jwt_request(&[&fits]))
        .await
        .expect("under the limit")
        .into_inner();
    assert_eq!(response.svids.len(), 1);

    // With the defaults, a message past 64 KiB gets the same code.
    let default_server = serve(&world, WorkloadApiLimits::default()).await;
    let mut client = support::raw_client(&default_server.socket).await;
    let status = client
        .fetch_jwtsvid(jwt_request(&[&"a".repeat(100 * 1024)]))
        .await
        .expect_err("over the default limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn jwt_audiences_are_bounded_in_count_and_length() {
    let world = World::new();
    let server = serve(
        &world,
        WorkloadApiLimits {
            max_jwt_audiences: 3,
            max_audience_bytes: 16,
            ..WorkloadApiLimits::default()
        },
    )
    .await;
    let mut client = support::raw_client(&server.socket).await;

    let status = client
        .fetch_jwtsvid(jwt_request(&["a", "b", "c", "d"]))
        .await
        .expect_err("four audiences");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "too many audiences: at most 3 per request"
    );
    let long = "x".repeat(17);
    let status = client
        .fetch_jwtsvid(jwt_request(&["a", &long]))
        .await
        .expect_err("17 bytes");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "audience too long: at most 16 bytes");
    assert_eq!(
        server.pod.mints(),
        0,
        "nothing minted for a refused request"
    );

    let longest = "x".repeat(16);
    let response = client
        .fetch_jwtsvid(jwt_request(&["a", "b", &longest]))
        .await
        .expect("at the limits")
        .into_inner();
    assert_eq!(response.svids.len(), 1);
    assert_eq!(server.pod.mints(), 1);
}

#[tokio::test]
async fn validate_bounds_the_token_and_the_audience() {
    let world = World::new();
    let server = serve(
        &world,
        WorkloadApiLimits {
            max_jwt_svid_bytes: 1024,
            max_audience_bytes: 16,
            ..WorkloadApiLimits::default()
        },
    )
    .await;
    let mut client = support::raw_client(&server.socket).await;
    let token = client
        .fetch_jwtsvid(jwt_request(&["aud"]))
        .await
        .expect("mint")
        .into_inner()
        .svids[0]
        .svid
        .clone();
    assert!(token.len() <= 1024, "a real JWT-SVID fits: {}", token.len());
    let validated = client
        .validate_jwtsvid(validate_request("aud", &token))
        .await
        .expect("validates")
        .into_inner();
    assert_eq!(validated.spiffe_id, WEB);

    let padded = format!("{token}{}", "A".repeat(1025 - token.len()));
    let status = client
        .validate_jwtsvid(validate_request("aud", &padded))
        .await
        .expect_err("1025 bytes");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "svid too long: at most 1024 bytes");
    let status = client
        .validate_jwtsvid(validate_request(&"x".repeat(17), &token))
        .await
        .expect_err("17-byte audience");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "audience too long: at most 16 bytes");
}
