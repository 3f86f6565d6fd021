//! Calls that run a guest: `execute_code` (fresh or in a session) and package tools. Each one is
//! validated, admitted, audited at its start (fail closed), run by the executor, audited at its
//! end, and shaped into the result the caller gets; its artifacts are retained for
//! `resources/read`.

use std::sync::Arc;
use std::time::Duration;

use super::admission::MAX_AUDIT_REASON;
use super::request::inputs_digest;
use super::{Caller, ExecError, Service};
use crate::api::{ExecResult, ExecuteCodeArgs, InlineImage};
use crate::artifacts::{call_uri, session_uri};
use crate::audit::Recorded;
use crate::audit::bound::bound_str;
use crate::audit::event::{ArtifactDigest, Call, CallWhat, Event, RunEnd};
use crate::digest::sha256_hex;
use crate::policy::Policy;
use crate::sandbox::{CancelHandle, Door, RunReport, Workspace};
use crate::tools::door::CodeModeDoor;

/// Most images returned inline per call; the rest are resource links.
const MAX_INLINE_IMAGES: usize = 4;

impl Service {
    /// Runs `execute_code`.
    pub async fn execute(&self, caller: &Caller, args: ExecuteCodeArgs, cancel: CancelHandle) -> Result<ExecResult, ExecError> {
        self.admission.open()?;
        let profile = self.profile(caller)?;
        let policy = &profile.policy;
        let (spec, files) = self.prepare(caller, policy, &args)?;
        let session = match &args.session_id {
            Some(id) => Some(self.session_for(caller, policy, id, spec.language)?),
            None => None,
        };
        let _admitted = self.admission.call(caller, &profile, &cancel).await?;

        let call_id = uuid::Uuid::new_v4().to_string();
        let what = CallWhat::Code {
            session_id: args.session_id.clone(),
            tool: "execute_code",
            language: spec.language,
            code_sha256: sha256_hex(spec.code.as_bytes()),
            inputs_sha256: inputs_digest(&files, &spec.stdin),
            code: policy.file.audit.record_code.then(|| spec.code.clone()),
        };
        let base = call_record(&call_id, caller, policy, what, &spec.limits);
        // Fail closed: if the start cannot be recorded, nothing runs.
        let start = self.audit.record(&Event::ExecutionStart(base.clone()))?;

        let door = self.door(caller, &profile, &call_id, &cancel);
        let run = match &session {
            None => self.executor.run_fresh(&spec, &files, &cancel, door).await,
            Some(s) => self.executor.session_turn(s, &spec, &files, &cancel, door).await,
        };
        let (mut report, workspace) = run.map_err(|e| self.audit_unfinished(&start, base.clone(), e.into()))?;
        let images = inline_images(&workspace, &report, policy.file.artifacts.inline_image_bytes);
        for a in &mut report.artifacts {
            a.uri = match &session {
                None => call_uri(&call_id, &a.path),
                Some(s) => session_uri(&s.id, &a.path),
            };
        }
        if session.is_none() {
            self.retain(&call_id, caller, policy, &workspace, &mut report);
        }
        let recorded = self.audit_end(&start, base, &report)?;
        self.metrics.record_execution(spec.language.as_str(), report.outcome.as_str(), report.duration_ms, report.fuel_used);
        let mut result = to_result(report, recorded, args.session_id);
        result.inline_images = images;
        result.workspace = Some(workspace);
        Ok(result)
    }

    /// Runs a tool package as an MCP `tools/call`: the result, or the message explaining why
    /// there is none, plus the same report and audit as `execute_code`.
    pub async fn call_tool(
        &self,
        caller: &Caller,
        name: &str,
        args: serde_json::Value,
        cancel: CancelHandle,
    ) -> Result<(ExecResult, Result<serde_json::Value, String>), ExecError> {
        self.admission.open()?;
        let profile = self.profile(caller)?;
        let policy = &profile.policy;
        let (tool, grant) = self.prepare_tool(caller, policy, name, &args)?;
        let _admitted = self.admission.call(caller, &profile, &cancel).await?;
        let call_id = uuid::Uuid::new_v4().to_string();
        let what = CallWhat::Tool {
            tool: name.to_string(),
            tool_version: tool.manifest.version.clone(),
            tool_sha256: tool.manifest.wasm_sha256.clone(),
            args_sha256: sha256_hex(args.to_string().as_bytes()),
        };
        let base = call_record(&call_id, caller, policy, what, &grant.limits);
        let start = self.audit.record(&Event::ExecutionStart(base.clone()))?;
        let run = self
            .executor
            .run_tool(&tool, &grant, args, &cancel)
            .await
            .map_err(|e| self.audit_unfinished(&start, base.clone(), e.into()))?;
        let mut report = run.report;
        for a in &mut report.artifacts {
            a.uri = call_uri(&call_id, &a.path);
        }
        let images = inline_images(&run.workspace, &report, policy.file.artifacts.inline_image_bytes);
        self.retain(&call_id, caller, policy, &run.workspace, &mut report);
        let recorded = self.audit_end(&start, base, &report)?;
        self.metrics.record_execution(&format!("tool:{name}"), report.outcome.as_str(), report.duration_ms, report.fuel_used);
        let mut result = to_result(report, recorded, None);
        result.inline_images = images;
        result.workspace = Some(run.workspace);
        Ok((result, run.value))
    }

