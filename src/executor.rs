//! The path of every request, independent of transport: request → policy → sandbox → outcome →
//! audit → response.
//!
//! [`Executor`] validates a request against the policy, waits for an execution slot, runs the
//! program (fresh, or in a session), records the audit event and shapes the result. Transports
//! (stdio and HTTP MCP) only translate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::api::{CloseSessionResult, Encoding, ExecResult, ExecuteCodeArgs, InlineImage, SessionInfo};
use crate::artifacts::{ArtifactRef, ArtifactStore, call_uri, parse_uri, session_uri};
use crate::audit::{AuditError, AuditLog, Recorded};
use crate::digest::sha256_hex;
use crate::policy::Policy;
use crate::runtime::Language;
use crate::sandbox::{
    CancelHandle, ExecSpec, InputFile, MAX_ARTIFACTS, RunReport, Sandbox, SandboxError, Workspace, on_guest_thread_async,
};
use crate::limiter::{Limited, PrincipalLimiter};
use crate::metrics::Metrics;
use crate::session::{Owner, SessionError, SessionLimits, Sessions};
use crate::tools::{Grant, ToolPackage, ToolRegistry, door::CodeModeDoor, grant};

/// Who is asking, and under which profile (decided by authentication, never by the request).
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: String,
    pub owner: Owner,
    pub profile: String,
}

impl Caller {
    /// The local operator, on a connection of its own (stdio, `warden exec`), with the profile
    /// given on the command line.
    pub fn operator(connection: Option<String>, profile: &str) -> Caller {
        Caller {
            principal: "operator".into(),
            owner: Owner { principal: "operator".into(), connection },
            profile: profile.to_string(),
        }
    }
}

/// One loaded profile and its execution slots.
pub struct Profile {
    pub policy: Policy,
    admission: Arc<Semaphore>,
}

impl Profile {
    pub fn new(policy: Policy) -> Profile {
        let slots = policy.file.limits.concurrent_executions as usize;
        Profile { policy, admission: Arc::new(Semaphore::new(slots)) }
    }
}

/// The profiles a server serves, by name, and the one the operator and anonymous callers get.
pub struct Profiles {
    pub default: String,
    pub by_name: HashMap<String, Arc<Profile>>,
}

impl Profiles {
    pub fn single(policy: Policy) -> Profiles {
        let default = policy.name().to_string();
        Profiles { by_name: HashMap::from([(default.clone(), Arc::new(Profile::new(policy)))]), default }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request is malformed or asks for something the policy does not allow.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("server busy: all {slots} execution slots stayed taken for {waited_ms} ms; retry in a few seconds")]
    Busy { slots: usize, waited_ms: u64 },
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error("the server is shutting down; retry later")]
    ShuttingDown,
    #[error("the audit log cannot be written, so nothing runs until it is fixed: {0}")]
    Audit(#[from] AuditError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<SandboxError> for ExecError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Workspace(w) => ExecError::InvalidRequest(w.to_string()),
            other => ExecError::Internal(other.to_string()),
        }
    }
}

pub struct Executor {
    sandbox: Sandbox,
    profiles: RwLock<Arc<Profiles>>,
    workspaces: PathBuf,
    pub sessions: Sessions,
    pub artifacts: ArtifactStore,
    limiter: PrincipalLimiter,
    pub metrics: Metrics,
    pub tools: Arc<ToolRegistry>,
    audit: Arc<AuditLog>,
    inflight: Mutex<HashMap<u64, CancelHandle>>,
    next_call: AtomicU64,
    shutting_down: AtomicBool,
}

/// Most images returned inline per call; the rest are resource links.
const MAX_INLINE_IMAGES: usize = 4;

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

