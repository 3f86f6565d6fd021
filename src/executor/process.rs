//! The executor process: `warden executor --channel-fd N`, started by the spawner with one end
//! of a socketpair as fd N. It holds the engine, the compiled runtimes and tools, and the
//! guests; the front holds everything else.
//!
//! Startup, in this order (each step depends on the previous one):
//! 1. raise its own `oom_score_adj`, so the kernel kills an executor before the front;
//! 2. read [`Init`] with blocking I/O, still single-threaded;
//! 3. build the engine, load and link the runtimes, compile the tools (the only time it maps
//!    code executable);
//! 4. Landlock: only the runtimes, the module cache and tool packages (read-only), its own
//!    workspaces root and its profile group's mounts;
//! 5. the tokio runtime and the epoch ticker, then seccomp on every thread: the server's
//!    allowlist without the HTTP group, so no `socket`, `connect` or `accept`, and no `execve`;
//! 6. [`Reply::Ready`] with the confinement report, then serve until the front closes the
//!    channel, at which point every running guest is stopped and the process exits.
//!
//! If any step fails, the last frame is [`Reply::NotStarted`] with why.
//!
//! Owns the executor's side of the protocol: running jobs, cancelling them, relaying a guest's
//! code-mode requests to the front and its answers back, and the sessions it holds. Does not
//! own admission, audit, or what a door request means: the front decides those.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::stream::{self, Streamer};
use super::{Executor, LiveSession, RunError};
use crate::channel::proto::{
    Failure, Finished, GrantSpec, IMAGE_FILE, Init, Job, PhaseTiming, Probe, Ready, Reply, Request, Spec, VERSION,
};
use crate::channel::{self, Receiver, Sender, inputs};
use crate::engine::{EngineSettings, build_engine, spawn_epoch_ticker};
use crate::harden::landlock::{LandlockReport, LandlockStatus};
use crate::harden::seccomp::SeccompStatus;
use crate::harden::{HardenError, Plan, Report};
use crate::home::Home;
use crate::policy::HardeningMode;
use crate::runtime::cache::ModuleCache;
use crate::sandbox::control::Deadline;
use crate::sandbox::{CancelHandle, Door, ExecSpec, RunReport, Sandbox, Workspace};
use crate::tools::{Grant, ToolRegistry};

/// How often a guest waiting on the front for a door answer checks its own deadline.
const DOOR_POLL: Duration = Duration::from_millis(20);

/// The process's body; returns when the front closes the channel.
pub fn main(fd: OwnedFd) -> anyhow::Result<()> {
    // Raising one's own score needs no privilege; failing to is not fatal (no /proc).
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    let stream = std::os::unix::net::UnixStream::from(fd);
    // A second descriptor of the channel, kept to tell the front why setup failed (the first
    // goes to the runtime during setup). The front learns the reason from the channel, not
    // from this process's stderr, which it may not see and which it may cut short by killing
    // an executor whose channel ended.
    let mut last_word = stream.try_clone().ok();
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = start_and_serve(stream, serving.clone());
    if let (Err(e), Some(s)) = (&result, last_word.as_mut())
        && !serving.load(std::sync::atomic::Ordering::SeqCst)
    {
        let _ = channel::send_blocking(s, &Reply::NotStarted { error: format!("{e:#}") });
    }
    result
}

