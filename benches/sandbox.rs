//! Engine-level latency of a fresh guest per call: Python hello, JavaScript hello, and a Python
//! `import numpy`. Each iteration is a whole call: workspace, instantiate, run, collect, drop.
//!
//! Run with `cargo bench --bench sandbox` after `scripts/setup`.

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use warden::home::Home;
use warden::policy::Policy;
use warden::runtime::engine::{EngineSettings, build_engine, spawn_epoch_ticker};
use warden::runtime::{Language, Runtimes};
use warden::sandbox::{CancelHandle, ExecSpec, Sandbox, Workspace, on_guest_thread};

fn sandbox() -> (Sandbox, Home) {
    let root = std::env::var_os("WARDEN_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/warden"));
    let home = Home::at(root);
    let engine = build_engine(EngineSettings::default()).expect("engine");
    std::mem::forget(spawn_epoch_ticker(&engine).expect("ticker"));
    let runtimes = Runtimes::load(&home, &engine, &Language::ALL).expect("runtimes installed (run scripts/setup)");
    (Sandbox::new(Arc::new(runtimes)), home)
}

fn call(sandbox: &Sandbox, home: &Home, language: Language, code: &str) {
    let policy = Policy::load("default").expect("policy");
    let spec = ExecSpec {
        language,
        code: code.into(),
        stdin: Vec::new(),
        limits: policy.limits(),
        env: policy.guest_env(),
        mounts: Vec::new(),
    };
    let sandbox = sandbox.clone();
    let root = home.workspaces();
    let report = on_guest_thread(move || {
        let ws = Workspace::create(&root, "bench-").expect("workspace");
        sandbox.run_fresh(&spec, &ws, &CancelHandle::new(), None).expect("run")
    })
    .expect("thread");
    assert_eq!(report.outcome.as_str(), "ok", "{report:?}");
}

fn fresh_guest(c: &mut Criterion) {
    let (sandbox, home) = sandbox();
    std::fs::create_dir_all(home.workspaces()).expect("workspaces");
    let mut g = c.benchmark_group("fresh_guest");
    g.bench_function("python_hello", |b| b.iter(|| call(&sandbox, &home, Language::Python, "print('hello')")));
    g.bench_function("javascript_hello", |b| b.iter(|| call(&sandbox, &home, Language::Javascript, "console.log('hello')")));
    g.sample_size(10);
    g.bench_function("python_import_numpy", |b| b.iter(|| call(&sandbox, &home, Language::Python, "import numpy")));
    g.finish();
}

criterion_group!(benches, fresh_guest);
criterion_main!(benches);
