//! warden's side of the side-by-side table, and the server-level targets: fresh-guest latency at
//! the engine and through MCP stdio, HTTP throughput with 16 clients, startup to ready, and RSS
//! with idle sessions and over many calls.
//!
//! `cargo bench --bench compare -- [engine|stdio|keepalive|throughput|startup|memory]...` (all by
//! default).
//! Every number is also printed as a `BENCH {json}` line, which `benches/peers/run` collects.
//! Everything runs on loopback and is bounded in count and time. Counts can be scaled with
//! `WARDEN_BENCH_RUNS` (latency samples per workload, default 50).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::{Client, ServerFiles};
use serde_json::{Value, json};
use warden::runtime::Language;
use warden::sandbox::CancelHandle;

/// The shared workloads: name, language, code.
const WORKLOADS: &[(&str, Language, &str)] = &[
    ("python_hello", Language::Python, "print('hello')"),
    ("python_import_numpy", Language::Python, "import numpy"),
    ("python_pandas", Language::Python, "import pandas as pd; df = pd.DataFrame({'a': range(1000)}); print(df.a.sum())"),
    ("javascript_hello", Language::Javascript, "console.log('hello')"),
];

fn runs() -> usize {
    std::env::var("WARDEN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn emit(v: Value) {
    println!("BENCH {v}");
}

fn report_latency(layer: &str, name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let (p50, p95) = (percentile(&samples, 0.5), percentile(&samples, 0.95));
    println!("{layer:<7} {name:<22} median {:>8.3} ms   p95 {:>8.3} ms   (n={})", ms(p50), ms(p95), samples.len());
    emit(json!({"system": "warden", "layer": layer, "workload": name, "median_ms": ms(p50), "p95_ms": ms(p95), "n": samples.len()}));
}

fn engine() {
    for &(name, language, code) in WORKLOADS {
        let mut samples = Vec::new();
        for i in 0..runs() + 3 {
            let t = Instant::now();
            let (r, ws) = common::run_with(common::spec(language, code), Vec::new(), CancelHandle::new());
            drop(ws);
            let elapsed = t.elapsed();
            assert_eq!(r.outcome.as_str(), "ok", "{name}: {r:?}");
            if i >= 3 {
                samples.push(elapsed);
            }
        }
        report_latency("engine", name, samples);
    }
}

async fn exec_ok(client: &Client, language: Language, code: &str) {
    let (_, s) = harness::exec(client, json!({"language": language.as_str(), "code": code})).await;
    assert_eq!(s["outcome"], "ok", "{s}");
}

async fn stdio() {
    let files = ServerFiles::new();
    let client = harness::stdio(&files, None).await;
    for &(name, language, code) in WORKLOADS {
        let mut samples = Vec::new();
        for i in 0..runs() + 3 {
            let t = Instant::now();
            exec_ok(&client, language, code).await;
            if i >= 3 {
                samples.push(t.elapsed());
            }
        }
        report_latency("stdio", name, samples);
    }
    client.cancel().await.ok();
}

/// A policy for load: the default one with the per-principal rate limit out of the way (the
/// bench is one anonymous principal) and room for `sessions` sessions.
fn load_policy(files: &ServerFiles, sessions: usize) -> std::path::PathBuf {
    files.policy(&[
        ("calls_per_minute = 600", "calls_per_minute = 1_000_000"),
        ("concurrent_per_principal = 4", "concurrent_per_principal = 64"),
        ("queue_timeout_ms = 10_000", "queue_timeout_ms = 60_000"),
        ("max = 16", &format!("max = {sessions}")),
        ("max_per_principal = 4", &format!("max_per_principal = {sessions}")),
    ])
}

/// `clients` connections calling `code` until `total` calls are done or `limit` passes.
/// Returns (calls done, errors, elapsed, sorted latencies).
async fn hammer(url: &str, clients: usize, total: usize, limit: Duration, code: &'static str) -> (usize, usize, Duration, Vec<Duration>) {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(harness::connect_http(url, None).await);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for client in conns {
        let (next, errors) = (next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let t = Instant::now();
                let r = harness::call(&client, "execute_code", json!({"language": "python", "code": code})).await;
                let ok = matches!(&r, Ok(r) if r.structured_content.as_ref().is_some_and(|s| s["outcome"] == "ok"));
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed());
            }
            client.cancel().await.ok();
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    all.sort();
    (all.len(), errors.load(Ordering::Relaxed), elapsed, all)
}

async fn throughput() {
    let files = ServerFiles::new();
    let policy = load_policy(&files, 16);
    let server = harness::start_http(&files, Some(&policy), &[]).await;
    let total = runs() * 60;
    let pid = server.child.id().expect("pid");
    let (server_cpu, own_cpu) = (cpu_seconds(&format!("/proc/{pid}/stat")), cpu_seconds("/proc/self/stat"));
    let (done, errors, elapsed, lat) = hammer(&server.url, 16, total, Duration::from_secs(60), "print('hello')").await;
    let server_cpu = cpu_seconds(&format!("/proc/{pid}/stat")) - server_cpu;
    let own_cpu = cpu_seconds("/proc/self/stat") - own_cpu;
    let rate = done as f64 / elapsed.as_secs_f64();
    println!(
        "http    python_hello x16 clients  {done} calls in {:.2} s = {rate:.0} calls/s, {errors} errors, p50 {:.2} ms, p95 {:.2} ms; \
         CPU per call: server {:.2} ms, load generator {:.2} ms",
        elapsed.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.95)),
        server_cpu * 1e3 / done as f64,
        own_cpu * 1e3 / done as f64,
    );
    emit(json!({"system": "warden", "layer": "http", "workload": "python_hello_16_clients", "calls": done, "errors": errors,
        "calls_per_s": rate, "server_cpu_ms_per_call": server_cpu * 1e3 / done as f64, "client_cpu_ms_per_call": own_cpu * 1e3 / done as f64, "median_ms": ms(percentile(&lat, 0.5)), "p95_ms": ms(percentile(&lat, 0.95))}));
}