/// Removes an in-flight call from the table when the call ends, however it ends.
struct InflightGuard<'a> {
    table: &'a Mutex<HashMap<u64, CancelHandle>>,
    id: u64,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl Executor {
    pub fn new(sandbox: Sandbox, profiles: Profiles, workspaces: PathBuf, audit: Arc<AuditLog>, tools: Arc<ToolRegistry>) -> Executor {
        Executor {
            tools,
            sessions: Sessions::new(),
            artifacts: ArtifactStore::new(),
            limiter: PrincipalLimiter::new(),
            metrics: Metrics::new(),
            profiles: RwLock::new(Arc::new(profiles)),
            sandbox,
            workspaces,
            audit,
            inflight: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn profiles(&self) -> Arc<Profiles> {
        self.profiles.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The profile the operator and unauthenticated local callers get.
    pub fn default_profile(&self) -> Arc<Profile> {
        let p = self.profiles();
        p.by_name[&p.default].clone()
    }

    /// The caller's profile. Authentication only ever names loaded profiles; a miss means the
    /// profile was removed by a reload after the request was admitted.
    pub fn profile(&self, caller: &Caller) -> Result<Arc<Profile>, ExecError> {
        self.profiles()
            .by_name
            .get(&caller.profile)
            .cloned()
            .ok_or_else(|| Self::invalid(format!("profile {:?} is no longer served; retry", caller.profile)))
    }

    /// Replaces the served profiles (SIGHUP). Calls already running keep their old limits.
    pub fn replace_profiles(&self, profiles: Profiles) {
        *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(profiles);
    }

    /// The tools `policy` serves, with what it grants each. Tools it lists but cannot grant what
    /// they ask for are left out (and were reported when the server started).
    pub fn granted_tools(&self, policy: &Policy) -> Vec<(Arc<ToolPackage>, Grant)> {
        self.tools.all().filter_map(|t| grant(t, policy).ok().map(|g| (t.clone(), g))).collect()
    }

    /// The code-mode door for one Python execution, when its profile allows tool calls from code.
    fn door(&self, caller: &Caller, policy: &Policy, call_id: &str, cancel: &CancelHandle) -> Option<Box<dyn crate::sandbox::Door>> {
        let max = policy.file.tools.calls_per_execution;
        let tools = self.granted_tools(policy);
        if max == 0 || tools.is_empty() {
            return None;
        }
        Some(Box::new(CodeModeDoor::new(
            tools,
            self.audit.clone(),
            &caller.principal,
            policy.name(),
            call_id,
            self.workspaces.clone(),
            cancel.clone(),
            max,
        )))
    }

    /// Records a refusal in the audit log and the metrics.
    fn deny(&self, caller: &Caller, reason: &str, detail: &str) {
        self.metrics.deny(reason);
        let _ = self.audit.record(
            "authz.deny",
            json!({"principal": caller.principal, "profile": caller.profile, "reason": reason, "detail": detail}),
        );
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    pub fn inflight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn invalid(msg: impl Into<String>) -> ExecError {
        ExecError::InvalidRequest(msg.into())
    }

    /// Checks a request against the policy and decodes its inputs.
    fn prepare(&self, caller: &Caller, p: &Policy, args: &ExecuteCodeArgs) -> Result<(ExecSpec, Vec<InputFile>), ExecError> {
        if !p.allows(args.language) {
            let msg = format!("language {} is not allowed by policy {:?}", args.language, p.name());
            self.deny(caller, "runtime_not_allowed", &msg);
            return Err(Self::invalid(msg));
        }
        if self.sandbox.runtimes().get(args.language).is_none() {
            return Err(Self::invalid(format!("the {} runtime is not loaded on this server", args.language)));
        }
        check_request(p, args)
    }

    /// Runs `execute_code`.
    pub async fn execute(&self, caller: &Caller, args: ExecuteCodeArgs, cancel: CancelHandle) -> Result<ExecResult, ExecError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ExecError::ShuttingDown);
        }
        let profile = self.profile(caller)?;
        let policy = &profile.policy;
        let (spec, files) = self.prepare(caller, policy, &args)?;
        let session = match &args.session_id {
            Some(id) => {
                let s = self.sessions.get(id, &caller.owner)?;
                if s.language != spec.language {
                    return Err(Self::invalid(format!("session {id} runs {}, not {}", s.language, spec.language)));
                }
                Some(s)
            }
            None => None,
        };

        let l = &policy.file.limits;
        let _slot = self.limiter.admit(&caller.principal, l.calls_per_minute, l.concurrent_per_principal).map_err(|e| {
            self.metrics.rate_limited.inc();
            self.deny(caller, "rate_limited", &e.to_string());
            e
        })?;
        let slots = l.concurrent_executions as usize;
        let queue = Duration::from_millis(l.queue_timeout_ms);
        let _permit = match tokio::time::timeout(queue, profile.admission.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                self.metrics.busy.inc();
                return Err(ExecError::Busy { slots, waited_ms: queue.as_millis() as u64 });
            }
        };

        let call_id = uuid::Uuid::new_v4().to_string();
        let inputs_sha256 = inputs_digest(&files, &spec.stdin);
        let base = json!({
            "call_id": call_id,
            "principal": caller.principal,
            "connection": caller.owner.connection,
            "session_id": args.session_id,
            "tool": "execute_code",
            "language": spec.language,
            "code_sha256": sha256_hex(spec.code.as_bytes()),
            "inputs_sha256": inputs_sha256,
            "profile": policy.name(),
            "profile_sha256": policy.sha256,
            "limits": spec.limits,
        });
        let mut base = base;
        if policy.file.audit.record_code {
            base["code"] = json!(spec.code);
        }
        // Fail closed: if the start cannot be recorded, nothing runs.
        let start = self.audit.record("execution.start", &base)?;

        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).insert(id, cancel.clone());
        let _inflight = InflightGuard { table: &self.inflight, id };
        self.metrics.active_executions.inc();
        let _active = scopeguard(|| {
            self.metrics.active_executions.dec();
        });

        let image_cap = policy.file.artifacts.inline_image_bytes;
        let retention = Duration::from_secs(policy.file.artifacts.retention_seconds);
        let (report, images, workspace, uri_for): (RunReport, Vec<InlineImage>, Arc<Workspace>, Box<dyn Fn(&str) -> String + Send>) = match &session {
            None => {
                let ws = Arc::new(Workspace::create(&self.workspaces, "call-").map_err(|e| ExecError::Internal(e.to_string()))?);
                ws.write_inputs(&files, spec.limits.workspace_bytes, spec.limits.workspace_files)
                    .map_err(|e| Self::invalid(e.to_string()))?;
                let (sandbox, ws2, spec2, cancel2) = (self.sandbox.clone(), ws.clone(), spec.clone(), cancel.clone());
                let door = if spec.language == Language::Python { self.door(caller, policy, &call_id, &cancel) } else { None };
                let report = on_guest_thread_async(move || sandbox.run_fresh(&spec2, &ws2, &cancel2, door)).await??;
                let images = inline_images(&ws, &report, image_cap);
                self.artifacts.retain(&call_id, &caller.owner, ws.clone(), &report.artifacts, retention);
                let cid = call_id.clone();
                (report, images, ws, Box::new(move |p| call_uri(&cid, p)))
            }
            Some(s) => {
                let door = self.door(caller, policy, &call_id, &cancel);
                let (report, ws) = self.session_turn(s, &spec, &files, &cancel, door).await?;
                let images = inline_images(&ws, &report, image_cap);
                let sid = s.id.clone();
                (report, images, ws, Box::new(move |p| session_uri(&sid, p)))
            }
        };

        let mut report = report;
        for a in &mut report.artifacts {
            a.uri = uri_for(&a.path);
        }
        let mut end = base.clone();
        let obj = end.as_object_mut().expect("json object");
        obj.insert("started".into(), start.get("id").cloned().unwrap_or_default());
        obj.insert("outcome".into(), json!(report.outcome));
        obj.insert("exit_code".into(), json!(report.exit_code));
        obj.insert("fuel_used".into(), json!(report.fuel_used));
        obj.insert("duration_ms".into(), json!(report.duration_ms));
        obj.insert(
            "artifacts".into(),
            json!(report.artifacts.iter().map(|a| json!({"path": a.path, "size": a.size, "sha256": a.sha256})).collect::<Vec<_>>()),
        );
        let recorded = self.audit.record("execution", &end)?;
        self.metrics.record_execution(spec.language.as_str(), report.outcome.as_str(), report.duration_ms, report.fuel_used);
        let mut result = to_result(report, recorded, args.session_id);
        result.inline_images = images;
        result.workspace = Some(workspace);
        Ok(result)
    }

    async fn session_turn(
        &self,
        session: &Arc<crate::session::Session>,
        spec: &ExecSpec,
        files: &[InputFile],
        cancel: &CancelHandle,
        door: Option<Box<dyn crate::sandbox::Door>>,
    ) -> Result<(RunReport, Arc<Workspace>), ExecError> {
        let mut state = session.state.lock().await;
        session.touch();
        state
            .workspace
            .write_inputs(files, spec.limits.workspace_bytes, spec.limits.workspace_files)
            .map_err(|e| Self::invalid(e.to_string()))?;
        let ws = state.workspace.clone();
        let (sandbox, spec2, cancel2) = (self.sandbox.clone(), spec.clone(), cancel.clone());
        let report = match spec.language {
            Language::Python => {
                let guest = state.guest.take();
                let (report, guest) = on_guest_thread_async(move || -> (Result<RunReport, ExecError>, _) {
                    let mut guest = match guest {
                        Some(g) => g,
                        None => match sandbox.start_guest(&spec2, &ws, &cancel2) {
                            Ok(Ok(g)) => g,
                            Ok(Err(report)) => return (Ok(report), None),
                            Err(e) => return (Err(e.into()), None),
                        },
                    };
                    if let Err(e) = guest.arm(&spec2.limits, &cancel2, spec2.stdin.clone()) {
                        return (Err(ExecError::Internal(format!("{e:#}"))), None);
                    }
                    guest.set_door(door);
                    let mut report = guest.run(&spec2.code);
                    guest.set_door(None);
                    report.artifacts = ws.collect_changes(MAX_ARTIFACTS, spec2.limits.workspace_bytes);
                    let keep = !report.ended_session;
                    (Ok(report), keep.then_some(guest))
                })
                .await?;
                let mut report = report?;
                if guest.is_none() && report.message.is_none() {
                    report.message = Some("the interpreter ended; the next call in this session starts a fresh one (files are kept)".into());
                }
                state.guest = guest;
                report
            }
            Language::Javascript => {
                let ws2 = ws.clone();
                on_guest_thread_async(move || sandbox.run_fresh(&spec2, &ws2, &cancel2, None)).await??
            }
        };
        state.turns += 1;
        session.touch();
        Ok((report, state.workspace.clone()))
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
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ExecError::ShuttingDown);
        }
        let profile = self.profile(caller)?;
        let policy = &profile.policy;
        let Some(tool) = self.tools.get(name).cloned() else {
            return Err(Self::invalid(format!("unknown tool {name:?}; tools/list shows the tools you may call")));
        };
        let grant = match grant(&tool, policy) {
            Ok(g) => g,
            Err(why) => {
                self.deny(caller, "tool_not_allowed", &why);
                return Err(Self::invalid(format!("unknown tool {name:?}; tools/list shows the tools you may call")));
            }
        };
        let l = &policy.file.limits;
        let size = args.to_string().len() as u64;
        if size > l.code_bytes {
            return Err(Self::invalid(format!("the arguments are {size} bytes of JSON; this server accepts at most {}", l.code_bytes)));
        }
        tool.check_args(&args).map_err(Self::invalid)?;
        let _slot = self.limiter.admit(&caller.principal, l.calls_per_minute, l.concurrent_per_principal).map_err(|e| {
            self.metrics.rate_limited.inc();
            self.deny(caller, "rate_limited", &e.to_string());
            e
        })?;
        let queue = Duration::from_millis(l.queue_timeout_ms);
        let _permit = match tokio::time::timeout(queue, profile.admission.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                self.metrics.busy.inc();
                return Err(ExecError::Busy { slots: l.concurrent_executions as usize, waited_ms: queue.as_millis() as u64 });
            }
        };
        let call_id = uuid::Uuid::new_v4().to_string();
        let base = json!({
            "call_id": call_id,
            "principal": caller.principal,
            "connection": caller.owner.connection,
            "tool": name,
            "tool_version": tool.manifest.version,
            "tool_sha256": tool.manifest.wasm_sha256,
            "args_sha256": sha256_hex(args.to_string().as_bytes()),
            "profile": policy.name(),
            "profile_sha256": policy.sha256,
            "limits": grant.limits,
        });
        let start = self.audit.record("execution.start", &base)?;
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).insert(id, cancel.clone());
        let _inflight = InflightGuard { table: &self.inflight, id };
        self.metrics.active_executions.inc();
        let _active = scopeguard(|| {
            self.metrics.active_executions.dec();
        });
        let (workspaces, cancel2, tool2, grant2) = (self.workspaces.clone(), cancel.clone(), tool.clone(), grant.clone());
        let run = on_guest_thread_async(move || crate::tools::run_tool(&tool2, &grant2, &args, &workspaces, &cancel2)).await??;
        let mut report = run.report;
        for a in &mut report.artifacts {
            a.uri = call_uri(&call_id, &a.path);
        }
        let retention = Duration::from_secs(policy.file.artifacts.retention_seconds);
        let images = inline_images(&run.workspace, &report, policy.file.artifacts.inline_image_bytes);
        self.artifacts.retain(&call_id, &caller.owner, run.workspace.clone(), &report.artifacts, retention);
        let mut end = base;
        end["started"] = start.get("id").cloned().unwrap_or_default();
        end["outcome"] = json!(report.outcome);
        end["exit_code"] = json!(report.exit_code);
        end["fuel_used"] = json!(report.fuel_used);
        end["duration_ms"] = json!(report.duration_ms);
        end["artifacts"] =
            json!(report.artifacts.iter().map(|a| json!({"path": a.path, "size": a.size, "sha256": a.sha256})).collect::<Vec<_>>());
        let recorded = self.audit.record("execution", &end)?;
        self.metrics.record_execution(&format!("tool:{name}"), report.outcome.as_str(), report.duration_ms, report.fuel_used);
        let mut result = to_result(report, recorded, None);
        result.inline_images = images;
        result.workspace = Some(run.workspace);
        Ok((result, run.value))
    }

    pub fn create_session(&self, caller: &Caller, language: Language) -> Result<SessionInfo, ExecError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ExecError::ShuttingDown);
        }
        let profile = self.profile(caller)?;
        let p = &profile.policy;
        if !p.allows(language) {
            let msg = format!("language {language} is not allowed by policy {:?}", p.name());
            self.deny(caller, "runtime_not_allowed", &msg);
            return Err(Self::invalid(msg));
        }
        let limits = SessionLimits {
            max: p.file.sessions.max as usize,
            idle: Duration::from_secs(p.file.sessions.idle_seconds),
            lifetime: Duration::from_secs(p.file.sessions.lifetime_seconds),
        };
        let ws = Workspace::create(&self.workspaces, "session-").map_err(|e| ExecError::Internal(e.to_string()))?;
        let s = self.sessions.create(caller.owner.clone(), language, ws, p.name(), limits)?;
        if let Err(e) = self.audit.record(
            "session.open",
            json!({"session_id": s.id, "principal": caller.principal, "connection": caller.owner.connection, "language": language, "profile": p.name()}),
        ) {
            let _ = self.sessions.close(&s.id, &caller.owner);
            return Err(e.into());
        }
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        Ok(SessionInfo { session_id: s.id.clone(), language, expires_at: rfc3339(s.expires_at()) })
    }

    pub fn close_session(&self, caller: &Caller, id: &str) -> Result<CloseSessionResult, ExecError> {
        let s = self.sessions.close(id, &caller.owner)?;
        self.audit_close(&s, "closed");
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        Ok(CloseSessionResult { session_id: s.id.clone(), closed: true })
    }

    fn audit_close(&self, s: &crate::session::Session, reason: &str) {
        if let Err(e) = self.audit.record(
            "session.close",
            json!({"session_id": s.id, "principal": s.owner.principal, "connection": s.owner.connection, "reason": reason}),
        ) {
            tracing::error!(error = %e, "could not audit a session close");
        }
    }

    /// Reads an artifact for its owner: `(bytes, mime)`.
    pub fn read_artifact(&self, caller: &Caller, uri: &str) -> Result<(Vec<u8>, String), ExecError> {
        let not_found = || Self::invalid(format!("no artifact {uri:?} is readable by you (it may have expired)"));
        let max = self.profile(caller)?.policy.file.limits.workspace_bytes;
        match parse_uri(uri).ok_or_else(not_found)? {
            ArtifactRef::Call { call_id, path } => {
                let (ws, a) = self.artifacts.find(call_id, path, &caller.owner).ok_or_else(not_found)?;
                let bytes = ws.read_file(path, max).map_err(|_| not_found())?;
                Ok((bytes, a.mime))
            }
            ArtifactRef::Session { session_id, path } => {
                let s = self.sessions.get(session_id, &caller.owner).map_err(|_| not_found())?;
                let ws = s.state.try_lock().map(|st| st.workspace.clone()).map_err(|_| {
                    Self::invalid("the session is running a call; read its files when the call returns")
                })?;
                let bytes = ws.read_file(path, max).map_err(|_| not_found())?;
                Ok((bytes, crate::sandbox::workspace::mime_for(path)))
            }
        }
    }

    /// Expires idle sessions and old artifacts. Run periodically.
    pub fn sweep(&self) {
        for s in self.sessions.expire() {
            self.audit_close(&s, "expired");
        }
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        self.artifacts.expire();
    }

    /// Stops taking calls, lets running ones finish for up to `grace`, cancels the rest, then
    /// closes every session and removes all workspaces.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        while self.inflight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for c in self.inflight.lock().unwrap_or_else(|e| e.into_inner()).values() {
            c.cancel();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.inflight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for s in self.sessions.drain() {
            self.audit_close(&s, "shutdown");
        }
        self.artifacts.clear();
        let _ = std::fs::remove_dir_all(&self.workspaces);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The part of request validation that needs nothing but the policy: code size, limits, input
