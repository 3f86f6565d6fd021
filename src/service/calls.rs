//! Calls that run a guest: `execute_code` (fresh or in a session) and package tools. Each one is
//! validated, admitted, audited at its start (fail closed), placed on an executor process and
//! run there, audited at its end, and shaped into the result the caller gets; its artifacts are
//! retained for `resources/read`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use super::admission::MAX_AUDIT_REASON;
use super::executors::{DoorHandler, Executors, GroupKey, Ran, crashed, finish};
use super::request::inputs_digest;
use super::{Caller, ExecError, Service};
use crate::api::{ExecResult, ExecuteCodeArgs, InlineImage, OutputSink};
use crate::artifacts::{call_uri, session_uri};
use crate::audit::Recorded;
use crate::audit::bound::bound_str;
use crate::audit::event::{ArtifactDigest, Call, CallWhat, Event, RunEnd};
use crate::channel::inputs;
use crate::channel::proto::{GrantSpec, Job, Spec};
use crate::digest::sha256_hex;
use crate::policy::Policy;
use crate::runtime::Language;
use crate::sandbox::{CancelHandle, ExecSpec, InputFile, Limits, RunReport, Workspace};
use crate::session::{Session, SessionError};
use crate::telemetry::{Trace, bounded};
use crate::tools::door::CodeModeDoor;
use crate::tools::{Grant, ToolPackage, interpret};

/// Most images returned inline per call; the rest are resource links.
const MAX_INLINE_IMAGES: usize = 4;

impl Service {
    /// Runs `execute_code`; with `output`, the guest's output also goes there as it is written.
    /// Its stages are recorded under `trace`.
    pub async fn execute(
        &self,
        caller: &Caller,
        args: ExecuteCodeArgs,
        cancel: CancelHandle,
        output: Option<OutputSink>,
        trace: Trace,
    ) -> Result<ExecResult, ExecError> {
        self.admission.open()?;
        let profile = self.profile(caller)?;
        let policy = &profile.policy;
        let (spec, files) = self.prepare(caller, policy, &args)?;
        let session = match &args.session_id {
            Some(id) => Some(self.open_session(caller, policy, id, Some(spec.language)).await?),
            None => None,
        };
        trace.set(KeyValue::new("warden.language", spec.language.as_str()));
        if policy.file.audit.record_code && trace.recording() {
            // The semantic conventions' opt-in attribute, only where the profile records code.
            let arguments = serde_json::json!({"language": spec.language, "code": spec.code}).to_string();
            trace.set(KeyValue::new("gen_ai.tool.call.arguments", bounded(arguments)));
        }
        let _admitted = self.admit(caller, &profile, &cancel, &trace).await?;

        let call_id = uuid::Uuid::new_v4().to_string();
        let what = CallWhat::Code {
            session_id: args.session_id.clone(),
            tool: "execute_code",
            language: spec.language,
            code_sha256: sha256_hex(spec.code.as_bytes()),
            inputs_sha256: inputs_digest(&files, &spec.stdin),
            code: policy.file.audit.record_code.then(|| spec.code.clone()),
        };
        let base = call_record(&call_id, caller, policy, what, &spec.limits, &trace);
        // Fail closed: if the start cannot be recorded, nothing runs.
        let start = self.audit_record(&trace, &Event::ExecutionStart(base.clone()))?;

        let mut door = self.door(caller, &profile, &call_id, &cancel, &spec, &trace);
        let door = door.as_mut().map(|d| d as &mut dyn DoorHandler);
        let ran_from = Instant::now();
        let run = match &session {
            None => run_fresh(&self.executors, &GroupKey::of(policy), &spec, &files, &cancel, door, output.as_ref()).await,
            Some(s) => self.run_turn(s, &spec, &files, &cancel, door, output.as_ref()).await,
        };
        record_run(&trace, ran_from, run.as_ref().map(|(r, _)| r));
        let (mut report, workspace) = run.map_err(|e| self.audit_unfinished(&start, base.clone(), e))?;
        let images = inline_images(&workspace, &report, policy.file.artifacts.inline_image_bytes);
        for a in &mut report.artifacts {
            a.uri = match &session {
                None => call_uri(&call_id, &a.path),
                Some(s) => session_uri(&s.id, &a.path),
            };
        }
        if session.is_none() {
            self.retain(&call_id, caller, policy, &workspace, &mut report, &trace);
        }
        let recorded = self.audit_end(&start, base, &report, &trace)?;
        self.metrics.record_execution(spec.language.as_str(), report.outcome.as_str(), report.duration_ms, report.fuel_used);
        self.metrics.record_guest_start(spec.language.as_str(), &report.phases);
        let mut result = to_result(report, recorded, args.session_id);
        result.inline_images = images;
        result.workspace = Some(workspace);
        Ok(result)
    }

