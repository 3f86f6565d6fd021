//! warden's side of the side-by-side table, and the server-level targets: fresh-guest latency at
//! the engine and through MCP stdio, HTTP throughput with 16 clients, startup to ready, and RSS
//! with idle sessions and over many calls.
//!
//! `cargo bench --bench compare -- [engine|stdio|keepalive|tracing|throughput|startup|memory|jshello|fork]...`
//! (all by default).
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

/// Fresh calls over MCP stdio: back to back (`stdio`), then with a pause of
/// [`THINK`] before each call, as an agent makes, from the same kind of server
/// (`stdio-paused`: guests prepared in the pauses) and from one that starts a guest per call
/// (`stdio-paused-unpooled`, `--guest-pool 0`), in the same run.
async fn stdio() {
    const THINK: Duration = Duration::from_millis(30);
    let unpooled = &["--guest-pool", "0"][..];
    for (layer, extra, pause) in
        [("stdio", &[][..], Duration::ZERO), ("stdio-paused", &[][..], THINK), ("stdio-paused-unpooled", unpooled, THINK)]
    {
        let files = ServerFiles::new();
        let client = harness::stdio_with(&harness::Server::default(), &files, None, extra).await;
        for &(name, language, code) in WORKLOADS {
            let mut samples = Vec::new();
            for i in 0..runs() + 3 {
                tokio::time::sleep(pause).await;
                let t = Instant::now();
                exec_ok(&client, language, code).await;
                if i >= 3 {
                    samples.push(t.elapsed());
                }
            }
            report_latency(layer, name, samples);
        }
        client.cancel().await.ok();
    }
}

/// Fresh calls over MCP stdio from a minimal client: one JSON-RPC line written to the server's
/// stdin and its answer read from stdout, on this thread, with no client library. The
/// `stdio` layer's client (rmcp over tokio) adds 1-2 ms a call of its own on this machine;
/// this layer (`stdio-raw`) is the server and the pipe alone.
fn stdio_raw() {
    use std::io::{BufRead, BufReader, Write};
    let files = ServerFiles::new();
    let server = harness::Server::default();
    let mut child = std::process::Command::new(&server.bin)
        .arg("serve")
        .env("WARDEN_HOME", &server.home)
        .env("WARDEN_AUDIT_LOG", files.audit_log())
        .env("WARDEN_SNAPSHOT_DIR", files.snapshot_dir())
        .env_remove("WARDEN_POLICY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn warden");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    // Sends one message; for a request, reads lines until its answer (skipping notifications).
    let mut exchange = |message: Value| -> Option<Value> {
        writeln!(stdin, "{message}").expect("write to the server");
        stdin.flush().expect("flush");
        let id = message.get("id")?.clone();
        loop {
            line.clear();
            assert!(stdout.read_line(&mut line).expect("read from the server") > 0, "the server closed stdout");
            let answer: Value = serde_json::from_str(&line).expect("a JSON-RPC line");
            if answer.get("id") == Some(&id) {
                return Some(answer);
            }
        }
    };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}});
    exchange(init).expect("initialized");
    exchange(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let mut id = 0;
    for &(name, language, code) in WORKLOADS {
        let mut samples = Vec::new();
        for i in 0..runs() + 3 {
            id += 1;
            let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
                "name": "execute_code", "arguments": {"language": language.as_str(), "code": code}}});
            let t = Instant::now();
            let answer = exchange(call).expect("an answer");
            let elapsed = t.elapsed();
            assert_eq!(answer["result"]["structuredContent"]["outcome"], "ok", "{name}: {answer}");
            if i >= 3 {
                samples.push(elapsed);
            }
        }
        report_latency("stdio-raw", name, samples);
    }
    drop(stdin);
    let _ = child.wait();
}

/// A policy for load: the default one with the per-principal rate limit out of the way (the
/// bench is one anonymous principal) and room for `sessions` sessions.
fn load_policy(files: &ServerFiles, sessions: usize) -> std::path::PathBuf {
    load_policy_with(files, sessions, &[])
}

fn load_policy_with(files: &ServerFiles, sessions: usize, more: &[(&str, &str)]) -> std::path::PathBuf {
    let (max, per) = (format!("max = {sessions}"), format!("max_per_principal = {sessions}"));
    let mut edits = vec![
        ("calls_per_minute = 600", "calls_per_minute = 1_000_000"),
        ("concurrent_per_principal = 4", "concurrent_per_principal = 64"),
        ("queue_timeout_ms = 10_000", "queue_timeout_ms = 60_000"),
        ("max = 16", max.as_str()),
        ("max_per_principal = 4", per.as_str()),
    ];
    edits.extend_from_slice(more);
    files.policy(&edits)
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
    gather(tasks, started, &errors).await
}

