//! Where a fresh call's time goes: each phase of `Sandbox::run_fresh`, timed separately over
//! many runs, median reported. Run with `cargo bench --bench phases` after `scripts/setup`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use warden::runtime::Language;
use warden::sandbox::{CancelHandle, Workspace, on_guest_thread};

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

/// Page faults this thread has taken so far.
fn faults() -> i64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    u.ru_minflt + u.ru_majflt
}

fn main() {
    let sandbox = common::sandbox();
    let wsroot = common::home().workspaces();
    std::fs::create_dir_all(&wsroot).unwrap();
    for (lang, code) in [(Language::Python, "print('hello')"), (Language::Javascript, "console.log('hello')")] {
        if std::env::var("WARDEN_BENCH_LANG").is_ok_and(|l| l != lang.as_str()) {
            continue;
        }
        let spec = common::spec(lang, code);
        let (mut start_faults, mut run_faults) = (Vec::new(), Vec::new());
        let (mut thread, mut create, mut start, mut run, mut collect, mut drop_ws, mut total) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..300 {
            let t0 = Instant::now();
            let (sb, spec2, root) = (sandbox.clone(), spec.clone(), wsroot.clone());
            let phases = on_guest_thread(move || {
                let t1 = Instant::now();
                let ws = Workspace::create(&root, "p-").unwrap();
                let t2 = Instant::now();
                let cancel = CancelHandle::new();
                let f0 = faults();
                let mut g = sb.start_guest(&spec2, &ws, &cancel).unwrap().unwrap();
                let t3 = Instant::now();
                let f1 = faults();
                g.arm(&spec2.limits, &cancel, Vec::new()).unwrap();
                let r = g.run(&spec2.code);
                drop(g);
                let t4 = Instant::now();
                let f2 = faults();
                let _ = ws.collect_changes(256, u64::MAX);
                let t5 = Instant::now();
                drop(ws);
                let t6 = Instant::now();
                assert_eq!(r.outcome.as_str(), "ok");
                (t1, t2, t3, t4, t5, t6, f1 - f0, f2 - f1)
            })
            .unwrap();
            let t7 = Instant::now();
            thread.push(phases.0 - t0);
            create.push(phases.1 - phases.0);
            start.push(phases.2 - phases.1);
            run.push(phases.3 - phases.2);
            collect.push(phases.4 - phases.3);
            drop_ws.push(phases.5 - phases.4);
            total.push(t7 - t0);
            start_faults.push(phases.6);
            run_faults.push(phases.7);
        }
        println!(
            "{lang:<10} total {:>8.3?}  thread {:>8.3?}  workspace {:>8.3?}  start(instantiate+setup) {:>8.3?}  run {:>8.3?}  collect {:>8.3?}  remove {:>8.3?}",
            median(total),
            median(thread),
            median(create),
            median(start),
            median(run),
            median(collect),
            median(drop_ws)
        );
        println!("{lang:<10} page faults: start {}  run {}", median(start_faults), median(run_faults));
    }
}