    /// A session turn on the executor that holds the session. If that executor died, the
    /// session is lost and ended.
    async fn run_turn(
        &self,
        s: &Arc<Session>,
        spec: &ExecSpec,
        files: &[InputFile],
        cancel: &CancelHandle,
        door: Option<&mut dyn DoorHandler>,
        output: Option<&OutputSink>,
    ) -> Result<(RunReport, Arc<Workspace>), ExecError> {
        let started = Instant::now();
        let mut state = s.state.lock().await;
        s.touch();
        if s.conn.is_dead() {
            self.lose(s);
            return Err(SessionError::Lost(s.id.clone()).into());
        }
        let inputs = inputs::stage(state.workspace.root(), &spec.stdin, files).map_err(internal)?;
        let job = Job::Turn { session: s.id.clone(), dir: s.dir.clone(), spec: wire_spec(spec, door.is_some()), inputs };
        let ran = self.executors.run(&s.conn.busy(), job, cancel, spec.limits.timeout, door, output).await;
        let mut report = settle(&s.conn, ran, &spec.limits, started)?;
        if report.outcome == crate::sandbox::Outcome::Crashed {
            self.lose(s);
        }
        if report.ended_session && report.message.is_none() {
            report.message = Some("the interpreter ended; the next call in this session starts a fresh one (files are kept)".into());
        }
        state.turns += 1;
        s.touch();
        Ok((report, state.workspace.clone()))
    }

    /// Runs a tool package as an MCP `tools/call`: the result, or the message explaining why
    /// there is none, plus the same report and audit as `execute_code`. With `output`, the
    /// tool's stderr also goes there as it is written.
    pub async fn call_tool(
        &self,
        caller: &Caller,
        name: &str,
        args: serde_json::Value,
        cancel: CancelHandle,
        output: Option<OutputSink>,
        trace: Trace,
    ) -> Result<(ExecResult, Result<serde_json::Value, String>), ExecError> {
        self.admission.open()?;
        let profile = self.profile(caller)?;
        let policy = &profile.policy;
        let (tool, grant) = self.prepare_tool(caller, policy, name, &args)?;
        let _admitted = self.admit(caller, &profile, &cancel, &trace).await?;
        let call_id = uuid::Uuid::new_v4().to_string();
        let what = CallWhat::Tool {
            tool: name.to_string(),
            tool_version: tool.manifest.version.clone(),
            tool_sha256: tool.manifest.wasm_sha256.clone(),
            args_sha256: sha256_hex(args.to_string().as_bytes()),
        };
        let base = call_record(&call_id, caller, policy, what, &grant.limits, &trace);
        let start = self.audit_record(&trace, &Event::ExecutionStart(base.clone()))?;
        let ran_from = Instant::now();
        let run = run_tool(&self.executors, &GroupKey::of(policy), &tool, &grant, &args, &cancel, output.as_ref()).await;
        record_run(&trace, ran_from, run.as_ref().map(|(r, _, _)| r));
        let (mut report, workspace, value) = run.map_err(|e| self.audit_unfinished(&start, base.clone(), e))?;
        for a in &mut report.artifacts {
            a.uri = call_uri(&call_id, &a.path);
        }
        let images = inline_images(&workspace, &report, policy.file.artifacts.inline_image_bytes);
        self.retain(&call_id, caller, policy, &workspace, &mut report, &trace);
        let recorded = self.audit_end(&start, base, &report, &trace)?;
        self.metrics.record_tool_call(name, report.outcome.as_str(), report.duration_ms);
        let mut result = to_result(report, recorded, None);
        result.inline_images = images;
        result.workspace = Some(workspace);
        Ok((result, value))
    }

