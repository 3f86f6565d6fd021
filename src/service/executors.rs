//! The front's executors: the processes that run guests, their placement, and their
//! replacement when one dies.
//!
//! Profiles with identical filesystem grants form a group ([`GroupKey`]); each group gets its
//! own executors (by default one per core), each confined to that group's mounts, so a guest of
//! one profile can never reach another profile's files even if it took over its executor. A
//! fresh call goes to the least loaded live executor of its group; a session stays on the one
//! that holds it.
//!
//! Every executor is treated as possibly taken over by a guest: its replies are read as
//! untrusted input (their shape by serde, their content by [`finish`]), and a malformed frame,
//! a reply for a door it was not given, or silence past a call's deadline ends it like a
//! crash. A dead executor fails only its own calls (outcome `crashed`), its sessions are lost,
//! and it is replaced after a backoff.
//!
//! Owns launching (through a [`Launcher`]: the spawner when serving), the channel's front end,
//! placement and restarts. Does not own admission, audit or what a call means (see
//! [`super::calls`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::ExecError;
use crate::api::{OutputChunk, OutputSink};
use crate::channel::proto::{Failure, Finished, Init, Job, OUTPUT_CHUNK_BYTES, PhaseTiming, Probe, Ready, Reply, Request, VERSION};
use crate::channel::{self};
use crate::metrics::Metrics;
use crate::policy::{HardeningMode, Policy};
use crate::runtime::Language;
use crate::sandbox::{Artifact, CancelHandle, Limits, MAX_ARTIFACTS, Outcome, PhaseTime, RunReport};

/// How long a new executor may take to load and confine itself.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a call waits for a live executor of its group (one being replaced, say).
const PLACE_WAIT: Duration = Duration::from_secs(10);
/// How long past its deadline a call's executor may stay silent before it is killed.
const SILENCE_GRACE: Duration = Duration::from_secs(5);
/// Replacement backoff: the first restart is quick, repeated ones slow down to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A replacement that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Starts executor processes: the spawner when serving.
pub trait Launcher: Send + Sync {
    /// Starts one `warden executor`; returns its pid and the front's end of its channel.
    fn launch(&self, label: &str) -> std::io::Result<(u32, OwnedFd)>;
    /// Kills an executor this launcher started (it broke the protocol or went silent).
    fn kill(&self, pid: u32);
    /// How executor `pid` ended ("exited with status 3", "killed by signal 9 (SIGKILL)"), once
    /// it has been reaped; `None` while it runs, or when this launcher cannot tell. Each end is
    /// told once.
    fn how_ended(&self, pid: u32) -> Option<String>;
}

/// What every executor is told at start, besides its directory and group.
#[derive(Clone, Debug)]
pub struct Settings {
    pub home: PathBuf,
    pub tools: Vec<PathBuf>,
    pub languages: Vec<Language>,
    pub max_instances: u32,
    pub hardening: HardeningMode,
    /// Executors per group.
    pub per_group: usize,
    /// Guests each executor keeps prepared for fresh calls, of each kind.
    pub guest_pool: usize,
}

/// The filesystem grants a group of profiles shares: the host side of their mounts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct GroupKey {
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
}

impl GroupKey {
    pub fn of(policy: &Policy) -> GroupKey {
        let (mut read_only, mut read_write) = (Vec::new(), Vec::new());
        for m in &policy.mounts {
            if m.writable { read_write.push(m.host.clone()) } else { read_only.push(m.host.clone()) }
        }
        for v in [&mut read_only, &mut read_write] {
            v.sort();
            v.dedup();
        }
        GroupKey { read_only, read_write }
    }
}

/// How a run ended, as far as the front can tell.
pub enum Ran {
    /// Its report or failure, and when the run was sent (the executor's phase timings count
    /// from about then).
    Done(Result<Box<Finished>, Failure>, Instant),
    /// The executor died or was killed before answering.
    Crashed(String),
}

/// Answers a guest's code-mode requests on the front (see [`crate::tools::door`]).
pub trait DoorHandler: Send {
    /// The answer frame to one request frame, given the time left to the calling guest.
    fn answer<'a>(
        &'a mut self,
        remaining: Duration,
        request: &'a [u8],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send + 'a>>;
}

/// A run the front waits on: where its events go, and how much output it may still stream.
struct Running {
    events: UnboundedSender<Event>,
    /// `None` for a run that did not ask to stream.
    stream: Option<Streamed>,
}

/// A streaming run's output so far against its caps, checked as each chunk arrives (so a
/// hostile executor cannot queue more than the caps while the run waits on something else).
struct Streamed {
    caps: [usize; 2],
    sent: [usize; 2],
}

