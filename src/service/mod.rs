//! The request path, independent of transport: request → policy → admission → run → outcome →
//! audit → response.
//!
//! [`Service`] is what the MCP handler (stdio or HTTP) and `warden exec` talk to. It owns the
//! served profiles, the session registry, the retained artifacts, admission and the audit of
//! every call; it hands the running of guests to executor processes ([`executors`]). Its parts:
//!
//! * [`request`]: is the request well-formed and allowed by the caller's profile?
//! * [`admission`]: rate, per-principal shares and execution slots; refusals; draining.
//! * [`calls`]: `execute_code` and package tools, from admission to the audited result.
//! * [`sessions`]: opening, closing and expiring sessions, and binding a call to one.
//! * [`snapshots`]: session snapshots: taking, listing, deleting, forking and restoring them.
//! * [`suspend`]: idle sessions (and all, at a graceful stop) to disk, and back on their next call.
//! * [`reads`]: `resources/read` of retained artifacts, bounded in size and concurrency.
//! * [`executors`]: the executor processes, placement, and replacing the ones that die.

pub mod admission;
pub mod calls;
pub mod executors;
mod reads;
pub(crate) mod request;
mod sessions;
mod snapshots;
mod suspend;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use self::admission::Admission;
use crate::artifacts::ArtifactStore;
use crate::audit::event::Event;
use crate::audit::{AuditError, AuditLog};
use crate::channel::proto::Failure;
use crate::executor::RunError;
use crate::limiter::{Limited, Shares};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::service::executors::{Executors, GroupKey};
use crate::session::{Owner, SessionError, Sessions};
use crate::snapshots::SnapshotStore;
use crate::telemetry::Telemetry;
use crate::tools::{Grant, ToolPackage, ToolRegistry, grant};

pub use self::reads::MAX_READ_BYTES;
pub(crate) use self::request::check_request;

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
        Caller { principal: "operator".into(), owner: Owner { principal: "operator".into(), connection }, profile: profile.to_string() }
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
    /// The request is malformed or asks for something the policy does not allow: the model can
    /// correct it (a tool result with `isError`, SEP-1303).
    #[error("{0}")]
    InvalidRequest(String),
    /// No tool of that name is available to the caller: a protocol error, as the spec lists it.
    #[error("{0}")]
    UnknownTool(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A snapshot that is not the caller's, over a quota, or failed its integrity check.
    #[error(transparent)]
    Snapshot(crate::snapshots::SnapshotError),
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

impl ExecError {
    /// A low-cardinality name for the error (a span's `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            ExecError::InvalidRequest(_) => "invalid_request",
            ExecError::UnknownTool(_) => "unknown_tool",
            ExecError::Session(_) => "session",
            ExecError::Snapshot(_) => "snapshot",
            ExecError::Busy { .. } => "busy",
            ExecError::Limited(_) => "limited",
            ExecError::ShuttingDown => "shutting_down",
            ExecError::Audit(_) => "audit",
            ExecError::Internal(_) => "internal",
        }
    }

    /// For refusals that pass with time, how many seconds to wait before trying again.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ExecError::Busy { .. } => Some(2),
            ExecError::Limited(l) => Some(l.retry_after_s()),
            ExecError::ShuttingDown => Some(5),
            ExecError::Session(SessionError::Full(_) | SessionError::PrincipalFull(_)) => Some(10),
            _ => None,
        }
    }
}

impl From<RunError> for ExecError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Rejected(m) => ExecError::InvalidRequest(m),
            RunError::Internal(m) => ExecError::Internal(m),
        }
    }
}

