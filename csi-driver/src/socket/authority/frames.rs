//! The client's side of an HTTP/2 connection, bytes in and bytes out, with every header block's
//! `:authority` set to `localhost` and every size bounded.
//!
//! Frames pass through as they are, except header blocks (HEADERS and its CONTINUATIONs), which
//! are decoded within [`FrontLimits`] and come out re-encoded. Work is done one frame at a time
//! and only when the server has read what the previous frame produced, so what a connection
//! holds here is bounded whatever the client sends:
//! - the input buffer: one frame head and payload, [`INPUT_CAPACITY`] bytes (16 KiB);
//! - an open header block: at most `max_header_block` bytes (16 KiB);
//! - the HPACK dynamic table: [`MAX_TABLE_SIZE`] bytes as HPACK counts them, so at most 4 KiB of
//!   names and values in at most 128 entries (about 12 KiB more for the entries themselves);
//! - a decoded header list, while its block is rewritten: at most `max_header_list_size` bytes
//!   (16 KiB; up to twice that allocated as Huffman strings grow) in `max_headers` entries;
//! - the re-encoded block and the output of one step: each no larger than the decoded list plus
//!   frame heads, or one passed-through frame (16 KiB; up to twice that allocated).
//!
//! With the defaults that is under 160 KiB per connection while a block is rewritten, and under
//! 64 KiB between blocks (input, table, output buffer).

use thiserror::Error;

use super::hpack::{self, Header, HeaderLimits, HpackError};

pub use super::hpack::MAX_TABLE_SIZE;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_PUSH_PROMISE: u8 = 0x5;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The default SETTINGS_MAX_FRAME_SIZE; tonic's server does not raise it.
pub const MAX_FRAME: usize = 16_384;
/// The input buffer: one whole frame of the largest size.
pub const INPUT_CAPACITY: usize = FRAME_HEAD + MAX_FRAME;

/// What a client's header blocks may be. The defaults follow the server behind the front: hyper
/// advertises SETTINGS_MAX_HEADER_LIST_SIZE = 16 KiB (tonic does not change it), which admits at
/// most 512 fields (32 bytes are counted per field). Where h2 would answer a list over that size
/// with a stream error, the front ends the connection: no gRPC request comes near it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontLimits {
    /// Decoded header list size (name + value + 32 per field).
    pub max_header_list_size: usize,
    /// Header fields per block; gRPC requests carry about ten.
    pub max_headers: usize,
    /// Encoded bytes of one header block (HEADERS + CONTINUATION payloads).
    pub max_header_block: usize,
}

impl FrontLimits {
    /// The header list size for the server behind the front to advertise and enforce.
    pub fn server_max_header_list_size(&self) -> u32 {
        u32::try_from(self.max_header_list_size).unwrap_or(u32::MAX)
    }
}

impl Default for FrontLimits {
    fn default() -> Self {
        Self {
            max_header_list_size: 16 * 1024,
            max_headers: 128,
            max_header_block: 16 * 1024,
        }
    }
}

