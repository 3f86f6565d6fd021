//! Confining warden's own process: Landlock for the filesystem and TCP, seccomp for system
//! calls. Wasmtime is the first wall; this is the second, for the day a logic bug in WASI
//! handling or in warden lets a guest steer the host.
//!
//! The order is fixed and each step depends on the previous one:
//!
//! 1. all privileged setup on the main thread (profile, listener, audit log, engine, modules,
//!    copy-on-write images);
//! 2. [`assert_single_threaded`], then [`landlock::restrict`]: Landlock binds the calling thread
//!    and the threads it creates *later*, so a thread that already existed would escape it;
//! 3. the tokio runtime and the epoch ticker (they inherit Landlock);
//! 4. [`seccomp::install`] on every thread at once (TSYNC).
//!
//! What this does not do: isolate one guest call from another inside the process. Both layers
//! apply to the whole process.

pub mod landlock;
pub mod seccomp;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::HardeningMode;

#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error("the process has {0} threads; confinement must start single-threaded (a thread created earlier would escape Landlock)")]
    NotSingleThreaded(usize),
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("hardening mode is \"enforce\" but {0}; refusing to start (use mode \"best-effort\" to run with what the kernel offers)")]
    NotEnforced(String),
}

/// What to confine the process to.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: HardeningMode,
    /// Readable (not writable, not executable): runtimes, the module cache, tool packages,
    /// profiles, read-only mounts.
    pub read_only: Vec<PathBuf>,
    /// Readable and writable: this process's workspaces, the audit log, read-write mounts.
    pub read_write: Vec<PathBuf>,
    /// Directories whose empty subdirectories may be removed (the workspaces root, so the
    /// process can remove its own workspace directory at shutdown).
    pub removable: Vec<PathBuf>,
    /// The HTTP listener, when serving HTTP: the only socket the process may accept on.
    pub listener_fd: Option<i32>,
    /// The trace collector (`--otlp-endpoint`), when the operator names one: the only address
    /// family the process may make TCP sockets of, and the only port it may connect to.
    pub collector: Option<std::net::SocketAddr>,
}

/// What was achieved; reported by `/healthz`, the startup audit event and `warden doctor`.
/// Every state is an enum serialised to the same words the JSON has always carried (`"mode":
/// "enforce"`, `"status": "full"`, `"status": "enforced"`, ...).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub mode: HardeningMode,
    pub landlock: landlock::LandlockReport,
    pub seccomp: seccomp::SeccompReport,
}

impl Report {
    /// Nothing attempted: mode, Landlock and seccomp all `off`.
    pub fn off() -> Report {
        Report { mode: HardeningMode::Off, landlock: Default::default(), seccomp: Default::default() }
    }
}

/// Threads of this process, from /proc/self/task.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

pub fn assert_single_threaded() -> Result<(), HardenError> {
    match thread_count() {
        1 => Ok(()),
        n => Err(HardenError::NotSingleThreaded(n)),
    }
}

/// Seccomp mode and NoNewPrivs of every thread of this process: `(tid, seccomp, no_new_privs)`.
pub fn thread_states() -> Vec<(u32, u32, u32)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_string_lossy().parse().ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            Some((tid, field("Seccomp:"), field("NoNewPrivs:")))
        })
        .collect()
}

/// Whether every thread shows `Seccomp: 2` and `NoNewPrivs: 1` (false if they cannot be read:
/// the plan must keep `/proc/self/task` readable).
pub fn all_threads_filtered() -> bool {
    let states = thread_states();
    !states.is_empty() && states.iter().all(|&(_, mode, nnp)| mode == 2 && nnp == 1)
}

/// This process's task directory, which the confined process keeps readable so it can verify
/// its own threads.
pub fn own_tasks_dir() -> PathBuf {
    std::fs::canonicalize("/proc/self/task").unwrap_or_else(|_| PathBuf::from("/proc/self/task"))
}

/// The running kernel's release (uname -r).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::landlock::LandlockStatus;
    use super::seccomp::SeccompStatus;
    use super::*;

    /// The states are read by the `server.start` audit line's consumers, `/healthz` clients and
    /// `warden doctor`: their words must not change with the types behind them.
    #[test]
    fn states_serialise_to_the_documented_words() {
        let word = |v: serde_json::Value| v.as_str().expect("a string").to_string();
        let landlock = [
            (LandlockStatus::Full, "full"),
            (LandlockStatus::Partial, "partial"),
            (LandlockStatus::NotEnforced, "not_enforced"),
            (LandlockStatus::Unavailable, "unavailable"),
            (LandlockStatus::Off, "off"),
        ];
        for (s, w) in landlock {
            assert_eq!(word(serde_json::to_value(s).unwrap()), w);
            assert_eq!(s.to_string(), w);
        }
        for (s, w) in [(SeccompStatus::Enforced, "enforced"), (SeccompStatus::Failed, "failed"), (SeccompStatus::Off, "off")] {
            assert_eq!(word(serde_json::to_value(s).unwrap()), w);
            assert_eq!(s.to_string(), w);
        }
        for (m, w) in [(HardeningMode::Enforce, "enforce"), (HardeningMode::BestEffort, "best-effort"), (HardeningMode::Off, "off")] {
            assert_eq!(word(serde_json::to_value(m).unwrap()), w);
            assert_eq!(m.to_string(), w);
        }
    }

    #[test]
    fn an_off_report_keeps_its_shape() {
        let json = serde_json::to_string(&Report::off()).unwrap();
        assert_eq!(
            json,
            r#"{"mode":"off","landlock":{"status":"off","kernel_abi":0,"target_abi":0,"gaps":[],"read_only":[],"read_write":[],"all_threads":false},"seccomp":{"status":"off","arch":"","tripwire":0,"allowed":0,"all_threads_filtered":false,"detail":null}}"#
        );
    }

    #[test]
    fn expected_landlock_follows_the_kernel_abi() {
        assert_eq!(LandlockStatus::expected(0), LandlockStatus::Unavailable);
        assert_eq!(LandlockStatus::expected(landlock::TARGET_ABI as i32 - 1), LandlockStatus::Partial);
        assert_eq!(LandlockStatus::expected(landlock::TARGET_ABI as i32), LandlockStatus::Full);
        assert_eq!(LandlockStatus::expected(8), LandlockStatus::Full);
    }
}