/// Setup (steps 2 to 5 above), then serving until the front closes the channel. `serving` is
/// set once setup is over and the ready frame is about to go.
fn start_and_serve(mut stream: std::os::unix::net::UnixStream, serving: Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> {
    let init = match channel::recv_blocking::<Request>(&mut stream).context("reading init from the front")? {
        Request::Init(init) => init,
        _ => bail!("the front's first frame was not init"),
    };
    if init.version != VERSION {
        bail!("the front speaks channel version {}, this executor {VERSION}", init.version);
    }
    let home = Home::at(&init.home);
    let engine = build_engine(EngineSettings { max_instances: init.max_instances, parallel_compilation: false })
        .map_err(|e| anyhow::anyhow!("building the engine: {e:#}"))?;
    let sandbox = Sandbox::load(&home, &engine, &init.languages)?;
    let tools = ToolRegistry::load(&init.tools, Some((&engine, &ModuleCache::new(&home, &engine))));
    // Forks read the page map to find what a guest wrote; Landlock would refuse opening it later.
    crate::sandbox::image::prepare();
    let plan = plan(&home, &init);
    let landlock = if init.hardening == HardeningMode::Off {
        LandlockReport { status: LandlockStatus::Off, ..Default::default() }
    } else {
        crate::harden::assert_single_threaded()?;
        crate::harden::landlock::restrict(&plan)?
    };
    if init.hardening == HardeningMode::Enforce && landlock.status != LandlockStatus::Full {
        return Err(HardenError::NotEnforced(format!("Landlock is {} ({})", landlock.status, landlock.gaps.join("; "))).into());
    }
    // One thread: guests run on their own threads (`on_guest_thread_async`), so the runtime only
    // moves frames and files; a single thread spares each call the cross-thread wake-ups of a
    // work-stealing pool (measured: about 0.1 ms of the channel's cost per fresh call).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _ticker = spawn_epoch_ticker(&engine)?;
    rt.block_on(async move {
        let stream = channel::from_fd(OwnedFd::from(stream))?;
        let seccomp = crate::harden::seccomp::install(&plan)?;
        if init.hardening == HardeningMode::Enforce && (seccomp.status != SeccompStatus::Enforced || !seccomp.all_threads_filtered) {
            return Err(HardenError::NotEnforced(format!("seccomp is {}", seccomp.status)).into());
        }
        let ready = Ready {
            version: VERSION,
            pid: std::process::id(),
            hardening: Report { mode: init.hardening, landlock, seccomp },
            tools: tools.all().map(|t| (t.name().to_string(), t.manifest.wasm_sha256.clone())).collect(),
            refused: tools.refusals.iter().map(|r| (r.path.clone(), r.reason.clone())).collect(),
        };
        let state = Arc::new(State {
            executor: Executor::with_pool(sandbox, &init.workspaces, init.guest_pool as usize),
            tools,
            root: init.workspaces.clone(),
            runs: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = channel::split(stream);
        tracing::info!(pid = ready.pid, tools = ready.tools.len(), "executor ready");
        serving.store(true, std::sync::atomic::Ordering::SeqCst);
        serve(state, tx, rx, ready).await
    })
}

/// What the executor may reach: its runtimes, cache and tools read-only, its own workspaces and
/// its group's mounts. Nothing of the front's: not the audit log, the auth files, the profiles.
fn plan(home: &Home, init: &Init) -> Plan {
    let mut read_only = vec![home.runtimes(), home.cache(), crate::harden::own_tasks_dir()];
    read_only.extend(init.tools.iter().filter_map(|t| t.canonicalize().ok()));
    read_only.extend(init.read_only.iter().cloned());
    let mut read_write = vec![init.workspaces.clone()];
    read_write.extend(init.read_write.iter().cloned());
    for v in [&mut read_only, &mut read_write] {
        v.sort();
        v.dedup();
    }
    Plan { mode: init.hardening, read_only, read_write, removable: Vec::new(), listener_fd: None, collector: None }
}

struct State {
    executor: Executor,
    tools: ToolRegistry,
    /// This executor's workspaces root: every directory a job names lies directly in it.
    root: PathBuf,
    runs: Mutex<HashMap<u64, RunSlot>>,
    sessions: Mutex<HashMap<String, Arc<SessionSlot>>>,
}

/// A running job: how to stop it and where its door answers go.
struct RunSlot {
    cancel: CancelHandle,
    door: std::sync::mpsc::Sender<Vec<u8>>,
}

struct SessionSlot {
    dir: String,
    live: tokio::sync::Mutex<Option<LiveSession>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(state: Arc<State>, mut tx: Sender, mut rx: Receiver, ready: Ready) -> anyhow::Result<()> {
    tx.send(&Reply::Ready(Box::new(ready))).await?;
    let (out, mut queue) = unbounded_channel::<Reply>();
    let writer = tokio::spawn(async move {
        while let Some(m) = queue.recv().await {
            if let Err(e) = tx.send(&m).await {
                tracing::error!(error = %e, "the channel to the front failed");
                break;
            }
        }
    });
    loop {
        let request = match rx.recv::<Request>().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "the front sent a bad frame; stopping");
                break;
            }
        };
        match request {
            Request::Init(_) => {
                tracing::error!("a second init; stopping");
                break;
            }
            Request::Run { id, job, stream } => {
                let (state, out) = (state.clone(), out.clone());
                tokio::spawn(async move {
                    let result = state.run(id, *job, stream, &out).await;
                    let _ = out.send(Reply::Done { id, result });
                });
            }
            Request::Cancel { id } => {
                if let Some(r) = lock(&state.runs).get(&id) {
                    r.cancel.cancel();
                }
            }
            Request::DoorAnswer { id, answer } => {
                let answer = B64.decode(answer).unwrap_or_default();
                if let Some(r) = lock(&state.runs).get(&id) {
                    let _ = r.door.send(answer);
                }
            }
            Request::EndSession { session } => {
                lock(&state.sessions).remove(&session);
            }
            Request::Probe { id, paths } => {
                let _ = out.send(Reply::Probed { id, probe: probe(paths) });
            }
        }
    }
    // The front is gone or broke the protocol: nobody is left to report to.
    for r in lock(&state.runs).values() {
        r.cancel.cancel();
    }
    drop(out);
    writer.abort();
    Ok(())
}

impl State {
    /// Runs `job`; with `stream`, its output goes to the front as it is written (see
    /// [`super::stream`]), all of it before the `Done` this returns.
    async fn run(&self, id: u64, job: Job, stream: bool, out: &UnboundedSender<Reply>) -> Result<Box<Finished>, Failure> {
        let taken_up = std::time::Instant::now();
        let cancel = CancelHandle::new();
        let (door_tx, door_rx) = std::sync::mpsc::channel();
        lock(&self.runs).insert(id, RunSlot { cancel: cancel.clone(), door: door_tx });
        // Guests are prepared ahead only while no job runs (see `super::pool`).
        let busy = self.executor.busy();
        let streamer = stream.then(|| Streamer::new(id, out.clone(), cancel.output().clone(), job.streamed_caps()));
        let work = self.execute(id, job, &cancel, door_rx, out);
        let result = match streamer {
            None => work.await,
            Some(mut streamer) => {
                tokio::pin!(work);
                let mut tick = tokio::time::interval(stream::EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let result = loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = tick.tick() => streamer.tick(),
                    }
                };
                if let Ok(report) = &result {
                    streamer.finish(report);
                }
                result
            }
        };
        lock(&self.runs).remove(&id);
        drop(busy);
        result.map(|r| Box::new(finished(r, taken_up))).map_err(|e| match e {
            RunError::Rejected(m) => Failure::Rejected(m),
            RunError::Internal(m) => Failure::Internal(m),
        })
    }

    async fn execute(
        &self,
        id: u64,
        job: Job,
        cancel: &CancelHandle,
        door_rx: std::sync::mpsc::Receiver<Vec<u8>>,
        out: &UnboundedSender<Reply>,
    ) -> Result<RunReport, RunError> {
        let door = |spec: &Spec| -> Option<Box<dyn Door>> {
            spec.door.then(|| Box::new(RemoteDoor { id, out: out.clone(), answers: door_rx }) as Box<dyn Door>)
        };
        match job {
            Job::Fresh { dir, spec, inputs } => {
                let path = self.dir(&dir)?;
                let (stdin, files) = inputs::take(&path, &inputs).map_err(internal)?;
                let exec = exec_spec(&spec, stdin);
                let door = door(&spec);
                self.executor.run_fresh_in(&path, &exec, &files, cancel, door).await
            }
            Job::Turn { session, dir, spec, inputs } => {
                let path = self.dir(&dir)?;
                let slot = {
                    let mut sessions = lock(&self.sessions);
                    let slot = sessions
                        .entry(session.clone())
                        .or_insert_with(|| Arc::new(SessionSlot { dir: dir.clone(), live: tokio::sync::Mutex::new(None) }));
                    slot.clone()
                };
                if slot.dir != dir {
                    return Err(RunError::Internal(format!("session {session} lives in another directory")));
                }
                let mut live = slot.live.lock().await;
                let (stdin, files) = inputs::take(&path, &inputs).map_err(internal)?;
                let exec = exec_spec(&spec, stdin);
                // A session's first turn here may claim a guest prepared ahead: its workspace
                // becomes the session's.
                let mut prepared = None;
                if live.is_none() {
                    let ws = match self.executor.take_prepared(&exec, &path) {
                        Some((guest, mut ws)) => {
                            ws.release_origin();
                            prepared = Some(guest);
                            ws
                        }
                        None => Workspace::adopt_empty(&path).map_err(internal)?,
                    };
                    *live = Some(LiveSession { workspace: Arc::new(ws), guest: None, turns: 0 });
                }
                let door = door(&spec);
                self.executor.session_turn(live.as_mut().expect("set above"), &exec, &files, cancel, door, prepared).await
            }
            Job::Fork { session, dir, from, from_dir, spec } => {
                let path = self.dir(&dir)?;
                let source = lock(&self.sessions).get(&from).cloned();
                if source.as_ref().is_some_and(|s| s.dir != from_dir) {
                    return Err(RunError::Internal(format!("session {from} lives in another directory")));
                }
                let ws = Arc::new(Workspace::adopt_empty(&path).map_err(internal)?);
                let slot = Arc::new(SessionSlot { dir: dir.clone(), live: tokio::sync::Mutex::new(None) });
                {
                    let mut sessions = lock(&self.sessions);
                    if sessions.contains_key(&session) {
                        return Err(RunError::Internal(format!("session {session} exists already")));
                    }
                    sessions.insert(session.clone(), slot.clone());
                }
                // The fork's interpreter is made while the source's is held, so no turn of the
                // source runs meanwhile (the front holds the source's turn lock as well).
                let mut fork = slot.live.lock().await;
                let exec = exec_spec(&spec, Vec::new());
                let result = match source {
                    Some(source) => {
                        let mut live = source.live.lock().await;
                        self.executor.fork_session(live.as_mut(), ws, &exec, cancel).await
                    }
                    // The source has had no turn here yet: nothing but its (empty) files to copy.
                    None => self.executor.fork_session(None, ws, &exec, cancel).await,
                };
                match result {
                    Ok((live, report)) => {
                        *fork = Some(live);
                        Ok(report)
                    }
                    Err(e) => {
                        drop(fork);
                        lock(&self.sessions).remove(&session);
                        Err(e)
                    }
                }
            }
            Job::Snapshot { session, dir, spec } => {
                let path = self.dir(&dir)?;
                let started = std::time::Instant::now();
                let slot = lock(&self.sessions).get(&session).cloned();
                if slot.as_ref().is_some_and(|s| s.dir != dir) {
                    return Err(RunError::Internal(format!("session {session} lives in another directory")));
                }
                let exec = exec_spec(&spec, Vec::new());
                let encoded = match slot {
                    Some(slot) => match slot.live.lock().await.as_mut() {
                        Some(live) => self.executor.capture_session(live, &exec, cancel).await?,
                        None => None,
                    },
                    // No turn has run here yet: there is no interpreter to capture.
                    None => None,
                };
                let message = match &encoded {
                    Some(bytes) => {
                        let mut file = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(path.join(IMAGE_FILE))
                            .map_err(internal)?;
                        file.write_all(bytes).map_err(internal)?;
                        format!("the interpreter's image: {} bytes", bytes.len())
                    }
                    None => "no live interpreter: files only".to_string(),
                };
                let mut report = RunReport::not_run(crate::sandbox::Outcome::Ok, Some(0), Some(message), started);
                report.ended_session = encoded.is_none();
                Ok(report)
            }
            Job::Restore { session, dir, spec, inputs, image } => {
                let path = self.dir(&dir)?;
                let (_, files) = inputs::take(&path, &inputs).map_err(internal)?;
                let exec = exec_spec(&spec, Vec::new());
                let image = match image {
                    true => Some(read_image(&path.join(IMAGE_FILE), exec.limits.memory_bytes).map_err(internal)?),
                    false => None,
                };
                let ws = Arc::new(Workspace::adopt_empty(&path).map_err(internal)?);
                let (restored, report) = self.executor.restore_session(ws, &exec, &files, image, cancel).await?;
                // Only a restore that worked takes the id: a session of that id here is the one
                // being rolled back, and stays as it was if the restore fails.
                if report.outcome == crate::sandbox::Outcome::Ok {
                    let slot = Arc::new(SessionSlot { dir, live: tokio::sync::Mutex::new(Some(restored)) });
                    lock(&self.sessions).insert(session, slot);
                }
                Ok(report)
            }
            Job::Tool { dir, tool, sha256, grant, args } => {
                let path = self.dir(&dir)?;
                let pkg = self
                    .tools
                    .get(&tool)
                    .filter(|t| t.manifest.wasm_sha256 == sha256)
                    .ok_or_else(|| RunError::Internal(format!("this executor has no tool {tool:?} with that digest")))?;
                let ws = Arc::new(Workspace::adopt_empty(&path).map_err(internal)?);
                let GrantSpec { env, mounts, limits } = grant;
                self.executor.run_tool(pkg, &Grant { env, mounts, limits }, &args, ws, cancel).await
            }
        }
    }

    /// The directory `name` in this executor's root. Names are the front's, but a bad one must
    /// not reach outside the root.
    fn dir(&self, name: &str) -> Result<PathBuf, RunError> {
        let ok = !name.is_empty()
            && name.len() <= 100
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(RunError::Internal(format!("bad call directory name {:?}", name.chars().take(100).collect::<String>())));
        }
        Ok(self.root.join(name))
    }
}

