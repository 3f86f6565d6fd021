//! What the process split costs per call: a fresh hello run in-process (the executor library,
//! which `serve` no longer uses: it is kept for comparisons like this one) and the same call
//! through an executor process over the channel, the front's whole share included (placement,
//! the call's directory, framing, validating the reply). The two alternate call by call, in
//! alternating order, so both see the same noisy machine; the figure that matters is the median
//! of the paired differences. CPU per call adds the executor process's CPU to this process's.
//!
//! `cargo bench --bench split` after `scripts/setup` (`WARDEN_BENCH_RUNS`, default 200;
//! `WARDEN_BENCH_HARDENING=off` starts the executor unconfined, to tell the channel's cost from
//! the confinement's, default `best-effort` as `serve` runs it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden::executor::Executor;
use warden::policy::{HardeningMode, Policy};
use warden::runtime::Language;
use warden::sandbox::{CancelHandle, ExecSpec, Outcome, Workspace};
use warden::server::ExecutorPlan;
use warden::service::Profiles;
use warden::service::calls::run_fresh;
use warden::service::executors::DirectLauncher;
use warden::tools::ToolRegistry;

fn runs() -> usize {
    std::env::var("WARDEN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// User plus system CPU seconds of `pid` (`self` for this process), from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &text[text.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn main() {
    let n = runs();
    let home = common::home();
    let root = home.workspaces().join(format!("bench-split-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _enter = rt.enter();

    // In-process: the executor library on this process's engine.
    let local = Executor::new(common::sandbox().clone());
    // Split: one executor process, confined as `serve` would (best-effort), started directly.
    let hardening: HardeningMode =
        std::env::var("WARDEN_BENCH_HARDENING").ok().map(|v| v.parse().expect("WARDEN_BENCH_HARDENING")).unwrap_or_default();
    let profiles = Profiles::single(Policy::load("default").unwrap());
    let plan = ExecutorPlan::new(&home, &profiles, Language::ALL.to_vec(), &[], hardening, 1);
    let key = plan.groups[0].clone();
    let launcher = Arc::new(DirectLauncher::new(PathBuf::from(env!("CARGO_BIN_EXE_warden"))));
    let executors = rt.block_on(plan.start(launcher, root.join("split"), &mut ToolRegistry::load(&[], None))).unwrap();
    let executor_pid = executors.live()[0].pid.to_string();

    let run_local = |spec: &ExecSpec| {
        rt.block_on(async {
            let ws = Arc::new(Workspace::create(&root, "local-").unwrap());
            local.run_fresh(ws, spec, &[], &CancelHandle::new(), None).await.unwrap()
        })
    };
    let run_split = |spec: &ExecSpec| rt.block_on(run_fresh(&executors, &key, spec, &[], &CancelHandle::new(), None, None)).unwrap().0;

    println!("fresh hello, in-process vs executor process (hardening {}), {n} interleaved pairs:", hardening.to_string());
    for (lang, code) in [(Language::Python, "print('hello')"), (Language::Javascript, "console.log('hello')")] {
        let spec = common::spec(lang, code);
        for _ in 0..5 {
            run_local(&spec);
            run_split(&spec);
        }
        let (mut local_ms, mut split_ms, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut local_cpu, mut split_cpu) = (0.0, 0.0);
        for i in 0..n {
            let mut pair = [0.0; 2];
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let cpu0 = cpu_seconds("self") + if which == 1 { cpu_seconds(&executor_pid) } else { 0.0 };
                let t = Instant::now();
                let report = if which == 0 { run_local(&spec) } else { run_split(&spec) };
                pair[which] = ms(t.elapsed());
                let cpu = cpu_seconds("self") + if which == 1 { cpu_seconds(&executor_pid) } else { 0.0 } - cpu0;
                assert!(report.outcome == Outcome::Ok && report.stdout == "hello\n", "{report:?}");
                if which == 0 { local_cpu += cpu } else { split_cpu += cpu }
            }
            local_ms.push(pair[0]);
            split_ms.push(pair[1]);
            diffs.push(pair[1] - pair[0]);
        }
        let (l, s, d) = (median(local_ms), median(split_ms), median(diffs));
        println!(
            "{:<10} in-process median {l:.3} ms, executor process median {s:.3} ms, paired difference median {d:+.3} ms; \
             CPU per call {:.2} ms in-process, {:.2} ms split (front + executor)",
            lang.as_str(),
            local_cpu * 1e3 / n as f64,
            split_cpu * 1e3 / n as f64,
        );
        println!(
            "BENCH {}",
            serde_json::json!({"bench": "split", "language": lang.as_str(), "runs": n, "hardening": hardening.to_string(), "in_process_median_ms": l,
                "split_median_ms": s, "paired_difference_median_ms": d,
                "cpu_ms_per_call_in_process": local_cpu * 1e3 / n as f64, "cpu_ms_per_call_split": split_cpu * 1e3 / n as f64})
        );
    }
    executors.shutdown();
    let _ = std::fs::remove_dir_all(&root);
}
