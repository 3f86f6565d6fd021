//! Starting the server binary and talking to it as an MCP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam, ServerResult};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestHandle, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{Value, json};

use crate::common::home;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A client that records the progress notifications and log messages it receives.
#[derive(Clone, Default)]
pub struct Recorder {
    pub progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    #[allow(deprecated)]
    pub logs: Arc<Mutex<Vec<rmcp::model::LoggingMessageNotificationParam>>>,
}

impl ClientHandler for Recorder {
    #[allow(deprecated)]
    async fn on_logging_message(&self, params: rmcp::model::LoggingMessageNotificationParam, _ctx: NotificationContext<RoleClient>) {
        self.logs.lock().unwrap().push(params);
    }

    async fn on_progress(&self, mut params: ProgressNotificationParam, ctx: NotificationContext<RoleClient>) {
        // rmcp 3.11 hands a notification's `_meta` to the context, not the params, and there
        // (swapping the extensions out before reading the meta from them) leaves it in the
        // context's extensions rather than `ctx.meta`: put it back.
        if params.meta.is_none() {
            params.meta =
                ctx.extensions.get::<rmcp::model::NotificationMetaObject>().cloned().or(Some(ctx.meta)).filter(|m| !m.0.is_empty());
        }
        self.progress.lock().unwrap().push(params);
    }
}

pub type Client = RunningService<RoleClient, Recorder>;

/// A server process's private files: its audit log and any policy written for it.
pub struct ServerFiles {
    pub dir: tempfile::TempDir,
}

impl ServerFiles {
    pub fn new() -> Self {
        ServerFiles { dir: tempfile::tempdir().expect("tempdir") }
    }
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }
    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.path().join("snapshots")
    }
    /// Writes a policy derived from the default one, with `edits` applied as text replacements.
    pub fn policy(&self, edits: &[(&str, &str)]) -> PathBuf {
        let mut text = include_str!("../../policies/default.toml").to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "default policy has no {from:?}");
            text = text.replace(from, to);
        }
        let path = self.dir.path().join("policy.toml");
        std::fs::write(&path, text).expect("write policy");
        path
    }
}

pub fn server_command(files: &ServerFiles, policy: Option<&Path>, extra: &[&str]) -> tokio::process::Command {
    server_command_of(&Server::default(), files, policy, extra)
}

/// Which `warden` serves, from which data directory, with which log filter: this build, the
/// tests' home and the default filter, unless a bench compares builds or a test reads the log.
pub struct Server {
    pub bin: PathBuf,
    pub home: PathBuf,
    /// `WARDEN_LOG` for the server, when not the default filter.
    pub log: Option<String>,
}

impl Default for Server {
    fn default() -> Self {
        Server { bin: PathBuf::from(env!("CARGO_BIN_EXE_warden")), home: home().root().to_path_buf(), log: None }
    }
}

pub fn server_command_of(server: &Server, files: &ServerFiles, policy: Option<&Path>, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&server.bin);
    cmd.arg("serve").args(extra);
    if let Some(p) = policy {
        cmd.arg("--policy").arg(p);
    }
    // Each server's files have their own snapshot store, so tests' snapshots (all the operator's,
    // over stdio) never meet; servers started on the same files share it, like replicas.
    cmd.env("WARDEN_HOME", &server.home)
        .env("WARDEN_AUDIT_LOG", files.audit_log())
        .env("WARDEN_SNAPSHOT_DIR", files.snapshot_dir())
        .env_remove("WARDEN_POLICY")
        .kill_on_drop(true);
    if let Some(filter) = &server.log {
        cmd.env("WARDEN_LOG", filter);
    }
    cmd
}

/// Starts `warden serve` over stdio and connects with the legacy `initialize` handshake.
pub async fn stdio(files: &ServerFiles, policy: Option<&Path>) -> Client {
    stdio_of(&Server::default(), files, policy).await
}

/// [`stdio`] with another build or data directory.
pub async fn stdio_of(server: &Server, files: &ServerFiles, policy: Option<&Path>) -> Client {
    stdio_with(server, files, policy, &[]).await
}

/// [`stdio_of`] with `extra` arguments to `warden serve`.
pub async fn stdio_with(server: &Server, files: &ServerFiles, policy: Option<&Path>, extra: &[&str]) -> Client {
    let transport = TokioChildProcess::new(server_command_of(server, files, policy, extra)).expect("spawn warden");
    Recorder::default().serve(transport).await.expect("initialize")
}

pub fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().expect("object").clone()
}

pub async fn call(client: &Client, tool: &str, arguments: Value) -> Result<CallToolResult, ServiceError> {
    client.call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments))).await
}

/// Calls execute_code and returns its structured content, failing on a protocol error.
pub async fn exec(client: &Client, arguments: Value) -> (CallToolResult, Value) {
    let r = call(client, "execute_code", arguments).await.expect("execute_code");
    let s = r.structured_content.clone().expect("structured content");
    (r, s)
}

