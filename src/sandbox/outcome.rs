//! How a guest run ended, in the words of the product contract, and the mapping from Wasmtime's
//! errors to those words.
//!
//! Messages here are written for the caller and never carry host details (paths, backtraces):
//! the full error goes to the log only.

use serde::Serialize;
use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use super::control::Stop;
use super::workspace::Artifact;

/// The `outcome` field of a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum Outcome {
    /// The program ran to completion and exited 0.
    Ok,
    /// The program ran to completion with a non-zero exit (an uncaught exception, say).
    Error,
    /// The wall-clock deadline passed.
    Timeout,
    /// The instruction budget ran out.
    OutOfFuel,
    /// The program needed more memory than allowed.
    MemoryLimit,
    /// Output or workspace limits were exceeded.
    OutputLimit,
    /// The wasm call stack overflowed.
    StackOverflow,
    /// The program hit another WebAssembly trap.
    Trap,
    /// The caller cancelled the call.
    Cancelled,
    /// The executor process running the call ended before the call did (it crashed, was killed,
    /// or broke the channel protocol). Only the front reports this; the call may be retried.
    Crashed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::OutputLimit => "output_limit",
            Outcome::StackOverflow => "stack_overflow",
            Outcome::Trap => "trap",
            Outcome::Cancelled => "cancelled",
            Outcome::Crashed => "crashed",
        }
    }

    pub const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::OutOfFuel,
        Outcome::MemoryLimit,
        Outcome::OutputLimit,
        Outcome::StackOverflow,
        Outcome::Trap,
        Outcome::Cancelled,
        Outcome::Crashed,
    ];
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one run (a call, or one session turn).
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub outcome: Outcome,
    /// The guest's exit status, when it exited rather than being stopped.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Some output was dropped because a stream exceeded its cap.
    pub truncated: bool,
    pub duration_ms: u64,
    pub fuel_used: u64,
    pub artifacts: Vec<Artifact>,
    /// Why the host stopped the guest, in one sentence, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A Python session's interpreter ended (`exit()`, a trap): the next turn starts fresh.
    #[serde(skip)]
    pub ended_session: bool,
    /// How long each stage of the run took, where it ran: for traces, never for the caller.
    #[serde(skip)]
    pub phases: Vec<PhaseTime>,
}

/// A stage of a run, timed by the process that ran it (the executor) and sent to the front for
/// its trace spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Writing the call's input files into the workspace.
    Inputs,
    /// Instantiating the guest (for Python: from warden's snapshot, past its hidden setup turn).
    GuestStart,
    /// Readying a guest prepared ahead for this call (new clock and seeds, the call's
    /// environment), in place of [`Phase::GuestStart`].
    GuestClaim,
    /// The caller's code.
    GuestRun,
    /// Finding and hashing what the run left in `/workspace`.
    ArtifactsCollect,
}

impl Phase {
    pub const ALL: [Phase; 5] = [Phase::Inputs, Phase::GuestStart, Phase::GuestClaim, Phase::GuestRun, Phase::ArtifactsCollect];

    /// The span name of this stage.
    pub fn span_name(self) -> &'static str {
        match self {
            Phase::Inputs => "warden.inputs",
            Phase::GuestStart => "warden.guest.start",
            Phase::GuestClaim => "warden.guest.claim",
            Phase::GuestRun => "warden.guest.run",
            Phase::ArtifactsCollect => "warden.artifacts.collect",
        }
    }
}

/// When one [`Phase`] started and ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseTime {
    pub phase: Phase,
    pub start: std::time::Instant,
    pub end: std::time::Instant,
}

impl PhaseTime {
    /// The phase from `start` until now.
    pub fn until_now(phase: Phase, start: std::time::Instant) -> PhaseTime {
        PhaseTime { phase, start, end: std::time::Instant::now() }
    }
}

impl RunReport {
    /// The report of a guest that never ran its code (it failed to start, or its process died):
    /// no output, no fuel, no artifacts, and any session interpreter gone.
    pub fn not_run(outcome: Outcome, exit_code: Option<i32>, message: Option<String>, started: std::time::Instant) -> RunReport {
        RunReport {
            outcome,
            exit_code,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            duration_ms: started.elapsed().as_millis() as u64,
            fuel_used: 0,
            artifacts: Vec::new(),
            message,
            ended_session: true,
            phases: Vec::new(),
        }
    }
}

/// What the guest's entry point returned, before limits are taken into account.
pub enum Exit {
    /// It returned an exit status (0 = success).
    Status(i32),
    /// Wasmtime returned an error: a trap, a host stop, or `proc_exit`.
    Failed(wasmtime::Error),
}

