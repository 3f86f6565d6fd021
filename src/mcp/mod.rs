//! The MCP face of warden: `execute_code`, `create_session`, `close_session`, and the artifacts
//! as resources. The same handler serves stdio and streamable HTTP; it only translates between
//! MCP and the [`Service`].
//!
//! Errors follow the 2025-11-25 split (SEP-1303, see [`exec_error`]): whatever the model can act
//! on is a tool result with `isError: true` (bad arguments, a path escaping /workspace, limits
//! above the policy, an unknown session, a program that failed inside the guest, a busy server
//! with when to retry); JSON-RPC errors are for protocol faults (an unknown tool, an internal
//! error).

mod content;
pub mod tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;

use crate::api::{CloseSessionArgs, CreateSessionArgs, ExecuteCodeArgs};
use crate::auth::AuthContext;
use crate::sandbox::CancelHandle;
use crate::service::{Caller, ExecError, Service};
use crate::session::Owner;

/// How the handler was reached; decides who the caller is.
#[derive(Clone, Debug)]
enum Via {
    /// One client for the life of the process: the local operator.
    Stdio { connection: String },
    /// Many clients; identity comes from each request.
    Http,
}

#[derive(Clone)]
pub struct WardenMcp {
    exec: Arc<Service>,
    via: Via,
}

impl WardenMcp {
    pub fn stdio(exec: Arc<Service>) -> Self {
        WardenMcp { exec, via: Via::Stdio { connection: format!("stdio-{}", uuid::Uuid::new_v4().simple()) } }
    }

    pub fn http(exec: Arc<Service>) -> Self {
        WardenMcp { exec, via: Via::Http }
    }

    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Caller {
        let default = self.exec.profiles().default.clone();
        match &self.via {
            Via::Stdio { connection } => Caller::operator(Some(connection.clone()), &default),
            Via::Http => {
                let parts = ctx.extensions.get::<axum::http::request::Parts>();
                // Set by the auth layer; without `--auth` every caller is the anonymous local
                // user with the server's profile.
                let (principal, profile) = match parts.and_then(|p| p.extensions.get::<AuthContext>()) {
                    Some(a) => (a.principal.clone(), a.profile.clone()),
                    None => ("anonymous".to_string(), default),
                };
                // A stateful (legacy) MCP session binds sessions to itself; stateless requests
                // bind to the principal alone.
                let connection =
                    parts.and_then(|p| p.headers.get("mcp-session-id")).and_then(|v| v.to_str().ok()).map(|s| format!("http-{s}"));
                Caller { principal: principal.clone(), owner: Owner { principal, connection }, profile }
            }
        }
    }

    fn policy_of(&self, caller: &Caller) -> Result<std::sync::Arc<crate::service::Profile>, McpError> {
        self.exec.profile(caller).map_err(|e| McpError::invalid_params(e.to_string(), None))
    }
}

/// A tool's arguments, or the reason they do not fit its input schema (which the model can fix:
/// a tool result, not a protocol error).
pub(crate) fn parse_args<T: DeserializeOwned>(req: &CallToolRequestParams) -> Result<T, ExecError> {
    let value = serde_json::Value::Object(req.arguments.clone().unwrap_or_default());
    serde_json::from_value(value).map_err(|e| ExecError::InvalidRequest(format!("invalid arguments for {}: {e}", req.name)))
}

/// The `_meta` key of a refused call's result that says, in whole seconds, when to try again.
pub const RETRY_AFTER_META: &str = "io.github.warden/retryAfterSeconds";

/// How an error reaches the client. Per the 2025-11-25 spec (SEP-1303), whatever the model can
/// act on is a tool result with `isError: true` and the precise message: invalid arguments,
/// limits above the policy, bad input files, unknown or mismatched sessions, and the transient
/// refusals (busy, rate limited, shutting down), which also carry [`RETRY_AFTER_META`]. JSON-RPC
/// errors are left for what is not the model's to fix: an unknown tool, and internal faults.
fn exec_error(e: ExecError) -> Result<CallToolResponse, McpError> {
    match e {
        ExecError::UnknownTool(m) => Err(McpError::invalid_params(m, None)),
        ExecError::Internal(m) => {
            tracing::error!(error = %m, "internal error serving a tool call");
            Err(McpError::internal_error("internal error; see the server log", None))
        }
        e @ (ExecError::InvalidRequest(_)
        | ExecError::Session(_)
        | ExecError::Busy { .. }
        | ExecError::Limited(_)
        | ExecError::ShuttingDown
        | ExecError::Audit(_)) => {
            let mut result = CallToolResult::error(vec![ContentBlock::text(e.to_string())]);
            if let Some(s) = e.retry_after_s() {
                let mut meta = serde_json::Map::new();
                meta.insert(RETRY_AFTER_META.into(), s.into());
                result.meta = Some(rmcp::model::MetaObject(meta));
            }
            Ok(result.into())
        }
    }
}

/// The arguments of `req`, or the answer to give when they do not parse.
macro_rules! args_or_answer {
    ($req:expr) => {
        match parse_args(&$req) {
            Ok(a) => a,
            Err(e) => return exec_error(e),
        }
    };
}