/// Waits for a load generator's client tasks: (calls, errors, elapsed, sorted latencies).
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
    started: Instant,
    errors: &AtomicUsize,
) -> (usize, usize, Duration, Vec<Duration>) {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    all.sort();
    (all.len(), errors.load(Ordering::Relaxed), elapsed, all)
}

/// The builds a run compares: this one, named `this`, and, when `WARDEN_BENCH_BASELINE_BIN` names
/// an earlier build (`benches/split-throughput` and `benches/js-snapshot` make them), that one,
/// named `baseline`, with its data directory `WARDEN_BENCH_BASELINE_HOME` (default: the same).
fn variants(this: &'static str, baseline: &'static str) -> Vec<(&'static str, harness::Server)> {
    let mut v = vec![(this, harness::Server::default())];
    if let Some(bin) = std::env::var_os("WARDEN_BENCH_BASELINE_BIN") {
        let home = std::env::var_os("WARDEN_BENCH_BASELINE_HOME").map(Into::into).unwrap_or_else(|| harness::Server::default().home);
        v.push((baseline, harness::Server { bin: bin.into(), home, log: None }));
    }
    v
}

/// One stateless `tools/call` of Python hello, as the load generators send it.
fn stateless_body() -> String {
    harness::stateless_body("execute_code", json!({"language": "python", "code": "print('hello')"}))
}

/// `clients` keep-alive connections (one HTTP client each, no MCP session) POSTing stateless
/// calls until `total` are done or `limit` passes. Returns (calls, errors, elapsed, sorted
/// latencies); an error is any answer whose structured outcome is not ok.
async fn stateless_hammer(url: &str, clients: usize, total: usize, limit: Duration) -> (usize, usize, Duration, Vec<Duration>) {
    let body = stateless_body();
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, errors, url, body) = (next.clone(), errors.clone(), url.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let t = Instant::now();
                let mut req = http.post(&url).body(body.clone());
                for (k, v) in harness::stateless_headers("execute_code") {
                    req = req.header(k, v);
                }
                let text = match req.send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                lat.push(t.elapsed());
                if !text.contains(r#""outcome":"ok""#) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    gather(tasks, started, &errors).await
}

/// `pid` and every process descended from it (the front, its spawner, the executors).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some(ppid) = stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().nth(1)).and_then(|s| s.parse().ok()) else {
            continue;
        };
        parents.push((p, ppid));
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// CPU seconds used so far by `pid`'s whole process tree.
fn tree_cpu(pid: u32) -> f64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| std::fs::metadata(format!("/proc/{p}/stat")).ok().map(|_| cpu_seconds(&format!("/proc/{p}/stat"))))
        .sum()
}

/// TLB-shootdown interrupts so far, all CPUs (the `TLB` line of `/proc/interrupts`; 0 where
/// there is none). Machine-wide: the load generator's share is in it too.
fn tlb_shootdowns() -> u64 {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("TLB:"))
        .map(|rest| rest.split_whitespace().map_while(|w| w.parse::<u64>().ok()).sum())
        .unwrap_or(0)
}

