//! Shared helpers for integration tests: where the installed runtimes are, and a loaded sandbox.
#![allow(dead_code)]

pub mod summary;

use std::path::PathBuf;
use std::sync::OnceLock;

use warden::engine::{EngineSettings, build_engine, spawn_epoch_ticker};
use warden::home::Home;
use warden::policy::Policy;
use warden::runtime::Language;
use warden::sandbox::{CancelHandle, ExecSpec, InputFile, Limits, RunReport, Sandbox, Workspace, on_guest_thread};

/// The data directory the test command installs runtimes into (`scripts/test` sets
/// WARDEN_HOME; the default matches it).
pub fn home() -> Home {
    let root = std::env::var_os("WARDEN_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/warden"));
    Home::at(root)
}

/// One engine and both runtimes per test binary. Panics with instructions when the runtimes are
/// not installed: the test command installs them first, so that is a setup error, not a skip.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let engine = build_engine(EngineSettings { max_instances: 32, parallel_compilation: false }).expect("engine");
        std::mem::forget(spawn_epoch_ticker(&engine).expect("ticker"));
        Sandbox::load(&home(), &engine, &Language::ALL).unwrap_or_else(|e| {
            panic!(
                "{e}\n(the tests need installed runtimes: run scripts/test, or `warden runtimes install` with WARDEN_HOME={:?})",
                home().root()
            )
        })
    })
}

pub fn default_limits() -> Limits {
    Policy::load("default").expect("default policy").limits()
}

/// A run request with the default policy's limits and environment.
pub fn spec(language: Language, code: &str) -> ExecSpec {
    let policy = Policy::load("default").expect("default policy");
    ExecSpec { language, code: code.to_string(), stdin: Vec::new(), limits: policy.limits(), env: policy.guest_env(), mounts: Vec::new() }
}

pub fn workspace() -> Workspace {
    let root = home().workspaces();
    std::fs::create_dir_all(&root).expect("workspaces dir");
    Workspace::create(&root, "test-").expect("workspace")
}

/// Runs `spec` in a fresh guest with `files` in /workspace; returns the report and workspace.
pub fn run_with(spec: ExecSpec, files: Vec<InputFile>, cancel: CancelHandle) -> (RunReport, Workspace) {
    let sandbox = sandbox().clone();
    let ws = workspace();
    ws.write_inputs(&files, spec.limits.workspace_bytes, spec.limits.workspace_files).expect("inputs");
    on_guest_thread(move || {
        let r = sandbox.run_fresh(&spec, &ws, &cancel, None).expect("sandbox error");
        (r, ws)
    })
    .expect("guest thread")
}

pub fn run(language: Language, code: &str) -> RunReport {
    run_with(spec(language, code), Vec::new(), CancelHandle::new()).0
}

pub fn py(code: &str) -> RunReport {
    run(Language::Python, code)
}

pub fn js(code: &str) -> RunReport {
    run(Language::Javascript, code)
}

/// Fails with the whole report when the outcome is not the expected one.
#[track_caller]
pub fn assert_outcome(r: &RunReport, outcome: &str) {
    assert_eq!(r.outcome.as_str(), outcome, "unexpected outcome; report: {r:#?}");
}

/// Reports a test (or part of one) that cannot run here, on the real stderr so it shows even
/// when the test harness captures output, and counts it in the suite's summary line.
pub fn skipped(reason: &str) {
    summary::skip(reason);
}
