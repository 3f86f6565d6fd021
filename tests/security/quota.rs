//! The workspace quota held at write time: whatever a guest does — nesting deeper than any walk,
//! writing through files it already unlinked, leaving by any exit path, piling inputs up over
//! many session turns — what its workspace occupies on the host, measured from the host every
//! few milliseconds while it runs, never passes the quota plus the stated slack. Another
//! principal is served throughout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{self, Client, ServerFiles, call, connect_http, exec, host_usage, process_workspaces, start_tenants, tool_error};
use crate::{Layer, case};

/// The quota these tests run under (small, so floods end quickly; the mechanism is the same).
const QUOTA_BYTES: u64 = 8 << 20;
const QUOTA_FILES: u64 = 600;
/// Slack SECURITY.md states over the quota: file-system metadata the ledger does not charge,
/// plus the call directories warden itself creates.
const SLACK_BYTES: u64 = 1 << 20;
const SLACK_INODES: u64 = 8;

struct Tenants {
    server: harness::HttpServer,
    attacker: Client,
    victim: Client,
    dir: PathBuf,
    pid: u32,
    _files: ServerFiles,
}

async fn tenants() -> Tenants {
    let files = ServerFiles::new();
    let policy = files.policy(&[
        ("workspace_bytes = 104_857_600", &format!("workspace_bytes = {QUOTA_BYTES}")),
        ("workspace_files = 2_000", &format!("workspace_files = {QUOTA_FILES}")),
        // Nothing retained: each one-shot call's workspace is gone when it returns, so the host
        // measurement sees one attack at a time.
        ("retention_seconds = 600", "retention_seconds = 0"),
    ]);
    let server = start_tenants(&files, &policy, &["attacker", "victim"]).await;
    let pid = server.child.id().expect("pid");
    let attacker = connect_http(&server.url, Some("token-attacker")).await;
    let victim = connect_http(&server.url, Some("token-victim")).await;
    // The process's workspace directory exists once it has run something.
    victim_served(&victim).await;
    let dir = process_workspaces(pid).expect("the server's workspace directory");
    Tenants { server, attacker, victim, dir, pid, _files: files }
}

/// The victim's call succeeds with the right answer.
async fn victim_served(victim: &Client) {
    let (_, s) = exec(victim, json!({"language": "python", "code": "print(6 * 7)"})).await;
    assert_eq!(s["stdout"], "42\n", "another principal was not served: {s}");
}

/// Samples what the workspaces occupy until dropped; `peak()` is the most seen.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl Monitor {
    fn start(dir: &Path, pid: u32) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut peak = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let (b, i) = host_usage(&dir, pid);
                peak = (peak.0.max(b), peak.1.max(i));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        Monitor { stop, thread: Some(thread) }
    }

    /// Stops sampling and asserts the peak stayed within the quota plus slack.
    fn assert_held(mut self, name: &str) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.thread.take().unwrap().join().unwrap();
        assert!(
            peak.0 <= QUOTA_BYTES + SLACK_BYTES,
            "{name}: the workspace reached {} bytes on the host (quota {QUOTA_BYTES} + slack {SLACK_BYTES})",
            peak.0
        );
        assert!(
            peak.1 <= QUOTA_FILES + SLACK_INODES,
            "{name}: the workspace reached {} inodes on the host (quota {QUOTA_FILES} + slack {SLACK_INODES})",
            peak.1
        );
        assert!(
            peak.0 > QUOTA_BYTES / 2 || peak.1 > QUOTA_FILES / 2,
            "{name}: the attack never came near the quota ({peak:?}); it proves nothing"
        );
        peak
    }
}

