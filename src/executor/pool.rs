//! Guests prepared ahead for fresh calls: a few per kind of guest, made and readied on a thread
//! of their own while the executor has nothing to run, so the next call of that kind finds its
//! interpreter instantiated, its first turn run and the pages that turn writes already faulted
//! in, and pays only for claiming it and for its own code.
//!
//! Guests are made only once no job has run for [`IDLE_BEFORE_FILL`]: making one maps and writes
//! memory in this process, and doing that beside a running guest slowed the guest more than the
//! pool saved (measured on 2 cores: a claim took 2.4-3.6 ms with a refill beside it, against
//! 0.6-1.2 ms alone, and back-to-back calls over stdio got slower). So a client calling
//! back to back drains the pool and is served as without one, while calls with any pause
//! between them (an agent thinking) find a guest ready. A job that starts while a guest is
//! being made waits for nothing; the refill stops after that guest.
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
//! with at most the configured number of guests, and one thread at a time makes them. The
//! engine's instance pool is sized for them ([`crate::service::executors`]).
//!
//! Owns: which prepared guests exist, claiming and refilling. Does not own: making or readying
//! a guest (the sandbox), or what a call may do (its [`ExecSpec`], decided by the front).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::GUEST_THREAD_STACK;
use crate::runtime::Language;
use crate::sandbox::{CancelHandle, ExecSpec, Guest, Mount, Sandbox, Workspace};

/// Most kinds of guest kept prepared at once.
pub const MAX_KEYS: usize = 4;

/// Prepared guests kept of each kind when none is configured.
pub const DEFAULT_PER_KEY: usize = 2;

/// Longest a guest may take to be prepared (its instantiation and first turn; a few ms).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a kind whose guest could not be made waits before it is tried again (unless a call
/// raises its memory limit first).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// How long the executor must have been idle before guests are made: longer than the pause
/// between back-to-back calls over stdio (1-3 ms), shorter than any thinking client's.
pub const IDLE_BEFORE_FILL: Duration = Duration::from_millis(10);

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
    /// What guests of this kind are made with: the latest call's spec, its code and input
    /// dropped, with the largest memory limit seen.
    spec: ExecSpec,
    ready: Vec<Prepared>,
    /// The memory limit a guest of this kind last failed to be made under, and when: it is
    /// not tried again for [`RETRY_AFTER`] unless a call raised the limit. Otherwise a kind no
    /// guest can be made for (a call allowed too little memory for the runtime to start)
    /// would be retried at every idle moment, each try a guest's start in CPU and a warning in
    /// the log.
    failed: Option<(u64, Instant)>,
}

impl Kind {
    /// Whether the pool should make a guest of this kind now.
    fn wants(&self, per_key: usize, now: Instant) -> bool {
        let held_back =
            self.failed.is_some_and(|(memory, at)| memory == self.spec.limits.memory_bytes && now.duration_since(at) < RETRY_AFTER);
        self.ready.len() < per_key && !held_back
    }
}

/// The prepared guests of one executor.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    sandbox: Sandbox,
    /// Where prepared guests' workspaces are made: the executor's workspaces root.
    root: PathBuf,
    per_key: usize,
    /// Least recently claimed kind first.
    kinds: Mutex<Vec<Kind>>,
    /// Jobs running now ([`Pool::busy`]); guests are made only while there are none.
    busy: AtomicUsize,
    /// Jobs started so far, to tell whether one came and went during a wait.
    started: AtomicUsize,
    /// A thread is making guests.
    filling: AtomicBool,
    /// Guests that failed to be made, so far.
    failures: AtomicUsize,
}

/// Held while a job runs (see [`Pool::busy`]).
pub struct Busy(Pool);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.inner.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.fill_when_idle();
        }
    }
}