    /// The code-mode door for one execution, when its profile allows tool calls from code.
    fn door(
        &self,
        caller: &Caller,
        profile: &Arc<super::Profile>,
        call_id: &str,
        cancel: &CancelHandle,
        spec: &ExecSpec,
        trace: &Trace,
    ) -> Option<CodeModeDoor> {
        let max = profile.policy.file.tools.calls_per_execution;
        let tools = self.granted_tools(&profile.policy);
        if max == 0 || tools.is_empty() || spec.language != Language::Python {
            return None;
        }
        Some(CodeModeDoor::new(
            tools,
            self.audit.clone(),
            self.admission.clone(),
            self.executors.clone(),
            caller.clone(),
            profile.clone(),
            call_id,
            cancel.clone(),
            Instant::now() + spec.limits.timeout,
            max,
            trace.clone(),
        ))
    }

    /// Keeps a one-shot call's artifacts readable, or says in the report why they are not.
    fn retain(&self, call_id: &str, caller: &Caller, policy: &Policy, ws: &Arc<Workspace>, report: &mut RunReport, trace: &Trace) {
        let retention = Duration::from_secs(policy.file.artifacts.retention_seconds);
        let attributes = vec![KeyValue::new("warden.artifacts", report.artifacts.len() as i64)];
        let kept = trace.time("warden.artifacts.retain", attributes, || {
            self.artifacts.retain(call_id, &caller.owner, ws.clone(), &report.artifacts, retention)
        });
        if !kept {
            let note = "the artifacts were not kept for resources/read: the server's artifact store is full; read them from this result or retry later";
            report.message = Some(match report.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note.to_string(),
            });
        }
    }

    /// Waits for admission (rate, shares, a slot), recorded as the `warden.admission` stage.
    async fn admit<'a>(
        &'a self,
        caller: &Caller,
        profile: &super::Profile,
        cancel: &CancelHandle,
        trace: &Trace,
    ) -> Result<super::admission::Admitted<'a>, ExecError> {
        let from = Instant::now();
        let admitted = self.admission.call(caller, profile, cancel).await;
        let attributes = match &admitted {
            Ok(_) => Vec::new(),
            Err(e) => vec![KeyValue::new("error.type", e.kind())],
        };
        trace.record("warden.admission", from, Instant::now(), attributes);
        admitted
    }

    /// Writes one audit line, recorded as a `warden.audit.write` stage.
    fn audit_record(&self, trace: &Trace, event: &Event) -> Result<Recorded, ExecError> {
        let attributes = vec![KeyValue::new("warden.audit.event", event.kind())];
        Ok(trace.time("warden.audit.write", attributes, || self.audit.record(event))?)
    }

    /// Records how a call ended, with its artifacts.
    fn audit_end(&self, start: &Recorded, call: Call, report: &RunReport, trace: &Trace) -> Result<Recorded, ExecError> {
        trace.set(KeyValue::new("warden.outcome", report.outcome.as_str()));
        self.audit_record(
            trace,
            &Event::Execution {
                call,
                started: start_id(start),
                end: RunEnd::of(report),
                artifacts: report
                    .artifacts
                    .iter()
                    .map(|a| ArtifactDigest { path: a.path.clone(), size: a.size, sha256: a.sha256.clone() })
                    .collect(),
            },
        )
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

/// Runs `tool` once with `args` on an executor of `key`'s group, in a directory made for it, and
/// reads its result: the report, the workspace, and the value or why there is none. Used by
/// `tools/call` and by code mode's nested calls alike.
pub(crate) async fn run_tool(
    executors: &Arc<Executors>,
    key: &GroupKey,
    tool: &Arc<ToolPackage>,
    grant: &Grant,
    args: &serde_json::Value,
    cancel: &CancelHandle,
    output: Option<&OutputSink>,
) -> Result<(RunReport, Arc<Workspace>, Result<serde_json::Value, String>), ExecError> {
    let started = Instant::now();
    let conn = executors.place(key).await?;
    let dir = format!("tool-{}", uuid::Uuid::new_v4().simple());
    let ws = Arc::new(Workspace::create_named(conn.dir(), &dir).map_err(internal)?);
    let job = Job::Tool {
        dir,
        tool: tool.name().to_string(),
        sha256: tool.manifest.wasm_sha256.clone(),
        grant: GrantSpec { env: grant.env.clone(), mounts: grant.mounts.clone(), limits: grant.limits.clone() },
        args: args.clone(),
    };
    let ran = executors.run(&conn, job, cancel, grant.limits.timeout, None, output).await;
    let mut report = settle(&conn, ran, &grant.limits, started)?;
    let value = interpret(tool, &mut report);
    Ok((report, ws, value))
}

/// [`settle`] for a run that does no caller code (a fork, a capture, a restore): any outcome
/// but `ok` is an error saying `failed` and why.
pub(super) fn settle_ok(
    conn: &super::executors::Conn,
    ran: Ran,
    limits: &Limits,
    started: Instant,
    failed: &str,
) -> Result<RunReport, ExecError> {
    let r = settle(conn, ran, limits, started)?;
    if r.outcome != crate::sandbox::Outcome::Ok {
        return Err(super::invalid(format!(
            "{failed} ({}): {}",
            r.outcome.as_str(),
            r.message.unwrap_or_else(|| "no reason given".into())
        )));
    }
    Ok(r)
}

/// What the front makes of a run's end: the checked report, a `crashed` report if the executor
/// died or lied about the run (it is then killed), or the error it gave.
pub(super) fn settle(conn: &super::executors::Conn, ran: Ran, limits: &Limits, started: Instant) -> Result<RunReport, ExecError> {
    match ran {
        Ran::Done(Ok(f), sent) => match finish(*f, limits, sent) {
            Ok(r) => Ok(r),
            Err(lie) => {
                conn.kill(&lie);
                Ok(crashed("it broke the protocol", started))
            }
        },
        Ran::Done(Err(e), _) => Err(e.into()),
        Ran::Crashed(why) => Ok(crashed(&why, started)),
    }
}

/// A one-shot call on the least loaded executor of `key`'s group, in a directory made for it:
/// the front's whole share of running a guest, without admission or audit (public for the
/// channel-cost benchmark, which compares it with [`crate::executor::Executor::run_fresh`]).
pub async fn run_fresh(
    executors: &Arc<Executors>,
    key: &GroupKey,
    spec: &ExecSpec,
    files: &[InputFile],
    cancel: &CancelHandle,
    door: Option<&mut dyn DoorHandler>,
    output: Option<&OutputSink>,
) -> Result<(RunReport, Arc<Workspace>), ExecError> {
    let started = Instant::now();
    let conn = executors.place(key).await?;
    let dir = format!("call-{}", uuid::Uuid::new_v4().simple());
    // The front makes and removes the directory, so a crashed executor leaves nothing behind.
    let ws = Arc::new(Workspace::create_named(conn.dir(), &dir).map_err(internal)?);
    let inputs = inputs::stage(ws.root(), &spec.stdin, files).map_err(internal)?;
    let job = Job::Fresh { dir, spec: wire_spec(spec, door.is_some()), inputs };
    let ran = executors.run(&conn, job, cancel, spec.limits.timeout, door, output).await;
    Ok((settle(&conn, ran, &spec.limits, started)?, ws))
}

/// The channel's form of a spec (stdin travels in the inputs blob).
pub(super) fn wire_spec(spec: &ExecSpec, door: bool) -> Spec {
    Spec {
        language: spec.language,
        code: spec.code.clone(),
        limits: spec.limits.clone(),
        env: spec.env.clone(),
        mounts: spec.mounts.clone(),
        door,
    }
}

fn internal(e: impl std::fmt::Display) -> ExecError {
    ExecError::Internal(e.to_string())
}

/// Records a call's run on an executor (from `from`, before it was placed, until now) as the
/// `warden.execute` stage, with the phases the executor timed inside it.
pub(crate) fn record_run(trace: &Trace, from: Instant, report: Result<&RunReport, &ExecError>) {
    if !trace.recording() {
        return;
    }
    let attributes = match report {
        Ok(r) => vec![KeyValue::new("warden.outcome", r.outcome.as_str()), KeyValue::new("warden.fuel_used", r.fuel_used as i64)],
        Err(e) => vec![KeyValue::new("error.type", e.kind())],
    };
    let run = trace.record("warden.execute", from, Instant::now(), attributes);
    for p in report.map(|r| r.phases.as_slice()).unwrap_or_default() {
        run.record(p.phase.span_name(), p.start, p.end, Vec::new());
    }
}

/// The audit record of a call: who, what, under which profile and limits, in which trace.
fn call_record(call_id: &str, caller: &Caller, policy: &Policy, what: CallWhat, limits: &crate::sandbox::Limits, trace: &Trace) -> Call {
    trace.set(KeyValue::new("warden.call.id", call_id.to_string()));
    Call {
        trace_id: trace.trace_id(),
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
        audit_id: start_id(&audit),
        audit,
        session_id,
        message: r.message,
        inline_images: Vec::new(),
        workspace: None,
    }
}
