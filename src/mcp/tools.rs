//! Tool definitions as MCP clients see them: names, descriptions an agent can act on, input and
//! output schemas, and annotations.

use std::sync::Arc;

use rmcp::handler::server::tool::{schema_for_input, schema_for_output};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};

use crate::api::{
    CloseSessionArgs, CloseSessionResult, CreateSessionArgs, DeleteSnapshotResult, ExecResult, ExecuteCodeArgs, ForkSessionArgs,
    ForkSessionResult, ListSnapshotsArgs, ListSnapshotsResult, RestoreSessionResult, SessionInfo, SnapshotIdArgs, SnapshotInfo,
    SnapshotSessionArgs,
};
use crate::policy::Policy;
use crate::runtime::Language;

pub const EXECUTE_CODE: &str = "execute_code";
pub const CREATE_SESSION: &str = "create_session";
pub const CLOSE_SESSION: &str = "close_session";
pub const FORK_SESSION: &str = "fork_session";
pub const SNAPSHOT_SESSION: &str = "snapshot_session";
pub const RESTORE_SESSION: &str = "restore_session";
pub const LIST_SNAPSHOTS: &str = "list_snapshots";
pub const DELETE_SNAPSHOT: &str = "delete_snapshot";

const PYTHON_PACKAGES: &str = "numpy, pandas, scipy, scikit-learn, statsmodels, matplotlib, seaborn, sympy, \
    networkx, pillow, lxml, beautifulsoup4, openpyxl, xlsxwriter, pypdf, reportlab, pyyaml, jinja2, regex, tabulate";

fn execute_code_description(policy: &Policy) -> String {
    let l = &policy.file.limits;
    let langs: Vec<&str> = policy.file.runtimes.allowed.iter().map(|l| l.as_str()).collect();
    let mut d = format!(
        "Run a program in a fresh, isolated sandbox and return its output and the files it wrote. \
         Languages: {}.",
        langs.join(", ")
    );
    if policy.allows(Language::Python) {
        d.push_str(&format!(
            " Python is CPython 3.15 with {PYTHON_PACKAGES} (no pip install); a final expression is echoed like a \
             notebook cell; use matplotlib's savefig('name.png') to return a chart."
        ));
    }
    if policy.allows(Language::Javascript) {
        d.push_str(
            " JavaScript is QuickJS-NG (ES2023, top-level await, Node-style console, setTimeout; std and os \
             modules for files; no npm, no fetch); in a session, globals and top-level let/const persist between calls.",
        );
    }
    d.push_str(&format!(
        " The working directory is /workspace: pass input files in `files`, and every file the program creates \
         or changes there comes back as an artifact (images inline, others as resource links readable with \
         resources/read). /tmp is scratch. There is no network and no host filesystem. Limits per call: \
         {} ms wall clock, {} MiB memory, {} fuel (instructions), {} bytes of stdout; `limits` may lower them. \
         For state across calls (variables, imports, files) create a session with create_session and pass its \
         session_id.",
        l.timeout_ms, l.memory_mb, l.fuel, l.stdout_bytes
    ));
    d
}

fn input<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    let mut schema = (*schema_for_input::<T>().expect("object schema")).clone();
    drop_null_types(&mut schema);
    standard_schema(&schema)
}

/// Turns schemars' `"type": [T, "null"]` for an optional argument into `"type": T`, at any
/// depth. Leaving an argument out already means "none", so the `null` adds nothing for a caller,
/// and a type array is less portable: clients that map tool schemas onto a single-`type` dialect
/// (the OpenAPI subset of Gemini function declarations, say) reject or mangle it (the MCP
/// Inspector's schema-portability check flags each one). A `null` sent anyway still parses.
fn drop_null_types(schema: &mut JsonObject) {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::Array(types)) = o.get("type") {
                    let rest: Vec<_> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
                    if rest.len() == 1 && types.len() == 2 {
                        o.insert("type".into(), rest[0].clone());
                    }
                }
                o.values_mut().for_each(walk);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    schema.values_mut().for_each(walk);
}

