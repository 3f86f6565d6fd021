//! Using up the host: endless loops in wasm and inside host calls, memory, the stack, output on
//! both streams, disk space and file counts, archive bombs, and cancellation while the server is
//! busy.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;
use crate::{Layer, attempt};

fn with_limits(language: &str, code: &str, limits: Value) -> Value {
    json!({"language": language, "code": code, "limits": limits})
}

/// Asserts the outcome and that the call ended within `max` (the limit plus scheduling slack).
fn ended(s: &Value, outcome: &str, max: Duration) {
    assert_eq!(s["outcome"], outcome, "{s}");
    assert!(s["duration_ms"].as_u64().unwrap() <= max.as_millis() as u64, "took too long: {s}");
}

#[tokio::test]
async fn endless_loops_in_wasm_and_in_host_calls() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let slack = Duration::from_millis(1500);
    let cases = [
        ("python_busy_loop", "python", "while True: pass"),
        ("javascript_busy_loop", "javascript", "for (;;) {}"),
        ("python_sleep_in_host_call", "python", "import time\ntime.sleep(3600)"),
        ("python_select_sleep", "python", "import select\nselect.select([], [], [], 3600)"),
        ("javascript_pending_timer", "javascript", "setTimeout(() => {}, 3_600_000)"),
        ("javascript_microtask_loop", "javascript", "(async () => { for (;;) await null })()"),
        ("javascript_os_sleep", "javascript", "os.sleep(3_600_000)"),
    ];
    for (name, language, code) in cases {
        let s = attempt(&client, name, Layer::Limits, with_limits(language, code, json!({"timeout_ms": 500}))).await;
        ended(&s, "timeout", slack);
    }
    // Fuel stops a loop long before the deadline when the budget is small.
    let s =
        attempt(&client, "python_fuel_budget", Layer::Limits, with_limits("python", "while True: pass", json!({"fuel": 50_000_000}))).await;
    ended(&s, "out_of_fuel", Duration::from_secs(5));
    // Reading stdin never blocks: it is the request's bytes, then end-of-file.
    let s = attempt(&client, "python_blocking_stdin_read", Layer::Wasi, json!({"language": "python", "code": "import sys\nwhile True:\n    if not sys.stdin.read(1):\n        break\nprint('eof')", "stdin": "ab"})).await;
    assert_eq!(s["stdout"], "eof\n", "{s}");
    let s = attempt(
        &client,
        "javascript_blocking_stdin_read",
        Layer::Wasi,
        json!({"language": "javascript", "code": "print(std.in.readAsString().length)"}),
    )
    .await;
    assert_eq!(s["stdout"], "0\n", "{s}");
}

#[tokio::test]
async fn memory_and_stack_exhaustion() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let mem = json!({"memory_mb": 64});
    let cases = [
        ("python_huge_allocation", "python", "b = bytearray(1 << 31)"),
        ("python_memory_growth", "python", "l = []\nwhile True: l.append(bytearray(1 << 20))"),
        ("python_numpy_huge_array", "python", "import numpy as np\na = np.ones((1 << 16, 1 << 16))"),
        ("javascript_huge_allocation", "javascript", "const b = new ArrayBuffer(2 ** 30)"),
        ("javascript_memory_growth", "javascript", "const a = []; for (;;) a.push(new ArrayBuffer(1 << 20))"),
    ];
    for (name, language, code) in cases {
        let s = attempt(&client, name, Layer::Limits, with_limits(language, code, mem.clone())).await;
        // A guest may see the refusal as its own out-of-memory error first; either way the
        // memory cap is what stopped it and the outcome says so.
        assert_eq!(s["outcome"], "memory_limit", "{name}: {s}");
    }
    let s = attempt(
        &client,
        "python_unbounded_recursion",
        Layer::Limits,
        with_limits(
            "python",
            "import sys\nsys.setrecursionlimit(10**8)\ndef f(n): return f(n + 1) + 1\nf(0)",
            json!({"fuel": 2_000_000_000}),
        ),
    )
    .await;
    assert!(matches!(s["outcome"].as_str().unwrap(), "stack_overflow" | "memory_limit" | "out_of_fuel" | "error"), "{s}");
    let s = attempt(
        &client,
        "javascript_unbounded_recursion",
        Layer::Wasi,
        json!({"language": "javascript", "code": "function f(n) { return f(n + 1) + 1 }\nf(0)"}),
    )
    .await;
    assert!(matches!(s["outcome"].as_str().unwrap(), "stack_overflow" | "trap" | "error"), "{s}");
    assert!(!s["stderr"].as_str().unwrap().contains("wasmtime"), "host internals leaked: {s}");
}

#[tokio::test]
async fn output_floods_on_both_streams() {
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let cases = [
        ("python_stdout_flood", "python", "import sys\nwhile True: sys.stdout.write('x' * 65536)", "stdout", 1_048_576),
        ("python_stderr_flood", "python", "import sys\nwhile True: sys.stderr.write('x' * 65536)", "stderr", 262_144),
        ("javascript_stdout_flood", "javascript", "const s = 'y'.repeat(65536); for (;;) console.log(s)", "stdout", 1_048_576),
        ("javascript_stderr_flood", "javascript", "const s = 'y'.repeat(65536); for (;;) console.error(s)", "stderr", 262_144),
    ];
    for (name, language, code, stream, cap) in cases {
        let t = Instant::now();
        let s = attempt(&client, name, Layer::Limits, json!({"language": language, "code": code})).await;
        assert_eq!(s["outcome"], "output_limit", "{name}: {s}");
        assert_eq!(s["truncated"], true);
        assert_eq!(s[stream].as_str().unwrap().len(), cap, "{name}: the {stream} cap holds");
        assert!(t.elapsed() < Duration::from_secs(10), "{name}: a flood is stopped, not run to its fuel budget");
    }
}

