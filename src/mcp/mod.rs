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
pub mod logging;
pub mod progress;
pub mod tasks;
pub mod tools;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock, CreateTaskResult, GetTaskParams,
    GetTaskResult, Implementation, ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;

use crate::api::{
    CloseSessionArgs, CreateSessionArgs, ExecuteCodeArgs, ForkSessionArgs, ListSnapshotsArgs, SnapshotIdArgs, SnapshotSessionArgs,
};
use crate::api::{ExecResult, OutputSink};
use crate::audit::event::Event;
use crate::auth::AuthContext;
use crate::sandbox::CancelHandle;
use crate::service::{Caller, ExecError, Service};
use crate::session::Owner;
use progress::with_progress;

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
    /// Calls running or finished as MCP tasks: one table for every connection, since a task
    /// outlives the one that made it.
    tasks: Arc<tasks::Tasks>,
    /// The level this connection's client set with `logging/setLevel`.
    log: Arc<logging::ClientLog>,
}

/// A guest call, ready to run on the request or in a task of its own.
type GuestCall = std::pin::Pin<Box<dyn std::future::Future<Output = Result<CallToolResult, McpError>> + Send>>;

impl WardenMcp {
    pub fn stdio(exec: Arc<Service>) -> Self {
        let via = Via::Stdio { connection: format!("stdio-{}", uuid::Uuid::new_v4().simple()) };
        WardenMcp { exec, via, tasks: Arc::default(), log: Arc::default() }
    }