impl From<Failure> for ExecError {
    fn from(e: Failure) -> Self {
        match e {
            Failure::Rejected(m) => ExecError::InvalidRequest(m),
            Failure::Internal(m) => ExecError::Internal(m),
        }
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> ExecError {
    ExecError::InvalidRequest(msg.into())
}

pub struct Service {
    executors: Arc<Executors>,
    profiles: RwLock<Arc<Profiles>>,
    pub sessions: Sessions,
    pub artifacts: ArtifactStore,
    admission: Arc<Admission>,
    /// Artifact reads in flight, per principal (see [`reads`]).
    reads: Shares,
    /// Artifact reads in flight, server-wide.
    read_slots: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub tools: Arc<ToolRegistry>,
    audit: Arc<AuditLog>,
    telemetry: Telemetry,
    /// Where session snapshots are kept; none in `warden exec`, which has no sessions.
    snapshots: Option<Arc<SnapshotStore>>,
    snapshot_swept: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Service {
    /// A service on running `executors` (whose metrics it shares).
    pub fn new(executors: Arc<Executors>, profiles: Profiles, audit: Arc<AuditLog>, tools: Arc<ToolRegistry>) -> Service {
        let metrics = executors.metrics().clone();
        audit.count_failures_in(metrics.audit_write_failures.clone());
        Service {
            executors,
            profiles: RwLock::new(Arc::new(profiles)),
            sessions: Sessions::new(),
            artifacts: ArtifactStore::new(),
            admission: Arc::new(Admission::new(audit.clone(), metrics.clone())),
            reads: Shares::default(),
            read_slots: Arc::new(Semaphore::new(reads::MAX_READS)),
            metrics,
            tools,
            audit,
            telemetry: Telemetry::off(),
            snapshots: None,
            snapshot_swept: std::sync::Mutex::new(None),
        }
    }

    /// This service, keeping session snapshots in `store`.
    pub fn with_snapshots(mut self, store: SnapshotStore) -> Service {
        self.snapshots = Some(Arc::new(store));
        self
    }

    /// This service, recording spans with `telemetry` (the server's exporters).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Service {
        telemetry.count_failures_in(self.metrics.trace_export_failures.clone());
        self.telemetry = telemetry;
        self
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
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
            .ok_or_else(|| invalid(format!("profile {:?} is no longer served; retry", caller.profile)))
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
        let in_use: Vec<GroupKey> = profiles.by_name.values().map(|p| GroupKey::of(&p.policy)).collect();
        self.executors.retire_unused(&in_use);
    }

    /// Declares that callers are authenticated principals who must not starve one another (see
    /// [`Admission::call`]).
    pub fn set_multi_tenant(&self, on: bool) {
        self.admission.set_multi_tenant(on);
    }

    /// The tools `policy` serves, with what it grants each. Tools it lists but cannot grant what
    /// they ask for are left out (and were reported when the server started).
    pub fn granted_tools(&self, policy: &Policy) -> Vec<(Arc<ToolPackage>, Grant)> {
        self.tools.all().filter_map(|t| grant(t, policy).ok().map(|g| (t.clone(), g))).collect()
    }

    pub fn executors(&self) -> &Arc<Executors> {
        &self.executors
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Calls admitted and still running.
    pub fn inflight(&self) -> usize {
        self.admission.running()
    }

    /// Expires idle sessions and old artifacts, and summarises counted refusals. Run
    /// periodically.
    pub fn sweep(&self) {
        for s in self.sessions.expire() {
            self.audit_close(&s, "expired");
        }
        self.admission.sweep();
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        self.artifacts.expire();
        if let Some(store) = self.snapshots.as_ref().filter(|_| self.snapshot_sweep_due()) {
            for m in store.expire() {
                if let Err(e) = self.audit.record(&Event::SnapshotDelete {
                    snapshot_id: m.id.clone(),
                    principal: m.principal.clone(),
                    profile: m.profile.clone(),
                    reason: "expired",
                }) {
                    tracing::error!(error = %e, "could not audit a snapshot's expiry");
                }
            }
        }
    }

    /// Whether the snapshot store is due a sweep: every few seconds, not every tick, since it
    /// reads every snapshot's record. (Until it is swept, an expired snapshot is already
    /// unknown to every caller.)
    fn snapshot_sweep_due(&self) -> bool {
        let mut last = self.snapshot_swept.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// Stops taking calls, lets running ones finish for up to `grace`, cancels the rest, then
    /// suspends every session to the snapshot store (closing any that cannot be), stops the
    /// executors and removes all workspaces.
    pub async fn shutdown(&self, grace: Duration) {
        self.admission.drain(grace).await;
        self.suspend_all().await;
        for s in self.sessions.drain() {
            self.audit_close(&s, "shutdown");
        }
        self.artifacts.clear();
        self.executors.shutdown();
        self.telemetry.shutdown().await;
    }

    pub fn is_shutting_down(&self) -> bool {
        self.admission.is_shutting_down()
    }
}

pub fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
