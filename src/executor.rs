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
use crate::audit::bound::bound_str;
use crate::audit::{AuditError, AuditLog, Recorded};
use crate::digest::sha256_hex;
use crate::policy::Policy;
use crate::runtime::Language;
use crate::sandbox::{
    CancelHandle, ExecSpec, InputFile, MAX_ARTIFACTS, RunReport, Sandbox, SandboxError, Workspace, on_guest_thread_async,
};
use crate::limiter::{Limited, PrincipalLimiter, Shares, Slot};
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
    limiter: Arc<PrincipalLimiter>,
    /// Artifact reads in flight, per principal (see [`MAX_READS_PER_PRINCIPAL`]).
    reads: Shares,
    /// Artifact reads in flight, server-wide.
    read_slots: Arc<Semaphore>,
    /// Whether callers other than the one operator or anonymous user can exist (HTTP with
    /// authentication): then every principal leaves one execution slot of each profile free
    /// for the others.
    multi_tenant: AtomicBool,
    /// Refusal records per principal and reason: a burst in full, the rest counted.
    denials: crate::throttle::Throttle<(String, String)>,
    pub metrics: Metrics,
    pub tools: Arc<ToolRegistry>,
    audit: Arc<AuditLog>,
    inflight: Mutex<HashMap<u64, CancelHandle>>,
    next_call: AtomicU64,
    shutting_down: AtomicBool,
}

/// Most images returned inline per call; the rest are resource links.
const MAX_INLINE_IMAGES: usize = 4;
/// Largest artifact `resources/read` returns. MCP cannot stream a resource: the whole file, its
/// base64 text and the JSON response around it sit in memory at once.
pub const MAX_READ_BYTES: u64 = 8 << 20;
/// Artifact reads in flight at once, server-wide, and per principal. With the size cap this
/// bounds what reads hold in memory (about 30 MiB each at most) and keeps one principal from
/// taking every read slot.
const MAX_READS: usize = 8;
const MAX_READS_PER_PRINCIPAL: u32 = 2;
/// Longest text of a refusal kept in an audit record.
const MAX_AUDIT_REASON: usize = 512;
/// Refusals of one principal for one reason written in full per minute; the rest are counted in
/// an `authz.deny.suppressed` summary.
const DENIALS_PER_MINUTE: u32 = 10;

/// What holds a call's place while it runs: the principal's running slot and one of the
/// profile's execution slots.
struct Admitted {
    _slot: Slot,
    _permit: tokio::sync::OwnedSemaphorePermit,
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
            limiter: Arc::new(PrincipalLimiter::new()),
            reads: Shares::default(),
            read_slots: Arc::new(Semaphore::new(MAX_READS)),
            multi_tenant: AtomicBool::new(false),
            denials: crate::throttle::Throttle::new(Duration::from_secs(60), DENIALS_PER_MINUTE),
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
    /// Sessions whose profile was removed or changed in any way end (audited with reason
    /// `profile_changed`): a live interpreter keeps the mounts and environment it started with,
    /// so re-confining it in place is not possible.
    pub fn replace_profiles(&self, profiles: Profiles) {
        let profiles = Arc::new(profiles);
        *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = profiles.clone();
        let stale = self.sessions.remove_if(|s| profiles.by_name.get(&s.profile).is_none_or(|p| p.policy.sha256 != s.profile_sha256));
        for s in stale {
            self.audit_close(&s, "profile_changed");
        }
        self.metrics.active_sessions.set(self.sessions.len() as i64);
    }

    /// Declares that callers are authenticated principals who must not starve one another (see
    /// [`Executor::admit`]).
    pub fn set_multi_tenant(&self, on: bool) {
        self.multi_tenant.store(on, Ordering::SeqCst);
    }