/// Runs one attack as the attacker while the host is measured; checks the limit held, the
/// outcome, and that the victim is served.
async fn attack(t: &Tenants, name: &str, args: Value, outcome: &str) -> Value {
    case(name, Layer::Limits);
    let monitor = Monitor::start(&t.dir, t.pid);
    // The victim is served while the attack runs, too.
    let ((_, s), ()) = tokio::join!(exec(&t.attacker, args), victim_served(&t.victim));
    let peak = monitor.assert_held(name);
    assert_eq!(s["outcome"], outcome, "{name}: {s}");
    eprintln!("{name}: peak {} bytes, {} inodes on the host; outcome {}", peak.0, peak.1, s["outcome"]);
    // Whatever the exit path, nothing is left behind for a one-shot call, and the victim and
    // the attacker are both served afterwards. The server removes a call's directory beside its
    // response, not before it: allow it a moment.
    let mut left = host_usage(&t.dir, t.pid).0;
    for _ in 0..40 {
        if left < QUOTA_BYTES / 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = host_usage(&t.dir, t.pid).0;
    }
    victim_served(&t.victim).await;
    victim_served(&t.attacker).await;
    assert!(left < QUOTA_BYTES / 2, "{name}: {left} bytes still held after the call ended");
    s
}

#[tokio::test]
async fn the_quota_holds_at_write_time_on_every_exit_path() {
    let t = tenants().await;
    // Each attack holds its peak for a moment before its exit path, so the host measurement
    // (every 5 ms, on a loaded machine) sees it.
    let fill = "import time\ndef fill(f):\n    try:\n        while True:\n            f.write(b'x' * (256 << 10))\n            f.flush()\n    except OSError as e:\n        print('refused', e.errno, flush=True)\n    time.sleep(0.3)\n";
    // Deeper than any directory walk goes (the old walk stopped at 64 levels).
    let deep = format!(
        "import os\n{fill}p = '/'.join(['d'] * 200)\nos.makedirs(p)\ni = 0\ntry:\n    while True:\n        with open(f'{{p}}/f{{i}}', 'wb') as f:\n            f.write(b'x' * (256 << 10))\n        i += 1\nexcept OSError as e:\n    print('refused', e.errno)\n    time.sleep(0.3)\n"
    );
    let s = attack(&t, "python_deep_nesting_normal_exit", json!({"language": "python", "code": deep}), "ok").await;
    assert!(s["stdout"].as_str().unwrap().contains("refused"), "{s}");
    assert!(s["message"].as_str().unwrap().contains("may hold at most"), "{s}");

    let unlinked = format!(
        "import os\n{fill}f = open('x', 'wb')\nos.unlink('x')\ntry:\n    while True:\n        f.write(b'x' * (1 << 20))\nfinally:\n    time.sleep(0.3)\n"
    );
    attack(&t, "python_unlinked_open_file_uncaught", json!({"language": "python", "code": unlinked}), "output_limit").await;

    let proc_exit = format!("import os\n{fill}f = open('y', 'wb')\nos.unlink('y')\nfill(f)\nos._exit(3)\n");
    let s = attack(&t, "python_unlinked_then_proc_exit", json!({"language": "python", "code": proc_exit}), "output_limit").await;
    assert_eq!(s["exit_code"], 3, "{s}");

    let sys_exit = format!("import sys\n{fill}fill(open('z', 'wb'))\nsys.exit(0)\n");
    attack(&t, "python_fill_then_sys_exit", json!({"language": "python", "code": sys_exit}), "ok").await;

    let timeout = format!("import os\n{fill}f = open('w', 'wb')\nos.unlink('w')\nfill(f)\nwhile True: pass\n");
    attack(&t, "python_unlinked_then_timeout", json!({"language": "python", "code": timeout, "limits": {"timeout_ms": 3000}}), "timeout")
        .await;

    let files = "import os, time\ni = 0\ntry:\n    while True:\n        os.mkdir(f'd{i}')\n        open(f'd{i}/e', 'w').close()\n        i += 1\nexcept OSError as e:\n    print('refused at', i)\ntime.sleep(0.3)\n";
    attack(&t, "python_inode_flood", json!({"language": "python", "code": files}), "ok").await;

    // Hard links add no inode, only names: the directory's blocks grow, and are charged.
    let links = "import os, time\nopen('t', 'w').close()\ni = 0\ntry:\n    while True:\n        os.link('t', 'l' + str(i) + 'x' * 200)\n        i += 1\nexcept OSError as e:\n    print('refused at', i, e.errno)\ntime.sleep(0.3)\n";
    let s = attack(&t, "python_hard_link_name_flood", json!({"language": "python", "code": links}), "ok").await;
    assert!(s["stdout"].as_str().unwrap().contains("refused at"), "hard-link flood: {s}");

    let hold = "const t0 = Date.now(); while (Date.now() - t0 < 300) {}";
    let js_flood = format!(
        "const f = std.open('/workspace/big', 'w'); os.remove('/workspace/big'); const s = 'z'.repeat(1 << 20); for (let i = 0; i < 12; i++) {{ f.puts(s); f.flush(); }} {hold} for (;;) f.puts(s);"
    );
    attack(&t, "javascript_unlinked_flood", json!({"language": "javascript", "code": js_flood}), "output_limit").await;

    let js_trap = format!(
        "const f = std.open('/workspace/big', 'w'); os.remove('/workspace/big'); const s = 'z'.repeat(1 << 20); for (let i = 0; i < 12; i++) {{ f.puts(s); f.flush(); }} {hold} function r(n) {{ return r(n + 1) + 1; }} r(0);"
    );
    let s = attack(&t, "javascript_unlinked_then_trap", json!({"language": "javascript", "code": js_trap}), "trap").await;
    assert!(s["message"].is_string(), "{s}");
    drop(t.server);
}