#[derive(Debug, Error)]
pub enum FrontError {
    #[error("not an HTTP/2 connection preface")]
    NotHttp2,
    #[error("frame of {0} bytes exceeds the frame size")]
    FrameTooLarge(usize),
    #[error("header block of more than {0} bytes")]
    HeaderBlockTooLarge(usize),
    #[error("header block interrupted by another frame")]
    HeaderBlockInterrupted,
    #[error("PUSH_PROMISE from a client")]
    PushPromise,
    #[error("malformed HEADERS frame: {0}")]
    MalformedHeaders(&'static str),
    #[error("header block: {0}")]
    Hpack(#[from] HpackError),
}

/// One connection's client-to-server byte stream. Put client bytes in with [`feed`] (or
/// [`spare`] + [`filled`]), take what the server should read with [`step`].
///
/// [`feed`]: ClientFrames::feed
/// [`spare`]: ClientFrames::spare
/// [`filled`]: ClientFrames::filled
/// [`step`]: ClientFrames::step
#[derive(Debug)]
pub struct ClientFrames {
    limits: FrontLimits,
    /// Bytes of the preface seen so far.
    preface_seen: usize,
    /// Client bytes `input[start..end]` not handled yet.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    decoder: hpack::Decoder,
    /// A header block waiting for its CONTINUATION frames.
    open_block: Option<OpenBlock>,
}

#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    flags: u8,
    priority: Vec<u8>,
    fragment: Vec<u8>,
}

impl ClientFrames {
    pub fn new(limits: FrontLimits) -> Self {
        Self {
            limits,
            preface_seen: 0,
            input: vec![0; INPUT_CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
            decoder: hpack::Decoder::default(),
            open_block: None,
        }
    }

    /// Whether the whole connection preface has been seen (after it, errors can be reported to
    /// the client in HTTP/2 terms).
    pub fn preface_done(&self) -> bool {
        self.preface_seen == PREFACE.len()
    }

    /// Free room for client bytes; report what was written there with [`ClientFrames::filled`].
    /// Never empty after [`ClientFrames::step`] returned `Ok(false)`.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.input[self.end..]
    }

    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.input.len());
    }

    /// Takes as much of `bytes` as there is room for; returns how much it took.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(bytes.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.filled(n);
        n
    }

    /// Handles the next whole frame (or preface bytes) in the input, appending what the server
    /// should read to `out`. `Ok(false)` when the input holds no whole frame: feed more.
    pub fn step(&mut self, out: &mut Vec<u8>) -> Result<bool, FrontError> {
        let pending = &self.input[self.start..self.end];
        if !self.preface_done() {
            let n = pending.len().min(PREFACE.len() - self.preface_seen);
            if pending[..n] != PREFACE[self.preface_seen..self.preface_seen + n] {
                return Err(FrontError::NotHttp2);
            }
            out.extend_from_slice(&pending[..n]);
            self.preface_seen += n;
            self.start += n;
            return Ok(n > 0);
        }
        let Some(head) = pending.first_chunk::<FRAME_HEAD>() else {
            return Ok(false);
        };
        let (length, kind, flags, stream) = parse_head(head);
        if length > MAX_FRAME {
            return Err(FrontError::FrameTooLarge(length));
        }
        let Some(frame) = pending.get(..FRAME_HEAD + length) else {
            return Ok(false);
        };
        let payload = &frame[FRAME_HEAD..];
        match (self.open_block.take(), kind) {
            (None, FRAME_HEADERS) => {
                let (priority, fragment) = split_headers_payload(flags, payload)?;
                if fragment.len() > self.limits.max_header_block {
                    return Err(FrontError::HeaderBlockTooLarge(
                        self.limits.max_header_block,
                    ));
                }
                let block = OpenBlock {
                    stream,
                    flags,
                    priority: priority.to_vec(),
                    fragment: fragment.to_vec(),
                };
                self.end_or_keep(block, flags, out)?;
            }
            (None, FRAME_PUSH_PROMISE) => return Err(FrontError::PushPromise),
            (None, _) => out.extend_from_slice(frame),
            (Some(mut block), FRAME_CONTINUATION) if stream == block.stream => {
                if block.fragment.len() + payload.len() > self.limits.max_header_block {
                    return Err(FrontError::HeaderBlockTooLarge(
                        self.limits.max_header_block,
                    ));
                }
                block.fragment.reserve_exact(payload.len());
                block.fragment.extend_from_slice(payload);
                self.end_or_keep(block, flags, out)?;
            }
            (Some(_), _) => return Err(FrontError::HeaderBlockInterrupted),
        }
        self.start += FRAME_HEAD + length;
        Ok(true)
    }

    /// Rewrites `block` if `flags` ends it, else keeps it open for CONTINUATION frames.
    fn end_or_keep(
        &mut self,
        block: OpenBlock,
        flags: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), FrontError> {
        if flags & FLAG_END_HEADERS == 0 {
            self.open_block = Some(block);
            return Ok(());
        }
        let limits = HeaderLimits {
            max_list_size: self.limits.max_header_list_size,
            max_headers: self.limits.max_headers,
        };
        let headers = with_local_authority(self.decoder.decode(&block.fragment, limits)?);
        let mut payload = block.priority;
        hpack::encode(&headers, &mut payload);
        write_header_frames(&payload, block.flags, block.stream, out);
        Ok(())
    }
}

/// `payload` (priority fields and header block) as a HEADERS frame and as many CONTINUATION
/// frames as the frame size needs.
fn write_header_frames(payload: &[u8], flags: u8, stream: u32, out: &mut Vec<u8>) {
    let mut chunks = payload.chunks(MAX_FRAME).peekable();
    let mut kind = FRAME_HEADERS;
    let mut frame_flags = flags & (FLAG_END_STREAM | FLAG_PRIORITY);
    if payload.is_empty() {
        out.extend_from_slice(&frame_head(0, kind, frame_flags | FLAG_END_HEADERS, stream));
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            frame_flags |= FLAG_END_HEADERS;
        }
        out.extend_from_slice(&frame_head(chunk.len(), kind, frame_flags, stream));
        out.extend_from_slice(chunk);
        kind = FRAME_CONTINUATION;
        frame_flags = 0;
    }
}

/// A frame that makes the server end the connection with GOAWAY(PROTOCOL_ERROR): HEADERS on
/// stream 0 is a connection error (RFC 9113 6.2), which h2 reports to the client. The front hands
/// it to the server in place of a client frame it refuses.
pub fn connection_error_frame() -> [u8; FRAME_HEAD] {
    frame_head(0, FRAME_HEADERS, FLAG_END_HEADERS, 0)
}

pub fn parse_head(head: &[u8; FRAME_HEAD]) -> (usize, u8, u8, u32) {
    let length = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
    (length, head[3], head[4], stream)
}

pub fn frame_head(length: usize, kind: u8, flags: u8, stream: u32) -> [u8; FRAME_HEAD] {
    let len = u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes();
    let id = stream.to_be_bytes();
    [
        len[1], len[2], len[3], kind, flags, id[0], id[1], id[2], id[3],
    ]
}

/// Splits a HEADERS payload into the priority fields (kept) and the header block fragment,
/// dropping padding.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Result<(&[u8], &[u8]), FrontError> {
    let mut data = payload;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = data
            .split_first()
            .ok_or(FrontError::MalformedHeaders("empty padded frame"))?;
        data = rest
            .len()
            .checked_sub(usize::from(pad))
            .map(|len| &rest[..len])
            .ok_or(FrontError::MalformedHeaders(
                "padding longer than the frame",
            ))?;
    }
    if flags & FLAG_PRIORITY != 0 {
        if data.len() < 5 {
            return Err(FrontError::MalformedHeaders("priority fields truncated"));
        }
        return Ok(data.split_at(5));
    }
    Ok((&[], data))
}

/// The same headers with `:authority` set to `localhost` (the other pseudo-headers keep their
/// place before the regular ones).
fn with_local_authority(mut headers: Vec<Header>) -> Vec<Header> {
    for (name, value) in &mut headers {
        if name == b":authority" {
            *value = b"localhost".to_vec();
        }
    }
    headers
}