fn output<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    let mut schema = (*schema_for_output::<T>()).clone();
    null_types_as_any_of(&mut schema);
    standard_schema(&schema)
}

/// Rewrites schemars' `"type": [T, "null"]` for a result field that may be null as
/// `"anyOf": [{"type": T, ...its constraints}, {"type": "null"}]`: the same values, in the form
/// single-`type` dialects can map (see [`drop_null_types`]).
fn null_types_as_any_of(schema: &mut JsonObject) {
    const ANNOTATIONS: &[&str] = &["description", "title", "default", "examples"];
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.values_mut().for_each(walk);
                let Some(serde_json::Value::Array(types)) = o.get("type") else { return };
                let rest: Vec<_> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
                if rest.len() != 1 || types.len() != 2 {
                    return;
                }
                let mut branch = serde_json::Map::new();
                for key in o.keys().filter(|k| !ANNOTATIONS.contains(&k.as_str())).cloned().collect::<Vec<_>>() {
                    if let Some(val) = o.remove(&key) {
                        branch.insert(key, val);
                    }
                }
                branch.insert("type".into(), rest[0].clone());
                o.insert("anyOf".into(), serde_json::json!([branch, {"type": "null"}]));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    schema.values_mut().for_each(walk);
}

/// The `format` values JSON Schema (2020-12) defines. schemars adds its own (`uint64`, `int32`,
/// `double`, …) for Rust number types; validators such as the TypeScript SDK's report those as
/// unknown on every `tools/list`, and the range they stand for is already in `minimum`/`maximum`.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// A copy of `schema` with every non-standard `format` keyword removed, at any depth. Number
/// formats from schemars already come with the `minimum` that matters (0 for unsigned types).
pub fn standard_schema(schema: &JsonObject) -> Arc<JsonObject> {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::String(f)) = o.get("format") {
                    if !STANDARD_FORMATS.contains(&f.as_str()) {
                        o.remove("format");
                    }
                }
                o.values_mut().for_each(walk);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::Value::Object(schema.clone());
    walk(&mut v);
    match v {
        serde_json::Value::Object(o) => Arc::new(o),
        _ => unreachable!("an object stays an object"),
    }
}

