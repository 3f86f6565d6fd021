//! Suspending sessions to disk and resuming them: a session idle past its profile's
//! `sessions.suspend_after_seconds`, and every live session when the server stops gracefully,
//! is written to the snapshot store ([`crate::snapshots::SnapshotStore::suspend`]) and released
//! from memory (its executor drops the interpreter, the front its directory). The next call
//! that names it, from its owner under its profile, resumes it transparently: on this server, or
//! on another sharing the store, whichever claims it first.
//!
//! A suspended session keeps its session slot (it counts against the profile's `sessions.max`
//! and the principal's share), its idle expiry and what was left of its lifetime. It is resumed
//! for the same principal only; its connection is the resuming caller's (a restarted stdio
//! server gives the operator its sessions back, an HTTP client gets them on a new MCP session).

use std::sync::Arc;
use std::time::Duration;

use super::{Caller, ExecError, Service};
use crate::audit::event::Event;
use crate::policy::Policy;
use crate::runtime::Language;
use crate::session::{NewId, Session, SessionError};
use crate::snapshots::{NewSnapshot, SnapshotError};

impl Service {
    /// Session `id` for a call by `caller` under `p` in `language` (any language when `None`):
    /// a live one, or a suspended one resumed now.
    pub(super) async fn open_session(
        &self,
        caller: &Caller,
        p: &Policy,
        id: &str,
        language: Option<Language>,
    ) -> Result<Arc<Session>, ExecError> {
        let s = match self.sessions.get(id, &caller.owner) {
            Ok(s) => s,
            Err(SessionError::Unknown(_)) => match self.resume(caller, p, id).await? {
                Some(s) => s,
                None => return Err(SessionError::Unknown(id.chars().take(80).collect()).into()),
            },
            Err(e) => return Err(e.into()),
        };
        self.session_for(caller, p, id, language.unwrap_or(s.language))
    }

    /// Resumes suspended session `id` of the caller's under `p`, if there is one: claims it in
    /// the store, restores it under its id, and audits `session.resume`.
    async fn resume(&self, caller: &Caller, p: &Policy, id: &str) -> Result<Option<Arc<Session>>, ExecError> {
        let Some(store) = self.snapshots.clone() else { return Ok(None) };
        let claimed = {
            let (store, profile, principal, id) = (store.clone(), p.name().to_string(), caller.principal.clone(), id.to_string());
            tokio::task::spawn_blocking(move || store.claim(&profile, &principal, &id))
                .await
                .map_err(|e| ExecError::Internal(format!("a resume task failed: {e}")))?
        };
        let claimed = match claimed {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(SnapshotError::Claimed(id)) => return Err(SnapshotError::Claimed(id).into()),
            Err(e) => {
                self.lost_suspended(caller, id, &e.to_string());
                return Err(e.into());
            }
        };
        let meta = claimed.meta().clone();
        match self.restore_into(caller, p, &store, (claimed.dir(), &meta), NewId::Given(id.to_string())).await {
            Ok((s, report)) => {
                drop(claimed);
                self.audit.record(&Event::SessionResume {
                    session_id: s.id.clone(),
                    principal: caller.principal.clone(),
                    connection: caller.owner.connection.clone(),
                    language: s.language,
                    profile: p.name().to_string(),
                    interpreter: !report.ended_session,
                })?;
                self.metrics.active_sessions.set(self.sessions.len() as i64);
                Ok(Some(s))
            }
            // Damaged in storage: it is gone (dropping the claim removes it).
            Err(ExecError::Snapshot(e @ SnapshotError::Tampered { .. })) => {
                self.lost_suspended(caller, id, &e.to_string());
                Err(ExecError::Snapshot(e))
            }
            // Anything else may pass (a full session table, a busy executor): it stays
            // suspended for the next call.
            Err(e) => {
                claimed.release();
                Err(e)
            }
        }
    }