/// Sends progress notifications while `work` runs, if the client asked for them.
async fn with_progress<F: std::future::Future>(ctx: &RequestContext<RoleServer>, total: Duration, work: F) -> F::Output {
    let Some(token) = ctx.meta.get_progress_token() else { return work.await };
    let started = Instant::now();
    let notify = |msg: String| {
        let elapsed = started.elapsed().as_secs_f64();
        ctx.peer.notify_progress(ProgressNotificationParam::new(token.clone(), elapsed).with_total(total.as_secs_f64()).with_message(msg))
    };
    let _ = notify("started".into()).await;
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                let _ = notify(format!("running for {:.1} s", started.elapsed().as_secs_f64())).await;
            }
        }
    }
}

impl ServerHandler for WardenMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().build())
            .with_server_info(Implementation::new("warden", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "warden runs Python and JavaScript in isolated sandboxes. Call execute_code with the code; files the \
                 program writes to its working directory come back as artifacts. Use create_session for state that \
                 lasts across calls.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let profile = self.policy_of(&self.caller(&ctx))?;
        let mut all = tools::definitions(&profile.policy);
        all.extend(self.exec.granted_tools(&profile.policy).iter().map(|(t, _)| tools::package_tool(t)));
        Ok(ListToolsResult::with_all_items(all))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        let profile = self.exec.default_profile();
        tools::find(&profile.policy, name).or_else(|| self.exec.tools.get(name).map(|t| tools::package_tool(t)))
    }

    async fn call_tool(&self, req: CallToolRequestParams, ctx: RequestContext<RoleServer>) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&ctx);
        let profile = self.policy_of(&caller)?;
        let policy = &profile.policy;
        let sessions_on = policy.file.sessions.max > 0 && !policy.file.runtimes.allowed.is_empty();
        match req.name.as_ref() {
            tools::EXECUTE_CODE if !policy.file.runtimes.allowed.is_empty() => {
                let args: ExecuteCodeArgs = args_or_answer!(req);
                let cancel = CancelHandle::new();
                let watcher = {
                    let (ct, cancel) = (ctx.ct.clone(), cancel.clone());
                    tokio::spawn(async move {
                        ct.cancelled().await;
                        cancel.cancel();
                    })
                };
                let timeout = Duration::from_millis(policy.file.limits.timeout_ms);
                let result = with_progress(&ctx, timeout, self.exec.execute(&caller, args, cancel)).await;
                watcher.abort();
                match result {
                    Ok(r) => Ok(content::execution_result(r).into()),
                    Err(e) => exec_error(e),
                }
            }
            tools::CREATE_SESSION if sessions_on => {
                let args: CreateSessionArgs = args_or_answer!(req);
                match self.exec.create_session(&caller, args.language).await {
                    Ok(info) => Ok(content::structured(
                        &info,
                        format!("session {} ({}) expires at {}", info.session_id, info.language, info.expires_at),
                    )
                    .into()),
                    Err(e) => exec_error(e),
                }
            }
            tools::CLOSE_SESSION if sessions_on => {
                let args: CloseSessionArgs = args_or_answer!(req);
                match self.exec.close_session(&caller, &args.session_id) {
                    Ok(r) => Ok(content::structured(&r, format!("session {} closed", r.session_id)).into()),
                    Err(e) => exec_error(e),
                }
            }
            other => {
                let args = serde_json::Value::Object(req.arguments.clone().unwrap_or_default());
                let cancel = CancelHandle::new();
                let watcher = {
                    let (ct, cancel) = (ctx.ct.clone(), cancel.clone());
                    tokio::spawn(async move {
                        ct.cancelled().await;
                        cancel.cancel();
                    })
                };
                let timeout = Duration::from_millis(policy.file.limits.timeout_ms);
                let result = with_progress(&ctx, timeout, self.exec.call_tool(&caller, other, args, cancel)).await;
                watcher.abort();
                match result {
                    Ok((meta, value)) => Ok(content::tool_result(meta, value).into()),
                    Err(e) => exec_error(e),
                }
            }
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = self.caller(&ctx);
        let items = self
            .exec
            .artifacts
            .list(&caller.owner)
            .into_iter()
            .map(|a| Resource::new(a.uri.clone(), a.path.clone()).with_mime_type(a.mime.clone()).with_size(a.size))
            .collect();
        Ok(ListResourcesResult::with_all_items(items))
    }

    async fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = self.caller(&ctx);
        let (bytes, mime) = self.exec.read_artifact(&caller, &req.uri).await.map_err(|e| match e {
            e @ (ExecError::Limited(_) | ExecError::Busy { .. }) => McpError::internal_error(e.to_string(), None),
            e => McpError::resource_not_found(e.to_string(), None),
        })?;
        // Encoding up to MAX_READ_BYTES is work proportional to guest data: off the async runtime.
        let uri = req.uri.clone();
        let contents = tokio::task::spawn_blocking(move || {
            if content::is_text(&mime) && std::str::from_utf8(&bytes).is_ok() {
                ResourceContents::text(String::from_utf8(bytes).expect("checked"), uri).with_mime_type(mime)
            } else {
                use base64::Engine as _;
                ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(&bytes), uri).with_mime_type(mime)
            }
        })
        .await
        .map_err(|e| McpError::internal_error(format!("encoding the resource: {e}"), None))?;
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}