impl Pool {
    /// A pool keeping `per_key` guests of each kind (0: none, every call starts its own guest),
    /// with workspaces under `root`.
    pub fn new(sandbox: Sandbox, root: &Path, per_key: usize) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                sandbox,
                root: root.to_path_buf(),
                per_key,
                kinds: Mutex::new(Vec::new()),
                busy: AtomicUsize::new(0),
                started: AtomicUsize::new(0),
                filling: AtomicBool::new(false),
                failures: AtomicUsize::new(0),
            }),
        }
    }

    fn kinds(&self) -> std::sync::MutexGuard<'_, Vec<Kind>> {
        self.inner.kinds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a job running until the guard is dropped; when the last one ends, the pool is
    /// refilled.
    pub fn busy(&self) -> Busy {
        self.inner.started.fetch_add(1, Ordering::SeqCst);
        self.inner.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// A guest prepared for calls like `spec`, standing in `call_dir` (a call's directory with
    /// empty `workspace/` and `tmp/`): its workspace is now the call's. `None` when there is
    /// none, or when the one there holds more memory than `spec` allows; the caller then starts
    /// a guest as usual. Either way calls like `spec` are now a kind the pool keeps (a new kind
    /// past [`MAX_KEYS`] displaces the least recently claimed one). Not yet readied: see
    /// [`Sandbox::claim_prepared`].
    pub fn take(&self, spec: &ExecSpec, call_dir: &Path) -> Option<(Guest, Workspace)> {
        if self.inner.per_key == 0 {
            return None;
        }
        let key = Key::of(spec);
        let mut template = spec.clone();
        template.code = String::new();
        template.stdin = Vec::new();
        template.limits.timeout = PREPARE_TIMEOUT;
        let (prepared, displaced) = {
            let mut kinds = self.kinds();
            let (mut kind, displaced) = match kinds.iter().position(|k| k.key == key) {
                Some(at) => (kinds.remove(at), None),
                None => {
                    let displaced = (kinds.len() >= MAX_KEYS).then(|| kinds.remove(0));
                    (Kind { key, spec: template.clone(), ready: Vec::new(), failed: None }, displaced)
                }
            };
            // Guests are made for the most memory a recent call of the kind was allowed: one
            // that holds more than a later call allows is not given to it (below), while one made
            // under a caller's lowered limit might not start at all.
            template.limits.memory_bytes = template.limits.memory_bytes.max(kind.spec.limits.memory_bytes);
            kind.spec = template;
            let prepared = kind.ready.pop();
            kinds.push(kind);
            (prepared, displaced)
        };
        // Dropped outside the lock: guests and their workspaces take a while to tear down.
        drop(displaced);
        let prepared = prepared?;
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

    /// Starts the thread that makes guests, unless one runs or a job does.
    fn fill_when_idle(&self) {
        let now = Instant::now();
        let wanted = self.kinds().iter().any(|k| k.wants(self.inner.per_key, now));
        if !wanted || self.inner.busy.load(Ordering::SeqCst) > 0 || self.inner.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = self.clone();
        let spawned = std::thread::Builder::new().name("warden-pool".into()).stack_size(GUEST_THREAD_STACK).spawn(move || {
            pool.fill();
            pool.inner.filling.store(false, Ordering::SeqCst);
            // A job may have ended while the last guest was made, and found the flag still set.
            pool.fill_when_idle();
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a thread to prepare guests");
            self.inner.filling.store(false, Ordering::SeqCst);
        }
    }

    /// Whether no job ran for [`IDLE_BEFORE_FILL`] from now.
    fn stays_idle(&self) -> bool {
        let before = self.inner.started.load(Ordering::SeqCst);
        std::thread::sleep(IDLE_BEFORE_FILL);
        self.inner.busy.load(Ordering::SeqCst) == 0 && self.inner.started.load(Ordering::SeqCst) == before
    }

    /// The filling thread's body: one guest at a time, each after a quiet [`IDLE_BEFORE_FILL`],
    /// for the most recently claimed kind that lacks one, until none lacks one, a job starts,
    /// or a guest fails to be made (its kind is held back for [`RETRY_AFTER`]).
    fn fill(&self) {
        while self.stays_idle() {
            let now = Instant::now();
            let Some((key, spec)) =
                self.kinds().iter().rev().find(|k| k.wants(self.inner.per_key, now)).map(|k| (k.key.clone(), k.spec.clone()))
            else {
                return;
            };
            let made = Workspace::create(&self.inner.root, ".pool-").map_err(|e| e.to_string()).and_then(|ws| {
                self.inner.sandbox.prepare_guest(&spec, &ws, &CancelHandle::new()).map(|g| (g, ws)).map_err(|e| e.to_string())
            });
            let (guest, workspace) = match made {
                Ok(m) => m,
                Err(e) => {
                    self.inner.failures.fetch_add(1, Ordering::SeqCst);
                    if let Some(kind) = self.kinds().iter_mut().find(|k| k.key == key) {
                        kind.failed = Some((spec.limits.memory_bytes, Instant::now()));
                    }
                    tracing::warn!(error = %e, language = %key.language, retry_after_s = RETRY_AFTER.as_secs(), "preparing a guest failed");
                    return;
                }
            };
            let extra = {
                let mut kinds = self.kinds();
                match kinds.iter_mut().find(|k| k.key == key && k.ready.len() < self.inner.per_key) {
                    Some(kind) => {
                        kind.ready.push(Prepared { guest, workspace });
                        None
                    }
                    // Its kind was displaced meanwhile.
                    None => Some(Prepared { guest, workspace }),
                }
            };
            drop(extra);
        }
    }

    /// Prepared guests held now, of every kind.
    pub fn len(&self) -> usize {
        self.kinds().iter().map(|k| k.ready.len()).sum()
    }

    /// Guests that failed to be made since the pool was created.
    pub fn failures(&self) -> usize {
        self.inner.failures.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
