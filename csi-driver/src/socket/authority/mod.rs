//! A front for our Unix-socket gRPC servers that rewrites each request's `:authority` to
//! `localhost`.
//!
//! Several real clients send something that is not a valid URI authority over a Unix socket:
//! kubelet's plugin-registration client sends the socket path (grpc-go dialled without a
//! `unix://` scheme; kubernetes#112597 fixed only kubelet's CSI client), gRPC C-core (Python,
//! hence py-spiffe) sends the percent-encoded path. The h2 server under tonic rejects both with
//! RST_STREAM PROTOCOL_ERROR (h2 parses `:authority` with `http::uri::Authority` and has no
//! option to skip it; neither hyper nor tonic has one), so kubelet would never register the
//! plugin and py-spiffe could not fetch an SVID. This front re-encodes the client's header
//! blocks with a valid authority and passes every other frame through untouched; responses go
//! to the client directly.
//!
//! Every pod can reach a socket behind this front, so it decodes within explicit bounds
//! ([`frames`], [`hpack`]) and holds a small, fixed amount of memory per connection. A client
//! that goes over a bound gets GOAWAY(PROTOCOL_ERROR) on its own connection; nothing else is
//! affected.
//!
//! - [`frames`]: the sans-IO frame rewriter and its limits.
//! - [`hpack`]: the bounded HPACK decoder and the stateless encoder.
//! - [`huffman`]: HPACK's Huffman code.

pub mod frames;
pub mod hpack;
pub mod huffman;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tonic::transport::server::Connected;
use tracing::warn;

pub use frames::{ClientFrames, FrontError, FrontLimits};

/// The connections on `listener`, each with the authority rewrite on what the client sends,
/// within `limits`. Use as `serve_with_incoming_shutdown(local_authority_incoming(listener,
/// limits), ...)`, on a server whose `http2_max_header_list_size` is `limits`'.
pub fn local_authority_incoming(
    listener: UnixListener,
    limits: FrontLimits,
) -> impl Stream<Item = io::Result<LocalAuthority<UnixStream>>> {
    UnixListenerStream::new(listener)
        .map(move |accepted| accepted.map(|stream| LocalAuthority::new(stream, limits)))
}

/// A client connection whose reads come out with every header block's `:authority` set to
/// `localhost`; writes go straight to the client. The rewrite runs inside the server's own reads,
/// so it adds no task and no copy hop per message.
pub struct LocalAuthority<S> {
    inner: S,
    frames: ClientFrames,
    /// What the last frame produced for the server, not yet read from `out_at` on: one frame's
    /// worth at most (see [`frames`] for the bound).
    out: Vec<u8>,
    out_at: usize,
    /// The client closed, or was refused: the server reads what is left in `out`, then EOF.
    done: bool,
}

impl<S> std::fmt::Debug for LocalAuthority<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAuthority")
            .field("pending", &(self.out.len() - self.out_at))
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S> LocalAuthority<S> {
    pub fn new(inner: S, limits: FrontLimits) -> Self {
        Self {
            inner,
            frames: ClientFrames::new(limits),
            out: Vec::new(),
            out_at: 0,
            done: false,
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
        let given = buf.filled().len();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at < this.out.len() {
                    return Poll::Ready(Ok(()));
                }
                this.out.clear();
                this.out_at = 0;
            }
            if this.done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.frames.step(&mut this.out) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, "closing a client connection that broke the HTTP/2 front's limits");
                    if !this.frames.preface_done() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
                    }
                    this.out
                        .extend_from_slice(&frames::connection_error_frame());
                    this.done = true;
                    continue;
                }
            }
            // Hand over what this call produced before waiting for the client.
            if buf.filled().len() > given {
                return Poll::Ready(Ok(()));
            }
            let mut spare = ReadBuf::new(this.frames.spare());
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut spare))?;
            let read = spare.filled().len();
            if read == 0 {
                this.done = true;
            } else {
                this.frames.filled(read);
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

#[cfg(test)]
mod tests;
