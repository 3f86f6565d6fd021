//! The spawner: the one warden process that may start processes, so that the front never needs
//! `execve` after its own lockdown (Firecracker's jailer is the model).
//!
//! The front starts it with [`Spawner::start`] before confining itself. The spawner confines
//! itself (below) and then serves the front one request at a time over a `SOCK_SEQPACKET`
//! socketpair inherited as fd 3: start an executor, say which executors ended, kill one. An
//! executor is always `warden executor --channel-fd 3 --label LABEL`, the spawner's own binary:
//! the front chooses only the label (`[a-z0-9-]{1,32}`), never a program or an argument.
//!
//! Confinement, applied before the first request is served and reported in the first reply:
//! * seccomp: the server's allowlist plus process control (`[spawner]` in syscalls.toml): fork,
//!   exec, reap, SIGKILL, AF_UNIX socketpairs; no socket, connect, bind or accept.
//! * Landlock: the warden binary and its dynamic loader are the only executable files; the
//!   loader's libraries are readable. Landlock domains and seccomp filters are inherited by the
//!   executors and can only be narrowed, so the spawner's ruleset must also hold everything an
//!   executor will need ([`SpawnerPlan`]); it never opens those paths itself.
//! * `oom_score_adj` 1000, inherited by every executor, so the kernel's OOM killer takes an
//!   executor (the largest of the processes at 1000) before the front.
//!
//! What it does not do: decide when to start or replace executors (the front does), confine an
//! executor beyond what it inherits (each executor narrows its own domain and filter before it
//! takes work), or keep a compromised spawner from running other code inside its own confinement.
//!
//! Protocol: each message is one JSON frame of at most [`MAX_FRAME`] bytes, a typed [`Request`]
//! or [`Reply`]; one request, one reply; the first request is a `hello` carrying
//! [`PROTOCOL_VERSION`]. A sequenced-packet socket keeps the framing in the kernel, and the
//! descriptor a `spawned` reply carries (SCM_RIGHTS) travels with exactly that message.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketFlags, SocketType,
};
use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};

use crate::harden::{self, HardenError, Report, landlock, seccomp};
use crate::policy::HardeningMode;

pub const PROTOCOL_VERSION: u32 = 1;
/// The largest message either side sends or accepts (the hello's path lists are the largest).
pub const MAX_FRAME: usize = 64 * 1024;
/// Executors alive at once: a front gone wrong cannot fork-bomb the host through the spawner.
pub const MAX_CHILDREN: usize = 256;
/// Ended executors remembered until the front asks; the oldest are dropped beyond this.
const MAX_ENDED: usize = 1024;
/// How long the front waits for a reply before it gives up on the spawner.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The environment the spawner (and so every executor) gets; everything else is cleared.
const PASSED_ENV: [&str; 4] = ["WARDEN_HOME", "WARDEN_LOG", crate::cli::LOG_FORMAT_ENV, "RUST_BACKTRACE"];

/// What executors may need, which the spawner's Landlock domain must therefore keep reachable:
/// runtimes, module cache, tool packages and read-only mounts; workspaces and read-write mounts.
/// Executors that verify their own threads (`/proc/self/task`) need `/proc` here: their pids are
/// not known before they start, so no narrower grant can name them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpawnerPlan {
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Hello { version: u32, mode: HardeningMode, plan: SpawnerPlan },
    Spawn { label: String },
    Reaped,
    Kill { pid: u32 },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Ready {
        version: u32,
        report: Report,
    },
    /// Carries the front's end of the executor's channel.
    Spawned {
        pid: u32,
    },
    Reaped {
        ended: Vec<(u32, String)>,
    },
    Killed,
    Refused {
        error: String,
    },
}

/// One executor: its pid and the front's end of its channel (close-on-exec).
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub channel: OwnedFd,
}