    /// Removes suspended session `id` of the caller's (`close_session`); whether there was one.
    pub(super) fn close_suspended(&self, caller: &Caller, id: &str) -> Result<bool, ExecError> {
        let Some(store) = &self.snapshots else { return Ok(false) };
        let profile = self.profile(caller)?;
        let Some(claim) = store.claim(profile.policy.name(), &caller.principal, id)? else { return Ok(false) };
        drop(claim);
        self.audit.record(&Event::SessionClose {
            session_id: id.to_string(),
            principal: caller.principal.clone(),
            connection: caller.owner.connection.clone(),
            reason: "closed",
        })?;
        Ok(true)
    }

    /// Audits a suspended session that could not be resumed and is gone.
    fn lost_suspended(&self, caller: &Caller, id: &str, why: &str) {
        tracing::warn!(session = id, reason = why, "a suspended session could not be resumed");
        if let Err(e) = self.audit.record(&Event::SessionClose {
            session_id: id.to_string(),
            principal: caller.principal.clone(),
            connection: caller.owner.connection.clone(),
            reason: "lost",
        }) {
            tracing::error!(error = %e, "could not audit a lost session");
        }
    }

    /// Writes session `s` to the store and releases it from memory. With `idle`, only if it is
    /// still unused that long once written (a call that found it meanwhile keeps it live), and
    /// not while a turn runs; without, after waiting for a running turn (a graceful stop).
    /// Audited as `session.suspend`.
    pub(super) async fn suspend(&self, s: &Arc<Session>, reason: &'static str, idle: Option<Duration>) -> Result<bool, ExecError> {
        let store = self.store()?;
        let profiles = self.profiles();
        let Some(profile) = profiles.by_name.get(&s.profile).filter(|p| p.policy.sha256 == s.profile_sha256).cloned() else {
            return Ok(false);
        };
        let p = &profile.policy;
        let state = match idle {
            None => s.state.lock().await,
            Some(_) => match s.state.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(false),
            },
        };
        if s.conn.is_dead() {
            return Ok(false);
        }
        let (principal, profile_name, session_id, language) = (s.owner.principal.clone(), p.name().to_string(), s.id.clone(), s.language);
        let (expires, lifetime_ends) = (s.expires_at(), s.lifetime_ends());
        let meta = self
            .capture(s, state.workspace.clone(), p, move |files, image, max_image| {
                let new = NewSnapshot {
                    principal: &principal,
                    profile: &profile_name,
                    session_id: &session_id,
                    language,
                    label: None,
                    files: &files,
                    image: image.as_deref(),
                    max_image,
                };
                Ok(store.suspend(new, expires, lifetime_ends)?)
            })
            .await?;
        // Closed meanwhile, or found by a call: the record must not bring it back.
        if !self.sessions.remove_exact(s, idle) {
            let _ = self.store()?.claim(&meta.profile, &meta.principal, &meta.id);
            return Ok(false);
        }
        drop(state);
        s.conn.end_session(&s.id);
        self.audit.record(&Event::SessionSuspend {
            session_id: s.id.clone(),
            principal: s.owner.principal.clone(),
            connection: s.owner.connection.clone(),
            profile: s.profile.clone(),
            bytes: meta.bytes(),
            interpreter: meta.has_interpreter(),
            reason,
        })?;
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        Ok(true)
    }

    /// Suspends every session idle past its profile's `sessions.suspend_after_seconds`. Run
    /// periodically.
    pub async fn suspend_idle(&self) {
        if self.snapshots.is_none() {
            return;
        }
        let profiles = self.profiles();
        for s in self.sessions.all() {
            let after = profiles.by_name.get(&s.profile).map(|p| p.policy.file.sessions.suspend_after_seconds).unwrap_or(0);
            if after == 0 || s.idle_for().as_secs() < after {
                continue;
            }
            if let Err(e) = self.suspend(&s, "idle", Some(Duration::from_secs(after))).await {
                tracing::warn!(session = %s.id, error = %e, "could not suspend an idle session");
            }
        }
    }

    /// Suspends every live session (a graceful stop), so a restarted server resumes them.
    pub(super) async fn suspend_all(&self) {
        if self.snapshots.is_none() {
            return;
        }
        for s in self.sessions.all() {
            match self.suspend(&s, "shutdown", None).await {
                Ok(_) => {}
                Err(e) => tracing::warn!(session = %s.id, error = %e, "could not suspend a session at shutdown; it ends"),
            }
        }
    }
}
