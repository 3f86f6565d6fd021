//! Load and soak: 2,000 mixed calls from 16 concurrent HTTP clients on loopback, with deliberate
//! limit outcomes among them. Afterwards nothing may have leaked: workspaces, file descriptors,
//! or memory beyond a stated bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

const CALLS: usize = 2000;
const CLIENTS: usize = 16;
/// RSS may grow this much over the run (pool slots warming up, allocator caches).
const RSS_BOUND_KIB: u64 = 96 << 10;

/// The mix, by call number: (arguments, expected outcome).
fn nth_call(i: usize) -> (Value, &'static str) {
    match i % 20 {
        0..=7 => (json!({"language": "python", "code": format!("print({i} * 2)")}), "ok"),
        8..=11 => (json!({"language": "javascript", "code": format!("console.log({i} * 2)")}), "ok"),
        12 => (json!({"language": "python", "code": "import pandas as pd\nprint(pd.DataFrame({'a': range(100)}).a.sum())"}), "ok"),
        13 | 14 => (json!({"language": "python", "code": format!("open('out-{i}.txt', 'w').write('x' * {i})")}), "ok"),
        15 => (json!({"language": "python", "code": "import time\ntime.sleep(30)", "limits": {"timeout_ms": 100}}), "timeout"),
        16 => (json!({"language": "python", "code": "b = bytearray(256 << 20)", "limits": {"memory_mb": 64}}), "memory_limit"),
        17 => (json!({"language": "javascript", "code": "throw new Error('deliberate')"}), "error"),
        18 => (json!({"language": "python", "code": "raise SystemExit(3)"}), "error"),
        _ => (json!({"language": "python", "code": "while True: pass", "limits": {"fuel": 20_000_000}}), "out_of_fuel"),
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Call and session directories left under a server's workspaces: those in each executor's
/// own directory (`x0`, `x1`, ...), which lives as long as the executor slot does, except its
/// guests prepared ahead (`.pool-*`), which must be empty and no more than an executor keeps.
fn leftovers(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut left = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let slot = e.file_name().to_string_lossy().strip_prefix('x').is_some_and(|n| n.parse::<u32>().is_ok());
        match std::fs::read_dir(e.path()) {
            Ok(inner) if slot => {
                let (pooled, other): (Vec<_>, Vec<_>) = inner
                    .flatten()
                    .map(|i| i.path())
                    .partition(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".pool-")));
                let most = warden::executor::pool::MAX_KEYS * warden::executor::pool::DEFAULT_PER_KEY;
                assert!(pooled.len() <= most, "an executor keeps {} prepared guests, at most {most} expected", pooled.len());
                for p in &pooled {
                    for sub in ["workspace", "tmp"] {
                        assert_eq!(std::fs::read_dir(p.join(sub)).map(|d| d.count()).unwrap_or(0), 0, "{} is not empty", p.display());
                    }
                }
                left.extend(other);
            }
            _ => left.push(e.path()),
        }
    }
    left
}

/// Open descriptors of every executor of the server `pid` (the processes below its spawner).
fn executor_fds(pid: u32) -> usize {
    process_tree(pid).into_iter().skip(2).map(open_fds).sum()
}

async fn run_calls(url: &str, from: usize, to: usize) -> (Vec<Duration>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (next, url) = (next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let client = connect_http(&url, None).await;
            let (mut lat, mut errors) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                let (args, expected) = nth_call(i);
                let t = Instant::now();
                match call(&client, "execute_code", args.clone()).await {
                    Ok(r) => {
                        let outcome = r.structured_content.as_ref().map(|s| s["outcome"].clone()).unwrap_or_default();
                        if outcome != expected {
                            errors.push(format!("call {i} ({args}): expected {expected}, got {outcome}"));
                        }
                    }
                    Err(e) => errors.push(format!("call {i} ({args}): {e}")),
                }
                lat.push(t.elapsed());
            }
            client.cancel().await.ok();
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), Vec::new());
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors.extend(e);
    }
    (lat, errors)
}

#[tokio::test]
async fn two_thousand_mixed_calls_from_sixteen_clients_leak_nothing() {
    let files = ServerFiles::new();
    let policy = files.policy(&[
        ("calls_per_minute = 600", "calls_per_minute = 100_000"),
        ("concurrent_per_principal = 4", "concurrent_per_principal = 16"),
        ("queue_timeout_ms = 10_000", "queue_timeout_ms = 120_000"),
        ("retention_seconds = 600", "retention_seconds = 1"),
    ]);
    let server = start_http(&files, Some(&policy), &[]).await;
    let pid = server.child.id().unwrap();
    let workspaces = process_workspaces(pid).expect("the server's workspace directory");

    // Warm up (pool slots, allocator, every kind of call), then take the baseline.
    let (_, errors) = run_calls(&server.url, 0, 100).await;
    assert!(errors.is_empty(), "{errors:#?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (rss0, fds0, xfds0) = (rss_kib(pid), open_fds(pid), executor_fds(pid));

    let started = Instant::now();
    let (mut lat, errors) = run_calls(&server.url, 100, 100 + CALLS).await;
    let elapsed = started.elapsed();
    assert!(errors.is_empty(), "{} unexpected results, first: {:#?}", errors.len(), &errors[..errors.len().min(5)]);
    assert_eq!(lat.len(), CALLS);
    lat.sort();
    eprintln!(
        "soak: {CALLS} mixed calls from {CLIENTS} clients in {:.1} s ({:.0} calls/s); p50 {:?}, p95 {:?}, max {:?}",
        elapsed.as_secs_f64(),
        CALLS as f64 / elapsed.as_secs_f64(),
        lat[CALLS / 2],
        lat[CALLS * 95 / 100],
        lat[CALLS - 1]
    );

    // Retained artifacts expire after a second; the sweeper then removes their workspaces.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (rss1, fds1) = (rss_kib(pid), open_fds(pid));
    eprintln!("soak: RSS {rss0} KiB -> {rss1} KiB; open fds {fds0} -> {fds1}");
    let left = leftovers(&workspaces);
    assert!(left.is_empty(), "workspaces leaked: {left:?}");
    assert!(fds1 <= fds0 + 4, "file descriptors leaked: {fds0} -> {fds1}");
    let xfds1 = executor_fds(pid);
    eprintln!("soak: executors' open fds {xfds0} -> {xfds1}");
    assert!(xfds1 <= xfds0 + 4, "executors leaked file descriptors: {xfds0} -> {xfds1}");
    assert!(rss1 <= rss0 + RSS_BOUND_KIB, "RSS grew from {rss0} KiB to {rss1} KiB");
    let client = connect_http(&server.url, None).await;
    crate::alive(&client).await;
}
