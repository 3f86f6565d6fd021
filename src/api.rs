//! The product contract: argument and result types of warden's MCP tools, shared by the
//! executor and the transports. Field names here are stable; tests and users depend on them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::runtime::Language;
use crate::sandbox::{Artifact, Outcome, RequestedLimits};

/// Arguments of `execute_code`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteCodeArgs {
    /// Language of `code`: "python" (CPython 3.15 with numpy, pandas, matplotlib and more) or
    /// "javascript" (QuickJS-NG, ES2023, top-level await).
    pub language: Language,
    /// The program to run. Python echoes a final expression like a notebook cell.
    pub code: String,
    /// Run inside this session (from create_session): /workspace persists, and for Python so do
    /// variables and imports.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Files written into /workspace before the run.
    #[serde(default)]
    pub files: Vec<FileArg>,
    /// Text given to the program on standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Lower this call's limits; values above the server's limits are refused.
    #[serde(default)]
    pub limits: Option<RequestedLimits>,
}

/// A file to place in /workspace.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct FileArg {
    /// Path relative to /workspace, like "data/input.csv".
    pub path: String,
    /// The file's contents, encoded as `encoding` says.
    pub content: String,
    /// "utf8" (default) or "base64".
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

/// What a running call's guest wrote since the last chunk, streamed to the caller while it
/// runs (the final result still holds all of it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutputChunk {
    pub stdout: String,
    pub stderr: String,
}

/// Where a call's [`OutputChunk`]s go while it runs. Unbounded, because what can go in is
/// bounded already: all of a call's chunks add up to at most its output caps.
pub type OutputSink = tokio::sync::mpsc::UnboundedSender<OutputChunk>;

/// The result of `execute_code` (its `structuredContent`).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ExecResult {
    /// How the run ended.
    pub outcome: Outcome,
    /// The program's exit status, when it exited on its own.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Output was cut at the server's per-stream cap.
    pub truncated: bool,
    pub duration_ms: u64,
    /// Instructions executed.
    pub fuel_used: u64,
    /// Files the run created or changed in /workspace.
    pub artifacts: Vec<Artifact>,
    /// Id of this call's audit event.
    pub audit_id: String,
    /// The audit event recorded for this call.
    pub audit: serde_json::Map<String, serde_json::Value>,
    /// The session the call ran in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Why the host stopped the program, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Small PNG/JPEG artifacts, read before the workspace could go away, to return inline.
    #[serde(skip)]
    #[schemars(skip)]
    pub inline_images: Vec<InlineImage>,
    /// The call's workspace, for in-process callers that copy artifacts out (`warden exec`).
    #[serde(skip)]
    #[schemars(skip)]
    pub workspace: Option<std::sync::Arc<crate::sandbox::Workspace>>,
}

/// An image artifact's bytes, for MCP image content.
#[derive(Clone, Debug)]
pub struct InlineImage {
    pub path: String,
    pub mime: String,
    pub bytes: Vec<u8>,
}

/// Arguments of `create_session`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionArgs {
    /// Language the session runs: "python" or "javascript".
    pub language: Language,
}

/// Result of `create_session`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct SessionInfo {
    pub session_id: String,
    pub language: Language,
    /// When the session expires if unused (RFC 3339); each call pushes it back, up to the
    /// session lifetime.
    pub expires_at: String,
}

/// Arguments of `fork_session`: exactly one of `session_id` and `snapshot_id`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkSessionArgs {
    /// A live session to fork: one of yours, under the profile you call with.
    #[serde(default)]
    pub session_id: Option<String>,
    /// A snapshot to fork from (from snapshot_session or list_snapshots): the new session
    /// starts as the snapshotted session was.
    #[serde(default)]
    pub snapshot_id: Option<String>,
}

/// Arguments of `snapshot_session`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSessionArgs {
    /// The session to snapshot: one of yours, under the profile you call with.
    pub session_id: String,
    /// A name of your own for the snapshot, shown by list_snapshots (up to 128 characters).
    #[serde(default)]
    pub label: Option<String>,
}

/// One snapshot: the result of `snapshot_session`, and an entry of `list_snapshots`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct SnapshotInfo {
    /// Pass it to fork_session, restore_session or delete_snapshot.
    pub snapshot_id: String,
    /// The session it was taken of.
    pub session_id: String,
    pub language: Language,
    pub label: Option<String>,
    /// When it was taken (RFC 3339).
    pub created_at: String,
    /// When it is deleted (RFC 3339).
    pub expires_at: String,
    /// Bytes it takes in the store (counted against your quota).
    pub bytes: u64,
    /// How many /workspace files it holds.
    pub files: usize,
    /// Whether it holds the live interpreter (variables, imports, loaded data); false when the
    /// session had none, so a session made from it starts a fresh one with the files.
    pub interpreter: bool,
}

/// Arguments of `list_snapshots`.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSnapshotsArgs {}

/// Result of `list_snapshots`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ListSnapshotsResult {
    /// Your snapshots under this profile, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Bytes they take, and the most they may take.
    pub used_bytes: u64,
    pub quota_bytes: u64,
    /// How many you may keep.
    pub max_snapshots: u32,
}

/// Arguments of `restore_session` and `delete_snapshot`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotIdArgs {
    pub snapshot_id: String,
}

/// Result of `restore_session`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RestoreSessionResult {
    /// The snapshot's session, under its own id: pass it to execute_code as before.
    pub session_id: String,
    pub snapshot_id: String,
    pub language: Language,
    /// When the session expires if unused (RFC 3339).
    pub expires_at: String,
    /// Whether the snapshot's interpreter was restored (false: files only).
    pub interpreter: bool,
    /// True when the session was still open and its state since the snapshot was discarded;
    /// false when it had ended and was reopened.
    pub rolled_back: bool,
    pub message: String,
}

/// Result of `delete_snapshot`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct DeleteSnapshotResult {
    pub snapshot_id: String,
    pub deleted: bool,
}

/// Result of `fork_session`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ForkSessionResult {
    /// The new session: pass it to execute_code like any session.
    pub session_id: String,
    /// The session (or snapshot) it was forked from, which goes on unchanged.
    pub forked_from: String,
    pub language: Language,
    /// When the new session expires if unused (RFC 3339).
    pub expires_at: String,
    /// Whether the source's live interpreter (variables, imports, loaded data) was carried over;
    /// false when it had none yet (no call had run, or its interpreter had ended), and the new
    /// session starts a fresh one with the copied files.
    pub interpreter: bool,
    /// What was copied.
    pub message: String,
}

/// Arguments of `close_session`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseSessionArgs {
    pub session_id: String,
}

/// Result of `close_session`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct CloseSessionResult {
    pub session_id: String,
    pub closed: bool,
}