    /// Admits one call: the principal's rate and running-call limits, then one of the profile's
    /// execution slots, waiting up to the queue timeout. When several principals can exist, a
    /// principal may hold at most all but one of a profile's slots, so a principal at its limits
    /// always leaves a slot for the next one (guests cannot be preempted, so only a free slot
    /// bounds another principal's wait).
    async fn admit(&self, caller: &Caller, profile: &Profile) -> Result<Admitted, ExecError> {
        let l = &profile.policy.file.limits;
        let slots = l.concurrent_executions;
        let share = if self.multi_tenant.load(Ordering::SeqCst) && slots > 1 { l.concurrent_per_principal.min(slots - 1) } else { l.concurrent_per_principal };
        let slot = self.limiter.admit(&caller.principal, l.calls_per_minute, share).map_err(|e| self.limited(caller, e))?;
        let queue = Duration::from_millis(l.queue_timeout_ms);
        match tokio::time::timeout(queue, profile.admission.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Admitted { _slot: slot, _permit: permit }),
            _ => {
                self.metrics.busy.inc();
                Err(ExecError::Busy { slots: slots as usize, waited_ms: queue.as_millis() as u64 })
            }
        }
    }

    /// Counts and audits a rate-limit refusal.
    fn limited(&self, caller: &Caller, e: Limited) -> ExecError {
        self.metrics.rate_limited.inc();
        self.deny(caller, "rate_limited", &e.to_string());
        e.into()
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
            crate::tools::door::Rate { limiter: self.limiter.clone(), per_minute: policy.file.limits.calls_per_minute },
            &caller.principal,
            policy.name(),
            call_id,
            self.workspaces.clone(),
            cancel.clone(),
            max,
        )))
    }

    /// Records a refusal in the metrics, and in the audit log within the principal's budget of
    /// refusal records (the rest are counted and summarised by [`Executor::sweep`]).
    fn deny(&self, caller: &Caller, reason: &str, detail: &str) {
        self.metrics.deny(reason);
        if self.denials.allow(&(caller.principal.clone(), reason.to_string())) {
            let _ = self.audit.record(
                "authz.deny",
                json!({"principal": caller.principal, "profile": caller.profile, "reason": reason, "detail": bound_str(detail, MAX_AUDIT_REASON).into_owned()}),
            );
        }
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

    /// The session `id` for a call by `caller` under `policy` in `language`: owned by the
    /// caller, and created under this very profile (same name and sha256).
    fn session_for(&self, caller: &Caller, policy: &Policy, id: &str, language: Language) -> Result<Arc<crate::session::Session>, ExecError> {
        let s = self.sessions.get(id, &caller.owner)?;
        if s.profile != policy.name() || s.profile_sha256 != policy.sha256 {
            let msg = format!(
                "session {id} was created under profile {:?}, and this call runs under {:?}; a session keeps the profile it was made under. Create a new session",
                s.profile,
                policy.name()
            );
            self.deny(caller, "session_profile_mismatch", &msg);
            return Err(Self::invalid(msg));
        }
        if s.language != language {
            return Err(Self::invalid(format!("session {id} runs {}, not {language}", s.language)));
        }
        Ok(s)
    }

    /// Records that a call whose start was recorded ended without running (its inputs could not
    /// be written, say), so every `execution.start` has an end. Returns the error to give the
    /// caller, or the audit failure if even that record cannot be written.
    fn audit_unfinished(&self, start: &Recorded, base: &serde_json::Value, e: ExecError) -> ExecError {
        let mut event = base.clone();
        event["started"] = start.get("id").cloned().unwrap_or_default();
        event["reason"] = json!(bound_str(&e.to_string(), MAX_AUDIT_REASON).into_owned());
        match self.audit.record("execution.denied", &event) {
            Ok(_) => e,
            Err(audit) => audit.into(),
        }
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
            Some(id) => Some(self.session_for(caller, policy, id, spec.language)?),
            None => None,
        };
        let _admitted = self.admit(caller, &profile).await?;

        let call_id = uuid::Uuid::new_v4().to_string();
        let inputs_sha256 = inputs_digest(&files, &spec.stdin);
        let mut base = json!({
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
        if policy.file.audit.record_code {
            base["code"] = json!(spec.code);
        }
        // Fail closed: if the start cannot be recorded, nothing runs.
        let start = self.audit.record("execution.start", &base)?;
        let _inflight = self.track(&cancel);

        let image_cap = policy.file.artifacts.inline_image_bytes;
        let retention = Duration::from_secs(policy.file.artifacts.retention_seconds);
        let run = match &session {
            None => self.run_once(caller, policy, &spec, &files, &call_id, &cancel, retention).await,
            Some(s) => {
                let door = self.door(caller, policy, &call_id, &cancel);
                self.session_turn(s, &spec, &files, &cancel, door).await.map(|(report, ws)| {
                    let sid = s.id.clone();
                    (report, ws, Box::new(move |p: &str| session_uri(&sid, p)) as Box<dyn Fn(&str) -> String + Send>)
                })
            }
        };
        let (mut report, workspace, uri_for) = run.map_err(|e| self.audit_unfinished(&start, &base, e))?;
        let images = inline_images(&workspace, &report, image_cap);
        for a in &mut report.artifacts {
            a.uri = uri_for(&a.path);
        }
        let recorded = self.audit_end(&start, base, &report)?;
        self.metrics.record_execution(spec.language.as_str(), report.outcome.as_str(), report.duration_ms, report.fuel_used);
        let mut result = to_result(report, recorded, args.session_id);
        result.inline_images = images;
        result.workspace = Some(workspace);
        Ok(result)
    }

    /// A one-shot call: a fresh workspace with the inputs, a fresh guest, and the artifacts
    /// retained for the caller.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    async fn run_once(
        &self,
        caller: &Caller,
        policy: &Policy,
        spec: &ExecSpec,
        files: &[InputFile],
        call_id: &str,
        cancel: &CancelHandle,
        retention: Duration,
    ) -> Result<(RunReport, Arc<Workspace>, Box<dyn Fn(&str) -> String + Send>), ExecError> {
        let ws = Arc::new(Workspace::create(&self.workspaces, "call-").map_err(|e| ExecError::Internal(e.to_string()))?);
        ws.write_inputs(files, spec.limits.workspace_bytes, spec.limits.workspace_files).map_err(|e| Self::invalid(e.to_string()))?;
        let (sandbox, ws2, spec2, cancel2) = (self.sandbox.clone(), ws.clone(), spec.clone(), cancel.clone());
        let door = if spec.language == Language::Python { self.door(caller, policy, call_id, cancel) } else { None };
        let mut report = on_guest_thread_async(move || sandbox.run_fresh(&spec2, &ws2, &cancel2, door)).await??;
        self.retain(call_id, caller, &ws, &mut report, retention);
        let cid = call_id.to_string();
        Ok((report, ws, Box::new(move |p| call_uri(&cid, p))))
    }

    /// Keeps a one-shot call's artifacts readable, or says in the report why they are not.
    fn retain(&self, call_id: &str, caller: &Caller, ws: &Arc<Workspace>, report: &mut RunReport, retention: Duration) {
        if !self.artifacts.retain(call_id, &caller.owner, ws.clone(), &report.artifacts, retention) {
            let note = "the artifacts were not kept for resources/read: the server's artifact store is full; read them from this result or retry later";
            report.message = Some(match report.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note.to_string(),
            });
        }
    }

    /// Registers a running call so shutdown can cancel it; unregistered when the guard drops.
    fn track(&self, cancel: &CancelHandle) -> (InflightGuard<'_>, impl Drop + '_) {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).insert(id, cancel.clone());
        self.metrics.active_executions.inc();
        (InflightGuard { table: &self.inflight, id }, scopeguard(|| {
            self.metrics.active_executions.dec();
        }))
    }

    /// Records how a call ended, with its artifacts.
    fn audit_end(&self, start: &Recorded, base: serde_json::Value, report: &RunReport) -> Result<Recorded, ExecError> {
        let mut end = base;
        end["started"] = start.get("id").cloned().unwrap_or_default();
        end["outcome"] = json!(report.outcome);
        end["exit_code"] = json!(report.exit_code);
        end["fuel_used"] = json!(report.fuel_used);
        end["duration_ms"] = json!(report.duration_ms);
        end["artifacts"] =
            json!(report.artifacts.iter().map(|a| json!({"path": a.path, "size": a.size, "sha256": a.sha256})).collect::<Vec<_>>());
        Ok(self.audit.record("execution", &end)?)
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
        let unknown = || Self::invalid(format!("unknown tool {:?}; tools/list shows the tools you may call", bound_str(name, 80).into_owned()));
        let Some(tool) = self.tools.get(name).cloned() else {
            return Err(unknown());
        };
        let grant = match grant(&tool, policy) {
            Ok(g) => g,
            Err(why) => {
                self.deny(caller, "tool_not_allowed", &why);
                return Err(unknown());
            }
        };
        let l = &policy.file.limits;
        let size = args.to_string().len() as u64;
        if size > l.code_bytes {
            return Err(Self::invalid(format!("the arguments are {size} bytes of JSON; this server accepts at most {}", l.code_bytes)));
        }
        tool.check_args(&args).map_err(Self::invalid)?;
        let _admitted = self.admit(caller, &profile).await?;
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
        let _inflight = self.track(&cancel);
        let (workspaces, cancel2, tool2, grant2) = (self.workspaces.clone(), cancel.clone(), tool.clone(), grant.clone());
        let run = match on_guest_thread_async(move || crate::tools::run_tool(&tool2, &grant2, &args, &workspaces, &cancel2)).await {
            Ok(Ok(run)) => run,
            Ok(Err(e)) => return Err(self.audit_unfinished(&start, &base, e.into())),
            Err(e) => return Err(self.audit_unfinished(&start, &base, e.into())),
        };
        let mut report = run.report;
        for a in &mut report.artifacts {
            a.uri = call_uri(&call_id, &a.path);
        }
        let retention = Duration::from_secs(policy.file.artifacts.retention_seconds);
        let images = inline_images(&run.workspace, &report, policy.file.artifacts.inline_image_bytes);
        self.retain(&call_id, caller, &run.workspace, &mut report, retention);
        let recorded = self.audit_end(&start, base, &report)?;
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
        // Opening a session spends one of the principal's calls: creating and closing sessions in
        // a loop is work the server does, so it is rate-limited like any call.
        self.limiter.admit_rate(&caller.principal, p.file.limits.calls_per_minute).map_err(|e| self.limited(caller, e))?;
        let limits = SessionLimits {
            max: p.file.sessions.max as usize,
            per_principal: p.file.sessions.max_per_principal as usize,
            idle: Duration::from_secs(p.file.sessions.idle_seconds),
            lifetime: Duration::from_secs(p.file.sessions.lifetime_seconds),
        };
        let ws = Workspace::create(&self.workspaces, "session-").map_err(|e| ExecError::Internal(e.to_string()))?;
        let s = self.sessions.create(caller.owner.clone(), language, ws, (p.name(), &p.sha256), limits)?;
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

    /// Reads an artifact for its owner: `(bytes, mime)`. Files over [`MAX_READ_BYTES`] are
    /// refused with what to do instead; reads hold one of the principal's read shares and one of
    /// the server's read slots, and run off the async runtime.
    pub async fn read_artifact(&self, caller: &Caller, uri: &str) -> Result<(Vec<u8>, String), ExecError> {
        let shown = bound_str(uri, 200).into_owned();
        let not_found = || Self::invalid(format!("no artifact {shown:?} is readable by you (it may have expired)"));
        let _share = self
            .reads
            .take(&caller.principal, MAX_READS_PER_PRINCIPAL)
            .map_err(|running| ExecError::Limited(Limited::Share { what: "artifact reads", running }))?;
        let (ws, path, mime) = match parse_uri(uri).ok_or_else(not_found)? {
            ArtifactRef::Call { call_id, path } => {
                let (ws, a) = self.artifacts.find(call_id, path, &caller.owner).ok_or_else(not_found)?;
                (ws, path.to_string(), a.mime)
            }
            ArtifactRef::Session { session_id, path } => {
                let s = self.sessions.get(session_id, &caller.owner).map_err(|_| not_found())?;
                let ws = s.state.try_lock().map(|st| st.workspace.clone()).map_err(|_| {
                    Self::invalid("the session is running a call; read its files when the call returns")
                })?;
                (ws, path.to_string(), crate::sandbox::workspace::mime_for(path))
            }
        };
        let queue = Duration::from_secs(10);
        let Ok(Ok(_permit)) = tokio::time::timeout(queue, self.read_slots.clone().acquire_owned()).await else {
            self.metrics.busy.inc();
            return Err(ExecError::Busy { slots: MAX_READS, waited_ms: queue.as_millis() as u64 });
        };
        let read = tokio::task::spawn_blocking(move || ws.read_file(&path, MAX_READ_BYTES))
            .await
            .map_err(|e| ExecError::Internal(format!("artifact read task: {e}")))?;
        match read {
            Ok(bytes) => Ok((bytes, mime)),
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => Err(Self::invalid(format!(
                "artifact {shown:?} is larger than the {} MiB resources/read returns (MCP cannot stream a resource). \
                 Have your code write what you need to see in smaller files (a summary, a sample, a compressed copy, \
                 or parts under {} MiB) and read those",
                MAX_READ_BYTES >> 20,
                MAX_READ_BYTES >> 20
            ))),
            Err(_) => Err(not_found()),
        }
    }

    /// Expires idle sessions, old artifacts and idle principals' rate state. Run periodically.
    pub fn sweep(&self) {
        for s in self.sessions.expire() {
            self.audit_close(&s, "expired");
        }
        for s in self.denials.sweep() {
            let (principal, reason) = s.key.unwrap_or_else(|| ("(other principals)".into(), "(any)".into()));
            let _ = self.audit.record(
                "authz.deny.suppressed",
                json!({"principal": principal, "reason": reason, "count": s.count, "window_s": s.window_s}),
            );
        }
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        self.artifacts.expire();
        self.limiter.sweep();
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
