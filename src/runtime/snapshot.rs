//! warden's own CPython snapshot: the upstream snapshot advanced past its first turn with the
//! heavy imports done (numpy, pandas, matplotlib), so a fresh guest answers in about the time of
//! a warm turn.
//!
//! Built once by `runtimes install` with `wasmtime-wizer`: the upstream module is instrumented,
//! instantiated with warden's real linker and guest layout, driven through a few host turns, and
//! snapshotted. This module owns the recipe (the turns, the key, the module patch); running it
//! in a guest is the sandbox's part (`sandbox::snapshot::build`), since only the sandbox knows
//! the host a guest is linked against. Two things a post-turn snapshot would otherwise get wrong
//! are handled by the recipe:
//!
//! * wasi-libc caches its table of preopens on first use; the cache is reset (through an export
//!   added to the module) right before the snapshot, so guests see the preopens of their own call.
//! * The interpreter applies argv and environment, and seeds its random generators, only on its
//!   first turn. Every fresh guest therefore runs [`refresh_turn`] first: the call's environment,
//!   new seeds for `random` and numpy from WASI randomness, a fresh `tempfile` name sequence, and
//!   `/workspace` as its working directory.

use crate::digest::sha256_hex;

/// wasi-libc's internal function that forgets cached preopens, and the name warden exports it as.
pub const RESET_PREOPENS_INTERNAL: &str = "__wasilibc_reset_preopens";
pub const RESET_PREOPENS_EXPORT: &str = "warden_reset_preopens";

/// Bumped whenever the recipe below changes, so old snapshots are never reused.
const RECIPE_VERSION: &str = "3";

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
        # 624 words of entropy through init_by_array: a quarter of set_state's time, and it
        # drops any cached Gaussian too.
        np.random.seed(np.frombuffer(_os.urandom(2496), dtype=np.uint32))
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
        // stdout is not a terminal, so CPython buffers it in blocks; line by line instead, as
        // on a terminal, so a caller following the output while it runs sees each line when it
        // is printed (stderr is line-buffered already).
        "import sys\nsys.stdout.reconfigure(line_buffering=True)\ndel sys".to_string(),
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
    add_exports(wasm, &[(export.to_string(), wasm_encoder::ExportKind::Func, index)])
}

/// Prefix of the exports [`export_mutable_globals`] adds; the rest of the name is the global's
/// index.
pub const GLOBAL_EXPORT_PREFIX: &str = "warden_global_";

/// Exports every mutable global the module defines (as `warden_global_<index>`), so the host can
/// read a live guest's globals (its stack pointer, say) and set them in another instance: with
/// linear memory, they are the whole of a guest's state that lives in the instance.
pub fn export_mutable_globals(wasm: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    use wasmparser::{Parser, Payload, TypeRef};
    let mut imported = 0u32;
    let mut mutable = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::ImportSection(imports) => {
                for import in imports {
                    if matches!(import?.ty, TypeRef::Global(_)) {
                        imported += 1;
                    }
                }
            }
            Payload::GlobalSection(globals) => {
                for (i, g) in globals.into_iter().enumerate() {
                    if g?.ty.mutable {
                        mutable.push(imported + i as u32);
                    }
                }
            }
            _ => {}
        }
    }
    let exports: Vec<_> =
        mutable.into_iter().map(|i| (format!("{GLOBAL_EXPORT_PREFIX}{i}"), wasm_encoder::ExportKind::Global, i)).collect();
    add_exports(wasm, &exports)
}

/// Copies `wasm` with `extra` added to its export section; every other section is copied
/// verbatim.
fn add_exports(wasm: &[u8], extra: &[(String, wasm_encoder::ExportKind, u32)]) -> Result<Vec<u8>, SnapshotError> {
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
            for (name, kind, index) in extra {
                section.export(name, *kind, *index);
            }
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
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &patched).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance.get_typed_func::<(), i32>(&mut store, "visible").unwrap();
        assert_eq!(f.call(&mut store, ()).unwrap(), 7);
        assert!(matches!(export_internal_function(&wasm, "missing", "x"), Err(SnapshotError::NoSuchFunction(_))));
    }

    #[test]
    fn mutable_globals_are_exported_by_index() {
        let wasm = wat::parse_str(
            r#"(module (import "m" "g" (global i32)) (global $sp (mut i32) (i32.const 5)) (global i64 (i64.const 1))
               (global (mut f64) (f64.const 2.5)) (func (export "f")))"#,
        )
        .unwrap();
        let patched = export_mutable_globals(&wasm).unwrap();
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &patched).unwrap();
        let names: Vec<_> = module.exports().map(|e| e.name().to_string()).collect();
        assert_eq!(names, ["f", "warden_global_1", "warden_global_3"]);
    }
}
