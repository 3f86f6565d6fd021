//! Sessions as the front keeps them: a workspace kept across `execute_code` calls on one
//! executor process, which holds the session's live interpreter (Python). If that executor dies
//! the session is lost: the next call is told to create a new one.
//!
//! A session belongs to the caller that created it ([`Owner`]); any other caller gets the same
//! "unknown session" answer as for an id that never existed, so ids cannot be probed. It is bound
//! as well to the profile it was created under, by name and by the profile's sha256: a call under
//! another profile is refused, and a reload that changes the profile ends it (the executor does
//! that, with [`Sessions::remove_if`]). Each profile's session slots are shared fairly: one
//! principal may hold at most `per_principal` of them. Sessions end on `close_session`, after
//! `idle` without use, after `lifetime`, or at shutdown, and their workspace is removed with them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::runtime::Language;
use crate::sandbox::Workspace;
use crate::service::executors::Conn;

/// Who may use a session or read an artifact: the authenticated principal, plus the MCP
/// connection when the transport has one (stdio, or a stateful HTTP session).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub principal: String,
    pub connection: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("unknown session_id {0:?}: it does not exist, has expired, or belongs to another client. Create one with create_session")]
    Unknown(String),
    #[error("{0} sessions are open under this profile, its limit; close one with close_session or retry later")]
    Full(usize),
    #[error(
        "you have {0} sessions open under this profile, your limit (each principal's share of its sessions); close one with close_session or retry later"
    )]
    PrincipalFull(usize),
    #[error("sessions are disabled by this server's policy (sessions.max = 0)")]
    Disabled,
    #[error("session {0:?} is open on another connection of yours; close it there, or use fork_session with the snapshot to get a copy")]
    InUse(String),
    #[error(
        "session {0:?} was lost: the executor process that held it ended (its interpreter state is gone). Create a new session with create_session"
    )]
    Lost(String),
}

pub struct Session {
    pub id: String,
    pub owner: Owner,
    pub language: Language,
    /// The profile it was created under; its limits apply to every turn.
    pub profile: String,
    /// That profile's sha256 when the session was created.
    pub profile_sha256: String,
    pub created: SystemTime,
    /// The executor that holds it, and its directory's name there.
    pub conn: Arc<Conn>,
    pub dir: String,
    idle: Duration,
    lifetime: Duration,
    started: Instant,
    last_used: Mutex<Instant>,
    /// Held for the whole of a turn, so turns of one session run one at a time.
    pub state: tokio::sync::Mutex<SessionState>,
}

pub struct SessionState {
    /// The front's handle on the session's directory (to read artifacts; removed with the session).
    pub workspace: Arc<Workspace>,
    /// Turns run so far.
    pub turns: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("owner", &self.owner).field("language", &self.language).finish()
    }
}

impl Session {
    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn expiry(&self) -> Instant {
        let last = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        (last + self.idle).min(self.started + self.lifetime)
    }

    /// How long it has gone unused.
    pub fn idle_for(&self) -> Duration {
        self.last_used.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    /// When its lifetime ends, as wall-clock time.
    pub fn lifetime_ends(&self) -> SystemTime {
        SystemTime::now() + (self.started + self.lifetime).saturating_duration_since(Instant::now())
    }

    /// When the session will expire if left alone, as wall-clock time.
    pub fn expires_at(&self) -> SystemTime {
        let left = self.expiry().saturating_duration_since(Instant::now());
        SystemTime::now() + left
    }
}

/// The id a new session gets ([`Sessions::create_as`]).
pub enum NewId {
    Fresh,
    Given(String),
    Replace(Arc<Session>),
}

/// The session limits of a profile.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub max: usize,
    /// Most sessions one principal may hold under the profile.
    pub per_principal: usize,
    pub idle: Duration,
    pub lifetime: Duration,
    /// Slots held by suspended sessions (kept on disk, not in this table): the principal's, and
    /// all of the profile's.
    pub suspended: (usize, usize),
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create(
        &self,
        owner: Owner,
        language: Language,
        workspace: Workspace,
        placed: (Arc<Conn>, String),
        profile: (&str, &str),
        limits: SessionLimits,
    ) -> Result<Arc<Session>, SessionError> {
        self.create_as(NewId::Fresh, owner, language, workspace, placed, profile, limits)
    }

