//! The executor side: runs guests. Given a call that the front has already validated,
//! admitted and audited, and a workspace directory the front made for it, it writes the inputs,
//! runs the guest (fresh, as a session turn, or as a package tool) on a guest thread, and hands
//! back the run's report.
//!
//! Owns the sandbox (engine, loaded runtimes, compiled modules). It knows nothing of
//! principals, profiles, rate limits, the audit log or MCP: everything it needs arrives in an
//! [`ExecSpec`] or a tool [`Grant`], and requests its guests make to the outside (code-mode tool
//! calls) go through a [`Door`] the caller supplies. [`process`] serves it to the front over a
//! channel as a process of its own; in-process use is left to benchmarks and tests.

pub mod pool;
pub mod process;
pub mod stream;

use std::path::Path;
use std::sync::Arc;

use crate::runtime::{Language, Runtimes};
use crate::sandbox::{
    CancelHandle, CommandSpec, Door, ExecSpec, Guest, InputFile, Phase, PhaseTime, RunReport, Sandbox, SandboxError, Workspace,
    on_guest_thread_async, on_guest_thread_releasing,
};
use crate::tools::{Grant, ToolPackage};

/// Why a run produced no report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// What the caller sent cannot be placed in the workspace (a bad path, inputs over the
    /// quota): the caller can fix it.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Internal(String),
}

impl From<SandboxError> for RunError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Workspace(w) => RunError::Rejected(w.to_string()),
            other => RunError::Internal(other.to_string()),
        }
    }
}

/// Writes a call's input files into its workspace, timed as [`Phase::Inputs`].
fn write_inputs(ws: &Workspace, spec: &ExecSpec, files: &[InputFile]) -> Result<PhaseTime, RunError> {
    let start = std::time::Instant::now();
    ws.write_inputs(files, spec.limits.workspace_bytes, spec.limits.workspace_files).map_err(|e| RunError::Rejected(e.to_string()))?;
    Ok(PhaseTime::until_now(Phase::Inputs, start))
}

/// A session's state on the executor: its workspace (with the quota ledger its guests share)
/// and, for Python, the live interpreter. Turns of one session run one at a time.
pub struct LiveSession {
    pub workspace: Arc<Workspace>,
    /// `None` until the first turn, or after the interpreter ended.
    pub guest: Option<Guest>,
    pub turns: u64,
}

pub struct Executor {
    sandbox: Sandbox,
    /// Guests prepared ahead for fresh calls and first session turns.
    pool: Option<pool::Pool>,
}

impl Executor {
    pub fn new(sandbox: Sandbox) -> Executor {
        Executor { sandbox, pool: None }
    }

    /// An executor that keeps `per_key` guests of each kind prepared ahead ([`pool`]), their
    /// workspaces made under `root`, where the call directories it is given lie too (a prepared
    /// guest's workspace is swapped into the call's directory, which needs the same filesystem).
    pub fn with_pool(sandbox: Sandbox, root: &Path, per_key: usize) -> Executor {
        let pool = (per_key > 0).then(|| pool::Pool::new(sandbox.clone(), root, per_key));
        Executor { sandbox, pool }
    }

    pub fn pool(&self) -> Option<&pool::Pool> {
        self.pool.as_ref()
    }

    /// Marks a job running while the guard lives: the pool makes guests only when none does.
    pub fn busy(&self) -> Option<pool::Busy> {
        self.pool.as_ref().map(pool::Pool::busy)
    }

    /// A guest prepared for calls like `spec` (see [`pool::Pool::take`]), now standing in
    /// `dir`. `None` when there is none: the caller starts one as usual, and the pool makes
    /// some for the next such call once the executor is idle.
    pub fn take_prepared(&self, spec: &ExecSpec, dir: &Path) -> Option<(Guest, Workspace)> {
        self.pool.as_ref()?.take(spec, dir)
    }

