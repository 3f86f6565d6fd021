//! Sessions as the front sees them: opening one (rate-limited like a call, bounded per
//! principal), closing and expiring them with an audit record, and binding a call to a session
//! its caller owns under the very profile it was made under. The session's workspace and live
//! interpreter are on the executor process it was placed on; the front keeps its directory.

use std::sync::Arc;
use std::time::Duration;

use super::{Caller, ExecError, Service, invalid, rfc3339};
use crate::api::{CloseSessionResult, ForkSessionResult, SessionInfo};
use crate::audit::event::Event;
use crate::channel::proto::Job;
use crate::policy::Policy;
use crate::runtime::Language;
use crate::sandbox::Workspace;
use crate::sandbox::{CancelHandle, ExecSpec, RunReport};
use crate::service::executors::GroupKey;
use crate::session::{Session, SessionError, SessionLimits};

/// Sessions' limits under a profile.
pub(super) fn session_limits(p: &Policy) -> SessionLimits {
    SessionLimits {
        max: p.file.sessions.max as usize,
        per_principal: p.file.sessions.max_per_principal as usize,
        idle: Duration::from_secs(p.file.sessions.idle_seconds),
        lifetime: Duration::from_secs(p.file.sessions.lifetime_seconds),
        suspended: (0, 0),
    }
}

/// What a session's interpreter is made or kept under, with no code: the profile's limits,
/// environment and mounts as they are now.
pub(super) fn bare_spec(p: &Policy, language: Language) -> ExecSpec {
    ExecSpec { language, code: String::new(), stdin: Vec::new(), limits: p.limits(), env: p.guest_env(), mounts: p.mounts.clone() }
}

impl Service {
    pub async fn create_session(&self, caller: &Caller, language: Language) -> Result<SessionInfo, ExecError> {
        self.admission.open()?;
        let profile = self.profile(caller)?;
        let p = &profile.policy;
        if !p.allows(language) {
            let msg = format!("language {language} is not allowed by policy {:?}", p.name());
            self.admission.deny(caller, "runtime_not_allowed", &msg, None);
            return Err(invalid(msg));
        }
        // Opening a session spends one of the principal's calls: creating and closing sessions in
        // a loop is work the server does, so it is rate-limited like any call.
        self.admission.rate_only(caller, p)?;
        let limits = self.session_limits_of(p, &caller.principal);
        // The session lives on one executor of its profile's group from now on.
        let conn = self.executors.place(&GroupKey::of(p)).await?;
        let dir = format!("session-{}", uuid::Uuid::new_v4().simple());
        let ws = Workspace::create_named(conn.dir(), &dir).map_err(|e| ExecError::Internal(e.to_string()))?;
        let s = self.sessions.create(caller.owner.clone(), language, ws, (conn.conn().clone(), dir), (p.name(), &p.sha256), limits)?;
        if let Err(e) = self.audit.record(&Event::SessionOpen {
            session_id: s.id.clone(),
            principal: caller.principal.clone(),
            connection: caller.owner.connection.clone(),
            language,
            profile: p.name().to_string(),
        }) {
            let _ = self.sessions.close(&s.id, &caller.owner);
            return Err(e.into());
        }
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        Ok(SessionInfo { session_id: s.id.clone(), language, expires_at: rfc3339(s.expires_at()) })
    }

    /// A new session holding a copy of session `id`'s files and live interpreter, on the same
    /// executor (which holds the interpreter), owned by the same caller under the same profile,
    /// and counted against the same session limits. The source goes on unchanged; it runs no
    /// turn while the fork is made.
    pub async fn fork_session(&self, caller: &Caller, id: &str) -> Result<ForkSessionResult, ExecError> {
        self.admission.open()?;
        let profile = self.profile(caller)?;
        let p = &profile.policy;
        let source = self.open_session(caller, p, id, None).await?;
        let language = source.language;
        self.admission.rate_only(caller, p)?;
        let started = std::time::Instant::now();
        let state = source.state.lock().await;
        source.touch();
        if source.conn.is_dead() {
            self.lose(&source);
            return Err(SessionError::Lost(source.id.clone()).into());
        }
        let dir = format!("session-{}", uuid::Uuid::new_v4().simple());
        let ws = Workspace::create_named(source.conn.dir(), &dir).map_err(|e| ExecError::Internal(e.to_string()))?;
        let fork = self.sessions.create(
            caller.owner.clone(),
            language,
            ws,
            (source.conn.clone(), dir.clone()),
            (p.name(), &p.sha256),
            self.session_limits_of(p, &caller.principal),
        )?;
        let spec = bare_spec(p, language);
        let job = Job::Fork {
            session: fork.id.clone(),
            dir,
            from: source.id.clone(),
            from_dir: source.dir.clone(),
            spec: super::calls::wire_spec(&spec, false),
        };
        let ran = self.executors.run(&source.conn.busy(), job, &CancelHandle::new(), spec.limits.timeout, None, None).await;
        drop(state);
        let report = match super::calls::settle_ok(&source.conn, ran, &spec.limits, started, "the fork was not made") {
            Ok(r) => r,
            Err(e) => {
                let _ = self.sessions.close(&fork.id, &caller.owner);
                fork.conn.end_session(&fork.id);
                return Err(e);
            }
        };
        self.forked(caller, p, &fork, &source.id, report)
    }