    /// [`Sessions::create`] under the id `id` says: a new one, a given one that must not be open
    /// (a session reopened from its snapshot), or that of a session it replaces (rolled back to a
    /// snapshot), which takes no new slot.
    #[allow(clippy::too_many_arguments)]
    pub fn create_as(
        &self,
        id: NewId,
        owner: Owner,
        language: Language,
        workspace: Workspace,
        (conn, dir): (Arc<Conn>, String),
        profile: (&str, &str),
        limits: SessionLimits,
    ) -> Result<Arc<Session>, SessionError> {
        let (profile, profile_sha256) = profile;
        if limits.max == 0 {
            return Err(SessionError::Disabled);
        }
        let mut map = self.map();
        let id = match id {
            NewId::Replace(old) => {
                if !map.get(&old.id).is_some_and(|s| Arc::ptr_eq(s, &old)) {
                    return Err(SessionError::Unknown(old.id.clone()));
                }
                old.id.clone()
            }
            fresh_or_given => {
                let mine = map.values().filter(|s| s.profile == profile && s.owner.principal == owner.principal).count();
                if mine + limits.suspended.0 >= limits.per_principal {
                    return Err(SessionError::PrincipalFull(limits.per_principal));
                }
                if map.values().filter(|s| s.profile == profile).count() + limits.suspended.1 >= limits.max {
                    return Err(SessionError::Full(limits.max));
                }
                match fresh_or_given {
                    NewId::Given(id) if map.contains_key(&id) => return Err(SessionError::InUse(id)),
                    NewId::Given(id) => id,
                    _ => format!("s-{}", uuid::Uuid::new_v4().simple()),
                }
            }
        };
        let now = Instant::now();
        let session = Arc::new(Session {
            id: id.clone(),
            owner,
            language,
            profile: profile.to_string(),
            profile_sha256: profile_sha256.to_string(),
            created: SystemTime::now(),
            conn,
            dir,
            idle: limits.idle,
            lifetime: limits.lifetime,
            started: now,
            last_used: Mutex::new(now),
            state: tokio::sync::Mutex::new(SessionState { workspace: Arc::new(workspace), turns: 0 }),
        });
        map.insert(id, session.clone());
        Ok(session)
    }

    /// The session `id` if `owner` owns it and it has not expired. It counts as used now: a
    /// session found for a call is never taken as idle (see [`Sessions::remove_exact`]).
    pub fn get(&self, id: &str, owner: &Owner) -> Result<Arc<Session>, SessionError> {
        let map = self.map();
        match map.get(id) {
            Some(s) if &s.owner == owner && s.expiry() > Instant::now() => {
                s.touch();
                Ok(s.clone())
            }
            _ => Err(SessionError::Unknown(id.chars().take(80).collect())),
        }
    }

    pub fn close(&self, id: &str, owner: &Owner) -> Result<Arc<Session>, SessionError> {
        let mut map = self.map();
        match map.get(id) {
            Some(s) if &s.owner == owner => Ok(map.remove(id).expect("present")),
            _ => Err(SessionError::Unknown(id.chars().take(80).collect())),
        }
    }

    /// Removes and returns sessions past their idle or lifetime limit.
    pub fn expire(&self) -> Vec<Arc<Session>> {
        let now = Instant::now();
        let mut map = self.map();
        let dead: Vec<String> = map.iter().filter(|(_, s)| s.expiry() <= now).map(|(k, _)| k.clone()).collect();
        dead.iter().filter_map(|k| map.remove(k)).collect()
    }