    /// The code-mode door for one execution, when its profile allows tool calls from code.
    fn door(&self, caller: &Caller, profile: &Arc<super::Profile>, call_id: &str, cancel: &CancelHandle) -> Option<Box<dyn Door>> {
        let max = profile.policy.file.tools.calls_per_execution;
        let tools = self.granted_tools(&profile.policy);
        if max == 0 || tools.is_empty() {
            return None;
        }
        Some(Box::new(CodeModeDoor::new(
            tools,
            self.audit.clone(),
            self.admission.clone(),
            caller.clone(),
            profile.clone(),
            call_id,
            self.executor.workspaces().to_path_buf(),
            cancel.clone(),
            max,
        )))
    }

    /// Keeps a one-shot call's artifacts readable, or says in the report why they are not.
    fn retain(&self, call_id: &str, caller: &Caller, policy: &Policy, ws: &Arc<Workspace>, report: &mut RunReport) {
        let retention = Duration::from_secs(policy.file.artifacts.retention_seconds);
        if !self.artifacts.retain(call_id, &caller.owner, ws.clone(), &report.artifacts, retention) {
            let note = "the artifacts were not kept for resources/read: the server's artifact store is full; read them from this result or retry later";
            report.message = Some(match report.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note.to_string(),
            });
        }
    }

    /// Records how a call ended, with its artifacts.
    fn audit_end(&self, start: &Recorded, call: Call, report: &RunReport) -> Result<Recorded, ExecError> {
        Ok(self.audit.record(&Event::Execution {
            call,
            started: start_id(start),
            end: RunEnd::of(report),
            artifacts: report
                .artifacts
                .iter()
                .map(|a| ArtifactDigest { path: a.path.clone(), size: a.size, sha256: a.sha256.clone() })
                .collect(),
        })?)
    }

    /// Records that a call whose start was recorded ended without running (its inputs could not
    /// be written, say), so every `execution.start` has an end. Returns the error to give the
    /// caller, or the audit failure if even that record cannot be written.
    fn audit_unfinished(&self, start: &Recorded, call: Call, e: ExecError) -> ExecError {
        let reason = bound_str(&e.to_string(), MAX_AUDIT_REASON).into_owned();
        match self.audit.record(&Event::ExecutionDenied { call, started: start_id(start), reason }) {
            Ok(_) => e,
            Err(audit) => audit.into(),
        }
    }
}

/// The audit record of a call: who, what, under which profile and limits.
fn call_record(call_id: &str, caller: &Caller, policy: &Policy, what: CallWhat, limits: &crate::sandbox::Limits) -> Call {
    Call {
        call_id: call_id.to_string(),
        principal: caller.principal.clone(),
        connection: caller.owner.connection.clone(),
        what,
        profile: policy.name().to_string(),
        profile_sha256: policy.sha256.clone(),
        limits: limits.clone(),
    }
}

/// The `id` of a recorded line.
fn start_id(start: &Recorded) -> String {
    start.get("id").and_then(|v| v.as_str()).unwrap_or_default().to_string()
}

/// Reads the small PNG/JPEG artifacts of a run while its workspace certainly exists.
fn inline_images(ws: &Workspace, report: &RunReport, cap: u64) -> Vec<InlineImage> {
    report
        .artifacts
        .iter()
        .filter(|a| matches!(a.mime.as_str(), "image/png" | "image/jpeg") && a.size <= cap)
        .take(MAX_INLINE_IMAGES)
        .filter_map(|a| {
            let bytes = ws.read_file(&a.path, cap).ok()?;
            Some(InlineImage { path: a.path.clone(), mime: a.mime.clone(), bytes })
        })
        .collect()
}

fn to_result(r: RunReport, audit: Recorded, session_id: Option<String>) -> ExecResult {
    ExecResult {
        outcome: r.outcome,
        exit_code: r.exit_code,
        stdout: r.stdout,
        stderr: r.stderr,
        truncated: r.truncated,
        duration_ms: r.duration_ms,
        fuel_used: r.fuel_used,
        artifacts: r.artifacts,
        audit_id: audit.get("id").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
        audit,
        session_id,
        message: r.message,
        inline_images: Vec::new(),
        workspace: None,
    }
}