/// Reads and removes the image the front staged at `path`: never more than an image of a
/// memory of `memory_bytes` can take (its pages and their indexes, and a header).
fn read_image(path: &std::path::Path, memory_bytes: u64) -> std::io::Result<Vec<u8>> {
    let bound = crate::sandbox::image::max_encoded_bytes(memory_bytes);
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let _ = std::fs::remove_file(path);
    let len = file.metadata()?.len();
    if len > bound {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("the image holds {len} bytes, more than this memory limit allows"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(bound).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn internal(e: impl std::fmt::Display) -> RunError {
    RunError::Internal(e.to_string())
}

fn exec_spec(spec: &Spec, stdin: Vec<u8>) -> ExecSpec {
    ExecSpec {
        language: spec.language,
        code: spec.code.clone(),
        stdin,
        limits: spec.limits.clone(),
        env: spec.env.clone(),
        mounts: spec.mounts.clone(),
    }
}

/// The report as the channel carries it; its phases in microseconds from `taken_up`.
fn finished(r: RunReport, taken_up: std::time::Instant) -> Finished {
    let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let phases = r
        .phases
        .iter()
        .map(|p| PhaseTiming {
            phase: p.phase,
            offset_us: us(p.start.saturating_duration_since(taken_up)),
            duration_us: us(p.end.saturating_duration_since(p.start)),
        })
        .collect();
    Finished {
        outcome: r.outcome,
        exit_code: r.exit_code,
        stdout: r.stdout,
        stderr: r.stderr,
        truncated: r.truncated,
        duration_ms: r.duration_ms,
        fuel_used: r.fuel_used,
        artifacts: r.artifacts.into_iter().map(|a| (a.path, a.size, a.sha256)).collect(),
        message: r.message,
        ended_session: r.ended_session,
        phases,
    }
}

/// The code-mode door as the executor sees it: each request goes to the front as
/// [`Reply::Door`], and the guest's thread waits for the answer, giving up when the guest's own
/// deadline passes or it is cancelled.
struct RemoteDoor {
    id: u64,
    out: UnboundedSender<Reply>,
    answers: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Door for RemoteDoor {
    fn call(&mut self, deadline: &Deadline, request: &[u8]) -> Result<Vec<u8>, String> {
        let remaining_ms = deadline.remaining().as_millis().min(u64::MAX as u128) as u64;
        self.out
            .send(Reply::Door { id: self.id, request: B64.encode(request), remaining_ms })
            .map_err(|_| "the channel to the front is closed".to_string())?;
        loop {
            match self.answers.recv_timeout(DOOR_POLL) {
                Ok(answer) => return Ok(answer),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if deadline.check().is_err() {
                        return Err("stopped while waiting for a tool call's answer".into());
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err("the run ended".into()),
            }
        }
    }
}

/// This process's confinement as seen from inside: each thread's seccomp state, whether each of
/// `paths` opens, and whether a socket can be made.
fn probe(paths: Vec<PathBuf>) -> Probe {
    let opens = paths
        .into_iter()
        .map(|p| {
            let r = std::fs::File::open(&p).err().map(|e| e.to_string());
            (p, r)
        })
        .collect();
    // SAFETY: plain system calls on a descriptor this function owns.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let socket = if fd >= 0 {
        unsafe { libc::close(fd) };
        None
    } else {
        Some(std::io::Error::last_os_error().to_string())
    };
    Probe { pid: std::process::id(), threads: crate::harden::thread_states(), opens, socket }
}
