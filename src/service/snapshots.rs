//! Session snapshots as the front serves them: taking one (the executor writes the
//! interpreter's image beside the session's directory, the front stores it with the session's
//! files), listing and deleting a principal's own, and making a session from one — a fork (a
//! new session) or a restore (the snapshot's own session, reopened or rolled back).
//!
//! A snapshot is found only under the caller's principal and profile, so another principal's
//! id is "unknown", as for sessions. Its data is checked against its sha256 while it is read,
//! before anything reaches an executor; a snapshot that fails is refused and audited, never
//! loaded. What the new session gets beyond the image (its directories, environment, limits
//! and random seeds) comes from the caller's profile as it is now.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Caller, ExecError, Profile, Service, invalid, rfc3339};
use crate::api::{DeleteSnapshotResult, ForkSessionResult, ListSnapshotsResult, RestoreSessionResult, SnapshotInfo};
use crate::audit::event::Event;
use crate::channel::inputs;
use crate::channel::proto::{IMAGE_FILE, Job};
use crate::policy::Policy;
use crate::sandbox::image::max_encoded_bytes;
use crate::sandbox::{CancelHandle, InputFile, RunReport, Workspace};
use crate::service::executors::GroupKey;
use crate::session::{NewId, Session, SessionError};
use crate::snapshots::{MAX_LABEL, NewSnapshot, SnapshotError, SnapshotLimits, SnapshotMeta, SnapshotStore};

/// A profile's snapshot limits.
fn snapshot_limits(p: &Policy) -> SnapshotLimits {
    let s = &p.file.snapshots;
    SnapshotLimits {
        per_principal: s.max_per_principal as usize,
        bytes_per_principal: s.max_bytes_per_principal,
        bytes: s.max_bytes,
        retention: Duration::from_secs(s.retention_seconds),
    }
}

fn info(m: &SnapshotMeta) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: m.id.clone(),
        session_id: m.session_id.clone(),
        language: m.language,
        label: m.label.clone(),
        created_at: rfc3339(m.created_at()),
        expires_at: rfc3339(m.expires_at()),
        bytes: m.bytes(),
        files: m.files.len(),
        interpreter: m.has_interpreter(),
    }
}

impl From<SnapshotError> for ExecError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Io(io) => ExecError::Internal(format!("the snapshot store: {io}")),
            other => ExecError::Snapshot(other),
        }
    }
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ExecError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ExecError::Internal(format!("a snapshot task failed: {e}")))
}

impl Service {
    /// The session limits of `p` for `principal`, counting the slots its suspended sessions
    /// (and all of the profile's) hold.
    pub(super) fn session_limits_of(&self, p: &Policy, principal: &str) -> crate::session::SessionLimits {
        let mut l = super::sessions::session_limits(p);
        if let Some(store) = &self.snapshots {
            l.suspended = store.suspended_counts(p.name(), principal);
        }
        l
    }

    pub(super) fn store(&self) -> Result<Arc<SnapshotStore>, ExecError> {
        self.snapshots.clone().ok_or_else(|| invalid("snapshots are not available from this server (it has no snapshot store)"))
    }

    /// The caller's profile, if it allows snapshots, and the store.
    fn snapshots_on(&self, caller: &Caller) -> Result<(Arc<Profile>, Arc<SnapshotStore>), ExecError> {
        self.admission.open()?;
        let profile = self.profile(caller)?;
        if profile.policy.file.snapshots.max_per_principal == 0 || profile.policy.file.sessions.max == 0 {
            return Err(SnapshotError::Disabled.into());
        }
        Ok((profile, self.store()?))
    }