enum Event {
    Door { request: Vec<u8>, remaining: Duration },
    Output(OutputChunk),
    Done(Result<Box<Finished>, Failure>),
    Crashed(String),
}

/// What `/healthz` and `warden doctor` show of one executor.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExecutorView {
    pub slot: usize,
    pub group: GroupKey,
    /// `None` while it is being replaced.
    pub pid: Option<u32>,
    /// Deaths since it last ran stably.
    pub restarts: u64,
    pub inflight: usize,
    pub hardening: Option<crate::harden::Report>,
    /// From inside: every thread has `Seccomp: 2` and `NoNewPrivs: 1`.
    pub all_threads_filtered: Option<bool>,
    /// From inside: making a TCP socket failed.
    pub socket_refused: Option<bool>,
    pub opens: Vec<ProbedPath>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbedPath {
    pub path: PathBuf,
    pub opened: bool,
    pub error: Option<String>,
}

/// One executor slot: a place in a group, its directory, and the process serving it now.
struct Slot {
    index: usize,
    key: GroupKey,
    dir: PathBuf,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Deaths in a row without a stable replacement, for the backoff.
    failures: AtomicU64,
    /// No profile uses this slot's group any more (a reload): its executor is stopped once idle
    /// and not replaced.
    retired: std::sync::atomic::AtomicBool,
}

/// A live executor process and the front's end of its channel.
pub struct Conn {
    pub pid: u32,
    pub slot: usize,
    dir: PathBuf,
    out: UnboundedSender<Request>,
    runs: Mutex<HashMap<u64, Running>>,
    probes: Mutex<HashMap<u64, oneshot::Sender<Probe>>>,
    inflight: AtomicUsize,
    dead: CancellationToken,
    started: Instant,
    pub ready: Ready,
    launcher: Arc<dyn Launcher>,
}

