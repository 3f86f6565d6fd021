//! The JavaScript runtime's recipe: QuickJS-NG compiled from its pinned sources with warden's own
//! reactor, then snapshotted with warden's console prelude loaded.
//!
//! `runtimes install` extracts the verified sources ([`super::pins::QUICKJS_SOURCE`]) and
//! [`REACTOR_C`] into the install directory and runs [`compile`] (Debian's `clang`, `lld` and
//! `wasi-libc`, or the compiler and sysroot named by `WARDEN_WASI_CC` and `WARDEN_WASI_SYSROOT`).
//! The result, a WASI reactor with the same `turn`/`host_alloc`/`host.call` ABI as the Python
//! runtime, is then advanced past [`init_turns`] and snapshotted by the sandbox
//! (`sandbox::snapshot::build`), so a fresh guest starts with the prelude already evaluated and
//! only needs [`CLAIM_EXPORT`] before the caller's code.
//!
//! Owns: the reactor's source, the compiler command and flags, and the snapshot's key. Does not
//! own: downloading and verifying the sources ([`super::install`]) or running a guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::digest::sha256_hex;

/// warden's reactor: the entry points the host calls (see the file's header).
pub const REACTOR_C: &str = include_str!("quickjs/reactor.c");

/// Where the install directory keeps the reactor's source, beside the extracted QuickJS-NG files.
pub const REACTOR_DEST: &str = "src/reactor.c";

/// The compiled reactor, relative to the install directory.
pub const MODULE_FILE: &str = "quickjs-reactor.wasm";

/// Readies a fresh guest made from the snapshot (constructors, seeds, working directory).
pub const CLAIM_EXPORT: &str = "warden_claim";

/// New seeds for `Math.random`, for a guest restored from another's image.
pub const RESEED_EXPORT: &str = "warden_reseed";

/// Bumped whenever the build or the snapshot recipe changes, so old snapshots are never reused.
const RECIPE_VERSION: &str = "2";

/// The translation units, relative to the install directory. `reactor.c` includes `quickjs.c`.
const SOURCES: &[&str] = &["src/reactor.c", "src/quickjs-libc.c", "src/libregexp.c", "src/libunicode.c", "src/dtoa.c"];

/// Compiler flags. The shadow stack goes first in linear memory, so a recursion too deep for it
/// runs off address 0 and traps instead of overwriting the heap (QuickJS-NG does not check its
/// own stack depth under WASI).
const FLAGS: &[&str] = &[
    "--target=wasm32-wasi",
    "-O2",
    "-std=gnu11",
    "-D_GNU_SOURCE",
    "-D_WASI_EMULATED_PROCESS_CLOCKS",
    "-D_WASI_EMULATED_SIGNAL",
    "-DQJS_BUILD_LIBC",
    "-Wno-everything",
    "-mexec-model=reactor",
    "-Wl,--stack-first",
    "-Wl,-z,stack-size=1048576",
    "-lwasi-emulated-signal",
    "-lwasi-emulated-process-clocks",
];

/// The hidden turns baked into the snapshot: warden's console prelude.
pub fn init_turns() -> Vec<String> {
    vec![super::JS_PRELUDE.to_string()]
}

/// Identifies the snapshot: the pinned sources, the reactor, the flags, the prelude, the recipe.
pub fn snapshot_key(sources_sha256: &str) -> String {
    let recipe = format!("{RECIPE_VERSION}\n{}\n{REACTOR_C}\n{}", FLAGS.join(" "), init_turns().join("\n---\n"));
    sha256_hex(format!("{sources_sha256}\n{recipe}").as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "no C compiler for WebAssembly: {cc} {why}. Install Debian's clang, lld, wasi-libc and libclang-rt-14-dev-wasm32 \
         (scripts/setup does), or set WARDEN_WASI_CC and WARDEN_WASI_SYSROOT"
    )]
    NoCompiler { cc: String, why: String },
    #[error(
        "no WASI C library under {sysroot:?} (looked for {libc:?}). Install Debian's wasi-libc (scripts/setup does), \
         or point WARDEN_WASI_SYSROOT at a wasi-sdk sysroot"
    )]
    NoSysroot { sysroot: PathBuf, libc: PathBuf },
    #[error("compiling QuickJS-NG failed ({cc}, exit {status}):\n{stderr}")]
    Failed { cc: String, status: String, stderr: String },
}

/// The compiler and sysroot to use: `WARDEN_WASI_CC` / `WARDEN_WASI_SYSROOT`, else Debian's
/// `clang` with wasi-libc's layout under `/usr` (`/usr/lib/wasm32-wasi`).
fn toolchain() -> Result<(String, PathBuf), CompileError> {
    let cc = std::env::var("WARDEN_WASI_CC").unwrap_or_else(|_| "clang".into());
    let sysroot = std::env::var_os("WARDEN_WASI_SYSROOT").map_or_else(|| PathBuf::from("/usr"), PathBuf::from);
    let libc = sysroot.join("lib/wasm32-wasi/libc.a");
    if !libc.is_file() {
        return Err(CompileError::NoSysroot { sysroot, libc });
    }
    match Command::new(&cc).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => Ok((cc, sysroot)),
        Ok(s) => Err(CompileError::NoCompiler { cc, why: format!("--version exited with {s}") }),
        Err(e) => Err(CompileError::NoCompiler { cc, why: e.to_string() }),
    }
}

/// Compiles the reactor in `dir` (which holds the extracted sources) into [`MODULE_FILE`].
/// About half a minute on 2 cores.
pub fn compile(dir: &Path) -> Result<PathBuf, CompileError> {
    let (cc, sysroot) = toolchain()?;
    let out = dir.join(MODULE_FILE);
    let output = Command::new(&cc)
        .args(FLAGS)
        .arg(format!("--sysroot={}", sysroot.display()))
        .arg("-I")
        .arg(dir.join("src"))
        .arg("-o")
        .arg(&out)
        .args(SOURCES.iter().map(|s| dir.join(s)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| CompileError::NoCompiler { cc: cc.clone(), why: e.to_string() })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(CompileError::Failed {
            cc,
            status: output.status.code().map_or_else(|| "signal".into(), |c| c.to_string()),
            stderr: stderr.chars().take(4000).collect(),
        });
    }
    Ok(out)
}