    /// Writes session `id`'s files and live interpreter to the store, as a snapshot of the
    /// caller's. The session runs no turn meanwhile and goes on unchanged.
    pub async fn snapshot_session(&self, caller: &Caller, id: &str, label: Option<String>) -> Result<SnapshotInfo, ExecError> {
        let (profile, store) = self.snapshots_on(caller)?;
        let p = &profile.policy;
        if let Some(l) = &label {
            if l.chars().count() > MAX_LABEL || l.chars().any(char::is_control) {
                return Err(invalid(format!("label must be at most {MAX_LABEL} characters, without control characters")));
            }
        }
        let s = self.open_session(caller, p, id, None).await?;
        let language = s.language;
        self.admission.rate_only(caller, p)?;
        let state = s.state.lock().await;
        s.touch();
        if s.conn.is_dead() {
            self.lose(&s);
            return Err(SessionError::Lost(s.id.clone()).into());
        }
        let limits = snapshot_limits(p);
        let (principal, profile_name, session_id) = (caller.principal.clone(), p.name().to_string(), s.id.clone());
        let written = self
            .capture(&s, state.workspace.clone(), p, move |files, image, max_image| {
                let new = NewSnapshot {
                    principal: &principal,
                    profile: &profile_name,
                    session_id: &session_id,
                    language,
                    label,
                    files: &files,
                    image: image.as_deref(),
                    max_image,
                };
                Ok(store.write(new, &limits)?)
            })
            .await;
        drop(state);
        let meta = written?;
        if let Err(e) = self.audit.record(&Event::SnapshotCreate {
            snapshot_id: meta.id.clone(),
            session_id: s.id.clone(),
            principal: caller.principal.clone(),
            connection: caller.owner.connection.clone(),
            language,
            profile: p.name().to_string(),
            bytes: meta.bytes(),
            interpreter: meta.has_interpreter(),
            sha256: meta.sha256.clone(),
        }) {
            let _ = self.store()?.delete(p.name(), &caller.principal, &meta.id);
            return Err(e.into());
        }
        Ok(info(&meta))
    }