    /// A one-shot call in `dir`, a call directory the front made (`workspace/` and `tmp/`
    /// empty): on a guest prepared ahead when there is one for calls like this, else on a new
    /// guest ([`Executor::run_fresh`]).
    pub async fn run_fresh_in(
        &self,
        dir: &Path,
        spec: &ExecSpec,
        files: &[InputFile],
        cancel: &CancelHandle,
        door: Option<Box<dyn Door>>,
    ) -> Result<RunReport, RunError> {
        let _busy = self.busy();
        let (prepared, ws) = match self.take_prepared(spec, dir) {
            Some((guest, ws)) => (Some(guest), ws),
            None => (None, Workspace::adopt_empty(dir).map_err(|e| RunError::Internal(e.to_string()))?),
        };
        self.run_in(Arc::new(ws), spec, files, cancel, door, prepared).await
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn runtimes(&self) -> &Runtimes {
        self.sandbox.runtimes()
    }

    /// A one-shot call: the inputs written into the fresh workspace `ws`, then a fresh guest.
    pub async fn run_fresh(
        &self,
        ws: Arc<Workspace>,
        spec: &ExecSpec,
        files: &[InputFile],
        cancel: &CancelHandle,
        door: Option<Box<dyn Door>>,
    ) -> Result<RunReport, RunError> {
        self.run_in(ws, spec, files, cancel, door, None).await
    }

    /// The inputs written into `ws`, then one run in `prepared` (claimed,
    /// [`Sandbox::claim_prepared`]) or in a guest started for it.
    async fn run_in(
        &self,
        ws: Arc<Workspace>,
        spec: &ExecSpec,
        files: &[InputFile],
        cancel: &CancelHandle,
        door: Option<Box<dyn Door>>,
        prepared: Option<Guest>,
    ) -> Result<RunReport, RunError> {
        let inputs = write_inputs(&ws, spec, files)?;
        let (sandbox, spec2, cancel2) = (self.sandbox.clone(), spec.clone(), cancel.clone());
        let door = if spec.language == Language::Python { door } else { None };
        let mut report = on_guest_thread_releasing(move || {
            let started = std::time::Instant::now();
            let guest = match prepared {
                Some(p) => sandbox.claim_prepared(p, &spec2, &cancel2),
                None => sandbox.start_guest(&spec2, &ws, &cancel2),
            };
            let (report, spent) = apart(guest.and_then(|g| sandbox.run_started(g, &spec2, &ws, &cancel2, door, started)));
            (report, (spent, ws))
        })
        .await??;
        report.phases.insert(0, inputs);
        Ok(report)
    }

    /// One turn of a session: its inputs written into the kept workspace, then the live
    /// interpreter (started on the first turn, and again after it ended), so variables, functions
    /// and loaded data stay between turns in both languages. `prepared` is a guest prepared
    /// ahead for the session's first turn ([`Executor::take_prepared`], the session's workspace
    /// being the one it came with), claimed instead of starting one.
    pub async fn session_turn(
        &self,
        state: &mut LiveSession,
        spec: &ExecSpec,
        files: &[InputFile],
        cancel: &CancelHandle,
        door: Option<Box<dyn Door>>,
        prepared: Option<Guest>,
    ) -> Result<RunReport, RunError> {
        let inputs = write_inputs(&state.workspace, spec, files)?;
        let ws = state.workspace.clone();
        let (sandbox, spec2, cancel2) = (self.sandbox.clone(), spec.clone(), cancel.clone());
        let guest = state.guest.take();
        let (report, guest) = on_guest_thread_async(move || -> (Result<RunReport, RunError>, _) {
            let started = match (guest, prepared) {
                (Some(g), _) => Ok(Ok(g)),
                (None, Some(p)) => sandbox.claim_prepared(p, &spec2, &cancel2),
                (None, None) => sandbox.start_guest(&spec2, &ws, &cancel2),
            };
            let mut guest = match started {
                Ok(Ok(g)) => g,
                Ok(Err(report)) => return (Ok(report), None),
                Err(e) => return (Err(e.into()), None),
            };
            if let Err(e) = guest.arm(&spec2.limits, &cancel2, spec2.stdin.clone()) {
                return (Err(RunError::Internal(format!("{e:#}"))), None);
            }
            guest.set_door(door);
            let mut report = guest.run(&spec2.code);
            guest.set_door(None);
            crate::sandbox::collect_artifacts(&mut report, &ws, &spec2.limits);
            let keep = !report.ended_session;
            (Ok(report), keep.then_some(guest))
        })
        .await?;
        let mut report = report?;
        if guest.is_none() && report.message.is_none() {
            report.message = Some("the interpreter ended; the next call in this session starts a fresh one (files are kept)".into());
        }
        state.guest = guest;
        report.phases.insert(0, inputs);
        state.turns += 1;
        Ok(report)
    }

    /// A fork of a session: `source`'s files copied into `ws` (within the fork's quota), and, if
    /// `source` has a live interpreter, a new one holding the same state
    /// ([`Sandbox::fork_guest`]: nothing re-run, new seeds, this profile's grants). The report
    /// says how it went; a fork that does not fit its limits is a report, not an error.
    pub async fn fork_session(
        &self,
        source: Option<&mut LiveSession>,
        ws: Arc<Workspace>,
        spec: &ExecSpec,
        cancel: &CancelHandle,
    ) -> Result<(LiveSession, RunReport), RunError> {
        let started = std::time::Instant::now();
        let limits = &spec.limits;
        let mut fork = None;
        let mut copied = 0;
        if let Some(src) = source {
            copied = ws
                .copy_files_from(&src.workspace, limits.workspace_bytes, limits.workspace_files)
                .map_err(|e| RunError::Rejected(e.to_string()))?;
            if let Some(guest) = src.guest.take() {
                let (sandbox, spec2, ws2, cancel2) = (self.sandbox.clone(), spec.clone(), ws.clone(), cancel.clone());
                let (guest, made) = on_guest_thread_async(move || {
                    let mut guest = guest;
                    let made = sandbox.fork_guest(&mut guest, &spec2, &ws2, &cancel2);
                    (guest, made)
                })
                .await?;
                src.guest = Some(guest);
                match made? {
                    Ok(g) => fork = Some(g),
                    Err(report) => return Ok((LiveSession { workspace: ws, guest: None, turns: 0 }, report)),
                }
            }
        }
        let message = match &fork {
            Some(_) => format!("forked: {copied} files copied, and the interpreter with its state"),
            None => format!("forked: {copied} files copied; the source had no live interpreter, so the fork's first call starts one"),
        };
        let mut report = RunReport::not_run(crate::sandbox::Outcome::Ok, Some(0), Some(message), started);
        report.ended_session = fork.is_none();
        Ok((LiveSession { workspace: ws, guest: fork, turns: 0 }, report))
    }

    /// Session `live`'s interpreter as an encoded image ([`crate::sandbox::image::GuestImage`],
    /// for its runtime's build), or `None` when it has no live interpreter. The capture runs on
    /// a guest thread; the guest goes back to the session unchanged.
    pub async fn capture_session(
        &self,
        live: &mut LiveSession,
        spec: &ExecSpec,
        cancel: &CancelHandle,
    ) -> Result<Option<Vec<u8>>, RunError> {
        let Some(guest) = live.guest.take() else { return Ok(None) };
        let (sandbox, spec2, ws, cancel2) = (self.sandbox.clone(), spec.clone(), live.workspace.clone(), cancel.clone());
        let (guest, encoded) = on_guest_thread_async(move || {
            let mut guest = guest;
            let encoded =
                sandbox.capture_image(&mut guest, &spec2, &ws, &cancel2).map(|image| image.encode(&spec2.language.spec().cache_key()));
            (guest, encoded)
        })
        .await?;
        live.guest = Some(guest);
        Ok(Some(encoded?))
    }

    /// A session in `ws` holding `files` and, when `image` is given, the interpreter it encodes
    /// ([`Sandbox::restore_guest`]: nothing re-run, new seeds, this profile's grants). An image
    /// of another runtime build, or larger than the memory limit, is refused; a restore that
    /// does not fit its limits is a report, not an error.
    pub async fn restore_session(
        &self,
        ws: Arc<Workspace>,
        spec: &ExecSpec,
        files: &[InputFile],
        image: Option<Vec<u8>>,
        cancel: &CancelHandle,
    ) -> Result<(LiveSession, RunReport), RunError> {
        let started = std::time::Instant::now();
        write_inputs(&ws, spec, files)?;
        let mut guest = None;
        if let Some(bytes) = image {
            let max = usize::try_from(spec.limits.memory_bytes).unwrap_or(usize::MAX);
            let image = crate::sandbox::image::GuestImage::decode(&bytes, &spec.language.spec().cache_key(), max)
                .map_err(|e| RunError::Rejected(format!("the snapshot's interpreter cannot be restored: {e}")))?;
            drop(bytes);
            let (sandbox, spec2, ws2, cancel2) = (self.sandbox.clone(), spec.clone(), ws.clone(), cancel.clone());
            match on_guest_thread_async(move || sandbox.restore_guest(&image, &spec2, &ws2, &cancel2)).await?? {
                Ok(g) => guest = Some(g),
                Err(report) => return Ok((LiveSession { workspace: ws, guest: None, turns: 0 }, report)),
            }
        }
        let message = match &guest {
            Some(_) => format!("restored: {} files, and the interpreter with its state", files.len()),
            None => format!("restored: {} files; the snapshot held no live interpreter, so the first call starts one", files.len()),
        };
        let mut report = RunReport::not_run(crate::sandbox::Outcome::Ok, Some(0), Some(message), started);
        report.ended_session = guest.is_none();
        Ok((LiveSession { workspace: ws, guest, turns: 0 }, report))
    }

    /// A package tool's run in the fresh workspace `ws`, under what its grant allows: the raw
    /// report, which [`crate::tools::interpret`] reads the tool's result from.
    pub async fn run_tool(
        &self,
        tool: &Arc<ToolPackage>,
        grant: &Grant,
        args: &serde_json::Value,
        ws: Arc<Workspace>,
        cancel: &CancelHandle,
    ) -> Result<RunReport, RunError> {
        let pre = tool.pre.clone().ok_or_else(|| RunError::Internal(format!("{} is not compiled in this process", tool.name())))?;
        let spec = CommandSpec {
            pre,
            args: vec![tool.name().to_string()],
            stdin: serde_json::to_vec(args).expect("JSON serializes"),
            limits: grant.limits.clone(),
            env: grant.env.clone(),
            mounts: grant.mounts.clone(),
        };
        let cancel = cancel.clone();
        Ok(on_guest_thread_releasing(move || apart(crate::sandbox::run_command(&spec, &ws, &cancel))).await??)
    }
}

/// A run's result apart from its spent guest, which [`on_guest_thread_releasing`] drops once the
/// result is handed back.
fn apart<E>(ran: Result<(RunReport, Option<Guest>), E>) -> (Result<RunReport, E>, Option<Guest>) {
    match ran {
        Ok((report, spent)) => (Ok(report), spent),
        Err(e) => (Err(e), None),
    }
}