async fn new_session(client: &Client) -> String {
    let r = call(client, "create_session", json!({"language": "python"})).await.expect("create_session");
    r.structured_content.expect("session")["session_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn session_turns_and_inputs_share_one_quota() {
    let t = tenants().await;
    case("inputs_piling_up_across_turns", Layer::Limits);
    let id = new_session(&t.attacker).await;
    let monitor = Monitor::start(&t.dir, t.pid);
    let chunk = "a".repeat(1 << 20);
    let mut refused_at = None;
    for turn in 0..20 {
        let files = json!([{"path": format!("turn{turn}/nested/data.txt"), "content": chunk}]);
        let r = call(&t.attacker, "execute_code", json!({"language": "python", "code": "pass", "session_id": id, "files": files})).await;
        match r {
            Ok(r) if r.is_error != Some(true) => assert_eq!(r.structured_content.unwrap()["outcome"], "ok"),
            r => {
                let e = tool_error(r);
                assert!(e.contains("this call allows"), "{e}");
                refused_at = Some(turn);
                break;
            }
        }
    }
    monitor.assert_held("inputs_piling_up_across_turns");
    let refused_at = refused_at.expect("inputs were never refused");
    // The refused turn's start record has its end: a denial saying why.
    let denied = harness::audit_events(&t._files, "execution.denied", 1, Duration::from_secs(5)).await;
    assert!(denied[0]["started"].is_string() && denied[0]["reason"].as_str().unwrap().contains("this call allows"), "{denied:?}");
    assert!((6..=8).contains(&refused_at), "refused at turn {refused_at}: 1 MiB inputs against an 8 MiB quota");
    victim_served(&t.victim).await;
    // Each session has its own quota: end this one so the host measurement sees the next alone.
    call(&t.attacker, "close_session", json!({"session_id": id})).await.expect("close_session");

    case("session_unlinked_file_held_across_turns", Layer::Limits);
    let id = new_session(&t.attacker).await;
    let monitor = Monitor::start(&t.dir, t.pid);
    let keep = "import os\nf = open('held', 'wb')\nos.unlink('held')\ntry:\n    while True: f.write(b'x' * (1 << 20))\nexcept OSError: print('full')\n";
    let (_, s) = exec(&t.attacker, json!({"language": "python", "code": keep, "session_id": id})).await;
    assert_eq!(s["stdout"], "full\n", "{s}");
    // The unlinked file still holds the quota while it is open...
    let (_, s) =
        exec(&t.attacker, json!({"language": "python", "code": "open('more', 'wb').write(b'x' * (4 << 20))", "session_id": id})).await;
    assert_eq!(s["outcome"], "output_limit", "an unlinked open file stays charged: {s}");
    // ...and is released when closed.
    let (_, s) = exec(
        &t.attacker,
        json!({"language": "python", "code": "f.close()\nopen('more', 'wb').write(b'x' * (4 << 20))\nprint('ok')", "session_id": id}),
    )
    .await;
    assert_eq!(s["stdout"], "ok\n", "closing the unlinked file released it: {s}");
    monitor.assert_held("session_unlinked_file_held_across_turns");
    victim_served(&t.victim).await;
}