    /// Has session `s`'s executor write its interpreter's image beside its directory, then
    /// hands `keep` the session's files (from `ws`, within the profile's workspace limits), the
    /// image's path if it has a live interpreter, and the most bytes that image may hold. Runs
    /// `keep` off the async runtime; the image file is removed after. The caller holds the
    /// session's turn lock.
    pub(super) async fn capture<T: Send + 'static>(
        &self,
        s: &Session,
        ws: Arc<Workspace>,
        p: &Policy,
        keep: impl FnOnce(Vec<InputFile>, Option<PathBuf>, u64) -> Result<T, ExecError> + Send + 'static,
    ) -> Result<T, ExecError> {
        let started = Instant::now();
        let spec = super::sessions::bare_spec(p, s.language);
        let job = Job::Snapshot { session: s.id.clone(), dir: s.dir.clone(), spec: super::calls::wire_spec(&spec, false) };
        let ran = self.executors.run(&s.conn.busy(), job, &CancelHandle::new(), spec.limits.timeout, None, None).await;
        let image = s.conn.dir().join(&s.dir).join(IMAGE_FILE);
        let kept = match super::calls::settle_ok(&s.conn, ran, &spec.limits, started, "the session's state was not captured") {
            Ok(r) => {
                let interpreter = !r.ended_session;
                let (l, image) = (spec.limits.clone(), image.clone());
                blocking(move || {
                    let files = ws
                        .read_files(l.workspace_bytes, l.workspace_files)
                        .map_err(|e| invalid(format!("the session's files cannot be kept: {e}")))?;
                    keep(files, interpreter.then_some(image), max_encoded_bytes(l.memory_bytes))
                })
                .await
                .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&image);
        kept
    }

    pub fn list_snapshots(&self, caller: &Caller) -> Result<ListSnapshotsResult, ExecError> {
        let (profile, store) = self.snapshots_on(caller)?;
        let p = &profile.policy;
        let all = store.list(p.name(), &caller.principal);
        Ok(ListSnapshotsResult {
            used_bytes: all.iter().map(SnapshotMeta::bytes).sum(),
            snapshots: all.iter().map(info).collect(),
            quota_bytes: p.file.snapshots.max_bytes_per_principal,
            max_snapshots: p.file.snapshots.max_per_principal,
        })
    }

    pub fn delete_snapshot(&self, caller: &Caller, id: &str) -> Result<DeleteSnapshotResult, ExecError> {
        let (profile, store) = self.snapshots_on(caller)?;
        let p = &profile.policy;
        store.delete(p.name(), &caller.principal, id)?;
        self.audit.record(&Event::SnapshotDelete {
            snapshot_id: id.to_string(),
            principal: caller.principal.clone(),
            profile: p.name().to_string(),
            reason: "deleted",
        })?;
        Ok(DeleteSnapshotResult { snapshot_id: id.to_string(), deleted: true })
    }

    /// Snapshot `id` of the caller's, under its profile; a record that fails its check is
    /// audited as refused.
    fn snapshot_of(&self, caller: &Caller, p: &Policy, store: &SnapshotStore, id: &str) -> Result<SnapshotMeta, ExecError> {
        store.get(p.name(), &caller.principal, id).map_err(|e| self.refused(caller, p, id, e))
    }

    /// Audits a snapshot that failed its integrity check (other errors pass through).
    fn refused(&self, caller: &Caller, p: &Policy, id: &str, e: SnapshotError) -> ExecError {
        if let SnapshotError::Tampered { why, .. } = &e {
            tracing::warn!(snapshot = id, reason = %why, "refused a snapshot that failed its integrity check");
            if let Err(a) = self.audit.record(&Event::SnapshotRefused {
                snapshot_id: id.to_string(),
                principal: caller.principal.clone(),
                profile: p.name().to_string(),
                reason: why.clone(),
            }) {
                return a.into();
            }
        }
        e.into()
    }

    /// A new session of the caller's holding snapshot `id`'s files and interpreter.
    pub async fn fork_from_snapshot(&self, caller: &Caller, id: &str) -> Result<ForkSessionResult, ExecError> {
        let (profile, store) = self.snapshots_on(caller)?;
        let p = &profile.policy;
        let meta = self.snapshot_of(caller, p, &store, id)?;
        self.admission.rate_only(caller, p)?;
        let (fork, report) = self.restore_into(caller, p, &store, (&store.snapshot_dir(&meta), &meta), NewId::Fresh).await?;
        self.forked(caller, p, &fork, &meta.id, report)
    }

    /// Snapshot `id`'s session back as it was, under its own id: rolled back in place if the
    /// caller still has it open (its state since is discarded), reopened otherwise.
    pub async fn restore_session(&self, caller: &Caller, id: &str) -> Result<RestoreSessionResult, ExecError> {
        let (profile, store) = self.snapshots_on(caller)?;
        let p = &profile.policy;
        let meta = self.snapshot_of(caller, p, &store, id)?;
        self.admission.rate_only(caller, p)?;
        let open = self.sessions.get(&meta.session_id, &caller.owner).ok();
        let rolled_back = open.is_some();
        let (s, report) = match open {
            Some(old) => {
                if old.language != meta.language {
                    return Err(invalid(format!("session {} runs {}, the snapshot {}", old.id, old.language, meta.language)));
                }
                // No turn of the old session runs while it is replaced.
                let held = old.clone();
                let _turn = held.state.lock().await;
                self.restore_into(caller, p, &store, (&store.snapshot_dir(&meta), &meta), NewId::Replace(old)).await?
            }
            None => {
                self.restore_into(caller, p, &store, (&store.snapshot_dir(&meta), &meta), NewId::Given(meta.session_id.clone())).await?
            }
        };
        let interpreter = !report.ended_session;
        self.audit.record(&Event::SessionRestore {
            session_id: s.id.clone(),
            snapshot_id: meta.id.clone(),
            principal: caller.principal.clone(),
            connection: caller.owner.connection.clone(),
            language: meta.language,
            profile: p.name().to_string(),
            interpreter,
            rolled_back,
        })?;
        self.metrics.active_sessions.set(self.sessions.len() as i64);
        Ok(RestoreSessionResult {
            session_id: s.id.clone(),
            snapshot_id: meta.id.clone(),
            language: meta.language,
            expires_at: rfc3339(s.expires_at()),
            interpreter,
            rolled_back,
            message: report.message.unwrap_or_default(),
        })
    }

    /// A session of the caller's under `id` holding snapshot `meta`: the snapshot is verified
    /// while its files are read and its image staged in the new session's directory, then an
    /// executor of the caller's profile group (the replaced session's own, for a rollback)
    /// builds the interpreter from the image. A session replaced is swapped out only once its
    /// replacement is in.
    pub(super) async fn restore_into(
        &self,
        caller: &Caller,
        p: &Policy,
        store: &Arc<SnapshotStore>,
        (data, meta): (&Path, &SnapshotMeta),
        id: NewId,
    ) -> Result<(Arc<Session>, RunReport), ExecError> {
        let language = meta.language;
        if !p.allows(language) {
            return Err(invalid(format!("language {language} is not allowed by policy {:?}", p.name())));
        }
        if meta.runtime != language.spec().cache_key() {
            return Err(invalid(format!(
                "snapshot {} was taken with another build of the {language} runtime (warden or its runtimes were upgraded since), so this server cannot restore it; delete it",
                meta.id
            )));
        }
        let started = Instant::now();
        let busy = match &id {
            NewId::Replace(old) => old.conn.busy(),
            _ => self.executors.place(&GroupKey::of(p)).await?,
        };
        let conn = busy.conn().clone();
        let dir = format!("session-{}", uuid::Uuid::new_v4().simple());
        let ws = Workspace::create_named(conn.dir(), &dir).map_err(|e| ExecError::Internal(e.to_string()))?;
        let root = conn.dir().join(&dir);
        let spec = super::sessions::bare_spec(p, language);
        let mut limits = self.session_limits_of(p, &caller.principal);
        // A suspended session resumed keeps the lifetime it had left.
        if let Some(ends) = meta.lifetime_ends {
            let left = (UNIX_EPOCH + Duration::from_secs(ends)).duration_since(SystemTime::now()).unwrap_or_default();
            limits.lifetime = limits.lifetime.min(left);
        }
        let place = (conn.clone(), dir.clone());
        // A new session takes its slot now (and is held until its interpreter is in); a
        // replacement, only once it is in.
        let (replace, made, ws) = match id {
            NewId::Replace(old) => (Some(old), None, Some(ws)),
            other => {
                let s = self.sessions.create_as(other, caller.owner.clone(), language, ws, place.clone(), (p.name(), &p.sha256), limits)?;
                (None, Some(s), None)
            }
        };
        let held = match &made {
            Some(s) => Some(s.state.lock().await),
            None => None,
        };
        let undo = |s: &Option<Arc<Session>>| {
            if let Some(s) = s {
                let _ = self.sessions.close(&s.id, &caller.owner);
                s.conn.end_session(&s.id);
            }
        };
        let session_id = replace.as_ref().or(made.as_ref()).map(|s| s.id.clone()).expect("one of them");
        let loaded = {
            let (store, meta, image, max, data) =
                (store.clone(), meta.clone(), root.join(IMAGE_FILE), spec.limits.workspace_bytes, data.to_path_buf());
            blocking(move || store.load(&data, &meta, max, &image)).await
        };
        let files = match loaded {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                undo(&made);
                return Err(self.refused(caller, p, &meta.id, e));
            }
            Err(e) => {
                undo(&made);
                return Err(e);
            }
        };
        let staged = inputs::stage(&root, &[], &files);
        drop(files);
        let inputs = match staged {
            Ok(i) => i,
            Err(e) => {
                undo(&made);
                return Err(ExecError::Internal(format!("staging a snapshot's files: {e}")));
            }
        };
        let job = Job::Restore {
            session: session_id,
            dir: dir.clone(),
            spec: super::calls::wire_spec(&spec, false),
            inputs,
            image: meta.has_interpreter(),
        };
        let ran = self.executors.run(&busy, job, &CancelHandle::new(), spec.limits.timeout, None, None).await;
        drop(held);
        let report = match super::calls::settle_ok(&conn, ran, &spec.limits, started, "the snapshot was not restored") {
            Ok(r) => r,
            Err(e) => {
                undo(&made);
                return Err(e);
            }
        };
        let session = match (made, replace, ws) {
            (Some(s), _, _) => s,
            (None, Some(old), Some(ws)) => {
                let new = self.sessions.create_as(
                    NewId::Replace(old.clone()),
                    caller.owner.clone(),
                    language,
                    ws,
                    place,
                    (p.name(), &p.sha256),
                    limits,
                );
                match new {
                    Ok(s) => {
                        // The old session's interpreter was replaced on its executor; its
                        // directory goes with its last handle.
                        if let Err(e) = self.audit.record(&Event::SessionClose {
                            session_id: old.id.clone(),
                            principal: old.owner.principal.clone(),
                            connection: old.owner.connection.clone(),
                            reason: "rolled_back",
                        }) {
                            tracing::error!(error = %e, "could not audit a session rollback");
                        }
                        s
                    }
                    // Closed meanwhile (it expired, or its owner closed it): so is the restored one.
                    Err(e) => {
                        conn.end_session(&old.id);
                        return Err(e.into());
                    }
                }
            }
            _ => unreachable!("a session was made or replaced"),
        };
        Ok((session, report))
    }
}
