//! The messages of the front ⇄ executor channel, version [`VERSION`].
//!
//! The front sends [`Request`]s: first an [`Init`], then runs, cancellations, answers to the
//! executor's door requests, session ends and confinement probes. The executor sends
//! [`Reply`]s: first [`Ready`], then for each run any number of door requests and output chunks
//! (if the run asked to stream), and exactly one `Done` after them. Runs are multiplexed by the
//! front's `id`.
//!
//! What a run needs besides its spec travels as files: the front creates the call's directory
//! under the executor's workspaces root and writes its inputs there as one blob
//! ([`INPUTS_FILE`], laid out as [`Inputs`] says); the executor reads and removes it before the
//! guest starts, and reports artifacts by path. A session's interpreter image travels the same
//! way, as [`IMAGE_FILE`] in the session's directory: written by the executor for a snapshot,
//! by the front for a restore. The front removes the directory when it is done
//! with it, so a crashed executor leaves nothing behind.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::harden::Report;
use crate::policy::HardeningMode;
use crate::runtime::Language;
use crate::sandbox::{Limits, Mount, Outcome, Phase};

/// Bumped whenever a message changes shape; both sides refuse any other.
pub const VERSION: u32 = 6;

/// The inputs blob's name in a call's (or session's) directory, beside `workspace/` and `tmp/`
/// (the guest sees neither the directory nor the blob).
pub const INPUTS_FILE: &str = "inputs.bin";

/// A session interpreter's image ([`crate::sandbox::image::GuestImage::encode`]) in its
/// directory, beside `workspace/` and `tmp/`, out of the guest's reach.
pub const IMAGE_FILE: &str = "image.bin";

/// Most bytes of each stream in one [`Reply::Output`].
pub const OUTPUT_CHUNK_BYTES: usize = 16 << 10;

/// Front → executor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The first frame, and only the first.
    Init(Box<Init>),
    Run {
        id: u64,
        job: Box<Job>,
        /// Send the guest's output as [`Reply::Output`] chunks while it runs.
        stream: bool,
    },
    Cancel {
        id: u64,
    },
    /// The answer to run `id`'s pending door request (base64 of the answer frame).
    DoorAnswer {
        id: u64,
        answer: String,
    },
    /// Forget a session: its live interpreter and workspace handle (the front removes the
    /// directory).
    EndSession {
        session: String,
    },
    /// Report this process's confinement, trying to open each of `paths` and to make a socket.
    Probe {
        id: u64,
        paths: Vec<PathBuf>,
    },
}

/// What an executor serves and how it confines itself.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Init {
    pub version: u32,
    /// The data directory: runtimes and the module cache.
    pub home: PathBuf,
    /// This executor's own workspaces root; every call directory it is given lies directly in it.
    pub workspaces: PathBuf,
    /// Tool package directories to load.
    pub tools: Vec<PathBuf>,
    pub languages: Vec<Language>,
    /// Guests the engine's pool must hold at once (guests prepared ahead included).
    pub max_instances: u32,
    /// Guests to keep prepared ahead for fresh calls, of each kind (0: none); see
    /// [`crate::executor::pool`].
    pub guest_pool: u32,
    pub hardening: HardeningMode,
    /// The host side of the read-only and read-write mounts of this executor's profile group.
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
}

/// One run.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Job {
    /// A one-shot `execute_code` call in the fresh directory `dir`.
    Fresh { dir: String, spec: Spec, inputs: Inputs },
    /// A session turn; `dir` is the session's directory (empty before its first turn).
    Turn { session: String, dir: String, spec: Spec, inputs: Inputs },
    /// A package tool (its sha256 must match the loaded package's) in the fresh directory `dir`.
    Tool { dir: String, tool: String, sha256: String, grant: GrantSpec, args: serde_json::Value },
    /// A new session `session` in the fresh directory `dir`, holding a copy of session `from`'s
    /// files and interpreter (`from_dir` is its directory). `spec` (its code empty) is the
    /// session's profile as it is now: the fork's limits, environment and mounts.
    Fork { session: String, dir: String, from: String, from_dir: String, spec: Spec },
    /// Session `session`'s interpreter image, written to [`IMAGE_FILE`] in its directory `dir`
    /// (nothing written when it has no live interpreter). `spec` (its code empty) is the
    /// session's profile as it is now: the limits the capture runs under.
    Snapshot { session: String, dir: String, spec: Spec },
    /// A session `session` in the directory `dir`, its files in the inputs blob and, when
    /// `image` is set, its interpreter in [`IMAGE_FILE`] there (a restored snapshot). A session
    /// of that id on this executor is replaced.
    Restore { session: String, dir: String, spec: Spec, inputs: Inputs, image: bool },
}

