//! The span of each MCP request, per OpenTelemetry's MCP semantic conventions: kind SERVER,
//! named `{mcp.method.name} {target}` (the tool for `tools/call`), a child of the caller's
//! context from `params._meta` (or the HTTP `traceparent`), with the conventions' attributes
//! (`mcp.method.name`, `jsonrpc.request.id`, `mcp.protocol.version`, `mcp.session.id`,
//! `gen_ai.tool.name`, `gen_ai.operation.name`, `network.transport`, `error.type`).
//!
//! [`Traced`] wraps the handler: it starts the span, hands the call's [`Trace`] to the handler in
//! the request's extensions ([`of`]), and ends the span with the outcome (`error.type`: the
//! JSON-RPC code, or `tool_error` for a result with `isError`). Requests rmcp answers itself
//! (initialize, ping, unknown methods) have no span. What happens inside a
//! guest call is recorded by the service under that trace. A `tools/call` answered with a task
//! handle ends its span there (with `warden.task.id`); the call's own stages go on under it.
//!
//! Values the caller controls (tool names, ids, session ids) are cut to a bound; a tool error's
//! text is never put in a span (it can hold guest output).

use std::borrow::Cow;
use std::future::Future;

use opentelemetry::KeyValue;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams, GetTaskResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};

use super::{Via, WardenMcp};
use crate::telemetry::{Parent, Trace};

/// Longest value kept of a caller-chosen name or id in a span.
const MAX_NAME: usize = 256;

/// [`WardenMcp`], with a span for every request it serves. (rmcp's HTTP transport takes a
/// `ServerHandler`, so the wrapper is one, delegating each method it traces.)
#[derive(Clone)]
pub struct Traced(pub WardenMcp);

/// The trace of the request `ctx` belongs to (recording nothing outside [`Traced`]).
pub fn of(ctx: &RequestContext<RoleServer>) -> Trace {
    ctx.extensions.get::<Trace>().cloned().unwrap_or_default()
}

impl Traced {
    /// Runs `handler` for one request inside its span: `method` and, for `tools/call`, the tool.
    async fn traced<T, F>(
        &self,
        method: &'static str,
        target: Option<&str>,
        mut attributes: Vec<KeyValue>,
        mut ctx: RequestContext<RoleServer>,
        tool_error: fn(&T) -> bool,
        handler: impl FnOnce(RequestContext<RoleServer>) -> F,
    ) -> Result<T, McpError>
    where
        F: Future<Output = Result<T, McpError>>,
    {
        let trace = self.start(method, target, &mut attributes, &ctx);
        ctx.extensions.insert(trace.clone());
        let result = handler(ctx).await;
        trace.end(match &result {
            Err(e) => Some((Cow::Owned(e.code.0.to_string()), e.message.to_string())),
            // The conventions' value for a tool result with `isError`; its text is not recorded.
            Ok(r) if tool_error(r) => Some((Cow::Borrowed("tool_error"), "the tool call failed".into())),
            Ok(_) => None,
        });
        result
    }

    fn start(&self, method: &'static str, target: Option<&str>, attributes: &mut Vec<KeyValue>, ctx: &RequestContext<RoleServer>) -> Trace {
        let telemetry = self.0.exec.telemetry();
        let parts = ctx.extensions.get::<axum::http::request::Parts>();
        let meta = serde_json::Value::Object(ctx.meta.0.0.clone().into_iter().collect());
        let parent = Parent::from_meta_and_headers(&meta, parts.map(|p| &p.headers));
        if !telemetry.enabled() {
            // No spans; the trace still carries the caller's trace id to the audit log.
            return telemetry.request(String::new(), &parent, Vec::new());
        }
        attributes.push(KeyValue::new("mcp.method.name", method));
        attributes.push(KeyValue::new("jsonrpc.request.id", cut(&ctx.id.to_string())));
        if let Some(v) = ctx.protocol_version() {
            attributes.push(KeyValue::new("mcp.protocol.version", v.to_string()));
        }
        match &self.0.via {
            Via::Stdio { .. } => attributes.push(KeyValue::new("network.transport", "pipe")),
            Via::Http => {
                attributes.push(KeyValue::new("network.transport", "tcp"));
                attributes.push(KeyValue::new("network.protocol.name", "http"));
                if let Some(id) = parts.and_then(|p| p.headers.get("mcp-session-id")).and_then(|v| v.to_str().ok()) {
                    attributes.push(KeyValue::new("mcp.session.id", cut(id)));
                }
            }
        }
        attributes.push(KeyValue::new("warden.principal", cut(&self.0.caller(ctx).principal)));
        let name = match target {
            Some(t) => format!("{method} {}", cut(t)),
            None => method.to_string(),
        };
        telemetry.request(name, &parent, std::mem::take(attributes))
    }
}

fn never<T>(_: &T) -> bool {
    false
}

impl ServerHandler for Traced {
    fn get_info(&self) -> ServerConfig {
        self.0.get_info()
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.0.get_tool(name)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.0.supported_protocol_versions()
    }

    async fn call_tool(&self, req: CallToolRequestParams, ctx: RequestContext<RoleServer>) -> Result<CallToolResponse, McpError> {
        let tool = cut(&req.name);
        let attributes = vec![KeyValue::new("gen_ai.tool.name", tool.clone()), KeyValue::new("gen_ai.operation.name", "execute_tool")];
        let failed = |r: &CallToolResponse| matches!(r, CallToolResponse::Complete(c) if c.is_error == Some(true));
        self.traced("tools/call", Some(&tool), attributes, ctx, failed, |ctx| self.0.call_tool(req, ctx)).await
    }

    async fn list_tools(&self, req: Option<PaginatedRequestParams>, ctx: RequestContext<RoleServer>) -> Result<ListToolsResult, McpError> {
        self.traced("tools/list", None, Vec::new(), ctx, never, |ctx| self.0.list_tools(req, ctx)).await
    }

    async fn list_resources(
        &self,
        req: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.traced("resources/list", None, Vec::new(), ctx, never, |ctx| self.0.list_resources(req, ctx)).await
    }

    async fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let attributes = vec![KeyValue::new("mcp.resource.uri", cut(&req.uri))];
        self.traced("resources/read", None, attributes, ctx, never, |ctx| self.0.read_resource(req, ctx)).await
    }

    async fn get_task(&self, req: GetTaskParams, ctx: RequestContext<RoleServer>) -> Result<GetTaskResult, McpError> {
        self.traced("tasks/get", None, Vec::new(), ctx, never, |ctx| self.0.get_task(req, ctx)).await
    }

    async fn cancel_task(&self, req: CancelTaskParams, ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.traced("tasks/cancel", None, Vec::new(), ctx, never, |ctx| self.0.cancel_task(req, ctx)).await
    }

    #[allow(deprecated)]
    async fn set_level(&self, req: rmcp::model::SetLevelRequestParams, ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.traced("logging/setLevel", None, Vec::new(), ctx, never, |ctx| self.0.set_level(req, ctx)).await
    }
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