/// HTTP throughput of Python hello at 1 and 16 clients, stateless calls over keep-alive
/// connections, for each build of [`variants`], in alternating order over
/// `WARDEN_BENCH_ROUNDS` rounds (default 2) so both see the same machine. CPU per call is the
/// server's whole process tree; TLB shootdowns per call are machine-wide. Then, when `wrk` is
/// on PATH, the same request from wrk against this build at 16 connections, to check the
/// load generator against a standard one.
async fn throughput() {
    let files = ServerFiles::new();
    let policy = load_policy(&files, 16);
    let variants = variants("split", "in-process");
    let rounds: usize = std::env::var("WARDEN_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let mut results: Vec<(String, usize, Vec<(f64, f64, f64, f64, f64)>)> = Vec::new();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for &v in &order {
            let (name, server) = &variants[v];
            let http = harness::start_http_of(server, &files, Some(&policy), &[]).await;
            let pid = http.child.id().expect("pid");
            // Warm every executor before measuring.
            stateless_hammer(&http.url, 4, 40, Duration::from_secs(30)).await;
            for clients in [1, 16] {
                let total = if clients == 1 { runs() * 20 } else { runs() * 60 };
                let (cpu0, tlb0) = (tree_cpu(pid), tlb_shootdowns());
                let (done, errors, elapsed, lat) = stateless_hammer(&http.url, clients, total, Duration::from_secs(60)).await;
                let (cpu, tlb) = (tree_cpu(pid) - cpu0, tlb_shootdowns() - tlb0);
                assert_eq!(errors, 0, "{name}: {errors} of {done} calls failed");
                let rate = done as f64 / elapsed.as_secs_f64();
                let row = (rate, cpu * 1e3 / done as f64, tlb as f64 / done as f64, ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.95)));
                println!(
                    "http    python_hello {name:<10} x{clients:<2} round {round}: {done} calls {rate:>6.0} calls/s, p50 {:.2} ms, p95 {:.2} ms, \
                     server CPU {:.2} ms/call, {:.2} TLB shootdowns/call",
                    row.3, row.4, row.1, row.2
                );
                match results.iter_mut().find(|(n, c, _)| n == name && *c == clients) {
                    Some((_, _, rows)) => rows.push(row),
                    None => results.push((name.to_string(), clients, vec![row])),
                }
            }
            drop(http);
        }
    }
    for (name, clients, rows) in &results {
        let mean = |f: fn(&(f64, f64, f64, f64, f64)) -> f64| rows.iter().map(f).sum::<f64>() / rows.len() as f64;
        let (rate, cpu, tlb, p50, p95) = (mean(|r| r.0), mean(|r| r.1), mean(|r| r.2), mean(|r| r.3), mean(|r| r.4));
        println!(
            "http    python_hello {name:<10} x{clients:<2} mean of {} rounds: {rate:.0} calls/s, p50 {p50:.2} ms, p95 {p95:.2} ms, CPU {cpu:.2} ms/call, {tlb:.2} TLB shootdowns/call",
            rows.len()
        );
        emit(json!({"system": "warden", "layer": "http", "workload": format!("python_hello_{clients}_clients"), "build": name,
            "calls_per_s": rate, "server_cpu_ms_per_call": cpu, "tlb_shootdowns_per_call": tlb, "median_ms": p50, "p95_ms": p95, "rounds": rows.len()}));
    }
    if let [(_, split), (_, base)] = &results
        .iter()
        .filter(|(_, c, _)| *c == 16)
        .map(|(n, _, r)| (n, r.iter().map(|r| r.0).sum::<f64>() / r.len() as f64))
        .collect::<Vec<_>>()[..]
    {
        println!("http    python_hello x16: split/in-process throughput ratio {:.2}", split / base);
    }
    wrk_check(&files, &policy, &results).await;
}

/// The same stateless call from wrk (Debian's `wrk`), 16 connections for 10 s, against this
/// build; printed beside this bench's own 16-client rate. SKIPPED when wrk is not installed.
async fn wrk_check(files: &ServerFiles, policy: &std::path::Path, results: &[(String, usize, Vec<(f64, f64, f64, f64, f64)>)]) {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        println!("wrk     SKIPPED: wrk is not on PATH (apt-get install wrk)");
        return;
    }
    let http = harness::start_http(files, Some(policy), &[]).await;
    stateless_hammer(&http.url, 4, 40, Duration::from_secs(30)).await;
    let mut script = String::from("wrk.method = \"POST\"\n");
    script += &format!("wrk.body = {:?}\n", stateless_body());
    for (k, v) in harness::stateless_headers("execute_code") {
        script += &format!("wrk.headers[{k:?}] = {v:?}\n");
    }
    // Count answers that are not an ok outcome, per thread, and sum them at the end.
    script += r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"outcome":"ok"', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("bad") end
  io.write(string.format("WRK bad=%d\n", n))
end
"#;
    let path = policy.with_file_name("wrk.lua");
    std::fs::write(&path, script).expect("wrk script");
    let out = tokio::process::Command::new("wrk")
        .args(["-t", "2", "-c", "16", "-d", "10s", "--latency", "-s"])
        .arg(&path)
        .arg(&http.url)
        .output()
        .await
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|r| r.trim().parse::<f64>().ok());
    let bad = text.lines().find_map(|l| l.strip_prefix("WRK bad=")).and_then(|r| r.trim().parse::<u64>().ok());
    let (Some(rate), Some(bad)) = (rate, bad) else { panic!("could not read wrk's output:\n{text}") };
    assert_eq!(bad, 0, "wrk saw {bad} answers that were not ok:\n{text}");
    let ours =
        results.iter().find(|(n, c, _)| n == "split" && *c == 16).map(|(_, _, r)| r.iter().map(|r| r.0).sum::<f64>() / r.len() as f64);
    let p50 = text.lines().find_map(|l| l.trim().strip_prefix("50%")).map(str::trim).unwrap_or("?");
    println!(
        "wrk     python_hello split      x16 (wrk -t2 -c16 -d10s): {rate:.0} calls/s, p50 {p50}; this bench's generator {:.0} calls/s (ratio {:.2})",
        ours.unwrap_or(f64::NAN),
        ours.map_or(f64::NAN, |o| o / rate)
    );
    emit(
        json!({"system": "warden", "layer": "http", "workload": "python_hello_16_clients", "build": "split", "generator": "wrk", "calls_per_s": rate}),
    );
}