/// Sends a tools/call that can be cancelled.
pub async fn start_call(client: &Client, tool: &str, arguments: Value) -> RequestHandle<RoleClient> {
    let req =
        ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments))));
    client.peer().send_request_with_option(req, PeerRequestOptions::no_options()).await.expect("send")
}

pub fn call_result(r: ServerResult) -> CallToolResult {
    match r {
        ServerResult::CallToolResult(r) => r,
        other => panic!("not a tools/call result: {other:?}"),
    }
}

/// The message of a tool result the model can act on (`isError: true`, SEP-1303), failing on
/// a success or a JSON-RPC error.
#[track_caller]
pub fn tool_error(r: Result<CallToolResult, ServiceError>) -> String {
    match r {
        Ok(r) if r.is_error == Some(true) => {
            r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
        }
        Ok(r) => panic!("expected a tool error, got a result: {r:?}"),
        Err(e) => panic!("expected a tool error, got a JSON-RPC error: {e}"),
    }
}

/// The JSON-RPC error code of a failed request.
pub fn error_code(e: &ServiceError) -> i32 {
    match e {
        ServiceError::McpError(d) => d.code.0,
        other => panic!("not a JSON-RPC error: {other:?}"),
    }
}

/// Audit lines of `kind`, waiting up to `wait` for at least `n` of them.
pub async fn audit_events(files: &ServerFiles, kind: &str, n: usize, wait: Duration) -> Vec<serde_json::Map<String, Value>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let lines: Vec<_> = warden::audit::read_lines(&files.audit_log())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.get("kind").and_then(Value::as_str) == Some(kind))
            .collect();
        if lines.len() >= n || tokio::time::Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn text_of(r: &CallToolResult) -> String {
    r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
}

pub fn py(code: &str) -> Value {
    json!({"language": "python", "code": code})
}

pub fn js(code: &str) -> Value {
    json!({"language": "javascript", "code": code})
}

/// A `warden serve --http` process and its URLs.
pub struct HttpServer {
    pub child: tokio::process::Child,
    pub url: String,
    pub base: String,
    log: Arc<Mutex<std::collections::VecDeque<String>>>,
}

impl HttpServer {
    /// The server's log lines so far but its announcement, oldest first (the last 10,000).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().cloned().collect()
    }

    /// Waits up to `within` for a line of the server's log (stderr) containing every one of
    /// `words`; returns it.
    pub async fn log_line(&self, words: &[&str], within: Duration) -> Option<String> {
        let until = std::time::Instant::now() + within;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| words.iter().all(|w| l.contains(w))) {
                return Some(l.clone());
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts `warden serve --http 127.0.0.1:0 EXTRA...` and waits for the address it announces.
pub async fn start_http(files: &ServerFiles, policy: Option<&Path>, extra: &[&str]) -> HttpServer {
    start_http_of(&Server::default(), files, policy, extra).await
}

/// [`start_http`] of another build, data directory or log filter.
pub async fn start_http_of(server: &Server, files: &ServerFiles, policy: Option<&Path>, extra: &[&str]) -> HttpServer {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut cmd = server_command_of(server, files, policy, &args);
    cmd.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut early = std::collections::VecDeque::new();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("startup")
            .unwrap()
            .unwrap_or_else(|| panic!("the server exited before announcing its address"));
        if let Some(rest) = line.strip_prefix("warden: serving MCP at ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        // The same announcement under `--log-format json`.
        if let Ok(record) = serde_json::from_str::<Value>(&line)
            && let Some(url) = record["fields"]["url"].as_str()
        {
            break url.to_string();
        }
        eprintln!("server: {line}");
        early.push_back(line);
    };
    // Forward the server's log (visible with --nocapture), and keep its last lines for tests.
    let log = Arc::new(Mutex::new(early));
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("server: {line}");
            let mut kept = kept.lock().unwrap();
            if kept.len() == 10_000 {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    });
    let base = url.trim_end_matches("/mcp").to_string();
    HttpServer { child, url, base, log }
}

/// Connects rmcp's streamable HTTP client, optionally with a bearer token.
pub async fn connect_http(url: &str, token: Option<&str>) -> Client {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_string());
    if let Some(t) = token {
        config = config.auth_header(t.to_string());
    }
    Recorder::default().serve(StreamableHttpClientTransport::from_config(config)).await.expect("connect")
}

/// Resident memory of a process, in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// The directory holding the workspaces of server process `pid`, if it exists.
pub fn process_workspaces(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(home().workspaces())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("pid-{pid}-")))
}

/// Starts `warden serve --http` with bearer-token authentication, one token per principal
/// (`token-NAME`), every principal with the role `tenant`, whose profile is `policy` (a file in
/// `files.dir`). Callers are then distinct principals sharing the server, as tenants do.
pub async fn start_tenants(files: &ServerFiles, policy: &Path, principals: &[&str]) -> HttpServer {
    start_tenants_with(files, policy, principals, &[]).await
}

