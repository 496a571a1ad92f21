//! A front for our Unix-socket gRPC servers that rewrites each request's `:authority` to
//! `localhost`.
//!
//! Several real clients send something that is not a valid URI authority over a Unix socket:
//! kubelet's plugin-registration client sends the socket path (grpc-go dialled without a
//! `unix://` scheme; kubernetes#112597 fixed only kubelet's CSI client), gRPC C-core (Python,
//! hence py-spiffe) sends the percent-encoded path. The h2 server under tonic rejects both with
//! RST_STREAM PROTOCOL_ERROR, so kubelet would never register the plugin and py-spiffe could not
//! fetch an SVID. This front re-encodes the client's header blocks with a valid authority and
//! passes every other frame through untouched; responses are copied back verbatim.

use std::io;

use fluke_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Buffer of the in-memory pipe between the front and the tonic server.
const PIPE_BUFFER: usize = 64 * 1024;

/// Accepts connections on `listener` until `shutdown` and hands tonic one in-memory stream per
/// connection, fed through the authority rewrite. Use as
/// `serve_with_incoming_shutdown(local_authority_incoming(listener, token), ...)`.
pub fn local_authority_incoming(
    listener: UnixListener,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<DuplexStream>> {
    let (connections, incoming) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let client = tokio::select! {
                () = shutdown.cancelled() => return,
                () = connections.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => client,
                    Err(e) => {
                        warn!(error = %e, "accepting a connection");
                        continue;
                    }
                },
            };
            let (front, server_side) = tokio::io::duplex(PIPE_BUFFER);
            if connections.send(Ok(server_side)).await.is_err() {
                return;
            }
            tokio::spawn(relay(client, front));
        }
    });
    ReceiverStream::new(incoming)
}

/// Client frames go through the rewrite; responses are copied back as they are. When the server
/// closes, the client sees EOF at once.
async fn relay(client: UnixStream, server: DuplexStream) {
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, server_write) = tokio::io::split(server);
    let requests = rewrite_client_frames(client_read, server_write);
    let responses = async move {
        let copied = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
        copied
    };
    tokio::pin!(requests, responses);
    tokio::select! {
        requests_ended = &mut requests => match requests_ended {
            // The client hung up; let the server finish what it is sending.
            Ok(()) => {
                let _ = responses.await;
            }
            Err(e) => debug!(error = %e, "dropping a connection with malformed HTTP/2"),
        },
        _ = &mut responses => {}
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The default SETTINGS_MAX_FRAME_SIZE; tonic's server does not raise it.
const MAX_FRAME: usize = 16_384;
/// Upper bound for one header block (HEADERS + CONTINUATION), far above any gRPC request's.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Copies the client's HTTP/2 frames to `server`, rewriting `:authority` in every header block.
/// Returns when the client closes the connection.
pub async fn rewrite_client_frames<R, W>(mut client: R, mut server: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    client.read_exact(&mut preface).await?;
    if preface != PREFACE {
        return Err(invalid("not an HTTP/2 connection preface".into()));
    }
    server.write_all(&preface).await?;
    // One decoder for the client's header compression context, one encoder for the server's.
    let mut decoder = Decoder::new();
    let mut encoder = Encoder::new();
    loop {
        let mut head = [0u8; 9];
        match client.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                server.shutdown().await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let (length, kind, flags, stream) = parse_head(&head);
        let mut payload = vec![0u8; length];
        client.read_exact(&mut payload).await?;
        if kind != FRAME_HEADERS {
            server.write_all(&head).await?;
            server.write_all(&payload).await?;
            server.flush().await?;
            continue;
        }
        let (priority, mut block) = split_headers_payload(flags, &payload)?;
        let mut end_headers = flags & FLAG_END_HEADERS != 0;
        while !end_headers {
            let mut head = [0u8; 9];
            client.read_exact(&mut head).await?;
            let (length, kind, flags, continued) = parse_head(&head);
            if kind != FRAME_CONTINUATION || continued != stream {
                return Err(invalid("header block interrupted by another frame".into()));
            }
            if block.len() + length > MAX_HEADER_BLOCK {
                return Err(invalid("header block too large".into()));
            }
            let start = block.len();
            block.resize(start + length, 0);
            client.read_exact(&mut block[start..]).await?;
            end_headers = flags & FLAG_END_HEADERS != 0;
        }
        let headers = decoder
            .decode(&block)
            .map_err(|e| invalid(format!("HPACK decoding: {e:?}")))?;
        let headers = with_local_authority(headers);
        let mut out = priority;
        out.extend(encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))));
        if out.len() > MAX_FRAME {
            return Err(invalid("rewritten header block exceeds one frame".into()));
        }
        let new_flags = (flags & (FLAG_END_STREAM | FLAG_PRIORITY)) | FLAG_END_HEADERS;
        server
            .write_all(&frame_head(out.len(), FRAME_HEADERS, new_flags, stream))
            .await?;
        server.write_all(&out).await?;
        server.flush().await?;
    }
}

