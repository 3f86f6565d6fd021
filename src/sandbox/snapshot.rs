//! Running a runtime's snapshot recipe in a real guest at install time.
//!
//! The recipes themselves (the turns, the cache key, the module patch) are
//! [`crate::runtime::snapshot`] (Python) and [`crate::runtime::quickjs`] (JavaScript); this
//! module drives them with the sandbox's own linker and guest layout, so the snapshot matches
//! what serving guests are instantiated with. The installer reaches it through
//! [`crate::runtime::install::Installer::snapshot`].

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::{CancelHandle, Guest, GuestSpec, Limits, PYTHON_ARGV0, Workspace};
use crate::engine::{GUEST_THREAD_STACK, init_engine, spawn_epoch_ticker};
use crate::runtime::install::Progress;
use crate::runtime::snapshot::{
    RESET_PREOPENS_EXPORT, RESET_PREOPENS_INTERNAL, SnapshotError, export_internal_function, export_mutable_globals,
};
use crate::runtime::{Build, RuntimeSpec, quickjs};

/// Builds the snapshot module from the installed files in `dir`. Takes a few seconds of init
/// turns plus one unoptimised compile of the instrumented module.
///
/// Python: the upstream snapshot, advanced past warden's import turns, with wasi-libc's cached
/// preopens forgotten before the snapshot. JavaScript: warden's reactor with the prelude
/// evaluated; its C constructors (which record preopens) have never run, and run when a guest
/// is claimed.
pub fn build(dir: &Path, spec: &'static RuntimeSpec, progress: &Progress) -> Result<Vec<u8>, SnapshotError> {
    let err = |e: wasmtime::Error| SnapshotError::Wasm(format!("{e:#}"));
    let base = std::fs::read(dir.join(spec.module_file)).map_err(|e| SnapshotError::Wasm(e.to_string()))?;
    let (patched, turns, argv0) = match spec.build {
        Build::PythonSnapshot => (
            export_internal_function(&base, RESET_PREOPENS_INTERNAL, RESET_PREOPENS_EXPORT)?,
            crate::runtime::snapshot::init_turns(),
            PYTHON_ARGV0,
        ),
        Build::QuickJsSnapshot => (base.clone(), quickjs::init_turns(), "qjs"),
    };
    drop(base);
    let wizer = wasmtime_wizer::Wizer::new();
    let (cx, instrumented) = wizer.instrument(&patched).map_err(err)?;
    let engine = init_engine().map_err(err)?;
    let module = progress.step(&format!("{}: compiling the instrumented runtime (unoptimised, once)", spec.language), || {
        wasmtime::Module::new(&engine, &instrumented)
    });
    let module = module.map_err(err)?;
    drop(instrumented);
    let pre = super::linker(&engine).and_then(|l| l.instantiate_pre(&module)).map_err(err)?;
    let ticker = spawn_epoch_ticker(&engine).map_err(|e| SnapshotError::Wasm(e.to_string()))?;

    let scratch = tempfile::tempdir().map_err(|e| SnapshotError::Wasm(e.to_string()))?;
    let ws = Workspace::create(scratch.path(), "snapshot-").map_err(|e| SnapshotError::Wasm(e.to_string()))?;
    let limits = Limits {
        timeout: std::time::Duration::from_secs(600),
        memory_bytes: 2 << 30,
        fuel: u64::MAX / 4,
        stdout_bytes: 1 << 20,
        stderr_bytes: 1 << 20,
        workspace_bytes: 1 << 30,
        workspace_files: 100_000,
    };
    let gspec = GuestSpec {
        pre: &pre,
        language: Some(spec.language),
        ro_mounts: spec.ro_mounts.iter().map(|(rel, guest)| (dir.join(rel), *guest)).collect(),
        workspace: &ws,
        args: vec![argv0.to_string()],
        env: vec![("TMPDIR".into(), "/tmp".into()), ("HOME".into(), "/tmp".into())],
        mounts: &[],
    };
    let cancel = CancelHandle::new();
    let snapshot = progress.step(&format!("{}: running the runtime's first turns", spec.language), || {
        // Guests need a big native stack; run the whole build on such a thread.
        let run = || -> Result<Vec<u8>, SnapshotError> {
            let mut guest = Guest::start(&gspec, &limits, &cancel).map_err(err)?;
            for turn in &turns {
                guest.hidden_turn(turn, &cancel, limits.timeout).map_err(err)?;
            }
            guest.with_parts(|store, instance| {
                if spec.build == Build::PythonSnapshot {
                    let reset = instance.get_typed_func::<(), ()>(&mut *store, RESET_PREOPENS_EXPORT).map_err(err)?;
                    reset.call(&mut *store, ()).map_err(err)?;
                }
                let mut state = wasmtime_wizer::WasmtimeWizer { store, instance };
                block_on_ready(wizer.snapshot(&cx, &mut state)).map_err(err)
            })
        };
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(GUEST_THREAD_STACK)
                .spawn_scoped(s, run)
                .map_err(|e| SnapshotError::Wasm(e.to_string()))?
                .join()
                .map_err(|_| SnapshotError::Wasm("the snapshot thread panicked".into()))?
        })
    })?;
    drop(ticker);
    // A served guest's globals must be readable and settable, so its state can be captured and
    // put into another instance (`super::image`).
    export_mutable_globals(&snapshot)
}

/// Drives a future that never waits (wizer's snapshot is `async` only in signature).
fn block_on_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