pub struct Executors {
    launcher: Arc<dyn Launcher>,
    settings: Settings,
    root: PathBuf,
    groups: Mutex<Vec<(GroupKey, Vec<Arc<Slot>>)>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    /// Where placement starts looking, so ties go round-robin rather than always to the first.
    next_pick: AtomicUsize,
    /// Held while picking and counting a placement, so two calls arriving together never both
    /// see the same executor idle.
    picking: Mutex<()>,
    closing: CancellationToken,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Executors {
    /// Starts `settings.per_group` executors for each of `groups` and waits until all are ready.
    pub async fn start(
        launcher: Arc<dyn Launcher>,
        settings: Settings,
        root: PathBuf,
        groups: Vec<GroupKey>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Executors>, String> {
        let pool = Arc::new(Executors {
            launcher,
            settings,
            root,
            groups: Mutex::new(Vec::new()),
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            next_pick: AtomicUsize::new(0),
            picking: Mutex::new(()),
            closing: CancellationToken::new(),
            metrics,
        });
        for key in groups {
            for slot in pool.add_group(&key) {
                let conn = pool.connect(&slot).await?;
                *lock(&slot.conn) = Some(conn);
            }
        }
        Ok(pool)
    }

    pub fn languages(&self) -> &[Language] {
        &self.settings.languages
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every live executor.
    pub fn live(&self) -> Vec<Arc<Conn>> {
        lock(&self.groups).iter().flat_map(|(_, slots)| slots.iter().filter_map(|s| s.live())).collect()
    }

    /// What the first executor to start reported (tools it loaded, its confinement).
    pub fn any_ready(&self) -> Option<Arc<Conn>> {
        self.live().into_iter().next()
    }

    fn add_group(&self, key: &GroupKey) -> Vec<Arc<Slot>> {
        let mut groups = lock(&self.groups);
        if let Some((_, slots)) = groups.iter().find(|(k, _)| k == key) {
            return slots.clone();
        }
        let slots: Vec<Arc<Slot>> = (0..self.settings.per_group.max(1))
            .map(|_| {
                let index = self.next_slot.fetch_add(1, Ordering::Relaxed);
                Arc::new(Slot {
                    index,
                    key: key.clone(),
                    dir: self.root.join(format!("x{index}")),
                    conn: Mutex::new(None),
                    failures: AtomicU64::new(0),
                    retired: Default::default(),
                })
            })
            .collect();
        groups.push((key.clone(), slots.clone()));
        slots
    }

    /// The least loaded live executor of `key`'s group, starting the group if it is new (a
    /// reload brought a profile with other mounts), waiting a little for one being replaced.
    /// The call is counted on the executor from here (not only once its job is sent), so the
    /// next placement already sees it.
    pub async fn place(self: &Arc<Self>, key: &GroupKey) -> Result<Busy, ExecError> {
        let known = lock(&self.groups).iter().any(|(k, _)| k == key);
        if !known {
            for slot in self.add_group(key) {
                self.clone().replace(slot, Duration::ZERO);
            }
        }
        let give_up = Instant::now() + PLACE_WAIT;
        loop {
            let slots = self.add_group(key);
            let live: Vec<Arc<Conn>> = slots.iter().filter_map(|s| s.live()).collect();
            if !live.is_empty() {
                let _picking = lock(&self.picking);
                let start = self.next_pick.fetch_add(1, Ordering::Relaxed);
                let n = live.len();
                let pick = (0..n).map(|i| &live[(start + i) % n]).min_by_key(|c| c.inflight()).expect("not empty");
                return Ok(pick.busy());
            }
            if Instant::now() >= give_up || self.closing.is_cancelled() {
                return Err(ExecError::Internal(
                    "no executor process is available for this profile right now (they are being restarted); retry in a few seconds".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts one executor for `slot` and waits until it is ready.
    async fn connect(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<Arc<Conn>, String> {
        // mkdir with the mode, no chmod: this also runs after the front's lockdown (a
        // replacement), whose filter has no chmod. The umask can only narrow 0700.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&slot.dir)
                .map_err(|e| format!("creating {}: {e}", slot.dir.display()))?;
        }
        // Whatever a previous executor of this slot left is the front's to clean (its calls and
        // sessions were failed when it died).
        if let Ok(entries) = std::fs::read_dir(&slot.dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let launcher = self.launcher.clone();
        let label = format!("x{}", slot.index);
        let (pid, fd) = tokio::task::spawn_blocking(move || launcher.launch(&label))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("starting an executor: {e}"))?;
        let stream = channel::from_fd(fd).map_err(|e| e.to_string())?;
        let (mut tx, mut rx) = channel::split(stream);
        let init = Init {
            version: VERSION,
            home: self.settings.home.clone(),
            workspaces: slot.dir.clone(),
            tools: self.settings.tools.clone(),
            languages: self.settings.languages.clone(),
            // Room for the guests kept prepared, besides the running ones.
            max_instances: self.settings.max_instances.saturating_add((crate::executor::pool::MAX_KEYS * self.settings.guest_pool) as u32),
            guest_pool: self.settings.guest_pool as u32,
            hardening: self.settings.hardening,
            read_only: slot.key.read_only.clone(),
            read_write: slot.key.read_write.clone(),
        };
        let fail = |why: String| {
            self.launcher.kill(pid);
            why
        };
        tx.send(&Request::Init(Box::new(init))).await.map_err(|e| fail(format!("sending init: {e}")))?;
        let ready = match tokio::time::timeout(READY_TIMEOUT, rx.recv::<Reply>()).await {
            Ok(Ok(Some(Reply::Ready(r)))) if r.version == VERSION && r.pid == pid => r,
            Ok(Ok(Some(Reply::NotStarted { error }))) => {
                // Its own words, so bounded: a message for an operator, not a payload.
                let error: String = error.chars().take(2048).collect();
                return Err(fail(format!("the executor could not start: {error}")));
            }
            Ok(Ok(Some(_))) => return Err(fail("the executor's first reply was not a valid ready".into())),
            Ok(Ok(None)) => return Err(fail("the executor exited while starting (see its log above)".into())),
            Ok(Err(e)) => return Err(fail(format!("the executor's first reply: {e}"))),
            Err(_) => return Err(fail("the executor did not become ready in time".into())),
        };
        let (out, mut queue) = unbounded_channel::<Request>();
        let conn = Arc::new(Conn {
            pid,
            slot: slot.index,
            dir: slot.dir.clone(),
            out,
            runs: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            inflight: AtomicUsize::new(0),
            dead: CancellationToken::new(),
            started: Instant::now(),
            ready: *ready,
            launcher: self.launcher.clone(),
        });
        let writer_conn = conn.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = queue.recv() => match m {
                        Some(m) => if let Err(e) = tx.send(&m).await {
                            writer_conn.die(&format!("writing to it failed: {e}"));
                            break;
                        },
                        None => break,
                    },
                    _ = writer_conn.dead.cancelled() => break,
                }
            }
        });
        let (pool, reader_conn, slot) = (self.clone(), conn.clone(), slot.clone());
        tokio::spawn(async move {
            let why = loop {
                tokio::select! {
                    r = rx.recv::<Reply>() => match r {
                        Ok(Some(reply)) => if let Err(why) = reader_conn.dispatch(reply) { break why },
                        Ok(None) => break "it exited".to_string(),
                        Err(e) => break format!("it sent {e}"),
                    },
                    _ = reader_conn.dead.cancelled() => break "it was stopped".to_string(),
                }
            };
            reader_conn.die(&why);
            if pool.closing.is_cancelled() || slot.retired.load(Ordering::Relaxed) {
                return;
            }
            pool.metrics.executor_restarts.inc();
            if reader_conn.started.elapsed() >= STABLE_AFTER {
                slot.failures.store(0, Ordering::Relaxed);
            }
            let n = slot.failures.fetch_add(1, Ordering::Relaxed);
            let delay = BACKOFF_FIRST.saturating_mul(1 << n.min(16)).min(BACKOFF_CAP);
            let (launcher, index) = (pool.launcher.clone(), slot.index);
            pool.replace(slot, delay);
            // Logged once the process is reaped (the channel closes a moment before), so the
            // operator reads the signal or status; the replacement does not wait for it.
            let exit = how_ended(&launcher, reader_conn.pid).await.unwrap_or_else(|| "not reaped yet".into());
            tracing::error!(executor = index, pid = reader_conn.pid, reason = %why, exit = %exit, "an executor ended; its calls failed and it is being replaced");
        });
        Ok(conn)
    }

    /// Replaces `slot`'s executor after `delay`, retrying with backoff until one starts.
    fn replace(self: Arc<Self>, slot: Arc<Slot>, delay: Duration) {
        tokio::spawn(async move {
            let mut delay = delay;
            {
                let mut current = lock(&slot.conn);
                if current.as_ref().is_some_and(|c| c.dead.is_cancelled()) {
                    *current = None;
                }
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.closing.cancelled() => return,
                }
                match self.connect(&slot).await {
                    Ok(conn) => {
                        if self.closing.is_cancelled() {
                            drop(conn);
                            return;
                        }
                        tracing::info!(executor = slot.index, pid = conn.pid, "executor replaced");
                        *lock(&slot.conn) = Some(conn);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(executor = slot.index, error = %e, "could not start an executor; retrying");
                        delay = delay.saturating_mul(2).clamp(BACKOFF_FIRST, BACKOFF_CAP);
                    }
                }
            }
        });
    }

    /// A fresh id for a run or probe, unique across executors.
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `job` on `conn`: see [`Conn::run`].
    pub async fn run(
        &self,
        conn: &Busy,
        job: Job,
        cancel: &CancelHandle,
        timeout: Duration,
        door: Option<&mut dyn DoorHandler>,
        output: Option<&OutputSink>,
    ) -> Ran {
        conn.run(self.id(), job, cancel, timeout, door, output).await
    }

    /// Asks `conn` to report its confinement, trying to open each of `paths`.
    pub async fn probe(&self, conn: &Conn, paths: Vec<PathBuf>) -> Option<Probe> {
        let id = self.id();
        let (tx, rx) = oneshot::channel();
        lock(&conn.probes).insert(id, tx);
        conn.out.send(Request::Probe { id, paths }).ok()?;
        tokio::time::timeout(Duration::from_secs(10), rx).await.ok()?.ok()
    }

    /// The operator's view of every executor: its process, group, load and confinement, with a
    /// live probe of `paths` from inside it (a path of its own group's mounts should open; the
    /// front's files and other groups' mounts must not).
    pub async fn describe(&self, paths: &[PathBuf]) -> Vec<ExecutorView> {
        let slots: Vec<Arc<Slot>> = lock(&self.groups).iter().flat_map(|(_, s)| s.iter().cloned()).collect();
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            let restarts = slot.failures.load(Ordering::Relaxed);
            let Some(conn) = slot.live() else {
                out.push(ExecutorView { slot: slot.index, group: slot.key.clone(), pid: None, restarts, ..Default::default() });
                continue;
            };
            let probe = self.probe(&conn, paths.to_vec()).await;
            out.push(ExecutorView {
                slot: slot.index,
                group: slot.key.clone(),
                pid: Some(conn.pid),
                restarts,
                inflight: conn.inflight(),
                hardening: Some(conn.ready.hardening.clone()),
                all_threads_filtered: probe.as_ref().map(|p| !p.threads.is_empty() && p.threads.iter().all(|&(_, s, n)| s == 2 && n == 1)),
                socket_refused: probe.as_ref().map(|p| p.socket.is_some()),
                opens: probe
                    .map(|p| p.opens.into_iter().map(|(path, err)| ProbedPath { path, opened: err.is_none(), error: err }).collect())
                    .unwrap_or_default(),
            });
        }
        out
    }

    /// Stops the executors of groups none of `in_use` needs (profiles changed by a reload):
    /// they take no new calls at once, and each is stopped when its last call ends. A group
    /// that is needed again later is started afresh by [`Executors::place`].
    pub fn retire_unused(&self, in_use: &[GroupKey]) {
        let retired: Vec<Arc<Slot>> = {
            let mut groups = lock(&self.groups);
            let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut *groups).into_iter().partition(|(k, _)| in_use.contains(k));
            *groups = keep;
            gone.into_iter().flat_map(|(_, slots)| slots).collect()
        };
        for slot in retired {
            slot.retired.store(true, Ordering::Relaxed);
            let closing = self.closing.clone();
            tokio::spawn(async move {
                let conn = lock(&slot.conn).take();
                if let Some(conn) = conn {
                    while conn.inflight() > 0 && !conn.dead.is_cancelled() && !closing.is_cancelled() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    tracing::info!(executor = slot.index, pid = conn.pid, "executor retired: no profile uses its mounts any more");
                    conn.die("it was retired");
                }
                let _ = std::fs::remove_dir_all(&slot.dir);
            });
        }
    }

    /// Stops every executor: their channels close, and each exits on its own.
    pub fn shutdown(&self) {
        self.closing.cancel();
        for (_, slots) in lock(&self.groups).iter() {
            for s in slots {
                if let Some(c) = lock(&s.conn).take() {
                    c.dead.cancel();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Slot {
    fn live(&self) -> Option<Arc<Conn>> {
        lock(&self.conn).clone().filter(|c| !c.dead.is_cancelled())
    }
}

impl Conn {
    /// Where this executor's call directories go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_dead(&self) -> bool {
        self.dead.is_cancelled()
    }

    /// Tells the executor a session ended (nothing to tell a dead one).
    pub fn end_session(&self, session: &str) {
        if !self.dead.is_cancelled() {
            let _ = self.out.send(Request::EndSession { session: session.to_string() });
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts one call on this executor until the returned guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Ends this executor because it lied about a run: like a crash.
    pub fn kill(&self, why: &str) {
        tracing::error!(pid = self.pid, reason = %why, "an executor broke the protocol; killing it");
        self.die(why);
    }

    /// Ends this executor: every call on it fails as crashed, and the process is killed (it may
    /// be alive and hostile, having broken the protocol).
    fn die(&self, why: &str) {
        if self.dead.is_cancelled() && lock(&self.runs).is_empty() {
            return;
        }
        self.dead.cancel();
        for (_, run) in lock(&self.runs).drain() {
            let _ = run.events.send(Event::Crashed(why.to_string()));
        }
        lock(&self.probes).clear();
        self.launcher.kill(self.pid);
    }

    /// Routes one reply to the call waiting for it. An `Err` is a protocol violation.
    fn dispatch(&self, reply: Reply) -> Result<(), String> {
        match reply {
            Reply::Ready(_) => Err("it sent a second ready".into()),
            Reply::NotStarted { .. } => Err("it said it had not started, after it had".into()),
            Reply::Door { id, request, remaining_ms } => {
                let request = B64.decode(request).map_err(|_| "it sent a door request that is not base64".to_string())?;
                let runs = lock(&self.runs);
                let run = runs.get(&id).ok_or("it sent a door request for no running call")?;
                let _ = run.events.send(Event::Door { request, remaining: Duration::from_millis(remaining_ms) });
                Ok(())
            }
            Reply::Output { id, stdout, stderr } => {
                let mut runs = lock(&self.runs);
                // Like `Done`, output may trail a call the front gave up on: dropped.
                let Some(run) = runs.get_mut(&id) else { return Ok(()) };
                let chunk = OutputChunk { stdout, stderr };
                check_chunk(&chunk, run.stream.as_mut())?;
                let _ = run.events.send(Event::Output(chunk));
                Ok(())
            }
            Reply::Done { id, result } => {
                // A call the front already gave up on (cancelled past its grace) has no entry.
                if let Some(run) = lock(&self.runs).remove(&id) {
                    let _ = run.events.send(Event::Done(result));
                }
                Ok(())
            }
            Reply::Probed { id, probe } => {
                if let Some(tx) = lock(&self.probes).remove(&id) {
                    let _ = tx.send(probe);
                }
                Ok(())
            }
        }
    }

    /// Sends `job`, answers its door requests with `door`, passes its output on to `output`
    /// (if given) as it comes, relays a cancel, and waits for its end: done, or crashed if the
    /// executor dies, breaks the protocol, or stays silent past `timeout` plus a grace (then it
    /// is killed).
    async fn run(
        &self,
        id: u64,
        job: Job,
        cancel: &CancelHandle,
        timeout: Duration,
        mut door: Option<&mut dyn DoorHandler>,
        output: Option<&OutputSink>,
    ) -> Ran {
        let (tx, mut rx) = unbounded_channel();
        let stream = output.map(|_| Streamed { caps: job.streamed_caps(), sent: [0, 0] });
        lock(&self.runs).insert(id, Running { events: tx, stream });
        let run = Request::Run { id, job: Box::new(job), stream: output.is_some() };
        let sent = Instant::now();
        if self.dead.is_cancelled() || self.out.send(run).is_err() {
            lock(&self.runs).remove(&id);
            return Ran::Crashed("the executor had already ended".into());
        }
        let silent_until = tokio::time::Instant::now() + timeout + SILENCE_GRACE;
        let mut cancel_sent = false;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Event::Done(r)) => return Ran::Done(r, sent),
                    Some(Event::Crashed(why)) => return Ran::Crashed(why),
                    None => return Ran::Crashed("the executor ended".into()),
                    Some(Event::Door { request, remaining }) => {
                        let Some(d) = door.as_deref_mut() else {
                            self.die("it relayed a door request for a call that has no door");
                            return Ran::Crashed("the executor broke the protocol".into());
                        };
                        let answer = d.answer(remaining, &request).await;
                        let _ = self.out.send(Request::DoorAnswer { id, answer: B64.encode(answer) });
                    }
                    Some(Event::Output(chunk)) => {
                        // Checked on arrival (`dispatch`): only a streaming run gets any.
                        if let Some(sink) = output {
                            let _ = sink.send(chunk);
                        }
                    }
                },
                _ = cancel.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    let _ = self.out.send(Request::Cancel { id });
                }
                _ = tokio::time::sleep_until(silent_until) => {
                    lock(&self.runs).remove(&id);
                    self.die("it did not finish a call within the call's deadline plus a grace");
                    return Ran::Crashed("the executor stopped answering".into());
                }
            }
        }
    }
}

/// Holds an executor's output chunk to what the protocol allows: only for a run that asked to
/// stream, each stream at most [`OUTPUT_CHUNK_BYTES`] a chunk, and all chunks within the run's
/// caps.
fn check_chunk(chunk: &OutputChunk, stream: Option<&mut Streamed>) -> Result<(), String> {
    let Some(stream) = stream else {
        return Err("it streamed output for a call that did not ask for it".into());
    };
    for (i, text) in [&chunk.stdout, &chunk.stderr].into_iter().enumerate() {
        if text.len() > OUTPUT_CHUNK_BYTES {
            return Err(format!("it sent an output chunk of {} bytes, over the {OUTPUT_CHUNK_BYTES} allowed", text.len()));
        }
        stream.sent[i] += text.len();
        if stream.sent[i] > stream.caps[i] {
            return Err(format!("it streamed {} bytes of output, over the call's cap of {}", stream.sent[i], stream.caps[i]));
        }
    }
    Ok(())
}

/// How `pid` ended, asking `launcher` for up to half a second.
async fn how_ended(launcher: &Arc<dyn Launcher>, pid: u32) -> Option<String> {
    for _ in 0..20 {
        let l = launcher.clone();
        if let Ok(Some(how)) = tokio::task::spawn_blocking(move || l.how_ended(pid)).await {
            return Some(how);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Starts executors by exec from this very process, which must then never confine itself (its
/// seccomp filter kills it on `execve`): `warden exec`. `serve` uses the spawner
/// ([`crate::spawner`]), so that executors can be replaced after its lockdown.
pub struct DirectLauncher {
    exe: PathBuf,
    children: Mutex<HashMap<u32, std::process::Child>>,
    /// How the killed ones ended, until asked (bounded: [`MAX_ENDED`]).
    ended: Mutex<HashMap<u32, String>>,
}

/// Ends remembered for [`Launcher::how_ended`] and not yet asked for.
const MAX_ENDED: usize = 64;

impl DirectLauncher {
    pub fn new(exe: PathBuf) -> DirectLauncher {
        DirectLauncher { exe, children: Mutex::new(HashMap::new()), ended: Mutex::new(HashMap::new()) }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    crate::spawner::describe(status.code(), status.signal())
}

impl Launcher for DirectLauncher {
    fn launch(&self, label: &str) -> std::io::Result<(u32, OwnedFd)> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (front, child_end) = std::os::unix::net::UnixStream::pair()?;
        let fd = child_end.as_raw_fd();
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.args(["executor", "--channel-fd", "3", "--label", label])
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| k == "WARDEN_LOG" || k == crate::cli::LOG_FORMAT_ENV))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .arg0(format!("warden-executor-{label}"));
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    // dup2 onto itself keeps close-on-exec set; clear it instead.
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        let mut children = lock(&self.children);
        // Reap the ones that ended, so none stays a zombie.
        children.retain(|_, c| !matches!(c.try_wait(), Ok(Some(_))));
        children.insert(pid, child);
        Ok((pid, front.into()))
    }

    fn kill(&self, pid: u32) {
        if let Some(mut c) = lock(&self.children).remove(&pid) {
            let _ = c.kill();
            // The status it had if it ended before this kill; SIGKILL otherwise.
            if let Ok(status) = c.wait() {
                let mut ended = lock(&self.ended);
                if ended.len() >= MAX_ENDED {
                    ended.clear();
                }
                ended.insert(pid, describe_status(status));
            }
        }
    }

    fn how_ended(&self, pid: u32) -> Option<String> {
        if let Some(how) = lock(&self.ended).remove(&pid) {
            return Some(how);
        }
        let mut children = lock(&self.children);
        let status = children.get_mut(&pid)?.try_wait().ok()??;
        children.remove(&pid);
        Some(describe_status(status))
    }
}

#[cfg(test)]
impl Conn {
    /// A connection to no process, for unit tests of what holds one.
    pub fn for_tests() -> Arc<Conn> {
        struct Nobody;
        impl Launcher for Nobody {
            fn launch(&self, _: &str) -> std::io::Result<(u32, OwnedFd)> {
                Err(std::io::Error::other("no processes in unit tests"))
            }
            fn kill(&self, _: u32) {}
            fn how_ended(&self, _: u32) -> Option<String> {
                None
            }
        }
        Arc::new(Conn {
            pid: 0,
            slot: 0,
            dir: PathBuf::from("/nonexistent"),
            out: unbounded_channel().0,
            runs: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            inflight: AtomicUsize::new(0),
            dead: CancellationToken::new(),
            started: Instant::now(),
            ready: Ready { version: VERSION, pid: 0, hardening: crate::harden::Report::off(), tools: Vec::new(), refused: Vec::new() },
            launcher: Arc::new(Nobody),
        })
    }
}

/// Decrements an in-flight count when dropped.
/// One call counted on an executor (its load, for placement) for as long as this lives: from
/// placement, through staging its inputs, to its end.
pub struct Busy(Arc<Conn>);

impl Busy {
    pub fn conn(&self) -> &Arc<Conn> {
        &self.0
    }
}

impl std::ops::Deref for Busy {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Turns an executor's account of a run into a report, checking everything it claims against
/// what the call allowed and, for its phase timings, against when the front sent the run
/// (`sent`) and got the report (now). `Err` means the executor lied, which the caller treats as
/// a crash.
pub fn finish(f: Finished, limits: &Limits, sent: Instant) -> Result<RunReport, String> {
    let phases = place_phases(&f.phases, sent, Instant::now())?;
    // Lossy UTF-8 can triple a byte; anything beyond that was not captured under the cap.
    let cap = |n: usize| n.saturating_mul(3).saturating_add(256);
    if f.stdout.len() > cap(limits.stdout_bytes) || f.stderr.len() > cap(limits.stderr_bytes) {
        return Err("it reported more output than the call's cap".into());
    }
    if f.outcome == Outcome::Crashed {
        return Err("it reported an outcome only the front may give".into());
    }
    if f.message.as_ref().is_some_and(|m| m.len() > 8192) {
        return Err("it reported an oversized message".into());
    }
    if f.artifacts.len() > MAX_ARTIFACTS {
        return Err("it reported more artifacts than allowed".into());
    }
    let mut artifacts = Vec::with_capacity(f.artifacts.len());
    for (path, size, sha256) in f.artifacts {
        if crate::sandbox::workspace::validate_rel_path(&path).is_err() || path.starts_with("/workspace/") {
            return Err("it reported an artifact path outside the workspace".into());
        }
        if size > limits.workspace_bytes {
            return Err("it reported an artifact larger than the workspace allows".into());
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err("it reported a malformed digest".into());
        }
        let mime = crate::sandbox::workspace::mime_for(&path);
        artifacts.push(Artifact { path, size, sha256, mime, uri: String::new() });
    }
    Ok(RunReport {
        outcome: f.outcome,
        exit_code: f.exit_code,
        stdout: f.stdout,
        stderr: f.stderr,
        truncated: f.truncated,
        duration_ms: f.duration_ms,
        fuel_used: f.fuel_used.min(limits.fuel),
        artifacts,
        message: f.message,
        ended_session: f.ended_session,
        phases,
    })
}

/// Slack for rounding between the executor's microseconds and the front's clock (both read the
/// same monotonic clock).
const PHASE_SLACK: Duration = Duration::from_millis(1);

/// The executor's phase timings as times on the front's clock: each phase at most once, each
/// within the time between sending the run and receiving its report.
fn place_phases(phases: &[PhaseTiming], sent: Instant, received: Instant) -> Result<Vec<PhaseTime>, String> {
    let window = received.saturating_duration_since(sent) + PHASE_SLACK;
    let mut out: Vec<PhaseTime> = Vec::with_capacity(phases.len());
    for p in phases {
        if out.iter().any(|o| o.phase == p.phase) {
            return Err("it reported a run phase twice".into());
        }
        let (offset, duration) = (Duration::from_micros(p.offset_us), Duration::from_micros(p.duration_us));
        if offset.checked_add(duration).is_none_or(|end| end > window) {
            return Err("it reported a run phase outside the time the run took".into());
        }
        let start = sent + offset;
        out.push(PhaseTime { phase: p.phase, start, end: start + duration });
    }
    Ok(out)
}

/// The report of a call whose executor died under it.
pub fn crashed(why: &str, started: Instant) -> RunReport {
    let message = format!(
        "the executor process running this call ended before the call did ({why}); its output is lost. Retry the call; a session on that executor is gone, so create a new one"
    );
    RunReport::not_run(Outcome::Crashed, None, Some(message), started)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Phase;

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(1),
            memory_bytes: 1 << 20,
            fuel: 1000,
            stdout_bytes: 10,
            stderr_bytes: 10,
            workspace_bytes: 100,
            workspace_files: 10,
        }
    }

    fn ok() -> Finished {
        Finished {
            outcome: Outcome::Ok,
            exit_code: Some(0),
            stdout: "hi".into(),
            stderr: String::new(),
            truncated: false,
            duration_ms: 1,
            fuel_used: 5,
            artifacts: vec![("out/a.png".into(), 10, "a".repeat(64))],
            message: None,
            ended_session: false,
            phases: vec![PhaseTiming { phase: Phase::GuestRun, offset_us: 0, duration_us: 10 }],
        }
    }

    #[test]
    fn an_executors_claims_are_checked_against_the_call() {
        let sent = Instant::now() - Duration::from_millis(50);
        let r = finish(ok(), &limits(), sent).unwrap();
        assert_eq!(r.phases, vec![PhaseTime { phase: Phase::GuestRun, start: sent, end: sent + Duration::from_micros(10) }]);
        assert_eq!(r.artifacts[0].mime, "image/png", "the front names the type itself");
        let lie = |f: fn(&mut Finished)| {
            let mut x = ok();
            f(&mut x);
            finish(x, &limits(), sent).unwrap_err()
        };
        lie(|f| f.stdout = "x".repeat(1000));
        lie(|f| f.outcome = Outcome::Crashed);
        lie(|f| f.artifacts[0].0 = "../../etc/passwd".into());
        lie(|f| f.artifacts[0].0 = "/etc/passwd".into());
        lie(|f| f.artifacts[0].1 = 1 << 40);
        lie(|f| f.artifacts[0].2 = "zz".into());
        lie(|f| f.artifacts = vec![("a".into(), 1, "a".repeat(64)); MAX_ARTIFACTS + 1]);
        // Phases must fit between sending the run and its report, once each.
        lie(|f| f.phases[0].duration_us = 60_000_000);
        lie(|f| f.phases[0].offset_us = u64::MAX);
        lie(|f| f.phases.push(f.phases[0]));
        let mut greedy = ok();
        greedy.fuel_used = u64::MAX;
        assert_eq!(finish(greedy, &limits(), sent).unwrap().fuel_used, 1000);
    }

    #[test]
    fn streamed_output_is_held_to_the_request_and_the_caps() {
        let chunk = |o: usize, e: usize| OutputChunk { stdout: "o".repeat(o), stderr: "e".repeat(e) };
        assert!(check_chunk(&chunk(1, 0), None).unwrap_err().contains("did not ask"), "only a streaming run may stream");
        let mut s = Streamed { caps: [20_000, 100], sent: [0, 0] };
        check_chunk(&chunk(OUTPUT_CHUNK_BYTES, 60), Some(&mut s)).unwrap();
        let e = check_chunk(&chunk(OUTPUT_CHUNK_BYTES + 1, 0), Some(&mut s)).unwrap_err();
        assert!(e.contains("chunk of"), "{e}");
        check_chunk(&chunk(20_000 - OUTPUT_CHUNK_BYTES, 40), Some(&mut s)).unwrap();
        let e = check_chunk(&chunk(0, 1), Some(&mut s)).unwrap_err();
        assert!(e.contains("over the call's cap of 100"), "{e}");
    }
}
