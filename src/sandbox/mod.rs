//! Running one untrusted program: a fresh guest per call, under hard limits, with a private
//! workspace, and a report of what happened.
//!
//! Layers, outermost first: [`Sandbox`] picks the runtime and drives a call; [`guest`] owns the
//! store and instance; [`host`] is what the guest can call; [`workspace`] is its filesystem,
//! [`quota`] the ledger of what that filesystem holds and [`fsgate`] the WASI calls that keep it;
//! [`outcome`] turns the ending into the contract's words; [`snapshot`] runs the Python snapshot
//! recipe in a guest at install time.
//!
//! Owns: everything a guest sees of the host (the store state [`GuestState`], the [`linker`] and
//! its host calls), linking the loaded runtimes against it ([`Sandbox::load`]), limits,
//! cancellation, workspaces and outcomes.
//!
//! Does not own: the engine's configuration and the epoch tick ([`crate::engine`]), and which
//! runtimes exist, how they are installed, cached and loaded ([`crate::runtime`]). Those are the
//! layers below, which never import this one; policy decisions (what limits, which mounts) come
//! from callers already applied in an [`ExecSpec`].

pub mod control;
pub mod fsgate;
pub mod guest;
pub mod host;
pub mod image;
pub mod io;
pub mod limits;
pub mod outcome;
pub mod quota;
pub mod snapshot;
pub mod workspace;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Engine, InstancePre};

pub use control::{CancelHandle, Stop};
pub use guest::{Guest, GuestSpec, Mount};
pub use host::{Door, GuestState, linker};
pub use image::GuestImage;
pub use limits::{Limits, RequestedLimits};
pub use outcome::{Outcome, Phase, PhaseTime, RunReport};
pub use workspace::{Artifact, InputFile, Workspace};

use crate::engine::GUEST_THREAD_STACK;
use crate::home::Home;
use crate::runtime::{Language, LoadError, Runtime, Runtimes};
use outcome::{Exit, RunFacts, classify};

/// argv[0] CPython derives its prefix from: `/usr/local`, so it finds `lib/python315.zip`.
pub const PYTHON_ARGV0: &str = "/usr/local/bin/python.wasm";

/// Most artifacts reported for one call.
pub const MAX_ARTIFACTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the {0} runtime is not loaded on this server")]
    NotLoaded(Language),
    #[error(transparent)]
    Workspace(#[from] workspace::WorkspaceError),
    #[error("the sandbox failed to start the guest: {0}")]
    Internal(String),
}

/// What to run, with every policy decision already applied.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    pub language: Language,
    pub code: String,
    pub stdin: Vec<u8>,
    pub limits: Limits,
    /// The guest's whole environment besides `TMPDIR` and `HOME`.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
}

/// Starts guests from the loaded runtimes. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Linked>,
}

/// The loaded runtimes and, for each, its imports resolved against the host.
struct Linked {
    runtimes: Runtimes,
    pres: Vec<(Language, InstancePre<GuestState>)>,
}

impl Sandbox {
    /// Loads the installed runtimes for `languages` ([`Runtimes::load`]) and links each against
    /// the host with one [`linker`], so every later guest only instantiates.
    pub fn load(home: &Home, engine: &Engine, languages: &[Language]) -> Result<Sandbox, LoadError> {
        let runtimes = Runtimes::load(home, engine, languages)?;
        let mut pres = Vec::new();
        if let Some(first) = runtimes.iter().next() {
            let shared = linker(engine).map_err(|source| LoadError::Prepare { language: first.spec.language, source })?;
            for rt in runtimes.iter() {
                let language = rt.spec.language;
                let pre = shared.instantiate_pre(&rt.module).map_err(|source| LoadError::Prepare { language, source })?;
                pres.push((language, pre));
            }
        }
        Ok(Sandbox { inner: Arc::new(Linked { runtimes, pres }) })
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.inner.runtimes
    }

    fn runtime(&self, language: Language) -> Result<(&Arc<Runtime>, &InstancePre<GuestState>), SandboxError> {
        let rt = self.inner.runtimes.get(language);
        let pre = self.inner.pres.iter().find(|(l, _)| *l == language).map(|(_, p)| p);
        rt.zip(pre).ok_or(SandboxError::NotLoaded(language))
    }

    /// Starts a guest from the runtime's snapshot, readied for this call (Python: a setup turn with
    /// its environment and seeds; JavaScript: `warden_claim`). A start that fails because of the
    /// caller's limits (memory below the runtime's minimum, a deadline or cancel during setup) is
    /// returned as a report, not an error.
    pub fn start_guest(&self, spec: &ExecSpec, ws: &Workspace, cancel: &CancelHandle) -> Result<Result<Guest, RunReport>, SandboxError> {
        self.make_guest(spec, ws, cancel, Ready::Claim)
    }