/// The front's handle on its spawner. Blocking; calls from several threads take turns.
pub struct Spawner {
    /// `None` once an exchange failed half-way: replies could no longer be matched to requests.
    sock: Mutex<Option<OwnedFd>>,
    child: Mutex<Child>,
    pid: u32,
    report: Report,
    /// Ends the spawner reported that [`Launcher::how_ended`] was not asked about yet.
    ///
    /// [`Launcher::how_ended`]: crate::service::executors::Launcher::how_ended
    ended: Mutex<VecDeque<(u32, String)>>,
}

impl Spawner {
    /// Starts `exe spawner --fd 3` with a cleared environment, stdin and stdout on /dev/null
    /// (stdout carries JSON-RPC in stdio mode) and stderr inherited, and waits for it to confine
    /// itself in `mode` with `plan`. Call it before the front's own lockdown.
    pub fn start(exe: &Path, mode: HardeningMode, plan: &SpawnerPlan) -> io::Result<Spawner> {
        let (ours, theirs) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        rustix::net::sockopt::set_socket_timeout(&ours, rustix::net::sockopt::Timeout::Recv, Some(REPLY_TIMEOUT))?;
        let mut cmd = Command::new(exe);
        cmd.args(["spawner", "--fd", "3"]).env_clear().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        for key in PASSED_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        let raw = theirs.as_raw_fd();
        // SAFETY: the closure makes only async-signal-safe system calls (see `channel_at_3`).
        unsafe { cmd.pre_exec(move || channel_at_3(raw)) };
        let child = cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("starting the spawner {}: {e}", exe.display())))?;
        drop(theirs);
        let pid = child.id();
        let mut spawner = Spawner {
            sock: Mutex::new(Some(ours)),
            child: Mutex::new(child),
            pid,
            report: Report::off(),
            ended: Mutex::new(VecDeque::new()),
        };
        let hello = Request::Hello { version: PROTOCOL_VERSION, mode, plan: plan.clone() };
        match spawner.exchange(&hello)? {
            (Reply::Ready { version: PROTOCOL_VERSION, report }, None) => spawner.report = report,
            (Reply::Refused { error }, None) => return Err(io::Error::other(format!("the spawner refused to start: {error}"))),
            (other, _) => return Err(spawner.broken(format!("the spawner answered the hello with {other:?}"))),
        }
        Ok(spawner)
    }

    /// Starts one executor labelled `label` (shown by `ps`; `[a-z0-9-]{1,32}`).
    pub fn spawn(&self, label: &str) -> io::Result<Spawned> {
        check_label(label).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        match self.exchange(&Request::Spawn { label: label.into() })? {
            (Reply::Spawned { pid }, Some(channel)) if pid > 1 => Ok(Spawned { pid, channel }),
            (Reply::Refused { error }, None) => Err(io::Error::other(format!("the spawner refused to start an executor: {error}"))),
            (other, fd) => Err(self.broken(format!("the spawner answered a spawn with {other:?} (descriptor: {})", fd.is_some()))),
        }
    }

    /// Executors that ended since the last call, with how: "exited with status 3", "killed by
    /// signal 9 (SIGKILL)". The spawner reaps them (it is their parent).
    pub fn reaped(&self) -> io::Result<Vec<(u32, String)>> {
        match self.exchange(&Request::Reaped)? {
            (Reply::Reaped { ended }, None) if ended.len() <= MAX_ENDED => Ok(ended),
            (other, _) => Err(self.broken(format!("the spawner answered a reaped request with {other:?}"))),
        }
    }

    /// SIGKILLs an executor this spawner started and has not reaped yet (so its pid cannot have
    /// been reused); any other pid is refused.
    pub fn kill(&self, pid: u32) -> io::Result<()> {
        match self.exchange(&Request::Kill { pid })? {
            (Reply::Killed, None) => Ok(()),
            (Reply::Refused { error }, None) => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the spawner refused: {error}"))),
            (other, _) => Err(self.broken(format!("the spawner answered a kill with {other:?}"))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The spawner's confinement, as it reported it.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Closes the front's end, which makes the spawner kill and reap its executors and exit, and
    /// waits up to `grace` for it to exit (then kills it). Returns how it ended.
    pub fn shutdown(self, grace: Duration) -> io::Result<std::process::ExitStatus> {
        drop(self.sock.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut child = self.child.into_inner().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill()?;
        child.wait()
    }

    /// Sends `frame` as it is (any bytes, any size) and returns the reply: lets the tests play a
    /// front gone wrong.
    #[doc(hidden)]
    pub fn exchange_raw(&self, frame: &[u8]) -> io::Result<Reply> {
        let guard = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let sock = guard.as_ref().ok_or_else(|| io::Error::other("the spawner connection failed earlier"))?;
        rustix::net::send(sock, frame, SendFlags::NOSIGNAL)?;
        match recv(sock.as_fd(), 0)? {
            Some((bytes, _)) => serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string())),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// One request, one reply (with at most one descriptor).
    fn exchange(&self, req: &Request) -> io::Result<(Reply, Option<OwnedFd>)> {
        let mut guard = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let sock = guard.as_ref().ok_or_else(|| io::Error::other("the spawner connection failed earlier; restart the server"))?;
        let result = send(sock.as_fd(), req, None).and_then(|()| match recv(sock.as_fd(), 1)? {
            Some((bytes, fd)) => Ok((serde_json::from_slice(&bytes).map_err(|e| invalid(format!("malformed reply: {e}")))?, fd)),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the spawner has exited")),
        });
        if result.is_err() {
            *guard = None;
        }
        result.map_err(|e| io::Error::new(e.kind(), format!("spawner (pid {}): {e}", self.pid)))
    }

    /// A reply that does not fit the request: the spawner is no longer trusted to answer.
    fn broken(&self, what: String) -> io::Error {
        *self.sock.lock().unwrap_or_else(|e| e.into_inner()) = None;
        invalid(what)
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

pub fn check_label(label: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(format!("bad executor label {label:?}: use 1 to 32 of a-z, 0-9 and -")) }
}

fn send<T: Serialize>(sock: BorrowedFd, msg: &T, fd: Option<BorrowedFd>) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if bytes.len() > MAX_FRAME {
        return Err(invalid(format!("a {} byte message is over the {MAX_FRAME} byte limit", bytes.len())));
    }
    let fds: Vec<BorrowedFd> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    // NOSIGNAL: a peer that went away is an error here, not a SIGPIPE.
    rustix::net::sendmsg(sock, &[IoSlice::new(&bytes)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// One message and the descriptors it carried (at most `max_fds`, received close-on-exec);
/// `None` at end of stream. Oversized messages and extra descriptors are refused (the kernel
/// discards the rest of the message; received descriptors are closed).
fn recv(sock: BorrowedFd, max_fds: usize) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds: Vec<OwnedFd> = control
        .drain()
        .filter_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.flags.contains(ReturnFlags::TRUNC) {
        return Err(invalid(format!("a message over the {MAX_FRAME} byte limit")));
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
        return Err(invalid("a message carried unexpected descriptors"));
    }
    buf.truncate(msg.bytes);
    Ok(Some((buf, fds.pop())))
}

/// In a child between fork and exec: `fd` becomes fd 3 (without close-on-exec) and every other
/// descriptor above 2 is marked close-on-exec, so the exec'd program holds stdio and its channel
/// only. Only async-signal-safe system calls: the parent may be multi-threaded.
///
/// Why std's `Command` with `pre_exec` rather than a hand-written fork: it handles the signal
/// mask, argv/env building before the fork, and reports a failed exec back to the parent through
/// a close-on-exec pipe. That pipe is why other descriptors are marked close-on-exec here
/// (`CLOSE_RANGE_CLOEXEC`) rather than closed.
fn channel_at_3(fd: RawFd) -> io::Result<()> {
    let check = |r: libc::c_long| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    // SAFETY: plain descriptor system calls on descriptors this process owns.
    unsafe {
        if fd == 3 {
            check(libc::fcntl(3, libc::F_SETFD, 0) as libc::c_long)?;
        } else {
            check(libc::dup2(fd, 3) as libc::c_long)?;
        }
        check(libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC))
    }
}

/// `warden spawner --fd N`: confines the process as the front's hello asks (the hardening mode
/// travels in the hello with the plan), then serves until the front closes its end or dies, then
/// kills and reaps its executors.
pub fn serve(sock: OwnedFd) -> io::Result<()> {
    let context = |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("spawner: {what}: {e}"));
    // No executor may inherit the front's socket.
    rustix::io::fcntl_setfd(&sock, rustix::io::FdFlags::CLOEXEC)?;
    let (mode, plan) = match recv(sock.as_fd(), 0).map_err(context("hello"))? {
        Some((bytes, _)) => match serde_json::from_slice(&bytes) {
            Ok(Request::Hello { version: PROTOCOL_VERSION, mode, plan }) => (mode, plan),
            other => {
                let error = format!("expected a version {PROTOCOL_VERSION} hello, got {other:?}");
                let _ = send(sock.as_fd(), &Reply::Refused { error: error.clone() }, None);
                return Err(invalid(error));
            }
        },
        None => return Ok(()),
    };
    let mut state = match confine(mode, &plan) {
        Ok((report, exe)) => {
            send(sock.as_fd(), &Reply::Ready { version: PROTOCOL_VERSION, report }, None).map_err(context("ready"))?;
            State { exe, live: BTreeSet::new(), ended: VecDeque::new(), parent: rustix::process::getpid() }
        }
        Err(e) => {
            let _ = send(sock.as_fd(), &Reply::Refused { error: e.to_string() }, None);
            return Err(io::Error::other(e));
        }
    };
    let result = state.serve(sock.as_fd());
    state.kill_all();
    result.map_err(context("serving"))
}

/// Raises `oom_score_adj`, then Landlock (execute: the binary and the dynamic loader only) and
/// seccomp, as `mode` demands. Returns the report and the binary executors are started from.
fn confine(mode: HardeningMode, plan: &SpawnerPlan) -> Result<(Report, PathBuf), HardenError> {
    let ll = |e: io::Error| HardenError::Landlock(format!("spawner: {e}"));
    harden::assert_single_threaded()?;
    // Before Landlock, which leaves /proc/self unwritable. Inherited across fork and exec.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        tracing::warn!(error = %e, "spawner: cannot raise oom_score_adj; the OOM killer may pick the front before an executor");
    }
    let exe = std::env::current_exe().and_then(std::fs::canonicalize).map_err(ll)?;
    let (interpreter, libraries) = loaded_files(&exe).map_err(ll)?;
    let mut read_only = plan.read_only.clone();
    read_only.extend(libraries);
    // The loader's index of libraries: without it, it probes dozens of directories per library.
    read_only.extend(Some(PathBuf::from("/etc/ld.so.cache")).filter(|p| p.exists()));
    read_only.push(harden::own_tasks_dir());
    let hplan =
        harden::Plan { mode, read_only, read_write: plan.read_write.clone(), removable: Vec::new(), listener_fd: None, collector: None };
    let execute: Vec<PathBuf> = [Some(exe.clone()), interpreter].into_iter().flatten().collect();
    let landlock = landlock::restrict_with_execute(&hplan, &execute)?;
    let seccomp = seccomp::install_spawner(mode)?;
    let enforced = landlock.status == landlock::LandlockStatus::Full
        && seccomp.status == seccomp::SeccompStatus::Enforced
        && seccomp.all_threads_filtered;
    if mode == HardeningMode::Enforce && !enforced {
        return Err(HardenError::NotEnforced(format!("the spawner's Landlock is {} and seccomp {}", landlock.status, seccomp.status)));
    }
    Ok((Report { mode, landlock, seccomp }, exe))
}

/// The files mapped executable into this process besides `exe` itself: (the dynamic loader,
/// the shared libraries). An executor is the same binary, so it needs exactly these. The loader
/// is told apart by its load address (`AT_BASE`); it alone needs the execute right (the kernel
/// opens it for execution), libraries are only read and mapped.
fn loaded_files(exe: &Path) -> io::Result<(Option<PathBuf>, Vec<PathBuf>)> {
    // SAFETY: getauxval reads the auxiliary vector; 0 when there is no loader (static binary).
    let base = unsafe { libc::getauxval(libc::AT_BASE) } as u64;
    let (mut interpreter, mut libraries) = (None, Vec::new());
    for line in std::fs::read_to_string("/proc/self/maps")?.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms), Some(path)) = (parts.next(), parts.next(), parts.nth(3)) else { continue };
        let path = PathBuf::from(path);
        if !path.is_absolute() || path == exe {
            continue;
        }
        let start = range.split('-').next().and_then(|s| u64::from_str_radix(s, 16).ok());
        if base != 0 && start == Some(base) {
            interpreter = Some(path);
        } else if perms.contains('x') && !libraries.contains(&path) {
            libraries.push(path);
        }
    }
    Ok((interpreter, libraries))
}