/// `n` Python hello calls one after another on `client` (after 5 to warm up), each one's latency,
/// sorted.
async fn sequential_hello(client: &Client, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let t = Instant::now();
        exec_ok(client, Language::Python, "print('hello')").await;
        if i >= 5 {
            samples.push(t.elapsed());
        }
    }
    samples.sort();
    samples
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
        let samples = sequential_hello(&client, n).await;
        client.cancel().await.ok();
        drop(server);
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

/// What tracing costs a call: sequential Python hello calls over one keep-alive HTTP connection
/// to a server without an exporter and to one writing OTLP-JSON to a file (every request span
/// and stage recorded), in alternating rounds so both see the same machine.
async fn tracing() {
    let files = ServerFiles::new();
    let traces = files.dir.path().join("traces.jsonl");
    let traces_arg = traces.display().to_string();
    let n = runs() * 2;
    let mut p50s: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..3 {
        for (i, extra) in [&[][..], &["--otlp-file", traces_arg.as_str()][..]].into_iter().enumerate() {
            let server = harness::start_http(&files, None, extra).await;
            let client = harness::connect_http(&server.url, None).await;
            let samples = sequential_hello(&client, n).await;
            client.cancel().await.ok();
            drop(server);
            let layer = if i == 0 { "http" } else { "http+otlp-file" };
            println!(
                "round {round} {layer:<15} python_hello p50 {:>7.2} ms  p90 {:>7.2} ms",
                ms(percentile(&samples, 0.5)),
                ms(percentile(&samples, 0.9))
            );
            p50s[i].push(percentile(&samples, 0.5));
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut p50s[0]), median(&mut p50s[1]));
    let lines = std::fs::read_to_string(&traces).map(|t| t.lines().count()).unwrap_or(0);
    println!(
        "tracing: p50 with/without spans {:.3}x ({:.2} ms vs {:.2} ms; {lines} export lines written)",
        ms(on) / ms(off),
        ms(on),
        ms(off)
    );
    emit(json!({"system": "warden", "layer": "http", "workload": "python_hello_tracing", "p50_off_ms": ms(off), "p50_on_ms": ms(on)}));
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

/// Resident memory of `pid`'s whole process tree (front, spawner, executors), summed: pages
/// they share (the binary's text) count once per process.
fn tree_rss_kib(pid: u32) -> u64 {
    process_tree(pid).into_iter().filter(|p| std::path::Path::new(&format!("/proc/{p}/status")).exists()).map(harness::rss_kib).sum()
}

async fn memory() {
    let files = ServerFiles::new();
    // Idle sessions move to disk after 30 s: long enough to open all 100 first.
    let policy = load_policy_with(&files, 128, &[("suspend_after_seconds = 120", "suspend_after_seconds = 30")]);
    let server = harness::start_http(&files, Some(&policy), &[]).await;
    let pid = server.child.id().expect("pid");
    let client = harness::connect_http(&server.url, None).await;
    exec_ok(&client, Language::Python, "print('warm')").await;
    let base = tree_rss_kib(pid);
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = harness::call(&client, "create_session", json!({"language": "python"})).await.expect("create_session");
        let id = r.structured_content.expect("session")["session_id"].as_str().unwrap().to_string();
        let (_, s) = harness::exec(&client, json!({"language": "python", "code": "x = 1", "session_id": id})).await;
        assert_eq!(s["outcome"], "ok");
        ids.push(id);
    }
    let with_sessions = tree_rss_kib(pid);
    let t = Instant::now();
    let suspended = harness::audit_events(&files, "session.suspend", 100, Duration::from_secs(120)).await.len();
    assert_eq!(suspended, 100, "every idle session is suspended");
    // Give the executors a moment to drop the guests they were told to.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let on_disk = tree_rss_kib(pid);
    println!(
        "memory  RSS with the 100 sessions suspended to disk {} MiB ({:.2} MiB each still in memory; waited {:.0} s)",
        on_disk / 1024,
        on_disk.saturating_sub(base) as f64 / 1024.0 / 100.0,
        t.elapsed().as_secs_f64()
    );
    emit(json!({"system": "warden", "layer": "memory", "workload": "suspended_sessions", "rss_100_suspended_kib": on_disk}));
    let t = Instant::now();
    let (_, s) = harness::exec(&client, json!({"language": "python", "code": "print(x)", "session_id": ids[0]})).await;
    assert_eq!(s["stdout"], "1\n", "a suspended session resumes on its next call: {s}");
    println!("memory  the first call to a suspended session (resume included) took {:.2} ms", ms(t.elapsed()));
    for id in &ids {
        harness::call(&client, "close_session", json!({"session_id": id})).await.expect("close_session");
    }
    let closed = tree_rss_kib(pid);
    println!(
        "memory  RSS (front, spawner and executors) after start {} MiB; with 100 idle python sessions {} MiB ({:.2} MiB each); after closing them {} MiB",
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
        marks.push((done, tree_rss_kib(pid)));
    }
    let line: Vec<String> = marks.iter().map(|(n, kib)| format!("{} MiB after {n} calls", kib / 1024)).collect();
    println!("memory  RSS {}", line.join(", "));
    emit(json!({"system": "warden", "layer": "memory", "workload": "calls", "marks": marks}));
    client.cancel().await.ok();
}