    /// A new guest holding the same interpreter as `source` (variables, imports, loaded data),
    /// for `spec` in the workspace `ws`: the pages `source` wrote copied straight into a fresh
    /// instance ([`image::GuestImage::copy_live`]), which is then readied like a restored one
    /// ([`Sandbox::restore_guest`]). `source` is only read.
    pub fn fork_guest(
        &self,
        source: &mut Guest,
        spec: &ExecSpec,
        ws: &Workspace,
        cancel: &CancelHandle,
    ) -> Result<Result<Guest, RunReport>, SandboxError> {
        let live = image::Live(std::cell::RefCell::new(source));
        self.make_guest(spec, ws, cancel, Ready::Restore(&live))
    }

    /// `source`'s state as an image: the pages of its memory that differ from a fresh instance
    /// of its runtime (instantiated in `ws`, never run), and its globals.
    pub fn capture_image(
        &self,
        source: &mut Guest,
        spec: &ExecSpec,
        ws: &Workspace,
        cancel: &CancelHandle,
    ) -> Result<GuestImage, SandboxError> {
        let mut base = match self.make_guest(spec, ws, cancel, Ready::Bare)? {
            Ok(g) => g,
            Err(report) => return Err(SandboxError::Internal(report.message.unwrap_or_else(|| "the base instance did not start".into()))),
        };
        GuestImage::capture(source, &mut base).map_err(|e| SandboxError::Internal(e.to_string()))
    }

    /// A guest holding the interpreter `image` was captured from, for `spec` in `ws`. Nothing of
    /// the session's code is re-run. What lives outside the instance is this call's, not the
    /// image's: the preopened directories (the workspace, the profile's current mounts), the
    /// environment, and new seeds for every random generator (Python's `random` and numpy,
    /// JavaScript's `Math.random`), so two guests from one image never share a random stream.
    pub fn restore_guest(
        &self,
        image: &GuestImage,
        spec: &ExecSpec,
        ws: &Workspace,
        cancel: &CancelHandle,
    ) -> Result<Result<Guest, RunReport>, SandboxError> {
        self.make_guest(spec, ws, cancel, Ready::Restore(image))
    }

    fn make_guest(
        &self,
        spec: &ExecSpec,
        ws: &Workspace,
        cancel: &CancelHandle,
        ready: Ready<'_>,
    ) -> Result<Result<Guest, RunReport>, SandboxError> {
        let (rt, pre) = self.runtime(spec.language)?;
        let env = guest_env(&spec.env);
        let args = match spec.language {
            Language::Python => vec![PYTHON_ARGV0.to_string()],
            Language::Javascript => vec!["qjs".to_string()],
        };
        let refresh = crate::runtime::snapshot::refresh_turn(&env);
        let gspec = GuestSpec {
            pre,
            language: Some(spec.language),
            ro_mounts: rt.ro_mounts().collect(),
            workspace: ws,
            args,
            env,
            mounts: &spec.mounts,
        };
        let started = Instant::now();
        let timeout = spec.limits.timeout;
        let setup = Guest::start(&gspec, &spec.limits, cancel).and_then(|mut g| {
            match (ready, spec.language) {
                (Ready::Bare, _) => {}
                // Fresh guests start from warden's snapshots, past the runtime's first turns:
                // apply this call's environment, directories and new random seeds before the
                // caller's code.
                (Ready::Claim, Language::Python) => g.hidden_turn(&refresh, cancel, timeout)?,
                (Ready::Claim, Language::Javascript) => g.setup_call(crate::runtime::quickjs::CLAIM_EXPORT, cancel, timeout)?,
                (Ready::Restore(image), language) => {
                    image.fill(&mut g).map_err(wasmtime::Error::new)?;
                    match language {
                        // wasi-libc forgets the image's table of preopens and reads this
                        // guest's; the refresh turn sets the environment, seeds and cwd.
                        Language::Python => {
                            g.setup_call(crate::runtime::snapshot::RESET_PREOPENS_EXPORT, cancel, timeout)?;
                            g.hidden_turn(&refresh, cancel, timeout)?;
                        }
                        Language::Javascript => g.setup_call(crate::runtime::quickjs::RESEED_EXPORT, cancel, timeout)?,
                    }
                }
            }
            Ok(g)
        });
        match setup {
            Ok(mut g) => {
                // A claimed guest reports its start with its first run; a restored one may run
                // in a later job (a fork's first turn), whose time its start is not part of.
                if matches!(ready, Ready::Claim) {
                    g.started_at(Phase::GuestStart, started);
                }
                Ok(Ok(g))
            }
            Err(e) => setup_failure(e, Some(spec.language), &spec.limits, started).map(Err),
        }
    }