/// The spawner's bookkeeping: which executors are alive (started and not yet reaped) and which
/// ended since the front last asked.
struct State {
    exe: PathBuf,
    live: BTreeSet<u32>,
    ended: VecDeque<(u32, String)>,
    parent: Pid,
}

impl State {
    fn serve(&mut self, sock: BorrowedFd) -> io::Result<()> {
        loop {
            // Wake at least once a second to reap executors that ended, so none stays a zombie.
            let mut fds = [rustix::event::PollFd::new(&sock, rustix::event::PollFlags::IN)];
            let ready = rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 }))?;
            self.reap();
            if ready == 0 {
                continue;
            }
            let (reply, fd) = match recv(sock, 0) {
                Ok(None) => return Ok(()),
                Ok(Some((bytes, _))) => match serde_json::from_slice::<Request>(&bytes) {
                    Ok(req) => self.handle(req),
                    Err(e) => (Reply::Refused { error: format!("malformed request: {e}") }, None),
                },
                Err(e) if e.kind() == io::ErrorKind::InvalidData => (Reply::Refused { error: e.to_string() }, None),
                Err(e) => return Err(e),
            };
            send(sock, &reply, fd.as_ref().map(|f| f.as_fd()))?;
        }
    }

    fn handle(&mut self, req: Request) -> (Reply, Option<OwnedFd>) {
        let refused = |error: String| (Reply::Refused { error }, None);
        match req {
            Request::Hello { .. } => refused("already confined: the hello comes once".into()),
            Request::Spawn { label } => match self.spawn(&label) {
                Ok((pid, fd)) => (Reply::Spawned { pid }, Some(fd)),
                Err(e) => refused(e),
            },
            Request::Reaped => {
                self.reap();
                (Reply::Reaped { ended: self.ended.drain(..).collect() }, None)
            }
            Request::Kill { pid } if self.live.contains(&pid) => {
                // Still our unreaped child, so the pid cannot belong to anyone else.
                match Pid::from_raw(pid as i32).map(|p| rustix::process::kill_process(p, Signal::KILL)) {
                    Some(Ok(())) => (Reply::Killed, None),
                    Some(Err(e)) => refused(format!("killing {pid}: {e}")),
                    None => refused(format!("bad pid {pid}")),
                }
            }
            Request::Kill { pid } => refused(format!("pid {pid} is not a running executor this spawner started")),
        }
    }

    fn spawn(&mut self, label: &str) -> Result<(u32, OwnedFd), String> {
        check_label(label)?;
        if self.live.len() >= MAX_CHILDREN {
            return Err(format!("{MAX_CHILDREN} executors are running already; stop one first"));
        }
        let (ours, theirs) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
            .map_err(|e| format!("socketpair: {e}"))?;
        let (raw, parent) = (theirs.as_raw_fd(), self.parent);
        let mut cmd = Command::new(&self.exe);
        // Stdio is inherited: stdin and stdout are /dev/null, stderr is the front's.
        cmd.args(["executor", "--channel-fd", "3", "--label", label]);
        // SAFETY: only async-signal-safe system calls (raw syscalls through rustix and libc).
        unsafe {
            cmd.pre_exec(move || {
                channel_at_3(raw)?;
                // No executor outlives the spawner; and if it died before this, do not start.
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                if rustix::process::getppid() != Some(parent) {
                    return Err(io::Error::other("the spawner is gone"));
                }
                Ok(())
            })
        };
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
        // The child is reaped by `reap` (waitpid on any child), not through `Child`.
        self.live.insert(child.id());
        Ok((child.id(), ours))
    }

    /// Collects every executor that ended, without blocking.
    fn reap(&mut self) {
        while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG) {
            let pid = pid.as_raw_nonzero().get() as u32;
            self.live.remove(&pid);
            if self.ended.len() == MAX_ENDED {
                self.ended.pop_front();
            }
            self.ended.push_back((pid, describe(status.exit_status(), status.terminating_signal())));
        }
    }

    fn kill_all(&mut self) {
        for &pid in &self.live {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
                let _ = rustix::process::waitpid(Some(p), WaitOptions::empty());
            }
        }
        self.live.clear();
    }
}

