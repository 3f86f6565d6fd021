//! Stopping a running guest: cancellation handles, deadlines, and the reason a guest was stopped.
//! The cancellation handle is also the outside's window on the run's output while it runs
//! ([`CancelHandle::output`]), since it is the one thing a caller shares with a running guest.
//!
//! A guest is checked in two places: the epoch callback, which runs every tick while wasm code
//! executes, and every sliced wait in the shadowed `poll_oneoff`, which covers a guest asleep in
//! a host call. Epoch interruption alone cannot see the second case.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::io::OutputWatch;

/// A cheap, cloneable handle that stops a running guest. Cancellation is observed within one
/// tick ([`crate::engine::TICK`]) or one sleep slice of the call; async waiters (the front
/// relaying a cancel to an executor) are woken at once by [`CancelHandle::cancelled`].
#[derive(Clone, Default)]
pub struct CancelHandle {
    /// Read on every epoch tick, so a plain atomic rather than the token's mutex.
    flag: Arc<AtomicBool>,
    token: CancellationToken,
    output: OutputWatch,
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle").field("cancelled", &self.is_cancelled()).finish_non_exhaustive()
    }
}

impl CancelHandle {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.token.cancel();
    }
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    /// Completes when [`CancelHandle::cancel`] is called (at once if it already was).
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }
    /// The run's output as it is written: the sandbox attaches a guest's pipes here when it
    /// arms it for the caller's code (never for hidden setup turns).
    pub fn output(&self) -> &OutputWatch {
        &self.output
    }
}

/// Why the host stopped a guest. Carried through wasmtime as the error of a trapping host call
/// or epoch callback, and recovered with `downcast_ref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("the call was cancelled")]
    Cancelled,
    #[error("the wall-clock deadline passed")]
    Deadline,
    #[error("the guest exceeded its workspace quota")]
    WorkspaceQuota,
    #[error("the guest kept writing long after its output was truncated")]
    OutputFlood,
}

/// The stop conditions of the turn in progress.
#[derive(Clone, Debug)]
pub struct Deadline {
    cancel: CancelHandle,
    at: Instant,
}

impl Deadline {
    pub fn new(cancel: CancelHandle, timeout: Duration) -> Self {
        Deadline { cancel, at: Instant::now() + timeout }
    }

    /// A deadline that never fires on its own (between session turns, or for host setup).
    pub fn unbounded(cancel: CancelHandle) -> Self {
        Deadline { cancel, at: Instant::now() + Duration::from_secs(365 * 24 * 3600) }
    }

    pub fn check(&self) -> Result<(), Stop> {
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        if Instant::now() >= self.at {
            return Err(Stop::Deadline);
        }
        Ok(())
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_reports_cancel_before_timeout() {
        let cancel = CancelHandle::new();
        let d = Deadline::new(cancel.clone(), Duration::ZERO);
        assert_eq!(d.check(), Err(Stop::Deadline));
        cancel.cancel();
        assert_eq!(d.check(), Err(Stop::Cancelled));
        assert_eq!(Deadline::unbounded(CancelHandle::new()).check(), Ok(()));
    }
}
