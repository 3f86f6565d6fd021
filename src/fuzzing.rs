//! Fuzz entry points: the parsers that read untrusted bytes, driven exactly as the product drives
//! them, for the cargo-fuzz targets in `fuzz/` and the deterministic smoke test
//! `tests/fuzz_smoke.rs`.
//!
//! Each function takes arbitrary bytes and must never panic, whatever they are: a parse or
//! validation error is the expected answer to garbage, and only a panic (or a hang, or a crash)
//! is a bug. Nothing here starts a guest or writes to the filesystem; host paths named by a
//! profile's mounts are only canonicalised, as `warden policy check` does.
//!
//! Not part of the product's API (hidden from the docs); it is public only because the fuzz
//! crate and the integration test are separate crates.

use std::sync::OnceLock;

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta, JsonRpcMessage};

use crate::api::{CloseSessionArgs, CreateSessionArgs, ExecuteCodeArgs};
use crate::policy::Policy;
use crate::tools::manifest::Manifest;

/// An isolation profile, as `warden policy check FILE` reads it, then what `warden policy
/// explain` and `warden policy diff` do with a profile that validated.
pub fn policy(data: &[u8]) {
    // `policy check` reads the file with `read_to_string`, which refuses invalid UTF-8 before
    // any parser sees it.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(p) = Policy::parse(text, "fuzz.toml") else { return };
    let _ = crate::policy::explain::explain(&p);
    let _ = crate::policy::diff::diff(default_policy(), &p);
    let _ = crate::policy::diff::diff(&p, default_policy());
    let _ = p.limits();
    let _ = crate::mcp::tools::definitions(&p);
}

/// A tool package's `tool.toml`, as the tool loader reads it (strict parse, validation, both
/// JSON Schemas compiled), then the grant a profile that lists the tool would give it.
pub fn manifest(data: &[u8]) {
    // The loader reads tool.toml with `read_to_string` too.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(m) = Manifest::parse(text) else { return };
    let Ok(schemas) = m.schemas() else { return };
    // The loader compiles validators from the parsed values; `schemas()` already proved they
    // compile, so a failure here would be a disagreement worth knowing about.
    let input = jsonschema::validator_for(&schemas.input).expect("input schema compiled once already");
    if let Some(out) = &schemas.output {
        jsonschema::validator_for(out).expect("output schema compiled once already");
    }
    // Validation of arguments runs on every call; feed it the schema itself as an instance.
    let _ = input.iter_errors(&schemas.input).count();

    let mut runner = tool_runner_policy().clone();
    runner.file.tools.allowed.push(m.name.clone());
    if let Ok(g) = crate::tools::grant_for(&m, &runner) {
        // A grant only ever narrows what the profile gives...
        let ceiling = runner.limits();
        assert!(g.limits.timeout <= ceiling.timeout && g.limits.memory_bytes <= ceiling.memory_bytes && g.limits.fuel <= ceiling.fuel);
        // ...and a tool asking for at least the profile's memory gets all of it, not less.
        if let Some(mb) = m.capabilities.limits.memory_mb {
            if u128::from(mb) << 20 >= u128::from(ceiling.memory_bytes) {
                assert_eq!(g.limits.memory_bytes, ceiling.memory_bytes, "memory_mb = {mb}");
            }
        }
    }
}

/// One JSON-RPC message as the MCP transports decode it, and, for a call of one of warden's own
/// tools, the argument decoding and request validation the server does before anything runs,
/// against the default profile.
pub fn mcp_request(data: &[u8]) {
    // rmcp's stdio codec drops a UTF-8 byte-order mark, then parses the line with serde_json;
    // the HTTP transport parses the body the same way.
    let line = data.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(data);
    let msg: ClientJsonRpcMessage = match serde_json::from_slice(line) {
        Ok(m) => m,
        Err(_) => {
            // The codec's compatibility fallback: re-parse as a plain value to decide whether to
            // ignore an unknown notification.
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                let _ = v.get("method").and_then(serde_json::Value::as_str);
            }
            return;
        }
    };
    // Whatever decoded must encode again: responses and logs serialise requests back.
    let _ = serde_json::to_vec(&msg).expect("a decoded message serialises");
    match msg {
        JsonRpcMessage::Request(req) => request(&req.request),
        JsonRpcMessage::Notification(_) | JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_) => {}
    }
}

fn request(req: &ClientRequest) {
    let meta = req.get_meta();
    let _ = meta.get_progress_token();
    if let Some(v) = meta.protocol_version() {
        let _ = meta.missing_required_keys(&v);
    }
    let _ = (meta.client_info(), meta.client_capabilities(), meta.log_level());
    match req {
        ClientRequest::CallToolRequest(call) => call_tool(&call.params),
        ClientRequest::ReadResourceRequest(r) => {
            // resources/read: the artifact URI, then the path inside the workspace.
            if let Some(a) = crate::artifacts::parse_uri(&r.params.uri) {
                let path = match a {
                    crate::artifacts::ArtifactRef::Call { path, .. } | crate::artifacts::ArtifactRef::Session { path, .. } => path,
                };
                let _ = crate::sandbox::workspace::validate_rel_path(path);
                let _ = crate::sandbox::workspace::mime_for(path);
            }
        }
        _ => {}
    }
}

/// What `WardenMcp::call_tool` and the executor do with a call before a guest or a workspace
/// would exist.
fn call_tool(params: &rmcp::model::CallToolRequestParams) {
    use crate::mcp::tools::{CLOSE_SESSION, CREATE_SESSION, EXECUTE_CODE};
    let p = default_policy();
    match params.name.as_ref() {
        EXECUTE_CODE => {
            let Ok(args) = crate::mcp::parse_args::<ExecuteCodeArgs>(params) else { return };
            if !p.allows(args.language) {
                return;
            }
            if let Ok((spec, files)) = crate::service::check_request(p, &args) {
                // What was accepted is within what the profile allows.
                let ceiling = p.limits();
                assert!(spec.limits.timeout <= ceiling.timeout && spec.limits.memory_bytes <= ceiling.memory_bytes);
                assert!(spec.limits.fuel <= ceiling.fuel && files.len() as u64 <= ceiling.workspace_files);
                assert!(spec.code.len() as u64 <= p.file.limits.code_bytes);
            }
        }
        CREATE_SESSION => {
            if let Ok(args) = crate::mcp::parse_args::<CreateSessionArgs>(params) {
                let _ = p.allows(args.language);
            }
        }
        CLOSE_SESSION => {
            let _ = crate::mcp::parse_args::<CloseSessionArgs>(params);
        }
        _ => {}
    }
}

fn default_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| Policy::load("default").expect("the embedded default profile validates"))
}

fn tool_runner_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| Policy::load("tool-runner").expect("the embedded tool-runner profile validates"))
}