    /// A guest made ahead of the call it will serve (`crate::executor::pool`): started from the
    /// runtime's snapshot in `ws` with `spec`'s environment and mounts (both fixed when a guest is
    /// made), and readied as a fresh guest is, so the pages readying writes are faulted in now,
    /// off any request's path. What must be the caller's own is applied again when it is claimed
    /// ([`Sandbox::claim_prepared`]).
    pub fn prepare_guest(&self, spec: &ExecSpec, ws: &Workspace, cancel: &CancelHandle) -> Result<Guest, SandboxError> {
        match self.make_guest(spec, ws, cancel, Ready::Claim)? {
            Ok(g) => Ok(g),
            Err(report) => Err(SandboxError::Internal(report.message.unwrap_or_else(|| "the guest did not start".into()))),
        }
    }

    /// Readies a prepared guest for the call `spec`: a clock that starts now, and new seeds for
    /// every random generator (Python's refresh turn again, with this call's environment;
    /// JavaScript's reseed), so no two claimed guests share a random stream. Timed as
    /// [`Phase::GuestClaim`] under the call's deadline; a failure the caller's limits explain is
    /// a report.
    pub fn claim_prepared(
        &self,
        mut guest: Guest,
        spec: &ExecSpec,
        cancel: &CancelHandle,
    ) -> Result<Result<Guest, RunReport>, SandboxError> {
        let started = Instant::now();
        guest.restart_clock();
        let timeout = spec.limits.timeout;
        let claimed = match spec.language {
            Language::Python => guest.hidden_turn(&crate::runtime::snapshot::refresh_turn(&guest_env(&spec.env)), cancel, timeout),
            Language::Javascript => guest.setup_call(crate::runtime::quickjs::RESEED_EXPORT, cancel, timeout),
        };
        match claimed {
            Ok(()) => {
                guest.started_at(Phase::GuestClaim, started);
                Ok(Ok(guest))
            }
            Err(e) => setup_failure(e, Some(spec.language), &spec.limits, started).map(Err),
        }
    }

    /// Runs one program in a fresh guest, on the calling thread (use [`on_guest_thread`]), and
    /// collects what it left in `/workspace`.
    pub fn run_fresh(
        &self,
        spec: &ExecSpec,
        ws: &Workspace,
        cancel: &CancelHandle,
        door: Option<Box<dyn Door>>,
    ) -> Result<RunReport, SandboxError> {
        let started = Instant::now();
        let guest = self.start_guest(spec, ws, cancel)?;
        Ok(self.run_started(guest, spec, ws, cancel, door, started)?.0)
    }

    /// Runs one program in `guest`, started (or claimed, [`Sandbox::claim_prepared`]) for it at
    /// `started`, like [`Sandbox::run_fresh`]. A guest that did not start is its report. The
    /// spent guest comes back beside the report, for the caller to drop once the report is on
    /// its way ([`on_guest_thread_releasing`]).
    pub fn run_started(
        &self,
        guest: Result<Guest, RunReport>,
        spec: &ExecSpec,
        ws: &Workspace,
        cancel: &CancelHandle,
        door: Option<Box<dyn Door>>,
        started: Instant,
    ) -> Result<(RunReport, Option<Guest>), SandboxError> {
        let guest = guest.map(|mut g| {
            g.set_door(door);
            g
        });
        finish_run(guest, &spec.limits, spec.stdin.clone(), &spec.code, ws, cancel, started)
    }
}

/// How [`Sandbox::make_guest`] readies a new instance.
#[derive(Clone, Copy)]
enum Ready<'a> {
    /// Not at all: a base to diff an image against.
    Bare,
    /// As a fresh guest for one call.
    Claim,
    /// As the holder of an image's (or a live guest's) interpreter.
    Restore(&'a dyn image::Fill),
}

/// A plain WASI command to run (a tool package): arguments on stdin, result on stdout.
pub struct CommandSpec {
    /// Cheap to clone (reference-counted), so a spec can move to a guest thread.
    pub pre: wasmtime::InstancePre<GuestState>,
    /// argv, starting with the program name.
    pub args: Vec<String>,
    pub stdin: Vec<u8>,
    pub limits: Limits,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
}

