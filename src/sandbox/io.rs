//! Guest stdio: capped output pipes and a refillable stdin.
//!
//! Output is capped on the way in, never buffered unbounded. Bytes past the cap are dropped but
//! reported to the guest as written: a full pipe that errors makes some guests (Rust's `println!`,
//! QuickJS) abort, and that would turn an output flood into a misleading crash. A guest that keeps
//! writing long after its output was cut ([`CappedPipe::flooded`]) is stopped by the epoch
//! callback, so a flood cannot burn a whole fuel budget producing bytes nobody will see.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// A capped, shareable output buffer. Clones share the buffer; [`CappedPipe::take`] drains it
/// between session turns.
#[derive(Clone)]
pub struct CappedPipe {
    inner: Arc<PipeInner>,
}

struct PipeInner {
    buf: Mutex<BytesMut>,
    cap: AtomicUsize,
    truncated: AtomicBool,
    /// Bytes dropped past the cap since the last [`CappedPipe::take`].
    dropped: AtomicUsize,
}

/// Dropped output that marks a flood: generous, so a program that prints a large result once
/// and then goes on with its work is not stopped.
const FLOOD_MIN_BYTES: usize = 64 << 20;
const FLOOD_CAP_MULTIPLE: usize = 16;

impl CappedPipe {
    /// A pipe that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        CappedPipe {
            inner: Arc::new(PipeInner {
                buf: Mutex::new(BytesMut::new()),
                cap: AtomicUsize::new(cap),
                truncated: AtomicBool::new(false),
                dropped: AtomicUsize::new(0),
            }),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.inner.buf.lock().unwrap_or_else(|e| e.into_inner());
        let cap = self.inner.cap.load(Ordering::Relaxed);
        let room = cap.saturating_sub(buf.len());
        let n = room.min(bytes.len());
        buf.extend_from_slice(&bytes[..n]);
        if n < bytes.len() {
            self.inner.truncated.store(true, Ordering::Relaxed);
            self.inner.dropped.fetch_add(bytes.len() - n, Ordering::Relaxed);
        }
    }

    /// Whether the guest has gone on writing far past the cap (see [`FLOOD_MIN_BYTES`]).
    pub fn flooded(&self) -> bool {
        let cap = self.inner.cap.load(Ordering::Relaxed);
        self.inner.dropped.load(Ordering::Relaxed) > FLOOD_MIN_BYTES.max(cap.saturating_mul(FLOOD_CAP_MULTIPLE))
    }

    /// Takes what was captured so far and whether anything was dropped, and resets the pipe
    /// with a new cap (sessions change limits per turn).
    pub fn take(&self, next_cap: usize) -> (Bytes, bool) {
        let mut buf = self.inner.buf.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = std::mem::take(&mut *buf).freeze();
        let truncated = self.inner.truncated.swap(false, Ordering::Relaxed);
        self.inner.dropped.store(0, Ordering::Relaxed);
        self.inner.cap.store(next_cap, Ordering::Relaxed);
        (bytes, truncated)
    }

    /// Bytes captured so far (cheap; used for progress reports).
    pub fn len(&self) -> usize {
        self.inner.buf.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Guest stdin backed by bytes the host can replace between session turns. It never blocks:
/// once the bytes are consumed the guest sees end-of-file, so a guest reading stdin in a loop
/// cannot hang a host thread.
#[derive(Clone, Default)]
pub struct SharedInput {
    buf: Arc<Mutex<Bytes>>,
}

impl SharedInput {
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        SharedInput { buf: Arc::new(Mutex::new(bytes.into())) }
    }

    /// Replaces whatever is left unread.
    pub fn set(&self, bytes: impl Into<Bytes>) {
        *self.buf.lock().unwrap_or_else(|e| e.into_inner()) = bytes.into();
    }

    fn read_up_to(&self, size: usize) -> Bytes {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let n = size.min(buf.len());
        buf.split_to(n)
    }
}

impl IsTerminal for SharedInput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for SharedInput {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for SharedInput {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        let bytes = self.read_up_to(size);
        if bytes.is_empty() && size > 0 {
            return Err(StreamError::Closed);
        }
        Ok(bytes)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SharedInput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncRead for SharedInput {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        let bytes = self.read_up_to(buf.remaining());
        buf.put_slice(&bytes);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_pipe_drops_excess_and_reports_it() {
        let mut pipe = CappedPipe::new(4);
        OutputStream::write(&mut pipe, Bytes::from_static(b"hello")).unwrap();
        let (bytes, truncated) = pipe.take(10);
        assert_eq!(&bytes[..], b"hell");
        assert!(truncated);
        OutputStream::write(&mut pipe, Bytes::from_static(b"again")).unwrap();
        let (bytes, truncated) = pipe.take(10);
        assert_eq!(&bytes[..], b"again");
        assert!(!truncated);
    }

    #[test]
    fn shared_input_refills_and_ends() {
        let mut input = SharedInput::new(&b"ab"[..]);
        assert_eq!(&InputStream::read(&mut input, 10).unwrap()[..], b"ab");
        assert!(matches!(InputStream::read(&mut input, 10), Err(StreamError::Closed)));
        input.set(&b"c"[..]);
        assert_eq!(&InputStream::read(&mut input, 10).unwrap()[..], b"c");
    }
}