/// Sequential calls over one keep-alive HTTP connection (rmcp's streamable HTTP client, which
/// pools connections as every real client does), against the same calls over stdio in the same
/// run. Guards the 40 ms stall that Nagle's algorithm plus the client's delayed ACK put on every
/// HTTP response when accepted sockets lack `TCP_NODELAY`: with it, the ratio is close to 1; a
/// p50 or p90 near 40 ms means it is back.
async fn keepalive() {
    let files = ServerFiles::new();
    let n = runs() * 4;
    let mut series = Vec::new();
    for layer in ["stdio", "http"] {
        let (client, server) = match layer {
            "stdio" => (harness::stdio(&files, None).await, None),
            _ => {
                let server = harness::start_http(&files, None, &[]).await;
                (harness::connect_http(&server.url, None).await, Some(server))
            }
        };
        let mut samples = Vec::with_capacity(n);
        for i in 0..n + 5 {
            let t = Instant::now();
            exec_ok(&client, Language::Python, "print('hello')").await;
            if i >= 5 {
                samples.push(t.elapsed());
            }
        }
        client.cancel().await.ok();
        drop(server);
        samples.sort();
        let [p50, p90, p99] = [0.5, 0.9, 0.99].map(|p| percentile(&samples, p));
        println!(
            "{layer:<7} python_hello sequential  p50 {:>7.2} ms   p90 {:>7.2} ms   p99 {:>7.2} ms   (n={n})",
            ms(p50),
            ms(p90),
            ms(p99)
        );
        emit(json!({"system": "warden", "layer": layer, "workload": "python_hello_sequential", "median_ms": ms(p50),
            "p90_ms": ms(p90), "p99_ms": ms(p99), "n": n}));
        series.push((p50, p90));
    }
    let (stdio, http) = (series[0], series[1]);
    println!("keepalive: HTTP/stdio ratio p50 {:.2}x, p90 {:.2}x", ms(http.0) / ms(stdio.0), ms(http.1) / ms(stdio.1));
}

async fn startup() {
    let files = ServerFiles::new();
    let http = reqwest::Client::new();
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut server = harness::start_http(&files, None, &[]).await;
        loop {
            let ready = http.get(format!("{}/readyz", server.base)).send().await.is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "server never became ready");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(t.elapsed());
        server.child.kill().await.ok();
    }
    report_latency("startup", "spawn_to_ready", samples);
}

/// User plus system CPU seconds of a process, from its `/proc/PID/stat`.
fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).expect("proc stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &text[text.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

async fn memory() {
    let files = ServerFiles::new();
    let policy = load_policy(&files, 128);
    let server = harness::start_http(&files, Some(&policy), &[]).await;
    let pid = server.child.id().expect("pid");
    let client = harness::connect_http(&server.url, None).await;
    exec_ok(&client, Language::Python, "print('warm')").await;
    let base = harness::rss_kib(pid);
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = harness::call(&client, "create_session", json!({"language": "python"})).await.expect("create_session");
        let id = r.structured_content.expect("session")["session_id"].as_str().unwrap().to_string();
        let (_, s) = harness::exec(&client, json!({"language": "python", "code": "x = 1", "session_id": id})).await;
        assert_eq!(s["outcome"], "ok");
        ids.push(id);
    }
    let with_sessions = harness::rss_kib(pid);
    for id in &ids {
        harness::call(&client, "close_session", json!({"session_id": id})).await.expect("close_session");
    }
    let closed = harness::rss_kib(pid);
    println!(
        "memory  RSS after start {} MiB; with 100 idle python sessions {} MiB ({:.2} MiB each); after closing them {} MiB",
        base / 1024,
        with_sessions / 1024,
        (with_sessions - base) as f64 / 1024.0 / 100.0,
        closed / 1024
    );
    emit(json!({"system": "warden", "layer": "memory", "workload": "idle_sessions", "rss_start_kib": base,
        "rss_100_sessions_kib": with_sessions, "rss_after_close_kib": closed}));

    let calls = runs() * 200;
    let mut marks = vec![];
    let mut done = 0;
    for chunk in [calls / 10, calls * 4 / 10, calls / 2] {
        let (n, errors, _, _) = hammer(&server.url, 16, chunk, Duration::from_secs(300), "print('hello')").await;
        assert_eq!(errors, 0, "errors during the memory run");
        done += n;
        marks.push((done, harness::rss_kib(pid)));
    }
    let line: Vec<String> = marks.iter().map(|(n, kib)| format!("{} MiB after {n} calls", kib / 1024)).collect();
    println!("memory  RSS {}", line.join(", "));
    emit(json!({"system": "warden", "layer": "memory", "workload": "calls", "marks": marks}));
    client.cancel().await.ok();
}

fn main() {
    let modes: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let all = ["engine", "stdio", "keepalive", "throughput", "startup", "memory"];
    let modes: Vec<&str> = if modes.is_empty() { all.to_vec() } else { modes.iter().map(String::as_str).collect() };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    for m in modes {
        match m {
            "engine" => engine(),
            "stdio" => rt.block_on(stdio()),
            "keepalive" => rt.block_on(keepalive()),
            "throughput" => rt.block_on(throughput()),
            "startup" => rt.block_on(startup()),
            "memory" => rt.block_on(memory()),
            other => panic!("unknown mode {other:?}; expected one of {all:?}"),
        }
    }
}