#[tokio::test]
async fn disk_and_file_count_floods() {
    let files = ServerFiles::new();
    // A smaller quota than the default keeps the floods quick; the mechanism is the same.
    let policy = files.policy(&[("workspace_bytes = 104_857_600", "workspace_bytes = 8_388_608")]);
    let client = stdio(&files, Some(&policy)).await;
    let cases = [
        ("python_disk_fill_workspace", "python", "f = open('big', 'wb')\nwhile True: f.write(b'x' * (1 << 20))"),
        ("python_disk_fill_tmp", "python", "f = open('/tmp/big', 'wb')\nwhile True: f.write(b'x' * (1 << 20))"),
        ("python_sparse_file", "python", "f = open('sparse', 'wb')\nf.seek(1 << 40)\nf.write(b'x')\nf.close()\nwhile True: pass"),
        ("python_file_count_flood", "python", "i = 0\nwhile True:\n    open(f'f{i}', 'w').close()\n    i += 1"),
        ("python_directory_flood", "python", "import os\ni = 0\nwhile True:\n    os.mkdir(f'd{i}')\n    i += 1"),
        (
            "javascript_disk_fill",
            "javascript",
            "const f = std.open('/workspace/big', 'w'); const s = 'z'.repeat(1 << 20); for (;;) f.puts(s)",
        ),
    ];
    for (name, language, code) in cases {
        let s = attempt(&client, name, Layer::Limits, with_limits(language, code, json!({"timeout_ms": 20_000}))).await;
        assert_eq!(s["outcome"], "output_limit", "{name}: {s}");
        assert!(s["message"].as_str().unwrap().contains("may hold at most"), "{s}");
    }
    // Inputs count against the same quota: a request cannot smuggle in more than it allows.
    crate::case("inputs_over_the_workspace_quota", Layer::Policy);
    let big = "a".repeat(1 << 20);
    let many: Vec<Value> = (0..9).map(|i| json!({"path": format!("f{i}"), "content": big})).collect();
    let e = tool_error(call(&client, "execute_code", json!({"language": "python", "code": "1", "files": many})).await);
    assert!(e.contains("workspace limit"), "{e}");
    crate::alive(&client).await;
}

#[tokio::test]
async fn archive_bombs_are_bounded_by_the_workspace_quota() {
    // warden itself extracts no archives; a guest that does is held by its quota.
    let files = ServerFiles::new();
    let client = stdio(&files, None).await;
    let code = "import zipfile, io\nbuf = io.BytesIO()\nwith zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:\n    z.writestr('zero', b'\\0' * (64 << 20))\nprint('zip', len(buf.getvalue()))\nfor i in range(10):\n    zipfile.ZipFile(io.BytesIO(buf.getvalue())).extract('zero', f'out{i}')";
    let s = attempt(&client, "python_zip_bomb", Layer::Limits, json!({"language": "python", "code": code})).await;
    assert_eq!(s["outcome"], "output_limit", "{s}");
    let code = "import tarfile, io\nbuf = io.BytesIO()\nwith tarfile.open(fileobj=buf, mode='w:gz') as t:\n    info = tarfile.TarInfo('zero'); info.size = 64 << 20\n    t.addfile(info, io.BytesIO(b'\\0' * info.size))\nfor i in range(10):\n    buf.seek(0)\n    tarfile.open(fileobj=buf).extractall(f'x{i}', filter='data')";
    let s = attempt(&client, "python_tar_bomb", Layer::Limits, json!({"language": "python", "code": code})).await;
    assert_eq!(s["outcome"], "output_limit", "{s}");
}

#[tokio::test]
async fn cancellation_is_prompt_under_load() {
    let files = ServerFiles::new();
    let policy = files.policy(&[
        ("concurrent_per_principal = 4", "concurrent_per_principal = 8"),
        ("concurrent_executions = 4", "concurrent_executions = 8"),
    ]);
    let client = stdio(&files, Some(&policy)).await;
    crate::case("cancel_under_load", Layer::Limits);
    // Six busy guests keep both cores saturated while one more is cancelled.
    let mut busy = Vec::new();
    for _ in 0..6 {
        busy.push(
            start_call(&client, "execute_code", json!({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 8000}}))
                .await,
        );
    }
    audit_events(&files, "execution.start", 6, Duration::from_secs(10)).await;
    let victim = start_call(&client, "execute_code", json!({"language": "javascript", "code": "for (;;) {}"})).await;
    audit_events(&files, "execution.start", 7, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    victim.cancel(Some("security suite".into())).await.unwrap();
    let events = audit_events(&files, "execution", 1, Duration::from_secs(5)).await;
    let cancelled_after = t.elapsed();
    let cancelled = events.iter().find(|e| e["outcome"] == "cancelled").unwrap_or_else(|| panic!("no cancelled execution: {events:?}"));
    assert_eq!(cancelled["language"], "javascript");
    // The unloaded target is 100 ms (tests/mcp); six busy guests on two cores get 500 ms.
    assert!(cancelled_after < Duration::from_millis(500), "cancellation took {cancelled_after:?} under load");
    for b in busy {
        let r = call_result(b.await_response().await.unwrap());
        assert_eq!(r.structured_content.unwrap()["outcome"], "timeout");
    }
    crate::alive(&client).await;
}