/// "exited with status 3", "killed by signal 9 (SIGKILL)".
pub fn describe(exit: Option<i32>, signal: Option<i32>) -> String {
    const NAMES: [(i32, &str); 14] = [
        (1, "SIGHUP"),
        (2, "SIGINT"),
        (3, "SIGQUIT"),
        (4, "SIGILL"),
        (5, "SIGTRAP"),
        (6, "SIGABRT"),
        (7, "SIGBUS"),
        (8, "SIGFPE"),
        (9, "SIGKILL"),
        (11, "SIGSEGV"),
        (13, "SIGPIPE"),
        (15, "SIGTERM"),
        (24, "SIGXCPU"),
        (31, "SIGSYS"),
    ];
    match (exit, signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match NAMES.iter().find(|(n, _)| *n == sig) {
            Some((_, name)) => format!("killed by signal {sig} ({name})"),
            None => format!("killed by signal {sig}"),
        },
        (None, None) => "ended".into(),
    }
}

/// Takes ownership of descriptor `n` named on the command line (`--fd`, `--channel-fd`): it must
/// be above stdio, open, and a socket.
pub fn inherited_socket(n: RawFd) -> io::Result<OwnedFd> {
    if n < 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {n} is stdio, not a channel")));
    }
    // SAFETY: fstat on a descriptor number writes only into `st`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(n, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {n} is not an inherited socket")));
    }
    // SAFETY: the descriptor is open, and nothing else in this process owns it: it was inherited
    // for exactly this purpose and is taken once, at startup.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The front's executors are started by the spawner.
impl crate::service::executors::Launcher for Spawner {
    fn launch(&self, label: &str) -> io::Result<(u32, OwnedFd)> {
        self.spawn(label).map(|s| (s.pid, s.channel))
    }

    fn kill(&self, pid: u32) {
        // Already gone (reaped) is fine: that is what was wanted.
        let _ = Spawner::kill(self, pid);
    }

    fn how_ended(&self, pid: u32) -> Option<String> {
        let fresh = self.reaped().ok()?;
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.extend(fresh);
        while ended.len() > MAX_ENDED {
            ended.pop_front();
        }
        let at = ended.iter().position(|(p, _)| *p == pid)?;
        ended.remove(at).map(|(_, how)| how)
    }
}