/// Fresh JavaScript hello over MCP stdio: this build (QuickJS-NG built from source, each guest
/// made from a snapshot taken after the console prelude) against the baseline build, when one is
/// given (`benches/js-snapshot` builds the command-build runtime that parsed the prelude on every
/// call), in alternating rounds so both see the same machine.
async fn jshello() {
    let builds = variants("snapshot", "command");
    // Each server has its own audit log: one log admits one writer at a time.
    let files: Vec<ServerFiles> = builds.iter().map(|_| ServerFiles::new()).collect();
    if builds.len() == 1 {
        println!("jshello: WARDEN_BENCH_BASELINE_BIN is not set; measuring this build only (benches/js-snapshot sets it)");
    }
    let mut clients = Vec::new();
    for ((_, server), files) in builds.iter().zip(&files) {
        clients.push(harness::stdio_of(server, files, None).await);
    }
    let rounds = 10;
    let per_round = (runs() / 5).max(2);
    let mut samples = vec![Vec::new(); builds.len()];
    for round in 0..rounds + 1 {
        for (client, series) in clients.iter().zip(samples.iter_mut()) {
            for _ in 0..per_round {
                let t = Instant::now();
                exec_ok(client, Language::Javascript, "console.log('hello')").await;
                // The first round warms both servers up.
                if round > 0 {
                    series.push(t.elapsed());
                }
            }
        }
    }
    let mut medians = Vec::new();
    for ((label, _), mut series) in builds.iter().zip(samples) {
        series.sort();
        medians.push(percentile(&series, 0.5));
        report_latency("stdio", &format!("javascript_hello_{label}"), series);
    }
    if let [this, baseline] = medians[..] {
        println!(
            "jshello: median {:.3} ms ({}) vs {:.3} ms ({}): {:.2}x faster",
            ms(this),
            builds[0].0,
            ms(baseline),
            builds[1].0,
            ms(baseline) / ms(this)
        );
    }
    for client in clients {
        client.cancel().await.ok();
    }
}

