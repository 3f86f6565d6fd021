//! The events the audit log records, one type per kind, so what a line may contain is decided
//! here and nowhere else. [`super::AuditLog::record`] takes only an [`Event`]; the envelope
//! (`id`, `time`, `kind`, `prev`, `v`, `hash`) is its own.
//!
//! Fields are serialized as they are named here; this module is the audit line format's field
//! reference. Optional fields are written as `null` where a reader may expect the key (the
//! caller's `connection`, a call's `session_id`), and left out where they mark a variant (the
//! `via`/`parent_call_id` of a refusal of a nested call).

use serde::Serialize;
use serde_json::Value;

use crate::runtime::Language;
use crate::sandbox::{Limits, Outcome};

/// One audit event. [`Event::kind`] is the line's `kind`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Event {
    /// A call that runs a guest was admitted and is about to run (`execution.start`). Written
    /// before anything runs: if it cannot be written, nothing does.
    ExecutionStart(Call),
    /// How an admitted call ended (`execution`).
    Execution {
        #[serde(flatten)]
        call: Call,
        /// The `id` of its `execution.start` line.
        started: String,
        #[serde(flatten)]
        end: RunEnd,
        artifacts: Vec<ArtifactDigest>,
    },
    /// An admitted call that ended without running, so every start has an end
    /// (`execution.denied`).
    ExecutionDenied {
        #[serde(flatten)]
        call: Call,
        started: String,
        reason: String,
    },
    /// A tool call made from code through the code-mode door is about to run (`tool.call.start`).
    ToolCallStart(NestedCall),
    /// How a nested tool call ended (`tool.call`).
    ToolCall {
        #[serde(flatten)]
        call: NestedCall,
        #[serde(flatten)]
        end: RunEnd,
    },
    /// A nested tool call that ended without running (`tool.call.denied`).
    ToolCallDenied {
        #[serde(flatten)]
        call: NestedCall,
        reason: String,
    },
    /// A request refused by policy or admission (`authz.deny`).
    Denied(Denial),
    /// An authenticated principal without a role for this server (`authz.deny`).
    Forbidden {
        principal: String,
        method: &'static str,
        reason: String,
        source: String,
    },
    /// Refusals counted rather than written during a window (`authz.deny.suppressed`).
    DenialsSuppressed {
        principal: String,
        reason: String,
        count: u64,
        window_s: u64,
    },
    /// A request authenticated (`auth`, `result: allow`).
    AuthAllowed {
        result: Allow,
        principal: String,
        method: &'static str,
        role: String,
        profile: String,
    },
    /// A request without valid credentials (`auth`, `result: deny`; sampled, see
    /// [`super::refusals`]).
    AuthRefused {
        result: Deny,
        reason: String,
        source: String,
    },
    /// A request refused at the HTTP edge: Host or Origin (`http.deny`; sampled).
    HttpRefused {
        result: Deny,
        reason: &'static str,
        source: String,
        host: Option<String>,
        origin: Option<String>,
        path: String,
    },
    /// What was refused and not written during a window, by source and class (`auth.refused`).
    RefusalSummary(Value),
    SessionOpen {
        session_id: String,
        principal: String,
        connection: Option<String>,
        language: Language,
        profile: String,
    },
    /// A session made by `fork_session` from `from` (which goes on): a session's id, or a
    /// snapshot's (`snap-…`).
    SessionFork {
        session_id: String,
        from: String,
        principal: String,
        connection: Option<String>,
        language: Language,
        profile: String,
        /// Whether the source's interpreter was carried over (false: files only).
        interpreter: bool,
    },
    /// A session back from a snapshot under the snapshot's session id (`session.restore`):
    /// reopened, or rolled back when it was still open.
    SessionRestore {
        session_id: String,
        snapshot_id: String,
        principal: String,
        connection: Option<String>,
        language: Language,
        profile: String,
        interpreter: bool,
        rolled_back: bool,
    },
    /// A session written to the snapshot store and released from memory (`session.suspend`),
    /// because it was idle or the server stopped.
    SessionSuspend {
        session_id: String,
        principal: String,
        connection: Option<String>,
        profile: String,
        bytes: u64,
        interpreter: bool,
        reason: &'static str,
    },
    /// A suspended session back in memory for a call (`session.resume`).
    SessionResume {
        session_id: String,
        principal: String,
        connection: Option<String>,
        language: Language,
        profile: String,
        interpreter: bool,
    },
    /// A snapshot written to the store (`snapshot.create`).
    SnapshotCreate {
        snapshot_id: String,
        session_id: String,
        principal: String,
        connection: Option<String>,
        language: Language,
        profile: String,
        bytes: u64,
        interpreter: bool,
        sha256: String,
    },
    /// A snapshot removed (`snapshot.delete`): by its owner (`deleted`) or its retention
    /// (`expired`).
    SnapshotDelete {
        snapshot_id: String,
        principal: String,
        profile: String,
        reason: &'static str,
    },
    /// A snapshot that failed its integrity check and was not used (`snapshot.refused`).
    SnapshotRefused {
        snapshot_id: String,
        principal: String,
        profile: String,
        reason: String,
    },
    SessionClose {
        session_id: String,
        principal: String,
        connection: Option<String>,
        reason: &'static str,
    },
    /// A call that outlived its request became an MCP task (`task.create`).
    TaskCreate {
        task_id: String,
        principal: String,
        connection: Option<String>,
        tool: String,
        profile: String,
        /// The call's trace (its `execution` lines carry the same id), when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
    /// Its owner asked to cancel a running task (`task.cancel`); the call's `execution` line
    /// says how it ended.
    TaskCancel {
        task_id: String,
        principal: String,
        connection: Option<String>,
    },
    ServerStart(Box<ServerStart>),
    ServerStop {},
    /// SIGHUP: the profiles (and auth file) reloaded, or why not (`policy.reload`).
    PolicyReloaded {
        result: Done,
        default_profile: String,
        profiles: Value,
        auth: Option<AuthSource>,
    },
    PolicyReloadFailed {
        result: Failed,
        error: String,
    },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ExecutionStart(_) => "execution.start",
            Event::Execution { .. } => "execution",
            Event::ExecutionDenied { .. } => "execution.denied",
            Event::ToolCallStart(_) => "tool.call.start",
            Event::ToolCall { .. } => "tool.call",
            Event::ToolCallDenied { .. } => "tool.call.denied",
            Event::Denied(_) | Event::Forbidden { .. } => "authz.deny",
            Event::DenialsSuppressed { .. } => "authz.deny.suppressed",
            Event::AuthAllowed { .. } | Event::AuthRefused { .. } => "auth",
            Event::HttpRefused { .. } => "http.deny",
            Event::RefusalSummary(_) => "auth.refused",
            Event::SessionOpen { .. } => "session.open",
            Event::SessionFork { .. } => "session.fork",
            Event::SessionClose { .. } => "session.close",
            Event::SessionRestore { .. } => "session.restore",
            Event::SessionSuspend { .. } => "session.suspend",
            Event::SessionResume { .. } => "session.resume",
            Event::SnapshotCreate { .. } => "snapshot.create",
            Event::SnapshotDelete { .. } => "snapshot.delete",
            Event::SnapshotRefused { .. } => "snapshot.refused",
            Event::TaskCreate { .. } => "task.create",
            Event::TaskCancel { .. } => "task.cancel",
            Event::ServerStart(_) => "server.start",
            Event::ServerStop {} => "server.stop",
            Event::PolicyReloaded { .. } | Event::PolicyReloadFailed { .. } => "policy.reload",
        }
    }
}

