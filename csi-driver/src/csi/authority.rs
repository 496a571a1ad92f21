//! A front for our Unix-socket gRPC servers that rewrites each request's `:authority` to
//! `localhost`.
//!
//! Several real clients send something that is not a valid URI authority over a Unix socket:
//! kubelet's plugin-registration client sends the socket path (grpc-go dialled without a
//! `unix://` scheme; kubernetes#112597 fixed only kubelet's CSI client), gRPC C-core (Python,
//! hence py-spiffe) sends the percent-encoded path. The h2 server under tonic rejects both with
//! RST_STREAM PROTOCOL_ERROR, so kubelet would never register the plugin and py-spiffe could not
//! fetch an SVID. This front re-encodes the client's header blocks with a valid authority and
//! passes every other frame through untouched; responses go to the client directly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use fluke_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tonic::transport::server::Connected;

/// Bytes read from the client socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The connections on `listener`, each with the authority rewrite on what the client sends. Use
/// as `serve_with_incoming_shutdown(local_authority_incoming(listener), ...)`.
pub fn local_authority_incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<LocalAuthority<UnixStream>>> {
    UnixListenerStream::new(listener).map(|accepted| accepted.map(LocalAuthority::new))
}

/// A client connection whose reads come out with every header block's `:authority` set to
/// `localhost`; writes go straight to the client. The rewrite runs inside the server's own reads,
/// so it adds no task and no copy hop per message.
pub struct LocalAuthority<S> {
    inner: S,
    frames: ClientFrames,
    /// Rewritten bytes not yet handed to the server, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
    chunk: Vec<u8>,
    eof: bool,
}

impl<S> std::fmt::Debug for LocalAuthority<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAuthority")
            .field("pending", &(self.out.len() - self.out_at))
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl<S> LocalAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            frames: ClientFrames::default(),
            out: Vec::new(),
            out_at: 0,
            chunk: vec![0; READ_CHUNK],
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LocalAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let read = chunk.filled();
            if read.is_empty() {
                this.eof = true;
            } else {
                this.frames.feed(read, &mut this.out)?;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LocalAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for LocalAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
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

/// The client's side of an HTTP/2 connection, bytes in and bytes out: frames pass through as
/// they are, except header blocks (HEADERS and its CONTINUATIONs), which come out as one HEADERS
/// frame with `:authority` rewritten. One HPACK decoder for the client's compression context and
/// one encoder for the server's, so every block of the connection goes through both in order.
#[derive(Default)]
struct ClientFrames {
    preface_done: bool,
    /// Client bytes not yet making up a whole frame.
    input: Vec<u8>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// A header block waiting for its CONTINUATION frames.
    open_block: Option<OpenBlock>,
}

struct OpenBlock {
    stream: u32,
    flags: u8,
    priority: Vec<u8>,
    fragment: Vec<u8>,
}

impl ClientFrames {
    /// Takes `bytes` from the client and appends to `out` every whole frame they complete.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        if !self.preface_done {
            let seen = self.input.len().min(PREFACE.len());
            if self.input[..seen] != PREFACE[..seen] {
                return Err(invalid("not an HTTP/2 connection preface".into()));
            }
            if seen < PREFACE.len() {
                return Ok(());
            }
            out.extend_from_slice(PREFACE);
            at = PREFACE.len();
            self.preface_done = true;
        }
        while self.input.len() - at >= 9 {
            let mut head = [0u8; 9];
            head.copy_from_slice(&self.input[at..at + 9]);
            let (length, kind, flags, stream) = parse_head(&head);
            if length > MAX_FRAME {
                return Err(invalid(format!(
                    "frame of {length} bytes exceeds the frame size"
                )));
            }
            if self.input.len() - at - 9 < length {
                break;
            }
            let payload = &self.input[at + 9..at + 9 + length];
            match (self.open_block.take(), kind) {
                (None, FRAME_HEADERS) => {
                    let (priority, fragment) = split_headers_payload(flags, payload)?;
                    let block = OpenBlock {
                        stream,
                        flags,
                        priority,
                        fragment,
                    };
                    if flags & FLAG_END_HEADERS == 0 {
                        self.open_block = Some(block);
                    } else {
                        rewrite_block(&mut self.decoder, &mut self.encoder, &block, out)?;
                    }
                }
                (None, _) => out.extend_from_slice(&self.input[at..at + 9 + length]),
                (Some(mut block), FRAME_CONTINUATION) if stream == block.stream => {
                    if block.fragment.len() + length > MAX_HEADER_BLOCK {
                        return Err(invalid("header block too large".into()));
                    }
                    block.fragment.extend_from_slice(payload);
                    if flags & FLAG_END_HEADERS == 0 {
                        self.open_block = Some(block);
                    } else {
                        rewrite_block(&mut self.decoder, &mut self.encoder, &block, out)?;
                    }
                }
                (Some(_), _) => {
                    return Err(invalid("header block interrupted by another frame".into()));
                }
            }
            at += 9 + length;
        }
        self.input.drain(..at);
        Ok(())
    }
}