/// `fork_session` of a Python session holding a pandas DataFrame of about 10 MB, against
/// rebuilding that state by running its code again (reading the CSV it came from, and building it
/// in memory from numpy), over MCP stdio in the same run; and the same session's snapshot to disk,
/// its rollback from that snapshot (`restore_session`), and a fork from it. Each fork is closed
/// and each snapshot deleted again, so no cap binds.
async fn fork() {
    let files = ServerFiles::new();
    let client = harness::stdio(&files, None).await;
    let write_csv = "import numpy as np, pandas as pd\n\
                     pd.DataFrame(np.arange(1_250_000, dtype=np.int64).reshape(-1, 5), columns=list('abcde')).to_csv('data.csv', index=False)";
    let from_csv = "import pandas as pd\ndf = pd.read_csv('data.csv')";
    let in_memory =
        "import numpy as np, pandas as pd\ndf = pd.DataFrame(np.arange(1_250_000, dtype=np.int64).reshape(-1, 5), columns=list('abcde'))";
    let session =
        |r: rmcp::model::CallToolResult| r.structured_content.expect("structured")["session_id"].as_str().expect("id").to_string();
    let id = session(harness::call(&client, "create_session", json!({"language": "python"})).await.expect("create_session"));
    let run = |code: &'static str| {
        let (client, id) = (&client, id.clone());
        async move {
            let t = Instant::now();
            let (_, s) = harness::exec(client, json!({"language": "python", "code": code, "session_id": id})).await;
            assert_eq!(s["outcome"], "ok", "{s}");
            t.elapsed()
        }
    };
    run(write_csv).await;
    run(from_csv).await;
    let timed = |tool: &'static str, args: Value| {
        let client = &client;
        async move {
            let t = Instant::now();
            let r = harness::call(client, tool, args).await.expect(tool);
            assert_ne!(r.is_error, Some(true), "{tool}: {r:?}");
            (t.elapsed(), r.structured_content.expect("structured"))
        }
    };
    let check = |sid: String| {
        let client = &client;
        async move {
            let (_, s) = harness::exec(client, json!({"language": "python", "code": "print(df.shape)", "session_id": sid})).await;
            assert_eq!(s["stdout"], "(250000, 5)\n", "{s}");
        }
    };
    let n = (runs() / 2).max(5);
    let names = ["fork", "rebuild_from_csv", "rebuild_in_memory", "snapshot", "restore_from_disk", "fork_from_snapshot"];
    let mut series: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for i in 0..n + 2 {
        let (fork_took, f) = timed("fork_session", json!({"session_id": id})).await;
        let fork = f["session_id"].as_str().unwrap().to_string();
        check(fork.clone()).await;
        harness::call(&client, "close_session", json!({"session_id": fork})).await.expect("close_session");
        let csv_took = run(from_csv).await;
        let memory_took = run(in_memory).await;
        let (snap_took, snap) = timed("snapshot_session", json!({"session_id": id})).await;
        let snap_id = snap["snapshot_id"].as_str().unwrap().to_string();
        let (restore_took, _) = timed("restore_session", json!({"snapshot_id": snap_id})).await;
        check(id.clone()).await;
        let (from_snap_took, f) = timed("fork_session", json!({"snapshot_id": snap_id})).await;
        let fork = f["session_id"].as_str().unwrap().to_string();
        check(fork.clone()).await;
        harness::call(&client, "close_session", json!({"session_id": fork})).await.expect("close_session");
        harness::call(&client, "delete_snapshot", json!({"snapshot_id": snap_id})).await.expect("delete_snapshot");
        if i >= 2 {
            for (s, took) in series.iter_mut().zip([fork_took, csv_took, memory_took, snap_took, restore_took, from_snap_took]) {
                s.push(took);
            }
        }
    }
    let mut medians = Vec::new();
    for (name, mut s) in names.iter().zip(series) {
        s.sort();
        medians.push(ms(percentile(&s, 0.5)));
        report_latency("stdio", &format!("python_10mb_dataframe_{name}"), s);
    }
    println!(
        "fork: median {:.2} ms against {:.2} ms to re-read its CSV ({:.1}x faster) and {:.2} ms to rebuild it in memory ({:.1}x); \
         snapshot to disk {:.2} ms, rollback from disk {:.2} ms, fork from disk {:.2} ms",
        medians[0],
        medians[1],
        medians[1] / medians[0],
        medians[2],
        medians[2] / medians[0],
        medians[3],
        medians[4],
        medians[5]
    );
    client.cancel().await.ok();
}

fn main() {
    let modes: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let all = ["engine", "stdio", "keepalive", "tracing", "throughput", "startup", "memory", "jshello", "fork"];
    let modes: Vec<&str> = if modes.is_empty() { all.to_vec() } else { modes.iter().map(String::as_str).collect() };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    for m in modes {
        match m {
            "engine" => engine(),
            "stdio" => {
                stdio_raw();
                rt.block_on(stdio())
            }
            "keepalive" => rt.block_on(keepalive()),
            "tracing" => rt.block_on(tracing()),
            "throughput" => rt.block_on(throughput()),
            "startup" => rt.block_on(startup()),
            "memory" => rt.block_on(memory()),
            "jshello" => rt.block_on(jshello()),
            "fork" => rt.block_on(fork()),
            other => panic!("unknown mode {other:?}; expected one of {all:?}"),
        }
    }
}