    /// The handler of one HTTP session; `tasks` is the server's one task table.
    pub fn http(exec: Arc<Service>, tasks: Arc<tasks::Tasks>) -> Self {
        WardenMcp { exec, via: Via::Http, tasks, log: Arc::default() }
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

    /// Runs a call that runs a guest (`execute_code` or a package tool). It runs on its
    /// request, with progress notifications; for a client that declared the tasks extension it
    /// runs in a task of its own, and if it outlasts [`tasks::PROMOTE_AFTER`] the request is
    /// answered with a task handle while the call goes on (see [`tasks`]).
    async fn run_guest_call(
        &self,
        ctx: &RequestContext<RoleServer>,
        caller: &Caller,
        profile: &crate::service::Profile,
        tool: &str,
        call: impl FnOnce(CancelHandle, Option<OutputSink>) -> GuestCall,
    ) -> Result<CallToolResponse, McpError> {
        let policy = &profile.policy;
        let timeout = Duration::from_millis(policy.file.limits.timeout_ms);
        let task_capable = ctx.client_capabilities().is_some_and(|c| c.supports_tasks()) && policy.file.tasks.max > 0;
        let (cancel, watcher) = cancel_on_request_end(ctx);
        if !task_capable {
            let result = with_progress(ctx, timeout, |out| call(cancel, out)).await;
            return self.answer(ctx, tool, watcher, result).await;
        }
        // Its own tokio task, so that it can outlive this request.
        let (sink, mut chunks) = tokio::sync::mpsc::unbounded_channel();
        let mut job = tokio::spawn(call(cancel.clone(), Some(sink)));
        let notifier = progress::Notifier::new(ctx, timeout).keeping();
        notifier.started().await;
        let joined = |r: Result<Result<CallToolResult, McpError>, tokio::task::JoinError>| match r {
            Ok(r) => r,
            Err(e) => Err(McpError::internal_error(format!("the call's task failed: {e}"), None)),
        };
        if let Ok(r) = tokio::time::timeout(tasks::PROMOTE_AFTER, notifier.follow(&mut job, &mut chunks)).await {
            return self.answer(ctx, tool, watcher, joined(r)).await;
        }
        let longest = timeout + Duration::from_millis(policy.file.limits.queue_timeout_ms);
        let new = tasks::NewTask {
            principal: &caller.principal,
            profile: policy.name(),
            limits: &policy.file.tasks,
            longest_run: longest,
            cancel: cancel.clone(),
        };
        let Some(task) = self.tasks.create(new) else {
            // No room for another task: it ends on its request, as without the extension.
            let r = notifier.follow(&mut job, &mut chunks).await;
            return self.answer(ctx, tool, watcher, joined(r)).await;
        };
        // From here on only tasks/cancel stops it, not the request or its connection.
        watcher.abort();
        trace::of(ctx).set(opentelemetry::KeyValue::new("warden.task.id", task.task_id.clone()));
        // The first poll starts from the start: the client that saw the progress so far may be gone.
        self.tasks.output(&task.task_id, notifier.kept());
        self.audit(&Event::TaskCreate {
            task_id: task.task_id.clone(),
            principal: caller.principal.clone(),
            connection: caller.owner.connection.clone(),
            tool: tool.to_string(),
            profile: policy.name().to_string(),
            trace_id: trace::of(ctx).trace_id(),
        });
        let (tasks, id) = (self.tasks.clone(), task.task_id.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(chunk) = chunks.recv() => tasks.output(&id, chunk),
                    r = &mut job => {
                        while let Ok(chunk) = chunks.try_recv() {
                            tasks.output(&id, chunk);
                        }
                        tasks.finish(&id, joined(r));
                        return;
                    }
                }
            }
        });
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }

    /// Ends a guest call on its request: stops watching for the request's end, tells a client
    /// that set a log level how it went, and answers with the result.
    async fn answer(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &str,
        watcher: tokio::task::JoinHandle<()>,
        result: Result<CallToolResult, McpError>,
    ) -> Result<CallToolResponse, McpError> {
        watcher.abort();
        self.log.call_ended(ctx, tool, &result).await;
        result.map(Into::into)
    }

    /// Records a task's event. The call itself was recorded when it was admitted (fail closed);
    /// a failure here is logged and counted, and the task goes on.
    fn audit(&self, event: &Event) {
        if let Err(e) = self.exec.audit_log().record(event) {
            tracing::error!(error = %e, kind = event.kind(), "could not record a task event in the audit log");
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
    error_result(e).map(Into::into)
}

/// Lets go of a finished call's workspace on a blocking thread. Unless the artifact store kept
/// it, the last handle removes the call's directory as it drops (0.3-0.4 ms for an empty one),
/// which the response need not wait for.
fn release_workspace(r: &mut ExecResult) {
    if let Some(ws) = r.workspace.take() {
        tokio::task::spawn_blocking(move || drop(ws));
    }
}

/// [`exec_error`] as a plain tool result (what a task keeps).
fn error_result(e: ExecError) -> Result<CallToolResult, McpError> {
    match e {
        ExecError::UnknownTool(m) => Err(McpError::invalid_params(m, None)),
        ExecError::Internal(m) => {
            tracing::error!(error = %m, "internal error serving a tool call");
            Err(McpError::internal_error("internal error; see the server log", None))
        }
        e @ (ExecError::InvalidRequest(_)
        | ExecError::Session(_)
        | ExecError::Snapshot(_)
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
            Ok(result)
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

/// A cancel handle for one call that fires when the client cancels the request (or its
/// connection ends), and the task that watches for it (abort it when the call is done).
fn cancel_on_request_end(ctx: &RequestContext<RoleServer>) -> (CancelHandle, tokio::task::JoinHandle<()>) {
    let cancel = CancelHandle::new();
    let (ct, c) = (ctx.ct.clone(), cancel.clone());
    let watcher = tokio::spawn(async move {
        ct.cancelled().await;
        c.cancel();
    });
    (cancel, watcher)
}

impl ServerHandler for WardenMcp {
    // Logging is deprecated by SEP-2577 but still answered for the clients that set a level.
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().enable_logging().enable_tasks().build())
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
        let snapshots_on = sessions_on && policy.file.snapshots.max_per_principal > 0;
        match req.name.as_ref() {
            tools::EXECUTE_CODE if !policy.file.runtimes.allowed.is_empty() => {
                let args: ExecuteCodeArgs = args_or_answer!(req);
                let (exec, who, trace) = (self.exec.clone(), caller.clone(), trace::of(&ctx));
                let call = move |cancel, out| -> GuestCall {
                    Box::pin(async move {
                        match exec.execute(&who, args, cancel, out, trace).await {
                            Ok(mut r) => {
                                release_workspace(&mut r);
                                Ok(content::execution_result(r))
                            }
                            Err(e) => error_result(e),
                        }
                    })
                };
                self.run_guest_call(&ctx, &caller, &profile, tools::EXECUTE_CODE, call).await
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
            tools::FORK_SESSION if sessions_on => {
                let args: ForkSessionArgs = args_or_answer!(req);
                let forked = match (&args.session_id, &args.snapshot_id) {
                    (Some(id), None) => self.exec.fork_session(&caller, id).await,
                    (None, Some(id)) => self.exec.fork_from_snapshot(&caller, id).await,
                    _ => Err(ExecError::InvalidRequest(
                        "pass exactly one of session_id (a live session) and snapshot_id (a snapshot)".into(),
                    )),
                };
                match forked {
                    Ok(r) => {
                        Ok(content::structured(&r, format!("session {} forked from {}: {}", r.session_id, r.forked_from, r.message)).into())
                    }
                    Err(e) => exec_error(e),
                }
            }
            tools::SNAPSHOT_SESSION if snapshots_on => {
                let args: SnapshotSessionArgs = args_or_answer!(req);
                match self.exec.snapshot_session(&caller, &args.session_id, args.label).await {
                    Ok(r) => Ok(content::structured(
                        &r,
                        format!("snapshot {} of session {}: {} bytes, kept until {}", r.snapshot_id, r.session_id, r.bytes, r.expires_at),
                    )
                    .into()),
                    Err(e) => exec_error(e),
                }
            }
            tools::RESTORE_SESSION if snapshots_on => {
                let args: SnapshotIdArgs = args_or_answer!(req);
                match self.exec.restore_session(&caller, &args.snapshot_id).await {
                    Ok(r) => Ok(content::structured(
                        &r,
                        format!(
                            "session {} {} from snapshot {}: {}",
                            r.session_id,
                            if r.rolled_back { "rolled back" } else { "reopened" },
                            r.snapshot_id,
                            r.message
                        ),
                    )
                    .into()),
                    Err(e) => exec_error(e),
                }
            }
            tools::LIST_SNAPSHOTS if snapshots_on => {
                let _: ListSnapshotsArgs = args_or_answer!(req);
                match self.exec.list_snapshots(&caller) {
                    Ok(r) => {
                        let text = format!("{} snapshots, {} of {} bytes used", r.snapshots.len(), r.used_bytes, r.quota_bytes);
                        Ok(content::structured(&r, text).into())
                    }
                    Err(e) => exec_error(e),
                }
            }
            tools::DELETE_SNAPSHOT if snapshots_on => {
                let args: SnapshotIdArgs = args_or_answer!(req);
                match self.exec.delete_snapshot(&caller, &args.snapshot_id) {
                    Ok(r) => Ok(content::structured(&r, format!("snapshot {} deleted", r.snapshot_id)).into()),
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
                let (exec, who, name, trace) = (self.exec.clone(), caller.clone(), other.to_string(), trace::of(&ctx));
                let call = move |cancel, out| -> GuestCall {
                    Box::pin(async move {
                        match exec.call_tool(&who, &name, args, cancel, out, trace).await {
                            Ok((mut meta, value)) => {
                                release_workspace(&mut meta);
                                Ok(content::tool_result(meta, value))
                            }
                            Err(e) => error_result(e),
                        }
                    })
                };
                self.run_guest_call(&ctx, &caller, &profile, other, call).await
            }
        }
    }

    #[allow(deprecated)]
    async fn set_level(&self, req: rmcp::model::SetLevelRequestParams, _ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.log.set(req.level);
        Ok(())
    }

    async fn get_task(&self, req: GetTaskParams, ctx: RequestContext<RoleServer>) -> Result<GetTaskResult, McpError> {
        self.tasks.get(&self.caller(&ctx).principal, &req.task_id)
    }

    async fn cancel_task(&self, req: CancelTaskParams, ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        let caller = self.caller(&ctx);
        self.tasks.cancel(&caller.principal, &req.task_id)?;
        self.audit(&Event::TaskCancel {
            task_id: req.task_id.clone(),
            principal: caller.principal.clone(),
            connection: caller.owner.connection.clone(),
        });
        Ok(())
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
            e => McpError::resource_not_found(e.to_string(), Some(serde_json::json!({"uri": req.uri}))),
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