/// Constant `result` values: a field that can only say one thing in its variant.
macro_rules! constant {
    ($name:ident, $text:literal) => {
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($text)
            }
        }
    };
}
constant!(Allow, "allow");
constant!(Deny, "deny");
constant!(Done, "ok");
constant!(Failed, "error");

/// Who made a call and under which profile, and what it runs: the fields shared by a call's
/// start, end and denial lines.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub call_id: String,
    /// The OpenTelemetry trace the call belongs to (the caller's, continued, or the server's),
    /// when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub principal: String,
    pub connection: Option<String>,
    #[serde(flatten)]
    pub what: CallWhat,
    pub profile: String,
    pub profile_sha256: String,
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CallWhat {
    /// `execute_code`: digests of the code and the inputs, and the code itself only when the
    /// profile records code.
    Code {
        session_id: Option<String>,
        tool: &'static str,
        language: Language,
        code_sha256: String,
        inputs_sha256: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// A package tool: its identity and a digest of its arguments.
    Tool { tool: String, tool_version: String, tool_sha256: String, args_sha256: String },
}

/// A tool call made from code, under its parent call.
#[derive(Debug, Clone, Serialize)]
pub struct NestedCall {
    /// The parent call's trace, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub call_id: String,
    pub parent_call_id: String,
    pub via: Via,
    pub principal: String,
    pub profile: String,
    pub tool: String,
    pub args_sha256: String,
    pub limits: Limits,
}

constant!(Via, "code");

/// How a guest run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunEnd {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub fuel_used: u64,
    pub duration_ms: u64,
}

impl RunEnd {
    pub fn of(r: &crate::sandbox::RunReport) -> RunEnd {
        RunEnd { outcome: r.outcome, exit_code: r.exit_code, fuel_used: r.fuel_used, duration_ms: r.duration_ms }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactDigest {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Denial {
    pub principal: String,
    pub profile: String,
    pub reason: &'static str,
    pub detail: String,
    /// Set for a nested call's refusal: `"code"` and the call whose code made it.
    #[serde(flatten)]
    pub nested: Option<NestedOrigin>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NestedOrigin {
    pub via: Via,
    pub parent_call_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthSource {
    pub source: std::path::PathBuf,
    pub sha256: String,
}

/// What the server started with: the line a reviewer reads to know what was in force.
#[derive(Debug, Serialize)]
pub struct ServerStart {
    pub version: &'static str,
    pub transport: &'static str,
    pub default_profile: String,
    pub profiles: Value,
    pub auth: Option<AuthSource>,
    pub tools: Vec<ToolIdentity>,
    pub tools_refused: Vec<ToolRefused>,
    pub hardening: crate::harden::Report,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolIdentity {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolRefused {
    pub path: std::path::PathBuf,
    pub reason: String,
}
