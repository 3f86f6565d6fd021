//! Every limit produces its outcome, and the host is unharmed afterwards.

use std::time::{Duration, Instant};

use crate::common::*;
use warden::runtime::Language;
use warden::sandbox::CancelHandle;

fn with_timeout(language: Language, code: &str, ms: u64) -> warden::sandbox::RunReport {
    let mut s = spec(language, code);
    s.limits.timeout = Duration::from_millis(ms);
    run_with(s, Vec::new(), CancelHandle::new()).0
}

#[test]
fn busy_loop_times_out_at_the_deadline() {
    for lang in Language::ALL {
        let code = if lang == Language::Python { "while True: pass" } else { "while (true) {}" };
        let r = with_timeout(lang, code, 1000);
        assert_outcome(&r, "timeout");
        assert!(r.duration_ms >= 1000 && r.duration_ms <= 1200, "{lang}: stopped after {} ms", r.duration_ms);
    }
}

#[test]
fn sleeping_in_a_host_call_times_out_at_the_deadline() {
    let r = with_timeout(Language::Python, "import time\ntime.sleep(30)\nprint('woke')", 1000);
    assert_outcome(&r, "timeout");
    assert!(r.stdout.is_empty(), "the guest must not run on after the deadline: {:?}", r.stdout);
    assert!(r.duration_ms >= 1000 && r.duration_ms <= 1200, "stopped after {} ms", r.duration_ms);

    let r = with_timeout(Language::Javascript, "await new Promise(r => setTimeout(r, 30000)); console.log('woke')", 1000);
    assert_outcome(&r, "timeout");
    assert!(r.duration_ms >= 1000 && r.duration_ms <= 1200, "stopped after {} ms", r.duration_ms);
}

#[test]
fn short_sleeps_complete() {
    let r = py("import time\nt = time.monotonic()\ntime.sleep(0.05)\nprint(round(time.monotonic() - t, 1))");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout.trim(), "0.1");
}

#[test]
fn fuel_runs_out() {
    for lang in Language::ALL {
        let code = if lang == Language::Python { "while True: pass" } else { "while (true) {}" };
        let mut s = spec(lang, code);
        s.limits.fuel = 200_000_000;
        let (r, _) = run_with(s, Vec::new(), CancelHandle::new());
        assert_outcome(&r, "out_of_fuel");
        assert_eq!(r.fuel_used, 200_000_000);
    }
}

#[test]
fn huge_allocation_hits_the_memory_limit_and_the_host_is_unharmed() {
    let r = py("b = bytearray(2_000_000_000)\nprint(len(b))");
    assert_outcome(&r, "memory_limit");
    let r = py("import numpy as np\na = np.ones(250_000_000)\nprint(a.nbytes)");
    assert_outcome(&r, "memory_limit");
    let r = js("const a = new Uint8Array(2 * 1024 * 1024 * 1024); console.log(a.length)");
    assert!(matches!(r.outcome.as_str(), "memory_limit" | "error"), "{r:#?}");
    let r = js("let a = []; while (true) a.push(new Array(1e6).fill(1.5))");
    assert_outcome(&r, "memory_limit");
    // The host still runs guests normally.
    assert_outcome(&py("print(1)"), "ok");
}

#[test]
fn growing_memory_step_by_step_hits_the_limit() {
    let mut s = spec(Language::Python, "chunks = []\nwhile True: chunks.append(bytearray(1 << 20))");
    s.limits.memory_bytes = 128 << 20;
    let (r, _) = run_with(s, Vec::new(), CancelHandle::new());
    assert_outcome(&r, "memory_limit");
}

#[test]
fn memory_below_the_runtime_minimum_is_reported_not_crashed() {
    let mut s = spec(Language::Python, "print(1)");
    s.limits.memory_bytes = 16 << 20;
    let (r, _) = run_with(s, Vec::new(), CancelHandle::new());
    assert_outcome(&r, "memory_limit");
}

#[test]
fn output_floods_are_truncated() {
    let r = py("import sys\nsys.stdout.write('x' * 50_000_000)\nprint('end', file=sys.stderr)");
    assert_outcome(&r, "output_limit");
    assert!(r.truncated);
    assert_eq!(r.stdout.len(), default_limits().stdout_bytes);
    assert_eq!(r.stderr, "end\n", "the other stream is kept");
    assert_eq!(r.exit_code, Some(0));

    let r = js("const s = 'y'.repeat(1 << 20); for (let i = 0; i < 50; i++) console.error(s)");
    assert_outcome(&r, "output_limit");
    assert_eq!(r.stderr.len(), default_limits().stderr_bytes);
}

#[test]
fn deep_recursion_ends_cleanly() {
    // With the recursion limit lifted, CPython keeps frames on its heap: a limit stops it.
    let mut s = spec(Language::Python, "import sys\nsys.setrecursionlimit(10**8)\ndef f(n): return f(n + 1) + 1\nf(0)");
    s.limits.fuel = 2_000_000_000;
    let (r, _) = run_with(s, Vec::new(), CancelHandle::new());
    assert!(matches!(r.outcome.as_str(), "stack_overflow" | "error" | "out_of_fuel" | "memory_limit"), "{r:#?}");
    let r = py("def f(n): return f(n + 1) + 1\nf(0)");
    assert_outcome(&r, "error");
    assert!(r.stderr.contains("RecursionError"), "{}", r.stderr);
    let r = js("function f(n) { return f(n + 1) + 1 }\nf(0)");
    assert!(matches!(r.outcome.as_str(), "stack_overflow" | "trap" | "error"), "{r:#?}");
    assert_outcome(&js("console.log('still fine')"), "ok");
}

#[test]
fn workspace_file_floods_are_stopped() {
    let mut s = spec(Language::Python, "import os\nfor i in range(100000): open(f'f{i}', 'w').close()");
    s.limits.workspace_files = 50;
    let (r, _) = run_with(s, Vec::new(), CancelHandle::new());
    assert_outcome(&r, "output_limit");
    assert!(r.message.as_deref().unwrap_or("").contains("at most 50 files"), "{r:#?}");
}

#[test]
fn workspace_byte_floods_are_stopped() {
    let mut s = spec(Language::Python, "f = open('/tmp/big', 'wb')\nfor _ in range(10000): f.write(b'z' * 1_000_000)");
    s.limits.workspace_bytes = 20 << 20;
    let (r, _) = run_with(s, Vec::new(), CancelHandle::new());
    assert_outcome(&r, "output_limit");
}

#[test]
fn cancellation_stops_a_running_guest_within_100ms() {
    for (lang, code) in [
        (Language::Python, "while True: pass"),
        (Language::Python, "import time\ntime.sleep(60)"),
        (Language::Javascript, "while (true) {}"),
    ] {
        let cancel = CancelHandle::new();
        let canceller = cancel.clone();
        let started = Instant::now();
        let t = std::thread::spawn(move || run_with(spec(lang, code), Vec::new(), canceller).0);
        std::thread::sleep(Duration::from_millis(300));
        let cancelled_at = Instant::now();
        cancel.cancel();
        let r = t.join().unwrap();
        let stop_delay = cancelled_at.elapsed();
        assert_outcome(&r, "cancelled");
        assert!(stop_delay < Duration::from_millis(100), "{lang} {code:?}: stopped {stop_delay:?} after cancel");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
