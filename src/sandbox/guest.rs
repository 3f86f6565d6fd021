//! One live guest: a fresh `Store` and instance of a runtime, its WASI context, and the drivers
//! that run code in it (a runtime's `turn`, or a tool command's `_start`).
//!
//! A guest is armed with limits before each run and disarmed after, so a session can keep its
//! interpreter across turns while every turn gets its own fuel, deadline and output caps. Both
//! runtimes are reactors with the same entry points: `host_alloc(len)` for a buffer and
//! `turn(ptr, len) -> status` to run code in it.

use std::time::Instant;

use wasmtime::{Instance, InstancePre, Memory, Store, TypedFunc, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::control::{CancelHandle, Deadline};
use super::fsgate::FsGate;
use super::host::{ClockOrigin, GuestClock, GuestState};
use super::io::{CappedPipe, SharedInput};
use super::limits::{Limits, TrackingLimiter};
use super::outcome::{Exit, Phase, PhaseTime, RunFacts, classify};
use crate::runtime::Language;

/// A directory the policy mounts into guests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    pub host: std::path::PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// Fuel given for host-driven setup (instantiation, hidden turns). It is not charged to the
/// caller.
const SETUP_FUEL: u64 = u64::MAX / 4;

/// Everything needed to start a guest.
pub struct GuestSpec<'a> {
    pub pre: &'a InstancePre<GuestState>,
    /// The runtime, or `None` for a tool package (a plain WASI command).
    pub language: Option<Language>,
    /// The runtime's own read-only directories and their guest paths, in preopen order.
    pub ro_mounts: Vec<(std::path::PathBuf, &'static str)>,
    pub workspace: &'a super::workspace::Workspace,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: &'a [Mount],
}

/// A runtime's entry points.
struct ReactorExports {
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    turn: TypedFunc<(i32, i32), i32>,
}

pub struct Guest {
    store: Store<GuestState>,
    instance: Instance,
    language: Option<Language>,
    /// `None` for a tool package (a WASI command).
    reactor: Option<ReactorExports>,
    stdout: CappedPipe,
    stderr: CappedPipe,
    stdin: SharedInput,
    armed: Option<Armed>,
    /// How long this guest took to start, reported with its first run.
    start_phase: Option<PhaseTime>,
}

struct Armed {
    limits: Limits,
    started: Instant,
}

impl Guest {
    /// Builds the WASI context and instantiates the runtime. `limits` bound instantiation too.
    pub fn start(spec: &GuestSpec<'_>, limits: &Limits, cancel: &CancelHandle) -> wasmtime::Result<Guest> {
        let stdout = CappedPipe::new(limits.stdout_bytes);
        let stderr = CappedPipe::new(limits.stderr_bytes);
        let stdin = SharedInput::default();
        let origin = ClockOrigin::now();

        let mut b = WasiCtxBuilder::new();
        b.args(&spec.args)
            .envs(&spec.env)
            .stdin(stdin.clone())
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .monotonic_clock(GuestClock(origin.clone()))
            .allow_blocking_current_thread(true);
        for (host, guest) in &spec.ro_mounts {
            b.preopened_dir(host, guest, FsPerms::ReadOnly)?;
        }
        b.preopened_dir(spec.workspace.workspace_path(), "/workspace", FsPerms::ReadWrite)?;
        b.preopened_dir(spec.workspace.tmp_path(), "/tmp", FsPerms::ReadWrite)?;
        for m in spec.mounts {
            let perms = if m.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            b.preopened_dir(&m.host, &m.guest, perms)?;
        }

        let mut wasi = b.build_p1();
        let fsgate = FsGate::new(spec.workspace.quota(), &mut wasi);
        fsgate.set_limits(limits.workspace_bytes, limits.workspace_files);
        let state = GuestState {
            wasi,
            limiter: TrackingLimiter::new(limits.memory_bytes),
            deadline: Deadline::new(cancel.clone(), limits.timeout),
            fsgate: Some(fsgate),
            clock_origin: origin,
            door: None,
            outputs: [stdout.clone(), stderr.clone()],
        };
        let mut store = Store::new(spec.pre.module().engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(SETUP_FUEL)?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            cx.data_mut().on_tick().map_err(wasmtime::Error::new)?;
            Ok(UpdateDeadline::Continue(1))
        });
        let instance = spec.pre.instantiate(&mut store)?;
        let language = spec.language;
        let reactor = match language {
            Some(_) => Some(ReactorExports {
                memory: instance.get_memory(&mut store, "memory").ok_or_else(|| wasmtime::format_err!("the runtime exports no memory"))?,
                alloc: instance.get_typed_func(&mut store, "host_alloc")?,
                turn: instance.get_typed_func(&mut store, "turn")?,
            }),
            None => None,
        };
        Ok(Guest { store, instance, language, reactor, stdout, stderr, stdin, armed: None, start_phase: None })
    }

    /// Notes how long this guest took to start or be claimed (`phase`, from `start` until now),
    /// for its first report.
    pub fn started_at(&mut self, phase: Phase, start: Instant) {
        self.start_phase = Some(PhaseTime::until_now(phase, start));
    }

    /// Bytes of linear memory this guest holds now.
    pub fn memory_bytes(&self) -> u64 {
        self.reactor.as_ref().map_or(0, |rx| rx.memory.data_size(&self.store) as u64)
    }

    /// Starts the guest's monotonic clock again from zero (a guest prepared ahead, now claimed).
    pub fn restart_clock(&self) {
        self.store.data().clock_origin.restart();
    }

    pub fn language(&self) -> Option<Language> {
        self.language
    }

    /// Gives `f` the store and instance, for host-side work such as taking a snapshot.
    pub fn with_parts<R>(&mut self, f: impl FnOnce(&mut Store<GuestState>, Instance) -> R) -> R {
        f(&mut self.store, self.instance)
    }

    pub fn set_door(&mut self, door: Option<Box<dyn super::host::Door>>) {
        self.store.data_mut().door = door;
    }

    /// Prepares a run: fresh fuel, deadline, memory cap, output caps and stdin.
    pub fn arm(&mut self, limits: &Limits, cancel: &CancelHandle, stdin: Vec<u8>) -> wasmtime::Result<()> {
        let st = self.store.data_mut();
        st.deadline = Deadline::new(cancel.clone(), limits.timeout);
        st.limiter = TrackingLimiter::new(limits.memory_bytes);
        if let Some(gate) = &st.fsgate {
            gate.set_limits(limits.workspace_bytes, limits.workspace_files);
        }
        self.stdout.take(limits.stdout_bytes);
        self.stderr.take(limits.stderr_bytes);
        cancel.output().attach(&self.stdout, &self.stderr);
        self.stdin.set(stdin);
        self.store.set_fuel(limits.fuel)?;
        self.armed = Some(Armed { limits: limits.clone(), started: Instant::now() });
        Ok(())
    }

    /// Runs host-chosen source as a hidden turn, with setup fuel, and discards its output. Fails
    /// if the turn does not succeed: that is a runtime bug, not the caller's.
    pub fn hidden_turn(&mut self, code: &str, cancel: &CancelHandle, timeout: std::time::Duration) -> wasmtime::Result<()> {
        self.store.data_mut().deadline = Deadline::new(cancel.clone(), timeout);
        self.store.set_fuel(SETUP_FUEL)?;
        let status = self.turn(code)?;
        let (_, _) = self.stdout.take(0);
        let (err, _) = self.stderr.take(0);
        if status != 0 {
            wasmtime::bail!("setup turn failed with status {status}: {}", String::from_utf8_lossy(&err));
        }
        Ok(())
    }

    /// Calls a runtime's export that takes and returns nothing (JavaScript's `warden_claim`),
    /// with setup fuel and `timeout`.
    pub fn setup_call(&mut self, export: &str, cancel: &CancelHandle, timeout: std::time::Duration) -> wasmtime::Result<()> {
        self.store.data_mut().deadline = Deadline::new(cancel.clone(), timeout);
        self.store.set_fuel(SETUP_FUEL)?;
        let f = self.instance.get_typed_func::<(), ()>(&mut self.store, export)?;
        f.call(&mut self.store, ())
    }

    /// Sends `code` to the runtime's `turn` export. Returns the raw status (for Python, `>= 256`
    /// means the interpreter asked to exit).
    fn turn(&mut self, code: &str) -> wasmtime::Result<i32> {
        let rx = self.reactor.as_ref().ok_or_else(|| wasmtime::format_err!("a tool command has no turn"))?;
        let (memory, alloc, turn) = (rx.memory, rx.alloc.clone(), rx.turn.clone());
        let len = i32::try_from(code.len()).map_err(|_| wasmtime::format_err!("code too large"))?;
        let ptr = alloc.call(&mut self.store, len)?;
        let fits = ptr != 0 && (ptr as u32 as usize).checked_add(code.len()).is_some_and(|e| e <= memory.data_size(&self.store));
        // A failed allocation is passed on as a null pointer: the guest reports running out of
        // memory.
        let ptr = if fits {
            memory.write(&mut self.store, ptr as u32 as usize, code.as_bytes())?;
            ptr
        } else {
            0
        };
        turn.call(&mut self.store, (ptr, len))
    }

    /// Runs the caller's code and reports how it went. The guest must have been armed.
    pub fn run(&mut self, code: &str) -> super::outcome::RunReport {
        let exit = match self.language {
            Some(_) => match self.turn(code) {
                Ok(v) => Exit::Status(v),
                Err(e) => Exit::Failed(e),
            },
            // Tool packages are commands: they read their input from argv and stdin.
            None => {
                let start = self.instance.get_typed_func::<(), ()>(&mut self.store, "_start");
                match start.and_then(|f| f.call(&mut self.store, ())) {
                    Ok(()) => Exit::Status(0),
                    Err(e) => Exit::Failed(e),
                }
            }
        };
        self.report(exit)
    }

    fn report(&mut self, exit: Exit) -> super::outcome::RunReport {
        let armed = self.armed.take().expect("run() on an armed guest");
        let fuel_left = self.store.get_fuel().unwrap_or(0);
        let fuel_used = armed.limits.fuel.saturating_sub(fuel_left);
        let quota_refused = self.store.data().fsgate.as_ref().is_some_and(|g| g.refused() > 0);
        let (out, out_cut) = self.stdout.take(armed.limits.stdout_bytes);
        let (err, err_cut) = self.stderr.take(armed.limits.stderr_bytes);
        let facts = RunFacts {
            language: self.language,
            memory_refused: self.store.data().limiter.memory_refused,
            truncated: out_cut || err_cut,
            quota_refused,
            limits: armed.limits.clone(),
        };
        let (outcome, exit_code, message) = classify(&exit, &facts);
        // A turn that returned leaves its interpreter usable, unless Python asked to exit; a trap
        // or `proc_exit` (JavaScript's `std.exit`) ends it.
        let ended_session = match (&exit, self.language) {
            (Exit::Status(v), Some(Language::Python)) => *v >= 256,
            (Exit::Status(_), Some(Language::Javascript)) => false,
            _ => true,
        };
        let exit_code = match (self.language, exit_code) {
            (Some(Language::Python), Some(v)) if v >= 256 || v < 0 => Some(v & 0xFF),
            (_, c) => c,
        };
        super::outcome::RunReport {
            outcome,
            exit_code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            truncated: facts.truncated,
            duration_ms: armed.started.elapsed().as_millis() as u64,
            fuel_used,
            artifacts: Vec::new(),
            message,
            ended_session,
            phases: self.start_phase.take().into_iter().chain([PhaseTime::until_now(Phase::GuestRun, armed.started)]).collect(),
        }
    }
}
