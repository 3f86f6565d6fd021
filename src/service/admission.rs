//! Admission: the one guard every piece of work passes before it runs — an `execute_code` call,
//! a package tool's `tools/call`, a nested tool call from code, and opening a session.
//!
//! Owns the principal's rate and running-call limits, the profile's execution slots (with each
//! principal's share of them), the table of running calls that shutdown cancels, and the audit
//! records of refusals (a burst in full per principal and reason, the rest counted). It does not
//! decide whether a request is well-formed (that is [`super::request`]) nor run anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{Caller, ExecError, Profile};
use crate::audit::AuditLog;
use crate::audit::bound::bound_str;
use crate::audit::event::{Denial, Event, NestedOrigin, Via};
use crate::limiter::{Limited, PrincipalLimiter, Slot};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::sandbox::CancelHandle;
use crate::throttle::Throttle;

/// Longest text of a refusal kept in an audit record.
pub(crate) const MAX_AUDIT_REASON: usize = 512;
/// Refusals of one principal for one reason written in full per minute; the rest are counted in
/// an `authz.deny.suppressed` summary.
const DENIALS_PER_MINUTE: u32 = 10;

pub struct Admission {
    limiter: PrincipalLimiter,
    /// Whether callers other than the one operator or anonymous user can exist (HTTP with
    /// authentication): then every principal leaves one execution slot of each profile free
    /// for the others.
    multi_tenant: AtomicBool,
    /// Refusal records per principal and reason: a burst in full, the rest counted.
    denials: Throttle<(String, String)>,
    /// How to cancel each admitted call, for shutdown.
    running: Mutex<HashMap<u64, CancelHandle>>,
    /// Admitted calls still running, for shutdown to wait on without polling.
    tracker: TaskTracker,
    next_call: AtomicU64,
    shutting_down: AtomicBool,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
}

/// What holds an admitted call's place while it runs: the principal's running slot, one of the
/// profile's execution slots, and its entry in the table shutdown cancels. Dropping it frees all
/// three, however the call ends.
pub struct Admitted<'a> {
    _slot: Slot,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _tracked: TaskTrackerToken,
    admission: &'a Admission,
    id: u64,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.admission.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        self.admission.metrics.active_executions.dec();
    }
}

impl Admission {
    pub fn new(audit: Arc<AuditLog>, metrics: Arc<Metrics>) -> Admission {
        Admission {
            limiter: PrincipalLimiter::new(),
            multi_tenant: AtomicBool::new(false),
            denials: Throttle::new(Duration::from_secs(60), DENIALS_PER_MINUTE),
            running: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            next_call: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            audit,
            metrics,
        }
    }

    /// Declares that callers are authenticated principals who must not starve one another (see
    /// [`Admission::call`]).
    pub fn set_multi_tenant(&self, on: bool) {
        self.multi_tenant.store(on, Ordering::SeqCst);
    }

    /// Refuses new work once shutdown has begun.
    pub fn open(&self) -> Result<(), ExecError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            self.metrics.refuse("shutting_down");
            Err(ExecError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Admits one call that runs a guest: the principal's rate and running-call limits, then one
    /// of the profile's execution slots, waiting up to the queue timeout; the call is then in
    /// the table shutdown cancels (through `cancel`). When several principals can exist, a
    /// principal may hold at most all but one of a profile's slots, so a principal at its limits
    /// always leaves a slot for the next one (guests cannot be preempted, so only a free slot
    /// bounds another principal's wait).
    pub async fn call(&self, caller: &Caller, profile: &Profile, cancel: &CancelHandle) -> Result<Admitted<'_>, ExecError> {
        self.open()?;
        let l = &profile.policy.file.limits;
        let slots = l.concurrent_executions;
        let share = if self.multi_tenant.load(Ordering::SeqCst) && slots > 1 {
            l.concurrent_per_principal.min(slots - 1)
        } else {
            l.concurrent_per_principal
        };
        let slot = self.limiter.admit(&caller.principal, l.calls_per_minute, share).map_err(|e| self.limited(caller, e))?;
        let queue = Duration::from_millis(l.queue_timeout_ms);
        let waiting = std::time::Instant::now();
        let permit = match tokio::time::timeout(queue, profile.admission.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.metrics.queue_wait.observe(waiting.elapsed().as_secs_f64());
                permit
            }
            _ => {
                self.metrics.refuse("busy");
                return Err(ExecError::Busy { slots: slots as usize, waited_ms: queue.as_millis() as u64 });
            }
        };
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(id, cancel.clone());
        self.metrics.active_executions.inc();
        Ok(Admitted { _slot: slot, _permit: permit, _tracked: self.tracker.token(), admission: self, id })
    }

    /// Admits work that spends one of the principal's calls per minute but takes no execution
    /// slot: a nested tool call from code (it runs under its parent's slot; see
    /// [`crate::tools::door`]) and opening a session.
    pub fn rate_only(&self, caller: &Caller, policy: &Policy) -> Result<(), ExecError> {
        self.open()?;
        self.limiter.admit_rate(&caller.principal, policy.file.limits.calls_per_minute).map_err(|e| self.limited(caller, e))
    }

    /// Counts and audits a rate-limit refusal.
    fn limited(&self, caller: &Caller, e: Limited) -> ExecError {
        self.deny(caller, "rate_limited", &e.to_string(), None);
        e.into()
    }

    /// Records a refusal in the metrics, and in the audit log within the principal's budget of
    /// refusal records (the rest are counted and summarised by [`Admission::sweep`]). `parent`
    /// names the call whose code made a nested call.
    pub fn deny(&self, caller: &Caller, reason: &'static str, detail: &str, parent: Option<&str>) {
        self.metrics.refuse(reason);
        if self.denials.allow(&(caller.principal.clone(), reason.to_string())) {
            let _ = self.audit.record(&Event::Denied(Denial {
                principal: caller.principal.clone(),
                profile: caller.profile.clone(),
                reason,
                detail: bound_str(detail, MAX_AUDIT_REASON).into_owned(),
                nested: parent.map(|p| NestedOrigin { via: Via, parent_call_id: p.to_string() }),
            }));
        }
    }

    /// Calls admitted and not yet finished.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Writes the summaries of refusals that were counted rather than recorded, and forgets the
    /// rate state of principals idle long enough that it is full again.
    pub fn sweep(&self) {
        self.limiter.sweep();
        for s in self.denials.sweep() {
            let (principal, reason) = s.key.unwrap_or_else(|| ("(other principals)".into(), "(any)".into()));
            let _ = self.audit.record(&Event::DenialsSuppressed { principal, reason, count: s.count, window_s: s.window_s });
        }
    }

    /// Stops admitting, lets running calls finish for up to `grace`, then cancels the rest and
    /// waits up to two seconds for them to notice.
    pub async fn drain(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Closed, the tracker's wait ends once the last admitted call drops its token.
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_ok() {
            return;
        }
        for c in self.running.lock().unwrap_or_else(|e| e.into_inner()).values() {
            c.cancel();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
    }
}