/// One HEADERS frame carrying `block`'s headers with a local `:authority`.
fn rewrite_block(
    decoder: &mut Decoder<'static>,
    encoder: &mut Encoder<'static>,
    block: &OpenBlock,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let headers = decoder
        .decode(&block.fragment)
        .map_err(|e| invalid(format!("HPACK decoding: {e:?}")))?;
    let headers = with_local_authority(headers);
    let mut payload = block.priority.clone();
    payload.extend(encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))));
    if payload.len() > MAX_FRAME {
        return Err(invalid("rewritten header block exceeds one frame".into()));
    }
    let flags = (block.flags & (FLAG_END_STREAM | FLAG_PRIORITY)) | FLAG_END_HEADERS;
    out.extend_from_slice(&frame_head(
        payload.len(),
        FRAME_HEADERS,
        flags,
        block.stream,
    ));
    out.extend_from_slice(&payload);
    Ok(())
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

    /// A client's bytes: preface, SETTINGS, a header block split over HEADERS + CONTINUATION
    /// with the socket path as authority, then a DATA frame.
    fn client_bytes() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let settings = frame_head(0, 0x4, 0, 0).to_vec();
        let mut encoder = Encoder::new();
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (
                b":authority",
                b"/var/lib/kubelet/plugins_registry/x-reg.sock",
            ),
            (b":path", b"/pluginregistration.Registration/GetInfo"),
        ]);
        let (first, rest) = block.split_at(5);
        let data = [
            frame_head(3, 0x0, FLAG_END_STREAM, 1).to_vec(),
            vec![1, 2, 3],
        ]
        .concat();
        let bytes = [
            PREFACE.to_vec(),
            settings.clone(),
            frame_head(first.len(), FRAME_HEADERS, 0, 1).to_vec(),
            first.to_vec(),
            frame_head(rest.len(), FRAME_CONTINUATION, FLAG_END_HEADERS, 1).to_vec(),
            rest.to_vec(),
            data.clone(),
        ]
        .concat();
        (bytes, settings, data)
    }

    #[test]
    fn rewrites_header_blocks_whatever_the_read_sizes() {
        let (bytes, settings, data) = client_bytes();
        for chunk in [1, 7, 9, 64, bytes.len()] {
            let mut frames = ClientFrames::default();
            let mut out = Vec::new();
            for piece in bytes.chunks(chunk) {
                frames.feed(piece, &mut out).expect("valid client bytes");
            }
            let rest = out.strip_prefix(PREFACE).expect("preface first");
            let rest = rest
                .strip_prefix(settings.as_slice())
                .expect("settings as sent");
            let mut head = [0u8; 9];
            head.copy_from_slice(&rest[..9]);
            let (length, kind, flags, stream) = parse_head(&head);
            assert_eq!((kind, stream), (FRAME_HEADERS, 1), "read size {chunk}");
            assert_eq!(flags & FLAG_END_HEADERS, FLAG_END_HEADERS);
            let headers = Decoder::new().decode(&rest[9..9 + length]).expect("hpack");
            assert_eq!(headers[1], (b":authority".to_vec(), b"localhost".to_vec()));
            assert_eq!(headers[2].1, b"/pluginregistration.Registration/GetInfo");
            assert_eq!(&rest[9 + length..], data.as_slice(), "DATA untouched");
        }
    }

    #[test]
    fn refuses_what_is_not_http2_or_interleaves_a_header_block() {
        let mut out = Vec::new();
        assert!(
            ClientFrames::default()
                .feed(b"GET / HTTP/1.1\r\n", &mut out)
                .is_err()
        );
        let interleaved = [
            PREFACE.to_vec(),
            frame_head(1, FRAME_HEADERS, 0, 1).to_vec(),
            vec![0x82],
            frame_head(0, 0x4, 0, 0).to_vec(),
        ]
        .concat();
        assert!(
            ClientFrames::default()
                .feed(&interleaved, &mut out)
                .is_err()
        );
        let oversized = [
            PREFACE.to_vec(),
            frame_head(MAX_FRAME + 1, 0x0, 0, 1).to_vec(),
        ]
        .concat();
        assert!(ClientFrames::default().feed(&oversized, &mut out).is_err());
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
