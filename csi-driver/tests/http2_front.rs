//! A pod's Workload API socket, as the plugin serves it (published through the volume manager,
//! behind the `:authority` front), under the HPACK bomb of issue 9: every bombing connection gets
//! GOAWAY(PROTOCOL_ERROR), the process's memory stays flat, and other connections keep being
//! served. The only test in this binary, so the process's RSS is this test's alone.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use support::{TestSource, WEB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wimsey_csi::csi::request::parse_publish;
use wimsey_csi::csi::{ManagerConfig, SOCKET_NAME, VolumeManager};
use wimsey_proto::csi::v1 as csi;
use wimsey_proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};

const BOMB_CONNECTIONS: usize = 200;
const CONCURRENT_BOMBS: usize = 10;
/// What 200 bombs may add to the process's resident memory. Unbounded, one bomb decodes to
/// about 240 MB.
const MAX_RSS_GROWTH_KIB: u64 = 20 * 1024;
const PROTOCOL_ERROR: u32 = 0x1;

fn publish_request(target: &Path) -> csi::NodePublishVolumeRequest {
    let context: HashMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("csi.storage.k8s.io/pod.uid", "uid-bomb"),
        ("csi.storage.k8s.io/serviceAccount.name", "web"),
        ("csi.storage.k8s.io/ephemeral", "true"),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            r#"{"wimsey":{"token":"pod-token-1","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    csi::NodePublishVolumeRequest {
        volume_id: "vol-bomb".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

fn frame_head(length: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let l = u32::try_from(length).expect("length").to_be_bytes();
    let i = stream.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, i[0], i[1], i[2], i[3]]
}

/// The connection of the issue: preface, SETTINGS, then one ~65 KB header block (a 4,000-byte
/// header added to the dynamic table, then 60,000 one-byte references to it) over HEADERS and
/// CONTINUATION frames.
fn bomb_bytes() -> Vec<u8> {
    let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e]; // value length 4000
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, 60_000));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame_head(0, 0x4, 0, 0));
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (at, chunk) in chunks.iter().enumerate() {
        let kind = if at == 0 { 0x1 } else { 0x9 };
        let flags = if at + 1 == chunks.len() { 0x4 } else { 0 };
        out.extend(frame_head(chunk.len(), kind, flags, 1));
        out.extend_from_slice(chunk);
    }
    out
}

/// Sends the bomb on a new connection; the GOAWAY error code the server answers with.
async fn bomb(socket: &Path, bytes: &[u8]) -> Option<u32> {
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    // The server may close before it has read everything: a failed write is expected.
    let _ = stream.write_all(bytes).await;
    let read = async {
        loop {
            let mut head = [0u8; 9];
            stream.read_exact(&mut head).await.ok()?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.ok()?;
            if head[3] == 0x7 {
                return Some(u32::from_be_bytes(payload[4..8].try_into().ok()?));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10s")
}

async fn fetch_svid(
    client: &mut wimsey_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
        tonic::transport::Channel,
    >,
) -> String {
    let mut stream = client
        .fetch_x509svid(support::with_header(
            wimsey_proto::workload::X509svidRequest {},
        ))
        .await
        .expect("FetchX509SVID")
        .into_inner();
    let reply = stream.message().await.expect("stream").expect("a reply");
    reply.svids[0].spiffe_id.clone()
}

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bombs_in_a_loop_leave_memory_flat_and_other_clients_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = VolumeManager::new(
        TestSource::new(),
        ManagerConfig {
            state_dir: dir.path().join("state"),
            spire_agent_socket_dir: None,
            files_tmpfs_size: "1m".into(),
            workload_api: Default::default(),
            files_tmpfs_inodes: wimsey_csi::csi::manager::DEFAULT_FILES_TMPFS_INODES,
        },
    )
    .expect("manager");
    let target = dir.path().join("target");
    let spec = parse_publish(&publish_request(&target)).expect("valid request");
    manager.publish(spec).await.expect("publish");
    let socket = target.join(SOCKET_NAME);

    // A client that stays connected through the bombing.
    let mut before_client = support::raw_client(&socket).await;
    assert_eq!(fetch_svid(&mut before_client).await, WEB);

    let bytes = bomb_bytes();
    assert!(bytes.len() > 64_000, "the issue's ~65 KB block");
    // Warm-up: what the first connections allocate once (runtime, allocator arenas) is not growth.
    for _ in 0..CONCURRENT_BOMBS {
        assert_eq!(bomb(&socket, &bytes).await, Some(PROTOCOL_ERROR));
    }
    let before = rss_kib();
    for _ in 0..BOMB_CONNECTIONS / CONCURRENT_BOMBS {
        let answers =
            futures_util::future::join_all((0..CONCURRENT_BOMBS).map(|_| bomb(&socket, &bytes)))
                .await;
        assert!(
            answers.iter().all(|answer| *answer == Some(PROTOCOL_ERROR)),
            "every bomb gets GOAWAY(PROTOCOL_ERROR): {answers:?}"
        );
    }
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    println!(
        "RSS before {BOMB_CONNECTIONS} HPACK-bomb connections: {before} KiB; after: {after} KiB; \
         growth: {growth} KiB (bound {MAX_RSS_GROWTH_KIB} KiB)"
    );
    assert!(growth < MAX_RSS_GROWTH_KIB, "RSS grew by {growth} KiB");

    // The connection from before and a new one are both still served.
    assert_eq!(fetch_svid(&mut before_client).await, WEB);
    let mut after_client = support::raw_client(&socket).await;
    assert_eq!(fetch_svid(&mut after_client).await, WEB);

    manager
        .unpublish("vol-bomb", &target)
        .await
        .expect("unpublish");
    manager.shutdown().await;
}
