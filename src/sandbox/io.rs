//! Guest stdio: capped output pipes, a watch that reads them while the guest runs, and a
//! refillable stdin.
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

    /// Up to `max` bytes captured from `offset` on, without draining them. The slice ends on a
    /// UTF-8 character boundary when the output is UTF-8, so a character split across two reads
    /// waits for the next one rather than turning into two replacement characters.
    fn read_from(&self, offset: usize, max: usize) -> Vec<u8> {
        let buf = self.inner.buf.lock().unwrap_or_else(|e| e.into_inner());
        if offset >= buf.len() {
            return Vec::new();
        }
        let slice = &buf[offset..buf.len().min(offset.saturating_add(max))];
        match std::str::from_utf8(slice) {
            // An incomplete character at the end (no invalid byte before it): stop short of it.
            Err(e) if e.error_len().is_none() => slice[..e.valid_up_to()].to_vec(),
            _ => slice.to_vec(),
        }
    }
}

/// A live view of one run's stdout and stderr, for streaming them while the guest runs. The
/// sandbox attaches the run's pipes when it arms the guest; [`OutputWatch::read_new`] returns
/// what was written since the last read. Reading never drains the pipes: the run's report
/// still holds everything captured, under the same caps.
#[derive(Clone, Default)]
pub struct OutputWatch {
    inner: Arc<Mutex<Watched>>,
}

#[derive(Default)]
struct Watched {
    pipes: Option<[CappedPipe; 2]>,
    /// Bytes of each pipe already returned by `read_new`.
    read: [usize; 2],
}

impl OutputWatch {
    /// Watches `stdout` and `stderr` from their current (just reset) start.
    pub fn attach(&self, stdout: &CappedPipe, stderr: &CappedPipe) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *w = Watched { pipes: Some([stdout.clone(), stderr.clone()]), read: [0, 0] };
    }

    /// What stdout and stderr gained since the last call, at most `max` bytes of each (the
    /// rest comes on the next call). Empty until a run is attached, and after its pipes were
    /// taken for the report.
    pub fn read_new(&self, max: usize) -> [Vec<u8>; 2] {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pipes) = w.pipes.clone() else { return [Vec::new(), Vec::new()] };
        let out = [pipes[0].read_from(w.read[0], max), pipes[1].read_from(w.read[1], max)];
        w.read[0] += out[0].len();
        w.read[1] += out[1].len();
        out
    }

    /// Bytes of stdout and stderr returned so far.
    pub fn consumed(&self) -> [usize; 2] {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).read
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
    fn watch_reads_what_is_new_without_draining_or_splitting_characters() {
        let mut out = CappedPipe::new(16);
        let err = CappedPipe::new(16);
        let watch = OutputWatch::default();
        assert_eq!(watch.read_new(4), [Vec::<u8>::new(), Vec::new()], "nothing attached yet");
        watch.attach(&out, &err);
        OutputStream::write(&mut out, Bytes::from_static(b"ab\xc3")).unwrap();
        // The first byte of "é" waits for its second.
        assert_eq!(watch.read_new(4)[0], b"ab");
        OutputStream::write(&mut out, Bytes::from_static(b"\xa9cdefgh")).unwrap();
        assert_eq!(watch.read_new(4)[0], "écd".as_bytes(), "at most 4 bytes, ending on a boundary");
        assert_eq!(watch.read_new(100)[0], b"efgh");
        assert_eq!(watch.consumed(), [10, 0]);
        // Past the cap nothing more is captured, so nothing more is read.
        OutputStream::write(&mut out, Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(watch.read_new(100)[0], b"012345");
        let (all, truncated) = out.take(16);
        assert_eq!((&all[..], truncated), ("abécdefgh012345".as_bytes(), true), "the report still gets everything");
        assert!(watch.read_new(100)[0].is_empty(), "after the take there is nothing new");
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