/// Facts about the run the classification needs besides the exit.
pub struct RunFacts {
    pub language: Option<crate::runtime::Language>,
    pub memory_refused: bool,
    pub truncated: bool,
    /// A change to `/workspace` or `/tmp` was refused for the quota during the run.
    pub quota_refused: bool,
    pub limits: super::limits::Limits,
}

/// What a guest that ran into the workspace quota is told.
fn quota_message(l: &super::limits::Limits) -> String {
    format!(
        "a write was refused (EDQUOT, disk quota exceeded): /workspace and /tmp may hold at most {} files and {} bytes \
         together (each file and directory counts one 4 KiB block plus its size in 4 KiB blocks)",
        l.workspace_files, l.workspace_bytes
    )
}

/// Maps how the guest ended to (outcome, exit code, message).
pub fn classify(exit: &Exit, facts: &RunFacts) -> (Outcome, Option<i32>, Option<String>) {
    let l = &facts.limits;
    let status = match exit {
        Exit::Status(code) => Some(*code),
        Exit::Failed(e) => e.downcast_ref::<I32Exit>().map(|x| x.0),
    };
    if let Some(code) = status {
        if code != 0 && facts.memory_refused {
            return (
                Outcome::MemoryLimit,
                Some(code),
                Some(format!("the program needed more than the {} MiB memory limit", l.memory_bytes >> 20)),
            );
        }
        if code != 0 && facts.quota_refused {
            return (Outcome::OutputLimit, Some(code), Some(quota_message(l)));
        }
        if facts.truncated {
            return (Outcome::OutputLimit, Some(code), Some(output_message(l)));
        }
        if facts.quota_refused {
            return (Outcome::Ok, Some(code), Some(quota_message(l)));
        }
        return (if code == 0 { Outcome::Ok } else { Outcome::Error }, Some(code), None);
    }
    let Exit::Failed(e) = exit else { unreachable!("a status was handled above") };
    if let Some(stop) = e.downcast_ref::<Stop>() {
        return match stop {
            Stop::Cancelled => (Outcome::Cancelled, None, Some("the call was cancelled".into())),
            Stop::Deadline => (Outcome::Timeout, None, Some(format!("stopped at the {} ms wall-clock deadline", l.timeout.as_millis()))),
            Stop::WorkspaceQuota => (
                Outcome::OutputLimit,
                None,
                Some(format!("stopped after {} refused writes: {}", crate::sandbox::fsgate::MAX_REFUSALS, quota_message(l))),
            ),
            Stop::OutputFlood => (
                Outcome::OutputLimit,
                None,
                Some(format!(
                    "stopped: the program kept writing long after its output passed the cap ({} bytes of stdout, {} of stderr)",
                    l.stdout_bytes, l.stderr_bytes
                )),
            ),
        };
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => {
                (Outcome::OutOfFuel, None, Some(format!("stopped after using its budget of {} fuel (instructions)", l.fuel)))
            }
            Trap::Interrupt => (Outcome::Timeout, None, Some("the guest was interrupted".into())),
            Trap::StackOverflow => (Outcome::StackOverflow, None, Some("the call stack overflowed (too deep recursion)".into())),
            _ if facts.memory_refused => {
                (Outcome::MemoryLimit, None, Some(format!("the program needed more than the {} MiB memory limit", l.memory_bytes >> 20)))
            }
            // QuickJS-NG cannot check its own stack depth under WASI: runaway recursion runs its
            // shadow stack off the bottom of linear memory, which traps as an out-of-bounds access.
            Trap::MemoryOutOfBounds if facts.language == Some(crate::runtime::Language::Javascript) => (
                Outcome::Trap,
                None,
                Some("the guest trapped: out of bounds memory access (in JavaScript this usually means recursion too deep)".into()),
            ),
            other => (Outcome::Trap, None, Some(format!("the guest trapped: {other}"))),
        };
    }
    if facts.memory_refused || is_memory_error(e) {
        return (Outcome::MemoryLimit, None, Some(format!("the program needed more than the {} MiB memory limit", l.memory_bytes >> 20)));
    }
    tracing::warn!(error = ?e, "guest failed with a host error");
    (Outcome::Trap, None, Some("the guest failed inside the host; see the server log".into()))
}

fn output_message(l: &super::limits::Limits) -> String {
    format!("output was cut at {} bytes of stdout / {} bytes of stderr", l.stdout_bytes, l.stderr_bytes)
}

/// Instantiation fails this way when a module's initial memory is above the store's limit, and a
/// restore when the image is.
fn is_memory_error(e: &wasmtime::Error) -> bool {
    // An image that needs more memory than the limit allows (a fork or restore).
    if matches!(e.downcast_ref::<super::image::ImageError>(), Some(super::image::ImageError::TooLarge { .. })) {
        return true;
    }
    let text = format!("{e:#}");
    text.contains("memory minimum size") || text.contains("exceeds memory limits") || text.contains("resource limit exceeded")
}
