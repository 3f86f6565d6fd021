//! Sessions as the front sees them: opening one (rate-limited like a call, bounded per
//! principal), closing and expiring them with an audit record, and binding a call to a session
//! its caller owns under the very profile it was made under. The session's workspace and live
//! interpreter are on the executor process it was placed on; the front keeps its directory.

use std::sync::Arc;
use std::time::Duration;

use super::{Caller, ExecError, Service, invalid, rfc3339};
use crate::api::{CloseSessionResult, SessionInfo};
use crate::audit::event::Event;
use crate::policy::Policy;
use crate::runtime::Language;
use crate::sandbox::Workspace;
use crate::service::executors::GroupKey;
use crate::session::{Session, SessionError, SessionLimits};

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
        let limits = SessionLimits {
            max: p.file.sessions.max as usize,
            per_principal: p.file.sessions.max_per_principal as usize,
            idle: Duration::from_secs(p.file.sessions.idle_seconds),
            lifetime: Duration::from_secs(p.file.sessions.lifetime_seconds),
        };
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

    pub fn close_session(&self, caller: &Caller, id: &str) -> Result<CloseSessionResult, ExecError> {
        let s = self.sessions.close(id, &caller.owner)?;
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