    /// Removes and returns the sessions `gone` picks (a reload ending sessions whose profile
    /// changed).
    pub fn remove_if(&self, gone: impl Fn(&Session) -> bool) -> Vec<Arc<Session>> {
        let mut map = self.map();
        let dead: Vec<String> = map.iter().filter(|(_, s)| gone(s)).map(|(k, _)| k.clone()).collect();
        dead.iter().filter_map(|k| map.remove(k)).collect()
    }

    /// Every session, for a look at each (idle ones to suspend).
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.map().values().cloned().collect()
    }

    /// Removes exactly `s` (not a session that replaced it under its id), and with `idle`, only
    /// if it has gone unused that long: checked under the table's lock, which [`Sessions::get`]
    /// touches sessions under, so a session a call has just found is never removed as idle.
    /// Whether it was removed.
    pub fn remove_exact(&self, s: &Arc<Session>, idle: Option<Duration>) -> bool {
        let mut map = self.map();
        if map.get(&s.id).is_some_and(|x| Arc::ptr_eq(x, s)) && idle.is_none_or(|d| s.idle_for() >= d) {
            map.remove(&s.id);
            return true;
        }
        false
    }

    /// Removes and returns every session (shutdown).
    pub fn drain(&self) -> Vec<Arc<Session>> {
        self.map().drain().map(|(_, s)| s).collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> Workspace {
        let parent = tempfile::tempdir().unwrap().keep();
        Workspace::create(&parent, "s-").unwrap()
    }

    fn placed() -> (Arc<Conn>, String) {
        (Conn::for_tests(), "s-dir".into())
    }

    fn owner(p: &str) -> Owner {
        Owner { principal: p.into(), connection: None }
    }

    fn limits(max: usize, idle: Duration) -> SessionLimits {
        SessionLimits { max, per_principal: max, idle, lifetime: Duration::from_secs(60), suspended: (0, 0) }
    }

    #[test]
    fn sessions_are_bound_to_their_owner_and_capped_per_profile() {
        let s = Sessions::new();
        let l = limits(1, Duration::from_secs(60));
        let a = s.create(owner("alice"), Language::Python, ws(), placed(), ("p", "h"), l).unwrap();
        assert!(s.get(&a.id, &owner("alice")).is_ok());
        assert_eq!(s.get(&a.id, &owner("bob")).unwrap_err(), SessionError::Unknown(a.id.clone()));
        assert_eq!(s.close(&a.id, &owner("bob")).unwrap_err(), SessionError::Unknown(a.id.clone()));
        assert_eq!(s.create(owner("bob"), Language::Python, ws(), placed(), ("p", "h"), l).unwrap_err(), SessionError::Full(1));
        assert!(s.create(owner("bob"), Language::Python, ws(), placed(), ("other", "h"), l).is_ok(), "the cap is per profile");
        s.close(&a.id, &owner("alice")).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn one_principal_cannot_take_every_session_slot() {
        let s = Sessions::new();
        let l =
            SessionLimits { max: 4, per_principal: 2, idle: Duration::from_secs(60), lifetime: Duration::from_secs(60), suspended: (0, 0) };
        for _ in 0..2 {
            s.create(owner("attacker"), Language::Python, ws(), placed(), ("p", "h"), l).unwrap();
        }
        assert_eq!(
            s.create(owner("attacker"), Language::Python, ws(), placed(), ("p", "h"), l).unwrap_err(),
            SessionError::PrincipalFull(2)
        );
        assert!(s.create(owner("victim"), Language::Python, ws(), placed(), ("p", "h"), l).is_ok());
        let gone = s.remove_if(|x| x.owner.principal == "attacker");
        assert_eq!(gone.len(), 2);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn idle_sessions_expire() {
        let s = Sessions::new();
        let a = s.create(owner("a"), Language::Javascript, ws(), placed(), ("p", "h"), limits(4, Duration::from_millis(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.get(&a.id, &owner("a")).is_err());
        assert_eq!(s.expire().len(), 1);
    }
}