/// files (paths, encodings, sizes) and stdin. Pure, so the fuzz targets can run it on any input.
pub(crate) fn check_request(p: &Policy, args: &ExecuteCodeArgs) -> Result<(ExecSpec, Vec<InputFile>), ExecError> {
    let invalid = Executor::invalid;
    let l = &p.file.limits;
    if args.code.len() as u64 > l.code_bytes {
        return Err(invalid(format!("code is {} bytes; this server accepts at most {}", args.code.len(), l.code_bytes)));
    }
    let limits = p.limits().lowered(&args.limits.clone().unwrap_or_default()).map_err(|e| invalid(e.to_string()))?;
    if args.files.len() as u64 > limits.workspace_files {
        return Err(invalid(format!("{} files given; at most {} are allowed", args.files.len(), limits.workspace_files)));
    }
    let mut files = Vec::with_capacity(args.files.len());
    let mut total = 0u64;
    for (i, f) in args.files.iter().enumerate() {
        crate::sandbox::workspace::validate_rel_path(&f.path).map_err(|e| invalid(format!("files[{i}]: {e}")))?;
        let content = match f.encoding {
            Encoding::Utf8 => f.content.clone().into_bytes(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(f.content.trim())
                .map_err(|e| invalid(format!("files[{i}] ({}): content is not valid base64: {e}", f.path)))?,
        };
        total += content.len() as u64;
        if total > limits.workspace_bytes {
            return Err(invalid(format!("files add up to more than the {} byte workspace limit", limits.workspace_bytes)));
        }
        files.push(InputFile { path: f.path.clone(), content });
    }
    let stdin = args.stdin.clone().unwrap_or_default().into_bytes();
    if stdin.len() as u64 > limits.workspace_bytes {
        return Err(invalid(format!("stdin is larger than the {} byte limit", limits.workspace_bytes)));
    }
    let spec = ExecSpec {
        language: args.language,
        code: args.code.clone(),
        stdin,
        limits,
        env: p.guest_env(),
        mounts: p.mounts.clone(),
    };
    Ok((spec, files))
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

/// sha256 over the input files (path and content digest) and stdin.
fn inputs_digest(files: &[InputFile], stdin: &[u8]) -> String {
    let listing: Vec<_> = files.iter().map(|f| json!([f.path, sha256_hex(&f.content)])).collect();
    sha256_hex(json!({"files": listing, "stdin": sha256_hex(stdin)}).to_string().as_bytes())
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

pub fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
