//! warden's own CPython snapshot: the upstream snapshot advanced past its first turn with the
//! heavy imports done (numpy, pandas, matplotlib), so a fresh guest answers in about the time of
//! a warm turn.
//!
//! Built once by `runtimes install` with `wasmtime-wizer`: the upstream module is instrumented,
//! instantiated with warden's real linker and guest layout, driven through a few host turns, and
//! snapshotted. Two things a post-turn snapshot would otherwise get wrong are handled here:
//!
//! * wasi-libc caches its table of preopens on first use; the cache is reset (through an export
//!   added to the module) right before the snapshot, so guests see the preopens of their own call.
//! * The interpreter applies argv and environment, and seeds its random generators, only on its
//!   first turn. Every fresh guest therefore runs [`refresh_turn`] first: the call's environment,
//!   new seeds for `random` and numpy from WASI randomness, a fresh `tempfile` name sequence, and
//!   `/workspace` as its working directory.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::{Engine, OptLevel};

use crate::digest::sha256_hex;

/// wasi-libc's internal function that forgets cached preopens, and the name warden exports it as.
const RESET_PREOPENS_INTERNAL: &str = "__wasilibc_reset_preopens";
pub const RESET_PREOPENS_EXPORT: &str = "warden_reset_preopens";

/// Bumped whenever the recipe below changes, so old snapshots are never reused.
const RECIPE_VERSION: &str = "1";

/// Source of the private `_warden` module defined in the snapshot.
const WARDEN_MODULE: &str = r#"
import os as _os, sys as _sys

def refresh(env):
    _os.environ.clear()
    _os.environ.update(env)
    import random
    random.seed()
    np = _sys.modules.get('numpy')
    if np is not None:
        state = np.frombuffer(_os.urandom(2496), dtype=np.uint32)
        np.random.set_state(('MT19937', state, 624, 0, 0.0))
    tempfile = _sys.modules.get('tempfile')
    if tempfile is not None:
        tempfile._name_sequence = None
    logging = _sys.modules.get('logging')
    if logging is not None:
        import time
        logging._startTime = time.time_ns()
    _os.chdir('/workspace')
    __import__('_reactor')._turns = 0
"#;

/// The host-driven turns baked into the snapshot, in order.
pub fn init_turns() -> Vec<String> {
    vec![
        // The reactor's one-time setup (argv, environment, paths) runs on the first turn.
        "print(end='')".to_string(),
        // The expensive imports; names are deleted so `__main__` starts clean.
        "import json, re, csv, math, statistics, datetime, collections, itertools, functools, random, tempfile, logging\n\
         import numpy, pandas\n\
         import matplotlib\n\
         matplotlib.use('Agg')\n\
         import matplotlib.pyplot\n\
         del json, re, csv, math, statistics, datetime, collections, itertools, functools, random, tempfile, logging\n\
         del numpy, pandas, matplotlib"
            .to_string(),
        format!(
            "import sys, types\n_m = types.ModuleType('_warden')\nexec({src:?}, _m.__dict__)\nsys.modules['_warden'] = _m\ndel sys, types, _m",
            src = WARDEN_MODULE
        ),
        "import gc\ngc.collect()\ngc.freeze()\ndel gc".to_string(),
    ]
}

/// The hidden first turn of every fresh guest started from the snapshot.
pub fn refresh_turn(env: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> =
        env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    // A JSON object of strings is also a valid Python dict literal.
    format!("__import__('_warden').refresh({})", serde_json::Value::Object(map))
}