fn parse_head(head: &[u8; 9]) -> (usize, u8, u8, u32) {
    let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
    (length, head[3], head[4], stream)
}

fn frame_head(length: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let len = u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes();
    let id = stream.to_be_bytes();
    [
        len[1], len[2], len[3], kind, flags, id[0], id[1], id[2], id[3],
    ]
}

/// Splits a HEADERS payload into the priority fields (kept) and the header block fragment,
/// dropping padding.
fn split_headers_payload(flags: u8, payload: &[u8]) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut data = payload;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = data
            .split_first()
            .ok_or_else(|| invalid("empty padded HEADERS frame".into()))?;
        data = rest
            .get(..rest.len().saturating_sub(usize::from(pad)))
            .filter(|_| usize::from(pad) <= rest.len())
            .ok_or_else(|| invalid("HEADERS padding longer than the frame".into()))?;
    }
    let mut priority = Vec::new();
    if flags & FLAG_PRIORITY != 0 {
        if data.len() < 5 {
            return Err(invalid("HEADERS priority fields truncated".into()));
        }
        priority.extend_from_slice(&data[..5]);
        data = &data[5..];
    }
    Ok((priority, data.to_vec()))
}

/// The same headers with `:authority` set to `localhost` (the other pseudo-headers keep their
/// place before the regular ones).
fn with_local_authority(headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    headers
        .into_iter()
        .map(|(name, value)| {
            if name == b":authority" {
                (name, b"localhost".to_vec())
            } else {
                (name, value)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_authority() {
        let headers = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (
                b":authority".to_vec(),
                b"/var/lib/kubelet/plugins_registry/x-reg.sock".to_vec(),
            ),
            (
                b":path".to_vec(),
                b"/pluginregistration.Registration/GetInfo".to_vec(),
            ),
        ];
        let rewritten = with_local_authority(headers);
        assert_eq!(rewritten[1].1, b"localhost");
        assert_eq!(rewritten[2].1, b"/pluginregistration.Registration/GetInfo");
    }

    #[test]
    fn strips_padding_and_keeps_priority() {
        // pad length 2, priority (5 bytes), block [0x82], padding [0, 0]
        let payload = [2, 0, 0, 0, 3, 16, 0x82, 0, 0];
        let (priority, block) =
            split_headers_payload(FLAG_PADDED | FLAG_PRIORITY, &payload).expect("valid");
        assert_eq!(priority, vec![0, 0, 0, 3, 16]);
        assert_eq!(block, vec![0x82]);
        assert!(split_headers_payload(FLAG_PADDED, &[9, 1]).is_err());
    }

    #[test]
    fn frame_heads_round_trip() {
        let head = frame_head(70_000, FRAME_HEADERS, FLAG_END_HEADERS, 7);
        assert_eq!(
            parse_head(&head),
            (70_000, FRAME_HEADERS, FLAG_END_HEADERS, 7)
        );
    }
}
