//! A counting proxy in front of the SPIRE Server's admin socket: the operator (a child process)
//! connects to our socket, every byte goes on to SPIRE's unchanged, and every gRPC call is
//! counted on the way. A gRPC call is one HTTP/2 stream, and a client opens a stream with a
//! HEADERS frame on a new (odd, increasing) stream ID: the proxy reads the frame headers of the
//! client's side (9 bytes each, after the 24-byte connection preface) and counts those. Pings,
//! settings and window updates are not calls.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;

/// Counts the streams a client opens, from the client's bytes as they pass.
#[derive(Debug, Default)]
struct StreamCounter {
    /// Preface bytes still to skip.
    preface_left: usize,
    /// The current frame header, while incomplete.
    header: Vec<u8>,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
    last_stream: u32,
}

impl StreamCounter {
    fn new() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            ..Self::default()
        }
    }

    /// Feeds client bytes; returns how many new streams they opened.
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut opened = 0;
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.header.len() == FRAME_HEADER_LEN {
                    let h = &self.header;
                    let length =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    if h[3] == HEADERS && stream > self.last_stream {
                        self.last_stream = stream;
                        opened += 1;
                    }
                    self.payload_left = length;
                    self.header.clear();
                }
            }
        }
        opened
    }
}

/// The proxy's socket and its count of calls so far.
#[derive(Debug, Clone)]
pub struct CallCounter {
    pub socket: PathBuf,
    calls: Arc<AtomicU64>,
}

impl CallCounter {
    /// Listens on `socket` and forwards each connection to `upstream`, until `stop`.
    pub fn start(socket: &Path, upstream: &Path, stop: CancellationToken) -> Self {
        let listener = UnixListener::bind(socket).unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let (upstream, counted) = (upstream.to_path_buf(), calls.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                let Ok(server) = UnixStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, counted.clone(), stop.clone()));
            }
        });
        Self {
            socket: socket.to_path_buf(),
            calls,
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

async fn relay(
    client: UnixStream,
    server: UnixStream,
    calls: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut counter = StreamCounter::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            calls.fetch_add(counter.feed(&buf[..n]), Ordering::Relaxed);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = async { tokio::join!(upstream, downstream) } => {}
    }
}

/// The frame parsing on a hand-made client stream cut into 5-byte pieces (harness = false
/// benches drop `#[test]`s, so the bench's smoke mode calls this).
pub fn self_check() {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS (stream 0), HEADERS stream 1 (3-byte payload), DATA stream 1, HEADERS stream 3.
    bytes.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    bytes.extend([0, 0, 3, 1, 4, 0, 0, 0, 1, 9, 9, 9]);
    bytes.extend([0, 0, 1, 0, 1, 0, 0, 0, 1, 7]);
    bytes.extend([0, 0, 0, 1, 5, 0, 0, 0, 3]);
    let mut counter = StreamCounter::new();
    let total: u64 = bytes.chunks(5).map(|c| counter.feed(c)).sum();
    assert_eq!(total, 2, "the call counter miscounts HTTP/2 streams");
}