impl Job {
    /// Most bytes of stdout and stderr the run may stream in all: its caps, except a tool's
    /// stdout, which is its result rather than output for a person to follow. Both sides use
    /// it: the executor to cut, the front to check.
    pub fn streamed_caps(&self) -> [usize; 2] {
        match self {
            Job::Fresh { spec, .. } | Job::Turn { spec, .. } => [spec.limits.stdout_bytes, spec.limits.stderr_bytes],
            Job::Fork { .. } | Job::Snapshot { .. } | Job::Restore { .. } => [0, 0],
            Job::Tool { grant, .. } => [0, grant.limits.stderr_bytes],
        }
    }
}

/// [`crate::sandbox::ExecSpec`] without its stdin (which is in the inputs blob).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub language: Language,
    pub code: String,
    pub limits: Limits,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// Whether the guest gets the code-mode door (its requests come back as `Reply::Door`).
    pub door: bool,
}

/// A tool's [`crate::tools::Grant`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
}

/// The layout of the inputs blob: stdin, then each file's bytes in order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    pub stdin: u64,
    pub files: Vec<(String, u64)>,
}

impl Inputs {
    pub fn total(&self) -> Option<u64> {
        self.files.iter().try_fold(self.stdin, |acc, (_, n)| acc.checked_add(*n))
    }
}

/// Executor → front.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// The first frame: the executor is confined and serving.
    Ready(Box<Ready>),
    /// The first and last frame of an executor that could not set itself up (a runtime that
    /// fails its check, a confinement it could not apply): why, for the front to report.
    NotStarted {
        error: String,
    },
    /// Run `id`'s guest asks the front something through the code-mode door (base64 of the
    /// request frame); `remaining_ms` is what is left of its deadline as the executor sees it.
    Door {
        id: u64,
        request: String,
        remaining_ms: u64,
    },
    /// What run `id`'s guest wrote since the last chunk: each at most [`OUTPUT_CHUNK_BYTES`],
    /// and all of a run's chunks together at most its stdout and stderr caps. Only for runs
    /// sent with `stream`.
    Output {
        id: u64,
        stdout: String,
        stderr: String,
    },
    Done {
        id: u64,
        result: Result<Box<Finished>, Failure>,
    },
    Probed {
        id: u64,
        probe: Probe,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub version: u32,
    pub pid: u32,
    pub hardening: Report,
    /// Tools loaded, as (name, sha256); the front serves only tools every executor loaded.
    pub tools: Vec<(String, String)>,
    /// Tool packages it refused, with why.
    pub refused: Vec<(PathBuf, String)>,
}

/// How a run ended, as the executor tells it: the front validates every field before use.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finished {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub duration_ms: u64,
    pub fuel_used: u64,
    /// `(path, size, sha256)` of each new or changed file under `/workspace`.
    pub artifacts: Vec<(String, u64, String)>,
    pub message: Option<String>,
    pub ended_session: bool,
    /// How long each stage took, for the front's trace spans: each phase at most once.
    pub phases: Vec<PhaseTiming>,
}

/// One stage of a run, in microseconds from when the executor took the run up. The front
/// places it between its own sending of the run and the report's arrival, and refuses a report
/// whose stages do not fit there.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PhaseTiming {
    pub phase: Phase,
    pub offset_us: u64,
    pub duration_us: u64,
}

/// Why a run produced no report.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum Failure {
    /// What the caller sent cannot be placed in the workspace: the caller can fix it.
    Rejected(String),
    Internal(String),
}

/// An executor's view of its own confinement.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub pid: u32,
    /// `Seccomp:` and `NoNewPrivs:` of every thread.
    pub threads: Vec<(u32, u32, u32)>,
    /// For each probed path: `None` if it opened, else the error.
    pub opens: Vec<(PathBuf, Option<String>)>,
    /// `None` if a TCP socket could be made, else the error.
    pub socket: Option<String>,
}