    /// Audits fork `fork` of `from` (a session's id, or a snapshot's) and answers for it; if
    /// the audit cannot be written, the fork is closed again.
    pub(super) fn forked(
        &self,
        caller: &Caller,
        p: &Policy,
        fork: &Session,
        from: &str,
        report: RunReport,
    ) -> Result<ForkSessionResult, ExecError> {
        let interpreter = !report.ended_session;
        if let Err(e) = self.audit.record(&Event::SessionFork {
            session_id: fork.id.clone(),
            from: from.to_string(),
            principal: caller.principal.clone(),
            connection: caller.owner.connection.clone(),
            language: fork.language,
            profile: p.name().to_string(),
            interpreter,
        }) {
            let _ = self.sessions.close(&fork.id, &caller.owner);
            fork.conn.end_session(&fork.id);
            return Err(e.into());
        }
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        Ok(ForkSessionResult {
            session_id: fork.id.clone(),
            forked_from: from.to_string(),
            language: fork.language,
            expires_at: rfc3339(fork.expires_at()),
            interpreter,
            message: report.message.unwrap_or_default(),
        })
    }

    pub fn close_session(&self, caller: &Caller, id: &str) -> Result<CloseSessionResult, ExecError> {
        let s = match self.sessions.close(id, &caller.owner) {
            Ok(s) => s,
            // A suspended session of the caller's: its record goes.
            Err(SessionError::Unknown(_)) if self.close_suspended(caller, id)? => {
                return Ok(CloseSessionResult { session_id: id.to_string(), closed: true });
            }
            Err(e) => return Err(e.into()),
        };
        self.audit_close(&s, "closed");
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        Ok(CloseSessionResult { session_id: s.id.clone(), closed: true })
    }

    /// The session `id` for a call by `caller` under `policy` in `language`: owned by the
    /// caller, and created under this very profile (same name and sha256).
    pub(super) fn session_for(&self, caller: &Caller, policy: &Policy, id: &str, language: Language) -> Result<Arc<Session>, ExecError> {
        let s = self.sessions.get(id, &caller.owner)?;
        if s.conn.is_dead() {
            self.lose(&s);
            return Err(SessionError::Lost(s.id.clone()).into());
        }
        if s.profile != policy.name() || s.profile_sha256 != policy.sha256 {
            let msg = format!(
                "session {id} was created under profile {:?}, and this call runs under {:?}; a session keeps the profile it was made under. Create a new session",
                s.profile,
                policy.name()
            );
            self.admission.deny(caller, "session_profile_mismatch", &msg, None);
            return Err(invalid(msg));
        }
        if s.language != language {
            return Err(invalid(format!("session {id} runs {}, not {language}", s.language)));
        }
        Ok(s)
    }

    /// Ends a session whose executor died.
    pub(super) fn lose(&self, s: &Session) {
        if self.sessions.close(&s.id, &s.owner).is_ok() {
            self.audit_close(s, "lost");
            self.metrics.active_sessions.set(self.sessions.len() as i64);
        }
    }

    /// Records a session's end and tells its executor to drop the interpreter (the directory
    /// goes when the last handle on the session does).
    pub(super) fn audit_close(&self, s: &Session, reason: &'static str) {
        s.conn.end_session(&s.id);
        if let Err(e) = self.audit.record(&Event::SessionClose {
            session_id: s.id.clone(),
            principal: s.owner.principal.clone(),
            connection: s.owner.connection.clone(),
            reason,
        }) {
            tracing::error!(error = %e, "could not audit a session close");
        }
    }
}
