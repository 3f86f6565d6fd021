//! Files calls produced, kept readable through `resources/read` for a retention window.
//!
//! A one-shot call's workspace is kept (not copied) when the call produced artifacts, until the
//! policy's `artifacts.retention_seconds` pass or the store's cap evicts it. Only the files
//! listed as that call's artifacts are served, and only to the caller that made the call.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sandbox::{Artifact, Workspace};
use crate::session::Owner;

/// Most calls whose artifacts are kept at once; the oldest go first.
pub const MAX_RETAINED_CALLS: usize = 256;

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

    /// Keeps a call's workspace so its artifacts stay readable. Nothing is kept when retention is
    /// zero or there is nothing to serve.
    pub fn retain(&self, call_id: &str, owner: &Owner, workspace: Arc<Workspace>, artifacts: &[Artifact], retention: Duration) {
        if retention.is_zero() || artifacts.is_empty() {
            return;
        }
        let mut entries = self.entries();
        while entries.len() >= MAX_RETAINED_CALLS {
            entries.pop_front();
        }
        entries.push_back(Retained {
            call_id: call_id.to_string(),
            owner: owner.clone(),
            workspace,
            artifacts: artifacts.to_vec(),
            expires: Instant::now() + retention,
        });
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

    #[test]
    fn uris_round_trip() {
        assert_eq!(parse_uri(&call_uri("c1", "a/b.png")), Some(ArtifactRef::Call { call_id: "c1", path: "a/b.png" }));
        assert_eq!(parse_uri(&session_uri("s1", "x")), Some(ArtifactRef::Session { session_id: "s1", path: "x" }));
        assert_eq!(parse_uri("warden://calls/c1/"), None);
        assert_eq!(parse_uri("file:///etc/passwd"), None);
    }
}