/// Identifies a snapshot: the upstream module, the stdlib it imported from, and the recipe.
pub fn snapshot_key(module_sha256: &str, stdlib_sha256: &str) -> String {
    let recipe = format!("{RECIPE_VERSION}\n{}\n{WARDEN_MODULE}", init_turns().join("\n---\n"));
    sha256_hex(format!("{module_sha256}\n{stdlib_sha256}\n{recipe}").as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the module has no function named {0} (its name section changed); the pinned build is not the expected one")]
    NoSuchFunction(&'static str),
    #[error("parsing the module: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    #[error("{0}")]
    Wasm(String),
}

/// Adds an export named `export` for the function the name section calls `internal`.
pub fn export_internal_function(wasm: &[u8], internal: &'static str, export: &str) -> Result<Vec<u8>, SnapshotError> {
    use wasmparser::{KnownCustom, Name, Parser, Payload};
    let mut index = None;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CustomSection(c) = payload? {
            if let KnownCustom::Name(names) = c.as_known() {
                for sub in names {
                    if let Name::Function(map) = sub? {
                        for naming in map {
                            let naming = naming?;
                            if naming.name == internal {
                                index = Some(naming.index);
                            }
                        }
                    }
                }
            }
        }
    }
    let index = index.ok_or(SnapshotError::NoSuchFunction(internal))?;

    // Copy every section verbatim except the export section, which is re-encoded with one more
    // entry.
    let mut out = wasm[..8].to_vec();
    let mut rest = &wasm[8..];
    let mut added = false;
    while !rest.is_empty() {
        let id = rest[0];
        let mut reader = wasmparser::BinaryReader::new(&rest[1..], 0);
        let size = reader.read_var_u32()? as usize;
        let header = 1 + reader.original_position();
        let body = rest.get(header..header + size).ok_or_else(|| SnapshotError::Wasm("truncated section".into()))?;
        if id == 7 {
            let exports = wasmparser::ExportSectionReader::new(wasmparser::BinaryReader::new(body, 0))?;
            let mut section = wasm_encoder::ExportSection::new();
            for e in exports {
                let e = e?;
                let kind = match e.kind {
                    wasmparser::ExternalKind::Func => wasm_encoder::ExportKind::Func,
                    wasmparser::ExternalKind::Table => wasm_encoder::ExportKind::Table,
                    wasmparser::ExternalKind::Memory => wasm_encoder::ExportKind::Memory,
                    wasmparser::ExternalKind::Global => wasm_encoder::ExportKind::Global,
                    wasmparser::ExternalKind::Tag => wasm_encoder::ExportKind::Tag,
                };
                section.export(e.name, kind, e.index);
            }
            section.export(export, wasm_encoder::ExportKind::Func, index);
            out.push(7);
            wasm_encoder::Encode::encode(&section, &mut out);
            added = true;
        } else {
            out.extend_from_slice(&rest[..header + size]);
        }
        rest = &rest[header + size..];
    }
    if !added {
        return Err(SnapshotError::Wasm("the module has no export section".into()));
    }
    Ok(out)
}

/// An engine for running the instrumented module once: same features as the serving engine,
/// but compiled without optimisation, since the code runs for a few seconds and is thrown away.
pub fn init_engine() -> wasmtime::Result<Engine> {
    let mut cfg = wasmtime::Config::new();
    cfg.consume_fuel(true)
        .epoch_interruption(true)
        .wasm_exceptions(true)
        .max_wasm_stack(super::engine::MAX_WASM_STACK)
        .async_stack_size(super::engine::MAX_WASM_STACK + (2 << 20))
        .cranelift_opt_level(OptLevel::None)
        .parallel_compilation(true);
    Engine::new(&cfg)
}

/// Drives a future that never waits (wizer's snapshot is `async` only in signature).
pub fn block_on_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_turn_escapes_the_environment_as_a_literal() {
        let t = refresh_turn(&[("A".into(), "x'\"\n\\y".into())]);
        assert_eq!(t, r#"__import__('_warden').refresh({"A":"x'\"\n\\y"})"#);
    }

    #[test]
    fn an_export_is_added_for_a_named_function() {
        let wasm = wat::parse_str(r#"(module (func $hidden (result i32) i32.const 7) (func (export "other")))"#).unwrap();
        let patched = export_internal_function(&wasm, "hidden", "visible").unwrap();
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, &patched).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance.get_typed_func::<(), i32>(&mut store, "visible").unwrap();
        assert_eq!(f.call(&mut store, ()).unwrap(), 7);
        assert!(matches!(export_internal_function(&wasm, "missing", "x"), Err(SnapshotError::NoSuchFunction(_))));
    }
}

/// Builds the snapshot module from the installed upstream files in `dir`. Takes a few seconds of
/// init turns plus one unoptimised compile of the instrumented module.
pub fn build(
    dir: &std::path::Path,
    spec: &'static super::RuntimeSpec,
    progress: &super::install::Progress,
) -> Result<Vec<u8>, SnapshotError> {
    use crate::sandbox::{CancelHandle, Guest, GuestSpec, Limits, Workspace};
    let err = |e: wasmtime::Error| SnapshotError::Wasm(format!("{e:#}"));
    let base = std::fs::read(dir.join(spec.module_file)).map_err(|e| SnapshotError::Wasm(e.to_string()))?;
    let patched = export_internal_function(&base, RESET_PREOPENS_INTERNAL, RESET_PREOPENS_EXPORT)?;
    drop(base);
    let wizer = wasmtime_wizer::Wizer::new();
    let (cx, instrumented) = wizer.instrument(&patched).map_err(err)?;
    let engine = init_engine().map_err(err)?;
    let module = progress.step(&format!("{}: compiling the instrumented interpreter (unoptimised, once)", spec.language), || {
        wasmtime::Module::new(&engine, &instrumented)
    });
    let module = module.map_err(err)?;
    drop(instrumented);
    let pre = crate::sandbox::linker(&engine).and_then(|l| l.instantiate_pre(&module)).map_err(err)?;
    let ticker = super::engine::spawn_epoch_ticker(&engine).map_err(|e| SnapshotError::Wasm(e.to_string()))?;

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
        args: vec![crate::sandbox::PYTHON_ARGV0.to_string()],
        env: vec![("TMPDIR".into(), "/tmp".into()), ("HOME".into(), "/tmp".into())],
        mounts: &[],
    };
    let cancel = CancelHandle::new();
    let snapshot = progress.step(&format!("{}: running the interpreter's first turns (imports)", spec.language), || {
        // Guests need a big native stack; run the whole build on such a thread.
        let run = || -> Result<Vec<u8>, SnapshotError> {
            let mut guest = Guest::start(&gspec, &limits, &cancel).map_err(err)?;
            for turn in init_turns() {
                guest.python_hidden_turn(&turn, &cancel, limits.timeout).map_err(err)?;
            }
            guest.with_parts(|store, instance| {
                let reset = instance.get_typed_func::<(), ()>(&mut *store, RESET_PREOPENS_EXPORT).map_err(err)?;
                reset.call(&mut *store, ()).map_err(err)?;
                let mut state = wasmtime_wizer::WasmtimeWizer { store, instance };
                block_on_ready(wizer.snapshot(&cx, &mut state)).map_err(err)
            })
        };
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(super::engine::GUEST_THREAD_STACK)
                .spawn_scoped(s, run)
                .map_err(|e| SnapshotError::Wasm(e.to_string()))?
                .join()
                .map_err(|_| SnapshotError::Wasm("the snapshot thread panicked".into()))?
        })
    })?;
    drop(ticker);
    Ok(snapshot)
}
