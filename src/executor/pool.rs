//! Guests prepared ahead for fresh calls: a few per kind of guest, made and readied on a thread
//! of their own after a call of that kind, so the next such call finds its interpreter
//! instantiated, its first turn run and the pages that turn writes already faulted in, and pays
//! only for its own code.
//!
//! A guest is fixed at birth in what WASI gives it: its environment and its preopened
//! directories. So the pool is kept per [`Key`] (runtime, environment, mounts: what a profile
//! group's calls share), and each prepared guest has a workspace of its own, made by this
//! process and empty. Claiming one swaps its workspace into the call's directory
//! ([`Workspace::exchange_into`]), then gives it what must be the caller's alone: a clock that
//! starts at the claim and new seeds for every random generator
//! ([`Sandbox::claim_prepared`]). Each guest serves one call and is never returned.
//!
//! Bounds: at most [`MAX_KEYS`] kinds are kept (the least recently claimed goes first), each
//! with at most the configured number of guests, and one thread at a time refills a kind. The
//! engine's instance pool is sized for them ([`crate::server`]).
//!
//! Owns: which prepared guests exist, claiming and refilling. Does not own: making or readying
//! a guest (the sandbox), or what a call may do (its [`ExecSpec`], decided by the front).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::GUEST_THREAD_STACK;
use crate::runtime::Language;
use crate::sandbox::{CancelHandle, ExecSpec, Guest, Mount, Sandbox, Workspace};

/// Most kinds of guest kept prepared at once.
pub const MAX_KEYS: usize = 4;

/// Prepared guests kept of each kind when none is configured.
pub const DEFAULT_PER_KEY: usize = 2;

/// Longest a guest may take to be prepared (its instantiation and first turn; a few ms).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every call a prepared guest may serve has in common.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    language: Language,
    env: Vec<(String, String)>,
    mounts: Vec<Mount>,
}

impl Key {
    fn of(spec: &ExecSpec) -> Key {
        Key { language: spec.language, env: spec.env.clone(), mounts: spec.mounts.clone() }
    }
}

/// A prepared guest and the workspace it was made in.
struct Prepared {
    guest: Guest,
    workspace: Workspace,
}

struct Kind {
    key: Key,
    ready: Vec<Prepared>,
    /// A thread is making guests of this kind.
    filling: bool,
}

/// The prepared guests of one executor.
#[derive(Clone)]
pub struct Pool {
    sandbox: Sandbox,
    /// Where prepared guests' workspaces are made: the executor's workspaces root.
    root: PathBuf,
    per_key: usize,
    /// Least recently claimed kind first.
    kinds: Arc<Mutex<Vec<Kind>>>,
}

impl Pool {
    /// A pool keeping `per_key` guests of each kind (0: none, every call starts its own guest),
    /// with workspaces under `root`.
    pub fn new(sandbox: Sandbox, root: &Path, per_key: usize) -> Pool {
        Pool { sandbox, root: root.to_path_buf(), per_key, kinds: Arc::new(Mutex::new(Vec::new())) }
    }

    fn kinds(&self) -> std::sync::MutexGuard<'_, Vec<Kind>> {
        self.kinds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A guest prepared for calls like `spec`, standing in `call_dir` (a call's directory with
    /// empty `workspace/` and `tmp/`): its workspace is now the call's. `None` when there is
    /// none, or when the one there holds more memory than `spec` allows; the caller then starts
    /// a guest as usual. Not yet readied: see [`Sandbox::claim_prepared`].
    pub fn take(&self, spec: &ExecSpec, call_dir: &Path) -> Option<(Guest, Workspace)> {
        let key = Key::of(spec);
        let prepared = {
            let mut kinds = self.kinds();
            let at = kinds.iter().position(|k| k.key == key)?;
            let prepared = kinds[at].ready.pop()?;
            let kind = kinds.remove(at);
            kinds.push(kind);
            prepared
        };
        // Dropped outside the lock: a guest and its workspace take a while to tear down.
        if prepared.guest.memory_bytes() > spec.limits.memory_bytes {
            return None;
        }
        match prepared.workspace.exchange_into(call_dir) {
            Ok(workspace) => Some((prepared.guest, workspace)),
            Err((_, e)) => {
                tracing::warn!(error = %e, "a prepared guest's workspace could not take the call's place; starting a guest instead");
                None
            }
        }
    }

    /// Makes guests for calls like `spec` until there are as many as the pool keeps of that
    /// kind, on a thread of their own; returns at once. Does nothing if a thread is already at
    /// it. A new kind past [`MAX_KEYS`] displaces the least recently claimed one.
    pub fn refill(&self, spec: &ExecSpec) {
        if self.per_key == 0 {
            return;
        }
        let key = Key::of(spec);
        let displaced = {
            let mut kinds = self.kinds();
            match kinds.iter().position(|k| k.key == key) {
                Some(at) => {
                    let kind = &mut kinds[at];
                    if kind.filling || kind.ready.len() >= self.per_key {
                        return;
                    }
                    kind.filling = true;
                    None
                }
                None => {
                    let displaced = (kinds.len() >= MAX_KEYS).then(|| kinds.remove(0));
                    kinds.push(Kind { key: key.clone(), ready: Vec::new(), filling: true });
                    displaced
                }
            }
        };
        drop(displaced);
        let pool = self.clone();
        let mut spec = spec.clone();
        spec.code = String::new();
        spec.stdin = Vec::new();
        spec.limits.timeout = PREPARE_TIMEOUT;
        let thread_key = key.clone();
        let spawned = std::thread::Builder::new()
            .name("warden-pool".into())
            .stack_size(GUEST_THREAD_STACK)
            .spawn(move || pool.fill(&thread_key, &spec));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a thread to prepare guests");
            self.done_filling(&key);
        }
    }

    /// The filling thread's body: one guest at a time until the kind is full or gone, or a
    /// guest fails to be made (the next claim tries again).
    fn fill(&self, key: &Key, spec: &ExecSpec) {
        loop {
            let made = Workspace::create(&self.root, ".pool-")
                .map_err(|e| e.to_string())
                .and_then(|ws| self.sandbox.prepare_guest(spec, &ws, &CancelHandle::new()).map(|g| (g, ws)).map_err(|e| e.to_string()));
            let (guest, workspace) = match made {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, language = %key.language, "preparing a guest failed");
                    break;
                }
            };
            let mut kinds = self.kinds();
            let Some(kind) = kinds.iter_mut().find(|k| k.key == *key) else { break };
            kind.ready.push(Prepared { guest, workspace });
            if kind.ready.len() >= self.per_key {
                break;
            }
        }
        self.done_filling(key);
    }

    fn done_filling(&self, key: &Key) {
        if let Some(kind) = self.kinds().iter_mut().find(|k| k.key == *key) {
            kind.filling = false;
        }
    }

    /// Prepared guests held now, of every kind.
    pub fn len(&self) -> usize {
        self.kinds().iter().map(|k| k.ready.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
