//! The adversarial suite: escape and abuse attempts made through the real `warden serve` over
//! MCP. Every case names the layer expected to stop it, asserts containment (what the attempt
//! saw and what the host still holds), and then proves the server still answers.
//!
//! The inventory, with the layer of each case, is in SECURITY.md.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/harness.rs"]
mod harness;

mod audit;
mod binding;
mod edge;
mod exhaustion;
mod fairness;
mod faults;
mod filesystem;
mod host;
mod hostwrites;
mod isolation;
mod ownfiles;
#[path = "../common/packages.rs"]
mod packages;
mod quota;
mod requests;
mod soak;
mod tools;

use std::io::Write;

use serde_json::{Value, json};

use harness::{Client, exec};

/// The layer a case expects to stop the attempt.
#[derive(Clone, Copy, Debug)]
pub enum Layer {
    /// Wasmtime and WASI preview1: the guest has no capability for it.
    Wasi,
    /// The server's request validation and the isolation profile, before anything runs.
    Policy,
    /// Fuel, deadline, memory, output and workspace limits.
    Limits,
    /// Host confinement: landlock.
    Landlock,
    /// Host confinement: seccomp.
    Seccomp,
}

/// Announces a case (visible with `--nocapture`, and in the CI log on failure), and counts it in
/// the summary line printed at exit (`security: N passed, F failed, K skipped`).
pub fn case(name: &str, layer: Layer) {
    common::summary::case();
    let _ = writeln!(std::io::stderr(), "case {name}: expected to be stopped by {layer:?}");
}

/// Proves the server still answers with a correct result.
pub async fn alive(client: &Client) {
    let (_, s) = exec(client, json!({"language": "python", "code": "print(6 * 7)"})).await;
    assert_eq!(s["stdout"], "42\n", "the server no longer answers correctly: {s}");
}

/// Runs one attempt through `execute_code` and returns its structured result; then checks the
/// server still answers.
pub async fn attempt(client: &Client, name: &str, layer: Layer, args: Value) -> Value {
    case(name, layer);
    let (_, s) = exec(client, args).await;
    alive(client).await;
    s
}

/// Python that runs each named probe and prints `NAME BLOCKED <exception> <errno name or ->` or
/// `NAME LEAK <value>`.
pub fn py_probes<S: AsRef<str>>(probes: &[(&str, S)]) -> Value {
    let mut code = String::from(
        "import errno as _errno\ndef _t(name, f):\n    try:\n        r = f()\n        print(name, 'LEAK', repr(r)[:200])\n    except BaseException as e:\n        n = getattr(e, 'errno', None)\n        print(name, 'BLOCKED', type(e).__name__, _errno.errorcode.get(n, n) if n is not None else '-')\n",
    );
    for (name, expr) in probes {
        code.push_str(&format!("_t({name:?}, lambda: {})\n", expr.as_ref()));
    }
    json!({"language": "python", "code": code})
}

/// JavaScript that runs each named probe; `null`, `undefined` or `false` count as refused (the
/// QuickJS `std`/`os` calls report failure that way).
pub fn js_probes<S: AsRef<str>>(probes: &[(&str, S)]) -> Value {
    let mut code = String::from(
        "function _t(n, f) { try { const r = f(); print(n, (r === null || r === undefined || r === false) ? 'BLOCKED null' : 'LEAK ' + String(r).slice(0, 200)); } catch (e) { print(n, 'BLOCKED ' + e.name); } }\n",
    );
    for (name, expr) in probes {
        code.push_str(&format!("_t({name:?}, () => {});\n", expr.as_ref()));
    }
    json!({"language": "javascript", "code": code})
}

/// Errno values a guest gets when WASI itself refuses: no capability for the path or
/// descriptor (`ENOTCAPABLE`, `EBADF`, `ENOENT` outside every preopen), an operation preview1
/// or the preopen's permissions do not offer (`ENOSYS`, `ENOTSUP`, `EPERM`, `EACCES`, `EROFS`),
/// and the path-resolution refusals of escapes (`ELOOP`, `ENOTDIR`, `EXDEV`, `EINVAL`, `EISDIR`).
pub const WASI_ERRNOS: &[&str] = &[
    "ENOTCAPABLE",
    "EBADF",
    "ENOENT",
    "ENOSYS",
    "ENOTSUP",
    "EOPNOTSUPP",
    "EPERM",
    "EACCES",
    "EROFS",
    "ELOOP",
    "ENOTDIR",
    "EXDEV",
    "EINVAL",
    "EISDIR",
];

/// Python exceptions that say the WASI build has no such facility at all (no `fork`, no
/// threads, no `ctypes`).
pub const WASI_MISSING: &[&str] = &["AttributeError", "ModuleNotFoundError", "ImportError", "NotImplementedError", "RuntimeError"];

/// Runs probes as one call per probe set and asserts every probe was refused, and, where the
/// layer is observable from inside the guest, that it was the expected one.
pub async fn all_blocked<S>(client: &Client, name: &str, layer: Layer, args: Value, probes: &[(&str, S)]) {
    let s = attempt(client, name, layer, args).await;
    let out = s["stdout"].as_str().unwrap_or_default();
    for (probe, _) in probes {
        let line =
            out.lines().find(|l| l.starts_with(&format!("{probe} "))).unwrap_or_else(|| panic!("{name}/{probe}: no result line in {s}"));
        assert!(line.contains(" BLOCKED"), "{name}/{probe} was not contained: {line}\n{s}");
        if let Layer::Wasi = layer {
            // WASI refuses inside the guest: the probe got an error and the guest went on (a
            // limit or the host confinement would have ended the call instead).
            assert_eq!(s["outcome"], "ok", "{name}/{probe}: the call did not run to its end: {s}");
            let words: Vec<&str> = line.split_whitespace().collect();
            // Python: `NAME BLOCKED TYPE ERRNO`.
            if words.len() == 4 {
                let (kind, errno) = (words[2], words[3]);
                let wasi =
                    if errno == "-" { WASI_MISSING.contains(&kind) || kind.ends_with("Error") } else { WASI_ERRNOS.contains(&errno) };
                assert!(wasi, "{name}/{probe}: refused by something other than WASI? {line}");
            }
        }
    }
}
