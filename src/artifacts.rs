//! Files calls produced, kept readable through `resources/read` for a retention window.
//!
//! A one-shot call's workspace is kept (not copied) when the call produced artifacts, until the
//! policy's `artifacts.retention_seconds` pass, or until the same principal's newer calls push it
//! out of that principal's share ([`MAX_RETAINED_PER_PRINCIPAL`]). One principal never evicts
//! another's: when the whole store is full ([`MAX_RETAINED_CALLS`]), a new call's artifacts are
//! simply not kept, and its result says so. Only the files listed as that call's artifacts are
//! served, and only to the caller that made the call.
//!
//! What is kept is bounded on disk too: each retained workspace holds at most its call's
//! workspace quota (held at the point of use, see `sandbox::quota`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sandbox::{Artifact, Workspace};
use crate::session::Owner;

/// Most calls whose artifacts are kept at once, server-wide.
pub const MAX_RETAINED_CALLS: usize = 256;
/// Most calls whose artifacts are kept for one principal; its oldest go first.
pub const MAX_RETAINED_PER_PRINCIPAL: usize = 32;

struct Retained {
    call_id: String,
    owner: Owner,
    workspace: Arc<Workspace>,
    artifacts: Vec<Artifact>,
    expires: Instant,
}

#[derive(Default)]
pub struct ArtifactStore {
    entries: Mutex<VecDeque<Retained>>,
}

/// Where an artifact URI points.
#[derive(Debug, PartialEq, Eq)]
pub enum ArtifactRef<'a> {
    Call { call_id: &'a str, path: &'a str },
    Session { session_id: &'a str, path: &'a str },
}

pub const URI_PREFIX: &str = "warden://";

pub fn call_uri(call_id: &str, path: &str) -> String {
    format!("{URI_PREFIX}calls/{call_id}/{path}")
}

pub fn session_uri(session_id: &str, path: &str) -> String {
    format!("{URI_PREFIX}sessions/{session_id}/{path}")
}

pub fn parse_uri(uri: &str) -> Option<ArtifactRef<'_>> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let (kind, rest) = rest.split_once('/')?;
    let (id, path) = rest.split_once('/')?;
    if id.is_empty() || path.is_empty() {
        return None;
    }
    match kind {
        "calls" => Some(ArtifactRef::Call { call_id: id, path }),
        "sessions" => Some(ArtifactRef::Session { session_id: id, path }),
        _ => None,
    }
}

impl ArtifactStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, VecDeque<Retained>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a call's workspace so its artifacts stay readable, making room in the owner's own
    /// share if needed. Nothing is kept when retention is zero or there is nothing to serve;
    /// returns false when the store is full of other principals' artifacts, so nothing was kept.
    pub fn retain(&self, call_id: &str, owner: &Owner, workspace: Arc<Workspace>, artifacts: &[Artifact], retention: Duration) -> bool {
        if retention.is_zero() || artifacts.is_empty() {
            return true;
        }
        let now = Instant::now();
        let mut entries = self.entries();
        entries.retain(|e| e.expires > now);
        let mine = entries.iter().filter(|e| e.owner.principal == owner.principal).count();
        if mine >= MAX_RETAINED_PER_PRINCIPAL {
            if let Some(oldest) = entries.iter().position(|e| e.owner.principal == owner.principal) {
                entries.remove(oldest);
            }
        } else if entries.len() >= MAX_RETAINED_CALLS {
            return false;
        }
        entries.push_back(Retained {
            call_id: call_id.to_string(),
            owner: owner.clone(),
            workspace,
            artifacts: artifacts.to_vec(),
            expires: now + retention,
        });
        true
    }

    /// The workspace and listing of a retained call's artifact, for its owner only.
    pub fn find(&self, call_id: &str, path: &str, owner: &Owner) -> Option<(Arc<Workspace>, Artifact)> {
        let now = Instant::now();
        let entries = self.entries();
        let e = entries.iter().find(|e| e.call_id == call_id && &e.owner == owner && e.expires > now)?;
        let a = e.artifacts.iter().find(|a| a.path == path)?;
        Some((e.workspace.clone(), a.clone()))
    }

    /// Artifacts `owner` can still read.
    pub fn list(&self, owner: &Owner) -> Vec<Artifact> {
        let now = Instant::now();
        self.entries().iter().filter(|e| &e.owner == owner && e.expires > now).flat_map(|e| e.artifacts.clone()).collect()
    }

    /// Drops expired entries (their workspaces are removed with them).
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut entries = self.entries();
        let before = entries.len();
        entries.retain(|e| e.expires > now);
        before - entries.len()
    }

    pub fn clear(&self) {
        self.entries().clear();
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(p: &str) -> Owner {
        Owner { principal: p.into(), connection: None }
    }

    fn artifact() -> Artifact {
        Artifact { path: "a.txt".into(), size: 1, sha256: String::new(), mime: "text/plain".into(), uri: String::new() }
    }

    #[test]
    fn a_principal_evicts_only_its_own_artifacts() {
        let parent = tempfile::tempdir().unwrap();
        let ws = Arc::new(Workspace::create(parent.path(), "t-").unwrap());
        let store = ArtifactStore::new();
        let keep = Duration::from_secs(60);
        assert!(store.retain("victim-call", &owner("victim"), ws.clone(), &[artifact()], keep));
        for i in 0..MAX_RETAINED_PER_PRINCIPAL * 3 {
            assert!(store.retain(&format!("a{i}"), &owner("attacker"), ws.clone(), &[artifact()], keep));
        }
        assert!(store.find("victim-call", "a.txt", &owner("victim")).is_some(), "the victim's artifact survives");
        assert_eq!(store.len(), MAX_RETAINED_PER_PRINCIPAL + 1);
        assert!(store.find("a0", "a.txt", &owner("attacker")).is_none(), "the attacker's oldest went first");
        // Fill the store with many principals: a newcomer is refused, nobody is evicted.
        for p in 0..MAX_RETAINED_CALLS {
            store.retain(&format!("p{p}"), &owner(&format!("p{p}")), ws.clone(), &[artifact()], keep);
        }
        assert_eq!(store.len(), MAX_RETAINED_CALLS);
        assert!(!store.retain("late", &owner("newcomer"), ws.clone(), &[artifact()], keep));
        assert!(store.find("victim-call", "a.txt", &owner("victim")).is_some());
    }

    #[test]
    fn uris_round_trip() {
        assert_eq!(parse_uri(&call_uri("c1", "a/b.png")), Some(ArtifactRef::Call { call_id: "c1", path: "a/b.png" }));
        assert_eq!(parse_uri(&session_uri("s1", "x")), Some(ArtifactRef::Session { session_id: "s1", path: "x" }));
        assert_eq!(parse_uri("warden://calls/c1/"), None);
        assert_eq!(parse_uri("file:///etc/passwd"), None);
    }
}
