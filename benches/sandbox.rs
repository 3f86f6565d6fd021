//! Engine-level latency of a fresh guest per call: Python hello, JavaScript hello, and a Python
//! `import numpy`. Each iteration is a whole call: workspace, instantiate, run, collect, drop.
//!
//! Run with `cargo bench --bench sandbox` after `scripts/setup`.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use warden::runtime::Language;
use warden::sandbox::CancelHandle;

fn call(language: Language, code: &str) {
    let (report, _ws) = common::run_with(common::spec(language, code), Vec::new(), CancelHandle::new());
    assert_eq!(report.outcome.as_str(), "ok", "{report:?}");
}

fn fresh_guest(c: &mut Criterion) {
    let mut g = c.benchmark_group("fresh_guest");
    g.bench_function("python_hello", |b| b.iter(|| call(Language::Python, "print('hello')")));
    g.bench_function("javascript_hello", |b| b.iter(|| call(Language::Javascript, "console.log('hello')")));
    g.sample_size(10);
    g.bench_function("python_import_numpy", |b| b.iter(|| call(Language::Python, "import numpy")));
    g.finish();
}

criterion_group!(benches, fresh_guest);
criterion_main!(benches);