/// [`start_tenants`], with `extra` arguments for `warden serve`.
pub async fn start_tenants_with(files: &ServerFiles, policy: &Path, principals: &[&str], extra: &[&str]) -> HttpServer {
    let sha = |t: &str| warden::digest::sha256_hex(t.as_bytes());
    let mut auth = format!("[[roles]]\nname = \"tenant\"\nprofile = {:?}\n", policy.file_name().unwrap().to_str().unwrap());
    for p in principals {
        auth.push_str(&format!("\n[[tokens]]\nprincipal = {p:?}\nsha256 = {:?}\nroles = [\"tenant\"]\n", sha(&format!("token-{p}"))));
    }
    let auth_file = files.dir.path().join("tenants.toml");
    std::fs::write(&auth_file, auth).expect("write auth file");
    let mut args = vec!["--auth", auth_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_http(files, Some(policy), &args).await
}

/// `pid` and every process below it (a server's spawner and executors), from `/proc`.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let parent_of = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
    };
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).filter_map(|p| Some((p, parent_of(p)?))).collect())
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|&&(_, pp)| pp == parent).map(|&(p, _)| p));
        i += 1;
    }
    tree
}

/// What a directory tree and the files a server holds open beneath it occupy on the host:
/// `(bytes, inodes)`. Bytes are each inode's length or allocated blocks, whichever is larger;
/// the walk has no depth limit; files unlinked while still open are found through
/// `/proc/PID/fd` of the server and every process below it (its executors hold the guests').
pub fn host_usage(dir: &Path, pid: u32) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    // A guest prepared ahead (an executor's `.pool-*` directory) is charged to no call: its own
    // directory and its empty `workspace/` and `tmp/` are not counted, anything in them is.
    fn walk(dir: &Path, pooled: bool, seen: &mut std::collections::HashSet<(u64, u64)>, total: &mut (u64, u64)) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let pool_dir = meta.is_dir() && name.starts_with(".pool-");
            let pool_root = pooled && meta.is_dir() && (name == "workspace" || name == "tmp");
            if !pool_dir && !pool_root && seen.insert((meta.dev(), meta.ino())) {
                total.0 += meta.len().max(meta.blocks() * 512);
                total.1 += 1;
            }
            if meta.is_dir() {
                walk(&e.path(), pool_dir, seen, total);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut total = (0, 0);
    walk(dir, false, &mut seen, &mut total);
    for fds in process_tree(pid).into_iter().filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok()) {
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let t = target.to_string_lossy();
            if t.starts_with(&*dir.to_string_lossy()) && t.ends_with(" (deleted)") {
                if let Ok(meta) = std::fs::metadata(fd.path()) {
                    if seen.insert((meta.dev(), meta.ino())) {
                        total.0 += meta.len().max(meta.blocks() * 512);
                        total.1 += 1;
                    }
                }
            }
        }
    }
    total
}

/// The body of a stateless MCP 2026-07-28 `tools/call` (no `initialize`, no MCP session).
pub fn stateless_body(tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments,
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string()
}

/// The headers of that request, but for authorization.
pub fn stateless_headers(tool: &str) -> [(&'static str, &str); 5] {
    [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ]
}

/// One stateless MCP 2026-07-28 `tools/call` over HTTP (the caller is the token's principal
/// alone). Returns the JSON-RPC response.
pub async fn stateless_call(url: &str, token: &str, tool: &str, arguments: Value) -> Value {
    let mut req = reqwest::Client::new().post(url).header("authorization", format!("Bearer {token}"));
    for (k, v) in stateless_headers(tool) {
        req = req.header(k, v);
    }
    let text = req.body(stateless_body(tool, arguments)).send().await.expect("POST /mcp").text().await.expect("response body");
    // An SSE stream of one event, or a plain JSON body.
    let json = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or(&text);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not a JSON-RPC response ({e}): {text}"))
}

/// One stateless MCP 2026-07-28 request of any `method` over HTTP, from a client that declares
/// the tasks extension (SEP-2663), as `token`'s principal. Returns the JSON-RPC response.
pub async fn tasks_rpc(url: &str, token: &str, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}});
    let mut req = reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = ["name", "uri", "taskId"].iter().find_map(|k| params.get(*k)).and_then(Value::as_str) {
        req = req.header("mcp-name", name);
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let text = req.body(body).send().await.expect("POST /mcp").text().await.expect("response body");
    let json = text.lines().filter_map(|l| l.strip_prefix("data: ")).find(|d| d.contains("\"id\"")).unwrap_or(&text);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not a JSON-RPC response ({e}): {text}"))
}

/// A JSON-RPC `initialize` POSTed to `/mcp` with extra headers, outside any MCP client:
/// `(status, response headers, body)`.
pub async fn post_initialize(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                   "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            .to_string(),
        );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("POST /mcp");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.expect("response body"))
}