/// Runs a command in a fresh guest on the calling thread, like [`Sandbox::run_fresh`]; the spent
/// guest comes back beside the report, as from [`Sandbox::run_started`].
pub fn run_command(spec: &CommandSpec, ws: &Workspace, cancel: &CancelHandle) -> Result<(RunReport, Option<Guest>), SandboxError> {
    let started = Instant::now();
    let env = guest_env(&spec.env);
    let gspec = GuestSpec {
        pre: &spec.pre,
        language: None,
        ro_mounts: Vec::new(),
        workspace: ws,
        args: spec.args.clone(),
        env,
        mounts: &spec.mounts,
    };
    let guest = match Guest::start(&gspec, &spec.limits, cancel) {
        Ok(mut g) => {
            g.started_at(Phase::GuestStart, started);
            Ok(g)
        }
        Err(e) => Err(setup_failure(e, None, &spec.limits, started)?),
    };
    finish_run(guest, &spec.limits, spec.stdin.clone(), "", ws, cancel, started)
}

/// A guest's whole environment: `TMPDIR` and `HOME` (always `/tmp`), then `env` without them.
fn guest_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut all = vec![("TMPDIR".to_string(), "/tmp".to_string()), ("HOME".to_string(), "/tmp".to_string())];
    all.extend(env.iter().filter(|(k, _)| k != "TMPDIR" && k != "HOME").cloned());
    all
}

fn finish_run(
    guest: Result<Guest, RunReport>,
    limits: &Limits,
    stdin: Vec<u8>,
    code: &str,
    ws: &Workspace,
    cancel: &CancelHandle,
    started: Instant,
) -> Result<(RunReport, Option<Guest>), SandboxError> {
    let mut guest = match guest {
        Ok(g) => g,
        Err(report) => return Ok((report, None)),
    };
    guest.arm(limits, cancel, stdin).map_err(|e| SandboxError::Internal(format!("{e:#}")))?;
    let mut report = guest.run(code);
    report.duration_ms = started.elapsed().as_millis() as u64;
    collect_artifacts(&mut report, ws, limits);
    Ok((report, Some(guest)))
}

/// Fills in what a run left in `/workspace`, timing it as [`Phase::ArtifactsCollect`].
pub fn collect_artifacts(report: &mut RunReport, ws: &Workspace, limits: &Limits) {
    let start = Instant::now();
    report.artifacts = ws.collect_changes(MAX_ARTIFACTS, limits.workspace_bytes);
    report.phases.push(PhaseTime::until_now(Phase::ArtifactsCollect, start));
}

fn setup_failure(e: wasmtime::Error, language: Option<Language>, limits: &Limits, started: Instant) -> Result<RunReport, SandboxError> {
    let facts = RunFacts { language, memory_refused: false, truncated: false, quota_refused: false, limits: limits.clone() };
    let exit = Exit::Failed(e);
    let (outcome, exit_code, message) = classify(&exit, &facts);
    if matches!(outcome, Outcome::Trap) {
        let Exit::Failed(e) = exit else { unreachable!() };
        return Err(SandboxError::Internal(format!("{e:#}")));
    }
    Ok(RunReport::not_run(outcome, exit_code, message, started))
}

/// Runs `f` on a fresh OS thread with a stack big enough for guests, and waits for it. A panic
/// on that thread is returned as an error instead of unwinding into the caller.
pub fn on_guest_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, SandboxError> {
    let handle = std::thread::Builder::new()
        .name("warden-guest".into())
        .stack_size(GUEST_THREAD_STACK)
        .spawn(f)
        .map_err(|e| SandboxError::Internal(format!("spawning a guest thread: {e}")))?;
    handle.join().map_err(|_| SandboxError::Internal("the guest thread panicked".into()))
}

/// Async form of [`on_guest_thread`]: the tokio worker is never blocked by a guest.
pub async fn on_guest_thread_async<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, SandboxError> {
    on_guest_thread_releasing(move || (f(), ())).await
}

/// [`on_guest_thread_async`] for work that leaves something to release (a spent guest, a
/// workspace handle): its result is handed back first, then the rest is dropped on the guest
/// thread. Dropping a guest returns its memory to Wasmtime's pool (resetting and decommitting
/// what it wrote: 0.3-0.5 ms for Python), and dropping a claimed guest's workspace removes the
/// directory it came from: work nobody waits for, so it runs while the caller sends the report
/// on.
pub async fn on_guest_thread_releasing<R: Send + 'static, L: Send + 'static>(
    f: impl FnOnce() -> (R, L) + Send + 'static,
) -> Result<R, SandboxError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("warden-guest".into())
        .stack_size(GUEST_THREAD_STACK)
        .spawn(move || {
            let (result, spent) = f();
            let _ = tx.send(result);
            drop(spent);
        })
        .map_err(|e| SandboxError::Internal(format!("spawning a guest thread: {e}")))?;
    rx.await.map_err(|_| SandboxError::Internal("the guest thread panicked".into()))
}
