//! The channel between the front and one executor process: length-prefixed frames over an
//! inherited unix socketpair, each frame one typed message of [`proto`] as JSON.
//!
//! Owns framing, the frame size bound and (de)serialisation. Does not own what the messages
//! mean: the executor process ([`crate::executor::process`]) and the front's executor pool
//! ([`crate::service::executors`]) do.
//!
//! Neither side trusts the other's frames: a frame over [`MAX_FRAME`] bytes, or one that is not
//! a well-formed message of the expected type, is an error that ends the channel (the front
//! treats it as the executor crashing). Large payloads (input files, artifacts) never travel as
//! frames: they are files in the call's workspace directory, which both sides can reach.

pub mod inputs;
pub mod proto;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Largest frame either side accepts. The biggest legitimate message is a run's report with
/// its captured stdout and stderr (each capped by policy well below this).
pub const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the channel failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a malformed frame: {0}")]
    Malformed(String),
    #[error("a frame of more than {MAX_FRAME} bytes")]
    TooLarge,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_type::<u32>().max_frame_length(MAX_FRAME).new_codec()
}

/// Splits a connected stream into its sending and receiving halves.
pub fn split(stream: UnixStream) -> (Sender, Receiver) {
    let (read, write) = stream.into_split();
    (Sender { inner: FramedWrite::new(write, codec()) }, Receiver { inner: FramedRead::new(read, codec()) })
}

/// Wraps an inherited socket descriptor (the executor's end, handed over by exec).
pub fn from_fd(fd: std::os::fd::OwnedFd) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    // fcntl rather than std's `set_nonblocking` (an ioctl): the seccomp filters a confined
    // process runs under allow fcntl's flag commands and no ioctl.
    // SAFETY: flag changes on a descriptor this function owns.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
}

/// Reads one message with blocking I/O: the executor's first frame ([`proto::Init`]), read
/// before it has a runtime (it must confine itself while single-threaded).
pub fn recv_blocking<T: DeserializeOwned>(stream: &mut std::os::unix::net::UnixStream) -> Result<T, ChannelError> {
    use std::io::Read;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ChannelError::TooLarge);
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| ChannelError::Malformed(e.to_string()))
}

/// Writes one message with blocking I/O: an executor's last word when it could not start
/// ([`proto::Reply::NotStarted`]), sent whether or not it got as far as making a runtime.
pub fn send_blocking<T: Serialize>(stream: &mut std::os::unix::net::UnixStream, msg: &T) -> Result<(), ChannelError> {
    let body = serde_json::to_vec(msg).map_err(|e| ChannelError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(ChannelError::TooLarge);
    }
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    // write(2), not std's socket write (sendto): an executor that fails during setup still runs
    // under the spawner's inherited filter, which allows write but not sendto.
    let mut rest = &frame[..];
    while !rest.is_empty() {
        match rustix::io::write(&*stream, rest) {
            Ok(0) => return Err(ChannelError::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(ChannelError::Io(e.into())),
        }
    }
    Ok(())
}

pub struct Sender {
    inner: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
}

impl Sender {
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| ChannelError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_FRAME {
            return Err(ChannelError::TooLarge);
        }
        self.inner.send(bytes::Bytes::from(bytes)).await.map_err(ChannelError::Io)
    }
}

pub struct Receiver {
    inner: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
}

impl Receiver {
    /// The next message; `None` when the other side closed the channel cleanly.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ChannelError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(ChannelError::TooLarge),
            Some(Err(e)) => Err(ChannelError::Io(e)),
            Some(Ok(frame)) => serde_json::from_slice(&frame).map(Some).map_err(|e| ChannelError::Malformed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn messages_cross_and_bad_frames_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut tx, _rx) = split(a);
        let (_tx2, mut rx) = split(b);
        tx.send(&serde_json::json!({"hello": 1})).await.unwrap();
        let got: serde_json::Value = rx.recv().await.unwrap().unwrap();
        assert_eq!(got["hello"], 1);
        // Not the expected type.
        tx.send(&serde_json::json!([1, 2])).await.unwrap();
        assert!(matches!(rx.recv::<proto::Reply>().await, Err(ChannelError::Malformed(_))));
        drop(tx);
        assert!(rx.recv::<serde_json::Value>().await.unwrap().is_none(), "a clean close is the end, not an error");

        // A length prefix over the bound is refused before anything is buffered.
        let (mut raw, b) = UnixStream::pair().unwrap();
        let (_t, mut rx) = split(b);
        raw.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes()).await.unwrap();
        assert!(matches!(rx.recv::<serde_json::Value>().await, Err(ChannelError::TooLarge)));
    }
}