pub fn definitions(policy: &Policy) -> Vec<Tool> {
    let mut tools = Vec::new();
    if policy.file.runtimes.allowed.is_empty() {
        return tools;
    }
    tools.push(
        Tool::new(EXECUTE_CODE, execute_code_description(policy), input::<ExecuteCodeArgs>())
            .with_title("Run code in a sandbox")
            .with_raw_output_schema(output::<ExecResult>())
            .with_annotations(ToolAnnotations::new().read_only(false).destructive(false).idempotent(false).open_world(false)),
    );
    if policy.file.sessions.max > 0 {
        let s = &policy.file.sessions;
        // (only reached when some runtime is allowed: sessions run code)
        tools.push(
            Tool::new(
                CREATE_SESSION,
                format!(
                    "Start a session: a /workspace kept across execute_code calls that pass its session_id, and for \
                     a live interpreter (variables and imports persist; fork_session copies it). Sessions end after {} s unused, {} s \
                     in total, or with close_session.",
                    s.idle_seconds, s.lifetime_seconds
                ),
                input::<CreateSessionArgs>(),
            )
            .with_raw_output_schema(output::<SessionInfo>())
            .with_annotations(ToolAnnotations::new().read_only(false).destructive(false).idempotent(false).open_world(false)),
        );
        tools.push(
            Tool::new(
                FORK_SESSION,
                "Copy a session: a new session with the same live interpreter state (variables, imports, loaded \
                 data) and a copy of its /workspace files, to try something without disturbing the original. Both \
                 go on independently; the copy gets new random seeds. Nothing is re-run. Counts as one of your \
                 sessions. Pass exactly one of session_id (a live session) and snapshot_id (a snapshot from \
                 snapshot_session, which can outlive its session).",
                input::<ForkSessionArgs>(),
            )
            .with_title("Fork a session")
            .with_raw_output_schema(output::<ForkSessionResult>())
            .with_annotations(ToolAnnotations::new().read_only(false).destructive(false).idempotent(false).open_world(false)),
        );
        if policy.file.snapshots.max_per_principal > 0 {
            let n = &policy.file.snapshots;
            tools.push(
                Tool::new(
                    SNAPSHOT_SESSION,
                    format!(
                        "Save a session's state to disk: its /workspace files and live interpreter (variables, imports, \
                         loaded data), as it is now. The session goes on unchanged. Later, fork_session with the \
                         snapshot_id makes a new session from it, and restore_session puts the session itself back to it \
                         (even after it ended). Only you can see or use your snapshots. You may keep {} snapshots taking \
                         {} bytes in all; each is deleted {} s after it is taken.",
                        n.max_per_principal, n.max_bytes_per_principal, n.retention_seconds
                    ),
                    input::<SnapshotSessionArgs>(),
                )
                .with_title("Snapshot a session")
                .with_raw_output_schema(output::<SnapshotInfo>())
                .with_annotations(ToolAnnotations::new().read_only(false).destructive(false).idempotent(false).open_world(false)),
            );
            tools.push(
                Tool::new(
                    RESTORE_SESSION,
                    "Put the session a snapshot was taken of back into the snapshot's state, under its own session_id: \
                     if it is still open, everything since the snapshot (variables and files) is discarded; if it ended \
                     (closed, expired, lost), it is reopened. Nothing is re-run; random seeds are new. To keep the \
                     current state as well, use fork_session with the snapshot_id instead.",
                    input::<SnapshotIdArgs>(),
                )
                .with_title("Restore a session from a snapshot")
                .with_raw_output_schema(output::<RestoreSessionResult>())
                .with_annotations(ToolAnnotations::new().read_only(false).destructive(true).idempotent(false).open_world(false)),
            );
            tools.push(
                Tool::new(
                    LIST_SNAPSHOTS,
                    "List your session snapshots under this profile (oldest first), with their sizes, expiry times and \
                     the quota they count against.",
                    input::<ListSnapshotsArgs>(),
                )
                .with_title("List snapshots")
                .with_raw_output_schema(output::<ListSnapshotsResult>())
                .with_annotations(ToolAnnotations::new().read_only(true).destructive(false).idempotent(true).open_world(false)),
            );
            tools.push(
                Tool::new(DELETE_SNAPSHOT, "Delete one of your snapshots now, freeing its share of your quota.", input::<SnapshotIdArgs>())
                    .with_title("Delete a snapshot")
                    .with_raw_output_schema(output::<DeleteSnapshotResult>())
                    .with_annotations(ToolAnnotations::new().read_only(false).destructive(true).idempotent(true).open_world(false)),
            );
        }
        tools.push(
            Tool::new(CLOSE_SESSION, "End a session now and delete its workspace.", input::<CloseSessionArgs>())
                .with_raw_output_schema(output::<CloseSessionResult>())
                .with_annotations(ToolAnnotations::new().read_only(false).destructive(true).idempotent(true).open_world(false)),
        );
    }
    tools
}

pub fn find(policy: &Policy, name: &str) -> Option<Tool> {
    definitions(policy).into_iter().find(|t| t.name == name)
}

/// The MCP definition of a tool package.
pub fn package_tool(t: &crate::tools::ToolPackage) -> Tool {
    let schema = match &t.input_schema {
        serde_json::Value::Object(m) => standard_schema(m),
        _ => Arc::new(serde_json::Map::new()),
    };
    let a = &t.manifest.annotations;
    let mut tool = Tool::new(t.name().to_string(), t.manifest.description.clone(), schema).with_annotations(
        ToolAnnotations::new().read_only(a.read_only).destructive(a.destructive).idempotent(a.idempotent).open_world(a.open_world),
    );
    // MCP clients before 2026-07-28 accept only object output schemas.
    if let Some(serde_json::Value::Object(o)) = &t.output_schema {
        if o.get("type").and_then(|v| v.as_str()) == Some("object") {
            tool = tool.with_raw_output_schema(standard_schema(o));
        }
    }
    tool
}
